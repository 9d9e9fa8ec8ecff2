"""``ppvae fit``: train one VAE or one autoencoder, with checkpoints, and save it."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import evaluate, plots, workflows
from ..autoencoders import (
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    SparseAutoencoder,
    StackedAutoencoder,
)
from ..checkpoints import save
from ..data import Dataset, as_image_shape
from ..errors import InputError
from ..likelihoods import Gaussian
from .common import (
    Result,
    Stages,
    check_export,
    data_record,
    environment,
    finish,
    make_vae,
    standardization,
    start,
    train_vae,
    vae_figures,
)
from .common import export_imputed as write_imputed


# ---------------------------------------------------------------------- the VAE
def fit_vae(
    dataset: Dataset | str = "digits",
    *,
    latent_dim: int = 8,
    hidden=(256,),
    likelihood: str = "gaussian",
    prior: str = "standard",
    architecture: str = "mlp",
    guide: str = "diagonal",
    epochs: int = 300,
    batch_size: int = 128,
    lr: float | None = None,
    elbo: str | None = None,
    clip_norm: float | None = None,
    kl_weight: float = 1.0,
    kl_warmup: int = 0,
    num_particles: int = 1,
    iw_samples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    metadata: dict | None = None,
    export_imputed: str | Path | None = None,
) -> Result:
    """Train one VAE with checkpoints in ``out``, evaluate it, save ``out/model.pt``.

    Parameters
    ----------
    dataset : Dataset or str
        The data (a name is loaded with ``seed``, dynamically binarized for
        ``likelihood="bernoulli"``).
    latent_dim, hidden, likelihood, prior, architecture, guide
        The VAE (see :class:`~ppvae.VAE`).
    epochs, batch_size, lr, elbo, num_particles, clip_norm, kl_weight, kl_warmup, seed, device,
    progress
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
    export_imputed : path, optional
        Write the table (a ``load_table`` dataset with missing entries) to this CSV with its
        holes filled by the VAE's E[x_m | x_o], on the file's own scale (see
        :func:`~ppvae.workflows.common.export_imputed`).

    A standardized table's centres and scales are saved in ``model.pt`` (and the checkpoint):
    :func:`ppvae.load` gives the model with them as ``model.standardization``.

    Returns
    -------
    Result
        ``metrics`` as in ``metrics.json`` (nats per sample; empty on ranks other than 0 of
        a distributed run), with ``stage_seconds``; ``models`` ``vae``.
    """
    if resume and out is None:
        raise InputError("resume=True needs out, the folder of the run")
    binarize = "dynamic" if likelihood == "bernoulli" else None
    model = {
        "likelihood": likelihood,
        "prior": prior,
        "architecture": architecture,
        "guide": guide,
        "latent_dim": latent_dim,
        "hidden": hidden,
    }
    s = start(
        dataset,
        latent_dim=latent_dim,
        seed=seed,
        device=device,
        out=out,
        overwrite=overwrite,
        resume=resume,
        binarize=binarize,
        build=lambda d: make_vae(d, **model),
    )
    ds, dev, vae, out = s.data, s.device, s.model, s.out
    if export_imputed is not None:
        check_export(ds, export_imputed)
    metadata = _with_standardization(metadata, ds, out)
    stage = Stages("fit", progress)
    with stage("training", f"VAE training, {epochs} epochs"):
        history = train_vae(
            vae,
            ds,
            dev,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            elbo=elbo,
            clip_norm=clip_norm,
            kl_weight=kl_weight,
            kl_warmup=kl_warmup,
            num_particles=num_particles,
            seed=seed,
            progress=progress,
            binarize=binarize,
            checkpoint_dir=out,
            resume=resume,
            overwrite=overwrite,
            metadata=metadata,
        )
    if workflows.distributed_world()[1] != 0:  # rank 0 evaluates and writes the outputs
        return Result({}, {"vae": vae}, history, out)
    settings = {"iw_samples": iw_samples, "seed": seed, "progress": progress}
    metrics = _evaluate_and_save_vae(vae, ds, history, model, out, dev, stage, **settings)
    if export_imputed is not None:
        with stage("export", f"imputing the table's holes into {export_imputed}"):
            metrics["export_imputed"] = write_imputed(
                vae, ds, export_imputed, num_samples=iw_samples, seed=seed
            )
    metrics["stage_seconds"] = stage.seconds
    finish(out, "metrics.json", metrics)
    return Result(metrics, {"vae": vae}, history, out)


def _with_standardization(metadata: dict | None, ds, out) -> dict | None:
    """The checkpoint's metadata with the data's standardization (none without a checkpoint)."""
    if out is None:
        return metadata
    return {**(metadata or {}), "standardization": standardization(ds)}


def _evaluate_and_save_vae(
    vae, ds, history, model: dict, out, device, stage, *, iw_samples, seed, progress
) -> dict:
    """Test ELBO and IW estimate, the figures and ``out/model.pt``: metrics.json's content."""
    with stage("evaluation", f"VAE: test ELBO and IW log-likelihood, K = {iw_samples}"):
        torch.manual_seed(seed)
        test_elbo = float(evaluate.elbo(vae, ds.test, num_samples=10).mean())
        test_iw = evaluate.log_likelihood(vae, ds.test, num_samples=iw_samples, progress=progress)
    meta = {
        "dataset": ds.name,
        "seed": seed,
        "binarize": ds.binarize,
        "dequantized": ds.dequantized,
        "standardization": standardization(ds),
    }
    if out is not None:
        with stage("figures", "figures"):
            figs = _fit_vae_figures(vae, ds, out, history, device)
    else:
        figs = {}
    vae.cpu()
    if out is not None:
        save(vae, out / "model.pt", history=history, metadata=meta)
    config = history.config
    return {
        "command": "fit",
        "model": "vae",
        **meta,
        **data_record(ds),
        **model,
        "hidden": list(model["hidden"]),  # in the place of model's, as a JSON list
        "epochs": config["epochs"],
        "batch_size": config["batch_size"],
        "lr": config["lr"],
        "fit_config": config,
        "test_elbo": test_elbo,
        "test_log_likelihood_iw": float(test_iw.mean()),
        "iw_samples": iw_samples,
        "fit_seconds": history.seconds,
        "history": history.to_dict(),
        "figures": figs,
        "environment": environment(),
    }


