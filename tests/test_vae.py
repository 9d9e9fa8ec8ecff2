import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import ppvae
from ppvae.evaluate import log_importance_weights


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_model_and_guide_site_shapes(likelihood):
    vae = ppvae.VAE(data_dim=10, latent_dim=3, hidden=(8,), likelihood=likelihood)
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    guide_tr = poutine.trace(vae.guide).get_trace(x, num_data=100)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, num_data=100)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    z_q, z_p, obs = guide_tr.nodes["z"], model_tr.nodes["z"], model_tr.nodes["x"]
    assert z_q["fn"].batch_shape == (4,) and z_q["fn"].event_shape == (3,)
    assert z_p["value"].shape == (4, 3) and torch.equal(z_p["value"], z_q["value"])
    assert obs["is_observed"] and obs["fn"].event_shape == (10,) and obs["fn"].batch_shape == (4,)
    # minibatch of 4 out of 100: every per-sample term is scaled by N / B = 25
    assert obs["scale"] == 25.0 and z_p["scale"] == 25.0 and z_q["scale"] == 25.0
    assert obs["log_prob"].shape == (4,) and z_q["log_prob"].shape == (4,)
    names = {n for n, s in model_tr.nodes.items() if s["type"] == "param"}
    assert any(n.startswith("vae$$$decoder") for n in names)


def test_trace_elbo_equals_sum_of_log_weights():
    """Trace_ELBO's loss is -sum_n [log p(x_n, z_n) - log q(z_n | x_n)] for the same z."""
    vae = ppvae.VAE(6, 2, hidden=(5,))
    x = torch.rand(7, 6)
    pyro.set_rng_seed(1)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        log_w = log_importance_weights(vae, x, num_samples=1)
    assert log_w.shape == (1, 7)
    assert abs(loss + float(log_w.sum())) < 1e-4 * max(1.0, abs(loss))


def test_public_encode_decode_sample():
    vae = ppvae.VAE(12, 4, hidden=(16, 8))
    loc, scale = vae.encode(torch.rand(5, 12))
    assert loc.shape == scale.shape == (5, 4) and bool((scale > 0).all())
    px = vae.decode(torch.randn(3, 5, 4))
    assert px.batch_shape == (3, 5) and px.event_shape == (12,)
    assert vae.sample(6).shape == (6, 12) and vae.reconstruct(torch.rand(2, 12)).shape == (2, 12)
    bern = ppvae.VAE(12, 4, likelihood="bernoulli")
    s = bern.sample(4)
    assert bool(((s > 0) & (s < 1)).all())  # Bernoulli means are probabilities


def test_linear_networks_when_no_hidden_layers():
    vae = ppvae.VAE(12, 4, hidden=())
    assert [type(m).__name__ for m in vae.decoder.net] == ["Linear"]


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="latent_dim"):
        ppvae.VAE(10, 0)
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        ppvae.VAE(10, 2, likelihood="poisson")
    with pytest.raises(ValueError, match="unknown activation"):
        ppvae.VAE(10, 2, activation="swishy")
    with pytest.raises(ValueError, match="hidden widths"):
        ppvae.VAE(10, 2, hidden=(0,))
    with pytest.raises(ValueError, match="Gaussian scale"):
        ppvae.Gaussian(10, scale="full")


def test_bernoulli_support_is_validated():
    lik = ppvae.Bernoulli()
    with pytest.raises(ValueError, match="binary data"):
        lik.check_support(torch.tensor([[0.0, 0.5]]))
    lik.check_support(torch.tensor([[0.0, 1.0]]))
