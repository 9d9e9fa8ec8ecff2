import json
import math
import os
import subprocess
import sys

import pytest
import torch

import ppvae
from ppvae.cli import main

from .conftest import REPO, check_status

TINY_CHECK = ["--check-epochs", "5"]
TINY = [
    "--epochs",
    "2",
    "--iw-samples",
    "5",
    "--n-train",
    "200",
    "--n-test",
    "40",
    "--hidden",
    "16",
    "--latent-dim",
    "3",
]
TINY_AE = [a for a in TINY if a not in ("--iw-samples", "5")]  # autoencoders: no IW estimate
# AIS and BDMC on a few points with a few steps: the path runs, its numbers are checked elsewhere
TINY_AIS = ["--ais-points", "4", "--ais-steps", "5", "--ais-chains", "2", "--bdmc-points", "3"]


def test_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, *TINY_CHECK, *TINY_AIS, "--out", str(out)]) == check_status(out)
    expected = {
        "metrics.json",
        "report.md",
        "training_curve.png",
        "samples_vae.png",
        "samples_ppca.png",
        "reconstructions.png",
        "latent_scatter.png",
        "ppca_check.png",
    }
    assert expected <= {p.name for p in out.iterdir()}
    for name in expected - {"metrics.json", "report.md"}:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] == 200 and m["n_test"] == 40 and m["latent_dim"] == 3
    for value in (
        m["ppca"]["test_log_likelihood"],
        m["vae"]["test_elbo"],
        m["vae"]["test_log_likelihood_iw"],
    ):
        assert math.isfinite(value)
    assert len(m["vae"]["history"]["train_elbo"]) == 2
    report = (out / "report.md").read_text()
    for png in out.glob("*.png"):  # every figure written is shown in the report
        assert f"]({png.name})" in report, png.name
    report = (out / "report.md").read_text()
    assert "PPCA" in report and "training_curve.png" in report
    assert m["ppca_check"]["epochs"] == 5 and math.isfinite(m["ppca_check"]["loglik_gap"])
    assert "LinearVAE" in report and "covariance_rel_error" in report
    assert "guide N(V (x - c), diag(d^2))" in report  # complete data: the diagonal guide
    cert = m["vae"]["certified"]
    assert cert["ais"]["n_points"] == 4 and cert["bdmc"]["n_points"] == 3
    assert math.isfinite(m["vae"]["khat_share_gt_0.7"])
    assert "Which likelihood of the VAE to trust" in report and "**Trust" in report
    printed = capsys.readouterr().out
    assert "PPCA (exact)" in printed and "loglik_gap" in printed


def test_fit_with_a_chosen_prior_and_likelihood(tmp_path):
    out = tmp_path / "vamp"
    argv = [
        "fit",
        *TINY,
        "--prior",
        "vamp",
        "--likelihood",
        "continuous-bernoulli",
        "--kl-warmup",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    vae = ppvae.load(out / "model.pt")
    assert vae.prior.name == "vamp" and vae.likelihood.name == "continuous-bernoulli"
    m = json.loads((out / "metrics.json").read_text())
    assert m["prior"] == "vamp" and math.isfinite(m["test_log_likelihood_iw"])


def test_compare_writes_table_scatter_and_inference_data(tmp_path, capsys):
    import arviz as az

    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--epochs",
        "3",
        "--linear-epochs",
        "30",
        "--iw-samples",
        "20",
        "--eval-points",
        "50",
        "--gap-points",
        "10",
        "--hidden",
        "16",
        "--latent-dim",
        "3",
        "--nuts-points",
        "1",
        "--nuts-samples",
        "60",
        *TINY_AIS,
    ]
    assert main([*argv, "--out", str(out)]) == check_status(out)
    r = json.loads((out / "compare.json").read_text())
    assert set(r["models"]) == {"PPCA", "LinearVAE", "VAE (standard prior, gaussian)"}
    vae = r["models"]["VAE (standard prior, gaussian)"]
    for key in ("iw", "iw_sem", "khat_share_gt_0.7", "bits_per_dim", "elbo"):
        assert math.isfinite(vae["test"][key])
    assert math.isfinite(vae["approximation_gap"]) and math.isfinite(vae["amortization_gap"])
    assert math.isfinite(vae["approximation_gap_ais"])  # AIS ran, so the gap is also against it
    idata = az.from_netcdf(str(out / "log_likelihood.nc"))
    ll = idata.log_likelihood
    assert set(ll.data_vars) == {"ppca", "linear_vae", "vae"}
    assert ll["ppca"].shape == (1, 1, 359)
    assert int(ll["vae"].notnull().sum()) == 50  # IW estimates on the evaluation subset
    assert (out / "loglik_scatter.png").exists() and (out / "nuts_vs_guide.png").exists()
    assert len(vae["nuts"]) == 1 and math.isfinite(vae["nuts"][0]["r_hat_max"])
    printed = capsys.readouterr().out
    assert "k>0.7" in printed and "AIS (T=5, 2 chains;" in printed
    cert = vae["certified"]
    assert cert["ais"]["n_points"] == 4 and cert["bdmc"]["n_points"] == 3
    assert math.isfinite(cert["ais"]["mean"]) and math.isfinite(cert["bdmc"]["gap"])
    report = (out / "compare.md").read_text()
    assert "to trust" in report and "BDMC" in report and "**Trust" in report
    for png in out.glob("*.png"):  # every figure written is shown in the report
        assert f"]({png.name})" in report, png.name
    assert str(r["nuts_figure"]) in printed


