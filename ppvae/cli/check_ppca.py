"""``ppvae check-ppca``: a LinearVAE trained by SVI against the PPCA maximum-likelihood fit."""

from __future__ import annotations

from .. import reports, workflows
from ..vae import LinearVAE
from . import options


def add_parser(sub, name: str):
    p = sub.add_parser(
        name,
        help="train a LinearVAE by SVI and check it against the PPCA maximum-likelihood fit",
        description="Fit PPCA in closed form and a LinearVAE by SVI on the same dequantized "
        "training data, and compare the learned decoder with the PPCA MLE: log-likelihood and "
        "ELBO gaps (nats/sample), noise variance and covariance errors, principal angles, "
        "active units. With missing entries (--missing-rate, empty cells of --data) PPCA is fitted "
        "by EM and the LinearVAE's guide is full rank; every likelihood is then that of the "
        "observed entries. Exits with status 1 when a quantity misses its target (FAIL).",
    )
    options.add_data(p)
    lr = LinearVAE.training_defaults["lr"]
    options.add_training(
        p,
        epochs=None,
        batch_size=None,
        clip=False,
        lr_help=f"Adam learning rate of the LinearVAE (default {lr:g} on full batches, "
        f"{workflows.LINEAR_MINIBATCH_LR:g} on minibatches; held for half the run, then decayed)",
    )
    options.add_output(p, name)
    return p


preflight = options.check_out
remedy = options.remedy_without_resume(clip=False)


def main(args) -> int:
    out, result = options.run_workflow(
        args,
        workflows.check_ppca,
        latent_dim=args.latent_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        missing_ok=True,  # PPCA-EM and a full-rank LinearVAE on the observed entries
    )
    r = result.metrics
    print(reports.check_table(r))
    print(f"wrote {out}/check_ppca.json and {r['figure']} in {r['seconds_total']:.1f} s")
    print(reports.stage_line(r["stage_seconds"]))
    return 0 if r["passed"] else 1
