"""ppvae against NumPyro on the same VAE, the same data and the same optimizer, side by side.

The model: a 784-200-200-50 tanh MLP VAE (diagonal Gaussian guide, softplus scale + 1e-4,
Bernoulli likelihood on logits, N(0, I) prior), trained on MNIST statically binarized once
(``ppvae.load_dataset("mnist", binarize="static", seed)``: 60,000 x 784 binary pixels), Adam
at 1e-3 (betas 0.9, 0.999), batch 100, minus the minibatch ELBO scaled to N with an analytic KL
on both sides (ppvae: ``fit``'s default ``elbo="auto"``; NumPyro: ``TraceMeanField_ELBO``).
Both start from the same initial weights (the torch VAE's, copied into NumPyro's stax
parameters).

NumPyro is written as a competent NumPyro user would: ``stax`` networks registered with
``numpyro.module``, the plate scaled to N, and one whole epoch compiled by ``jax.jit`` as a
``lax.fori_loop`` over ``svi.update`` (the shuffle drawn inside it, the data an argument).

What it measures, in one process on one core (the process pinned to ``--threads`` cores, and
``XLA_FLAGS`` and ``torch.set_num_threads`` set before either library is imported):

* time per step: each round is one ppvae epoch (inside ``ppvae.fit``, between two
  ``on_epoch_end`` hooks, so shuffling, indexing and fit's bookkeeping count), then one
  NumPyro epoch (one call of the compiled epoch), then one epoch of a hand-written PyTorch
  loop of the same model (:class:`HandWritten`); the first round (ppvae's trace, NumPyro's
  first call) is dropped; the ratios of each round, median and interquartile range, in
  process CPU time and in wall time;
* compilation: NumPyro's ``jit(...).lower(...).compile()`` of the epoch, ppvae's
  ``History.compile_seconds`` (``torch.jit.trace`` of the ELBO);
* peak resident memory of each alone: a fresh subprocess per library that reads the same
  binary training matrix (a ``.npy`` of uint8 written by the parent), trains
  ``--memory-epochs`` epochs and reports its peak resident size (``VmHWM``), with the
  resident size after the imports and after loading the data, so that the library's own
  share can be told apart;
* the test ELBO of both after training, on the same first ``--n-test`` test images, with one
  estimator: NumPyro's trained weights are copied back into a torch VAE of the same shape and
  both are scored by ``ppvae.evaluate.elbo`` (``--elbo-samples`` draws per image) and by
  ``ppvae.evaluate.log_likelihood`` (K = ``--iw-samples``), with the same seed.

NumPyro and JAX are an optional extra: ``pip install -e '.[peers]'``.

Usage: python benchmarks/peer_numpyro.py --data-root ../shared/data [--epochs 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result  # benchmarks/, the script's folder

HIDDEN, LATENT, BATCH, LR = (200, 200), 50, 100, 1e-3
INSTALL = "pip install -e '.[peers]'   (or: pip install numpyro jax)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--epochs", type=int, default=10, help="paired rounds (one epoch each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-train", type=int, default=None, help="subset of the 60,000 (default all)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--elbo-samples", type=int, default=100)
    p.add_argument("--iw-samples", type=int, default=1000)
    p.add_argument("--memory-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default benchmarks/results/peer_numpyro.json")
    p.add_argument("--role", choices=["main", "ppvae", "numpyro"], default="main",
                   help=argparse.SUPPRESS)  # a memory subprocess
    p.add_argument("--npy", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def set_threads(threads: int, torch_too: bool = True) -> None:
    """One (or ``threads``) CPU core for XLA and torch; call before importing either."""
    # XLA:CPU runs work on threads of its own whatever the flags below say (a quiet run
    # measured NumPyro's wall time per step at 0.6 of its CPU time): pin the process to
    # ``threads`` cores, so that each library computes on that many cores, no more
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    eigen = "true" if threads > 1 else "false"
    os.environ["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={threads}"
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["JAX_PLATFORMS"] = "cpu"
    if not torch_too:  # NumPyro's memory subprocess never imports torch
        return
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def have_numpyro() -> bool:
    try:
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError:
        return False
    return True


def rss_mib() -> dict:
    """Current and peak resident set size of this process, MiB (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss": round(out.get("VmRSS", 0.0), 1), "peak": round(out.get("VmHWM", 0.0), 1)}


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    return time.perf_counter(), time.process_time()


# --------------------------------------------------------------------------- ppvae
def make_vae(data_dim: int, seed: int):
    """The VAE, seeded: the same initial weights on every call with the same seed."""
    import torch

    from ppvae import VAE

    torch.manual_seed(seed)
    return VAE(data_dim, LATENT, hidden=HIDDEN, likelihood="bernoulli", activation="tanh")


def linear_layers(net) -> list:
    """The ``nn.Linear`` layers of an ``nn.Sequential``, in order."""
    import torch

    return [m for m in net if isinstance(m, torch.nn.Linear)]


# --------------------------------------------------------------------------- NumPyro
def initial_weights(vae) -> dict:
    """The VAE's MLP weights as NumPy arrays, ``{"encoder": [(W, b), ...], "decoder": ...}``,
    each W of shape (in, out) as stax multiplies ``x @ W``."""
    return {
        part: [
            (lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy())
            for lin in linear_layers(getattr(vae, part).net)
        ]
        for part in ("encoder", "decoder")
    }


def stax_params(layers: list) -> list:
    """[(W, b), ...] as the params of stax ``serial(Dense, Tanh, Dense, Tanh, Dense)``."""
    import jax.numpy as jnp

    params: list = []
    for i, (w, b) in enumerate(layers):
        if i:
            params.append(())  # the Tanh layer
        params.append((jnp.asarray(w), jnp.asarray(b)))
    return params


def load_stax_params(net, params) -> None:
    """Copy stax params back into a torch MLP of the same shape."""
    import numpy as np
    import torch

    dense = [p for p in params if p]
    with torch.no_grad():
        for lin, (w, b) in zip(linear_layers(net), dense, strict=True):
            lin.weight.copy_(torch.from_numpy(np.asarray(w).T.copy()))
            lin.bias.copy_(torch.from_numpy(np.asarray(b).copy()))


class NumPyroVAE:
    """The same VAE in NumPyro, one epoch compiled: ``jit(fori_loop(svi.update))``.

    Parameters
    ----------
    train : jax array, float32, shape (N, D)
        Binary training pixels; passed to the compiled epoch as an argument (not baked in).
    init : dict
        The initial weights, :func:`initial_weights` of the torch VAE.
    seed : int
        Seeds the shuffles and the guide's noise.
    """

    def __init__(self, train, init: dict, seed: int):
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from jax import lax, random
        from jax.example_libraries import stax
        from numpyro import handlers
        from numpyro.infer import SVI, TraceMeanField_ELBO

        n, d = train.shape
        self.n, self.train, self.n_batches = n, train, n // BATCH
        h1, h2 = HIDDEN
        encoder_nn = stax.serial(
            stax.Dense(h1), stax.Tanh, stax.Dense(h2), stax.Tanh, stax.Dense(2 * LATENT)
        )
        decoder_nn = stax.serial(
            stax.Dense(h2), stax.Tanh, stax.Dense(h1), stax.Tanh, stax.Dense(d)
        )

        def model(x):
            decode = numpyro.module("decoder", decoder_nn, (BATCH, LATENT))
            with numpyro.plate("data", x.shape[0]), handlers.scale(scale=n / x.shape[0]):
                z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
                numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

        def guide(x):
            encode = numpyro.module("encoder", encoder_nn, (BATCH, d))
            out = encode(x)
            loc, scale = out[:, :LATENT], jax.nn.softplus(out[:, LATENT:]) + 1e-4
            with numpyro.plate("data", x.shape[0]), handlers.scale(scale=n / x.shape[0]):
                numpyro.sample("z", dist.Normal(loc, scale).to_event(1))

        self.svi = svi = SVI(model, guide, numpyro.optim.Adam(LR), TraceMeanField_ELBO())
        key, self.key = random.split(random.PRNGKey(seed))
        state = svi.init(key, train[:BATCH])
        params = {
            "encoder$params": stax_params(init["encoder"]),
            "decoder$params": stax_params(init["decoder"]),
        }
        self.state = state._replace(optim_state=svi.optim.init(params))
        n_batches = self.n_batches

        def epoch(state, data, key):
            perm = random.permutation(key, data.shape[0])

            def body(i, carry):
                state, total = carry
                rows = lax.dynamic_slice_in_dim(perm, i * BATCH, BATCH)
                state, loss = svi.update(state, data[rows])
                return state, total + loss

            return lax.fori_loop(0, n_batches, body, (state, jnp.zeros(())))

        self._epoch = jax.jit(epoch)
        self.compiled = None
        self.compile_seconds = 0.0

    def compile(self) -> float:
        """Compile the epoch ahead of time; returns the seconds it took."""
        from jax import random

        t = time.perf_counter()
        self.compiled = self._epoch.lower(self.state, self.train, random.PRNGKey(0)).compile()
        self.compile_seconds = time.perf_counter() - t
        return self.compile_seconds

    def run_epoch(self) -> float:
        """One epoch; returns minus the mean minibatch loss per data point (a train ELBO)."""
        from jax import random

        if self.compiled is None:
            self.compile()
        key, self.key = random.split(self.key)
        self.state, total = self.compiled(self.state, self.train, key)
        total.block_until_ready()
        return -float(total) / (self.n_batches * self.n)

    def params(self) -> dict:
        return self.svi.get_params(self.state)


# --------------------------------------------------------------------------- by hand
class HandWritten:
    """The same VAE and objective in a hand-written PyTorch loop: the VAE's own networks,
    ``loc + scale * eps``, Bernoulli log-likelihood by ``binary_cross_entropy_with_logits``,
    analytic KL, minus the minibatch ELBO scaled to N, fused ``torch.optim.Adam``, minibatches
    by ``index_select`` of a seeded shuffle."""

    def __init__(self, train, vae, seed: int):
        import torch

        self.train, self.vae, self.n = train, vae, train.shape[0]
        self.opt = torch.optim.Adam(vae.parameters(), lr=LR, fused=True)
        self.gen = torch.Generator().manual_seed(seed)

    def run_epoch(self) -> None:
        import torch
        from torch.nn import functional as F

        perm = torch.randperm(self.n, generator=self.gen)
        scale_n = self.n / BATCH
        for i in range(0, self.n - BATCH + 1, BATCH):
            xb = self.train.index_select(0, perm[i : i + BATCH])
            loc, scale = self.vae.encoder(xb)
            z = loc + scale * torch.randn_like(loc)
            ll = -F.binary_cross_entropy_with_logits(self.vae.decoder(z), xb, reduction="none")
            kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * scale.log())
            loss = -scale_n * (ll.sum() - kl.sum())
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- the rounds
class Alternate:
    """A ``fit`` hook: after each ppvae epoch, one NumPyro epoch and one hand-written PyTorch
    epoch; all timed."""

    def __init__(self, peer: NumPyroVAE, hand: HandWritten):
        self.peer, self.hand = peer, hand
        self.ppvae: list[tuple[float, float]] = []
        self.numpyro: list[tuple[float, float]] = []
        self.hand_written: list[tuple[float, float]] = []
        self.peer_elbo: list[float] = []
        self.mark = clocks()

    def on_fit_start(self, run) -> None:
        self.mark = clocks()

    def on_epoch_end(self, run) -> None:
        now = clocks()
        self.ppvae.append((now[0] - self.mark[0], now[1] - self.mark[1]))
        t = clocks()
        self.peer_elbo.append(self.peer.run_epoch())
        done = clocks()
        self.numpyro.append((done[0] - t[0], done[1] - t[1]))
        self.hand.run_epoch()
        end = clocks()
        self.hand_written.append((end[0] - done[0], end[1] - done[1]))
        self.mark = clocks()


