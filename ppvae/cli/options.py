"""Option types and the option groups the subcommands share (each adds only those it uses)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from ..data import DATASETS, with_missing
from ..errors import InputError
from ..guides import GUIDES
from ..likelihoods import LIKELIHOODS
from ..priors import PRIORS
from ..tables import load_table
from ..workflows import AIS_DEFAULTS, ELBOS, VAE_STEPS, existing_run, load
from ..workflows.common import check_writable


class UserError(Exception):
    """An error caused by the user's input: reported in one line, exit status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """A seed: an integer in [0, 2**32), what NumPy, torch and Pyro all accept."""
    message = f"expected an integer in [0, 2**32), got {text!r}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(message)
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def widths(text: str) -> tuple[int, ...]:
    if text.strip() in ("", "none"):
        return ()
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated widths like 256,128, got {text!r}"
        ) from None
    if any(w < 1 for w in values):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return values


def add_data(p: argparse.ArgumentParser) -> None:
    """--dataset --data-root --n-train --n-test --download --seed --latent-dim."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default="digits",
        choices=DATASETS,
        help="data set (default: digits, bundled with scikit-learn)",
    )
    g.add_argument(
        "--data-root",
        default=None,
        help="folder with MNIST/raw and FashionMNIST/raw (torchvision layout); never written",
    )
    g.add_argument(
        "--n-train", type=positive_int, default=None, help="a seeded subset of the training split"
    )
    g.add_argument(
        "--n-test", type=positive_int, default=None, help="a seeded subset of the test split"
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download missing MNIST files into --data-root (needs network)",
    )
    g.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="random seed: data split, dequantization, initialization, shuffling (default 0)",
    )
    g.add_argument(
        "--latent-dim", type=positive_int, default=8, help="latent dimensions k (default 8)"
    )
    g.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="your own table instead of --dataset: a .npy matrix, or a .csv / .parquet table "
        "(empty cells and NaN are missing entries); split into train/test by --seed; "
        "likelihoods are densities on the data's own scale (no dequantization)",
    )
    g.add_argument(
        "--standardize",
        action="store_true",
        help="with --data: centre and scale each column by its observed training moments",
    )
    g.add_argument(
        "--no-header",
        action="store_true",
        help="with --data FILE.csv: its first line is data, not column names (default: a "
        "first line with a cell that is not a number is a header; what was assumed is printed)",
    )
    g.add_argument(
        "--missing-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="remove this share of entries completely at random (seeded by --seed), in both "
        "splits (default 0)",
    )


def add_vae(p: argparse.ArgumentParser, likelihoods=None, title="the VAE") -> None:
    """--hidden --likelihood --prior --architecture."""
    g = p.add_argument_group(title)
    g.add_argument(
        "--hidden",
        type=widths,
        default=(256,),
        help="hidden widths of the encoder (decoder mirrors), e.g. 256,128 (default 256)",
    )
    choices = sorted(likelihoods or LIKELIHOODS)
    g.add_argument(
        "--likelihood",
        default="gaussian",
        choices=choices,
        help="p(x|z) (default gaussian)"
        + ("; bernoulli trains on dynamically binarized data" if "bernoulli" in choices else ""),
    )
    g.add_argument(
        "--prior",
        default="standard",
        choices=sorted(PRIORS),
        help="p(z) of the VAE (default: standard normal)",
    )
    g.add_argument(
        "--architecture",
        default="mlp",
        choices=("mlp", "conv"),
        help="VAE networks: MLPs (--hidden) or convolutional (28 x 28 images only)",
    )
    g.add_argument(
        "--guide",
        default="diagonal",
        choices=sorted(GUIDES),
        help="q(z|x): diagonal Gaussian (default), full-rank Gaussian, or inverse "
        "autoregressive flow",
    )


VAE_EPOCHS_HELP = (
    f"SVI epochs (default: about {VAE_STEPS} steps, ceil({VAE_STEPS} / batches per epoch): 300 "
    "epochs on digits, 8 on MNIST at batch 128)"
)


def add_training(
    p: argparse.ArgumentParser,
    epochs=300,
    batch_size=128,
    clip=True,
    lr_help="Adam learning rate (default: the model's; 1e-3 for a VAE)",
    epochs_help="SVI epochs (default: 2000 full-batch, or about 3600 steps of minibatches)",
) -> None:
    """--epochs --batch-size --lr [--clip-norm] --device --progress/--no-progress."""
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs",
        type=nonneg_int,
        default=epochs,
        help=f"SVI epochs (default {epochs})"
        if epochs is not None
        else epochs_help,
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help=f"minibatch size (default {batch_size})"
        if batch_size is not None
        else "minibatch size (default: the training set up to 10,000 rows, else 1000)",
    )
    g.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help=lr_help,
    )
    if clip:
        g.add_argument(
            "--clip-norm",
            type=positive_float,
            default=None,
            help="clip the gradients' global 2-norm to this value at every SVI step",
        )
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when writing to a terminal)",
    )


def add_objective(p: argparse.ArgumentParser) -> None:
    """--elbo --kl-weight --kl-warmup (VAE training only)."""
    g = p.add_argument_group("the VAE's objective")
    g.add_argument(
        "--elbo",
        default=None,
        choices=("auto", *ELBOS),
        help="ELBO estimator (default: auto, analytic KL where the prior has one; compiled "
        "by torch.jit.trace for VAEs built from ppvae's own parts); iwae and iwae-dreg: the "
        "importance-weighted bound with --num-particles draws per point",
    )
    g.add_argument(
        "--num-particles",
        type=positive_int,
        default=1,
        help="draws per data point of the estimator (K of iwae; default 1)",
    )
    g.add_argument(
        "--kl-weight",
        type=nonneg_float,
        default=1.0,
        help="beta: weight of the KL term (default 1)",
    )
    g.add_argument(
        "--kl-warmup",
        type=nonneg_int,
        default=0,
        help="epochs over which the KL weight rises linearly to --kl-weight (default 0)",
    )


def add_iw(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--iw-samples",
        type=positive_int,
        default=1000,
        help="importance samples K for the VAE's log-likelihood estimate (default 1000)",
    )


def add_ais(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """--ais-points --ais-steps --ais-chains --bdmc-points: AIS's check of the IW likelihood
    (defaults: ``defaults``, else :data:`~ppvae.workflows.AIS_DEFAULTS`)."""
    d = AIS_DEFAULTS if defaults is None else defaults
    g = p.add_argument_group(
        "the VAE's likelihood by AIS (step sizes adapted) beside IW, with BDMC's gap on data "
        "simulated from the VAE"
    )
    g.add_argument(
        "--ais-points",
        type=nonneg_int,
        default=d["ais_points"],
        help=f"test points estimated by AIS as well as IW (default {d['ais_points']}; 0: no "
        "AIS and no BDMC)",
    )
    g.add_argument(
        "--ais-steps",
        type=positive_int,
        default=d["ais_steps"],
        help=f"AIS's annealing steps T, one HMC transition each (default {d['ais_steps']})",
    )
    g.add_argument(
        "--ais-chains",
        type=positive_int,
        default=d["ais_chains"],
        help=f"AIS chains per point (default {d['ais_chains']})",
    )
    g.add_argument(
        "--bdmc-points",
        type=nonneg_int,
        default=d["bdmc_points"],
        help=f"points simulated from the VAE for BDMC's gap (default {d['bdmc_points']}; 0: none)",
    )


def ais_settings(args) -> dict:
    """The workflow keywords of :func:`add_ais`'s options."""
    return {
        "ais_points": args.ais_points,
        "ais_steps": args.ais_steps,
        "ais_chains": args.ais_chains,
        "bdmc_points": args.bdmc_points,
    }


