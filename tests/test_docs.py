"""The documentation: examples run as written, numbers come from result files, the site is whole.

The site itself is built by ``make docs`` (CI builds it before the tests and sets
``PPVAE_REQUIRE_DOCS=1``, so that a missing build fails rather than skips).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from pathlib import Path

import pyro
import pytest

import ppvae
import ppvae.cli

from .conftest import REPO

sys.path.insert(0, str(REPO / "docs" / "_ext"))
import examples
import ppvae_docs
import quoted_numbers

RESULTS = REPO / "benchmarks" / "results"
SITE = REPO / "docs" / "_build" / "html"
# every Markdown source but the CLI page, which is written at build time from the parser
PAGES = [
    REPO / "README.md",
    *sorted(
        p for p in (REPO / "docs").rglob("*.md") if "_build" not in p.parts and p.name != "cli.md"
    ),
]
ROLE = re.compile(r"\{result\}`([^`|\\]+)(?:\\?\|[^`]*)?`")
PRINTED = re.compile(r"^```\{printed\} (\S+) (\d+)", re.M)
PROVENANCE = ("command", "date", "machine", "versions")


def _name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_a_page_quotes_only_numbers_its_result_files_hold(page):
    assert quoted_numbers.unheld_numbers(page) == []


def test_the_number_check_flags_what_no_file_holds(tmp_path):
    """A quoted number is held only at its own precision; settings in code are not numbers."""
    page = tmp_path / "page.md"
    page.write_text(
        "---\nresults: [guide_examples]\n---\n"
        "It reached 35.41 nats, 35% of images, in `K = 5000` steps (`k-hat > 0.7`).\n"
        "A made-up 35.42 nats, 1.73x faster and 912 MiB.\n"
    )
    unheld = [line.split(": ", 1)[1] for line in quoted_numbers.unheld_numbers(page)]
    assert unheld == ["35.42", "1.73x", "912"]
    page.write_text("No file named: 35.41 nats.\n")
    assert len(quoted_numbers.unheld_numbers(page)) == 1


def _cited_files(page: Path) -> set[str]:
    text = page.read_text()
    names = set(quoted_numbers.declared_results(text))
    names |= {spec.split(":")[0].strip() for spec in ROLE.findall(text)}
    if PRINTED.search(text) or "guide_examples" in names:
        names.add("guide_examples")
    return names


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_result_a_page_cites_resolves_and_carries_its_provenance(page):
    for name in _cited_files(page):
        path = RESULTS / f"{name}.json"
        assert path.is_file(), f"{_name(page)} cites {name}, which has no result file"
        result = json.loads(path.read_text())
        missing = [key for key in PROVENANCE if not result.get(key)]
        assert not missing, f"{path.name} (cited by {_name(page)}) lacks {missing}"
    for spec in ROLE.findall(page.read_text()):  # each {result} names an existing number
        value = ppvae_docs.lookup(spec.strip())
        assert isinstance(value, (int, float)) and not isinstance(value, bool), spec


def test_the_recorded_examples_are_the_pages_examples():
    """benchmarks/guide_examples.py recorded exactly the blocks the pages hold now (an edited
    example must be re-run before its output is shown), and every {printed} names one."""
    recorded = json.loads((RESULTS / "guide_examples.json").read_text())["pages"]
    for page in examples.example_pages():
        hashes = [examples.code_hash(code) for code in examples.python_blocks(page)]
        stored = [block["code_sha256"] for block in recorded.get(page.name, [])]
        assert hashes == stored, (
            f"{page.name}: run benchmarks/guide_examples.py --pages {page.name}"
        )
    for page in PAGES:
        for name, index in PRINTED.findall(page.read_text()):
            assert int(index) < len(recorded[name]), f"{_name(page)}: no block {index} of {name}"
    readme = (REPO / "README.md").read_text()
    assert recorded["README.md"][0]["printed"] in readme  # the output the README shows


def test_the_readme_example_is_the_first_example_of_the_python_guide():
    """So it runs once, on that page, in the test below (and its output is that block's)."""
    readme = examples.python_blocks(REPO / "README.md")
    guide = examples.python_blocks(REPO / "docs" / "guide" / "python.md")
    assert readme == guide[: len(readme)]


EXAMPLE_PAGES = [p for p in examples.example_pages() if p.name != "README.md"]


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: p.name)
def test_a_pages_examples_run_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples write runs/...
    pyro.clear_param_store()
    records = examples.run_page(page)
    assert len(records) == len(examples.python_blocks(page))


# ---------------------------------------------------------------------- the built site
def _site():
    if not (SITE / "index.html").is_file():
        if os.environ.get("PPVAE_REQUIRE_DOCS"):
            pytest.fail(f"{SITE} is not built: run make docs first")
        pytest.skip("the site is not built (make docs)")
    return SITE


def test_the_site_has_an_api_page_for_fit_every_evaluator_and_every_model_class():
    site = _site()
    evaluators = [
        name for name in ppvae.evaluate.__all__ if inspect.isfunction(getattr(ppvae.evaluate, name))
    ]
    # every public class: the models (PPCA, the VAEs, the autoencoders) and their parts
    models = [name for name in ppvae.__all__ if inspect.isclass(getattr(ppvae, name))]
    assert {"estimate_log_likelihood", "ais_log_likelihood", "inference_gaps"} <= set(evaluators)
    assert {"VAE", "LinearVAE", "PPCA", "ConditionalVAE", "StackedAutoencoder"} <= set(models)
    pages = ["ppvae.fit"] + [f"ppvae.evaluate.{n}" for n in evaluators]
    pages += [f"ppvae.{n}" for n in models]
    for page in pages:
        html = site / "generated" / f"{page}.html"
        assert html.is_file(), f"no API page {html.name}"
        assert page.rsplit(".", 1)[-1] in html.read_text()


def test_the_site_has_a_page_for_each_notebook_and_each_command():
    site = _site()
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        html = site / "notebooks" / f"{notebook.stem}.html"
        assert html.is_file(), f"no page for {notebook.name}"
        assert "cell_output" in html.read_text(), f"{html.name} shows no stored output"
    cli = (site / "cli.html").read_text()
    for command in ppvae.cli.COMMANDS:
        assert f"ppvae {command}" in cli
    for guide in (REPO / "docs" / "guide").glob("*.md"):
        assert (site / "guide" / f"{guide.stem}.html").is_file(), guide.name
