"""``ppvae compare``: PPCA vs LinearVAE vs VAE likelihoods with standard errors, PSIS, gaps."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import evaluate, plots, reports
from ..data import Dataset
from ..errors import InputError
from .common import (
    AIS_DEFAULTS,
    MISSING_AIS_REASON,
    Result,
    Stages,
    certify_likelihood,
    check_against_ppca,
    environment,
    finish,
    fit_ppca,
    has_missing,
    impute_holes,
    linear_schedule,
    make_vae,
    per_dim_bits,
    sem,
    standardization,
    start,
    train_linear_vae,
    train_vae,
    units,
    vae_epochs,
)

MISSING_GAPS_REASON = (
    "the inference gaps and NUTS were skipped: they optimize or sample p(z | x) of complete "
    "rows, and these data have missing entries"
)


def compare(
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
    linear_epochs: int | None = None,
    linear_batch_size: int | None = None,
    iw_samples: int = 1000,
    eval_points: int = 2000,
    gap_points: int = 200,
    nuts_points: int = 3,
    nuts_samples: int = 500,
    ais_points: int = AIS_DEFAULTS["ais_points"],
    ais_steps: int = AIS_DEFAULTS["ais_steps"],
    ais_chains: int = AIS_DEFAULTS["ais_chains"],
    bdmc_points: int = AIS_DEFAULTS["bdmc_points"],
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
    latent_dim, hidden, likelihood, prior, architecture, guide
        The nonlinear VAE (see :class:`~ppvae.VAE`); PPCA and the LinearVAE share
        ``latent_dim``.
    epochs, batch_size, lr, elbo, num_particles, clip_norm, kl_weight, kl_warmup, seed, device,
    progress
        The VAE's training (see :func:`~ppvae.fit`); ``epochs=None``: about
        :data:`VAE_STEPS` steps (:func:`vae_epochs`).
    linear_epochs, linear_batch_size : int, optional
        The LinearVAE's training (default: :func:`linear_schedule`).
    iw_samples : int
        Importance samples K per point.
    eval_points, gap_points : int
        Seeded subsets of each split for the IW estimates, and of the test split for the
        inference gaps.
    nuts_points, nuts_samples : int
        Test points whose VAE posterior NUTS also samples; warm-up steps and draws per chain.
    ais_points, ais_steps, ais_chains, bdmc_points : int
        The VAE's likelihood checked by AIS (:func:`~ppvae.evaluate.ais_log_likelihood`,
        T = ``ais_steps``, C = ``ais_chains``, step sizes adapted) on the first
        ``ais_points`` test points of the IW subset, and BDMC's gap at the same settings on
        ``bdmc_points`` points simulated from the VAE (:func:`~ppvae.evaluate.bdmc`); AIS at
        the same settings on the ``gap_points`` also gives the VAE's approximation gap against
        AIS (``approximation_gap_ais``). ``ais_points=0`` skips all three.
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
    if isinstance(iw_samples, int) and iw_samples < evaluate.PSIS_MIN_SAMPLES:  # before training
        raise InputError(
            f"iw_samples={iw_samples} is too few for the PSIS diagnostics compare reports: use "
            f"at least {evaluate.PSIS_MIN_SAMPLES}"
        )
    k = latent_dim
    s = start(
        dataset,
        latent_dim=k,
        seed=seed,
        device=device,
        out=out,
        overwrite=overwrite,
        build=lambda d: make_vae(
            d,
            k,
            hidden=hidden,
            likelihood=likelihood,
            prior=prior,
            architecture=architecture,
            guide=guide,
        ),
    )
    ds, dev, vae, out = s.data, s.device, s.model, s.out
    epochs = vae_epochs(len(ds.train), batch_size, epochs)
    scores = {
        "eval_points": eval_points,
        "gap_points": gap_points,
        "iw_samples": iw_samples,
        "seed": seed,
        "progress": progress,
    }
    rows: dict[str, dict] = {}
    stage = Stages("compare", progress)
    with stage("ppca", "PPCA fit"):
        ppca, rows["PPCA"], ppca_test = _ppca_row(ds, k)
    with stage("linear_vae", "LinearVAE: training, exact likelihoods, IW and gaps"):
        lin, rows["LinearVAE"], lin_exact_test = _linear_row(
            ds,
            k,
            epochs=linear_epochs,
            batch_size=linear_batch_size,
            seed=seed,
            device=dev,
            progress=progress,
            scores=scores,
        )
        linear_check = check_against_ppca(lin, ppca, ds.train)
    with stage("vae_training", f"VAE training, {epochs} epochs"):
        h = train_vae(
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
    with stage(
        "vae_evaluation",
        f"VAE: IW log-likelihoods (K = {iw_samples}) of up to {eval_points} points per split, "
        f"gaps on {gap_points}",
    ):
        incomplete = has_missing(ds)
        # where AIS runs, the approximation gap is also taken against AIS on the gap points
        ais = {"num_steps": ais_steps, "num_chains": ais_chains, "seed": seed}
        ais = ais if ais_points and not incomplete else None
        vae_scores = _vae_row(vae, ds, h, scores, ais=ais)
    if incomplete:
        vae_scores["certified_skipped"] = MISSING_AIS_REASON
        nuts_points = 0
    with stage("ais_bdmc", f"VAE: AIS on {ais_points} points and BDMC on {bdmc_points}"):
        vae_scores["certified"] = certify_likelihood(
            vae,
            _subset_rows(ds.test, eval_points, seed + 1),
            vae_scores["test_per_sample"],
            ais_points=0 if incomplete else ais_points,
            ais_steps=ais_steps,
            ais_chains=ais_chains,
            bdmc_points=bdmc_points,
            seed=seed,
            progress=progress,
        )
    rows[f"VAE ({prior} prior, {likelihood})"] = vae_scores
    with stage("nuts", f"NUTS posteriors of {nuts_points} test points"):
        nuts = _nuts(
            vae,
            ds,
            vae_scores,
            points=nuts_points,
            samples=nuts_samples,
            seed=seed,
            progress=progress,
        )
    per_sample = {
        "ppca": ppca_test.numpy(),
        "linear_vae": lin_exact_test.numpy(),
        "vae": vae_scores.pop("test_per_sample").numpy(),
    }
    result = _result(ds, k, rows, iw_samples=iw_samples, eval_points=eval_points)
    result["linear_check"] = linear_check
    if incomplete:
        result["skipped"] = MISSING_GAPS_REASON
    with stage("imputation", "imputation of the test split's holes"):
        imputation, imputation_png = impute_holes(
            vae, ppca, ds, out, num_samples=iw_samples, seed=seed
        )
    if imputation is not None:
        result["imputation"] = imputation
    if out is not None:
        with stage("figures", "figures"):
            _compare_figures(
                result, out, ppca_test, per_sample, nuts, eval_points=eval_points, seed=seed
            )
        if imputation_png is not None:
            result["imputation_figure"] = imputation_png
    result["stage_seconds"] = stage.seconds
    result["seconds_total"] = time.perf_counter() - t0
    result["environment"] = environment()
    finish(out, "compare.json", result, report=("compare.md", reports.compare_report))
    return Result(result, {"ppca": ppca, "linear_vae": lin, "vae": vae}, h, out)


def _ppca_row(ds, k: int) -> tuple:
    """PPCA fitted (closed form, or EM with holes): the model, its row, its test log p(x)."""
    ppca, seconds, test = fit_ppca(ds, k)
    test = test.float()
    row = {
        "train": {"exact": ppca.score(ds.train.double())},
        "test": {
            "exact": float(test.mean()),
            "exact_sem": sem(test),
            "bits_per_dim": per_dim_bits(float(test.mean()), ds),
        },
        "fit_seconds": seconds,
    }
    return ppca, row, test


def _linear_row(ds, k: int, *, epochs, batch_size, scores: dict, **training):
    """The LinearVAE trained by SVI: (the model, its row of the table, its exact test log p(x))."""
    epochs, batch_size = linear_schedule(len(ds.train), epochs=epochs, batch_size=batch_size)
    lin, h = train_linear_vae(ds, k, epochs=epochs, batch_size=batch_size, lr=None, **training)
    row = _vae_scores(lin, ds, **scores)
    exact_test = evaluate.exact_log_likelihood(lin, ds.test.double()).float()
    row["test"]["exact"] = float(exact_test.mean())
    row["train"]["exact"] = float(evaluate.exact_log_likelihood(lin, ds.train).mean())
    row["fit_seconds"] = h.seconds
    row["epochs"], row["batch_size"] = epochs, batch_size
    row.pop("test_per_sample")
    return lin, row, exact_test


def _vae_row(vae, ds, history, scores: dict, ais: dict | None = None) -> dict:
    """The nonlinear VAE's row of the table (with its test log p(x) per sample, to pop)."""
    vae.cpu()
    row = _vae_scores(vae, ds, **scores, ais=ais)
    row["fit_seconds"] = history.seconds
    row["fit_config"] = history.config
    return row


