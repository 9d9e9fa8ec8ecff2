"""One training epoch streamed from a 1,000,000 x 784 uint8 memory-mapped file.

Writes the file (MNIST's training images tiled, from --data-root; random pixels without it)
in chunks, then runs one epoch of ``ppvae.fit`` on ``ppvae.MemmapDataset`` (784-400-20 VAE,
Bernoulli, dynamic binarization) and prints JSON with the peak resident memory of the process
(``ru_maxrss``), wall time and steps/s.
The in-memory float32 copy of the same matrix alone would take 2.9 GiB.

Usage: python benchmarks/streaming_memmap.py --data-root ../shared/data [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import write_result  # benchmarks/, the script's folder

import ppvae


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_file(path: Path, rows: int, data_root: str | None, chunk: int = 20000) -> str:
    if data_root:
        from ppvae.data import read_idx

        src = read_idx(Path(data_root) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
        src = np.asarray(src, dtype=np.uint8).reshape(len(src), -1)
        origin = "MNIST training images, tiled"
    else:
        src = np.random.default_rng(0).integers(0, 256, size=(chunk, 784), dtype=np.uint8)
        origin = "uniform random pixels"
    with open(path, "wb") as fh:
        done = 0
        while done < rows:
            take = min(chunk, rows - done)
            idx = np.arange(done, done + take) % len(src)
            src[idx].tofile(fh)
            done += take
    return origin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", default=None)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "pixels.u8"
        t = time.perf_counter()
        origin = write_file(path, args.rows, args.data_root)
        write_s = time.perf_counter() - t
        rss_before = peak_rss_mib()
        data = ppvae.MemmapDataset(path, n_cols=784)
        torch.manual_seed(0)
        vae = ppvae.VAE(784, 20, hidden=(400,), likelihood="bernoulli")
        t = time.perf_counter()
        h = ppvae.fit(
            vae, data, epochs=1, batch_size=args.batch_size, binarize="dynamic", progress=False
        )
        fit_s = time.perf_counter() - t
        result = {
            "benchmark": "streaming_memmap",
            "rows": len(data),
            "file_mib": path.stat().st_size / 2**20,
            "data": origin,
            "batch_size": args.batch_size,
            "epochs": 1,
            "steps": h.steps,
            "train_elbo": h.train_elbo[-1],
            "fit_seconds": fit_s,
            "steps_per_s": h.steps / h.seconds,
            "peak_rss_mib_before_fit": rss_before,
            "peak_rss_mib": peak_rss_mib(),
            "target_peak_rss_mib": 1536,
            "write_seconds": write_s,
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(result, indent=2))
        write_result("streaming_memmap", result)


if __name__ == "__main__":
    main()
