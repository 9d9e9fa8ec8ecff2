"""``ppvae check-ppca``: a LinearVAE trained by SVI against the PPCA maximum-likelihood fit."""

from __future__ import annotations

import time
from pathlib import Path

from .. import plots
from ..data import Dataset
from .common import (
    Result,
    Stages,
    environment,
    finish,
    linear_check,
    standardization,
    start,
)


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
        See :func:`~ppvae.fit` (``lr=None``: the LinearVAE's own on full batches,
        ``LINEAR_MINIBATCH_LR`` = 0.02 on minibatches).
    out : path, optional
        Folder for ``check_ppca.json`` and ``ppca_check.png`` (None: write nothing).
    overwrite : bool
        Allow an ``out`` that already holds a run.

    Returns
    -------
    Result
        ``metrics``: log-likelihood and ELBO gaps (nats per sample), noise-variance and
        covariance relative errors, principal angles, active units, ``passed`` (every
        quantity within :data:`CHECK_TARGETS`), ``stage_seconds``; ``models``
        ``linear_vae`` and ``ppca``.
    """
    t0 = time.perf_counter()
    s = start(
        dataset, latent_dim=latent_dim, seed=seed, device=device, out=out, overwrite=overwrite
    )
    ds, out = s.data, s.out
    stage = Stages("check-ppca", progress)
    check = linear_check(
        ds,
        latent_dim,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=s.device,
        progress=progress,
        stage=stage,
    )
    r = check["result"]
    if out is not None:
        with stage("figure", "figure"):
            r["figure"] = plots.ppca_check(
                ds.train.double(), check["ppca"], check["vae"], r, out / "ppca_check.png"
            ).name
    r["stage_seconds"] = stage.seconds
    r["seconds_total"] = time.perf_counter() - t0
    r.update(
        {
            "dataset": ds.name,
            "source": ds.info.get("source"),  # a --data table: likelihoods on its own scale
            "standardization": standardization(ds),
            "dequantized": ds.dequantized,
            "latent_dim": latent_dim,
            "seed": seed,
            "environment": environment(),
        }
    )
    finish(out, "check_ppca.json", r)
    models = {"linear_vae": check["vae"], "ppca": check["ppca"]}
    return Result(r, models, check["history"], out)
