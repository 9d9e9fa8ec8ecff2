"""``ppvae fit``: train one VAE or autoencoder, with checkpoints, and save it to OUT/model.pt."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import reports, workflows
from ..autoencoders import AUTOENCODERS
from ..checkpoints import read_training_checkpoint
from ..errors import InputError
from . import options
from .options import UserError

RESUMABLE = ("resume", "epochs", "lr", "clip_norm", "device", "progress", "nproc")
"""What ``--resume DIR`` may be given with: how long, how fast and where to train."""
LABELLED_OPTIONS = {
    "cvae": ("labels", "conditional_prior"),
    "ssvae": ("labels", "alpha", "labelled_per_batch"),
}
"""The options of the models of labelled data, by ``--model``."""
VAE_ONLY = (
    "prior",
    "architecture",
    "guide",
    "elbo",
    "num_particles",
    "kl_weight",
    "kl_warmup",
    "iw_samples",
    "export_imputed",
)
"""Options of the VAE that an autoencoder cannot honour."""


def add_parser(sub, name: str):
    p = sub.add_parser(
        name,
        help="train one VAE (or autoencoder) and save it to OUT/model.pt",
        description="Train one model by SVI and write OUT/model.pt, metrics.json and figures. "
        "--model picks the VAE (default) or a classic autoencoder, each a Pyro program: "
        "ae (vanilla), dae (denoising), sae (sparse), cae (contractive), stacked (greedy "
        "layer-wise pretraining of --hidden plus --latent-dim, then fine-tuning with labels); "
        "or, with --labels N, the conditional VAE (cvae, trained on the N labelled images) "
        "or the semi-supervised VAE M2 (ssvae, trained on all images, the unlabelled ones' "
        "class summed out), which report their test error, its curve and conditional samples. "
        "Every model but stacked writes OUT/checkpoint.pt after each epoch; --resume OUT "
        "continues it.",
    )
    p.add_argument(
        "--model",
        default="vae",
        choices=["vae", *AUTOENCODERS, *workflows.LABELLED_MODELS],
        help="vae; an autoencoder: ae, dae, sae, cae, stacked; or a model of labelled data: "
        "cvae (conditional VAE), ssvae (semi-supervised VAE, M2) (default vae)",
    )
    options.add_data(p)
    options.add_vae(p, title="the model (--prior, --architecture and --guide: --model vae only)")
    options.add_training(p)
    options.add_objective(p)
    options.add_iw(p)
    ae = p.add_argument_group("autoencoder options (each for the --model named)")
    ae.add_argument("--noise", default="mask", choices=["mask", "gaussian"], help="dae: corruption")
    ae.add_argument(
        "--noise-level",
        type=float,
        default=None,
        help="dae: masking probability or Gaussian std (default 0.3); stacked: masking of each "
        "layer's input during pretraining (default 0)",
    )
    ae.add_argument(
        "--sparsity", default="kl", choices=["kl", "l1"], help="sae: KL(rho||rho_hat) or L1"
    )
    ae.add_argument("--rho", type=float, default=0.05, help="sae: target mean activation")
    ae.add_argument("--beta", type=float, default=3.0, help="sae: weight of the KL penalty")
    ae.add_argument("--l1", type=float, default=1e-3, help="sae: weight of the L1 penalty")
    ae.add_argument("--contraction", type=float, default=0.05, help="cae: lambda of ||J_f(x)||_F^2")
    ae.add_argument(
        "--finetune-epochs",
        type=options.nonneg_int,
        default=None,
        help="stacked (default: --epochs)",
    )
    ae.add_argument(
        "--labels",
        type=options.positive_int,
        default=None,
        help="stacked, cvae, ssvae: this many labelled training images, balanced over the "
        "classes and chosen with --seed (default: all)",
    )
    lab = p.add_argument_group("models of labelled data (each for the --model named)")
    lab.add_argument(
        "--alpha",
        type=options.nonneg_float,
        default=None,
        help="ssvae: weight of log q(y | x) per labelled image (default 0.1 N / labels, "
        "Kingma et al. 2014)",
    )
    lab.add_argument(
        "--labelled-per-batch",
        type=options.positive_int,
        default=None,
        help="ssvae: this many labelled images in every minibatch of --batch-size, the loss "
        "kept unbiased (default: uniform minibatches)",
    )
    lab.add_argument(
        "--conditional-prior",
        action="store_true",
        help="cvae: a learned p(z | y), one Gaussian per class, instead of N(0, I)",
    )
    p.add_argument(
        "--nproc",
        type=options.positive_int,
        default=1,
        help="train with N processes on torch.distributed (gloo on CPU, NCCL on CUDA), each "
        "taking 1/N of every minibatch; torchrun -m ppvae fit ... works as well",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue the run whose checkpoint.pt is in DIR, with its saved settings; only "
        "--epochs, --lr, --clip-norm, --device, --progress/--no-progress and --nproc may be "
        "given with it (not for --model stacked, which writes no checkpoint)",
    )
    options.add_output(p, name)
    p.add_argument(
        "--export-imputed",
        metavar="PATH",
        default=None,
        help="--model vae on a --data table with missing entries: write the table to PATH "
        "(CSV, its header and row order) with each hole filled by the VAE's E[x_m | x_o] "
        "(importance sampling, K = --iw-samples), on the file's own scale (--standardize "
        "undone)",
    )
    return p


def _parser() -> argparse.ArgumentParser:
    from . import subparser

    return subparser("fit")


def _refuse_unused(args) -> None:
    """Options given that this fit cannot honour: exit 2, naming them."""
    given = args.given
    cores = os.cpu_count() or 1
    if getattr(args, "nproc", 1) > cores:
        raise UserError(
            f"--nproc {args.nproc} is more than the {cores} CPU core(s) of this machine: each "
            f"process needs a core of its own (and a copy of the data); use --nproc {cores} "
            "or fewer"
        )
    if args.resume is not None:
        extra = given - set(RESUMABLE)
        if extra:
            raise UserError(
                "--resume continues the saved run; it cannot change "
                f"{options.flags(_parser(), extra)}"
            )
        return
    model = args.model
    if model != "vae":
        allowed = {"iw_samples"} if model == "cvae" else set()
        bad = given & (set(VAE_ONLY) - allowed)
        if bad and model in LABELLED_OPTIONS:
            raise UserError(
                f"--model {model} has its own prior and trains with the ELBO fit chooses for "
                f"it (TraceEnum_ELBO where a class is enumerated); it cannot use "
                f"{options.flags(_parser(), bad)}"
            )
        if bad:
            raise UserError(
                f"--model {model} is not a VAE (no KL term, prior, ELBO or importance "
                f"sampling); it cannot use {options.flags(_parser(), bad)}"
            )
    own = {**workflows.AUTOENCODER_OPTIONS, **LABELLED_OPTIONS}
    specific = set().union(*own.values())
    bad = (given & specific) - set(own.get(model, ()))
    if bad:
        raise UserError(f"{options.flags(_parser(), bad)}: not an option of --model {model}")
    if model == "sae":
        penalty = getattr(args, "sparsity", "kl")
        unused = given & ({"rho", "beta"} if penalty == "l1" else {"l1"})
        if unused:
            other = "kl" if penalty == "l1" else "l1"
            raise UserError(
                f"--sparsity {penalty} does not use {options.flags(_parser(), unused)} "
                f"(an option of --sparsity {other})"
            )
    options.refuse_idle(args)
    if "export_imputed" in given and args.data is None:
        raise UserError(
            "--export-imputed writes a --data table back with its holes filled; "
            f"--dataset {args.dataset} is not a table"
        )
    if model == "stacked" and "clip_norm" in given:
        raise UserError(
            "--model stacked does not clip gradients (its pretraining and fine-tuning are "
            "several fits); --clip-norm does not apply"
        )


def preflight(args) -> None:
    _refuse_unused(args)
    if args.resume is None:
        options.out_folder(args, resume_ok=args.model != "stacked")


def _cli_record(args) -> dict:
    skip = ("given", "resume", "force", "progress")
    keep = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in skip}
    keep["world_size"] = workflows.distributed_world()[0]
    keep["hidden"] = list(keep["hidden"])
    for key in ("data", "data_root"):  # a resume from another folder finds them
        if keep.get(key):
            keep[key] = str(Path(keep[key]).resolve())
    return keep


def _resumed(args) -> argparse.Namespace:
    """The settings of the run saved in DIR/checkpoint.pt, with those given now applied."""
    folder = Path(args.resume)
    ckpt = folder / "checkpoint.pt"
    metrics = folder / "metrics.json"
    if not ckpt.exists() and metrics.exists():
        try:
            model = json.loads(metrics.read_text()).get("model")
        except ValueError:
            model = None
        if model == "stacked":
            raise UserError(
                f"{folder} holds a --model stacked run, which writes no checkpoint and cannot "
                "be resumed; train it again with --force"
            )
    payload = read_training_checkpoint(ckpt)
    saved = payload["metadata"].get("cli")
    if not isinstance(saved, dict):
        raise UserError(f"{ckpt} holds no ppvae fit settings to resume")
    merged = vars(_parser().parse_args([]))
    merged.update({k: v for k, v in saved.items() if k in merged})
    for key in RESUMABLE:
        if key in args.given:
            merged[key] = getattr(args, key)
    merged.update(
        hidden=tuple(merged["hidden"]),
        out=str(folder),
        resume=str(folder),
        force=False,
        progress=args.progress,
        command="fit",
        given=args.given,
    )
    return argparse.Namespace(**merged)


def _folder(args) -> Path | None:
    if args.resume is not None:
        return Path(args.resume)
    return Path(args.out) if args.out else None


def resume_hint(args) -> str:
    """The command that continues an interrupted fit, where there is a checkpoint to resume."""
    folder = _folder(args)
    if getattr(args, "model", "vae") == "stacked" and args.resume is None:
        return ""
    if folder is None or not (folder / "checkpoint.pt").exists():
        return ""
    return f"; continue with: ppvae fit --resume {folder}"


def remedy(args, exc: FloatingPointError) -> str:
    from . import divergence_remedy

    stacked = getattr(args, "model", "vae") == "stacked" and args.resume is None
    folder = _folder(args)
    resumable = not stacked and folder is not None and (folder / "checkpoint.pt").exists()
    return divergence_remedy(str(exc), clip=not stacked, resume=str(folder) if resumable else None)


def main(args) -> int:
    _refuse_unused(args)
    if args.resume is not None:
        run = _resumed(args)
    else:
        run = args
        run.out = str(options.out_folder(args, resume_ok=args.model != "stacked"))
        args.out = run.out
    out = Path(run.out)
    ds = options.load_data(
        run,
        binarize="dynamic" if run.likelihood == "bernoulli" else None,
        missing_ok=run.model == "vae",  # the VAE's likelihood masks holes; autoencoders cannot
    )
    try:
        m = _fit(run, ds, out).metrics
    except InputError as exc:
        if run.resume is None or "training data changed" not in str(exc):
            raise
        source = f"--data {run.data}" if run.data else f"--dataset {run.dataset}"
        raise UserError(f"{exc} (the run trained on {source})") from None
    if not m:  # a rank other than 0 of a distributed run: rank 0 writes and reports
        return 0
    print(_summary(run.model, m, out))
    return 0


def _fit(run, ds, out: Path):
    """Call workflows.fit_vae or workflows.fit_autoencoder with the settings of ``run``."""
    common = {
        "latent_dim": run.latent_dim,
        "hidden": run.hidden,
        "likelihood": run.likelihood,
        "epochs": run.epochs,
        "batch_size": run.batch_size,
        "lr": run.lr,
        "clip_norm": run.clip_norm,
        "seed": run.seed,
        "device": run.device,
        "progress": run.progress,
        "out": out,
        "resume": run.resume is not None,
        "overwrite": run.force,
        "metadata": {"cli": _cli_record(run)},
    }
    model = run.model
    if model in workflows.LABELLED_MODELS:
        return workflows.fit_labelled(
            ds,
            model=model,
            labels=run.labels,
            alpha=getattr(run, "alpha", None),
            labelled_per_batch=getattr(run, "labelled_per_batch", None),
            conditional_prior=getattr(run, "conditional_prior", False),
            iw_samples=run.iw_samples,
            **common,
        )
    if model == "vae":
        return workflows.fit_vae(
            ds,
            prior=run.prior,
            architecture=run.architecture,
            guide=getattr(run, "guide", "diagonal"),  # absent from runs saved before guides
            elbo=run.elbo,
            num_particles=getattr(run, "num_particles", 1),
            kl_weight=run.kl_weight,
            kl_warmup=run.kl_warmup,
            iw_samples=run.iw_samples,
            export_imputed=getattr(run, "export_imputed", None),
            **common,
        )
    if model == "stacked":
        del common["clip_norm"], common["metadata"]
    # the options of the other models (and the other sparsity penalty) were refused if given
    own = workflows.fitting.model_options(model, run.sparsity)
    return workflows.fit_autoencoder(
        ds, model=model, **{name: getattr(run, name) for name in sorted(own)}, **common
    )


def _summary(model: str, m: dict, out: Path) -> str:
    """The lines fit prints: the test numbers of ``model``, where it was saved, the time
    per stage."""
    unit = "row" if m.get("source") else "image"  # a --data table has rows, not images
    if model == "vae":
        text = (
            f"test ELBO {m['test_elbo']:.3f}, test log-lik (IW, K={m['iw_samples']}) "
            f"{m['test_log_likelihood_iw']:.3f} nats per {unit}; wrote {out}/model.pt"
        )
        if m.get("export_imputed"):
            e = m["export_imputed"]
            text += f" and {e['path']} ({e['imputed_entries']} entries imputed)"
    elif model in workflows.LABELLED_MODELS:
        text = (
            f"test error {m['test_error']:.2%} with {m['labels_used']} labels (logistic "
            f"regression on the same labels {m['logistic_regression_test_error']:.2%})"
        )
        if "test_log_likelihood_given_label_iw" in m:
            text += (
                f"; test log p(x | y) (IW, K={m['iw_samples']}) "
                f"{m['test_log_likelihood_given_label_iw']:.3f} nats per {unit}"
            )
        text += f"; wrote {out}/model.pt and {out}/report.md"
    elif model == "stacked":
        text = (
            f"test reconstruction error after pretraining "
            f"{m['test_reconstruction_error_pretrained']:.4f} (squared, per {unit}); test "
            f"accuracy after fine-tuning {m['test_accuracy']:.4f} ({m['labels_used']} labels); "
            f"wrote {out}/model.pt"
        )
    else:
        text = (
            f"test reconstruction error {m['test_reconstruction_error']:.4f} (squared, per "
            f"{unit}); wrote {out}/model.pt"
        )
    if m.get("stage_seconds"):
        text += "\n" + reports.stage_line(m["stage_seconds"])
    return text
