"""Progress and stage times (issue 32, deliver 8): every long stage shows a bar when asked
(IW evaluation, the gaps' optimization, NUTS; AIS and BDMC had theirs), and every command
times its stages."""

from __future__ import annotations

import pytest
import torch

import ppvae
from ppvae import evaluate, workflows


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    vae = ppvae.VAE(6, 2, hidden=(4,))
    return vae, torch.rand(12, 6)


@pytest.mark.parametrize(
    "run, bar",
    [
        (lambda v, x, p: evaluate.estimate_log_likelihood(v, x, 5, psis=False, progress=p), "IW"),
        (lambda v, x, p: evaluate.log_likelihood(v, x, 5, progress=p), "IW"),
        (
            lambda v, x, p: evaluate.inference_gaps(v, x[:3], num_samples=5, steps=2, progress=p),
            "gaps",
        ),
        (
            lambda v, x, p: evaluate.nuts_posterior(
                v, x[:1], num_samples=4, warmup_steps=2, num_chains=2, progress=p
            ),
            "Sample",
        ),
    ],
    ids=["estimate_log_likelihood", "log_likelihood", "inference_gaps", "nuts_posterior"],
)
def test_a_long_evaluation_shows_a_bar_when_asked_and_is_silent_otherwise(
    run, bar, small, capfd, monkeypatch
):
    """(Pyro hides its NUTS bar where CI or PYTEST_XDIST_WORKER is set, as in this suite's
    workers: both are removed here, so the bar shows as it would for a user.)"""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    vae, x = small
    run(vae, x, True)
    assert bar in capfd.readouterr().err
    run(vae, x, False)
    assert capfd.readouterr().err == ""


def test_fit_and_check_ppca_time_their_stages(tmp_path, capsys):
    ds = workflows.load("digits", n_train=30, n_test=10)
    fit = workflows.fit_vae(ds, latent_dim=2, hidden=(4,), epochs=1, iw_samples=3, progress=True)
    assert list(fit.metrics["stage_seconds"]) == ["training", "evaluation"]
    err = capsys.readouterr().err
    assert "ppvae fit: VAE training, 1 epochs: " in err and "IW" in err
    check = workflows.check_ppca(ds, latent_dim=2, epochs=1, progress=False, out=tmp_path / "c")
    stages = check.metrics["stage_seconds"]
    assert list(stages) == ["ppca", "linear_vae_training", "comparison", "figure"]
    assert all(v >= 0 for v in stages.values())
    ae = workflows.fit_autoencoder(ds, model="ae", latent_dim=2, hidden=(4,), epochs=1)
    assert list(ae.metrics["stage_seconds"]) == ["training", "evaluation"]