def _result(ds, k: int, rows: dict, *, iw_samples: int, eval_points: int) -> dict:
    """compare.json up to the table of models (figures, timing and environment follow)."""
    return {
        "command": "compare",
        "dataset": ds.name,
        "latent_dim": k,
        "data_dim": ds.data_dim,
        "n_train": int(ds.train.shape[0]),
        "n_test": int(ds.test.shape[0]),
        "units": units(ds),
        "source": ds.info.get("source"),  # a --data table: rows, on its own scale
        "standardization": standardization(ds),
        "missing_share_train": float(torch.isnan(ds.train).double().mean()),
        "missing_rate": ds.info.get("missing_rate"),
        "ppca_method": "em" if has_missing(ds) else "closed_form",
        "iw_samples": iw_samples,
        "eval_points": eval_points,
        "models": rows,
    }


def _subset_rows(X: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if n >= X.shape[0]:
        return X
    idx = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return X[idx.sort().values]


def _vae_scores(
    vae,
    ds,
    *,
    eval_points: int,
    gap_points: int,
    iw_samples: int,
    seed: int,
    progress=False,
    ais=None,
):
    """ELBO, IW estimate with SE and k-hat share, gaps, on train and test subsets (with
    ``progress``, bars over the IW points and the gaps' steps); with ``ais`` (keywords of
    :func:`~ppvae.evaluate.ais_log_likelihood`), also the approximation gap against AIS on
    the gap points."""
    out = {}
    for split, X in (("train", ds.train), ("test", ds.test)):
        Xs = _subset_rows(X, eval_points, seed + (split == "test"))
        torch.manual_seed(seed)
        est = evaluate.estimate_log_likelihood(vae, Xs, num_samples=iw_samples, progress=progress)
        out[split] = {
            "n_points": int(Xs.shape[0]),
            "elbo": float(evaluate.elbo(vae, Xs, num_samples=10).mean()),
            "iw": est.mean,
            "iw_sem": est.sem,
            "iw_mc_se": float(est.mc_se.mean()),
            "khat_share_gt_0.7": est.khat_share,
            "bits_per_dim": per_dim_bits(est.mean, ds),
        }
        if split == "test":
            out["test_per_sample"] = est.log_px
    if has_missing(ds):  # the gaps optimize local guides of complete rows (MISSING_GAPS_REASON)
        out["approximation_gap"] = out["amortization_gap"] = None
        return out
    gaps = evaluate.inference_gaps(
        vae,
        _subset_rows(ds.test, gap_points, seed + 7),
        num_samples=iw_samples,
        progress=progress,
        ais=ais,
    )["mean"]
    out["approximation_gap"] = gaps["approximation_gap"]
    out["amortization_gap"] = gaps["amortization_gap"]
    if ais is not None:
        out["approximation_gap_ais"] = gaps["approximation_gap_ais"]
    return out


def _nuts(
    vae, ds, vae_scores: dict, *, points: int, samples: int, seed: int, progress=False
) -> list:
    """NUTS on the VAE posterior of the first ``points`` test rows; summarized in vae_scores."""
    if not points:
        return []
    nuts = evaluate.nuts_posterior(
        vae,
        ds.test[:points],
        num_samples=samples,
        warmup_steps=samples,
        seed=seed,
        progress=progress,
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
    return nuts


def _compare_figures(
    result: dict, out: Path, ppca_test, per_sample: dict, nuts: list, *, eval_points, seed
) -> None:
    """The scatter of per-sample log-likelihoods, the InferenceData file, NUTS vs the guide."""
    n_test = result["n_test"]
    idx = _subset_rows(torch.arange(n_test)[:, None].float(), eval_points, seed + 1)
    idx = idx[:, 0].long()
    result["figure"] = plots.loglik_scatter(
        ppca_test[idx],
        torch.as_tensor(per_sample["vae"]),
        out / "loglik_scatter.png",
        xlabel="PPCA test log p(x) (exact, nats)",
        ylabel=f"VAE test log p(x) (IW, K={result['iw_samples']}, nats)",
        names=("PPCA", "the VAE"),
        what="rows" if result.get("source") else "images",
    ).name
    result["netcdf"] = _write_inference_data(per_sample, idx, out / "log_likelihood.nc")
    if nuts and result["latent_dim"] >= 2:
        result["nuts_figure"] = plots.nuts_vs_guide(nuts, out / "nuts_vs_guide.png").name


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
