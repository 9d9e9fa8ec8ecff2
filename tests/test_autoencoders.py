"""The autoencoder family as Pyro programs: the SVI loss is the textbook objective, and each
member shows its defining property on digits."""

from __future__ import annotations

import math

import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.nn import functional as F

import ppvae
from ppvae.autoencoders import (
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    SparseAutoencoder,
    StackedAutoencoder,
    jacobian_frobenius_sq,
)

N_FULL = 1000  # the data-set size the minibatch losses are scaled to


def _pyro_loss(program, x, seed=3, **kwargs):
    torch.manual_seed(seed)  # the same corruption draws as the direct computation below
    return Trace_ELBO().loss(program.model, program.guide, x, num_data=N_FULL, **kwargs)


def _squared_error_nll(x, x_hat):
    """-log N(x; x_hat, 1/2 I) per row: summed squared error plus D/2 log(pi)."""
    return (x - x_hat).pow(2).sum(-1) + 0.5 * x.shape[-1] * math.log(math.pi)


def _jacobian_sq_direct(encoder, x):
    """||J||_F^2 per row from torch.autograd.functional.jacobian, one row at a time."""
    return torch.stack([torch.autograd.functional.jacobian(encoder, row).pow(2).sum() for row in x])


@pytest.fixture(scope="module")
def batch(digits):
    return digits.train[:40]


def test_vanilla_loss_is_n_times_mean_squared_error(batch):
    torch.manual_seed(0)
    ae = Autoencoder(64, 5, hidden=(16,))
    expected = N_FULL * _squared_error_nll(batch, ae.decoder(ae.encoder(batch))).mean()
    assert _pyro_loss(ae, batch) == pytest.approx(float(expected), rel=1e-5)


def test_bernoulli_loss_is_cross_entropy(batch):
    xb = (batch > 0.5).float()
    torch.manual_seed(0)
    ae = Autoencoder(64, 5, likelihood="bernoulli")
    logits = ae.decoder(ae.encoder(xb))
    ce = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(-1)
    assert _pyro_loss(ae, xb) == pytest.approx(float(N_FULL * ce.mean()), rel=1e-5)


@pytest.mark.parametrize("noise,level", [("mask", 0.3), ("gaussian", 0.2)])
def test_denoising_loss_encodes_corrupted_and_scores_clean(batch, noise, level):
    torch.manual_seed(0)
    dae = DenoisingAutoencoder(64, 5, hidden=(16,), noise=noise, noise_level=level)
    torch.manual_seed(3)
    if noise == "mask":
        x_tilde = batch * (torch.rand_like(batch) >= level)
    else:
        x_tilde = batch + level * torch.randn_like(batch)
    expected = N_FULL * _squared_error_nll(batch, dae.decoder(dae.encoder(x_tilde))).mean()
    assert _pyro_loss(dae, batch) == pytest.approx(float(expected), rel=1e-5)
    # and the corruption really happens: the clean-input objective differs
    clean = N_FULL * _squared_error_nll(batch, dae.reconstruct(batch)).mean()
    assert abs(float(clean) - float(expected)) > 1e-4 * abs(float(expected))  # >> float32 eps


def test_sparse_kl_loss(batch):
    torch.manual_seed(0)
    sae = SparseAutoencoder(64, 12, penalty="kl", rho=0.1, beta=2.0)
    h = torch.sigmoid(sae.encoder[0](batch))
    rho_hat = h.mean(0)
    kl = 0.1 * torch.log(0.1 / rho_hat) + 0.9 * torch.log(0.9 / (1 - rho_hat))
    expected = N_FULL * (_squared_error_nll(batch, sae.decoder(h)).mean() + 2.0 * kl.sum())
    assert _pyro_loss(sae, batch) == pytest.approx(float(expected), rel=1e-5)


def test_sparse_l1_loss_with_softplus_output(batch):
    torch.manual_seed(0)
    sae = SparseAutoencoder(64, 12, penalty="l1", l1=0.01)
    h = torch.relu(sae.encoder[0](batch))
    x_hat = F.softplus(sae.decoder[0](h))
    expected = N_FULL * (_squared_error_nll(batch, x_hat) + 0.01 * h.abs().sum(-1)).mean()
    assert _pyro_loss(sae, batch) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("hidden", [(), (16,)])  # closed form; torch.func
def test_contractive_loss_uses_the_exact_jacobian(batch, hidden):
    torch.manual_seed(0)
    cae = ContractiveAutoencoder(64, 6, hidden=hidden, lam=0.5, activation="tanh")
    x = batch[:10]
    jac = _jacobian_sq_direct(cae.encoder, x)
    torch.testing.assert_close(jacobian_frobenius_sq(cae.encoder, x), jac, rtol=1e-5, atol=1e-7)
    expected = N_FULL * (_squared_error_nll(x, cae.reconstruct(x)) + 0.5 * jac).mean()
    assert _pyro_loss(cae, x) == pytest.approx(float(expected), rel=1e-5)


