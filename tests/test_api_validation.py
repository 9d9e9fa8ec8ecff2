"""Python API arguments refused by name, and CLI help that tells the truth (issue 32)."""

from __future__ import annotations

import math

import pytest
import torch

import ppvae
from ppvae import evaluate
from ppvae.cli import main
from ppvae.errors import InputError


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    vae = ppvae.VAE(6, 2, hidden=(8,))
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(0))
    return vae, x


@pytest.mark.parametrize("bad", ["a", 2.5, True, 0, -3, None])
def test_estimate_log_likelihood_refuses_a_bad_num_samples(small, bad):
    vae, x = small
    with pytest.raises(InputError, match=f"num_samples must be a positive integer, got {bad!r}"):
        evaluate.estimate_log_likelihood(vae, x, num_samples=bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps must be a positive integer, got 0"),
        ({"steps": "10"}, "steps must be a positive integer"),
        ({"elbo_samples": 0}, "elbo_samples must be a positive integer"),
        ({"train_samples": -1}, "train_samples must be a positive integer"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": "0.1"}, "lr must be a positive number"),
    ],
)
def test_inference_gaps_refuses_settings_that_would_not_optimize(small, kwargs, match):
    vae, x = small
    with pytest.raises(InputError, match=match):
        evaluate.inference_gaps(vae, x, num_samples=5, **kwargs)


def test_one_importance_sample_has_no_standard_error(small):
    vae, x = small
    est = evaluate.estimate_log_likelihood(vae, x, num_samples=1, psis=False)
    assert bool(torch.isnan(est.mc_se).all())  # unknown, not 0
    assert bool(torch.isfinite(est.log_px).all())
    two = evaluate.estimate_log_likelihood(vae, x, num_samples=2, psis=False)
    assert bool(torch.isfinite(two.mc_se).all())


def test_load_dataset_refuses_a_negative_seed():
    with pytest.raises(InputError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        ppvae.load_dataset("digits", seed=-1)


def test_check_ppca_help_states_the_linear_vae_learning_rate(capsys):
    with pytest.raises(SystemExit):
        main(["check-ppca", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    lr = ppvae.LinearVAE.training_defaults["lr"]
    assert f"--lr LR Adam learning rate of the LinearVAE (default {lr:g}" in text
    assert "1e-3" not in text and math.isclose(lr, 0.05)


@pytest.mark.parametrize(
    "model, given, named",
    [
        ("ae", {"rho": 0.1}, "rho"),
        ("dae", {"contraction": 0.1}, "contraction"),
        ("cae", {"noise": "gaussian"}, "noise"),
        ("sae", {"sparsity": "l1", "beta": 100.0}, "beta"),
        ("sae", {"l1": 5.0}, "l1"),  # the default penalty is the KL one
        ("stacked", {"sparsity": "kl"}, "sparsity"),
    ],
)
def test_fit_autoencoder_refuses_a_setting_its_model_does_not_use(model, given, named):
    """Issue 32: fit_autoencoder(model="ae", rho=0.1) trained as if rho were not there."""
    from ppvae import workflows

    with pytest.raises(InputError, match=rf"does not use {named}\b") as error:
        workflows.fit_autoencoder("digits", model=model, epochs=1, **given)
    assert str(error.value).count("\n") == 0
