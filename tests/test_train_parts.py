"""The training core part by part: the configuration, the step, the hooks (issue #14)."""

from __future__ import annotations

import pyro
import pytest
import torch

import ppvae
from ppvae.errors import InputError
from ppvae.program import as_program
from ppvae.train import EarlyStopping, GuardedStep, Hook, TensorBoard, TrainConfig, pyro_jit
from ppvae.train.objectives import make_elbo


# ---------------------------------------------------------------------- configuration
def test_config_defaults_come_from_the_program_then_the_library():
    lin = TrainConfig.resolve(as_program(ppvae.LinearVAE(6, 2)))
    assert (lin.lr, lin.betas, lin.lr_decay, lin.decay_start) == (0.05, (0.9, 0.9), 1e-3, 0.5)
    vae = TrainConfig.resolve(as_program(ppvae.VAE(6, 2)))
    assert (vae.lr, vae.betas, vae.lr_decay, vae.elbo) == (1e-3, (0.9, 0.999), 1.0, "auto")

    def model(x):
        pass

    plain = TrainConfig.resolve(as_program(model, model), lr=0.2)
    assert plain.lr == 0.2 and plain.elbo == "auto" and plain.decay_start == 0.0
    # a config object, overridden by keywords
    base = TrainConfig(epochs=7, lr=0.3)
    assert TrainConfig.resolve(None, base, lr=0.1).epochs == 7


@pytest.mark.parametrize(
    ("setting", "value", "needle"),
    [
        ("epochs", -1, "epochs must be an integer >= 0"),
        ("epochs", 2.5, "epochs must be an integer"),
        ("batch_size", 0, "batch_size"),
        ("lr", 0.0, "lr must be positive"),
        ("lr", float("inf"), "lr must be finite"),
        ("lr_decay", -1.0, "lr_decay"),
        ("decay_start", 1.0, "decay_start"),
        ("num_particles", 0, "num_particles"),
        ("clip_norm", 0.0, "clip_norm"),
        ("kl_weight", -0.1, "kl_weight"),
        ("kl_weight", True, "kl_weight"),
        ("kl_warmup_epochs", -2, "kl_warmup_epochs"),
        ("betas", (0.9,), "betas"),
        ("betas", (0.9, 1.0), "betas"),
        ("binarize", "static", "binarize"),
        ("device", "tpu", "device"),
        ("elbo", 3, "elbo"),
        ("nonsense", 1, "unknown training setting 'nonsense'"),
    ],
)
def test_every_setting_is_validated_once_naming_the_parameter(setting, value, needle):
    with pytest.raises(InputError, match=needle):
        TrainConfig.resolve(as_program(ppvae.VAE(6, 2)), **{setting: value})


def test_fit_takes_a_config_object_and_its_keywords_override_it(digits):
    vae = ppvae.VAE(64, 2, hidden=(8,))
    cfg = TrainConfig(epochs=2, batch_size=100, lr=5e-3)
    h = ppvae.fit(vae, digits.train[:200], config=cfg, lr=2e-3)
    assert h.epochs == 2 and h.config["lr"] == 2e-3 and h.config["batch_size"] == 100