def test_stacked_programs_losses(batch, digits):
    torch.manual_seed(0)
    stack = StackedAutoencoder(64, hidden=(20, 10), n_classes=10)
    h1 = stack.layers[0](batch)
    layer = stack.layer_program(1)
    expected = N_FULL * _squared_error_nll(h1, stack.decoders[1](stack.layers[1](h1))).mean()
    assert _pyro_loss(layer, batch) == pytest.approx(float(expected), rel=1e-5)
    y = digits.train_labels[:40]
    clf = stack.classifier_program()
    ce = F.cross_entropy(stack.logits(batch), y)
    assert _pyro_loss(clf, batch, y=y) == pytest.approx(float(N_FULL * ce), rel=1e-5)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="rho"):
        SparseAutoencoder(64, 4, rho=1.5)
    with pytest.raises(ValueError, match="noise"):
        DenoisingAutoencoder(64, 4, noise="salt")
    with pytest.raises(ValueError, match="likelihood"):
        Autoencoder(64, 4, likelihood="poisson")
    with pytest.raises(ValueError, match="labels"):
        stack = StackedAutoencoder(64, (8,))
        ppvae.finetune(stack, torch.rand(5, 64), torch.tensor([0, 1, 2, 3, 11]))


# ---------------------------------------------------------------------- properties on digits
def test_linear_autoencoder_learns_the_pca_subspace(digits):
    """Baldi & Hornik: the linear autoencoder's optimum spans the top-k principal subspace.

    Bound: for an orthonormal basis Q of the decoder's column space, the autoencoder's mean
    squared error E_ae is at least that of the orthogonal projection onto span(Q),
    tr S - tr(Q^T S Q), and tr(U_k^T S U_k) - tr(Q^T S Q) >= (lambda_k - lambda_{k+1})
    sum_i sin^2(theta_i) (S's eigen-decomposition, theta_i the principal angles). With
    E_pca = sum_{i>k} lambda_i: sin^2(theta_max) <= (E_ae - E_pca) / (lambda_k - lambda_{k+1}).
    The angle is certified by the excess error alone; training must certify it below 1 degree.
    """
    X, k = digits.train, 4
    Xc = X.double() - X.double().mean(0)
    lam, U = torch.linalg.eigh(Xc.T @ Xc / len(X))
    lam, U = lam.flip(0), U.flip(1)
    torch.manual_seed(0)
    ae = Autoencoder(64, k)
    ppvae.fit(ae, X, epochs=1000, batch_size=len(X), lr=3e-2, seed=0, progress=False)
    excess = ae.reconstruction_error(X) - float(lam[k:].sum())
    assert excess > -1e-4  # PCA is optimal
    bound = math.degrees(math.asin(math.sqrt(max(excess, 0.0) / float(lam[k - 1] - lam[k]))))
    Q, _ = torch.linalg.qr(ae.decoder[0].weight.detach().double())
    cosines = torch.linalg.svdvals(U[:, :k].T @ Q).clamp(max=1.0)
    angle = math.degrees(float(torch.arccos(cosines).max()))
    assert angle <= bound + 1e-3
    assert bound < 1.0, f"excess error {excess:.2e} certifies only {bound:.2f} degrees"


def _masked(x, level, seed):
    g = torch.Generator().manual_seed(seed)
    return x * (torch.rand(x.shape, generator=g) >= level)


def _train(model, X, epochs=40, lr=1e-2):
    ppvae.fit(model, X, epochs=epochs, batch_size=128, lr=lr, seed=0, progress=False)
    return model


def test_denoising_beats_vanilla_on_corrupted_test_digits(digits):
    """Same 64-64-16 architecture and budget; test digits with 30% of pixels masked."""
    torch.manual_seed(0)
    ae = _train(Autoencoder(64, 16, hidden=(64,)), digits.train)
    torch.manual_seed(0)
    dae = DenoisingAutoencoder(64, 16, hidden=(64,), noise="mask", noise_level=0.3)
    _train(dae, digits.train)
    noisy = _masked(digits.test, 0.3, seed=5)
    err_ae = ae.reconstruction_error(noisy, digits.test)
    err_dae = dae.reconstruction_error(noisy, digits.test)
    assert err_dae < 0.8 * err_ae, (err_dae, err_ae)


