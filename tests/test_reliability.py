"""Checkpoints that survive a kill, exact resume, NaN guards and odd inputs."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import ppvae
from ppvae import PPCA, evaluate

from .conftest import REPO

FIT_ARGS = [
    "fit",
    "--n-train",
    "400",
    "--n-test",
    "50",
    "--hidden",
    "32",
    "--epochs",
    "4",
    "--batch-size",
    "20",
    "--iw-samples",
    "5",
    "--latent-dim",
    "4",
]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "ppvae", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def _progress(path):
    try:
        return torch.load(path, weights_only=True)["progress"]
    except Exception:  # not written yet
        return None


def _start_and_wait(out, min_epoch):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppvae", *FIT_ARGS, "--out", str(out)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        p = _progress(out / "checkpoint.pt")
        if p is not None and p["epoch"] >= min_epoch:
            return proc
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no checkpoint appeared")


def _final(out):
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    return payload["history"], payload["state_dict"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process at one thread as the subprocesses run (one
    interpreter start fewer than ``python -m ppvae``)."""
    from ppvae.cli import main

    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*FIT_ARGS, "--no-progress", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return _final(out)


def _resume_in_process(out) -> int:
    """``ppvae fit --resume out`` in this process at one thread, as the reference ran (two
    interpreter starts fewer per test than ``python -m ppvae``)."""
    from ppvae.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["fit", "--resume", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)


def _assert_identical(out, reference):
    history, state = _final(out)
    ref_history, ref_state = reference
    assert history["train_elbo"] == ref_history["train_elbo"]
    assert history["test_elbo"] == ref_history["test_elbo"]
    assert history["steps"] == ref_history["steps"]
    assert state.keys() == ref_state.keys()
    for key in state:
        assert torch.equal(state[key], ref_state[key]), key


def test_sigkill_then_resume_is_identical_to_an_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "killed"
    proc = _start_and_wait(out, min_epoch=2)
    time.sleep(0.07)  # somewhere inside the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _progress(out / "checkpoint.pt")["epoch"] < 6  # really interrupted
    assert _resume_in_process(out) == 0
    _assert_identical(out, reference)
    assert isinstance(ppvae.load(out / "model.pt"), ppvae.VAE)


def test_ctrl_c_saves_a_checkpoint_and_resume_is_exact(tmp_path, reference):
    out = tmp_path / "interrupted"
    proc = _start_and_wait(out, min_epoch=1)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "interrupted at epoch" in last and "--resume" in last and "Traceback" not in err
    # the checkpoint holds the position the message names: epoch E, before step S
    epoch, step = map(int, re.search(r"epoch (\d+), step (\d+) of", last).groups())
    progress = _progress(out / "checkpoint.pt")
    assert (progress["epoch"], progress["step"]) == (epoch - 1, step - 1), (last, progress)
    assert _resume_in_process(out) == 0
    _assert_identical(out, reference)


