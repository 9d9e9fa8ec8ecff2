"""The pieces the experiments share: the result, the data, the output folder, the schedules.

This is the one module of the workflows that imports the training loop (``ppvae.train``).
The experiments call it through the package, as ``workflows.fit`` (likewise ``pretrain``,
``finetune``, ``resolve_device``, ``distributed_world``, the ``LINEAR_*`` schedule constants
and ``CHECK_TARGETS``), so that replacing ``ppvae.workflows.fit`` reaches every experiment.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import evaluate, plots, workflows
from ..data import Dataset, as_image_shape, load_dataset, split_missing
from ..errors import InputError
from ..ppca import PPCA
from ..tables import Standardization, write_table

# The training loop: the one place that names its module (ppvae.train).
from ..train import (  # noqa: F401  (re-exported by ppvae.workflows for the experiments and ppvae.cli)
    ELBOS,
    History,
    TrainingInterrupted,
    distributed_world,
    finetune,
    fit,
    pretrain,
    resolve_device,
)
from ..vae import VAE, LinearVAE

RUN_FILES = ("checkpoint.pt", "model.pt", "metrics.json", "check_ppca.json", "compare.json")
"""A folder holding any of these holds a run; it is not overwritten unless asked."""

RUN_OUTPUTS = (
    *RUN_FILES,
    "report.md",
    "compare.md",
    "log_likelihood.nc",
    "training_curve.png",
    "samples_vae.png",
    "samples_ppca.png",
    "reconstructions.png",
    "imputations.png",
    "latent_scatter.png",
    "error_curve.png",
    "conditional_samples.png",
    "features.png",
    "ppca_check.png",
    "loglik_scatter.png",
    "nuts_vs_guide.png",
)
"""Every file a workflow may write into its folder: what ``overwrite`` removes before a new run
writes (so that no figure or report of the previous run is left beside the new one). Other
files in the folder are left alone."""

LINEAR_FULL_BATCH_MAX = 10000
"""Above this many training rows a full-batch LinearVAE step costs about a second (60000 x
784 MNIST), so the LinearVAE trains on minibatches instead (see :func:`linear_schedule`)."""
LINEAR_BATCH_SIZE = 1000
LINEAR_STEPS = 12000
LINEAR_MINIBATCH_LR = 0.02
"""The LinearVAE's learning rate on minibatches (its own default, 0.05, is for full batches).

On MNIST (60000 x 784, k = 8; minibatches of 1000, held then decayed as the LinearVAE's
defaults) 3600 steps at 0.05 ended 0.041 nats/image from the PPCA optimum, at 0.01 0.019 and
at 0.003 0.029; 9000 steps at 0.01 0.005 and at 0.02 0.004 (seed 1: 0.003; Fashion-MNIST:
0.008), the covariance within 5% (one thread, about 100 s each). :data:`LINEAR_STEPS` is
12000 for a margin under the check's 0.01: ``ppvae run`` at its defaults then measured 0.002
(MNIST) and 0.003 (Fashion-MNIST), covariance errors 0.030 and 0.022, in 143 s and 158 s of
its 312 s and 318 s (``benchmarks/run_mnist.py``, one thread)."""
LINEAR_FULL_BATCH_EPOCHS = 2000

VAE_STEPS = 3600
"""Default length of ``run``'s and ``compare``'s VAE training, in optimizer steps: the epochs
are ``ceil(VAE_STEPS / batches per epoch)`` (see :func:`vae_epochs`). At batch 128 that is
300 epochs on digits' 1,438 training rows and 8 on MNIST's 60,000, so a run's training costs
about the same whatever the data's size."""

CHECK_TARGETS = {
    "loglik_gap": 0.01,
    "elbo_gap": 0.03,
    "noise_variance_rel_error": 0.01,
    "covariance_rel_error": 0.05,
}
"""Tolerances of the LinearVAE-vs-PPCA check (gaps in nats per sample, relative errors)."""


