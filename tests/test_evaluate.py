import math

import pytest
import torch
from torch import nn

import ppvae
from ppvae import evaluate


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    vae = ppvae.VAE(64, 4, hidden=(32,))
    ppvae.fit(vae, digits.train, epochs=10, batch_size=128, lr=3e-3, seed=0)
    return vae


def test_iw_bound_at_least_elbo_and_grows_with_k(trained, digits):
    """E[L_K] is nondecreasing in K (Burda et al. 2015, Thm 1); L_1 is the ELBO."""
    x = digits.test
    torch.manual_seed(0)
    elbo = evaluate.elbo(trained, x, num_samples=1)
    torch.manual_seed(0)
    l1 = evaluate.log_likelihood(trained, x, num_samples=1)
    torch.testing.assert_close(l1, elbo)  # the same draws give the same number
    # E[L_K] per image, estimated by averaging R independent replicates (SE shrinks as 1/sqrt(R))
    torch.manual_seed(1)
    reps = 20
    est = {
        k: torch.stack(
            [evaluate.log_likelihood(trained, x, num_samples=k) for _ in range(reps)]
        ).mean(0)
        for k in (1, 10, 100)
    }
    for lo, hi in ((1, 10), (10, 100)):
        d = est[hi] - est[lo]  # paired over test images
        se = float(d.std()) / math.sqrt(len(d))
        assert float(d.mean()) > 3 * se, (lo, hi, float(d.mean()), se)
    assert float(est[100].mean()) > float(evaluate.elbo(trained, x, num_samples=10).mean())


def _vae_with_known_likelihood():
    """Decoder ignores z and q(z|x) = p(z): every importance weight equals p(x | z) exactly."""
    vae = ppvae.VAE(5, 2, hidden=(4,))
    with torch.no_grad():
        last_dec = vae.decoder.net[-1]
        last_dec.weight.zero_()
        last_dec.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
        last_enc = vae.encoder.net[-1]
        last_enc.weight.zero_()
        last_enc.bias.zero_()
        last_enc.bias[2:] = math.log(math.expm1(1.0 - vae.encoder.min_scale))
        vae.likelihood.raw_scale.fill_(math.log(math.expm1(0.7 - vae.likelihood.min_scale)))
    return vae


def test_estimators_exact_when_weights_are_constant():
    vae = _vae_with_known_likelihood()
    x = torch.rand(37, 5, generator=torch.Generator().manual_seed(0))
    exact = torch.distributions.Normal(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), 0.7)
    exact = exact.log_prob(x).sum(-1)
    for est in (
        evaluate.elbo(vae, x, num_samples=3),
        evaluate.log_likelihood(vae, x, num_samples=50),
        # a tiny memory budget forces chunks of a few points and a few samples
        evaluate.log_likelihood(vae, x, num_samples=50, max_elements=40),
        evaluate.elbo(vae, x, num_samples=7, max_elements=11),
    ):
        assert est.shape == (37,)
        torch.testing.assert_close(est, exact, atol=1e-4, rtol=0)


def test_chunking_keeps_shapes(trained, digits):
    x = digits.test[:13]
    out = evaluate.log_likelihood(trained, x, num_samples=30, max_elements=64 * 7 * 4)
    assert out.shape == (13,) and bool(torch.isfinite(out).all())


def test_evaluate_rejects_bad_input(trained, digits):
    with pytest.raises(ValueError, match="num_samples"):
        evaluate.log_likelihood(trained, digits.test, num_samples=0)
    with pytest.raises(ValueError, match="expected 64 columns"):
        evaluate.elbo(trained, digits.test[:, :8])
    with pytest.raises(TypeError, match="no model or guide method"):
        evaluate.elbo(nn.Linear(2, 2), digits.test)
    bern = ppvae.VAE(64, 2, likelihood="bernoulli")
    with pytest.raises(ValueError, match="binary data"):
        evaluate.log_likelihood(bern, digits.test, num_samples=2)
