"""The experiments behind the ``ppvae`` command, as Python functions.

Each function takes a data set (a :class:`~ppvae.Dataset` or a name for
:func:`~ppvae.load_dataset`) and Python parameters, trains and evaluates, writes its files
only into the ``out`` folder it is given (nothing at all when ``out`` is None), prints
nothing, and returns a :class:`Result`: the JSON-able numbers it wrote (log-likelihoods and
ELBOs in nats per sample) and the fitted models.

>>> from ppvae import workflows
>>> r = workflows.check_ppca("digits", latent_dim=4, epochs=50)      # doctest: +SKIP
>>> r.metrics["loglik_gap"], r.models["linear_vae"]                   # doctest: +SKIP

The ``ppvae`` command (:mod:`ppvae.cli`) only parses options, calls these and prints
(:mod:`ppvae.reports` formats the tables).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import evaluate, plots, reports
from .autoencoders import (
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    SparseAutoencoder,
    StackedAutoencoder,
)
from .checkpoints import save
from .data import Dataset, as_image_shape, load_dataset
from .errors import InputError
from .ppca import PPCA

# The training loop: the one place that names its module (ppvae.train).
from .train import (  # noqa: F401  (re-exported for ppvae.cli)
    ELBOS,
    History,
    TrainingInterrupted,
    distributed_world,
    finetune,
    fit,
    pretrain,
    resolve_device,
)
from .vae import VAE, LinearVAE

__all__ = [
    "CHECK_TARGETS",
    "LINEAR_FULL_BATCH_MAX",
    "RUN_FILES",
    "Result",
    "check_ppca",
    "compare",
    "existing_run",
    "fit_autoencoder",
    "fit_vae",
    "linear_schedule",
    "load",
    "run_experiment",
]

RUN_FILES = ("checkpoint.pt", "model.pt", "metrics.json", "check_ppca.json", "compare.json")
"""A folder holding any of these holds a run; it is not overwritten unless asked."""

LINEAR_FULL_BATCH_MAX = 10000
"""Above this many training rows a full-batch LinearVAE step costs about a second (60000 x
784 MNIST), so the LinearVAE trains on minibatches instead (see :func:`linear_schedule`)."""
LINEAR_BATCH_SIZE = 1000
LINEAR_STEPS = 3600
LINEAR_FULL_BATCH_EPOCHS = 2000

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


# ---------------------------------------------------------------------- shared steps
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


def _check_latent_dim(latent_dim: int, ds: Dataset) -> None:
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
    out.mkdir(parents=True, exist_ok=True)
    return out


def linear_schedule(
    n_rows: int, *, epochs: int | None = None, batch_size: int | None = None
) -> tuple[int, int]:
    """Epochs and batch size that train a LinearVAE to the PPCA optimum at a bounded cost.

    Full batch up to :data:`LINEAR_FULL_BATCH_MAX` rows (2000 epochs), else minibatches of
    1000 rows for about 3600 steps; on MNIST (60000 x 784, k = 8) that is 60 epochs, which
    took 297 s on 2 CPU cores and landed 0.04 nats/image from the PPCA optimum.

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
    if batch_size is None:
        batch_size = n_rows if n_rows <= LINEAR_FULL_BATCH_MAX else LINEAR_BATCH_SIZE
    batch_size = min(int(batch_size), n_rows)
    n_batches = math.ceil(n_rows / batch_size)
    if epochs is None:
        epochs = LINEAR_FULL_BATCH_EPOCHS if n_batches == 1 else math.ceil(LINEAR_STEPS / n_batches)
    return int(epochs), batch_size


def make_vae(
    data_dim: int,
    latent_dim: int,
    *,
    hidden=(256,),
    likelihood: str = "gaussian",
    prior: str = "standard",
    architecture: str = "mlp",
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
    )


def bits_per_dim(nats: float, data_dim: int, levels: int | None) -> float | None:
    """Bits per dimension on the integer pixel scale, for dequantized data in [0, 1]."""
    if levels is None:
        return None
    return -(nats - data_dim * math.log(levels)) / (data_dim * math.log(2.0))