def spread(values: list[float]) -> dict:
    """Median and interquartile range."""
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return {"median": v, "q1": v, "q3": v, "n": len(values)}
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "n": len(values)}


def timing(alt: Alternate, steps_per_epoch: int, skip: int = 1) -> dict:
    """Per-step times (ms) of each library and the paired ratios, CPU and wall."""
    out = {}
    for which, col in (("cpu", 1), ("wall", 0)):
        p = [t[col] for t in alt.ppvae[skip:]]
        q = [t[col] for t in alt.numpyro[skip:]]
        h = [t[col] for t in alt.hand_written[skip:]]
        out[which] = {
            "ppvae_ms_per_step": _round(spread([1e3 * a / steps_per_epoch for a in p])),
            "numpyro_ms_per_step": _round(spread([1e3 * b / steps_per_epoch for b in q])),
            "hand_written_ms_per_step": _round(spread([1e3 * c / steps_per_epoch for c in h])),
            "ppvae_over_numpyro": _round(spread([a / b for a, b in zip(p, q, strict=True)])),
            "hand_written_over_numpyro": _round(
                spread([c / b for c, b in zip(h, q, strict=True)])
            ),
            "ppvae_over_hand_written": _round(
                spread([a / c for a, c in zip(p, h, strict=True)])
            ),
        }
    first = alt.ppvae[0], alt.numpyro[0]
    out["first_round_seconds_wall"] = {"ppvae": first[0][0], "numpyro": first[1][0]}
    return out


