import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import ppvae
from ppvae.cli import main

from .conftest import REPO

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


def test_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, *TINY_CHECK, "--out", str(out)]) == 0
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
    assert "PPCA" in report and "training_curve.png" in report
    assert m["ppca_check"]["epochs"] == 5 and math.isfinite(m["ppca_check"]["loglik_gap"])
    assert "LinearVAE" in report and "covariance_rel_error" in report
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
    ]
    assert main([*argv, "--out", str(out)]) == 0
    r = json.loads((out / "compare.json").read_text())
    assert set(r["models"]) == {"PPCA", "LinearVAE", "VAE (standard prior, gaussian)"}
    vae = r["models"]["VAE (standard prior, gaussian)"]
    for key in ("iw", "iw_sem", "khat_share_gt_0.7", "bits_per_dim", "elbo"):
        assert math.isfinite(vae["test"][key])
    assert math.isfinite(vae["approximation_gap"]) and math.isfinite(vae["amortization_gap"])
    idata = az.from_netcdf(str(out / "log_likelihood.nc"))
    ll = idata.log_likelihood
    assert set(ll.data_vars) == {"ppca", "linear_vae", "vae"}
    assert ll["ppca"].shape == (1, 1, 359)
    assert int(ll["vae"].notnull().sum()) == 50  # IW estimates on the evaluation subset
    assert (out / "loglik_scatter.png").exists() and (out / "nuts_vs_guide.png").exists()
    assert len(vae["nuts"]) == 1 and math.isfinite(vae["nuts"][0]["r_hat_max"])
    assert "k>0.7" in capsys.readouterr().out


def test_check_ppca_writes_its_comparison(tmp_path, capsys):
    out = tmp_path / "check"
    argv = ["check-ppca", "--epochs", "20", "--n-train", "300", "--latent-dim", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    r = json.loads((out / "check_ppca.json").read_text())
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
    argv = ["fit", "--model", model, *TINY, "--out", str(out)]
    assert main(argv) == 0
    back = ppvae.load(out / "model.pt")
    assert type(back).kind == model
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == model and math.isfinite(m["test_reconstruction_error"])
    for fig in ("reconstructions", "features", "latent_scatter", "training_curve"):
        assert (out / m["figures"][fig]).exists(), fig
    if model == "stacked":
        assert 0.0 <= m["test_accuracy"] <= 1.0
        assert back.hidden == (16, 3)
    else:
        assert (out / "checkpoint.pt").exists()
    assert "wrote" in capsys.readouterr().out


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
    if argv[0] in ("run", "fit", "check-ppca"):
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
    res = subprocess.run(
        [sys.executable, "-m", "ppvae", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0 and "check" not in res.stderr and "run" in res.stdout


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "example" / "model.pt").exists()
    assert isinstance(namespace["vae2"], ppvae.VAE)
    assert bool(torch.isfinite(namespace["loglik"]).all())
