"""``ppvae check-ppca``: a LinearVAE trained by SVI against the PPCA maximum-likelihood fit."""

from __future__ import annotations

from .. import reports, workflows
from . import options


def add_parser(sub, name: str):
    p = sub.add_parser(
        name,
        help="train a LinearVAE by SVI and check it against the PPCA maximum-likelihood fit",
        description="Fit PPCA in closed form and a LinearVAE by SVI on the same dequantized "
        "training data, and compare the learned decoder with the PPCA MLE: log-likelihood and "
        "ELBO gaps (nats/sample), noise variance and covariance errors, principal angles, "
        "active units. Exits with status 1 when a quantity misses its target (FAIL).",
    )
    options.add_data(p)
    options.add_training(p, epochs=None, batch_size=None, clip=False)
    options.add_output(p, name)
    return p


def preflight(args) -> None:
    options.out_folder(args)


def remedy(args, exc: FloatingPointError) -> str:
    from . import divergence_remedy

    return divergence_remedy(str(exc), clip=False, resume=None)


def main(args) -> int:
    out = options.out_folder(args)
    ds = options.load_data(args)
    result = workflows.check_ppca(
        ds,
        latent_dim=args.latent_dim,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
        out=out,
        overwrite=args.force,
    )
    r = result.metrics
    print(reports.check_table(r))
    print(f"wrote {out}/check_ppca.json and {r['figure']} in {r['seconds_total']:.1f} s")
    return 0 if r["passed"] else 1
