"""The conditional VAE: trained on labelled rows, scored as log p(x | y), saved and sampled."""

from __future__ import annotations

import pyro
import pytest
import torch

import ppvae
from ppvae import evaluate


@pytest.fixture(scope="module")
def small_digits():
    ds = ppvae.load_dataset("digits", seed=0)
    return (ds.train[:400] > 0.5).float(), ds.train_labels[:400], (ds.test[:100] > 0.5).float(), \
        ds.test_labels[:100]  # fmt: skip


@pytest.mark.parametrize("conditional_prior", [False, True])
def test_cvae_trains_on_labels_and_scores_log_p_x_given_y(small_digits, tmp_path,
                                                          conditional_prior):  # fmt: skip
    x, y, xt, yt = small_digits
    torch.manual_seed(0)
    cvae = ppvae.ConditionalVAE(64, 10, 4, hidden=(64,), conditional_prior=conditional_prior)
    h = ppvae.fit(cvae, x, labels=y, epochs=15, batch_size=100, lr=3e-3, progress=False)
    assert h.train_elbo[-1] > h.train_elbo[0] + 3  # it learned (several nats per image)
    pyro.set_rng_seed(0)
    right = evaluate.estimate_log_likelihood(cvae, xt, num_samples=200, y=yt)
    wrong = evaluate.estimate_log_likelihood(cvae, xt, num_samples=200, y=(yt + 5) % 10)
    # the label carries information: log p(x | true y) beats a wrong label on the same images
    # by far more than 4 standard errors of the paired difference (with both MC errors)
    d = right.log_px - wrong.log_px
    se = ((d.var() + (right.mc_se**2 + wrong.mc_se**2).mean()) / len(d)).sqrt()
    assert float(d.mean()) > 4 * float(se)
    elbo = evaluate.elbo(cvae, xt, num_samples=50, y=yt)
    assert float(elbo.mean()) <= right.mean
    with pytest.raises(ppvae.errors.InputError, match=r"y must be integer labels of shape"):
        evaluate.log_likelihood(cvae, xt, num_samples=2, y=yt[:5])
    # conditional samples: one row per class; saved and loaded with its class
    assert cvae.sample(torch.arange(10)).shape == (10, 64)
    loaded = ppvae.load(ppvae.save(cvae, tmp_path / "cvae.pt"))
    assert type(loaded) is ppvae.ConditionalVAE and loaded.conditional_prior == conditional_prior
    pyro.set_rng_seed(1)
    a = evaluate.log_likelihood(cvae, xt[:10], num_samples=20, y=yt[:10])
    pyro.set_rng_seed(1)
    torch.testing.assert_close(evaluate.log_likelihood(loaded, xt[:10], num_samples=20,
                                                       y=yt[:10]), a)  # fmt: skip


def test_cvae_refuses_unlabelled_rows_by_name(small_digits):
    x, y, _, _ = small_digits
    y = y.clone()
    y[3] = ppvae.data.UNLABELLED
    with pytest.raises(ppvae.errors.ProgramError, match=r"every label in \[0, 10\)"):
        ppvae.fit(ppvae.ConditionalVAE(64, 10, 2, hidden=(8,)), x, labels=y, epochs=1,
                  batch_size=400, progress=False)  # fmt: skip
