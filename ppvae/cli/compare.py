"""``ppvae compare``: PPCA vs LinearVAE vs VAE likelihoods with standard errors, PSIS, gaps."""

from __future__ import annotations

from .. import reports, workflows
from ..likelihoods import LIKELIHOODS
from . import options


def add_parser(sub, name: str):
    p = sub.add_parser(
        name,
        help="PPCA vs LinearVAE vs VAE likelihoods with standard errors, PSIS and gaps",
        description="Fit PPCA, a LinearVAE and a nonlinear Gaussian VAE on the same dequantized "
        "data; report train and test nats/sample, bits/dim, ELBO, importance-weighted "
        "estimates with standard errors, the share of Pareto k-hat > 0.7, inference gaps and "
        "fit times; write a per-sample scatter and the per-sample log-likelihoods as ArviZ "
        "InferenceData (netCDF). Exits with status 1 when the LinearVAE misses the PPCA maximum "
        "(FAIL, as check-ppca).",
    )
    options.add_data(p)
    options.add_vae(p, likelihoods=[k for k in LIKELIHOODS if k != "bernoulli"])
    options.add_training(p, epochs=None, epochs_help=options.VAE_EPOCHS_HELP)
    options.add_objective(p)
    g = p.add_argument_group("the LinearVAE")
    g.add_argument(
        "--linear-epochs",
        type=options.nonneg_int,
        default=None,
        help="epochs of the LinearVAE (default: 2000 full-batch epochs, or about "
        f"{workflows.LINEAR_STEPS} minibatch steps)",
    )
    g.add_argument(
        "--linear-batch-size",
        type=options.positive_int,
        default=None,
        help="LinearVAE batch size (default: the whole training set up to "
        f"{workflows.LINEAR_FULL_BATCH_MAX:,} rows, else {workflows.LINEAR_BATCH_SIZE})",
    )
    g = p.add_argument_group("evaluation")
    options.add_iw(g)
    g.add_argument(
        "--eval-points",
        type=options.positive_int,
        default=2000,
        help="seeded subset of each split for the IW estimates and gaps (default 2000)",
    )
    g.add_argument(
        "--gap-points",
        type=options.positive_int,
        default=200,
        help="test points on which the inference gaps are computed (default 200)",
    )
    g.add_argument(
        "--nuts-points",
        type=options.nonneg_int,
        default=3,
        help="test points whose VAE posterior is also sampled by NUTS (default 3)",
    )
    g.add_argument(
        "--nuts-samples",
        type=options.positive_int,
        default=500,
        help="NUTS warm-up steps and draws per chain, 2 chains (default 500)",
    )
    options.add_ais(p)
    options.add_output(p, name)
    return p


preflight = options.check_out
remedy = options.remedy_without_resume(clip=True)


def main(args) -> int:
    out, result = options.run_workflow(
        args,
        workflows.compare,
        **options.vae_settings(args),
        linear_epochs=args.linear_epochs,
        linear_batch_size=args.linear_batch_size,
        iw_samples=args.iw_samples,
        eval_points=args.eval_points,
        gap_points=args.gap_points,
        nuts_points=args.nuts_points,
        nuts_samples=args.nuts_samples,
        **options.ais_settings(args),
        missing_ok=True,  # PPCA by EM, IW and exact likelihoods of observed entries, imputation
    )
    r = result.metrics
    print(reports.compare_table(r))
    print(reports.check_line(r["linear_check"]))
    if r.get("skipped"):
        print(f"{r['missing_share_train']:.1%} of the training entries are missing; {r['skipped']}")
    if line := reports.imputation_line(r.get("imputation")):
        print(line)
    written = [r["figure"], r.get("nuts_figure"), r.get("imputation_figure"), r["netcdf"]]
    print(
        f"wrote {out}/compare.json, compare.md, {', '.join(w for w in written if w)} "
        f"in {r['seconds_total']:.1f} s"
    )
    return 0 if r["linear_check"]["passed"] else 1
