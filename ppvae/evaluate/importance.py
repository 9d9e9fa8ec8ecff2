"""Importance-weighted estimates: ELBO, the IW bound, and the estimate with standard errors
and PSIS k-hat (Burda et al. 2015; Vehtari et al. 2024)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

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

GLOBAL_SAMPLES = 10
"""Default S: draws of a program's global latents from q(g) that likelihoods average over."""


def _weight_chunks(
    ev: _Evaluation, X, num_samples, max_elements, guide=None, progress=False, desc="IW"
):
    """Yield, for each chunk of data points, one list per draw of the global latents (one list
    for a program without them) of (k_chunk, n_chunk) log-weight blocks; with ``progress``
    (None: on a terminal), a progress bar over the points."""
    n_chunk, k_chunk = _chunks(X.shape[0], num_samples, ev.width, max_elements)
    disable = None if progress is None else not progress
    bar = tqdm(total=X.shape[0], desc=desc, unit="point", disable=disable, leave=False)
    with _EvalMode(ev.module), torch.no_grad(), bar:
        for c, (start, stop, lo) in enumerate(ev.blocks(X.shape[0], n_chunk)):
            x = X[lo:stop]
            mask = None if ev.mask is None else ev.mask[lo:stop]
            extra = None if ev.labels is None else {"y": ev.labels[lo:stop]}
            keep = stop - start
            yield [
                [
                    _log_weights(
                        ev,
                        x,
                        min(k_chunk, num_samples - j),
                        guide=guide,
                        mask=mask,
                        fixed=g,
                        extra=extra,
                    )[:, -keep:]
                    for j in range(0, num_samples, k_chunk)
                ]
                for g in ev.global_draws
            ]
            bar.update(keep)
            if _TRIM is not None and x.device.type == "cpu" and c % _TRIM_EVERY == 0:
                # glibc's dynamic mmap threshold keeps the freed chunk-sized buffers in
                # the heap, fragmented: without trimming, peak memory grew ~0.6 MB per point
                # (3.7 GiB for K=5000 on 10,000 MNIST images). Trimming after every chunk
                # kept it flat but cost 25-35% of the time (the next chunk faults its pages
                # in afresh); every _TRIM_EVERY chunks bounds the growth to that many chunks.
                _TRIM(0)


def elbo(
    program,
    X,
    num_samples: int = 1,
    *,
    max_elements: int = _DEFAULT_MAX_ELEMENTS,
    point_estimates=None,
    global_samples: int = GLOBAL_SAMPLES,
    y=None,
):
    """Monte Carlo ELBO of each data point, ``mean_k log w_k``.

    With global latents g (sites outside the data plate), the held-out ELBO
    ``E_q(g) E_q(z | x, g) [log p(x, z | g) - log q(z | x, g)]``: a test point is conditioned on
    the posterior q(g) learned from training, and KL(q(g) || p(g)) is not charged to it (it
    is the training set's). The expectation over q(g) is taken over ``global_samples`` draws
    shared by all points (so the value does not depend on chunking), ``num_samples`` local
    draws each.

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
    point_estimates, global_samples
        See :func:`log_likelihood`.

    Returns
    -------
    torch.Tensor, shape (N,)
        ELBO estimates in nats, on the CPU.
    """
    ev, X = _prepare(
        program,
        X,
        num_samples,
        missing="elbo",
        point_estimates=point_estimates,
        global_samples=global_samples,
        y=y,
    )
    sums = [
        torch.stack([b.sum(0) for blocks in groups for b in blocks]).sum(0)
        for groups in _weight_chunks(ev, X, num_samples, max_elements)
    ]
    return torch.cat(sums).cpu() / (num_samples * len(ev.global_draws))