def add_output(p: argparse.ArgumentParser, command: str) -> None:
    """--out --force."""
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help=f"output folder (default: runs/{command}-DATASET)")
    g.add_argument(
        "--force",
        action="store_true",
        help="overwrite the run in --out (a folder holding checkpoint.pt, model.pt, "
        "metrics.json, check_ppca.json or compare.json is otherwise refused)",
    )


def flag(parser: argparse.ArgumentParser, dest: str) -> str:
    """The long option string of ``dest`` in ``parser``."""
    for action in parser._actions:
        if action.dest == dest and action.option_strings:
            return action.option_strings[0]
    return dest


def flags(parser: argparse.ArgumentParser, dests) -> str:
    """``--a, --b`` for the given destinations, in the parser's order."""
    order = {a.dest: i for i, a in enumerate(parser._actions)}
    return ", ".join(flag(parser, d) for d in sorted(dests, key=lambda d: order.get(d, 0)))


# ---------------------------------------------------------------------- shared steps
def out_folder(args, *, resume_ok: bool = False) -> Path:
    """--out (default runs/COMMAND-DATASET), refused when it holds a run and --force is absent."""
    name = Path(args.data).stem if getattr(args, "data", None) else args.dataset
    if args.out is not None and not str(args.out).strip():
        raise UserError(
            f"--out is empty: name the output folder (without --out: runs/{args.command}-{name})"
        )
    out = Path(args.out) if args.out else Path("runs") / f"{args.command}-{name}"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if int(os.environ.get("RANK", "0")) == 0:  # once: ranks probing one folder would race
        try:
            check_writable(out, "--out")
        except InputError as exc:
            raise UserError(str(exc)) from None
    held = existing_run(out) if out.is_dir() else []
    if held and not args.force:
        also = (
            f", or continue it with: ppvae fit --resume {out}"
            if resume_ok and "checkpoint.pt" in held
            else ""
        )
        raise UserError(
            f"--out {out} already holds a run ({', '.join(held)}); pass --force to "
            f"overwrite it{also}"
        )
    return out