def _fit_vae_figures(vae, ds, out: Path, history, device) -> dict:
    figs, x, loc, image_shape = vae_figures(vae, ds, out, history, device)
    if image_shape is not None and bool(torch.isnan(x).any()):
        vae.cpu()
        filled = evaluate.impute(vae, x.cpu(), num_samples=200, seed=0).mean
        vae.to(device)
        figs["imputations"] = plots.image_grid(
            [x.cpu(), filled],
            image_shape,
            out / "imputations.png",
            row_labels=["with holes", "VAE E[x_m | x_o]"],
            title="Test images with missing pixels (red) and their imputations",
        ).name
    elif image_shape is not None:
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
    return figs


# ---------------------------------------------------------------------- the autoencoders
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
    noise: str | None = None,
    noise_level: float | None = None,
    sparsity: str | None = None,
    rho: float | None = None,
    beta: float | None = None,
    l1: float | None = None,
    contraction: float | None = None,
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
    noise, noise_level, sparsity, rho, beta, l1, contraction : optional
        The model-specific settings (see :mod:`ppvae.autoencoders`; ``AUTOENCODER_OPTIONS``
        says which model uses which). None takes the model's default (``noise="mask"``,
        ``sparsity="kl"``, ``rho=0.05``, ``beta=3.0``, ``l1=1e-3``, ``contraction=0.05``;
        ``noise_level`` 0.3 for ``dae``, 0 for ``stacked``). A setting the model does not use
        (``rho`` for ``ae``; ``l1`` with ``sparsity="kl"``, ``rho`` or ``beta`` with ``"l1"``)
        is refused with an ``InputError`` naming it, not ignored.
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
    settings = _model_settings(
        model,
        noise=noise,
        noise_level=noise_level,
        sparsity=sparsity,
        rho=rho,
        beta=beta,
        l1=l1,
        contraction=contraction,
        finetune_epochs=finetune_epochs,
        labels=labels,
    )
    _refuse_settings(model, resume=resume, clip_norm=clip_norm, out=out)
    binarize = "dynamic" if likelihood == "bernoulli" else None
    s = start(
        dataset,
        latent_dim=latent_dim,
        seed=seed,
        device=device,
        out=out,
        overwrite=overwrite,
        resume=resume,
        binarize=binarize,
        build=lambda d: make_autoencoder(
            model,
            d,
            latent_dim,
            hidden=hidden,
            likelihood=likelihood,
            **{k: v for k, v in settings.items() if k not in ("finetune_epochs", "labels")},
        ),
    )
    ds, ae, out = s.data, s.model, s.out
    metrics: dict = {
        "command": "fit",
        "model": model,
        "dataset": ds.name,
        "seed": seed,
        **data_record(ds),
    }
    train = {"batch_size": batch_size, "lr": lr, "seed": seed, "device": s.device}
    stage = Stages("fit", progress)
    if model == "stacked":
        finetune_epochs = epochs if finetune_epochs is None else finetune_epochs
        with stage("training", "layer-wise pretraining and fine-tuning"):
            history = _fit_stacked(
                ae,
                ds,
                metrics,
                epochs=epochs,
                finetune_epochs=finetune_epochs,
                labels=labels,
                progress=progress,
                **train,
            )
    else:
        with stage("training", f"{model} training, {epochs} epochs"):
            history = workflows.fit(
                ae,
                ds.train,
                epochs=epochs,
                binarize=binarize,
                clip_norm=clip_norm,
                checkpoint_dir=out,
                resume=resume,
                overwrite=overwrite,
                metadata=_with_standardization(metadata, ds, out),
                progress=progress,
                **train,
            )
        if workflows.distributed_world()[1] != 0:
            return Result({}, {"model": ae}, history, out)
        ae.cpu()
        metrics["fit_seconds"] = history.seconds
    with stage("evaluation", "test reconstruction error"):
        _evaluate_autoencoder(ae, ds, history, metrics)
    if out is not None:
        with stage("figures", "figures"):
            metrics["figures"] = _autoencoder_figures(ae, model, ds, out, history, seed)
        meta = {"dataset": ds.name, "seed": seed, "standardization": standardization(ds)}
        save(ae, out / "model.pt", history=history, metadata=meta)
    metrics["stage_seconds"] = stage.seconds
    metrics["environment"] = environment()
    finish(out, "metrics.json", metrics)
    return Result(metrics, {"model": ae}, history, out)


