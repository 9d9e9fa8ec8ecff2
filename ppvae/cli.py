"""The ``ppvae`` command (also ``python -m ppvae``).

Subcommands share the options ``--dataset --data-root --latent-dim --epochs --batch-size --lr
--seed --device --out``. A user error (bad option, missing data, bad file) exits with status 2
and a one-line message on stderr; no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from . import __version__, evaluate, plots
from .autoencoders import (
    AUTOENCODERS,
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    SparseAutoencoder,
    StackedAutoencoder,
)
from .checkpoints import read_training_checkpoint, save
from .data import DATASETS, as_image_shape, load_dataset
from .likelihoods import LIKELIHOODS
from .ppca import PPCA
from .priors import PRIORS
from .train import (
    ELBOS,
    TrainingInterrupted,
    distributed_world,
    finetune,
    fit,
    pretrain,
    resolve_device,
)
from .vae import VAE, LinearVAE

EXIT_USER_ERROR = 2
# Above this many rows, a full-batch LinearVAE step costs about a second (60000 x 784 MNIST), so
# compare trains it on minibatches of 1000 for 3600 steps instead of 2000 full-batch steps; on
# MNIST (k=8) that lands 0.03 nats/image from the PPCA optimum in about a minute.
LINEAR_FULL_BATCH_MAX = 10000


class UserError(Exception):
    """An error caused by the user's input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    if text.strip() in ("", "none"):
        return ()
    try:
        widths = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated widths like 256,128, got {text!r}"
        ) from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return widths


def _common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument(
        "--dataset",
        default="digits",
        choices=DATASETS,
        help="data set (default: digits, bundled with scikit-learn)",
    )
    g.add_argument(
        "--data-root",
        default=None,
        help="folder with MNIST/raw and FashionMNIST/raw (torchvision layout)",
    )
    g.add_argument("--latent-dim", type=_positive_int, default=8, help="latent dimensions k")
    g.add_argument(
        "--epochs",
        type=_nonneg_int,
        default=None,
        help="SVI epochs (run, fit: 300; check-ppca: 2000)",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="minibatch size (run, fit: 128; check-ppca: the whole training set)",
    )
    g.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="Adam learning rate (default: the model's; 1e-3 for a VAE)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
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
        "--kl-weight", type=float, default=1.0, help="beta: weight of the KL term (default 1)"
    )
    g.add_argument(
        "--kl-warmup",
        type=_nonneg_int,
        default=0,
        help="epochs over which the KL weight rises linearly to --kl-weight",
    )
    g.add_argument(
        "--elbo",
        default=None,
        choices=("auto", *ELBOS),
        help="ELBO estimator of the VAE (default: auto, analytic KL where the prior has one; "
        "compiled by torch.jit.trace for VAEs built from ppvae's own parts)",
    )
    g.add_argument(
        "--clip-norm",
        type=_positive_float,
        default=None,
        help="clip the gradients' global 2-norm to this value at every SVI step",
    )
    g.add_argument("--out", default=None, help="output folder (default: runs/COMMAND-DATASET)")
    g.add_argument(
        "--hidden",
        type=_widths,
        default=(256,),
        help="hidden widths of the encoder (decoder mirrors), e.g. 256,128",
    )
    g.add_argument(
        "--iw-samples",
        type=_positive_int,
        default=1000,
        help="importance samples K for the log-likelihood estimate",
    )
    g.add_argument(
        "--n-train",
        type=_positive_int,
        default=None,
        help="use a seeded random subset of the training split",
    )
    g.add_argument(
        "--n-test",
        type=_positive_int,
        default=None,
        help="use a seeded random subset of the test split",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download missing MNIST files into --data-root (needs network)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(prog="ppvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ppvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    run_p = sub.add_parser(
        "run",
        parents=[common],
        help="fit PPCA and a Gaussian VAE, evaluate both on the test split, write a report",
        description="Fit PPCA (closed form) and a Gaussian VAE (SVI) on the same dequantized "
        "training data, evaluate both on the test split in nats, and write metrics.json, "
        "report.md and figures.",
    )
    fit_p = sub.add_parser(
        "fit",
        parents=[common],
        help="train one VAE (or autoencoder) and save it to OUT/model.pt",
        description="Train one model by SVI and write OUT/model.pt, metrics.json and figures. "
        "--model picks the VAE (default) or a classic autoencoder, each a Pyro program: "
        "ae (vanilla), dae (denoising), sae (sparse), cae (contractive), stacked (greedy "
        "layer-wise pretraining of --hidden plus --latent-dim, then fine-tuning with labels).",
    )
    fit_p.add_argument(
        "--model",
        default="vae",
        choices=["vae", *AUTOENCODERS],
        help="vae, or an autoencoder: ae, dae, sae, cae, stacked",
    )
    fit_p.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        help="train with N processes on torch.distributed (gloo on CPU, NCCL on CUDA), each "
        "taking 1/N of every minibatch; torchrun -m ppvae fit ... works as well",
    )
    ae_opts = fit_p.add_argument_group("autoencoder options (--model ae/dae/sae/cae/stacked)")
    ae_opts.add_argument(
        "--noise", default="mask", choices=["mask", "gaussian"], help="dae: corruption"
    )
    ae_opts.add_argument(
        "--noise-level",
        type=float,
        default=None,
        help="dae: masking probability or Gaussian std (default 0.3); stacked: masking of each "
        "layer's input during pretraining (default 0)",
    )
    ae_opts.add_argument(
        "--sparsity", default="kl", choices=["kl", "l1"], help="sae: KL(rho||rho_hat) or L1"
    )
    ae_opts.add_argument("--rho", type=float, default=0.05, help="sae: target mean activation")
    ae_opts.add_argument("--beta", type=float, default=3.0, help="sae: weight of the KL penalty")
    ae_opts.add_argument("--l1", type=float, default=1e-3, help="sae: weight of the L1 penalty")
    ae_opts.add_argument(
        "--contraction", type=float, default=0.05, help="cae: lambda of ||J_f(x)||_F^2"
    )
    ae_opts.add_argument(
        "--finetune-epochs", type=_nonneg_int, default=None, help="stacked (default: --epochs)"
    )
    ae_opts.add_argument(
        "--labels",
        type=_positive_int,
        default=None,
        help="stacked: fine-tune on this many labelled training images (default: all)",
    )
    fit_p.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue the run whose checkpoint.pt is in DIR (its settings are reused; "
        "--epochs and --device may be given)",
    )
    fit_p.add_argument(
        "--likelihood",
        default="gaussian",
        choices=sorted(LIKELIHOODS),
        help="p(x|z); bernoulli trains on dynamically binarized data",
    )
    run_p.add_argument(
        "--likelihood",
        default="gaussian",
        choices=sorted(k for k in LIKELIHOODS if k != "bernoulli"),
        help="p(x|z) of the VAE: a density on the dequantized data, comparable with PPCA",
    )
    run_p.add_argument(
        "--check-epochs",
        type=_nonneg_int,
        default=2000,
        help="full-batch epochs of the LinearVAE checked against PPCA",
    )
    sub.add_parser(
        "check-ppca",
        parents=[common],
        help="train a LinearVAE by SVI and check it against the PPCA maximum-likelihood fit",
        description="Fit PPCA in closed form and a LinearVAE by SVI (full-batch steps) on the "
        "same dequantized training data, and compare the learned decoder with the PPCA MLE: "
        "log-likelihood and ELBO gaps (nats/sample), noise variance and covariance errors, "
        "principal angles, active units.",
    )
    cmp_p = sub.add_parser(
        "compare",
        parents=[common],
        help="PPCA vs LinearVAE vs VAE likelihoods with standard errors, PSIS and gaps",
        description="Fit PPCA, a LinearVAE and a nonlinear Gaussian VAE on the same dequantized "
        "data; report train and test nats/sample, bits/dim, ELBO, importance-weighted "
        "estimates with standard errors, the share of Pareto k-hat > 0.7, inference gaps and "
        "fit times; write a per-sample scatter and the per-sample log-likelihoods as ArviZ "
        "InferenceData (netCDF).",
    )
    cmp_p.add_argument(
        "--likelihood",
        default="gaussian",
        choices=sorted(k for k in LIKELIHOODS if k != "bernoulli"),
        help="p(x|z) of the nonlinear VAE",
    )
    cmp_p.add_argument(
        "--linear-epochs",
        type=_nonneg_int,
        default=None,
        help="epochs of the LinearVAE (default: 2000 full-batch steps, or 3600 minibatch steps)",
    )
    cmp_p.add_argument(
        "--linear-batch-size",
        type=_positive_int,
        default=None,
        help=f"LinearVAE batch size (default: the whole training set up to "
        f"{LINEAR_FULL_BATCH_MAX} rows, else 1000)",
    )
    cmp_p.add_argument(
        "--eval-points",
        type=_positive_int,
        default=2000,
        help="seeded subset of each split for the IW estimates and gaps",
    )
    cmp_p.add_argument(
        "--gap-points",
        type=_positive_int,
        default=200,
        help="test points on which the inference gaps are computed",
    )
    cmp_p.add_argument(
        "--nuts-points",
        type=_nonneg_int,
        default=3,
        help="test points whose VAE posterior is also sampled by NUTS",
    )
    cmp_p.add_argument(
        "--nuts-samples",
        type=_positive_int,
        default=500,
        help="NUTS warm-up steps and draws per chain (2 chains)",
    )
    return parser