@dataclass
class Result:
    """What a workflow computed.

    Attributes
    ----------
    metrics : dict
        JSON-able results (nats per sample), as written to the ``out`` folder.
    models : dict of str to torch.nn.Module or PPCA
        The fitted models, on the CPU.
    history : History, optional
        The training history of the main model.
    out : Path, optional
        The folder written to, or None.
    """

    metrics: dict
    models: dict = field(default_factory=dict)
    history: History | None = None
    out: Path | None = None


# ---------------------------------------------------------------------- data and folders
def load(
    dataset: Dataset | str = "digits",
    *,
    data_root: str | None = None,
    download: bool = False,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    binarize: str | None = None,
) -> Dataset:
    """The data set of a workflow: ``dataset`` itself, or :func:`~ppvae.load_dataset` of a name.

    Raises
    ------
    InputError
        Fewer than 2 training rows or no test row.
    """
    if isinstance(dataset, str):
        ds = load_dataset(
            dataset,
            root=data_root,
            download=download,
            seed=seed,
            binarize=binarize,
            n_train=n_train,
            n_test=n_test,
        )
    elif isinstance(dataset, Dataset):
        ds = dataset
    else:
        raise InputError(
            f"dataset must be a ppvae.Dataset or a data set name, got {type(dataset).__name__}"
        )
    if ds.train.shape[0] < 2 or ds.test.shape[0] < 1:
        raise InputError("dataset needs at least 2 training rows and 1 test row")
    return ds


def check_latent_dim(latent_dim: int, ds: Dataset) -> None:
    """Refuse a latent dimension that is not below the data dimension."""
    if latent_dim >= ds.data_dim:
        raise InputError(
            f"latent_dim {latent_dim} must be smaller than the data dimension {ds.data_dim}"
        )


def existing_run(out: str | Path) -> list[str]:
    """The files of :data:`RUN_FILES` that folder ``out`` holds (empty: no run there)."""
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists()]


def prepare_out(out: str | Path | None, *, overwrite: bool = False, resume: bool = False):
    """Create folder ``out``; refuse one that holds a run unless ``overwrite`` or ``resume``.

    Returns
    -------
    Path or None
        The folder (None when ``out`` is None: nothing is written).
    """
    if out is None:
        return None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out {out} exists and is not a folder")
    held = existing_run(out) if out.is_dir() else []
    if held and not (overwrite or resume):
        raise InputError(
            f"out {out} already holds a run ({', '.join(held)}); pass overwrite=True to replace it"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"out {out} cannot be created: {exc.strerror or exc}") from None
    check_writable(out)
    if overwrite and not resume:
        for name in RUN_OUTPUTS:
            (out / name).unlink(missing_ok=True)
        for tmp in out.glob(".*.tmp"):  # an interrupted atomic write's leftovers
            tmp.unlink(missing_ok=True)
    return out


