"""Exit statuses of the ppvae command (issue 32, deliver 6): a FAIL of any check exits 1."""

from __future__ import annotations

import json

import pytest

from ppvae import workflows
from ppvae.cli import main

SMALL = ["--n-train", "60", "--n-test", "20", "--latent-dim", "2", "--epochs", "1"]
RUN = ["run", *SMALL, "--hidden", "8", "--iw-samples", "3", "--ais-points", "0"]
RUN += ["--check-epochs", "1"]
COMPARE = ["compare", *SMALL, "--hidden", "8", "--linear-epochs", "1", "--iw-samples", "5"]
COMPARE += ["--eval-points", "5", "--gap-points", "2", "--nuts-points", "0", "--ais-points", "0"]
LOOSE = dict.fromkeys(workflows.CHECK_TARGETS, 1e9)


@pytest.mark.long_convergence  # the LinearVAE check: thousands of steps
@pytest.mark.parametrize(
    "argv, written, key",
    [(RUN, "metrics.json", "ppca_check"), (COMPARE, "compare.json", "linear_check")],
    ids=["run", "compare"],
)
def test_the_linear_vae_check_decides_the_exit_status(
    argv, written, key, tmp_path, capsys, monkeypatch
):
    """One epoch of the LinearVAE misses the PPCA maximum: FAIL printed, exit 1; the same
    run judged by targets it meets: PASS, exit 0."""
    assert main([*argv, "--out", str(tmp_path / "fail")]) == 1
    assert "FAIL" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "fail" / written).read_text())
    assert metrics[key]["passed"] is False
    # every stage timed, in the JSON and the report (#32: stage times)
    stages = metrics["stage_seconds"]
    assert {"ppca", "vae_training", "vae_evaluation", "ais_bdmc", "figures"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    report = (tmp_path / "fail" / ("report.md" if argv[0] == "run" else "compare.md")).read_text()
    assert "Time per stage: ppca" in report
    monkeypatch.setattr(workflows, "CHECK_TARGETS", LOOSE)
    assert main([*argv, "--out", str(tmp_path / "pass")]) == 0
    assert "PASS" in capsys.readouterr().out


def _error(argv, capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "argv, says, never",
    [
        (["run", "--seed", "-1"], "--seed: expected an integer in [0, 2**32)", "Traceback"),
        (["run", "--dataset", "mnist"], "pass --data-root", "root="),
        (
            ["fit", "--model", "cae", "--contraction", "-1", "--epochs", "0"],
            "--contraction must be >= 0",
            "lam",
        ),
        (["compare", "--iw-samples", "3"], "--iw-samples 3 is too few", "psis"),
    ],
    ids=["seed", "data-root", "contraction", "iw-samples"],
)
def test_library_errors_are_one_line_in_flags(argv, says, never, tmp_path, capsys):
    code, err = _error([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1, err
    assert says in err[0] and never not in err[0], err[0]


def test_nproc_above_the_cores_is_refused_before_starting_processes(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    code, err = _error(["fit", "--nproc", "3", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1, err
    assert "--nproc 3 is more than the 2 CPU core(s)" in err[0] and "--nproc 2" in err[0]
    assert not (tmp_path / "o").exists()


def test_stages_say_when_they_start_and_end_when_progress_is_on(capsys):
    stages = workflows.common.Stages("compare", progress=True)
    with stages("iw", "VAE: IW log-likelihoods"):
        pass
    with stages("iw", "VAE: IW log-likelihoods"):  # a stage run twice adds up
        pass
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ppvae compare: VAE: IW log-likelihoods ..."
    assert err[1].startswith("ppvae compare: VAE: IW log-likelihoods: ") and err[1].endswith(" s")
    assert list(stages.seconds) == ["iw"] and len(err) == 4
    quiet = workflows.common.Stages("run", progress=False)
    with quiet("ppca", "PPCA fit"):
        pass
    assert capsys.readouterr().err == "" and "ppca" in quiet.seconds