def environment() -> dict:
    """Versions and threads, recorded with every result."""
    from . import __version__

    return {
        "ppvae": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


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


def _linear_check(ds, k: int, *, epochs, batch_size, lr, seed: int, device, progress) -> dict:
    """Fit PPCA and a LinearVAE on ds.train and compare them (evaluate.compare_to_ppca)."""
    X = ds.train
    ppca = PPCA(k).fit(X.double())
    epochs, batch_size = linear_schedule(len(X), epochs=epochs, batch_size=batch_size)
    torch.manual_seed(seed)
    vae = LinearVAE(ds.data_dim, k)
    history = fit(
        vae,
        X,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
    )
    vae.cpu()
    result = evaluate.compare_to_ppca(vae, ppca, X.double())
    test_ll = float(evaluate.exact_log_likelihood(vae, ds.test.double()).mean())
    result.update(
        {
            "fit_seconds": history.seconds,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": history.config["lr"],
            "targets": dict(CHECK_TARGETS),
            "passed": all(result[key] <= tol for key, tol in CHECK_TARGETS.items()),
            "test_log_likelihood_linear_vae": test_ll,
            "test_log_likelihood_ppca": float(ppca.log_prob(ds.test.double()).mean()),
        }
    )
    return {"result": result, "vae": vae, "ppca": ppca, "history": history}


# ---------------------------------------------------------------------- run
def run_experiment(
    dataset: Dataset | str = "digits",
    *,
    latent_dim: int = 8,
    hidden=(256,),
    likelihood: str = "gaussian",
    prior: str = "standard",
    architecture: str = "mlp",
    epochs: int = 300,
    batch_size: int = 128,
    lr: float | None = None,
    elbo: str | None = None,
    clip_norm: float | None = None,
    kl_weight: float = 1.0,
    kl_warmup: int = 0,
    iw_samples: int = 1000,
    check_epochs: int | None = None,
    check_batch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Result:
    """Fit PPCA and a VAE on the same training data and evaluate both on the test split.

    Also checks a LinearVAE trained by SVI against the PPCA maximum-likelihood fit (as
    :func:`check_ppca`), on the schedule of :func:`linear_schedule` unless ``check_epochs``
    / ``check_batch_size`` are given.

    Parameters
    ----------
    dataset : Dataset or str
        The data (a name is loaded with ``seed``).
    latent_dim, hidden, likelihood, prior, architecture
        The VAE (see :class:`~ppvae.VAE`).
    epochs, batch_size, lr, elbo, clip_norm, kl_weight, kl_warmup, seed, device, progress
        Its training (see :func:`~ppvae.fit`; ``kl_warmup`` is ``kl_warmup_epochs``).
    iw_samples : int
        Importance samples K of the VAE's test log-likelihood estimate.
    check_epochs, check_batch_size : int, optional
        The LinearVAE check's training (default: :func:`linear_schedule`).
    out : path, optional
        Folder for ``metrics.json``, ``report.md`` and the figures (None: write nothing).
    overwrite : bool
        Allow an ``out`` that already holds a run.

    Returns
    -------
    Result
        ``metrics`` as in ``metrics.json`` (nats per sample); ``models`` ``vae``, ``ppca``,
        ``linear_vae``.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    ds = load(dataset, seed=seed)
    k = latent_dim
    _check_latent_dim(k, ds)
    torch.manual_seed(seed)  # reproducible initialization
    vae = make_vae(
        ds.data_dim,
        k,
        hidden=hidden,
        likelihood=likelihood,
        prior=prior,
        architecture=architecture,
    )
    out = prepare_out(out, overwrite=overwrite)

    t = time.perf_counter()
    ppca = PPCA(k).fit(ds.train.double())
    ppca_fit_s = time.perf_counter() - t
    ppca_test = ppca.log_prob(ds.test.double())
    ppca_train = ppca.score(ds.train.double())
    history = fit(
        vae,
        ds.train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        test=ds.test,
        device=dev,
        elbo=elbo,
        clip_norm=clip_norm,
        kl_weight=kl_weight,
        kl_warmup_epochs=kl_warmup,
        progress=progress,
    )
    torch.manual_seed(seed)
    t = time.perf_counter()
    vae_elbo = evaluate.elbo(vae, ds.test, num_samples=10)
    vae_iw = evaluate.log_likelihood(vae, ds.test, num_samples=iw_samples)
    eval_s = time.perf_counter() - t
    vae_train_elbo = float(evaluate.elbo(vae, ds.train, num_samples=1).mean())

    D, L = ds.data_dim, ds.levels
    config = history.config
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
            "test_bits_per_dim": bits_per_dim(float(ppca_test.mean()), D, L),
            "noise_variance": ppca.noise_variance_,
            "fit_seconds": ppca_fit_s,
        },
        "vae": {
            "test_elbo": float(vae_elbo.mean()),
            "test_log_likelihood_iw": float(vae_iw.mean()),
            "test_log_likelihood_iw_sem": float(vae_iw.std() / math.sqrt(len(vae_iw))),
            "iw_samples": iw_samples,
            "train_elbo": vae_train_elbo,
            "test_bits_per_dim_iw": bits_per_dim(float(vae_iw.mean()), D, L),
            "hidden": list(hidden),
            "prior": prior,
            "likelihood": likelihood,
            "architecture": architecture,
            "epochs": config["epochs"],
            "batch_size": config["batch_size"],
            "lr": config["lr"],
            "fit_config": config,
            "fit_seconds": history.seconds,
            "eval_seconds": eval_s,
            "history": history.to_dict(),
        },
        "seed": seed,
        "device": str(dev),
        "environment": environment(),
    }
    check = _linear_check(
        ds,
        k,
        epochs=check_epochs,
        batch_size=check_batch_size,
        lr=None,
        seed=seed,
        device=dev,
        progress=progress,
    )
    metrics["ppca_check"] = check["result"]
    models = {"vae": vae, "ppca": ppca, "linear_vae": check["vae"]}
    if out is not None:
        metrics["figures"] = _run_figures(vae, ppca, check, ds, out, history, dev, seed, metrics)
    metrics["seconds_total"] = time.perf_counter() - t0
    vae.cpu()
    if out is not None:
        write_json(out / "metrics.json", metrics)
        (out / "report.md").write_text(reports.run_report(metrics))
    return Result(metrics, models, history, out)


def _run_figures(vae, ppca, check, ds, out: Path, history, device, seed: int, m: dict) -> dict:
    ref = {"PPCA test log-lik (exact)": m["ppca"]["test_log_likelihood"]}
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
                [ppca.sample(10, torch.Generator().manual_seed(seed)).clamp(0, 1)],
                image_shape,
                out / "samples_ppca.png",
                title="PPCA: x ~ p(x)",
            ).name
    figs["latent_scatter"] = plots.latent_scatter(
        {"VAE: E_q[z | x]": loc, "PPCA: E[z | x]": ppca.transform(ds.test.double())},
        ds.test_labels,
        out / "latent_scatter.png",
    ).name
    figs["ppca_check"] = plots.ppca_check(
        ds.train.double(), check["ppca"], check["vae"], check["result"], out / "ppca_check.png"
    ).name
    return figs


# ---------------------------------------------------------------------- check-ppca
def check_ppca(
    dataset: Dataset | str = "digits",
    *,
    latent_dim: int = 8,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Result:
    """Train a LinearVAE by SVI and compare it with the PPCA maximum-likelihood fit.

    Parameters
    ----------
    dataset : Dataset or str
        The data (a name is loaded with ``seed``).
    latent_dim : int
        Latent dimensions k of both models.
    epochs, batch_size : int, optional
        The LinearVAE's training (default: :func:`linear_schedule`, 2000 full-batch epochs
        up to 10,000 rows).
    lr, seed, device, progress
        See :func:`~ppvae.fit`.
    out : path, optional
        Folder for ``check_ppca.json`` and ``ppca_check.png`` (None: write nothing).
    overwrite : bool
        Allow an ``out`` that already holds a run.

    Returns
    -------
    Result
        ``metrics``: log-likelihood and ELBO gaps (nats per sample), noise-variance and
        covariance relative errors, principal angles, active units, ``passed`` (every
        quantity within :data:`CHECK_TARGETS`); ``models`` ``linear_vae`` and ``ppca``.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    ds = load(dataset, seed=seed)
    _check_latent_dim(latent_dim, ds)
    out = prepare_out(out, overwrite=overwrite)
    check = _linear_check(
        ds,
        latent_dim,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=dev,
        progress=progress,
    )
    r = check["result"]
    if out is not None:
        r["figure"] = plots.ppca_check(
            ds.train.double(), check["ppca"], check["vae"], r, out / "ppca_check.png"
        ).name
    r["seconds_total"] = time.perf_counter() - t0
    r.update(
        {"dataset": ds.name, "latent_dim": latent_dim, "seed": seed, "environment": environment()}
    )
    if out is not None:
        write_json(out / "check_ppca.json", r)
    models = {"linear_vae": check["vae"], "ppca": check["ppca"]}
    return Result(r, models, check["history"], out)


# ---------------------------------------------------------------------- compare
def _subset_rows(X: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if n >= X.shape[0]:
        return X
    idx = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return X[idx.sort().values]


def _vae_scores(vae, ds, *, eval_points: int, gap_points: int, iw_samples: int, seed: int):
    """ELBO, IW estimate with SE and k-hat share, gaps, on train and test subsets."""
    out = {}
    for split, X in (("train", ds.train), ("test", ds.test)):
        Xs = _subset_rows(X, eval_points, seed + (split == "test"))
        torch.manual_seed(seed)
        est = evaluate.estimate_log_likelihood(vae, Xs, num_samples=iw_samples)
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
        vae, _subset_rows(ds.test, gap_points, seed + 7), num_samples=iw_samples
    )["mean"]
    out["approximation_gap"] = gaps["approximation_gap"]
    out["amortization_gap"] = gaps["amortization_gap"]
    return out


def compare(
    dataset: Dataset | str = "digits",
    *,
    latent_dim: int = 8,
    hidden=(256,),
    likelihood: str = "gaussian",
    prior: str = "standard",
    architecture: str = "mlp",
    epochs: int = 300,
    batch_size: int = 128,
    lr: float | None = None,
    elbo: str | None = None,
    clip_norm: float | None = None,
    kl_weight: float = 1.0,
    kl_warmup: int = 0,
    linear_epochs: int | None = None,
    linear_batch_size: int | None = None,
    iw_samples: int = 1000,
    eval_points: int = 2000,
    gap_points: int = 200,
    nuts_points: int = 3,
    nuts_samples: int = 500,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Result:
    """PPCA vs LinearVAE vs VAE: train and test likelihoods with standard errors, PSIS, gaps.

    Parameters
    ----------
    dataset : Dataset or str
        The data (a name is loaded with ``seed``).
    latent_dim, hidden, likelihood, prior, architecture
        The nonlinear VAE (see :class:`~ppvae.VAE`); PPCA and the LinearVAE share
        ``latent_dim``.
    epochs, batch_size, lr, elbo, clip_norm, kl_weight, kl_warmup, seed, device, progress
        The VAE's training (see :func:`~ppvae.fit`).
    linear_epochs, linear_batch_size : int, optional
        The LinearVAE's training (default: :func:`linear_schedule`).
    iw_samples : int
        Importance samples K per point.
    eval_points, gap_points : int
        Seeded subsets of each split for the IW estimates, and of the test split for the
        inference gaps.
    nuts_points, nuts_samples : int
        Test points whose VAE posterior NUTS also samples; warm-up steps and draws per chain.
    out : path, optional
        Folder for ``compare.json``, ``compare.md``, the scatter and ``log_likelihood.nc``.
    overwrite : bool
        Allow an ``out`` that already holds a run.

    Returns
    -------
    Result
        ``metrics`` as in ``compare.json`` (nats per sample); ``models`` ``ppca``,
        ``linear_vae``, ``vae``.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    ds = load(dataset, seed=seed)
    k = latent_dim
    _check_latent_dim(k, ds)
    torch.manual_seed(seed)
    vae = make_vae(
        ds.data_dim, k, hidden=hidden, likelihood=likelihood, prior=prior, architecture=architecture
    )
    out = prepare_out(out, overwrite=overwrite)
    D, L = ds.data_dim, ds.levels
    rows: dict[str, dict] = {}
    scores = {
        "eval_points": eval_points,
        "gap_points": gap_points,
        "iw_samples": iw_samples,
        "seed": seed,
    }

    t = time.perf_counter()
    ppca = PPCA(k).fit(ds.train.double())
    ppca_s = time.perf_counter() - t
    ppca_test = ppca.log_prob(ds.test.double()).float()
    rows["PPCA"] = {
        "train": {"exact": ppca.score(ds.train.double())},
        "test": {
            "exact": float(ppca_test.mean()),
            "exact_sem": float(ppca_test.std() / math.sqrt(len(ppca_test))),
            "bits_per_dim": bits_per_dim(float(ppca_test.mean()), D, L),
        },
        "fit_seconds": ppca_s,
    }

    torch.manual_seed(seed)
    lin = LinearVAE(D, k)
    lin_epochs, lin_bs = linear_schedule(
        len(ds.train), epochs=linear_epochs, batch_size=linear_batch_size
    )
    h = fit(
        lin,
        ds.train,
        epochs=lin_epochs,
        batch_size=lin_bs,
        seed=seed,
        device=dev,
        progress=progress,
    )
    lin.cpu()
    lin_scores = _vae_scores(lin, ds, **scores)
    lin_exact_test = evaluate.exact_log_likelihood(lin, ds.test.double()).float()
    lin_scores["test"]["exact"] = float(lin_exact_test.mean())
    lin_scores["train"]["exact"] = float(evaluate.exact_log_likelihood(lin, ds.train).mean())
    lin_scores["fit_seconds"] = h.seconds
    lin_scores["epochs"], lin_scores["batch_size"] = lin_epochs, lin_bs
    rows["LinearVAE"] = lin_scores

    h = fit(
        vae,
        ds.train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        test=ds.test,
        device=dev,
        elbo=elbo,
        clip_norm=clip_norm,
        kl_weight=kl_weight,
        kl_warmup_epochs=kl_warmup,
        progress=progress,
    )
    vae.cpu()
    vae_scores = _vae_scores(vae, ds, **scores)
    vae_scores["fit_seconds"] = h.seconds
    vae_scores["fit_config"] = h.config
    rows[f"VAE ({prior} prior, {likelihood})"] = vae_scores

    nuts = []
    if nuts_points:
        nuts = evaluate.nuts_posterior(
            vae,
            ds.test[:nuts_points],
            num_samples=nuts_samples,
            warmup_steps=nuts_samples,
            seed=seed,
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
    result = {
        "command": "compare",
        "dataset": ds.name,
        "latent_dim": k,
        "data_dim": D,
        "n_train": int(ds.train.shape[0]),
        "n_test": int(ds.test.shape[0]),
        "iw_samples": iw_samples,
        "eval_points": eval_points,
        "models": rows,
    }
    if out is not None:
        idx = _subset_rows(torch.arange(len(ds.test))[:, None].float(), eval_points, seed + 1)
        idx = idx[:, 0].long()
        result["figure"] = plots.loglik_scatter(
            ppca_test[idx],
            torch.as_tensor(per_sample["vae"]),
            out / "loglik_scatter.png",
            xlabel="PPCA test log p(x) (exact, nats)",
            ylabel=f"VAE test log p(x) (IW, K={iw_samples}, nats)",
        ).name
        result["netcdf"] = _write_inference_data(per_sample, idx, out / "log_likelihood.nc")
        if nuts and k >= 2:
            plots.nuts_vs_guide(nuts, out / "nuts_vs_guide.png")
    result["seconds_total"] = time.perf_counter() - t0
    result["environment"] = environment()
    if out is not None:
        write_json(out / "compare.json", result)
        (out / "compare.md").write_text(reports.compare_report(result))
    return Result(result, {"ppca": ppca, "linear_vae": lin, "vae": vae}, h, out)


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


# ---------------------------------------------------------------------- fit
def fit_vae(
    dataset: Dataset | str = "digits",
    *,
    latent_dim: int = 8,
    hidden=(256,),
    likelihood: str = "gaussian",
    prior: str = "standard",
    architecture: str = "mlp",
    epochs: int = 300,
    batch_size: int = 128,
    lr: float | None = None,
    elbo: str | None = None,
    clip_norm: float | None = None,
    kl_weight: float = 1.0,
    kl_warmup: int = 0,
    iw_samples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Result:
    """Train one VAE with checkpoints in ``out``, evaluate it, save ``out/model.pt``.

    Parameters
    ----------
    dataset : Dataset or str
        The data (a name is loaded with ``seed``, dynamically binarized for
        ``likelihood="bernoulli"``).
    latent_dim, hidden, likelihood, prior, architecture
        The VAE (see :class:`~ppvae.VAE`).
    epochs, batch_size, lr, elbo, clip_norm, kl_weight, kl_warmup, seed, device, progress
        Its training (see :func:`~ppvae.fit`).
    iw_samples : int
        Importance samples K of the test log-likelihood estimate.
    out : path, optional
        Folder for ``checkpoint.pt`` (every epoch), ``model.pt``, ``metrics.json`` and the
        figures (None: write nothing).
    resume, overwrite : bool
        Continue the run checkpointed in ``out``; or replace the run held there.
    metadata : dict, optional
        JSON-able extras stored in the checkpoint (the CLI stores its settings).

    Returns
    -------
    Result
        ``metrics`` as in ``metrics.json`` (nats per sample; empty on ranks other than 0 of
        a distributed run); ``models`` ``vae``.
    """
    if resume and out is None:
        raise InputError("resume=True needs out, the folder of the run")
    dev = resolve_device(device)
    bern = likelihood == "bernoulli"
    ds = load(dataset, seed=seed, binarize="dynamic" if bern else None)
    _check_latent_dim(latent_dim, ds)
    torch.manual_seed(seed)  # reproducible initialization
    vae = make_vae(
        ds.data_dim,
        latent_dim,
        hidden=hidden,
        likelihood=likelihood,
        prior=prior,
        architecture=architecture,
    )
    out = prepare_out(out, overwrite=overwrite, resume=resume)
    history = fit(
        vae,
        ds.train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        test=ds.test,
        device=dev,
        binarize="dynamic" if bern else None,
        elbo=elbo,
        clip_norm=clip_norm,
        kl_weight=kl_weight,
        kl_warmup_epochs=kl_warmup,
        checkpoint_dir=out,
        resume=resume,
        overwrite=overwrite,
        metadata=metadata,
        progress=progress,
    )
    if distributed_world()[1] != 0:  # rank 0 evaluates and writes the outputs
        return Result({}, {"vae": vae}, history, out)
    torch.manual_seed(seed)
    test_elbo = float(evaluate.elbo(vae, ds.test, num_samples=10).mean())
    test_iw = evaluate.log_likelihood(vae, ds.test, num_samples=iw_samples)
    meta = {
        "dataset": ds.name,
        "seed": seed,
        "binarize": ds.binarize,
        "dequantized": ds.dequantized,
    }
    figs = {}
    if out is not None:
        figs, x, loc, image_shape = _vae_figures(vae, ds, out, history, dev)
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
    vae.cpu()
    if out is not None:
        save(vae, out / "model.pt", history=history, metadata=meta)
    metrics = {
        "command": "fit",
        "model": "vae",
        **meta,
        "likelihood": likelihood,
        "prior": prior,
        "architecture": architecture,
        "latent_dim": latent_dim,
        "hidden": list(hidden),
        "epochs": history.config["epochs"],
        "batch_size": history.config["batch_size"],
        "lr": history.config["lr"],
        "fit_config": history.config,
        "test_elbo": test_elbo,
        "test_log_likelihood_iw": float(test_iw.mean()),
        "iw_samples": iw_samples,
        "fit_seconds": history.seconds,
        "history": history.to_dict(),
        "figures": figs,
        "environment": environment(),
    }
    if out is not None:
        write_json(out / "metrics.json", metrics)
    return Result(metrics, {"vae": vae}, history, out)


AUTOENCODER_OPTIONS = {
    "ae": (),
    "dae": ("noise", "noise_level"),
    "sae": ("sparsity", "rho", "beta", "l1"),
    "cae": ("contraction",),
    "stacked": ("noise_level", "finetune_epochs", "labels"),
}
"""The model-specific parameters of :func:`fit_autoencoder`, by ``model``."""


def make_autoencoder(
    model: str,
    data_dim: int,
    latent_dim: int,
    *,
    hidden=(256,),
    likelihood: str = "gaussian",
    noise: str = "mask",
    noise_level: float | None = None,
    sparsity: str = "kl",
    rho: float = 0.05,
    beta: float = 3.0,
    l1: float = 1e-3,
    contraction: float = 0.05,
):
    """One of the autoencoders (``model`` in ``ae dae sae cae stacked``)."""
    hidden = tuple(hidden)
    if model not in AUTOENCODER_OPTIONS:
        raise InputError(f"model must be one of {', '.join(AUTOENCODER_OPTIONS)}, got {model!r}")
    if likelihood not in ("gaussian", "bernoulli"):
        raise InputError(
            f"model {model!r} reconstructs with likelihood 'gaussian' (squared error) "
            f"or 'bernoulli' (cross-entropy), not {likelihood!r}"
        )
    if model == "stacked":
        if likelihood != "gaussian":
            raise InputError(
                "model 'stacked' pretrains with the squared error (likelihood 'gaussian')"
            )
        noise = 0.0 if noise_level is None else noise_level
        return StackedAutoencoder(data_dim, hidden=(*hidden, latent_dim), noise_level=noise)
    common = {"hidden": hidden, "likelihood": likelihood}
    if model == "ae":
        return Autoencoder(data_dim, latent_dim, **common)
    if model == "dae":
        return DenoisingAutoencoder(
            data_dim,
            latent_dim,
            noise=noise,
            noise_level=0.3 if noise_level is None else noise_level,
            **common,
        )
    if model == "sae":
        return SparseAutoencoder(
            data_dim, latent_dim, penalty=sparsity, rho=rho, beta=beta, l1=l1, **common
        )
    return ContractiveAutoencoder(data_dim, latent_dim, lam=contraction, **common)


def fit_autoencoder(
    dataset: Dataset | str = "digits",
    *,
    model: str = "ae",
    latent_dim: int = 8,
    hidden=(256,),
    likelihood: str = "gaussian",
    noise: str = "mask",
    noise_level: float | None = None,
    sparsity: str = "kl",
    rho: float = 0.05,
    beta: float = 3.0,
    l1: float = 1e-3,
    contraction: float = 0.05,
    finetune_epochs: int | None = None,
    labels: int | None = None,
    epochs: int = 300,
    batch_size: int = 128,
    lr: float | None = None,
    clip_norm: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Result:
    """Train one autoencoder, save ``out/model.pt``, metrics and figures.

    ``model`` ``ae``, ``dae``, ``sae`` and ``cae`` train by one :func:`~ppvae.fit` with
    checkpoints in ``out`` (resumable); ``stacked`` runs greedy layer-wise pretraining and
    supervised fine-tuning (several fits, not checkpointed: it cannot be resumed, and it
    does not clip gradients).

    Parameters
    ----------
    dataset : Dataset or str
        The data (a name is loaded with ``seed``, dynamically binarized for
        ``likelihood="bernoulli"``).
    model : {"ae", "dae", "sae", "cae", "stacked"}
        Vanilla, denoising, sparse, contractive or stacked autoencoder.
    latent_dim, hidden, likelihood
        The code size, hidden widths and the reconstruction loss (``"gaussian"``: squared
        error; ``"bernoulli"``: cross-entropy).
    noise, noise_level, sparsity, rho, beta, l1, contraction
        The model-specific settings (see :mod:`ppvae.autoencoders`).
    finetune_epochs, labels : int, optional
        ``stacked``: fine-tuning epochs (default ``epochs``) and labelled training images
        (default all).
    epochs, batch_size, lr, clip_norm, seed, device, progress
        Training (see :func:`~ppvae.fit`).
    out : path, optional
        Folder for ``checkpoint.pt``, ``model.pt``, ``metrics.json`` and the figures.
    resume, overwrite, metadata
        As in :func:`fit_vae`.

    Returns
    -------
    Result
        ``metrics`` as in ``metrics.json``: test reconstruction error (squared, per image),
        per-epoch objective (and for ``stacked`` the test accuracy); ``models`` ``model``.
    """
    stacked = model == "stacked"
    if stacked and resume:
        raise InputError("model 'stacked' writes no checkpoint (several fits); it cannot resume")
    if stacked and clip_norm is not None:
        raise InputError("model 'stacked' does not clip gradients; clip_norm must be None")
    if resume and out is None:
        raise InputError("resume=True needs out, the folder of the run")
    dev = resolve_device(device)
    bern = likelihood == "bernoulli"
    ds = load(dataset, seed=seed, binarize="dynamic" if bern else None)
    _check_latent_dim(latent_dim, ds)
    torch.manual_seed(seed)
    ae = make_autoencoder(
        model,
        ds.data_dim,
        latent_dim,
        hidden=hidden,
        likelihood=likelihood,
        noise=noise,
        noise_level=noise_level,
        sparsity=sparsity,
        rho=rho,
        beta=beta,
        l1=l1,
        contraction=contraction,
    )
    out = prepare_out(out, overwrite=overwrite, resume=resume)
    metrics: dict = {"command": "fit", "model": model, "dataset": ds.name, "seed": seed}
    train = {"batch_size": batch_size, "lr": lr, "seed": seed, "device": dev}
    if stacked:
        n_lab = len(ds.train) if labels is None else min(labels, len(ds.train))
        rows = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(seed))
        rows = rows[:n_lab]
        histories = pretrain(ae, ds.train, epochs=epochs, progress=progress, **train)
        history = finetune(
            ae,
            ds.train[rows],
            ds.train_labels[rows],
            epochs=epochs if finetune_epochs is None else finetune_epochs,
            progress=progress,
            **train,
        )
        ae.cpu()
        acc = float((ae.predict(ds.test) == ds.test_labels).float().mean())
        metrics.update(
            {
                "labels_used": n_lab,
                "test_accuracy": acc,
                "pretrain_loss_per_layer": [-h.train_elbo[-1] for h in histories if h.train_elbo],
                "fit_seconds": sum(h.seconds for h in histories) + history.seconds,
                "pretrain_config": [h.config for h in histories],
            }
        )
    else:
        history = fit(
            ae,
            ds.train,
            epochs=epochs,
            binarize="dynamic" if bern else None,
            clip_norm=clip_norm,
            checkpoint_dir=out,
            resume=resume,
            overwrite=overwrite,
            metadata=metadata,
            progress=progress,
            **train,
        )
        if distributed_world()[1] != 0:
            return Result({}, {"model": ae}, history, out)
        ae.cpu()
        metrics["fit_seconds"] = history.seconds
    metrics.update(
        {
            "epochs": history.config["epochs"],
            "batch_size": history.config["batch_size"],
            "lr": history.config["lr"],
            "fit_config": history.config,
        }
    )
    ae.eval()
    test = ds.test
    metrics["test_reconstruction_error"] = ae.reconstruction_error(test)
    metrics["train_objective_per_sample"] = [-v for v in history.train_elbo]
    if out is not None:
        metrics["figures"] = _autoencoder_figures(ae, model, ds, out, history, seed)
        save(ae, out / "model.pt", history=history, metadata={"dataset": ds.name, "seed": seed})
    metrics["environment"] = environment()
    if out is not None:
        write_json(out / "metrics.json", metrics)
    return Result(metrics, {"model": ae}, history, out)


def _autoencoder_figures(ae, model: str, ds, out: Path, history, seed: int) -> dict:
    figs = {}
    figs["training_curve"] = plots.training_curve(
        history,
        out / "training_curve.png",
        title="fine-tuning: log p(y | x)" if model == "stacked" else "minus the objective",
    ).name
    image_shape = as_image_shape(ds.image_shape, ds.data_dim)
    test = ds.test
    with torch.no_grad():
        x = test[:10]
        if image_shape is not None:
            rows_ = [x]
            labels = ["test data"]
            if model == "dae":
                torch.manual_seed(seed)
                noisy = ae.corrupt(x)
                rows_ += [noisy, ae.reconstruct(noisy)]
                labels += ["corrupted", "DAE(corrupted)"]
            rows_.append(ae.reconstruct(x))
            labels.append(f"{model}(data)")
            figs["reconstructions"] = plots.image_grid(
                rows_,
                image_shape,
                out / "reconstructions.png",
                row_labels=labels,
                title="Test reconstructions",
            ).name
            figs["features"] = plots.feature_tiles(
                ae.first_layer_features(),
                image_shape,
                out / "features.png",
                title=f"{model}: first-layer filters",
            ).name
        codes = torch.cat([ae.encode(c) for c in test.split(4096)])
    figs["latent_scatter"] = plots.latent_scatter(
        {f"{model}: code f(x)": codes},
        ds.test_labels,
        out / "latent_scatter.png",
        code_name="codes",
    ).name
    return figs
