"""Seeds of one ``mnist_nll`` configuration read together: each seed's test NLL with its two
errors, their mean, and the spread between seeds.

``mnist_nll`` reports, per run, the standard error over the 10,000 test images (``test_nll_se``:
what another draw of test images would change) and the Monte Carlo error of the estimate on
these very images (``test_nll_mc_se``). Neither says what another training seed would give;
this script puts the seeds side by side: the mean over seeds, the standard deviation between
them and, for two seeds, half their difference (the standard error of the mean of two).

Usage: python benchmarks/mnist_seeds.py results/mnist_nll_iwae5_230_seed0.json \
           results/mnist_nll_iwae5_230_seed1.json --out results/mnist_nll_iwae5_230_seeds.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from _results import write_result  # benchmarks/, the script's folder

KEYS = ("test_nll_nats", "test_nll_se", "test_nll_mc_se", "train_minutes", "epochs", "elbo",
        "num_particles", "seed", "threads")  # fmt: skip


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    settings = {(r["epochs"], r["elbo"], r["num_particles"], r["lr_decay"]) for r in runs}
    if len(settings) != 1:
        raise SystemExit(f"the runs differ in their settings: {sorted(settings)}")
    nll = [r["test_nll_nats"] for r in runs]
    result = {
        "files": [str(path) for path in args.runs],
        # khat_share: mnist_nll's "khat_share_gt_0.7", renamed: a key path cannot hold a dot
        "runs": [{**{k: r.get(k) for k in KEYS}, "khat_share": r["khat_share_gt_0.7"]}
                 for r in runs],
        "seeds": len(runs),
        "mean_test_nll_nats": statistics.mean(nll),
        "sd_between_seeds": statistics.stdev(nll) if len(nll) > 1 else None,
        "se_of_seed_mean": statistics.stdev(nll) / math.sqrt(len(nll)) if len(nll) > 1 else None,
        "max_train_minutes": max(r["train_minutes"] for r in runs),
        "reference_burda_2015_1layer": runs[0].get("reference_burda_2015_1layer"),
    }
    write_result("mnist_seeds", result, args.out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