def test_kl_factor_warms_up_linearly():
    cfg = TrainConfig(kl_weight=2.0, kl_warmup_epochs=4)
    assert [cfg.kl_factor(e) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


# ---------------------------------------------------------------------- the step
def test_one_step_is_one_adam_update_of_the_elbo_gradient():
    """GuardedStep on its own: the update equals torch Adam on the same loss and draws."""
    x = torch.randn(8, 5)

    def model(x):
        w = pyro.param("w", torch.ones(5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(w, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    pyro.clear_param_store()
    prog = as_program(model, guide)
    loss_fn = pyro.infer.Trace_ELBO()
    step = GuardedStep(
        prog, model, guide, loss_fn, lr=0.1, betas=(0.9, 0.999), schedule=None,
        clip_norm=None, validate=True,
    )  # fmt: skip
    loss = step.step(x)
    expected_loss = -pyro.distributions.Normal(torch.ones(5), 1.0).log_prob(x).sum()
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-6)
    # Adam's first step moves each coordinate by lr against the gradient's sign
    grad_sign = torch.sign(-(x - 1.0).sum(0))
    torch.testing.assert_close(
        pyro.param("w").detach(), torch.ones(5) - 0.1 * grad_sign, rtol=0, atol=1e-6
    )



def test_torch_optimizer_hooks_see_every_step():
    """fit steps through ``optimizer.step()``, so torch's optimizer hooks (how users observe
    steps) fire once per minibatch; a direct call of the fused kernel once skipped them."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kw: seen.append(1))
    try:
        torch.manual_seed(0)
        vae = ppvae.VAE(12, 3, hidden=(8,), likelihood="bernoulli")
        x = (torch.rand(27, 12) < 0.4).float()
        ppvae.fit(vae, x, epochs=2, batch_size=8, progress=False)
    finally:
        handle.remove()
    assert len(seen) == 2 * 4  # 4 minibatches (the last ragged) in each of 2 epochs


def test_a_non_finite_step_leaves_the_parameters_untouched():
    x = torch.randn(4, 3)

    def model(x):
        w = pyro.param("w_nan", torch.ones(3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", pyro.distributions.Normal(w * float("nan"), 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    pyro.clear_param_store()
    prog = as_program(model, guide)
    step = GuardedStep(
        prog, model, guide, pyro.infer.Trace_ELBO(), lr=0.1, betas=(0.9, 0.999),
        schedule=None, clip_norm=None, validate=False,
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match="non-finite"):
        step.step(x)
    assert torch.equal(pyro.param("w_nan").detach(), torch.ones(3))


# ---------------------------------------------------------------------- hooks
class _Recorder(Hook):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, run):
        self.calls.append(("start", run.epoch))

    def on_epoch_end(self, run):
        self.calls.append(("epoch", run.epoch, len(run.history.test_elbo)))

    def on_fit_end(self, run):
        self.calls.append(("end", run.epoch))


def test_hooks_are_called_in_order_after_the_test_metrics(digits):
    rec = _Recorder()
    ppvae.fit(
        ppvae.VAE(64, 2, hidden=(8,)),
        digits.train[:100],
        test=digits.test[:20],
        epochs=3,
        batch_size=50,
        hooks=[rec],
    )
    # each epoch's test ELBO is already recorded when a user's hook runs
    epochs = [("epoch", e, e) for e in (1, 2, 3)]
    assert rec.calls == [("start", 0), *epochs, ("end", 3)]


class _Snapshots(Hook):
    def __init__(self, module):
        self.module, self.states = module, {}

    def on_epoch_end(self, run):
        self.states[run.epoch] = {k: v.clone() for k, v in self.module.state_dict().items()}


def test_early_stopping_stops_and_restores_the_best_epoch(digits):
    """A wide VAE on 100 digits overfits: the validation ELBO peaks and falls, training stops
    `patience` epochs after the peak, and the parameters are exactly the peak's."""
    torch.manual_seed(0)
    vae = ppvae.VAE(64, 8, hidden=(128,))
    snaps, stop = _Snapshots(vae), EarlyStopping(digits.test[:100], patience=5)
    h = ppvae.fit(vae, digits.train[:100], epochs=400, batch_size=100, lr=3e-3,
                  hooks=[snaps, stop])  # fmt: skip
    assert h.epochs < 400, "never stopped"
    best = h.best_epoch
    assert h.epochs == best + 5
    assert max(h.validation_elbo) == h.validation_elbo[best - 1]
    assert best < h.epochs and snaps.states[h.epochs].keys() == vae.state_dict().keys()
    for key, value in vae.state_dict().items():
        assert torch.equal(value, snaps.states[best][key]), key
    last = snaps.states[h.epochs]["decoder.net.0.weight"]
    assert not torch.equal(last, vae.decoder.net[0].weight)  # not simply the last epoch


def test_early_stopping_state_survives_a_resume(tmp_path, digits):
    torch.manual_seed(0)
    x, val = digits.train[:100], digits.test[:50]
    runs = []
    for split in (False, True):
        torch.manual_seed(0)
        vae = ppvae.VAE(64, 4, hidden=(32,))
        folder = tmp_path / str(split)
        if split:
            ppvae.fit(vae, x, epochs=20, batch_size=50, lr=3e-3, checkpoint_dir=folder,
                      hooks=[EarlyStopping(val, patience=3)])  # fmt: skip
            vae = ppvae.VAE(64, 4, hidden=(32,))
            h = ppvae.fit(vae, x, epochs=60, batch_size=50, lr=3e-3, checkpoint_dir=folder,
                          resume=True, hooks=[EarlyStopping(val, patience=3)])  # fmt: skip
        else:
            h = ppvae.fit(vae, x, epochs=60, batch_size=50, lr=3e-3, checkpoint_dir=folder,
                          hooks=[EarlyStopping(val, patience=3)])  # fmt: skip
        runs.append((h.validation_elbo, h.best_epoch, vae.state_dict()))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    for key in runs[0][2]:
        assert torch.equal(runs[0][2][key], runs[1][2][key]), key


class _FakeWriter:
    def __init__(self):
        self.scalars, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_logs_each_curve_per_epoch(tmp_path, digits):
    writer = _FakeWriter()
    h = ppvae.fit(
        ppvae.VAE(64, 2, hidden=(8,)),
        digits.train[:100],
        test=digits.test[:20],
        epochs=2,
        batch_size=50,
        hooks=[TensorBoard(tmp_path, writer=writer)],
    )
    assert writer.closed
    logged = {(tag, step): value for tag, value, step in writer.scalars}
    assert logged[("elbo/train", 2)] == h.train_elbo[1]
    assert logged[("elbo/test", 1)] == h.test_elbo[0]
    assert logged[("lr", 1)] == 1e-3


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, digits, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(InputError, match=r"pip install 'ppvae\[tensorboard\]'"):
        ppvae.fit(ppvae.VAE(64, 2, hidden=(8,)), digits.train[:50], epochs=1,
                  hooks=[TensorBoard(tmp_path)])  # fmt: skip


# ---------------------------------------------------------------------- the JIT workaround
def test_the_jit_workaround_checks_what_it_patches(monkeypatch):
    assert pyro_jit.PATCH_APPLIES  # pyro-ppl 1.9.x, as pinned
    monkeypatch.setattr(pyro_jit, "PATCH_APPLIES", False)
    import ppvae.train.objectives as objectives

    monkeypatch.setattr(objectives, "PATCH_APPLIES", False)
    with pytest.warns(RuntimeWarning, match="JIT workaround"):
        loss = make_elbo("auto", 1, ppvae.VAE(6, 2))
    assert type(loss).__name__ == "TraceMeanField_ELBO"  # eager, same objective
    with pytest.raises(RuntimeError, match="no longer has the attributes"):
        pyro_jit._JitTraceMeanFieldOnce().differentiable_loss(None, None)


def test_the_progress_bar_shows_epochs_and_elbos_only_when_asked(digits, capsys):
    x = digits.train[:100]
    ppvae.fit(ppvae.VAE(64, 2, hidden=(8,)), x, epochs=2, batch_size=50, progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "train_elbo=" in err
    ppvae.fit(ppvae.VAE(64, 2, hidden=(8,)), x, epochs=2, batch_size=50, progress=False)
    assert capsys.readouterr().err == ""