# ---------------------------------------------------------------------- shared steps
def _load(args, binarize=None):
    ds = load_dataset(
        args.dataset,
        root=args.data_root,
        download=args.download,
        seed=args.seed,
        binarize=binarize,
        n_train=args.n_train,
        n_test=args.n_test,
    )
    if ds.train.shape[0] < 2 or ds.test.shape[0] < 1:
        raise UserError("need at least 2 training rows and 1 test row")
    return ds


def _make_vae(args, data_dim: int) -> VAE:
    if args.architecture == "conv" and data_dim != 784:
        raise UserError(
            f"--architecture conv needs 28 x 28 images; {args.dataset} has D={data_dim}"
        )
    return VAE(
        data_dim,
        args.latent_dim,
        hidden=args.hidden,
        likelihood=args.likelihood,
        prior=args.prior,
        architecture=args.architecture,
    )


def _fit_options(args) -> dict:
    if not (args.kl_weight >= 0 and math.isfinite(args.kl_weight)):
        raise UserError(f"--kl-weight must be a finite number >= 0, got {args.kl_weight}")
    return {
        "elbo": getattr(args, "elbo", None),  # absent from runs saved before --elbo existed
        "clip_norm": args.clip_norm,
        "kl_weight": args.kl_weight,
        "kl_warmup_epochs": args.kl_warmup,
    }


def _out_dir(args) -> Path:
    out = Path(args.out) if args.out else Path("runs") / f"{args.command}-{args.dataset}"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _bits_per_dim(nats: float, data_dim: int, levels: int | None) -> float | None:
    """Bits per dimension on the integer pixel scale, for dequantized data in [0, 1]."""
    if levels is None:
        return None
    return -(nats - data_dim * math.log(levels)) / (data_dim * math.log(2.0))


