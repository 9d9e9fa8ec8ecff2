"""``ppvae run``: PPCA and a VAE on the same data, evaluated on the test split, with a report."""

from __future__ import annotations

from .. import reports, workflows
from ..likelihoods import LIKELIHOODS
from . import options


def add_parser(sub, name: str):
    p = sub.add_parser(
        name,
        help="fit PPCA and a Gaussian VAE, evaluate both on the test split, write a report",
        description="Fit PPCA (closed form) and a Gaussian VAE (SVI) on the same dequantized "
        "training data, evaluate both on the test split in nats, check a LinearVAE trained by "
        "SVI against the PPCA optimum, and write metrics.json, report.md and figures. Exits with "
        "status 1 when that check fails (FAIL).",
    )
    options.add_data(p)
    options.add_vae(p, likelihoods=[k for k in LIKELIHOODS if k != "bernoulli"])
    options.add_training(p, epochs=None, epochs_help=options.VAE_EPOCHS_HELP)
    options.add_objective(p)
    options.add_iw(p)
    g = p.add_argument_group("the LinearVAE check (as ppvae check-ppca)")
    g.add_argument(
        "--check-epochs",
        type=options.nonneg_int,
        default=None,
        help="epochs of the LinearVAE checked against PPCA (default: 2000 full-batch epochs "
        f"up to {workflows.LINEAR_FULL_BATCH_MAX:,} training rows, else about "
        f"{workflows.LINEAR_STEPS} steps of minibatches)",
    )
    g.add_argument(
        "--check-batch-size",
        type=options.positive_int,
        default=None,
        help="its batch size (default: the training set up to "
        f"{workflows.LINEAR_FULL_BATCH_MAX:,} rows, else {workflows.LINEAR_BATCH_SIZE})",
    )
    options.add_ais(p, workflows.RUN_AIS_DEFAULTS)
    options.add_output(p, name)
    return p


preflight = options.check_out
remedy = options.remedy_without_resume(clip=True)


def main(args) -> int:
    out, result = options.run_workflow(
        args,
        workflows.run_experiment,
        **options.vae_settings(args),
        iw_samples=args.iw_samples,
        **options.ais_settings(args),
        check_epochs=args.check_epochs,
        check_batch_size=args.check_batch_size,
        missing_ok=True,  # PPCA by EM, the VAE on observed entries, imputations scored
    )
    m = result.metrics
    print(reports.run_table(m))
    print(reports.check_table(m["ppca_check"]))
    if line := reports.imputation_line(m.get("imputation")):
        print(line)
    print(
        f"wrote {out}/metrics.json, report.md and {len(m['figures'])} figures "
        f"in {m['seconds_total']:.1f} s"
    )
    return 0 if m["ppca_check"]["passed"] else 1
