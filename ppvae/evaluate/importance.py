"""Importance-weighted estimates: ELBO, the IW bound, and the estimate with standard errors
and PSIS k-hat (Burda et al. 2015; Vehtari et al. 2024)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ._common import (
    _DEFAULT_MAX_ELEMENTS,
    _TRIM,
    _chunks,
    _count,
    _EvalMode,
    _Evaluation,
    _evaluation,
    _log_weights,
    _prepare,
)


def log_importance_weights(program, x: torch.Tensor, num_samples: int, guide=None) -> torch.Tensor:
    """``log p(x, z_k) - log q(z_k | x)`` for ``z_k ~ q(z | x)``.

    Global latent variables (e.g. the scale ``tau`` of
    :class:`~ppvae.priors.HierarchicalGaussian`) are fixed at the program's
    ``point_estimates()``, so the weights, and the likelihoods built from them, are
    conditional on those values.

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair.
    x : torch.Tensor, shape (N, D)
        Already on the program's device.
    num_samples : int
        K.
    guide : callable, optional
        Proposal with the guide's latent sites, called as ``guide(x)`` (default: the
        program's guide).

    Returns
    -------
    torch.Tensor, shape (K, N)
    """
    return _log_weights(_evaluation(program), x, num_samples, guide)


_TRIM_EVERY = 32  # chunks between malloc_trim calls (see _weight_chunks)


def _weight_chunks(ev: _Evaluation, X, num_samples, max_elements, guide=None):
    """Yield, for each chunk of data points, the list of (k_chunk, n_chunk) log-weight blocks."""
    n_chunk, k_chunk = _chunks(X.shape[0], num_samples, ev.width, max_elements)
    with _EvalMode(ev.module), torch.no_grad():
        for c, i in enumerate(range(0, X.shape[0], n_chunk)):
            x = X[i : i + n_chunk]
            mask = None if ev.mask is None else ev.mask[i : i + n_chunk]
            yield [
                _log_weights(ev, x, min(k_chunk, num_samples - j), guide=guide, mask=mask)
                for j in range(0, num_samples, k_chunk)
            ]
            if _TRIM is not None and x.device.type == "cpu" and c % _TRIM_EVERY == 0:
                # glibc's dynamic mmap threshold keeps the freed chunk-sized buffers in
                # the heap, fragmented: without trimming, peak memory grew ~0.6 MB per point
                # (3.7 GiB for K=5000 on 10,000 MNIST images). Trimming after every chunk
                # kept it flat but cost 25-35% of the time (the next chunk faults its pages
                # in afresh); every _TRIM_EVERY chunks bounds the growth to that many chunks.
                _TRIM(0)


def elbo(program, X, num_samples: int = 1, *, max_elements: int = _DEFAULT_MAX_ELEMENTS):
    """Monte Carlo ELBO of each data point, ``mean_k log w_k``.

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair
        (see :mod:`ppvae.program`).
    X : array-like, shape (N, D)
        NaN entries are missing, for a program that takes ``mask``: the estimate is then of
        the observed entries, log p(x_o).
    num_samples : int
        Guide samples per point.
    max_elements : int
        Bound on the floats in one chunk of (K, N, max(D, k)) work.

    Returns
    -------
    torch.Tensor, shape (N,)
        ELBO estimates in nats, on the CPU.
    """
    ev, X = _prepare(program, X, num_samples, missing="elbo")
    sums = [
        torch.stack([b.sum(0) for b in blocks]).sum(0)
        for blocks in _weight_chunks(ev, X, num_samples, max_elements)
    ]
    return torch.cat(sums).cpu() / num_samples


def log_likelihood(
    program,
    X,
    num_samples: int = 1000,
    *,
    max_elements: int = _DEFAULT_MAX_ELEMENTS,
    guide=None,
):
    """Importance-weighted estimate of log p(x) (Burda et al. 2015).

    ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` with ``z_k ~ q(z | x)``: a stochastic lower
    bound on log p(x) whose expectation grows with K. :func:`estimate_log_likelihood` adds
    standard errors and Pareto-k diagnostics.

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair
        (see :mod:`ppvae.program`).
    X : array-like, shape (N, D)
        NaN entries are missing, for a program that takes ``mask``: the estimate is then of
        the observed-data log-likelihood log p(x_o).
    num_samples : int
        K, importance samples per data point.
    max_elements : int
        Bound on the floats in one chunk of (K, N, max(D, k)) work.
    guide : callable, optional
        A different proposal: a Pyro guide ``guide(x, num_data=None)`` with a ``"z"`` site
        (default: the VAE's own guide).

    Returns
    -------
    torch.Tensor, shape (N,)
        Estimates in nats, on the CPU.
    """
    ev, X = _prepare(program, X, num_samples, missing="log_likelihood")
    lse = [
        torch.stack([b.logsumexp(0) for b in blocks]).logsumexp(0)
        for blocks in _weight_chunks(ev, X, num_samples, max_elements, guide)
    ]
    return torch.cat(lse).cpu() - math.log(num_samples)


@dataclass
class LikelihoodEstimate:
    """An importance-sampling estimate of log p(x) with its diagnostics (all in nats).

    Attributes
    ----------
    log_px : torch.Tensor, shape (N,)
        Per-point estimates: ``log mean_k w_k``, or its Pareto-smoothed version.
    mc_se : torch.Tensor, shape (N,)
        Per-point Monte Carlo standard error of ``log_px`` (delta method,
        ``sqrt((mean w^2 / (mean w)^2 - 1) / K)``).
    khat : torch.Tensor or None, shape (N,)
        Pareto shape estimates of the importance weights (PSIS, Vehtari et al. 2024); above
        0.7 the estimate of that point is unreliable.
    num_samples : int
        K.
    data_dim : int
        D, for bits per dimension.
    """

    log_px: torch.Tensor
    mc_se: torch.Tensor
    khat: torch.Tensor | None
    num_samples: int
    data_dim: int

    @property
    def mean(self) -> float:
        """Mean log-likelihood per data point."""
        return float(self.log_px.mean())

    @property
    def sem(self) -> float:
        """Standard error of :attr:`mean`: spread over data points and Monte Carlo error."""
        n = self.log_px.shape[0]
        var_data = float(self.log_px.var()) if n > 1 else 0.0
        return math.sqrt(var_data / n + float((self.mc_se**2).mean()) / n)

    @property
    def khat_share(self) -> float | None:
        """Share of points with k-hat > 0.7 (None without PSIS)."""
        return None if self.khat is None else float((self.khat > 0.7).double().mean())

    def bits_per_dim(self, levels: int | None = None) -> float:
        """``-(mean - D log levels) / (D log 2)``; ``levels=None`` for discrete (binary) data."""
        offset = 0.0 if levels is None else self.data_dim * math.log(levels)
        return -(self.mean - offset) / (self.data_dim * math.log(2.0))

    def summary(self) -> dict:
        return {
            "mean": self.mean,
            "sem": self.sem,
            "mc_se_mean": float(self.mc_se.mean()),
            "khat_share_gt_0.7": self.khat_share,
            "num_samples": self.num_samples,
        }


PSIS_MIN_SAMPLES = 5
"""Fewest importance samples ``estimate_log_likelihood(psis=True)`` accepts: the Pareto tail
takes min(K / 5, 3 sqrt(K)) weights (Vehtari et al. 2024), so below 5 it has none."""


def _psis(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pareto-smoothed log weights (unnormalized) and k-hat, via ``arviz.psislw``.

    log_w: (K, n). Returns smoothed (K, n) and k-hat (n,).
    """

    import arviz  # lazy: only PSIS needs it

    lw = log_w.double().cpu().T.numpy()  # (n, K): arviz takes samples last
    shift = lw.max(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns per point about large k-hat
        smoothed, khat = arviz.psislw(lw - shift, normalize=False)
    smoothed = torch.from_numpy(np.asarray(smoothed) + shift).T
    return smoothed, torch.from_numpy(np.atleast_1d(np.asarray(khat, dtype=np.float64)))


def estimate_log_likelihood(
    program,
    X,
    num_samples: int = 1000,
    *,
    psis: bool = True,
    smoothed: bool = False,
    guide=None,
    max_elements: int = _DEFAULT_MAX_ELEMENTS,
) -> LikelihoodEstimate:
    """Importance-weighted log p(x) with Monte Carlo standard errors and PSIS k-hat.

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair
        (see :mod:`ppvae.program`).
    X : array-like, shape (N, D)
        NaN entries are missing (see :func:`log_likelihood`).
    num_samples : int
        K, importance samples per data point.
    psis : bool
        Compute Pareto k-hat per point with ``arviz.psislw`` (keeps the K weights of one chunk
        of points in memory at a time).
    smoothed : bool
        Report the Pareto-smoothed estimate ``log mean_k w~_k`` instead of the plain one.
    guide : callable, optional
        A different proposal (see :func:`log_likelihood`).
    max_elements : int
        Bound on the floats in one chunk of (K, N, max(D, k)) work.

    Returns
    -------
    LikelihoodEstimate
    """
    if smoothed and not psis:
        raise InputError("smoothed=True needs psis=True")
    _count(num_samples, "num_samples")
    if psis and not isinstance(num_samples, bool) and int(num_samples) == num_samples:
        if num_samples < PSIS_MIN_SAMPLES:
            raise InputError(
                f"num_samples={num_samples} is too few for PSIS, which fits a Pareto tail to "
                f"the largest weights: use at least {PSIS_MIN_SAMPLES}, or psis=False"
            )
    ev, X = _prepare(program, X, num_samples, missing="estimate_log_likelihood")
    log_k = math.log(num_samples)
    est, se, khats = [], [], []
    for blocks in _weight_chunks(ev, X, num_samples, max_elements, guide):
        if psis:
            lw = torch.cat(blocks).double()
            sm, khat = _psis(lw)
            khats.append(khat)
            lw_used = sm if smoothed else lw.cpu()
            lse1 = lw_used.logsumexp(0)
            lse2 = (2 * lw_used).logsumexp(0)
        else:
            lse1 = torch.stack([b.double().logsumexp(0) for b in blocks]).logsumexp(0).cpu()
            lse2 = torch.stack([(2 * b.double()).logsumexp(0) for b in blocks]).logsumexp(0)
            lse2 = lse2.cpu()
        est.append(lse1 - log_k)
        # mean w^2 / (mean w)^2 = K exp(lse2 - 2 lse1)
        ratio = torch.exp(lse2 - 2 * lse1 + log_k)
        se.append(((ratio - 1.0).clamp_min(0.0) / num_samples).sqrt())
        if num_samples == 1:  # one weight per point: its spread is unknown, not zero
            se[-1] = torch.full_like(se[-1], math.nan)
    return LikelihoodEstimate(
        log_px=torch.cat(est).float(),
        mc_se=torch.cat(se).float(),
        khat=torch.cat(khats).float() if psis else None,
        num_samples=int(num_samples),
        data_dim=ev.info.data_dim,
    )