def _round(d: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}


def common_scores(vaes: dict, x, args) -> dict:
    """Both trained models scored by the same estimators, same images, same seed."""
    import torch

    from ppvae import evaluate

    out = {}
    for name, vae in vaes.items():
        vae.eval()
        torch.manual_seed(args.seed + 1)
        el = evaluate.elbo(vae, x, num_samples=args.elbo_samples)
        torch.manual_seed(args.seed + 2)
        ll = evaluate.log_likelihood(vae, x, num_samples=args.iw_samples)
        out[name] = {
            f"test_elbo_S{args.elbo_samples}": round(float(el.mean()), 3),
            "test_elbo_sem": round(float(el.std() / len(el) ** 0.5), 3),
            f"test_iw_log_likelihood_K{args.iw_samples}": round(float(ll.mean()), 3),
            "test_iw_sem": round(float(ll.std() / len(ll) ** 0.5), 3),
        }
    return out


# --------------------------------------------------------------------------- memory
def save_init(path: Path, init: dict) -> None:
    """:func:`initial_weights` as an ``.npz`` beside the training matrix."""
    import numpy as np

    flat = {
        f"{part}_{i}_{wb}": arr
        for part, layers in init.items()
        for i, pair in enumerate(layers)
        for wb, arr in zip("wb", pair, strict=True)
    }
    np.savez(path, **flat)