def test_check_ppca_writes_its_comparison(tmp_path, capsys):
    out = tmp_path / "check"
    argv = ["check-ppca", "--epochs", "20", "--n-train", "300", "--latent-dim", "2"]
    code = main([*argv, "--out", str(out)])
    r = json.loads((out / "check_ppca.json").read_text())
    assert not r["passed"] and code == 1  # 20 epochs are too few: FAIL, exit status 1
    for key in (
        "loglik_gap",
        "elbo_gap",
        "noise_variance_rel_error",
        "covariance_rel_error",
        "principal_angles_deg",
        "active_units",
        "passed",
    ):
        assert key in r
    assert r["loglik_gap"] >= -1e-6  # the PPCA MLE is the maximum
    assert r["elbo_gap"] >= -1e-6  # the ELBO is a lower bound
    assert (out / "ppca_check.png").read_bytes()[:4] == b"\x89PNG"
    assert "covariance_rel_error" in capsys.readouterr().out


def test_fit_saves_a_loadable_model(tmp_path):
    out = tmp_path / "fit"
    argv = ["fit", *TINY, "--likelihood", "bernoulli", "--elbo", "trace", "--out", str(out)]
    assert main(argv) == 0
    vae = ppvae.load(out / "model.pt")
    assert vae.latent_dim == 3 and vae.likelihood.name == "bernoulli"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["fit_config"]["elbo"] == "trace"  # --elbo reaches fit
    m = json.loads((out / "metrics.json").read_text())
    assert m["binarize"] == "dynamic" and math.isfinite(m["test_log_likelihood_iw"])
    assert (out / "reconstructions.png").exists() and (out / "latent_scatter.png").exists()