def load_data(args, binarize: str | None = None, *, missing_ok: bool = False):
    """The data set named by --dataset --data-root --download --seed --n-train --n-test, or
    the table of --data (--standardize), with --missing-rate of its entries removed.

    ``missing_ok``: whether the command handles missing entries; otherwise data with any
    are refused here, before work starts."""
    given = getattr(args, "given", set())
    if args.data is None:
        if getattr(args, "no_header", False):
            raise UserError("--no-header is for --data tables (.csv)")
        if args.standardize:
            raise UserError("--standardize is for --data tables")
        bundled = [d for d in ("data_root", "download") if d in given]
        if args.dataset == "digits" and bundled:
            raise UserError(
                f"{flag_names(bundled)}: digits are bundled with scikit-learn (nothing to read "
                "or download); --data-root and --download are for mnist and fashion-mnist"
            )
        ds = load(
            args.dataset,
            data_root=args.data_root,
            download=args.download,
            seed=args.seed,
            n_train=args.n_train,
            n_test=args.n_test,
            binarize=binarize,
        )
    else:
        clash = [d for d in ("dataset", "data_root", "download") if d in given]
        if clash:
            raise UserError(f"--data replaces {flag_names(clash)}; give one or the other")
        if binarize is not None:
            raise UserError(
                "--data tables are continuous: use a continuous --likelihood, not bernoulli"
            )
        no_header = getattr(args, "no_header", False)  # absent from runs saved before it
        if no_header and Path(args.data).suffix.lower() != ".csv":
            raise UserError(f"--no-header is for .csv files, not {Path(args.data).name}")
        table = load_table(
            args.data,
            standardize=args.standardize,
            seed=args.seed,
            header=False if no_header else None,
        )
        for note in table.info.get("notes", []):
            print(f"ppvae {args.command}: note: {note}", file=sys.stderr)
        ds = load(table)
        ds.train = ds.train[: args.n_train] if args.n_train else ds.train
        ds.test = ds.test[: args.n_test] if args.n_test else ds.test
    if not 0.0 <= args.missing_rate < 1.0:
        raise UserError(f"--missing-rate must lie in [0, 1), got {args.missing_rate}")
    ds = with_missing(ds, args.missing_rate, seed=args.seed)
    if not missing_ok and bool(torch.isnan(ds.train).any() or torch.isnan(ds.test).any()):
        model = getattr(args, "model", None)
        what = f"ppvae {args.command}" + (f" --model {model}" if model else "")
        raise UserError(
            f"{what} needs complete data (an autoencoder's loss cannot leave entries out); "
            "missing entries (--missing-rate, or empty cells in --data) are handled by run, "
            "compare, check-ppca and fit --model vae, and by ppvae.fit / ppvae.evaluate in Python"
        )
    return ds