def load_init(npy: str) -> dict:
    """What :func:`save_init` wrote next to the training matrix ``npy``."""
    import numpy as np

    flat = np.load(Path(npy).with_suffix(".init.npz"))
    n_layers = len(HIDDEN) + 1
    return {
        part: [(flat[f"{part}_{i}_w"], flat[f"{part}_{i}_b"]) for i in range(n_layers)]
        for part in ("encoder", "decoder")
    }


def memory_child(args) -> None:
    """Train one library alone on the .npy training matrix; print its memory as JSON."""
    import numpy as np

    report = {"role": args.role, "after_imports": None}
    if args.role == "ppvae":
        import torch

        import ppvae

        report["after_imports"] = rss_mib()
        train = torch.from_numpy(np.load(args.npy)).to(torch.float32)
        report["after_data"] = rss_mib()
        vae = make_vae(train.shape[1], args.seed)
        t = time.perf_counter()
        ppvae.fit(vae, train, epochs=args.memory_epochs, batch_size=BATCH, lr=LR,
                  seed=args.seed, progress=False)
    else:
        import jax
        import jax.numpy as jnp
        import numpyro  # noqa: F401

        report["after_imports"] = rss_mib()
        train = jnp.asarray(np.load(args.npy), dtype=jnp.float32)
        jax.block_until_ready(train)
        report["after_data"] = rss_mib()
        peer = NumPyroVAE(train, load_init(args.npy), args.seed)
        t = time.perf_counter()
        for _ in range(args.memory_epochs):
            peer.run_epoch()
    report["train_seconds"] = round(time.perf_counter() - t, 2)
    report["after_training"] = rss_mib()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
    report["peak_rss_mib"] = report["after_training"]["peak"]
    print(json.dumps(report))