def log_likelihood(
    program,
    X,
    num_samples: int = 1000,
    *,
    max_elements: int = _DEFAULT_MAX_ELEMENTS,
    guide=None,
    point_estimates=None,
    global_samples: int = GLOBAL_SAMPLES,
    y=None,
    progress: bool | None = False,
):
    """Importance-weighted estimate of log p(x) (Burda et al. 2015).

    ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` with ``z_k ~ q(z | x)``: a stochastic lower
    bound on log p(x) whose expectation grows with K. :func:`estimate_log_likelihood` adds
    standard errors and Pareto-k diagnostics.

    With global latents g (sites outside the data plate, such as a Bayesian decoder's
    weights with q(g) in the guide), what is estimated is the posterior predictive density
    ``log E_q(g) p(x | g)`` of each point: for each of S = ``global_samples`` draws g_s ~ q(g)
    (shared by all points) the IW estimate of p(x | g_s) from K local draws, then
    log-mean-exp over s. It is a stochastic lower bound on log E_q(g) p(x | g) (Jensen over
    both levels). ``point_estimates`` conditions on plug-in values instead: log p(x | g-hat).

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
    point_estimates : True or dict, optional
        Plug-in values of the global latents: True for the module's ``point_estimates()``,
        a dict ``{site: value}`` for plain functions. Default: averaged over q(g).
    y : array-like of int, shape (N,), optional
        Labels passed to model and guide beside each row (``y=``): the estimate is then of
        log p(x | y) for a conditional program such as :class:`~ppvae.ConditionalVAE`.
    global_samples : int
        S, draws of the global latents from the guide (ignored without global latents or
        with ``point_estimates``); the work is S x K weights per point.
    progress : bool or None
        A progress bar over the points on stderr (None: only on a terminal).

    Returns
    -------
    torch.Tensor, shape (N,)
        Estimates in nats, on the CPU.
    """
    ev, X = _prepare(
        program,
        X,
        num_samples,
        missing="log_likelihood",
        point_estimates=point_estimates,
        global_samples=global_samples,
        y=y,
    )
    lse = [
        torch.stack([b.logsumexp(0) for blocks in groups for b in blocks]).logsumexp(0)
        for groups in _weight_chunks(ev, X, num_samples, max_elements, guide, progress)
    ]
    return torch.cat(lse).cpu() - math.log(num_samples * len(ev.global_draws))


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
        """Standard error of :attr:`mean` as an estimate over the data distribution:
        ``sqrt(Var_n(log_px) / n)``. The spread of the per-point estimates already holds each
        point's Monte Carlo variance (independent draws per point), so it is not added again;
        one point has only its Monte Carlo error."""
        n = self.log_px.shape[0]
        if n == 1:
            return float(self.mc_se[0])
        return math.sqrt(float(self.log_px.var()) / n)

    @property
    def mc_se_of_mean(self) -> float:
        """Monte Carlo error of :attr:`mean` for these very points (the test set held fixed):
        ``sqrt(sum(mc_se^2)) / n``, apart from the spread over points."""
        return math.sqrt(float((self.mc_se.double() ** 2).sum())) / self.log_px.shape[0]

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
            "mc_se_of_mean": self.mc_se_of_mean,
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
    point_estimates=None,
    global_samples: int = GLOBAL_SAMPLES,
    y=None,
    progress: bool | None = False,
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
    point_estimates, global_samples
        Global latents, as in :func:`log_likelihood`: by default the estimate is of
        log E_q(g) p(x | g) over S draws of g; PSIS k-hat is then fitted to all S x K
        weights of a point, and the Monte Carlo error is that of the mean over the S
        independent per-draw estimates (it includes their own K-sample error).
    progress : bool or None
        A progress bar over the points on stderr (None: only on a terminal).

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
    ev, X = _prepare(
        program,
        X,
        num_samples,
        missing="estimate_log_likelihood",
        point_estimates=point_estimates,
        global_samples=global_samples,
        y=y,
    )
    S = len(ev.global_draws)
    log_k = math.log(num_samples * S)
    est, se, khats = [], [], []
    for groups in _weight_chunks(ev, X, num_samples, max_elements, guide, progress):
        blocks = [b for blocks in groups for b in blocks]
        if psis:
            lw = torch.cat(blocks).double()
            sm, khat = _psis(lw)
            khats.append(khat)
            lw_used = sm if smoothed else lw.cpu()
        else:
            lw_used = torch.cat([b.double() for b in blocks]).cpu()
        lse1 = lw_used.logsumexp(0)
        lse2 = (2 * lw_used).logsumexp(0)
        est.append(lse1 - log_k)
        if S == 1:
            # mean w^2 / (mean w)^2 = K exp(lse2 - 2 lse1)
            ratio = torch.exp(lse2 - 2 * lse1 + log_k)
            se.append(((ratio - 1.0).clamp_min(0.0) / num_samples).sqrt())
        else:  # the S per-draw estimates are independent: the spread of their mean
            per_draw = lw_used.reshape(S, num_samples, -1).logsumexp(1) - math.log(num_samples)
            rel = torch.exp(per_draw - (lse1 - log_k))  # p_s / p, (S, n)
            se.append((rel.var(0) / S).sqrt())
        if num_samples * S == 1:  # one weight per point: its spread is unknown, not zero
            se[-1] = torch.full_like(se[-1], math.nan)
    return LikelihoodEstimate(
        log_px=torch.cat(est).float(),
        mc_se=torch.cat(se).float(),
        khat=torch.cat(khats).float() if psis else None,
        num_samples=int(num_samples),
        data_dim=ev.info.data_dim,
    )
