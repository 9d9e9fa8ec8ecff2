"""The experiments of the ppvae command, called from Python (ppvae.workflows)."""

import json

import pytest

import ppvae
from ppvae import reports, workflows
from ppvae.cli import main


def test_check_ppca_from_python_returns_what_the_cli_writes(tmp_path):
    argv = ["check-ppca", "--n-train", "100", "--n-test", "20", "--latent-dim", "2"]
    main([*argv, "--epochs", "10", "--out", str(tmp_path / "cli")])
    written = json.loads((tmp_path / "cli" / "check_ppca.json").read_text())
    ds = ppvae.load_dataset("digits", seed=0, n_train=100, n_test=20)
    r = workflows.check_ppca(ds, latent_dim=2, epochs=10, out=tmp_path / "py", progress=False)
    for key in ("loglik_gap", "elbo_gap", "covariance_rel_error", "principal_angles_deg"):
        assert r.metrics[key] == written[key], key
    assert isinstance(r.models["linear_vae"], ppvae.LinearVAE)
    assert isinstance(r.models["ppca"], ppvae.PPCA)
    assert "loglik_gap" in reports.check_table(r.metrics)
    again = workflows.check_ppca(ds, latent_dim=2, epochs=10, progress=False)  # out=None
    assert again.out is None and "figure" not in again.metrics
    assert again.metrics["loglik_gap"] == written["loglik_gap"]


def test_workflows_refuse_an_existing_run_unless_asked(tmp_path):
    ds = ppvae.load_dataset("digits", seed=0, n_train=60, n_test=10)
    workflows.check_ppca(ds, latent_dim=2, epochs=1, out=tmp_path)
    with pytest.raises(ppvae.errors.InputError, match="overwrite=True"):
        workflows.check_ppca(ds, latent_dim=2, epochs=1, out=tmp_path)
    workflows.check_ppca(ds, latent_dim=2, epochs=1, out=tmp_path, overwrite=True)


def test_fit_vae_and_autoencoder_from_python(tmp_path):
    ds = ppvae.load_dataset("digits", seed=0, n_train=60, n_test=10)
    r = workflows.fit_vae(ds, latent_dim=2, hidden=(8,), epochs=1, iw_samples=3, out=tmp_path)
    assert isinstance(ppvae.load(tmp_path / "model.pt"), ppvae.VAE)
    assert r.metrics["lr"] == r.history.config["lr"] == 1e-3
    a = workflows.fit_autoencoder(ds, model="ae", latent_dim=2, hidden=(8,), epochs=1)
    assert a.out is None and a.metrics["test_reconstruction_error"] > 0


def test_vae_epochs_are_a_step_budget():
    """run's and compare's VAE trains about VAE_STEPS steps whatever the data's size."""
    assert workflows.vae_epochs(1438, 128) == 300  # digits: 12 batches per epoch
    assert workflows.vae_epochs(60000, 128) == 8  # MNIST: 469 batches, 3752 steps
    assert workflows.vae_epochs(100, 128) == workflows.VAE_STEPS  # one batch per epoch
    assert workflows.vae_epochs(60000, 128, epochs=2) == 2


def test_the_linear_check_lowers_its_learning_rate_on_minibatches():
    """The LinearVAE's own 0.05 is for full batches; on minibatches the check trains at
    LINEAR_MINIBATCH_LR (on MNIST 0.05 stopped 0.04 nats/image short of the optimum); a
    learning rate that is given is kept. train_linear_vae's choice is linear_lr's."""
    from ppvae.workflows.common import linear_lr, train_linear_vae

    assert linear_lr(1438, 1438) is None  # the LinearVAE's training_defaults
    assert linear_lr(60000, 1000) == workflows.LINEAR_MINIBATCH_LR == 0.02
    assert linear_lr(60000, 1000, lr=0.1) == 0.1
    ds = ppvae.load_dataset("digits", seed=0, n_train=40, n_test=10)
    _, history = train_linear_vae(
        ds, 2, epochs=1, batch_size=20, lr=None, seed=0, device="cpu", progress=False
    )
    assert history.config["lr"] == 0.02


def test_linear_schedule():
    assert workflows.linear_schedule(1438) == (2000, 1438)
    assert workflows.linear_schedule(60000) == (200, 1000)  # 12000 steps of 1000 rows
    assert workflows.linear_schedule(60000, batch_size=60000) == (2000, 60000)
    assert workflows.linear_schedule(500, epochs=3, batch_size=100) == (3, 100)
