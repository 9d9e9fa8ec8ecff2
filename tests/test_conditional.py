"""The conditional VAE: trained on labelled rows, scored as log p(x | y), saved and sampled."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import ppvae
from ppvae import evaluate
from ppvae.data import labelled_subset


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


# ------------------------------------------------------------------------------ M2
def _m2_terms(m, x, y, seed):
    """Per class c, for the guide's own draws z_c (reproduced from the seed): the supervised
    ELBO terms log p(c) + log p(x | z_c, c) + log p(z_c) - log q(z_c | x, c), (C, n), and
    q(c | x), (n, C)."""
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        tr = pyro.poutine.trace(pyro.poutine.enum(m.guide, first_available_dim=-2)).get_trace(x, y)
    z = tr.nodes["z"]["value"]  # (C, n, k): one draw per enumerated class
    C = m.n_classes
    onehot = torch.nn.functional.one_hot(torch.arange(C), C).float()[:, None, :].expand(
        C, len(x), C
    )
    with torch.no_grad():
        log_px = m.likelihood(m.decoder(torch.cat([z, onehot], -1))).log_prob(x)
        log_pz = pyro.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        loc, scale = m.encoder(torch.cat([x.expand(C, *x.shape), onehot], -1))
        log_qz = pyro.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        q_y = torch.softmax(m.classifier(x), -1)
    return -math.log(C) + log_px + log_pz - log_qz, q_y


@pytest.fixture(scope="module")
def m2(small_digits):
    x, y, _, _ = small_digits
    torch.manual_seed(0)
    m = ppvae.SemiSupervisedVAE(64, 10, 3, hidden=(32,), alpha=5.0)
    h = ppvae.fit(m, x, labels=labelled_subset(y, 50, seed=0), epochs=3, batch_size=100,
                  progress=False)  # fmt: skip
    assert h.config["elbo"] == "enum"
    return m


def test_m2_enumerated_elbo_is_the_sum_over_classes(m2, small_digits):
    """Unlabelled rows: TraceEnum's ELBO equals sum_c q(c | x) ELBO_c + H(q(y | x)), the
    explicit sum over the 10 classes on the same draws, to float rounding."""
    x = small_digits[0][:20]
    y = torch.full((20,), ppvae.data.UNLABELLED)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(5)
    enumerated = -elbo.loss(m2.model, m2.guide, x, y)
    per_class, q_y = _m2_terms(m2, x, y, seed=5)
    entropy = -(q_y * q_y.log()).sum(-1)
    explicit = float(((q_y.T * per_class).sum(0) + entropy).sum())
    assert enumerated == pytest.approx(explicit, rel=1e-5)


def test_m2_labelled_rows_get_the_supervised_elbo_and_the_classifier_term(m2, small_digits):
    x, labels = small_digits[0][:20], small_digits[1][:20]
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(6)
    value = -elbo.loss(m2.model, m2.guide, x, labels)
    per_class, q_y = _m2_terms(m2, x, labels, seed=6)
    supervised = per_class[labels, torch.arange(20)]
    classify = m2.alpha * q_y[torch.arange(20), labels].log()
    assert value == pytest.approx(float((supervised + classify).sum()), rel=1e-5)


def test_m2_learns_to_classify_from_few_labels(small_digits):
    """50 labels (5 per class) and 400 images: q(y | x) beats chance (90% error) by far."""
    x, y, xt, yt = small_digits
    torch.manual_seed(0)
    m = ppvae.SemiSupervisedVAE(64, 10, 4, hidden=(64,), alpha=20.0)
    ppvae.fit(m, x, labels=labelled_subset(y, 50, seed=0), epochs=20, batch_size=100, lr=3e-3,
              progress=False)  # fmt: skip
    error = float((m.classify(xt) != yt).float().mean())
    assert error < 0.5, error
    assert m.sample(torch.arange(10)).shape == (10, 64)