def measure_memory(train_u8, init: dict, args) -> dict:
    """Each library alone, in its own subprocess, on the same training matrix."""
    import numpy as np

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.npy"
        np.save(path, train_u8)
        save_init(path.with_suffix(".init.npz"), init)
        for role in ("ppvae", "numpyro"):
            cmd = [sys.executable, __file__, "--role", role, "--npy", str(path),
                   "--memory-epochs", str(args.memory_epochs), "--threads", str(args.threads),
                   "--seed", str(args.seed)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode:
                out[role] = {"error": res.stderr[-2000:]}
                continue
            out[role] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    set_threads(args.threads, torch_too=args.role != "numpyro")
    if args.role != "ppvae" and not have_numpyro():  # ppvae's child never imports JAX
        sys.exit(f"peer_numpyro needs NumPyro and JAX, which ppvae does not install: {INSTALL}")
    if args.role != "main":
        memory_child(args)
        return
    import jax
    import jax.numpy as jnp
    import numpyro
    import torch

    import ppvae

    ds = ppvae.load_dataset("mnist", args.data_root, binarize="static", seed=args.seed,
                            n_train=args.n_train)
    train_u8 = ds.train.to(torch.uint8).numpy()
    n = train_u8.shape[0] - train_u8.shape[0] % BATCH  # whole minibatches on both sides
    train_u8 = train_u8[:n]
    x_test = ds.test[: args.n_test].contiguous()
    del ds

    train_t = torch.from_numpy(train_u8).to(torch.float32)
    vae = make_vae(train_t.shape[1], args.seed)
    peer_vae = make_vae(train_t.shape[1], args.seed)  # same initial weights, for scoring
    init = initial_weights(vae)
    peer = NumPyroVAE(jnp.asarray(train_u8, dtype=jnp.float32), init, args.seed)
    compile_s = peer.compile()
    hand = HandWritten(train_t, make_vae(train_t.shape[1], args.seed), args.seed + 1)
    alt = Alternate(peer, hand)
    t = time.perf_counter()
    hist = ppvae.fit(vae, train_t, epochs=args.epochs, batch_size=BATCH, lr=LR, seed=args.seed,
                     progress=False, hooks=[alt])
    total_s = time.perf_counter() - t
    load_stax_params(peer_vae.encoder.net, peer.params()["encoder$params"])
    load_stax_params(peer_vae.decoder.net, peer.params()["decoder$params"])
    steps = n // BATCH
    result = {
        "benchmark": "peer_numpyro",
        "model": f"784-{HIDDEN[0]}-{HIDDEN[1]}-{LATENT} tanh, Bernoulli logits, diagonal guide",
        "data": f"MNIST statically binarized (seed {args.seed}), {n} training images",
        "optimizer": f"Adam lr {LR}, betas (0.9, 0.999), batch {BATCH}",
        "estimators": {"ppvae": "fit elbo='auto' (analytic KL, torch.jit.trace)",
                       "numpyro": "TraceMeanField_ELBO, jit(fori_loop(svi.update)) per epoch"},
        "threads": args.threads,
        "epochs": args.epochs,
        "steps_per_epoch": steps,
        "time_per_step": timing(alt, steps),
        "compile_seconds": {"ppvae": round(hist.compile_seconds, 3),
                            "numpyro": round(compile_s, 3)},
        "train_elbo_last_epoch": {"ppvae": round(hist.train_elbo[-1], 3),
                                  "numpyro": round(alt.peer_elbo[-1], 3)},
        "test": {"n_images": int(x_test.shape[0])},
        "alternating_seconds_total": round(total_s, 1),
    }
    result["test"].update(common_scores({"ppvae": vae, "numpyro": peer_vae}, x_test, args))
    print(json.dumps(result["time_per_step"], indent=1), file=sys.stderr)
    result["memory_alone"] = measure_memory(train_u8, init, args)
    result["memory_alone"]["epochs"] = args.memory_epochs
    # torch, Pyro, NumPy, Python and the load average are in write_result's provenance
    result["peer_versions"] = {"numpyro": numpyro.__version__, "jax": jax.__version__}
    print(json.dumps(result, indent=2))
    write_result("peer_numpyro", result, args.out)


if __name__ == "__main__":
    main()
