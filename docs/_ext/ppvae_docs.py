"""Sphinx extension of ppvae's documentation: numbers from result files, the CLI and API pages.

* ``{result}`file:key.path|format``` inserts a value of ``benchmarks/results/<file>.json``
  (``key.path`` walks dicts by key and lists by index; ``format`` is a format spec such as
  ``.2f``). A missing file, key or a value that is not a number stops the build.
* ```{printed} page.md N``` shows what the N-th python block of a guide page printed when
  ``benchmarks/guide_examples.py`` ran it (``benchmarks/results/guide_examples.json``).
* At ``builder-inited`` the notebooks are copied from ``notebooks/`` (rendered from their
  stored outputs, never executed), ``cli.md`` is written from ``ppvae.cli.build_parser`` and
  ``api.rst`` from the ``__all__`` of ppvae's public modules.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import types
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
RESULTS = REPO / "benchmarks" / "results"

# public modules, in the order of the API page; a name is documented once, under the first
# module that exports it (ppvae.fit, not also ppvae.train.fit)
API_MODULES = {
    "ppvae": "Models, training and data at the top level",
    "ppvae.evaluate": "Evaluation: likelihoods, gaps, AIS, NUTS, exact linear-Gaussian values",
    "ppvae.train": "Training parts: the step, hooks, objectives",
    "ppvae.data": "Data: datasets, transforms, validation",
    "ppvae.program": "The data-plate contract",
    "ppvae.priors": "Priors",
    "ppvae.guides": "Guides",
    "ppvae.likelihoods": "Likelihoods",
    "ppvae.checkpoints": "Checkpoints",
    "ppvae.workflows": "Workflows: the experiments behind the commands",
    "ppvae.plots": "Figures",
    "ppvae.errors": "Errors",
}


def load_result(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise ExtensionError(f"no result file {path.relative_to(REPO)}")
    return json.loads(path.read_text())


def lookup(spec: str):
    """The value named by ``file:key.path`` (dict keys; list indices as integers).

    A key that itself holds dots (``khat_share_gt_0.7``) is found too: at each level the
    longest run of the remaining parts that is a key is taken.
    """
    name, _, keys = spec.partition(":")
    value = load_result(name)
    parts = keys.split(".") if keys else []
    while parts:
        for j in range(len(parts), 0, -1):
            key = ".".join(parts[:j])
            if isinstance(value, dict) and key in value:
                value, parts = value[key], parts[j:]
                break
            if isinstance(value, list) and j == 1 and key.lstrip("-").isdigit():
                if -len(value) <= int(key) < len(value):
                    value, parts = value[int(key)], parts[1:]
                    break
        else:
            raise ExtensionError(f"{name}.json holds no {keys!r} (stopped at {parts[0]!r})")
    return value


def format_result(text: str) -> str:
    spec, _, fmt = text.replace("\\|", "|").partition("|")
    value = lookup(spec.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExtensionError(f"{spec} is {value!r}, not a number")
    return format(value, fmt.strip()) if fmt.strip() else str(value)


def result_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    # the page is rebuilt when the result file changes (an incremental build would keep the old)
    env = inliner.document.settings.env
    env.note_dependency(str(RESULTS / f"{text.partition(':')[0].strip()}.json"))
    return [nodes.Text(format_result(text))], []


class Printed(SphinxDirective):
    """What a guide page's N-th python block printed (benchmarks/guide_examples.py)."""

    required_arguments = 2

    def run(self):
        page, index = self.arguments[0], self.arguments[1]
        self.env.note_dependency(str(RESULTS / "guide_examples.json"))
        pages = lookup("guide_examples:pages")
        try:
            text = pages[page][int(index)]["printed"]
        except (KeyError, IndexError, ValueError):
            raise ExtensionError(f"guide_examples.json holds no block {index} of {page}") from None
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class ResultFiles(SphinxDirective):
    """A table of every result file: benchmark, command, date, machine, commit."""

    def run(self):
        for path in RESULTS.glob("*.json"):
            self.env.note_dependency(str(path))
        rows = ["| file | command | date | machine | commit |", "|---|---|---|---|---|"]
        for path in sorted(RESULTS.glob("*.json")):
            result = json.loads(path.read_text())
            machine = result.get("machine")
            if isinstance(machine, dict):
                machine = f"{machine.get('platform', '?')}, {machine.get('cpu_count', '?')} CPUs"
            commit = (result.get("versions") or {}).get("git_commit") or ""
            cells = [
                f"`{path.name}`",
                f"`{result['command']}`" if result.get("command") else "(not recorded)",
                str(result.get("date") or "(not recorded)"),
                str(machine or "(not recorded)"),
                f"`{commit}`" if commit else "",
            ]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return self.parse_text_to_nodes("\n".join(rows))


def copy_notebooks(app) -> None:
    target = DOCS / "notebooks"
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        dest = target / path.name
        if not dest.exists() or dest.read_bytes() != path.read_bytes():
            shutil.copyfile(path, dest)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def cli_page() -> str:
    from ppvae.cli import build_parser

    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "Generated from the argument parser (`ppvae.cli.build_parser`) at build time; "
        "`ppvae COMMAND --help` prints the same.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():
        lines += ["", f"## ppvae {name}", "", "```text", subparser.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def public_names() -> dict[str, list[str]]:
    """Each module's public names, each object once (under the first module exporting it).

    Functions and classes are told apart by identity; constants (a tuple, a dict, a number,
    whose identity equal values may share) by name.
    """
    seen: set = set()
    out: dict[str, list[str]] = {}
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        names = []
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType):  # a module has its own section
                continue
            key = id(obj) if callable(obj) else name
            if key not in seen:
                seen.add(key)
                names.append(name)
        out[module_name] = names
    return out


def api_page() -> str:
    lines = [
        "API reference",
        "=============",
        "",
        "Generated from the docstrings (numpydoc) of every public name: each module's",
        "``__all__``, each object once, under the first module below that exports it.",
        "",
    ]
    for module_name, names in public_names().items():
        title = f"``{module_name}``: {API_MODULES[module_name]}"
        lines += [title, "-" * len(title), "", f".. currentmodule:: {module_name}", ""]
        lines += [".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
        lines += [f"   {name}" for name in names]
        lines.append("")
    return "\n".join(lines)


def generate_pages(app) -> None:
    copy_notebooks(app)
    _write_if_changed(DOCS / "cli.md", cli_page())
    _write_if_changed(DOCS / "api.rst", api_page())


def setup(app):
    app.add_role("result", result_role)
    app.add_directive("printed", Printed)
    app.add_directive("result-files", ResultFiles)
    app.connect("builder-inited", generate_pages, priority=100)  # before autosummary
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