AUTOENCODER_DEFAULTS = {
    "noise": "mask",
    "sparsity": "kl",
    "rho": 0.05,
    "beta": 3.0,
    "l1": 1e-3,
    "contraction": 0.05,
}
"""The defaults of :func:`fit_autoencoder`'s model-specific settings left as None."""


def model_options(model: str, sparsity: str = "kl") -> set[str]:
    """The model-specific settings ``model`` uses (for ``sae``, those of its ``sparsity``)."""
    own = set(AUTOENCODER_OPTIONS[model])
    if model == "sae":
        own -= {"rho", "beta"} if sparsity == "l1" else {"l1"}
    return own


def _model_settings(model: str, **given) -> dict:
    """The model-specific settings of ``model``: those given, then the defaults it uses.

    Raises InputError naming each setting given (not None) that ``model`` does not use.
    """
    if model not in AUTOENCODER_OPTIONS:
        raise InputError(f"model must be one of {', '.join(AUTOENCODER_OPTIONS)}, got {model!r}")
    penalty = given.get("sparsity") or AUTOENCODER_DEFAULTS["sparsity"]
    own = model_options(model, penalty)
    unused = sorted(name for name, value in given.items() if value is not None and name not in own)
    if unused:
        which = f"sparsity={penalty!r}" if model == "sae" else f"model {model!r}"
        raise InputError(
            f"{which} does not use {', '.join(unused)} (its settings: "
            f"{', '.join(sorted(own)) or 'none'}); leave them None"
        )
    defaults = {k: v for k, v in AUTOENCODER_DEFAULTS.items() if k in own}
    return {**defaults, **{k: v for k, v in given.items() if k in own and v is not None}}


def _refuse_settings(model: str, *, resume: bool, clip_norm, out) -> None:
    """Settings fit_autoencoder cannot honour: raise InputError."""
    stacked = model == "stacked"
    if stacked and resume:
        raise InputError("model 'stacked' writes no checkpoint (several fits); it cannot resume")
    if stacked and clip_norm is not None:
        raise InputError("model 'stacked' does not clip gradients; clip_norm must be None")
    if resume and out is None:
        raise InputError("resume=True needs out, the folder of the run")


