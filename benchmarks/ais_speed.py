"""AIS and BDMC with the compiled log density against the eager one, interleaved in one process.

For ppvae's own static VAE, ``ais_log_likelihood`` and ``bdmc`` trace log p(x, z) and log q0(z)
once per shape of the chains (``torch.jit.trace``) instead of running Pyro's model and guide at
every leapfrog step (``ppvae/evaluate/ais.py``). This times both paths at ``make run``'s sizes
(``workflows.RUN_AIS_DEFAULTS``: 100 test points, 8 chains, T = 100; BDMC on 50 simulated
points) on a digits VAE, alternating them ``--rounds`` times, and checks that they give the same
numbers. One thread. Writes JSON.

Usage: python benchmarks/ais_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
from _results import write_result  # benchmarks/, the script's folder

import ppvae
from ppvae import evaluate
from ppvae.evaluate import ais
from ppvae.workflows import RUN_AIS_DEFAULTS


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ds = ppvae.load_dataset("digits", seed=0)
    torch.manual_seed(0)
    vae = ppvae.VAE(64, 8, hidden=(64,))
    ppvae.fit(vae, ds.train, epochs=args.epochs, seed=0, progress=False)
    sizes = RUN_AIS_DEFAULTS
    kwargs = {"num_steps": sizes["ais_steps"], "num_chains": sizes["ais_chains"], "seed": 0,
              "progress": False}  # fmt: skip
    x = ds.test[: sizes["ais_points"]]
    paths = {"eager": lambda program: False, "compiled": ais.known_static}
    times = {name: {"ais": [], "bdmc": []} for name in paths}
    values = {}
    try:
        for _ in range(args.rounds):
            for name, rule in paths.items():
                ais.known_static = rule
                t = time.perf_counter()
                a = evaluate.ais_log_likelihood(vae, x, **kwargs)
                times[name]["ais"].append(time.perf_counter() - t)
                t = time.perf_counter()
                b = evaluate.bdmc(vae, num_points=sizes["bdmc_points"], **kwargs)
                times[name]["bdmc"].append(time.perf_counter() - t)
                values[name] = (a.mean, float(b.gap.mean()))
    finally:
        ais.known_static = paths["compiled"]
    median = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    result = {
        "sizes": sizes,
        "seconds": times,
        "median_seconds": median,
        "speedup": {k: median["eager"][k] / median["compiled"][k] for k in ("ais", "bdmc")},
        "same_numbers": values["eager"] == values["compiled"],
        "ais_mean": values["compiled"][0],
        "bdmc_gap_mean": values["compiled"][1],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    write_result("ais_speed", result, args.out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