def test_sparse_autoencoder_hits_its_target_activation(digits):
    torch.manual_seed(0)
    sae = _train(SparseAutoencoder(64, 32, penalty="kl", rho=0.05, beta=3.0), digits.train)
    with torch.no_grad():
        rho_hat = sae.encode(digits.train).mean(0)
    assert abs(float(rho_hat.mean()) - 0.05) < 0.02


def test_l1_sparse_autoencoder_shrinks_activations(digits):
    """Same ReLU 64-32 code; the L1 penalty lowers the mean code norm sum_j |h_j|."""
    torch.manual_seed(0)
    dense = _train(Autoencoder(64, 32, code_activation="relu"), digits.train)
    torch.manual_seed(0)
    sparse = _train(SparseAutoencoder(64, 32, penalty="l1", l1=0.2), digits.train)
    with torch.no_grad():
        h_dense, h_sparse = dense.encode(digits.test), sparse.encode(digits.test)
    l1_dense, l1_sparse = (float(h.abs().sum(-1).mean()) for h in (h_dense, h_sparse))
    assert l1_sparse < 0.5 * l1_dense, (l1_sparse, l1_dense)
    active_dense, active_sparse = (float((h > 0).float().mean()) for h in (h_dense, h_sparse))
    assert active_sparse < 0.75 * active_dense, (active_sparse, active_dense)


def test_contractive_autoencoder_is_flatter_at_comparable_error(digits):
    """Same sigmoid 64-32 architecture; lam small enough that the reconstruction error stays
    within 30% of the vanilla autoencoder's, while the mean ||J_f(x)||_F drops by a quarter."""
    results = {}
    for lam in (0.0, 0.05):
        torch.manual_seed(0)
        cae = _train(ContractiveAutoencoder(64, 32, lam=lam), digits.train)
        with torch.no_grad():
            jac = float(cae.contraction(digits.test).sqrt().mean())
        results[lam] = (jac, cae.reconstruction_error(digits.test))
    (j0, e0), (j1, e1) = results[0.0], results[0.05]
    assert e1 < 1.3 * e0, results
    assert j1 < 0.75 * j0, results


def test_pretraining_a_layer_leaves_the_layers_below_frozen(digits):
    torch.manual_seed(0)
    stack = StackedAutoencoder(64, hidden=(32, 16))
    ppvae.fit(stack.layer_program(0), digits.train, epochs=1, progress=False)
    below = {k: v.clone() for k, v in stack.layers[0].state_dict().items()}
    above = {k: v.clone() for k, v in stack.layers[1].state_dict().items()}
    ppvae.fit(stack.layer_program(1), digits.train, epochs=2, progress=False)
    for k, v in stack.layers[0].state_dict().items():
        assert torch.equal(v, below[k]), k
    assert all(p.grad is None or not p.grad.any() for p in stack.layers[0].parameters())
    assert any(not torch.equal(v, above[k]) for k, v in stack.layers[1].state_dict().items())


def test_save_and_load_round_trip(tmp_path, digits):
    torch.manual_seed(0)
    sae = SparseAutoencoder(64, 8, penalty="l1", l1=0.01)
    ppvae.save(sae, tmp_path / "model.pt")
    back = ppvae.load(tmp_path / "model.pt")
    assert type(back) is SparseAutoencoder and back.config() == sae.config()
    torch.testing.assert_close(back.reconstruct(digits.test), sae.reconstruct(digits.test))
    stack = StackedAutoencoder(64, hidden=(16, 8), noise_level=0.1)
    ppvae.save(stack, tmp_path / "stack.pt")
    torch.testing.assert_close(
        ppvae.load(tmp_path / "stack.pt").logits(digits.test), stack.logits(digits.test)
    )


@pytest.mark.long_convergence
def test_stacked_autoencoder_beats_logistic_regression_on_raw_pixels(digits):
    """All labels: greedy pretraining (50 epochs per layer) then fine-tuning (100 epochs).
    Recorded: 0.978 against logistic regression's 0.964 (benchmarks/autoencoders_digits.py)."""
    from sklearn.linear_model import LogisticRegression

    logreg = LogisticRegression(max_iter=5000).fit(digits.train.numpy(), digits.train_labels)
    baseline = logreg.score(digits.test.numpy(), digits.test_labels.numpy())
    torch.manual_seed(0)
    stack = StackedAutoencoder(64, hidden=(128, 64))
    histories = ppvae.pretrain(stack, digits.train, epochs=50, lr=3e-3, progress=False)
    assert all(h.train_elbo[-1] > h.train_elbo[0] for h in histories)  # each layer learned
    ppvae.finetune(stack, digits.train, digits.train_labels, epochs=100, lr=3e-3, progress=False)
    acc = float((stack.predict(digits.test) == digits.test_labels).float().mean())
    assert acc > baseline, (acc, baseline)