def flag_names(dests) -> str:
    return ", ".join("--" + d.replace("_", "-") for d in dests)


def vae_settings(args) -> dict:
    """The VAE and its training as ``run`` and ``compare`` pass them to their workflow."""
    return {
        "latent_dim": args.latent_dim,
        "hidden": args.hidden,
        "likelihood": args.likelihood,
        "prior": args.prior,
        "architecture": args.architecture,
        "guide": args.guide,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "elbo": args.elbo,
        "clip_norm": args.clip_norm,
        "kl_weight": args.kl_weight,
        "kl_warmup": args.kl_warmup,
        "num_particles": args.num_particles,
    }


IDLE_WITHOUT_AIS = ("ais_steps", "ais_chains", "bdmc_points")
"""Options of AIS and BDMC, which ``--ais-points 0`` switches off."""
SKIPPED_WITH_HOLES = ("ais_points", *IDLE_WITHOUT_AIS, "gap_points", "nuts_points", "nuts_samples")
"""Options of the stages skipped on data with missing entries (they need complete rows)."""


def refuse_idle(args) -> None:
    """Options given that another option's value switches off: exit 2, naming both.

    ``--hidden`` with ``--architecture conv`` (convolutional networks of their own),
    AIS's options with ``--ais-points 0`` (no AIS, no BDMC), ``--nuts-samples`` with
    ``--nuts-points 0``.
    """
    given = getattr(args, "given", set())
    if getattr(args, "architecture", None) == "conv" and "hidden" in given:
        raise UserError(
            "--architecture conv has convolutional networks of its own; --hidden (the widths "
            "of the MLPs) does not apply"
        )
    if getattr(args, "ais_points", None) == 0:
        idle = given & set(IDLE_WITHOUT_AIS)
        if idle:
            raise UserError(
                f"--ais-points 0 runs neither AIS nor BDMC; {flag_names(sorted(idle))} cannot apply"
            )
    if getattr(args, "nuts_points", None) == 0 and "nuts_samples" in given:
        raise UserError("--nuts-points 0 runs no NUTS; --nuts-samples cannot apply")


def refuse_skipped(args, ds) -> None:
    """Options of stages that data with missing entries skip (AIS, BDMC, gaps, NUTS),
    given with such data: exit 2, naming them."""
    given = getattr(args, "given", set())
    idle = [d for d in SKIPPED_WITH_HOLES if d in given and hasattr(args, d)]
    if idle and bool(torch.isnan(ds.train).any() or torch.isnan(ds.test).any()):
        raise UserError(
            "the data have missing entries, on which AIS, BDMC, the inference gaps and NUTS "
            f"are skipped (they need complete rows); {flag_names(idle)} cannot apply"
        )


def run_workflow(args, workflow, **params):
    """Check the options and --out, load the data and call ``workflow`` with them and the run
    settings.

    Returns
    -------
    (Path, Result)
        The output folder and what ``workflow`` returned.
    """
    refuse_idle(args)
    out = out_folder(args)
    ds = load_data(args, missing_ok=params.pop("missing_ok", False))
    refuse_skipped(args, ds)
    result = workflow(
        ds,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
        out=out,
        overwrite=args.force,
        **params,
    )
    return out, result


def check_out(args) -> None:
    """The ``preflight`` of a subcommand whose checks before training are its options and
    --out."""
    refuse_idle(args)
    out_folder(args)


def remedy_without_resume(*, clip: bool):
    """The ``remedy`` of a subcommand that writes no checkpoint: run again, with --force."""

    def remedy(args, exc: FloatingPointError) -> str:
        from . import divergence_remedy

        return divergence_remedy(str(exc), clip=clip, resume=None)

    return remedy
