import os

import pyro
import pytest
import torch

import ppvae
from ppvae import evaluate


class _Evil:
    """Unpickling this would run code: weights_only loading must refuse it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _small(digits, n=300):
    return digits.train[:n], digits.test[:100]


def test_short_fit_raises_the_elbo(digits):
    train, test = _small(digits)
    vae = ppvae.VAE(64, 4, hidden=(32,))
    torch.manual_seed(0)
    before = evaluate.elbo(vae, test, num_samples=10)
    history = ppvae.fit(vae, train, epochs=15, batch_size=64, lr=3e-3, seed=0, test=test)
    torch.manual_seed(0)
    after = evaluate.elbo(vae, test, num_samples=10)
    assert history.epochs == 15 and len(history.test_elbo) == 15 and history.steps == 15 * 5
    # paired per-image improvement, far beyond Monte Carlo noise (t > 10)
    diff = after - before
    assert float(diff.mean()) > 10 * float(diff.std() / len(diff) ** 0.5)
    assert history.train_elbo[-1] > history.train_elbo[0]
    assert history.test_elbo[-1] > history.test_elbo[0]


def test_fit_is_reproducible(digits):
    train, _ = _small(digits, 200)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)  # same init for the first two
        vae = ppvae.VAE(64, 3, hidden=(16,))
        h = ppvae.fit(vae, train, epochs=3, batch_size=50, seed=seed)
        runs.append((h.train_elbo, vae.decoder.net[0].weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


def test_models_trained_in_turn_do_not_share_parameters(digits):
    """Each fit trains its own model's tensors (no stale entries in Pyro's param store)."""
    train, _ = _small(digits, 200)
    a, b = ppvae.VAE(64, 3, hidden=(16,)), ppvae.VAE(64, 3, hidden=(16,))
    ppvae.fit(a, train, epochs=2, batch_size=100)
    a_w = a.decoder.net[0].weight.detach().clone()
    b_w = b.decoder.net[0].weight.detach().clone()
    ppvae.fit(b, train, epochs=2, batch_size=100)
    assert torch.equal(a.decoder.net[0].weight, a_w)
    assert not torch.equal(b.decoder.net[0].weight, b_w)


@pytest.mark.parametrize("elbo", ["meanfield", "jit"])
def test_other_elbos(digits, elbo):
    train, _ = _small(digits, 100)
    h = ppvae.fit(ppvae.VAE(64, 2, hidden=(8,)), train, epochs=2, batch_size=50, elbo=elbo)
    assert all(torch.isfinite(torch.tensor(h.train_elbo)))


def test_dynamic_binarization_with_bernoulli():
    ds = ppvae.load_dataset("digits", binarize="dynamic", n_train=200, n_test=50)
    vae = ppvae.VAE(64, 2, hidden=(16,), likelihood="bernoulli")
    with pytest.raises(ValueError, match="binary data"):
        ppvae.fit(vae, ds.train, epochs=1)  # intensities, not binary
    h = ppvae.fit(vae, ds.train, epochs=3, batch_size=50, binarize="dynamic", test=ds.test)
    # it learns: the held-out ELBO rises from the first epoch to the last
    assert len(h.test_elbo) == 3 and h.test_elbo[-1] > h.test_elbo[0], h.test_elbo


def test_fit_rejects_bad_input(digits):
    vae = ppvae.VAE(64, 2, hidden=(8,))
    train = digits.train[:50]
    with pytest.raises(ValueError, match="expected 64 columns"):
        ppvae.fit(vae, train[:, :10])
    bad = train.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        ppvae.fit(vae, bad)
    bad[0, 0] = float("nan")  # a missing entry: the VAE marginalizes it, an autoencoder cannot
    with pytest.raises(ValueError, match="NaN"):
        ppvae.fit(ppvae.Autoencoder(64, 2, hidden=(8,)), bad)
    with pytest.raises(ValueError, match="test: expected 64 columns"):
        ppvae.fit(vae, train, test=train[:, :3])
    with pytest.raises(ValueError, match="epochs"):
        ppvae.fit(vae, train, epochs=-1)
    with pytest.raises(ValueError, match="lr"):
        ppvae.fit(vae, train, lr=0)
    with pytest.raises(ValueError, match="unknown elbo"):
        ppvae.fit(vae, train, elbo="renyi-ish")
    with pytest.raises(ValueError, match="device"):
        ppvae.fit(vae, train, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ppvae.fit(vae, train, device="cuda")
    with pytest.raises(TypeError, match="VAE"):
        ppvae.fit(object(), train)


def test_save_load_round_trip(tmp_path, digits):
    vae = ppvae.VAE(64, 3, hidden=(16,))
    h = ppvae.fit(vae, digits.train[:100], epochs=1, batch_size=50)
    path = ppvae.save(vae, tmp_path / "m" / "model.pt", history=h, metadata={"dataset": "x"})
    back = ppvae.load(path)
    x = digits.test[:5]
    torch.testing.assert_close(back.encode(x)[0], vae.encode(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(back.likelihood.scale, vae.likelihood.scale)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind


def test_load_rejects_bad_files(tmp_path, digits):
    vae = ppvae.VAE(64, 3, hidden=(16,))
    good = ppvae.save(vae, tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError):
        ppvae.load(tmp_path / "missing.pt")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable ppvae model file"):
        ppvae.load(trunc)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable ppvae model file"):
        ppvae.load(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a ppvae model file"):
        ppvae.load(other)
    # a pickled object is refused by weights_only=True, never executed
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    torch.save({"format": "ppvae.model", "x": _Evil(str(marker))}, evil)
    with pytest.raises(ValueError, match="not a readable ppvae model file"):
        ppvae.load(evil)
    assert not marker.exists()
    # a checkpoint whose weights do not fit its configuration
    payload = torch.load(good, weights_only=True)
    payload["config"]["latent_dim"] = 5
    mism = tmp_path / "mismatch.pt"
    torch.save(payload, mism)
    with pytest.raises(ValueError, match="weights do not match"):
        ppvae.load(mism)


def test_cached_jit_meanfield_compiles_once_per_shape_and_matches_the_eager_loss():
    from pyro.infer import TraceMeanField_ELBO

    from ppvae.train import CachedJitTraceMeanField_ELBO

    torch.manual_seed(0)
    vae = ppvae.VAE(10, 2, hidden=(8,))
    x = torch.rand(30, 10)
    jit = CachedJitTraceMeanField_ELBO()
    model, guide = vae.model, vae.guide
    for rows in (30, 7, 30, 7):  # a shorter last minibatch runs its own trace, scaled N/7
        xb = x[:rows]
        pyro.set_rng_seed(1)
        eager = TraceMeanField_ELBO().differentiable_loss(model, guide, xb, num_data=300)
        pyro.set_rng_seed(1)  # compiling runs on forked RNG states: the same noise as eager
        compiled = jit.differentiable_loss(model, guide, xb, num_data=300)
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-4)
    assert len(jit._compiled) == 2
    for inner, _, _ in jit._compiled.values():  # each compiled exactly once
        assert len(inner._differentiable_loss.compiled) == 1


@pytest.mark.parametrize(("jit", "eager"), [("jit-meanfield", "meanfield"), ("jit", "trace")])
def test_jit_estimators_train_exactly_like_their_eager_versions(digits, jit, eager):
    """Ragged last minibatch (130 = 50 + 50 + 30) and a KL warm-up: both change numbers a
    trace bakes in (the N/B scale, the KL weight), so each needs its own trace. With the same
    noise and objective, the runs may differ only by float32 rounding (eps 6e-8) over 9 steps.
    """
    runs = {}
    for elbo in (jit, eager):
        torch.manual_seed(0)
        vae = ppvae.VAE(64, 2, hidden=(8,))
        h = ppvae.fit(
            vae, digits.train[:130], epochs=3, batch_size=50, elbo=elbo, seed=1,
            kl_warmup_epochs=2,
        )  # fmt: skip
        runs[elbo] = (
            torch.tensor(h.train_elbo),
            torch.cat([p.flatten() for p in vae.parameters()]),
        )
    torch.testing.assert_close(runs[jit][0], runs[eager][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(runs[jit][1], runs[eager][1], rtol=0, atol=1e-6)


def test_auto_compiles_only_programs_built_from_ppvae_parts(digits):
    from ppvae.train import CachedJitTraceMeanField_ELBO, make_elbo

    assert isinstance(make_elbo("auto", 1, ppvae.VAE(64, 2)), CachedJitTraceMeanField_ELBO)
    assert isinstance(make_elbo("auto", 1, ppvae.LinearVAE(64, 2)), CachedJitTraceMeanField_ELBO)
    custom = ppvae.VAE(64, 2, decoder=torch.nn.Linear(2, 64))
    assert type(make_elbo("auto", 1, custom)).__name__ == "TraceMeanField_ELBO"
    assert type(make_elbo("auto", 1, ppvae.VAE(64, 2, prior="mog"))).__name__ == "Trace_ELBO"


def test_a_program_that_cannot_be_traced_falls_back_to_the_eager_estimator():
    from pyro.infer import TraceMeanField_ELBO

    from ppvae.train import CachedJitTraceMeanField_ELBO

    w = torch.nn.Parameter(torch.ones(3))  # not in Pyro's param store: tracing refuses it

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(z * w, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(x, 1.0).to_event(1))

    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="requires grad"):
        CachedJitTraceMeanField_ELBO().differentiable_loss(model, guide, x)
    loose = CachedJitTraceMeanField_ELBO()
    loose.fallback = True
    with pytest.warns(RuntimeWarning, match="could not be traced"):
        pyro.set_rng_seed(0)
        loss = loose.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(0)
    assert torch.equal(loss, TraceMeanField_ELBO().differentiable_loss(model, guide, x))
    loss.backward()
    assert w.grad is not None and bool(torch.isfinite(w.grad).all())


def test_fit_streams_a_memmapped_file_exactly_like_the_tensor(tmp_path, digits):
    """Same seeded order and batches: a MemmapDataset run equals the in-memory run."""
    raw = (digits.train * 255).round().to(torch.uint8)
    path = tmp_path / "digits.u8"
    raw.numpy().tofile(path)
    data = ppvae.MemmapDataset(path, n_cols=64)
    assert len(data) == len(raw) and data[torch.tensor([3, 1])].shape == (2, 64)
    X = data[torch.arange(len(raw))]  # the same float32 values (x * (1/255) rounding)
    torch.testing.assert_close(X, raw.float() / 255)
    for likelihood, binarize in (("gaussian", None), ("bernoulli", "dynamic")):
        runs = []
        for train in (X, data, torch.utils.data.DataLoader(data, batch_size=100)):
            torch.manual_seed(0)
            vae = ppvae.VAE(64, 3, hidden=(16,), likelihood=likelihood)
            h = ppvae.fit(
                vae, train, epochs=2, batch_size=100, seed=4, binarize=binarize, progress=False
            )
            runs.append((h.train_elbo, vae.state_dict()))
        for elbo, state in runs[1:]:
            assert elbo == runs[0][0], likelihood
            for k, v in state.items():
                assert torch.equal(v, runs[0][1][k]), (likelihood, k)


def test_a_bad_streamed_batch_is_named_before_its_step(tmp_path):
    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, i):
            row = torch.rand(8)
            if int(i) == 37:
                row[2] = float("inf")
            return row

    vae = ppvae.VAE(8, 2, hidden=(4,))
    with pytest.raises(ValueError, match="train batch"):
        ppvae.fit(vae, Rows(), epochs=1, batch_size=10, progress=False)
    with pytest.raises(ValueError, match="whole number of rows"):
        (tmp_path / "bad.u8").write_bytes(b"\x00" * 10)
        ppvae.MemmapDataset(tmp_path / "bad.u8", n_cols=3)


def test_one_jit_estimator_serves_several_fits(digits):
    """Each fit opens a fresh param store, which a trace reads by name: fit resets the
    estimator's traces instead of replaying ones bound to the previous store."""
    from ppvae.train import CachedJitTraceMeanField_ELBO

    loss = CachedJitTraceMeanField_ELBO()
    for seed in (0, 1):
        torch.manual_seed(seed)
        vae = ppvae.VAE(64, 2, hidden=(8,))
        h = ppvae.fit(vae, digits.train[:100], epochs=2, batch_size=50, elbo=loss)
        assert 0 < h.compile_seconds <= h.seconds and len(loss._compiled) == 1