def check_writable(out: str | Path, name: str = "out") -> None:
    """Refuse a folder that cannot be written, by creating (and removing) a file in it; a
    folder that does not exist yet is created for the test and removed again, with any
    parents it needed. Before any work, so that no run is lost to its last write."""
    out = Path(out)
    created = []
    try:
        missing = out.absolute()
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        for folder in reversed(created):
            folder.mkdir()
        fd, probe = tempfile.mkstemp(prefix=".ppvae-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        what = "cannot be created" if created else "is not writable"
        raise InputError(f"{name} {out} {what}: {exc.strerror or exc}") from None
    finally:
        for folder in created:
            if folder.is_dir():
                folder.rmdir()


class Stages:
    """The wall time of each stage of a workflow (``seconds``, by name, in the order run),
    and, when ``progress`` is on (None: when stderr is a terminal), a line on stderr as each
    stage starts and ends, so that no long stage runs in silence.

    ``with stages("iw", "VAE: IW log-likelihood of 2000 test points, K = 1000"): ...``
    """

    def __init__(self, command: str, progress: bool | None = None):
        self.command = command
        self.show = sys.stderr.isatty() if progress is None else bool(progress)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, what: str):
        if self.show:
            print(f"ppvae {self.command}: {what} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - t
            self.seconds[name] = self.seconds.get(name, 0.0) + spent
        if self.show:
            print(f"ppvae {self.command}: {what}: {spent:.1f} s", file=sys.stderr, flush=True)


@dataclass
class Start:
    """What every experiment begins with: the device, the data, the model, the folder."""

    device: torch.device
    data: Dataset
    model: object
    out: Path | None


def start(
    dataset: Dataset | str,
    *,
    latent_dim: int,
    seed: int,
    device: str,
    out: str | Path | None,
    overwrite: bool = False,
    resume: bool = False,
    binarize: str | None = None,
    build=None,
) -> Start:
    """Resolve the device, load the data, check ``latent_dim``, build the model, prepare ``out``.

    ``build(data_dim)`` makes the model after ``torch.manual_seed(seed)`` (reproducible
    initialization); without it there is no model. Every check runs before ``out`` is
    created.
    """
    dev = workflows.resolve_device(device)
    ds = load(dataset, seed=seed, binarize=binarize)
    check_latent_dim(latent_dim, ds)
    model = None
    if build is not None:
        torch.manual_seed(seed)  # reproducible initialization
        model = build(ds.data_dim)
    return Start(dev, ds, model, prepare_out(out, overwrite=overwrite, resume=resume))


def finish(out: Path | None, name: str, metrics: dict, report=None) -> None:
    """Write ``metrics`` to ``out/name`` and, where ``report`` is a (file name, function of the
    metrics giving Markdown), the report beside it. Nothing when ``out`` is None."""
    if out is None:
        return
    write_json(out / name, metrics)
    if report is not None:
        file_name, markdown = report
        (out / file_name).write_text(markdown(metrics))


# ---------------------------------------------------------------------- models and training
def linear_schedule(
    n_rows: int, *, epochs: int | None = None, batch_size: int | None = None
) -> tuple[int, int]:
    """Epochs and batch size that train a LinearVAE to the PPCA optimum at a bounded cost.

    Full batch up to :data:`LINEAR_FULL_BATCH_MAX` rows (2000 epochs), else minibatches of
    :data:`LINEAR_BATCH_SIZE` rows for about :data:`LINEAR_STEPS` steps (on MNIST, 60000 x
    784, 200 epochs) at :data:`LINEAR_MINIBATCH_LR` (see :func:`train_linear_vae`).

    Parameters
    ----------
    n_rows : int
        Training rows N.
    epochs, batch_size : int, optional
        Chosen values; only the missing ones are filled in.

    Returns
    -------
    (int, int)
        ``(epochs, batch_size)``, the batch size at most ``n_rows``.
    """
    wf = workflows  # the constants as set on ppvae.workflows
    if batch_size is None:
        batch_size = n_rows if n_rows <= wf.LINEAR_FULL_BATCH_MAX else wf.LINEAR_BATCH_SIZE
    batch_size = min(int(batch_size), n_rows)
    if epochs is None:
        epochs = (
            wf.LINEAR_FULL_BATCH_EPOCHS
            if batch_size == n_rows
            else epochs_for_steps(n_rows, batch_size, wf.LINEAR_STEPS)
        )
    return int(epochs), batch_size


def epochs_for_steps(n_rows: int, batch_size: int, steps: int) -> int:
    """Epochs of ``ceil(N / B)`` minibatches that make about ``steps`` optimizer steps
    (a batch size above N counts as N)."""
    n_batches = math.ceil(n_rows / max(1, min(int(batch_size), n_rows)))
    return math.ceil(steps / n_batches)


def linear_lr(n_rows: int, batch_size: int, lr: float | None = None) -> float | None:
    """The LinearVAE check's learning rate: ``lr`` where given, else the LinearVAE's own
    (None) on full batches and :data:`LINEAR_MINIBATCH_LR` on minibatches."""
    if lr is None and batch_size < n_rows:
        return workflows.LINEAR_MINIBATCH_LR
    return lr


def vae_epochs(n_rows: int, batch_size: int, epochs: int | None = None) -> int:
    """The VAE's epochs: ``epochs`` where given, else about :data:`VAE_STEPS` steps.

    Parameters
    ----------
    n_rows : int
        Training rows N.
    batch_size : int
        Minibatch size B (at most N counts as N).
    epochs : int, optional
        A chosen number, returned as it is.

    Returns
    -------
    int
        ``epochs``, or ``ceil(VAE_STEPS / ceil(N / B))``.
    """
    if epochs is not None:
        return int(epochs)
    return epochs_for_steps(n_rows, batch_size, workflows.VAE_STEPS)


def make_vae(
    data_dim: int,
    latent_dim: int,
    *,
    hidden=(256,),
    likelihood: str = "gaussian",
    prior: str = "standard",
    architecture: str = "mlp",
    guide: str = "diagonal",
) -> VAE:
    """The VAE of the workflows (``architecture="conv"`` needs 28 x 28 images)."""
    if architecture == "conv" and data_dim != 784:
        raise InputError(
            f"architecture 'conv' needs 28 x 28 images (D = 784); the data have D = {data_dim}"
        )
    return VAE(
        data_dim,
        latent_dim,
        hidden=tuple(hidden),
        likelihood=likelihood,
        prior=prior,
        architecture=architecture,
        guide=guide,
    )


def train_vae(
    vae: VAE,
    ds: Dataset,
    device,
    *,
    epochs: int,
    batch_size: int,
    lr: float | None,
    elbo: str | None,
    clip_norm: float | None,
    kl_weight: float,
    kl_warmup: int,
    seed: int,
    progress: bool | None,
    num_particles: int = 1,
    **more,
) -> History:
    """:func:`~ppvae.fit` of the workflows' VAE on ``ds.train``, tracking ``ds.test``.

    ``more``: further arguments of fit (binarizing, checkpoints).
    """
    return workflows.fit(
        vae,
        ds.train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        test=ds.test,
        device=device,
        elbo=elbo,
        clip_norm=clip_norm,
        kl_weight=kl_weight,
        kl_warmup_epochs=kl_warmup,
        num_particles=num_particles,
        progress=progress,
        **more,
    )


def train_linear_vae(
    ds: Dataset,
    latent_dim: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float | None,
    seed: int,
    device,
    progress: bool | None,
) -> tuple[LinearVAE, History]:
    """A LinearVAE fitted on ``ds.train`` (seeded initialization), moved to the CPU. With
    missing entries its guide is full rank, the family that holds each row's exact posterior
    p(z | x_o) (a diagonal one leaves an ELBO gap of ~0.08 nats on digits at 20% missing).
    ``lr=None``: :func:`linear_lr`."""
    lr = linear_lr(len(ds.train), batch_size, lr)
    torch.manual_seed(seed)
    incomplete = bool(torch.isnan(ds.train).any())
    vae = LinearVAE(ds.data_dim, latent_dim, guide="fullrank" if incomplete else "diagonal")
    history = workflows.fit(
        vae,
        ds.train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
    )
    return vae.cpu(), history


def fit_ppca(ds: Dataset, latent_dim: int) -> tuple[PPCA, float, torch.Tensor]:
    """PPCA fitted on ``ds.train`` (float64): the model, its fit seconds, test log p(x).

    With missing entries PPCA is fitted by EM (the exact maximum of the observed data) and
    test log p(x) is each row's marginal density of its observed entries."""
    t = time.perf_counter()
    method = "em" if has_missing(ds) else "closed_form"
    ppca = PPCA(latent_dim, method=method).fit(ds.train.double())
    seconds = time.perf_counter() - t
    return ppca, seconds, ppca.log_prob(ds.test.double())


def has_missing(ds: Dataset) -> bool:
    """Whether either split of ``ds`` has a missing (NaN) entry."""
    return bool(torch.isnan(ds.train).any() or torch.isnan(ds.test).any())


def check_against_ppca(vae, ppca, X: torch.Tensor) -> dict:
    """:func:`~ppvae.evaluate.compare_to_ppca` on ``X``, with ``targets``
    (:data:`CHECK_TARGETS`) and ``passed``: whether every quantity is within its target."""
    result = evaluate.compare_to_ppca(vae, ppca, X.double())
    targets = workflows.CHECK_TARGETS
    result["targets"] = dict(targets)
    result["passed"] = all(result[key] <= tol for key, tol in targets.items())
    return result


def linear_check(ds, k: int, *, epochs, batch_size, stage=None, **training) -> dict:
    """Fit PPCA and a LinearVAE on ds.train and compare them (evaluate.compare_to_ppca).

    ``epochs`` and ``batch_size`` complete :func:`linear_schedule`; ``stage``: a
    :class:`Stages` that times the PPCA fit, the training and the comparison (None: not
    timed); ``training``: ``lr``, ``seed``, ``device``, ``progress`` of
    :func:`train_linear_vae`.
    """
    stage = stage or Stages("", progress=False)
    X = ds.train
    incomplete = bool(torch.isnan(X).any())  # EM: the exact maximum of the observed data
    with stage("ppca", "PPCA fit" + (" by EM" if incomplete else "")):
        ppca = PPCA(k, method="em" if incomplete else "closed_form").fit(X.double())
    epochs, batch_size = linear_schedule(len(X), epochs=epochs, batch_size=batch_size)
    with stage("linear_vae_training", f"LinearVAE training, {epochs} epochs"):
        vae, history = train_linear_vae(ds, k, epochs=epochs, batch_size=batch_size, **training)
    with stage("comparison", "LinearVAE against PPCA: gaps, covariance, angles"):
        result = check_against_ppca(vae, ppca, X)
        test_ll = float(evaluate.exact_log_likelihood(vae, ds.test.double()).mean())
    result.update(
        {
            "fit_seconds": history.seconds,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": history.config["lr"],
            "test_log_likelihood_linear_vae": test_ll,
            "test_log_likelihood_ppca": float(ppca.log_prob(ds.test.double()).mean()),
            "ppca_method": ppca.method,
            "missing_share_train": float(torch.isnan(X).double().mean()),
        }
    )
    return {"result": result, "vae": vae, "ppca": ppca, "history": history}


# ---------------------------------------------------------------------- numbers and files
AIS_DEFAULTS = {"ais_points": 100, "ais_steps": 200, "ais_chains": 8, "bdmc_points": 50}
"""How much AIS and BDMC ``compare`` does by default (about a minute on digits)."""

RUN_AIS_DEFAULTS = {"ais_points": 100, "ais_steps": 100, "ais_chains": 8, "bdmc_points": 50}
"""How much AIS and BDMC ``run`` does by default: :data:`AIS_DEFAULTS` at half the steps T.

AIS and BDMC batch all points and chains into each step, so on small data their time is the
per-step overhead, proportional to T and nearly independent of points x chains (digits, one
thread: 50 points x 4 chains 4.2 s, 100 x 8 5.9 s, both at T = 100). Halving T is what saves
time; it adds bias, which BDMC's gap measures. On the digits VAE of ``make run`` (300
epochs), one thread: T = 100 with 100 points and 8 chains gave AIS - IW (K = 1000) +2.03 +-
0.29 nats in 10 s and BDMC's gap +0.28 +- 0.10 in 17 s; T = 200 with a quarter of the points
and chains, +2.26 +- 0.42 in 13 s and +0.18 +- 0.12 in 16 s. Either way the report's verdict
stands (IW is about 2 nats loose, AIS is to be trusted to a few tenths), at about half the
time of the compare defaults.
"""


def certify_likelihood(
    vae,
    X: torch.Tensor,
    iw_log_px: torch.Tensor,
    *,
    ais_points: int,
    ais_steps: int,
    ais_chains: int,
    bdmc_points: int,
    seed: int,
    progress: bool | None = None,
) -> dict | None:
    """AIS on the first ``ais_points`` rows of X (whose IW estimates are ``iw_log_px``) and
    BDMC's gap on ``bdmc_points`` points simulated from the model, at the same settings.

    Returns the ``certified`` block of a report (None when ``ais_points`` is 0): the AIS mean
    and its standard error over points, its paired difference to IW on the same points, and
    BDMC's mean lower and upper bounds and their gap, all in nats per point, with timings.
    """
    for name, v in (("ais_points", ais_points), ("bdmc_points", bdmc_points)):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise InputError(f"{name} must be a non-negative integer, got {v!r}")
    if not ais_points:
        return None
    vae.cpu().eval()
    x = X[:ais_points]
    t = time.perf_counter()
    ais = evaluate.ais_log_likelihood(
        vae, x, num_steps=ais_steps, num_chains=ais_chains, seed=seed, progress=progress
    )
    ais_s = time.perf_counter() - t
    diff = ais.log_px - iw_log_px[: x.shape[0]]
    out = {
        "ais": {
            "n_points": int(x.shape[0]),
            "num_steps": ais_steps,
            "num_chains": ais_chains,
            "adapt": True,
            "mean": ais.mean,
            "sem": sem(ais.log_px),
            "mc_se_mean": float(ais.mc_se.mean()),
            "ess_mean": float(ais.ess.mean()),
            "acceptance_mean": float(ais.acceptance.mean()),
            "iw_same_points": float(iw_log_px[: x.shape[0]].mean()),
            "minus_iw": float(diff.mean()),
            "minus_iw_sem": sem(diff),
            "seconds": ais_s,
        }
    }
    if bdmc_points:
        t = time.perf_counter()
        r = evaluate.bdmc(
            vae,
            bdmc_points,
            num_steps=ais_steps,
            num_chains=ais_chains,
            seed=seed,
            progress=progress,
        )
        out["bdmc"] = {
            "n_points": bdmc_points,
            "lower": float(r.lower.log_px.mean()),
            "upper": float(r.upper.mean()),
            "gap": float(r.gap.mean()),
            "gap_sem": sem(r.gap),
            "gap_max": float(r.gap.max()),
            "seconds": time.perf_counter() - t,
        }
    return out


MISSING_AIS_REASON = (
    "AIS and BDMC were skipped: their HMC transitions anneal to p(z | x) of complete rows, "
    "and these data have missing entries"
)


def impute_test(vae, ppca: PPCA, ds: Dataset, *, num_samples: int, seed: int) -> tuple:
    """Impute the missing entries of ``ds.test`` three ways and score them against the truth.

    Mean imputation (each column's observed training mean), PPCA's exact conditional mean
    E[x_m | x_o] (:meth:`PPCA.impute`) and the VAE's, by self-normalized importance sampling
    with ``num_samples`` guide draws per row (:func:`~ppvae.evaluate.impute`). Where the holes
    were made by :func:`~ppvae.data.with_missing` (``ds.test_complete``), each is scored by its
    root-mean-square error over those entries (not the holes the data came with), on the
    data's scale.

    Returns
    -------
    (dict, dict)
        The ``imputation`` block of a report, and the imputed test splits by method
        (tensors of shape (N_test, D), for figures).
    """
    X = ds.test
    missing = torch.isnan(X)
    t = time.perf_counter()
    vae.cpu().eval()
    vae_imp = evaluate.impute(vae, X, num_samples=num_samples, seed=seed)
    vae_s = time.perf_counter() - t
    t = time.perf_counter()
    ppca_mean = ppca.impute(X.double()).float()
    ppca_s = time.perf_counter() - t
    col_means = torch.nanmean(ds.train.double(), dim=0).float()
    filled = {
        "mean": torch.where(missing, col_means.expand_as(X), X),
        "ppca": ppca_mean,
        "vae": vae_imp.mean.float(),
    }
    truth = ds.test_complete
    scaling = data_standardization(ds)
    if scaling is not None:  # imputations and their errors on the file's own scale
        filled = {name: scaling.inverse(v).float() for name, v in filled.items()}
        truth = None if truth is None else scaling.inverse(truth).float()
    rmse = None
    if truth is not None:
        scored = missing & ~torch.isnan(truth)  # holes the data came with have no truth
        rmse = {
            name: float(((v - truth)[scored].double() ** 2).mean().sqrt())
            for name, v in filled.items()
        }
    block = {
        "missing_share_test": float(missing.double().mean()),
        "n_missing_test": int(missing.sum()),
        "n_scored": None if truth is None else int(scored.sum()),
        "rmse": rmse,
        "scale": "the data's own" + (" (standardization undone)" if scaling else ""),
        "vae_num_samples": num_samples,
        "vae_khat_share_gt_0.7": vae_imp.khat_share,
        "vae_seconds": vae_s,
        "ppca_seconds": ppca_s,
    }
    return block, filled


def units(ds) -> str:
    """What the likelihoods of a run on ``ds`` are densities of, in words."""
    if ds.dequantized:
        of = "uniformly dequantized data on [0,1]^D"
    elif ds.info.get("standardized"):
        of = (
            "the standardized data: each column minus its training mean, divided by its "
            "training standard deviation (both recorded under standardization); a density of "
            "the original values is this one minus the sum of the log scales"
        )
    else:
        of = "the data on their own scale (no dequantization)"
    per = "nats per row" if ds.info.get("source") else "nats per sample"  # a table has rows
    if has_missing(ds):
        return f"{per} (density of each row's observed entries, of {of})"
    return f"{per} (density of {of})"


def standardization(ds) -> dict | None:
    """The centres and scales a ``--standardize`` table was transformed with, by column
    (``x_std = (x - center) / scale``; undo with ``x = x_std * scale + center``), and the
    shift ``-sum(log scale)`` that turns a log-density of the standardized rows into one of
    the original rows; None for data that were not standardized."""
    found = data_standardization(ds)
    return None if found is None else found.to_dict()


def data_standardization(ds) -> Standardization | None:
    """The :class:`~ppvae.tables.Standardization` of a ``--standardize`` table, else None."""
    if not ds.info.get("standardized"):
        return None
    return Standardization(
        tuple(ds.info.get("columns") or ()),
        tuple(float(v) for v in ds.info["center"]),
        tuple(float(v) for v in ds.info["scale"]),
    )


def check_export(ds, path) -> None:
    """Refuse an ``export_imputed`` path before any work: the data must be a table read by
    :func:`~ppvae.load_table` (its rows and columns are written back) with missing entries,
    and the folder of ``path`` must exist and be writable."""
    if "rows" not in ds.info:
        raise InputError(
            "export_imputed is for a table read from a file by load_table (it writes the "
            f"table back, in its row order and with its column names); {ds.name} is not one"
        )
    if not has_missing(ds):
        raise InputError("export_imputed: the data have no missing entries, nothing to impute")
    folder = Path(path).absolute().parent
    if not folder.is_dir():
        raise InputError(f"export_imputed {path}: the folder {folder} does not exist")
    check_writable(folder, f"export_imputed {path}: the folder")


def export_imputed(vae, ds, path, *, num_samples: int, seed: int) -> dict:
    """Write the table of ``ds`` (both splits, in the file's row order) with each missing entry
    replaced by the VAE's E[x_m | x_o] (:func:`~ppvae.evaluate.impute`), on the file's own
    scale (any standardization undone), as a CSV with the column names as header.

    Returns
    -------
    dict
        The ``export_imputed`` record of a report: the path, the rows, the entries imputed.
    """
    X = torch.cat([ds.train, ds.test])
    order = torch.tensor(
        ds.info["rows"]["train"][: len(ds.train)] + ds.info["rows"]["test"][: len(ds.test)]
    )
    vae.cpu().eval()
    filled = evaluate.impute(vae, X, num_samples=num_samples, seed=seed).mean.double()
    scaling = data_standardization(ds)
    if scaling is not None:
        filled = scaling.inverse(filled)
    filled = filled[order.argsort()]
    columns = ds.info.get("columns") or [f"column {j}" for j in range(ds.data_dim)]
    write_table(path, filled.numpy(), columns)
    return {
        "path": str(Path(path).absolute()),
        "rows": int(X.shape[0]),
        "imputed_entries": int(torch.isnan(X).sum()),
        "num_samples": num_samples,
        "scale": "the file's own" + (" (standardization undone)" if scaling else ""),
    }


def data_record(ds) -> dict:
    """What a run trained on, for its metrics: the source file (a ``--data`` table, else
    None), the split sizes, the data dimension, the missing shares, the units and any
    standardization."""
    return {
        "source": ds.info.get("source"),
        "n_train": int(ds.train.shape[0]),
        "n_test": int(ds.test.shape[0]),
        "data_dim": ds.data_dim,
        "missing_share_train": float(torch.isnan(ds.train).double().mean()),
        "missing_rate": ds.info.get("missing_rate"),
        "units": units(ds),
        "standardization": standardization(ds),
    }


def per_dim_bits(nats: float, ds) -> float | None:
    """Bits per dimension of complete dequantized or binary data (None otherwise: a density
    of observed entries, or of continuous data on their own scale, has no such reading)."""
    if has_missing(ds) or not (ds.dequantized or ds.binarize):
        return None
    return bits_per_dim(nats, ds.data_dim, ds.levels)


def imputation_figure(ds, imputed: dict, out: Path) -> dict:
    """The test rows with holes, their imputations and the truth: an image grid for images
    (missing pixels in red), else a scatter of imputed against true values."""
    image_shape = as_image_shape(ds.image_shape, ds.data_dim)
    truth = ds.test_complete
    scaling = data_standardization(ds)
    if scaling is not None and truth is not None:  # the imputations are on the file's scale
        truth = scaling.inverse(truth).float()
    if image_shape is not None:
        rows = [ds.test[:10], imputed["vae"][:10], imputed["ppca"][:10]]
        labels = ["with holes", "VAE E[x_m | x_o]", "PPCA E[x_m | x_o]"]
        if truth is not None:
            rows.append(truth[:10])
            labels.append("truth")
        path = plots.image_grid(
            rows,
            image_shape,
            out / "imputations.png",
            row_labels=labels,
            title="Test images with missing pixels (red) and their conditional-mean imputations",
        )
        return {"imputations": path.name}
    if truth is None:
        return {}  # the file's own holes: no truth to plot against
    scored = torch.isnan(ds.test) & ~torch.isnan(truth)
    path = plots.imputation_scatter(
        truth[scored],
        {"VAE": imputed["vae"][scored], "PPCA": imputed["ppca"][scored]},
        out / "imputations.png",
    )
    return {"imputations": path.name}


def impute_holes(
    vae, ppca: PPCA, ds: Dataset, out: Path | None, *, num_samples: int, seed: int
) -> tuple[dict | None, str | None]:
    """Where ``ds.test`` has holes, :func:`impute_test` and (with ``out``)
    :func:`imputation_figure`: the report's ``imputation`` block and the figure's file name;
    (None, None) for a complete test split."""
    if not bool(torch.isnan(ds.test).any()):
        return None, None
    block, imputed = impute_test(vae, ppca, ds, num_samples=num_samples, seed=seed)
    figure = None if out is None else imputation_figure(ds, imputed, out).get("imputations")
    return block, figure


def sem(values: torch.Tensor) -> float:
    """The standard error of the mean of per-sample values."""
    return float(values.std() / math.sqrt(len(values)))


def bits_per_dim(nats: float, data_dim: int, levels: int | None) -> float | None:
    """Bits per dimension on the integer pixel scale, for dequantized data in [0, 1]."""
    if levels is None:
        return None
    return -(nats - data_dim * math.log(levels)) / (data_dim * math.log(2.0))


def environment() -> dict:
    """Versions and threads, recorded with every result."""
    from .. import __version__

    return {
        "ppvae": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def vae_figures(vae: VAE, ds, out: Path, history, device, reference=None) -> tuple:
    """The training curve and prior samples of a VAE; also test rows, their codes, the shape.

    Returns
    -------
    (dict, Tensor, Tensor, tuple or None)
        The figure file names, 10 test rows on ``device``, E_q[z | x] of the test split and
        the image shape (None: the data are not images).
    """
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
        loc = torch.cat(
            [
                vae.encode(*(t if t is None else t.to(device) for t in split_missing(c)))[0]
                for c in ds.test.split(4096)
            ]
        )
    return figs, x, loc, image_shape