@pytest.mark.parametrize("model", ["ae", "dae", "sae", "cae", "stacked"])
def test_fit_an_autoencoder_writes_model_figures_and_metrics(model, tmp_path, capsys):
    out = tmp_path / model
    argv = ["fit", "--model", model, *TINY_AE, "--out", str(out)]
    assert main(argv) == 0
    back = ppvae.load(out / "model.pt")
    assert type(back).kind == model
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == model
    printed = capsys.readouterr().out
    assert "wrote" in printed
    if model == "stacked":  # measured before fine-tuning moved the encoders under the decoders
        assert "test_reconstruction_error" not in m
        assert math.isfinite(m["test_reconstruction_error_pretrained"])
        assert "after pretraining" in printed
    else:
        assert math.isfinite(m["test_reconstruction_error"])
    figures = ("features", "latent_scatter", "training_curve")
    for fig in figures if model == "stacked" else ("reconstructions", *figures):
        assert (out / m["figures"][fig]).exists(), fig
    assert {p.name for p in out.glob("*.png")} == set(m["figures"].values())  # all listed
    if model == "stacked":
        assert "reconstructions" not in m["figures"]  # its decoders no longer match
        # the saved classifier reproduces the reported accuracy on the same 40 test images
        ds = ppvae.load_dataset("digits", seed=0, n_train=200, n_test=40)
        acc = float((back.predict(ds.test) == ds.test_labels).float().mean())
        assert m["test_accuracy"] == pytest.approx(acc) and back.hidden == (16, 3)
    else:
        assert (out / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fit", "--model", "sae", "--rho", "2", "--epochs", "0"], "rho"),
        (["fit", "--model", "dae", "--noise-level", "1.5", "--epochs", "0"], "masking"),
        (["fit", "--model", "ae", "--likelihood", "laplace", "--epochs", "0"], "squared error"),
        (["fit", "--model", "pca"], "invalid choice"),
        (["run", "--dataset", "cifar"], "invalid choice"),
        (["run", "--dataset", "mnist", "--data-root", "/nonexistent/x"], "missing"),
        (["run", "--dataset", "mnist"], "needs a data root"),
        (["run", "--latent-dim", "64", "--epochs", "0"], "smaller than the data dimension"),
        (["check-ppca", "--latent-dim", "64"], "smaller than the data dimension"),
        (["run", "--lr", "-1"], "positive number"),
        (["fit", "--hidden", "a,b"], "comma-separated"),
        (["fit", "--device", "tpu", "--epochs", "0"], "device"),
        (["frobnicate"], "invalid choice"),
        (["run", "--likelihood", "bernoulli"], "invalid choice"),
        (["fit", "--architecture", "conv", "--epochs", "0"], "28 x 28"),
        (["fit", "--prior", "flat"], "invalid choice"),
        (["fit", "--resume", "/nonexistent/run"], "no such checkpoint file"),
        (["fit", "--clip-norm", "0"], "positive number"),
        (["fit", "--elbo", "renyi"], "invalid choice"),
        (["fit", "--model", "ae", "--elbo", "trace", "--epochs", "0"], "no KL term"),
        (["run", "--no-such-option"], "unrecognized arguments"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    if argv[0] in ("run", "fit", "check-ppca") and "--resume" not in argv:
        argv = [*argv, "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_python_dash_m_entry_point():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-m", "ppvae", "run", "--dataset", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "invalid choice" in res.stderr


def test_help_exits_0_and_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    printed = capsys.readouterr()
    assert exit_.value.code == 0 and "check" not in printed.err and "run" in printed.out


# ---------------------------------------------------------------------- issue #14, part 3
SMALL = ["--n-train", "60", "--n-test", "20", "--latent-dim", "2"]
TINY_EVAL = [
    *("--iw-samples", "3", "--eval-points", "5", "--gap-points", "2", "--nuts-points", "0"),
    *("--ais-points", "0"),
]


def _training_module():
    """Where the CLI's experiments call ``fit`` (ppvae.workflows; ppvae.cli before it)."""
    import importlib

    try:
        return importlib.import_module("ppvae.workflows")
    except ImportError:
        return importlib.import_module("ppvae.cli")


def _exit(argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "option",
    [
        ["--prior", "mog"],
        ["--hidden", "512"],
        ["--iw-samples", "7"],
        ["--kl-weight", "3"],
        ["--architecture", "conv"],
        ["--clip-norm", "1"],
    ],
)
def test_check_ppca_refuses_options_it_does_not_use(option, tmp_path, capsys):
    argv = ["check-ppca", *SMALL, "--epochs", "1", *option, "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unrecognized arguments" in err[0] and option[0] in err[0]


@pytest.mark.parametrize(
    "model, option",
    [
        ("ae", ["--kl-weight", "3"]),
        ("dae", ["--kl-warmup", "2"]),
        ("sae", ["--prior", "mog"]),
        ("cae", ["--architecture", "conv"]),
        ("stacked", ["--iw-samples", "7"]),
        ("ae", ["--rho", "0.1"]),  # a sparse autoencoder's option
        ("vae", ["--noise-level", "0.2"]),
        ("stacked", ["--clip-norm", "1"]),  # its several fits do not clip
    ],
)
def test_fit_refuses_options_the_model_cannot_honour(model, option, tmp_path, capsys):
    argv = ["fit", "--model", model, *SMALL, "--epochs", "0", "--hidden", "8", *option]
    code, err = _exit([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err) == 1 and option[0] in err[0], err
    assert not (tmp_path / "o" / "model.pt").exists()


def test_fit_autoencoder_honours_clip_norm(tmp_path):
    out = tmp_path / "ae"
    argv = ["fit", "--model", "ae", *SMALL, "--epochs", "1", "--hidden", "8"]
    assert main([*argv, "--clip-norm", "1e-9", "--out", str(out)]) == 0
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["fit_config"]
    assert saved["clip_norm"] == 1e-9


def _small_fit(out, *extra):
    argv = ["fit", *SMALL, "--hidden", "8", "--batch-size", "20", "--iw-samples", "3"]
    return main([*argv, "--epochs", "1", *extra, "--out", str(out)])


def test_resume_refuses_options_it_cannot_change(tmp_path, capsys):
    out = tmp_path / "vae"
    assert _small_fit(out) == 0
    capsys.readouterr()
    argv = ["fit", "--resume", str(out), "--epochs", "2", "--batch-size", "7", "--hidden", "4"]
    code, err = _exit(argv, capsys)
    assert code == 2 and len(err) == 1, err
    assert "--resume continues the saved run; it cannot change" in err[0]
    assert "--batch-size" in err[0] and "--hidden" in err[0] and "--epochs" not in err[0]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["epoch"] == 1


def test_resume_may_change_epochs_lr_clip_norm_and_progress(tmp_path):
    out = tmp_path / "vae"
    assert _small_fit(out) == 0
    argv = ["fit", "--resume", str(out), "--epochs", "2", "--lr", "1e-4", "--clip-norm", "2"]
    assert main([*argv, "--no-progress"]) == 0
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["progress"]["epoch"] == 2
    assert payload["fit_config"]["lr"] == 1e-4 and payload["fit_config"]["clip_norm"] == 2.0
    m = json.loads((out / "metrics.json").read_text())
    assert m["lr"] == 1e-4 and len(m["history"]["train_elbo"]) == 2


@pytest.mark.parametrize(
    "argv, held",
    [
        (
            [
                "run",
                *SMALL,
                "--epochs",
                "1",
                "--hidden",
                "8",
                "--check-epochs",
                "1",
                "--ais-points",
                "0",
            ],
            "metrics.json",
        ),
        (["fit", *SMALL, "--epochs", "1", "--hidden", "8"], "model.pt"),
        (["check-ppca", *SMALL, "--epochs", "1"], "check_ppca.json"),
        (
            [
                "compare",
                *SMALL,
                "--epochs",
                "1",
                "--hidden",
                "8",
                "--linear-epochs",
                "1",
                *TINY_EVAL,
            ],
            "compare.json",
        ),
    ],
)
def test_an_existing_run_is_never_overwritten_without_force(argv, held, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / held).write_text("an earlier run")
    code, err = _exit([*argv, "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and "--force" in err[0] and held in err[0], err
    assert (out / held).read_text() == "an earlier run"


def test_fit_into_a_checkpointed_folder_needs_resume_or_force(tmp_path, capsys):
    out = tmp_path / "vae"
    assert _small_fit(out) == 0
    capsys.readouterr()
    code, err = _exit(["fit", *SMALL, "--epochs", "1", "--hidden", "8", "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and "--force" in err[0] and "--resume" in err[0], err
    assert _small_fit(out, "--force") == 0


def test_stacked_cannot_resume_and_never_offers_to(tmp_path, capsys, monkeypatch):
    out = tmp_path / "stacked"
    argv = ["fit", "--model", "stacked", *SMALL, "--epochs", "1", "--hidden", "8"]
    assert main([*argv, "--out", str(out)]) == 0
    assert not (out / "checkpoint.pt").exists()
    capsys.readouterr()
    code, err = _exit(["fit", "--resume", str(out)], capsys)
    assert code == 2 and len(err) == 1 and "cannot be resumed" in err[0], err

    def interrupted(*args, **kwargs):
        raise ppvae.TrainingInterrupted("interrupted at epoch 1, step 1")

    monkeypatch.setattr(ppvae.train.loop, "fit", interrupted)  # what pretrain calls
    code, err = _exit([*argv, "--out", str(tmp_path / "again")], capsys)
    assert code == 130 and "interrupted" in err[-1] and "--resume" not in err[-1], err


def test_reports_show_the_resolved_settings(tmp_path):
    out = tmp_path / "run"
    argv = [
        "run",
        *SMALL,
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--iw-samples",
        "3",
        "--ais-points",
        "0",
    ]
    assert main([*argv, "--check-epochs", "1", "--out", str(out)]) == check_status(out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["vae"]["lr"] == 1e-3 and m["vae"]["fit_config"]["betas"] == [0.9, 0.999]
    assert "learning rate 0.001" in (out / "report.md").read_text()
    assert "learning rate None" not in (out / "report.md").read_text()


def test_run_checks_the_linear_vae_on_compare_s_schedule(tmp_path, monkeypatch):
    """Above LINEAR_FULL_BATCH_MAX rows the check trains on minibatches for a bounded number
    of steps (shrunk here: 60 rows count as "large", minibatches of 20, 6 steps)."""
    wf = _training_module()
    monkeypatch.setattr(wf, "LINEAR_FULL_BATCH_MAX", 50)
    monkeypatch.setattr(wf, "LINEAR_BATCH_SIZE", 20)
    monkeypatch.setattr(wf, "LINEAR_STEPS", 6)
    out = tmp_path / "run"
    argv = [
        "run",
        *SMALL,
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--iw-samples",
        "3",
        "--ais-points",
        "0",
    ]
    assert main([*argv, "--out", str(out)]) == check_status(out)
    check = json.loads((out / "metrics.json").read_text())["ppca_check"]
    assert (check["epochs"], check["batch_size"]) == (2, 20)
    assert "2 epochs of minibatches of 20" in (out / "report.md").read_text()


def test_run_help_documents_the_linear_check(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--check-epochs" in text and "--check-batch-size" in text and "10,000" in text


@pytest.mark.parametrize("error", [RuntimeError("a bug"), ValueError("a bug, not the user's")])
def test_a_bug_keeps_its_traceback(error, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(ppvae.evaluate, "compare_to_ppca", broken)
    with pytest.raises(type(error), match="a bug"):
        main(["check-ppca", *SMALL, "--epochs", "1", "--out", str(tmp_path / "o")])


def test_divergence_names_the_options_and_the_resume_command(tmp_path, monkeypatch, capsys):
    wf = _training_module()
    real = wf.fit

    def diverges(*args, **kwargs):
        real(*args, **{**kwargs, "epochs": 1})
        raise FloatingPointError(
            "non-finite loss at epoch 2, step 1: training stopped; the last good checkpoint "
            "is kept. Usual remedies: a lower learning rate (lr), gradient clipping "
            "(clip_norm), or checking the data for extreme values; then resume"
        )

    monkeypatch.setattr(wf, "fit", diverges)
    out = tmp_path / "vae"
    assert _small_fit(out, "--epochs", "3") == 1
    err = capsys.readouterr().err
    assert "--lr" in err and "--clip-norm" in err and "(lr)" not in err
    assert f"ppvae fit --resume {out}" in err


def test_fit_takes_the_guide_and_the_importance_weighted_objective(tmp_path, capsys):
    out = tmp_path / "iwae"
    argv = ["fit", *SMALL, "--epochs", "2", "--hidden", "8", "--iw-samples", "3"]
    extra = ["--guide", "fullrank", "--elbo", "iwae", "--num-particles", "3"]
    assert main([*argv, *extra, "--out", str(out)]) == 0
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["fit_config"]["elbo"] == "iwae"
    assert payload["fit_config"]["num_particles"] == 3
    assert payload["config"]["guide"] == {"name": "fullrank"}
    assert isinstance(ppvae.load(out / "model.pt").q, ppvae.FullRankGaussian)
    capsys.readouterr()
    code, err = _exit(["fit", "--resume", str(out), "--num-particles", "5"], capsys)
    assert code == 2 and "--num-particles" in err[0], err
    code, err = _exit(["fit", "--model", "ae", *SMALL, "--guide", "iaf"], capsys)
    assert code == 2 and "--guide" in err[0], err
