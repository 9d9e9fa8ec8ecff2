"""``ppvae run``: PPCA and a VAE on the same data, evaluated on the test split, with a report."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import evaluate, plots, reports
from ..data import Dataset
from .common import (
    MISSING_AIS_REASON,
    RUN_AIS_DEFAULTS,
    Result,
    Stages,
    certify_likelihood,
    environment,
    finish,
    fit_ppca,
    has_missing,
    impute_holes,
    linear_check,
    make_vae,
    per_dim_bits,
    sem,
    standardization,
    start,
    train_vae,
    units,
    vae_epochs,
    vae_figures,
)


def run_experiment(
    dataset: Dataset | str = "digits",
    *,
    latent_dim: int = 8,
    hidden=(256,),
    likelihood: str = "gaussian",
    prior: str = "standard",
    architecture: str = "mlp",
    guide: str = "diagonal",
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float | None = None,
    elbo: str | None = None,
    clip_norm: float | None = None,
    kl_weight: float = 1.0,
    kl_warmup: int = 0,
    num_particles: int = 1,
    iw_samples: int = 1000,
    ais_points: int = RUN_AIS_DEFAULTS["ais_points"],
    ais_steps: int = RUN_AIS_DEFAULTS["ais_steps"],
    ais_chains: int = RUN_AIS_DEFAULTS["ais_chains"],
    bdmc_points: int = RUN_AIS_DEFAULTS["bdmc_points"],
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

    Data with missing (NaN) entries (e.g. :func:`~ppvae.data.with_missing`) are fitted as
    they are: PPCA by EM, the VAE's model scoring each row's observed entries, so both test
    log-likelihoods are densities of the observed entries. AIS and BDMC are then skipped
    (``metrics["vae"]["certified_skipped"]`` says why), and the test split's holes are
    imputed by both models and, where ``test_complete`` holds the truth, scored by RMSE
    against the column-mean baseline (``metrics["imputation"]``, ``imputations.png``).

    Parameters
    ----------
    dataset : Dataset or str
        The data (a name is loaded with ``seed``).
    latent_dim, hidden, likelihood, prior, architecture, guide
        The VAE (see :class:`~ppvae.VAE`).
    epochs, batch_size, lr, elbo, num_particles, clip_norm, kl_weight, kl_warmup, seed, device,
    progress
        Its training (see :func:`~ppvae.fit`; ``kl_warmup`` is ``kl_warmup_epochs``);
        ``epochs=None``: about :data:`VAE_STEPS` steps (:func:`vae_epochs`).
    iw_samples : int
        Importance samples K of the VAE's test log-likelihood estimate.
    iw_samples : int
        Importance samples K per test point (with PSIS k-hat).
    ais_points, ais_steps, ais_chains, bdmc_points : int
        AIS on the first ``ais_points`` test points and BDMC's gap on ``bdmc_points`` points
        simulated from the VAE, at T = ``ais_steps`` and C = ``ais_chains`` (see
        :func:`~ppvae.workflows.compare`); ``ais_points=0`` skips both.
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
    model = {
        "hidden": hidden,
        "likelihood": likelihood,
        "prior": prior,
        "architecture": architecture,
        "guide": guide,
    }
    s = start(
        dataset,
        latent_dim=latent_dim,
        seed=seed,
        device=device,
        out=out,
        overwrite=overwrite,
        build=lambda d: make_vae(d, latent_dim, **model),
    )
    ds, dev, vae, out = s.data, s.device, s.model, s.out
    epochs = vae_epochs(len(ds.train), batch_size, epochs)
    stage = Stages("run", progress)
    with stage("ppca", "PPCA fit"):
        ppca, ppca_fit_s, ppca_test = fit_ppca(ds, latent_dim)
        ppca_metrics = _ppca_metrics(ppca, ppca_fit_s, ppca_test, ds)
    with stage("vae_training", f"VAE training, {epochs} epochs"):
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
        )
    with stage("vae_evaluation", f"VAE: IW log-likelihood of the test split, K = {iw_samples}"):
        vae_metrics = _vae_metrics(
            vae, ds, history, model, iw_samples=iw_samples, seed=seed, progress=progress
        )
    incomplete = has_missing(ds)
    if incomplete:
        vae_metrics["certified_skipped"] = MISSING_AIS_REASON
    with stage("ais_bdmc", f"VAE: AIS on {ais_points} points and BDMC on {bdmc_points}"):
        vae_metrics["certified"] = certify_likelihood(
            vae,
            ds.test,
            vae_metrics.pop("test_per_sample"),
            ais_points=0 if incomplete else ais_points,
            ais_steps=ais_steps,
            ais_chains=ais_chains,
            bdmc_points=bdmc_points,
            seed=seed,
            progress=progress,
        )
    metrics = _metrics(ds, latent_dim, ppca_metrics, vae_metrics, seed=seed, device=dev)
    with stage("imputation", "imputation of the test split's holes"):
        imputation, imputation_png = impute_holes(
            vae, ppca, ds, out, num_samples=iw_samples, seed=seed
        )
    if imputation is not None:
        metrics["imputation"] = imputation
    with stage("linear_check", "LinearVAE check against PPCA"):
        check = linear_check(
            ds,
            latent_dim,
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
        with stage("figures", "figures"):
            metrics["figures"] = _run_figures(
                vae, ppca, check, ds, out, history, dev, seed, metrics
            )
        if imputation_png is not None:
            metrics["figures"]["imputations"] = imputation_png
    metrics["stage_seconds"] = stage.seconds
    metrics["seconds_total"] = time.perf_counter() - t0
    vae.cpu()
    finish(out, "metrics.json", metrics, report=("report.md", reports.run_report))
    return Result(metrics, models, history, out)


def _metrics(ds, latent_dim: int, ppca: dict, vae: dict, *, seed: int, device) -> dict:
    """metrics.json up to its two models (the LinearVAE check and the figures follow)."""
    return {
        "command": "run",
        "dataset": ds.name,
        "n_train": int(ds.train.shape[0]),
        "n_test": int(ds.test.shape[0]),
        "data_dim": ds.data_dim,
        "latent_dim": latent_dim,
        "units": units(ds),
        "source": ds.info.get("source"),  # a --data table: likelihoods on its own scale
        "standardization": standardization(ds),
        "dequantized": ds.dequantized,
        "missing_share_train": float(torch.isnan(ds.train).double().mean()),
        "missing_rate": ds.info.get("missing_rate"),
        "ppca": ppca,
        "vae": vae,
        "seed": seed,
        "device": str(device),
        "environment": environment(),
    }


def _ppca_metrics(ppca, fit_seconds: float, test: torch.Tensor, ds) -> dict:
    """The ``ppca`` block of metrics.json: exact train and test log-likelihoods."""
    return {
        "test_log_likelihood": float(test.mean()),
        "test_log_likelihood_sem": sem(test),
        "train_log_likelihood": ppca.score(ds.train.double()),
        "test_bits_per_dim": per_dim_bits(float(test.mean()), ds),
        "method": ppca.method,
        "noise_variance": ppca.noise_variance_,
        "fit_seconds": fit_seconds,
    }


def _vae_metrics(
    vae, ds, history, model: dict, *, iw_samples: int, seed: int, progress=False
) -> dict:
    """The ``vae`` block of metrics.json: test ELBO and IW estimate, train ELBO, settings."""
    torch.manual_seed(seed)
    t = time.perf_counter()
    test_elbo = evaluate.elbo(vae, ds.test, num_samples=10)
    psis = iw_samples >= evaluate.PSIS_MIN_SAMPLES  # k-hat needs a tail of weights
    est = evaluate.estimate_log_likelihood(
        vae, ds.test, num_samples=iw_samples, psis=psis, progress=progress
    )
    test_iw = est.log_px
    eval_s = time.perf_counter() - t
    train_elbo = float(evaluate.elbo(vae, ds.train, num_samples=1).mean())
    config = history.config
    return {
        "test_elbo": float(test_elbo.mean()),
        "test_log_likelihood_iw": float(test_iw.mean()),
        "test_log_likelihood_iw_sem": sem(test_iw),
        "iw_samples": iw_samples,
        "khat_share_gt_0.7": est.khat_share,
        "test_per_sample": test_iw,
        "train_elbo": train_elbo,
        "test_bits_per_dim_iw": per_dim_bits(float(test_iw.mean()), ds),
        "hidden": list(model["hidden"]),
        "prior": model["prior"],
        "likelihood": model["likelihood"],
        "architecture": model["architecture"],
        "epochs": config["epochs"],
        "batch_size": config["batch_size"],
        "lr": config["lr"],
        "fit_config": config,
        "fit_seconds": history.seconds,
        "eval_seconds": eval_s,
        "history": history.to_dict(),
    }


def _run_figures(vae, ppca, check, ds, out: Path, history, device, seed: int, m: dict) -> dict:
    ref = {"PPCA test log-lik (exact)": m["ppca"]["test_log_likelihood"]}
    figs, x, loc, image_shape = vae_figures(vae, ds, out, history, device, reference=ref)
    if image_shape is not None:
        with torch.no_grad():
            if not has_missing(ds):  # with holes, imputations.png shows the same comparison
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