def test_resume_accepts_the_same_estimator_compiled_or_not(tmp_path, digits):
    X = digits.train[:100]
    torch.manual_seed(0)
    vae = ppvae.LinearVAE(64, 2)
    ppvae.fit(vae, X, epochs=2, elbo="meanfield", lr_decay=1.0, checkpoint_dir=tmp_path)
    h = ppvae.fit(vae, X, epochs=3, lr_decay=1.0, checkpoint_dir=tmp_path, resume=True)
    assert h.epochs == 3  # elbo="auto" compiles the same analytic-KL estimator
    with pytest.raises(ValueError, match="elbo='trace'"):
        ppvae.fit(
            vae, X, epochs=4, elbo="trace", lr_decay=1.0, checkpoint_dir=tmp_path, resume=True
        )


def test_a_last_minibatch_smaller_than_the_world_is_refused_up_front(digits, monkeypatch):
    """With 2 processes, 101 rows in batches of 50 leave a last minibatch of 1 row: one
    process would get none. fit says so before any step (no process group is needed)."""
    import ppvae.train.loop

    monkeypatch.setattr(ppvae.train.loop, "distributed_world", lambda: (2, 0))
    vae = ppvae.VAE(64, 2, hidden=(8,))
    with pytest.raises(ValueError, match="holds 1 row, fewer than the 2 processes"):
        ppvae.fit(vae, digits.train[:101], epochs=1, batch_size=50)
    with pytest.raises(ValueError, match="smaller than the 2 processes"):
        ppvae.fit(vae, digits.train[:101], epochs=1, batch_size=1)