def test_resume_refuses_a_different_run(tmp_path, digits):
    x = digits.train[:200]
    vae = ppvae.VAE(64, 3, hidden=(8,))
    ppvae.fit(vae, x, epochs=2, batch_size=50, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different model"):
        ppvae.fit(
            ppvae.VAE(64, 4, hidden=(8,)),
            x,
            epochs=3,
            batch_size=50,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    with pytest.raises(
        ValueError,
        match="the training data changed since the checkpoint: the same shape, other values",
    ):
        ppvae.fit(
            vae,
            digits.train[200:400],
            epochs=3,
            batch_size=50,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    with pytest.raises(ValueError, match="cannot resume with batch_size"):
        ppvae.fit(vae, x, epochs=3, batch_size=25, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(FileNotFoundError):
        ppvae.fit(vae, x, epochs=3, checkpoint_dir=tmp_path / "nowhere", resume=True)
    # a constant learning rate allows extending the run
    h = ppvae.fit(vae, x, epochs=3, batch_size=50, checkpoint_dir=tmp_path, resume=True)
    assert len(h.train_elbo) == 3


def test_resume_may_lower_the_learning_rate_and_set_clip_norm(tmp_path, digits):
    """The README's advice after a divergence: lower lr or set clip_norm, and resume."""
    x = digits.train[:200]
    vae = ppvae.VAE(64, 3, hidden=(8,))
    ppvae.fit(vae, x, epochs=1, batch_size=50, lr=1e-2, checkpoint_dir=tmp_path)
    seen = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kw: seen.append(opt.param_groups[0]["lr"])
    )
    try:
        h = ppvae.fit(
            vae,
            x,
            epochs=2,
            batch_size=50,
            lr=1e-4,
            clip_norm=1.0,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    finally:
        hook.remove()
    assert seen and set(seen) == {1e-4}
    assert h.config["lr"] == 1e-4 and h.config["clip_norm"] == 1.0
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["fit_config"]
    assert saved["lr"] == 1e-4 and saved["clip_norm"] == 1.0


def test_corrupt_checkpoint_is_one_clear_error(tmp_path, digits):
    ppvae.fit(ppvae.VAE(64, 2, hidden=(8,)), digits.train[:100], epochs=1, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="not a readable ppvae checkpoint file"):
        ppvae.fit(
            ppvae.VAE(64, 2, hidden=(8,)),
            digits.train[:100],
            epochs=2,
            checkpoint_dir=tmp_path,
            resume=True,
        )
    res = _cli("fit", "--resume", str(tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "not a readable ppvae checkpoint file" in res.stderr


def test_non_finite_gradient_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    x = digits.train[:200]
    torch.manual_seed(0)
    vae = ppvae.VAE(64, 2, hidden=(8,))
    ppvae.fit(vae, x, epochs=2, batch_size=50, checkpoint_dir=tmp_path)
    good = {k: v.clone() for k, v in vae.state_dict().items()}
    handle = vae.decoder.net[0].weight.register_hook(lambda g: g * float("nan"))
    with pytest.raises(FloatingPointError, match=r"epoch 3, step 1.*last good checkpoint") as err:
        ppvae.fit(vae, x, epochs=4, batch_size=50, checkpoint_dir=tmp_path, resume=True)
    handle.remove()
    # the library names its parameters; only the CLI speaks of flags
    assert "lower learning rate (lr)" in str(err.value) and "--" not in str(err.value)
    for key, value in vae.state_dict().items():  # no half-applied step
        assert torch.equal(value, good[key]), key
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["progress"]["epoch"] == 2
    for key, value in payload["state_dict"].items():
        assert torch.equal(value, good[key]), key


def test_clip_norm_bounds_the_gradient_handed_to_the_optimizer():
    seen = []

    def record(optimizer, args, kwargs):
        grads = [p.grad.flatten() for g in optimizer.param_groups for p in g["params"]]
        seen.append(float(torch.linalg.vector_norm(torch.cat(grads))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        x = torch.rand(10, 6) * 100
        for clip in (None, 0.5):
            vae = ppvae.VAE(6, 2, hidden=(4,))
            ppvae.fit(vae, x, epochs=1, batch_size=10, clip_norm=clip, progress=False)
    finally:
        handle.remove()
    assert seen[0] > 0.5  # unclipped, the gradient is large
    assert seen[1] <= 0.5 + 1e-6


# ---------------------------------------------------------------------- odd inputs
def test_odd_but_valid_inputs_train(digits):
    x = digits.train[:64].clone()
    x[:, 0] = 0.5  # a constant column
    for data in (
        x,
        (x * 16).round().to(torch.int64),  # integers: converted to float32
        x.half(),  # float16: converted to float32
        x.T.contiguous().T,  # non-contiguous
        x[:1],  # a single row
    ):
        vae = ppvae.VAE(64, 2, hidden=(8,))
        h = ppvae.fit(vae, data, epochs=1, batch_size=16)
        assert torch.isfinite(torch.tensor(h.train_elbo)).all()
    assert PPCA(2).fit(x).noise_variance_ > 0


def test_bad_inputs_give_clear_errors(digits):
    vae = ppvae.VAE(64, 2, hidden=(8,))
    with pytest.raises(ValueError, match="test: expected at least 1 row"):
        ppvae.fit(vae, digits.train[:10], epochs=1, test=digits.test[:0])
    with pytest.raises(ValueError, match="noise variance is zero"):
        PPCA(5).fit(digits.train[:4].double())  # N < latent_dim
    with pytest.raises(ValueError, match="labels"):
        ppvae.plots.latent_scatter({"z": torch.zeros(5, 2)}, torch.zeros(4), "/tmp/never.png")
    with pytest.raises(ValueError, match="clip_norm"):
        ppvae.fit(vae, digits.train[:10], epochs=1, clip_norm=0)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        ppvae.fit(vae, digits.train[:10], epochs=1, resume=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_data_on_another_device(digits):
    vae = ppvae.VAE(64, 2, hidden=(8,))
    ppvae.fit(vae, digits.train[:100].cuda(), epochs=1, device="cpu")
    assert evaluate.elbo(vae, digits.test[:10].cuda()).shape == (10,)
