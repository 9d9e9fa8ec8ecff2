"""Importance-weighted objectives (issue #15, part 2): the per-point IWAE bound and DReG."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import ppvae
from ppvae import PPCA, LinearVAE, evaluate
from ppvae.errors import ProgramError
from ppvae.train.iwae import IWAE_ELBO

from .test_guides import _unseen_linear


@pytest.mark.parametrize("case", ["digits", "unseen"])
@pytest.mark.parametrize("K", [1, 8])
def test_the_iwae_objective_is_log_likelihood_with_the_same_draws(case, K, digits):
    """Both take K draws per point in a particle plate left of the data plate, in the same
    order, so the bound's value is evaluate.log_likelihood's sum up to float rounding."""
    X = digits.test[:40] if case == "digits" else _unseen_linear(40).float()
    torch.manual_seed(0)
    vae = ppvae.VAE(X.shape[1], 3, hidden=(16,))
    pyro.set_rng_seed(1)
    bound = -IWAE_ELBO(num_particles=K).loss(vae.model, vae.guide, X)
    pyro.set_rng_seed(1)
    ll = evaluate.log_likelihood(vae, X, num_samples=K)
    assert bound == pytest.approx(float(ll.sum()), rel=1e-6)
    pyro.set_rng_seed(1)  # DReG changes gradients only
    assert -IWAE_ELBO(K, dreg=True).loss(vae.model, vae.guide, X) == pytest.approx(bound, rel=1e-6)


@pytest.mark.long_convergence
@pytest.mark.parametrize("case", ["digits", "unseen"])
def test_an_iwae_trained_linear_vae_lands_on_the_ppca_mle(case, digits):
    """The IWAE bound's maximum over (W, b, s2) is still the PPCA maximum (the bound is tight
    at the exact posterior, which the guide family reaches at the MLE); gap <= 0.02."""
    # 600 digits keep this under 15 s: K = 4 draws make each full-batch step 4x the work
    X, k = (digits.train[:600].double(), 8) if case == "digits" else (_unseen_linear(), 3)
    ppca = PPCA(k).fit(X)
    torch.manual_seed(0)
    vae = LinearVAE(X.shape[1], k)
    ppvae.fit(vae, X.float(), epochs=2000, batch_size=len(X), elbo="iwae", num_particles=4)
    r = evaluate.compare_to_ppca(vae, ppca, X)
    assert r["loglik_gap"] <= 0.02, r["loglik_gap"]


def _guide_and_model_grads(vae, x, loss_fn, seed):
    pyro.set_rng_seed(seed)
    loss = loss_fn.differentiable_loss(vae.model, vae.guide, x)
    guide_params = [vae.encoder.V, vae.encoder.c, vae.encoder.raw_scale]
    model_params = [vae.decoder.weight, vae.decoder.bias]
    grads = torch.autograd.grad(loss, guide_params + model_params)
    flat = [g.reshape(-1) for g in grads]
    return torch.cat(flat[:3]), torch.cat(flat[3:])


def test_dreg_has_the_iwae_gradients_mean_and_a_lower_variance():
    """DReG is unbiased for the same guide gradient (Tucker et al. 2019): over S seeds with the
    same draws, each coordinate's paired mean difference is within 4.5 standard errors of 0
    (max over 83 coordinates of |N(0, 1)|: exceeded with probability < 1e-3); the model's
    gradient is IWAE's exactly, draw for draw; and the guide gradient's variance is lower."""
    X = _unseen_linear(30).float()
    torch.manual_seed(0)
    vae = LinearVAE(20, 3, encoder="free")
    ppvae.fit(vae, X, epochs=20, batch_size=30, lr=0.02, progress=False)  # off the optimum
    iwae, dreg = IWAE_ELBO(16), IWAE_ELBO(16, dreg=True)
    pairs = []
    for seed in range(300):
        gi, mi = _guide_and_model_grads(vae, X, iwae, seed)
        gd, md = _guide_and_model_grads(vae, X, dreg, seed)
        torch.testing.assert_close(md, mi, rtol=1e-5, atol=1e-4)
        pairs.append((gi, gd))
    gi = torch.stack([p[0] for p in pairs]).double()
    gd = torch.stack([p[1] for p in pairs]).double()
    diff = gd - gi
    z = diff.mean(0) / (diff.std(0) / math.sqrt(len(pairs)) + 1e-12)
    assert float(z.abs().max()) < 4.5, float(z.abs().max())
    ratio = float(gd.var(0).sum() / gi.var(0).sum())
    print(f"DReG / IWAE guide-gradient variance (K=16, 300 seeds): {ratio:.3f}")
    assert ratio < 1.0, ratio


def test_iwae_refuses_global_latents_and_trains_with_a_warm_up(digits):
    vae = ppvae.VAE(64, 2, hidden=(8,), prior="hierarchical")
    with pytest.raises(ProgramError, match="every latent site must lie in the 'data' plate"):
        ppvae.fit(vae, digits.train[:100], epochs=1, elbo="iwae", num_particles=3)
    vae = ppvae.VAE(64, 2, hidden=(8,))
    h = ppvae.fit(
        vae, digits.train[:200], epochs=4, batch_size=50, elbo="iwae-dreg", num_particles=4,
        kl_warmup_epochs=2, test=digits.test[:50],
    )  # fmt: skip
    assert h.config["elbo"] == "iwae-dreg" and h.epochs == 4
    assert h.test_elbo[-1] > h.test_elbo[0]


@pytest.mark.parametrize("guide", ["fullrank", "iaf"])
def test_iwae_with_a_richer_guide_resumes_exactly(guide, digits, tmp_path):
    x = digits.train[:200]
    runs = []
    for split in (False, True):
        torch.manual_seed(0)
        vae = ppvae.VAE(64, 3, hidden=(16,), guide=guide)
        folder = tmp_path / f"{guide}-{split}"
        # DReG detaches q's parameters in log q, which a flow's transforms do not expose
        elbo = "iwae-dreg" if guide == "fullrank" else "iwae"
        settings = dict(batch_size=50, elbo=elbo, num_particles=3, checkpoint_dir=folder)
        if split:
            ppvae.fit(vae, x, epochs=2, **settings)
            torch.manual_seed(1)  # a new process: other initial weights, overwritten on resume
            vae = ppvae.VAE(64, 3, hidden=(16,), guide=guide)
            h = ppvae.fit(vae, x, epochs=4, resume=True, **settings)
        else:
            h = ppvae.fit(vae, x, epochs=4, **settings)
        runs.append((h.train_elbo, {k: v.clone() for k, v in vae.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    for key in runs[0][1]:
        assert torch.equal(runs[0][1][key], runs[1][1][key]), key


def test_dreg_refuses_a_flow_guide_by_name(digits):
    vae = ppvae.VAE(64, 2, hidden=(8,), guide="iaf")
    with pytest.raises(ProgramError, match=r"TransformedDistribution.*use elbo='iwae'"):
        ppvae.fit(vae, digits.train[:50], epochs=1, elbo="iwae-dreg", num_particles=2)