def _vae_figures(vae: VAE, ds, out: Path, history, device, reference=None) -> tuple:
    figs = {}
    figs["training_curve"] = plots.training_curve(
        history, out / "training_curve.png", reference=reference
    ).name
    image_shape = as_image_shape(ds.image_shape, ds.data_dim)
    vae.eval()
    with torch.no_grad():
        x = ds.test[:10].to(device)
        if image_shape is not None:
            torch.manual_seed(0)
            figs["samples"] = plots.image_grid(
                [vae.sample(10), vae.sample(10)],
                image_shape,
                out / "samples_vae.png",
                title="VAE: E[x | z], z ~ p(z)",
            ).name
        loc = torch.cat([vae.encode(c.to(device))[0] for c in ds.test.split(4096)])
    return figs, x, loc, image_shape


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _environment() -> dict:
    return {
        "ppvae": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------- subcommands
def cmd_run(args) -> int:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    ds = _load(args)
    k = args.latent_dim
    if k >= ds.data_dim:
        raise UserError(f"--latent-dim {k} must be smaller than the data dimension {ds.data_dim}")
    torch.manual_seed(args.seed)  # reproducible initialization
    vae = _make_vae(args, ds.data_dim)
    out = _out_dir(args)
    print(f"ppvae run: {ds} -> {out}", file=sys.stderr)

    t = time.perf_counter()
    ppca = PPCA(k).fit(ds.train.double())
    ppca_fit_s = time.perf_counter() - t
    ppca_test = ppca.log_prob(ds.test.double())
    ppca_train = ppca.score(ds.train.double())
    history = fit(
        vae,
        ds.train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        test=ds.test,
        device=device,
        **_fit_options(args),
    )
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    vae_elbo = evaluate.elbo(vae, ds.test, num_samples=10)
    vae_iw = evaluate.log_likelihood(vae, ds.test, num_samples=args.iw_samples)
    eval_s = time.perf_counter() - t
    vae_train_elbo = float(evaluate.elbo(vae, ds.train, num_samples=1).mean())

    D, L = ds.data_dim, ds.levels
    metrics = {
        "command": "run",
        "dataset": ds.name,
        "n_train": int(ds.train.shape[0]),
        "n_test": int(ds.test.shape[0]),
        "data_dim": D,
        "latent_dim": k,
        "units": "nats per sample (density of uniformly dequantized data on [0,1]^D)",
        "ppca": {
            "test_log_likelihood": float(ppca_test.mean()),
            "test_log_likelihood_sem": float(ppca_test.std() / math.sqrt(len(ppca_test))),
            "train_log_likelihood": ppca_train,
            "test_bits_per_dim": _bits_per_dim(float(ppca_test.mean()), D, L),
            "noise_variance": ppca.noise_variance_,
            "fit_seconds": ppca_fit_s,
        },
        "vae": {
            "test_elbo": float(vae_elbo.mean()),
            "test_log_likelihood_iw": float(vae_iw.mean()),
            "test_log_likelihood_iw_sem": float(vae_iw.std() / math.sqrt(len(vae_iw))),
            "iw_samples": args.iw_samples,
            "train_elbo": vae_train_elbo,
            "test_bits_per_dim_iw": _bits_per_dim(float(vae_iw.mean()), D, L),
            "hidden": list(args.hidden),
            "prior": args.prior,
            "likelihood": args.likelihood,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "fit_seconds": history.seconds,
            "eval_seconds": eval_s,
            "history": history.to_dict(),
        },
        "seed": args.seed,
        "device": str(device),
        "environment": _environment(),
    }

    ref = {"PPCA test log-lik (exact)": metrics["ppca"]["test_log_likelihood"]}
    figs, x, loc, image_shape = _vae_figures(vae, ds, out, history, device, reference=ref)
    if image_shape is not None:
        with torch.no_grad():
            rows = [x.cpu(), vae.reconstruct(x).cpu(), ppca.reconstruct(x.cpu().double())]
            figs["reconstructions"] = plots.image_grid(
                rows,
                image_shape,
                out / "reconstructions.png",
                row_labels=["test data", "VAE", "PPCA"],
                title="Test reconstructions: E[x | z] at the posterior mean of z",
            ).name
            figs["samples_ppca"] = plots.image_grid(
                [ppca.sample(10, torch.Generator().manual_seed(args.seed)).clamp(0, 1)],
                image_shape,
                out / "samples_ppca.png",
                title="PPCA: x ~ p(x)",
            ).name
    figs["latent_scatter"] = plots.latent_scatter(
        {"VAE: E_q[z | x]": loc, "PPCA: E[z | x]": ppca.transform(ds.test.double())},
        ds.test_labels,
        out / "latent_scatter.png",
    ).name
    check = _ppca_check(ds, k, args.check_epochs, None, None, args.seed, device)
    metrics["ppca_check"] = check["result"]
    figs["ppca_check"] = plots.ppca_check(
        ds.train.double(), check["ppca"], check["vae"], check["result"], out / "ppca_check.png"
    ).name
    metrics["figures"] = figs
    metrics["seconds_total"] = time.perf_counter() - t0
    _write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(_run_report(metrics))
    print(_run_table(metrics))
    print(_check_table(metrics["ppca_check"]))
    print(
        f"wrote {out}/metrics.json, report.md and {len(figs)} figures "
        f"in {metrics['seconds_total']:.1f} s"
    )
    return 0


def _run_table(m: dict) -> str:
    p, v = m["ppca"], m["vae"]
    rows = [
        ("model", "test log p(x)", "test ELBO", "bits/dim", "fit s"),
        (
            "PPCA (exact)",
            f"{p['test_log_likelihood']:.3f}",
            "= log p(x)",
            _fmt(p["test_bits_per_dim"]),
            f"{p['fit_seconds']:.2f}",
        ),
        (
            f"VAE (IW, K={v['iw_samples']})",
            f"{v['test_log_likelihood_iw']:.3f} ± {v['test_log_likelihood_iw_sem']:.3f}",
            f"{v['test_elbo']:.3f}",
            _fmt(v["test_bits_per_dim_iw"]),
            f"{v['fit_seconds']:.1f}",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"{m['dataset']}: test set, nats per sample (higher is better)\n" + "\n".join(lines)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _run_report(m: dict) -> str:
    p, v = m["ppca"], m["vae"]
    figs = m["figures"]
    gap = v["test_log_likelihood_iw"] - p["test_log_likelihood"]
    lines = [
        f"# ppvae run: {m['dataset']}",
        "",
        f"PPCA and a Gaussian VAE with the same latent size (k = {m['latent_dim']}) fitted on the "
        f"same {m['n_train']} uniformly dequantized training images (D = {m['data_dim']}), "
        f"evaluated on {m['n_test']} test images. Log-likelihoods are densities on [0, 1]^D in "
        "nats per image; higher is better.",
        "",
        "| model | test log p(x) | test ELBO | bits/dim | train | fit time |",
        "|---|---|---|---|---|---|",
        f"| PPCA (closed form, exact) | {p['test_log_likelihood']:.3f} ± "
        f"{p['test_log_likelihood_sem']:.3f} | (exact) | {_fmt(p['test_bits_per_dim'])} | "
        f"{p['train_log_likelihood']:.3f} | {p['fit_seconds']:.2f} s |",
        f"| VAE ({v['prior']} prior, {v['likelihood']}), hidden {tuple(v['hidden'])}, "
        f"{v['epochs']} epochs | "
        f"{v['test_log_likelihood_iw']:.3f} ± {v['test_log_likelihood_iw_sem']:.3f} "
        f"(IW, K = {v['iw_samples']}) | {v['test_elbo']:.3f} | "
        f"{_fmt(v['test_bits_per_dim_iw'])} | {v['train_elbo']:.3f} (ELBO) | "
        f"{v['fit_seconds']:.1f} s |",
        "",
        "± is the standard error of the mean over test images. The VAE's importance-weighted "
        "estimate is a stochastic lower bound on its log-likelihood; PPCA's is exact.",
        "",
        f"The VAE's test log-likelihood is {abs(gap):.2f} nats per image "
        f"{'above' if gap > 0 else 'below'} PPCA's.",
        "",
        "## The linear VAE against PPCA",
        "",
        f"A LinearVAE (decoder W z + b, guide N(V (x - c), diag(d^2))) trained by SVI for "
        f"{m['ppca_check']['epochs']} full-batch epochs, compared with the PPCA maximum-"
        "likelihood solution on the training data (`ppvae check-ppca`):",
        "",
        "```",
        _check_table(m["ppca_check"]),
        "```",
        "",
        "## Figures",
        "",
    ]
    captions = {
        "training_curve": "ELBO per epoch, with PPCA's exact test log-likelihood for reference",
        "samples": "VAE samples: decoder means at z ~ p(z)",
        "samples_ppca": "PPCA samples x ~ p(x)",
        "reconstructions": "Test images and their reconstructions",
        "latent_scatter": "Posterior means of the test images, coloured by digit",
        "ppca_check": "Sample-covariance spectrum with the PPCA and LinearVAE fits; KL per "
        "latent dimension",
    }
    for key, name in figs.items():
        lines += [f"![{captions.get(key, key)}]({name})", f"*{captions.get(key, key)}.*", ""]
    lines += [
        "## Settings",
        "",
        f"batch size {v['batch_size']}, learning rate {v['lr']}, seed {m['seed']}, "
        f"device {m['device']}; total time {m['seconds_total']:.1f} s; "
        f"torch {m['environment']['torch']}, {m['environment']['threads']} threads.",
        "",
    ]
    return "\n".join(lines)


_RESUMABLE_OVERRIDES = ("epochs", "device")


def _cli_record(args) -> dict:
    keep = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("resume",)}
    keep["world_size"] = distributed_world()[0]
    keep["hidden"] = list(keep["hidden"])
    return keep


def _resume_args(args) -> argparse.Namespace:
    """The arguments of the run saved in RESUME/checkpoint.pt, with --epochs/--device kept."""
    folder = Path(args.resume)
    payload = read_training_checkpoint(folder / "checkpoint.pt")
    saved = payload["metadata"].get("cli")
    if not isinstance(saved, dict):
        raise UserError(f"{folder / 'checkpoint.pt'} holds no ppvae fit settings to resume")
    merged = argparse.Namespace(**saved)
    for key in _RESUMABLE_OVERRIDES:
        if getattr(args, f"_{key}_given", False):
            setattr(merged, key, getattr(args, key))
    merged.hidden = tuple(merged.hidden)
    merged.out = str(folder)
    merged.resume = str(folder)
    merged.command = "fit"
    return merged


def _checkpointed_fit(model, ds, args, out: Path, device, bern: bool, **options):
    """``ppvae fit``'s training: checkpoints in OUT, resumable, settings recorded."""
    return fit(
        model,
        ds.train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=device,
        binarize="dynamic" if bern else None,
        checkpoint_dir=out,
        resume=args.resume is not None,
        metadata={"cli": _cli_record(args)},
        **options,
    )


def cmd_fit(args) -> int:
    if args.resume is not None:
        args = _resume_args(args)
    if getattr(args, "model", "vae") != "vae":
        return _fit_autoencoder(args)
    device = resolve_device(args.device)
    bern = args.likelihood == "bernoulli"
    ds = _load(args, binarize="dynamic" if bern else None)
    if args.latent_dim >= ds.data_dim:
        raise UserError(
            f"--latent-dim {args.latent_dim} must be smaller than the data dimension {ds.data_dim}"
        )
    torch.manual_seed(args.seed)  # reproducible initialization
    vae = _make_vae(args, ds.data_dim)
    out = _out_dir(args)
    args.out = str(out)
    print(f"ppvae fit: {ds} -> {out}", file=sys.stderr)
    history = _checkpointed_fit(
        vae, ds, args, out, device, bern, test=ds.test, **_fit_options(args)
    )
    if distributed_world()[1] != 0:  # rank 0 evaluates and writes the outputs
        return 0
    torch.manual_seed(args.seed)
    test_elbo = float(evaluate.elbo(vae, ds.test, num_samples=10).mean())
    test_iw = evaluate.log_likelihood(vae, ds.test, num_samples=args.iw_samples)
    figs, x, loc, image_shape = _vae_figures(vae, ds, out, history, device)
    if image_shape is not None:
        with torch.no_grad():
            figs["reconstructions"] = plots.image_grid(
                [x.cpu(), vae.reconstruct(x).cpu()],
                image_shape,
                out / "reconstructions.png",
                row_labels=["test data", "VAE"],
                title="Test reconstructions",
            ).name
    figs["latent_scatter"] = plots.latent_scatter(
        {"VAE: E_q[z | x]": loc}, ds.test_labels, out / "latent_scatter.png"
    ).name
    meta = {
        "dataset": ds.name,
        "seed": args.seed,
        "binarize": ds.binarize,
        "dequantized": ds.dequantized,
    }
    save(vae.cpu(), out / "model.pt", history=history, metadata=meta)
    metrics = {
        "command": "fit",
        **meta,
        "likelihood": args.likelihood,
        "prior": args.prior,
        "latent_dim": args.latent_dim,
        "hidden": list(args.hidden),
        "test_elbo": test_elbo,
        "test_log_likelihood_iw": float(test_iw.mean()),
        "iw_samples": args.iw_samples,
        "fit_seconds": history.seconds,
        "history": history.to_dict(),
        "figures": figs,
        "environment": _environment(),
    }
    _write_json(out / "metrics.json", metrics)
    print(
        f"test ELBO {test_elbo:.3f}, test log-lik (IW, K={args.iw_samples}) "
        f"{metrics['test_log_likelihood_iw']:.3f} nats/sample; wrote {out}/model.pt"
    )
    return 0


def _make_autoencoder(args, data_dim: int):
    common = {"hidden": args.hidden, "likelihood": args.likelihood}
    try:
        if args.model == "stacked":
            noise = 0.0 if args.noise_level is None else args.noise_level
            return StackedAutoencoder(
                data_dim, hidden=(*args.hidden, args.latent_dim), noise_level=noise
            )
        if args.model == "ae":
            return Autoencoder(data_dim, args.latent_dim, **common)
        if args.model == "dae":
            return DenoisingAutoencoder(
                data_dim,
                args.latent_dim,
                noise=args.noise,
                noise_level=0.3 if args.noise_level is None else args.noise_level,
                **common,
            )
        if args.model == "sae":
            return SparseAutoencoder(
                data_dim,
                args.latent_dim,
                penalty=args.sparsity,
                rho=args.rho,
                beta=args.beta,
                l1=args.l1,
                **common,
            )
        return ContractiveAutoencoder(data_dim, args.latent_dim, lam=args.contraction, **common)
    except ValueError as exc:
        raise UserError(f"--model {args.model}: {exc}") from None


def _fit_autoencoder(args) -> int:
    """``ppvae fit --model ae|dae|sae|cae|stacked``: train, save, figures, metrics."""
    if args.likelihood not in ("gaussian", "bernoulli"):
        raise UserError(
            f"--model {args.model} reconstructs with --likelihood gaussian (squared error) "
            f"or bernoulli (cross-entropy), not {args.likelihood}"
        )
    if args.model == "stacked" and args.likelihood != "gaussian":
        raise UserError("--model stacked pretrains with the squared error (--likelihood gaussian)")
    if getattr(args, "elbo", None) is not None:
        raise UserError(f"--elbo chooses the VAE's estimator; --model {args.model} has no KL term")
    device = resolve_device(args.device)
    bern = args.likelihood == "bernoulli"
    ds = _load(args, binarize="dynamic" if bern else None)
    if args.latent_dim >= ds.data_dim:
        raise UserError(
            f"--latent-dim {args.latent_dim} must be smaller than the data dimension {ds.data_dim}"
        )
    torch.manual_seed(args.seed)
    model = _make_autoencoder(args, ds.data_dim)
    out = _out_dir(args)
    args.out = str(out)
    print(f"ppvae fit --model {args.model}: {ds} -> {out}", file=sys.stderr)
    metrics: dict = {"command": "fit", "model": args.model, "dataset": ds.name, "seed": args.seed}
    if args.model == "stacked":
        n_lab = len(ds.train) if args.labels is None else min(args.labels, len(ds.train))
        rows = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(args.seed))
        rows = rows[:n_lab]
        histories = pretrain(
            model,
            ds.train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=device,
        )
        history = finetune(
            model,
            ds.train[rows],
            ds.train_labels[rows],
            epochs=args.epochs if args.finetune_epochs is None else args.finetune_epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=device,
        )
        model.cpu()
        acc = float((model.predict(ds.test) == ds.test_labels).float().mean())
        metrics.update(
            {
                "labels_used": n_lab,
                "test_accuracy": acc,
                "pretrain_loss_per_layer": [-h.train_elbo[-1] for h in histories if h.train_elbo],
                "fit_seconds": sum(h.seconds for h in histories) + history.seconds,
            }
        )
        summary = f"test accuracy {acc:.4f} ({n_lab} labels)"
    else:
        history = _checkpointed_fit(model, ds, args, out, device, bern)
        if distributed_world()[1] != 0:
            return 0
        model.cpu()
        metrics["fit_seconds"] = history.seconds
        summary = ""
    model.eval()
    test = ds.test
    metrics["test_reconstruction_error"] = model.reconstruction_error(test)
    metrics["train_objective_per_sample"] = [-v for v in history.train_elbo]
    figs = {}
    figs["training_curve"] = plots.training_curve(
        history,
        out / "training_curve.png",
        title="fine-tuning: log p(y | x)" if args.model == "stacked" else "minus the objective",
    ).name
    image_shape = as_image_shape(ds.image_shape, ds.data_dim)
    with torch.no_grad():
        x = test[:10]
        if image_shape is not None:
            rows_ = [x]
            labels = ["test data"]
            if args.model == "dae":
                torch.manual_seed(args.seed)
                noisy = model.corrupt(x)
                rows_ += [noisy, model.reconstruct(noisy)]
                labels += ["corrupted", "DAE(corrupted)"]
            rows_.append(model.reconstruct(x))
            labels.append(f"{args.model}(data)")
            figs["reconstructions"] = plots.image_grid(
                rows_,
                image_shape,
                out / "reconstructions.png",
                row_labels=labels,
                title="Test reconstructions",
            ).name
            figs["features"] = plots.feature_tiles(
                model.first_layer_features(),
                image_shape,
                out / "features.png",
                title=f"{args.model}: first-layer filters",
            ).name
        codes = torch.cat([model.encode(c) for c in test.split(4096)])
    figs["latent_scatter"] = plots.latent_scatter(
        {f"{args.model}: code f(x)": codes},
        ds.test_labels,
        out / "latent_scatter.png",
        code_name="codes",
    ).name
    save(model, out / "model.pt", history=history, metadata={"dataset": ds.name, "seed": args.seed})
    metrics.update({"figures": figs, "environment": _environment()})
    _write_json(out / "metrics.json", metrics)
    print(
        f"test reconstruction error {metrics['test_reconstruction_error']:.4f} (squared, per "
        f"image){'; ' + summary if summary else ''}; wrote {out}/model.pt"
    )
    return 0


CHECK_TARGETS = {
    "loglik_gap": 0.01,
    "elbo_gap": 0.03,
    "noise_variance_rel_error": 0.01,
    "covariance_rel_error": 0.05,
}


def _ppca_check(ds, k: int, epochs: int, batch_size, lr, seed: int, device) -> dict:
    """Fit PPCA and a LinearVAE on ds.train and compare them (see evaluate.compare_to_ppca)."""
    X = ds.train
    ppca = PPCA(k).fit(X.double())
    torch.manual_seed(seed)
    vae = LinearVAE(ds.data_dim, k)
    history = fit(
        vae, X, epochs=epochs, batch_size=batch_size or len(X), lr=lr, seed=seed, device=device
    )
    vae.cpu()
    result = evaluate.compare_to_ppca(vae, ppca, X.double())
    test_ll = float(evaluate.exact_log_likelihood(vae, ds.test.double()).mean())
    result.update(
        {
            "fit_seconds": history.seconds,
            "epochs": epochs,
            "targets": CHECK_TARGETS,
            "passed": all(result[key] <= tol for key, tol in CHECK_TARGETS.items()),
            "test_log_likelihood_linear_vae": test_ll,
            "test_log_likelihood_ppca": float(ppca.log_prob(ds.test.double()).mean()),
        }
    )
    return {"result": result, "vae": vae, "ppca": ppca, "history": history}


def _check_table(r: dict) -> str:
    rows = [("quantity", "value", "target")]
    for key in ("loglik_gap", "elbo_gap", "noise_variance_rel_error", "covariance_rel_error"):
        rows.append((key, f"{r[key]:.2e}", f"<= {CHECK_TARGETS[key]:g}"))
    angles = ", ".join(f"{a:.2f}" for a in r["principal_angles_deg"]) or "n/a"
    rows.append(
        ("max principal angle (deg)", f"{max(r['principal_angles_deg'], default=0):.3f}", "")
    )
    rows.append(("active units", str(r["active_units"]), ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    verdict = "PASS" if r["passed"] else "FAIL"
    return (
        "LinearVAE (SVI) vs PPCA maximum likelihood, training data, nats per sample\n"
        + "\n".join(lines)
        + f"\nprincipal angles (deg): {angles}\n{verdict}"
    )


def cmd_check_ppca(args) -> int:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    ds = _load(args)
    if args.latent_dim >= ds.data_dim:
        raise UserError(
            f"--latent-dim {args.latent_dim} must be smaller than the data dimension {ds.data_dim}"
        )
    out = _out_dir(args)
    check = _ppca_check(
        ds, args.latent_dim, args.epochs, args.batch_size, args.lr, args.seed, device
    )
    r = check["result"]
    r["figure"] = plots.ppca_check(
        ds.train.double(), check["ppca"], check["vae"], r, out / "ppca_check.png"
    ).name
    r["seconds_total"] = time.perf_counter() - t0
    r.update(
        {
            "dataset": ds.name,
            "latent_dim": args.latent_dim,
            "seed": args.seed,
            "environment": _environment(),
        }
    )
    _write_json(out / "check_ppca.json", r)
    print(_check_table(r))
    print(f"wrote {out}/check_ppca.json and {r['figure']} in {r['seconds_total']:.1f} s")
    return 0


def _subset_rows(X: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if n >= X.shape[0]:
        return X
    idx = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return X[idx.sort().values]


def _vae_scores(vae, ds, args, device, log_px_exact=None) -> dict:
    """ELBO, IW estimate with SE and k-hat share, gaps, on train and test subsets."""
    out = {}
    for split, X in (("train", ds.train), ("test", ds.test)):
        Xs = _subset_rows(X, args.eval_points, args.seed + (split == "test"))
        torch.manual_seed(args.seed)
        est = evaluate.estimate_log_likelihood(vae, Xs, num_samples=args.iw_samples)
        out[split] = {
            "n_points": int(Xs.shape[0]),
            "elbo": float(evaluate.elbo(vae, Xs, num_samples=10).mean()),
            "iw": est.mean,
            "iw_sem": est.sem,
            "iw_mc_se": float(est.mc_se.mean()),
            "khat_share_gt_0.7": est.khat_share,
            "bits_per_dim": est.bits_per_dim(ds.levels),
        }
        if split == "test":
            out["test_per_sample"] = est.log_px
    gaps = evaluate.inference_gaps(
        vae, _subset_rows(ds.test, args.gap_points, args.seed + 7), num_samples=args.iw_samples
    )["mean"]
    out["approximation_gap"] = gaps["approximation_gap"]
    out["amortization_gap"] = gaps["amortization_gap"]
    return out


def cmd_compare(args) -> int:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    ds = _load(args)
    k = args.latent_dim
    if k >= ds.data_dim:
        raise UserError(f"--latent-dim {k} must be smaller than the data dimension {ds.data_dim}")
    torch.manual_seed(args.seed)
    vae = _make_vae(args, ds.data_dim)
    out = _out_dir(args)
    print(f"ppvae compare: {ds} -> {out}", file=sys.stderr)
    D, L = ds.data_dim, ds.levels
    rows: dict[str, dict] = {}

    t = time.perf_counter()
    ppca = PPCA(k).fit(ds.train.double())
    ppca_s = time.perf_counter() - t
    ppca_test = ppca.log_prob(ds.test.double()).float()
    rows["PPCA"] = {
        "train": {"exact": ppca.score(ds.train.double())},
        "test": {
            "exact": float(ppca_test.mean()),
            "exact_sem": float(ppca_test.std() / math.sqrt(len(ppca_test))),
            "bits_per_dim": _bits_per_dim(float(ppca_test.mean()), D, L),
        },
        "fit_seconds": ppca_s,
    }

    torch.manual_seed(args.seed)
    lin = LinearVAE(D, k)
    n = len(ds.train)
    lin_bs = args.linear_batch_size or (n if n <= LINEAR_FULL_BATCH_MAX else 1000)
    n_batches = math.ceil(n / lin_bs)
    lin_epochs = args.linear_epochs
    if lin_epochs is None:
        lin_epochs = 2000 if n_batches == 1 else math.ceil(3600 / n_batches)
    h = fit(lin, ds.train, epochs=lin_epochs, batch_size=lin_bs, seed=args.seed, device=device)
    lin.cpu()
    lin_scores = _vae_scores(lin, ds, args, device)
    lin_exact_test = evaluate.exact_log_likelihood(lin, ds.test.double()).float()
    lin_scores["test"]["exact"] = float(lin_exact_test.mean())
    lin_scores["train"]["exact"] = float(evaluate.exact_log_likelihood(lin, ds.train).mean())
    lin_scores["fit_seconds"] = h.seconds
    lin_scores["epochs"], lin_scores["batch_size"] = lin_epochs, min(lin_bs, n)
    rows["LinearVAE"] = lin_scores

    h = fit(
        vae,
        ds.train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        test=ds.test,
        device=device,
        **_fit_options(args),
    )
    vae.cpu()
    vae_scores = _vae_scores(vae, ds, args, device)
    vae_scores["fit_seconds"] = h.seconds
    rows[f"VAE ({args.prior} prior, {args.likelihood})"] = vae_scores

    nuts = []
    if args.nuts_points:
        nuts = evaluate.nuts_posterior(
            vae,
            ds.test[: args.nuts_points],
            num_samples=args.nuts_samples,
            warmup_steps=args.nuts_samples,
            seed=args.seed,
        )
        vae_scores["nuts"] = [
            {
                "r_hat_max": r["r_hat_max"],
                "ess_bulk_min": r["ess_bulk_min"],
                "nuts_mean": r["nuts_mean"].tolist(),
                "q_mean": r["q_mean"].tolist(),
                "nuts_var": r["nuts_var"].tolist(),
                "q_var": r["q_var"].tolist(),
            }
            for r in nuts
        ]
    per_sample = {
        "ppca": ppca_test.numpy(),
        "linear_vae": lin_exact_test.numpy(),
        "vae": vae_scores.pop("test_per_sample").numpy(),
    }
    lin_scores.pop("test_per_sample")
    idx = _subset_rows(
        torch.arange(len(ds.test))[:, None].float(), args.eval_points, args.seed + 1
    )[:, 0].long()
    figure = plots.loglik_scatter(
        ppca_test[idx],
        torch.as_tensor(per_sample["vae"]),
        out / "loglik_scatter.png",
        xlabel="PPCA test log p(x) (exact, nats)",
        ylabel=f"VAE test log p(x) (IW, K={args.iw_samples}, nats)",
    ).name
    netcdf = _write_inference_data(per_sample, idx, out / "log_likelihood.nc")
    if nuts and k >= 2:
        plots.nuts_vs_guide(nuts, out / "nuts_vs_guide.png")
    result = {
        "command": "compare",
        "dataset": ds.name,
        "latent_dim": k,
        "data_dim": D,
        "n_train": int(ds.train.shape[0]),
        "n_test": int(ds.test.shape[0]),
        "iw_samples": args.iw_samples,
        "eval_points": args.eval_points,
        "models": rows,
        "figure": figure,
        "netcdf": netcdf,
        "seconds_total": time.perf_counter() - t0,
        "environment": _environment(),
    }
    _write_json(out / "compare.json", result)
    table = _compare_table(result)
    (out / "compare.md").write_text(
        f"# ppvae compare: {ds.name}\n\n```\n{table}\n```\n\n![PPCA vs VAE]({figure})\n"
    )
    print(table)
    print(
        f"wrote {out}/compare.json, compare.md, {figure}, {netcdf} "
        f"in {result['seconds_total']:.1f} s"
    )
    return 0


def _write_inference_data(per_sample: dict, vae_idx: torch.Tensor, path: Path) -> str:
    """Per-sample test log-likelihoods as ArviZ InferenceData (log_likelihood group)."""
    import arviz as az
    import numpy as np

    n = len(per_sample["ppca"])
    vae_full = np.full(n, np.nan, dtype=np.float64)  # IW estimates exist on the subset only
    vae_full[vae_idx.numpy()] = per_sample["vae"]
    data = {
        "ppca": per_sample["ppca"].astype(np.float64)[None, None, :],
        "linear_vae": per_sample["linear_vae"].astype(np.float64)[None, None, :],
        "vae": vae_full[None, None, :],
    }
    idata = az.from_dict(log_likelihood=data, dims={k: ["test_image"] for k in data})
    idata.to_netcdf(str(path))
    return path.name


def _compare_table(r: dict) -> str:
    head = (
        "model",
        "train",
        "test",
        "test ± se",
        "bits/dim",
        "test ELBO",
        "k>0.7",
        "approx gap",
        "amort gap",
        "fit s",
    )
    rows = [head]
    for name, m in r["models"].items():
        tr, te = m["train"], m["test"]
        test_val = te.get("exact", te.get("iw"))
        se = te.get("exact_sem", te.get("iw_sem"))
        rows.append(
            (
                name,
                f"{tr.get('exact', tr.get('iw')):.3f}",
                f"{test_val:.3f}",
                f"{te.get('iw', test_val):.3f} ± {se:.3f}",
                _fmt(te.get("bits_per_dim")),
                _fmt(te.get("elbo")),
                _fmt(te.get("khat_share_gt_0.7")),
                _fmt(m.get("approximation_gap")),
                _fmt(m.get("amortization_gap")),
                f"{m['fit_seconds']:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = (
        f"nats per sample (higher is better); train/test: exact for PPCA and LinearVAE, "
        f"IW (K={r['iw_samples']}) for the VAE on {r['eval_points']} points per split"
    )
    return f"{r['dataset']}: {note}\n" + "\n".join(lines)


COMMANDS = {"run": cmd_run, "fit": cmd_fit, "check-ppca": cmd_check_ppca, "compare": cmd_compare}
_DEFAULTS = {
    "run": {"epochs": 300, "batch_size": 128},
    "fit": {"epochs": 300, "batch_size": 128},
    "check-ppca": {"epochs": 2000, "batch_size": None},
    "compare": {"epochs": 300, "batch_size": 128},
}


def _distributed_worker(rank: int, argv: list[str], nproc: int, rendezvous: str) -> None:
    """One process of ``ppvae fit --nproc N`` (torch.multiprocessing.spawn target)."""
    import os

    os.environ.update(
        PPVAE_INIT_METHOD=rendezvous,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    status = main(argv)
    if status:
        raise SystemExit(status)


def _launch(argv: list[str], nproc: int) -> int:
    import tempfile

    import torch.multiprocessing as mp

    # A file rendezvous: a TCP port picked in advance can be taken before rank 0 binds it.
    folder = tempfile.TemporaryDirectory(prefix="ppvae-rendezvous-")
    rendezvous = f"file://{Path(folder.name) / 'init'}"
    try:
        mp.spawn(_distributed_worker, args=(argv, nproc, rendezvous), nprocs=nproc)
    except mp.ProcessRaisedException as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "a worker failed"
        print(f"ppvae: error: distributed training failed: {last}", file=sys.stderr)
        return 1
    except mp.ProcessExitedException as exc:
        print(f"ppvae: error: a training process exited with {exc.exit_code}", file=sys.stderr)
        return exc.exit_code or 1
    finally:
        folder.cleanup()
    return 0


def _init_distributed(args) -> bool:
    """Join the process group described by torchrun-style environment variables, if any."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    cuda = str(args.device).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    method = os.environ.get("PPVAE_INIT_METHOD")  # set by --nproc; torchrun uses env://
    if method:
        torch.distributed.init_process_group(
            "nccl" if cuda else "gloo",
            init_method=method,
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    else:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    import os

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if getattr(args, "nproc", 1) > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _launch(argv, args.nproc)
    joined = False
    for key in ("epochs", "device"):
        setattr(args, f"_{key}_given", getattr(args, key) is not None)
    if args.device is None:
        args.device = "cpu"
    for key, value in _DEFAULTS[args.command].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        joined = _init_distributed(args)
        return COMMANDS[args.command](args)
    except (UserError, ValueError, FileNotFoundError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"ppvae {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingInterrupted as exc:
        hint = f"; continue with: ppvae fit --resume {args.out}" if args.command == "fit" else ""
        print(f"ppvae {args.command}: {exc}{hint}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"ppvae {args.command}: interrupted", file=sys.stderr)
        return 130
    except FloatingPointError as exc:
        print(f"ppvae {args.command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if joined:
            torch.distributed.destroy_process_group()
