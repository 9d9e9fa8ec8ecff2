"""Would ``torch.compile`` close the gap to NumPyro? A probe of the two places it could go.

Times one SVI step (loss, backward, fused Adam) of issue 30's 784-200-200-50 tanh Bernoulli VAE
at batch 100, one thread, CPU time per step (median of ``--steps``), four ways:

* ``hand_eager``: the hand-written loss (``benchmarks/peer_numpyro.py``'s), eager;
* ``hand_inductor``: the same loss through ``torch.compile`` (Inductor; backward by AOTAutograd),
  the first step's time (a cold compile: a fresh Inductor cache) reported;
* ``pyro_eager``: Pyro's ``TraceMeanField_ELBO.differentiable_loss`` of the ppvae VAE's model and
  guide, eager;
* ``pyro_dynamo``: the same through ``torch.compile``, with Dynamo's graph-break count.

Random binary data (the timing does not depend on the pixels). Writes JSON.

Usage: python benchmarks/compile_probe.py --steps 400
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
# A cold compile, as a user's first run: Inductor's on-disk cache in a fresh folder.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_result  # benchmarks/, the script's folder

N, B, D, LATENT = 6000, 100, 784, 50


def make_vae():
    from ppvae import VAE

    torch.manual_seed(0)
    return VAE(D, LATENT, hidden=(200, 200), likelihood="bernoulli", activation="tanh")


def hand_loss(vae, xb):
    from torch.nn import functional as F

    loc, scale = vae.encoder(xb)
    z = loc + scale * torch.randn_like(loc)
    ll = -F.binary_cross_entropy_with_logits(vae.decoder(z), xb, reduction="none")
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * scale.log())
    return -(N / B) * (ll.sum() - kl.sum())


def pyro_loss(vae, xb):
    import pyro

    elbo = pyro.infer.TraceMeanField_ELBO()
    return elbo.differentiable_loss(vae.model, vae.guide, xb)


def time_steps(loss_fn, steps: int) -> dict:
    """Warm-up (compile) then ``steps`` timed steps; CPU seconds per step."""
    vae = make_vae()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(1)
    X = (torch.rand(N, D, generator=gen) < 0.3).float()

    def step(i):
        xb = X[(i * B) % (N - B) :][:B]
        loss = loss_fn(vae, xb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    step(0)
    first = time.perf_counter() - t
    for i in range(1, 5):
        step(i)
    ts = []
    for i in range(steps):
        t = time.process_time()
        step(i)
        ts.append(time.process_time() - t)
    ts.sort()
    return {"first_step_seconds": first, "ms_per_step_median": 1e3 * ts[len(ts) // 2],
            "ms_per_step_iqr": [1e3 * ts[len(ts) // 4], 1e3 * ts[3 * len(ts) // 4]]}  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import pyro
    from torch import _dynamo

    pyro.enable_validation(False)
    result = {"batch": B, "threads": 1}
    result["hand_eager"] = time_steps(hand_loss, args.steps)
    result["hand_inductor"] = time_steps(torch.compile(hand_loss, dynamic=False), args.steps)
    result["pyro_eager"] = time_steps(pyro_loss, args.steps)
    _dynamo.reset()
    _dynamo.utils.counters.clear()
    result["pyro_dynamo"] = time_steps(torch.compile(pyro_loss, dynamic=False), args.steps)
    breaks = _dynamo.utils.counters["graph_break"]
    result["pyro_dynamo"]["graph_breaks"] = int(sum(breaks.values()))
    result["pyro_dynamo"]["graph_break_reasons"] = sorted({r.split("\n")[0] for r in breaks})
    for name in ("hand_inductor", "pyro_eager", "pyro_dynamo"):
        result[name]["speedup_over_hand_eager"] = (
            result["hand_eager"]["ms_per_step_median"] / result[name]["ms_per_step_median"]
        )
    write_result("compile_probe", result, args.out)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