def _fit_stacked(ae, ds, metrics: dict, *, epochs, finetune_epochs, labels, progress, **train):
    """Greedy layer-wise pretraining, then fine-tuning on ``labels`` labelled training rows.

    Adds the test accuracy and the pretraining losses to ``metrics``; returns the
    fine-tuning history.
    """
    seed = train["seed"]
    n_lab = len(ds.train) if labels is None else min(labels, len(ds.train))
    rows = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(seed))
    rows = rows[:n_lab]
    histories = workflows.pretrain(ae, ds.train, epochs=epochs, progress=progress, **train)
    # the decoders are pretrained layer by layer and left alone by fine-tuning, so the stack
    # reconstructs meaningfully only now, before fine-tuning moves the encoders under them
    ae.eval()
    device = next(ae.parameters()).device
    metrics["test_reconstruction_error_pretrained"] = ae.reconstruction_error(ds.test.to(device))
    history = workflows.finetune(
        ae,
        ds.train[rows],
        ds.train_labels[rows],
        epochs=finetune_epochs,
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
    return history


def _evaluate_autoencoder(ae, ds, history, metrics: dict) -> None:
    """The resolved training settings, test reconstruction error and per-epoch objective."""
    metrics.update(
        {
            "epochs": history.config["epochs"],
            "batch_size": history.config["batch_size"],
            "lr": history.config["lr"],
            "fit_config": history.config,
        }
    )
    ae.eval()
    if not isinstance(ae, StackedAutoencoder):  # its error is measured after pretraining
        metrics["test_reconstruction_error"] = ae.reconstruction_error(ds.test)
    metrics["train_objective_per_sample"] = [-v for v in history.train_elbo]


def autoencoder_loss(ae, elbos) -> list[float]:
    """An autoencoder's loss per image (squared error or cross-entropy, plus its penalties)
    from ``History`` values, which are minus Trace_ELBO's loss per sample: for a Gaussian of
    fixed scale sigma that loss carries the constant ``D log(sigma sqrt(2 pi))``, removed."""
    gaussian = isinstance(ae.likelihood, Gaussian)
    const = ae.data_dim * (math.log(ae.scale) + 0.5 * math.log(2 * math.pi)) if gaussian else 0.0
    return [-v - const for v in elbos]


def _autoencoder_curve(ae, model: str, history, out: Path, test: torch.Tensor) -> Path:
    """The objective per epoch as the loss it is: History holds minus Trace_ELBO's loss per
    sample, which for a fixed-scale Gaussian carries the constant D log(sigma sqrt(2 pi))."""
    if model == "stacked":  # fine-tuning: History is log p(y | x) per labelled example
        return plots.loss_curve(
            [-v for v in history.train_elbo],
            out / "training_curve.png",
            quantity="cross-entropy -log p(y | x)",
            unit="nats per labelled image",
            title="stacked autoencoder: supervised fine-tuning",
        )
    gaussian = isinstance(ae.likelihood, Gaussian)
    quantity = "squared error" if gaussian else "cross-entropy"
    if model == "dae":
        quantity += " of corrupted inputs"
    train_q = quantity + ("" if model in ("ae", "dae") else " + penalty")
    with torch.no_grad():
        final = float(ae.reconstruction_error(test))
    return plots.loss_curve(
        autoencoder_loss(ae, history.train_elbo),
        out / "training_curve.png",
        quantity=train_q,
        unit="per image, summed over pixels" + (" (nats)" if not gaussian else ""),
        test=autoencoder_loss(ae, history.test_elbo),
        reference={f"test reconstruction error, final ({final:.3g})": final},
        title=f"{model}: training loss (lower is better)",
    )


def _autoencoder_figures(ae, model: str, ds, out: Path, history, seed: int) -> dict:
    figs = {"training_curve": _autoencoder_curve(ae, model, history, out, ds.test).name}
    image_shape = as_image_shape(ds.image_shape, ds.data_dim)
    test = ds.test
    with torch.no_grad():
        x = test[:10]
        # the stacked model's decoders were pretrained layer by layer and not fine-tuned, so
        # after fine-tuning they no longer invert its encoder: its reconstructions would be
        # blobs that say nothing about what was learned, and are not drawn
        if image_shape is not None and model != "stacked":
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
        if image_shape is not None:
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
