"""Evaluation of trained models, in nats per data point.

For a data point x and guide samples ``z_1..z_K ~ q(z | x)``, the log importance weights are
``log w_k = log p(x, z_k) - log q(z_k | x)``. Then

* the ELBO estimate is ``mean_k log w_k``;
* the importance-weighted bound (Burda et al. 2015) is ``log (1/K) sum_k w_k``, a lower bound
  on log p(x) that grows with K and converges to log p(x) as K -> infinity.

Every estimator takes a *program* (see :mod:`ppvae.program`): ppvae's own VAEs, any
``nn.Module`` with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair of functions,
as long as per-point sites live in the ``"data"`` plate. Weights are computed from Pyro traces of
the model replayed against the guide, vectorized over K in a particle plate (one sample at a
time for a program that does not broadcast over an extra batch dimension). Work is split in
chunks over data points and over K so that memory stays bounded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .data import check_data
from .errors import InputError, ProgramError
from .ppca import PPCA
from .program import (
    Program,
    ProgramInfo,
    as_program,
    check_support,
    inspect_program,
    program_parameters,
)
from .vae import LinearVAE

__all__ = [
    "LikelihoodEstimate",
    "compare_to_ppca",
    "elbo",
    "elbo_decomposition",
    "estimate_log_likelihood",
    "exact_log_likelihood",
    "global_point_estimates",
    "inference_gaps",
    "linear_gaussian_params",
    "log_importance_weights",
    "log_likelihood",
    "nuts_posterior",
]

_DEFAULT_MAX_ELEMENTS = 2**23  # floats held per chunk of (K, N, D): 32 MiB in float32


def global_point_estimates(program) -> dict[str, torch.Tensor]:
    """Plug-in values of a program's global latents (``point_estimates()``; none for most)."""
    return as_program(program).point_estimates()


@dataclass
class _Evaluation:
    """A program ready for evaluation: its trace-derived facts and how to call it."""

    program: Program
    info: ProgramInfo
    fixed: dict
    width: int
    vectorized: bool | None = None  # None: not tried yet

    @property
    def module(self):
        return self.program.module


def _sum_log_probs(tr, shape: tuple, exclude) -> torch.Tensor:
    tr.compute_log_prob()
    total = torch.zeros(())
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or name in exclude or site_is_subsample(site):
            continue
        lp = site["log_prob"]
        if lp.shape != shape:
            raise ProgramError(
                f"site {name!r} has log-prob shape {tuple(lp.shape)}, expected {shape}; "
                "per-point importance weights need every sample site inside the 'data' plate "
                "(a program with global latents must provide point_estimates())"
            )
        total = total + lp
    return total


def _weights_once(program: Program, x, fixed, guide, particles: int | None) -> torch.Tensor:
    """``log p(x, z) - log q(z | x)``: (K, n) under a particle plate, or (n,) for one draw."""
    model = poutine.condition(program.model, data=fixed) if fixed else program.model
    guide = poutine.block(guide, hide=list(fixed)) if fixed else guide
    shape = (x.shape[0],) if particles is None else (particles, x.shape[0])
    with pyro.plate("_particles", particles or 1, dim=-2) if particles else _nullcontext():
        guide_tr = poutine.trace(guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x)
    return _sum_log_probs(model_tr, shape, fixed) - _sum_log_probs(guide_tr, shape, fixed)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _vectorized(ev: _Evaluation, attempt):
    """Run ``attempt(vectorized: bool)``, vectorized over samples unless the program cannot be
    (it reshapes by the batch size, say): then one sample at a time, remembered."""
    if ev.vectorized is None:
        try:
            out = attempt(True)
            ev.vectorized = True
            return out
        except Exception:  # any failure: the sequential call below raises it if real
            ev.vectorized = False
    return attempt(ev.vectorized)


def _log_weights(ev: _Evaluation, x, num_samples: int, guide=None) -> torch.Tensor:
    guide = ev.program.guide if guide is None else guide

    def attempt(vectorized: bool) -> torch.Tensor:
        if vectorized:
            return _weights_once(ev.program, x, ev.fixed, guide, num_samples)
        return torch.stack(
            [_weights_once(ev.program, x, ev.fixed, guide, None) for _ in range(num_samples)]
        )

    return _vectorized(ev, attempt).to(x.dtype)


def _evaluation(program) -> _Evaluation:
    """An :class:`_Evaluation` without data checks (for the low-level entry points)."""
    prog = as_program(program)
    return _Evaluation(prog, ProgramInfo(), prog.point_estimates(), width=1)


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


def _program_device(program: Program, X: torch.Tensor) -> torch.device:
    """Where the program's parameters live (its module's, else the param store's)."""
    params = program_parameters(program)
    return params[0].device if params else X.device


def _prepare(program, X, num_samples: int) -> tuple[_Evaluation, torch.Tensor]:
    """Validate ``X`` and ``num_samples`` against a program, trace it, move ``X`` to it."""
    prog = as_program(program)
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise InputError(f"num_samples must be a positive integer, got {num_samples!r}")
    data_dim = getattr(prog.module, "data_dim", None) if prog.is_ppvae else None
    X = check_data(X, name="X", data_dim=data_dim, dtype=torch.float32)
    X = X.to(_program_device(prog, X))
    info = inspect_program(prog, X[:2])
    likelihood = getattr(prog.module, "likelihood", None) if prog.is_ppvae else None
    if likelihood is not None:
        likelihood.check_support(X, "X")  # ppvae's own, with a message naming the remedy
    else:
        check_support(info, X, "X")
    fixed = prog.point_estimates()
    unfixed = [name for name in info.global_latents if name not in fixed]
    if unfixed:
        raise ProgramError(
            f"the latent site {unfixed[0]!r} lies outside the 'data' plate and the program "
            "gives no point estimate for it; per-point likelihoods need every latent site in "
            "the plate, or a point_estimates() method returning values for the global ones"
        )
    width = max(info.data_dim, info.latent_width, getattr(prog.module, "eval_width", 0) or 0)
    return _Evaluation(prog, info, fixed, width=width), X


def _chunks(n: int, k: int, width: int, max_elements: int) -> tuple[int, int]:
    """Rows per chunk and samples per chunk so that k_chunk * n_chunk * width <= max."""
    k_chunk = max(1, min(k, max_elements // max(width, 1)))
    n_chunk = max(1, min(n, max_elements // (k_chunk * max(width, 1))))
    return n_chunk, k_chunk


def _malloc_trim():
    """``malloc_trim(0)`` on glibc, else a no-op (returns the callable or None)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


class _EvalMode:
    """The program's module in eval mode, gradients off, restored afterwards."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training if self.module is not None else None
        if self.module is not None:
            self.module.eval()
        return self

    def __exit__(self, *exc):
        if self.module is not None:
            self.module.train(self.was_training)


def _weight_chunks(ev: _Evaluation, X, num_samples, max_elements, guide=None):
    """Yield, for each chunk of data points, the list of (k_chunk, n_chunk) log-weight blocks."""
    n_chunk, k_chunk = _chunks(X.shape[0], num_samples, ev.width, max_elements)
    with _EvalMode(ev.module), torch.no_grad():
        for i in range(0, X.shape[0], n_chunk):
            x = X[i : i + n_chunk]
            yield [
                _log_weights(ev, x, min(k_chunk, num_samples - j), guide=guide)
                for j in range(0, num_samples, k_chunk)
            ]
            if _TRIM is not None and x.device.type == "cpu":
                # glibc's dynamic mmap threshold keeps the freed chunk-sized buffers in
                # the heap, fragmented: without this, peak memory grew ~0.6 MB per point
                # (3.7 GiB for K=5000 on 10,000 MNIST images); with it, it stays flat.
                _TRIM(0)


def elbo(program, X, num_samples: int = 1, *, max_elements: int = _DEFAULT_MAX_ELEMENTS):
    """Monte Carlo ELBO of each data point, ``mean_k log w_k``.

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair
        (see :mod:`ppvae.program`).
    X : array-like, shape (N, D)
    num_samples : int
        Guide samples per point.
    max_elements : int
        Bound on the floats in one chunk of (K, N, max(D, k)) work.

    Returns
    -------
    torch.Tensor, shape (N,)
        ELBO estimates in nats, on the CPU.
    """
    ev, X = _prepare(program, X, num_samples)
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
    ev, X = _prepare(program, X, num_samples)
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
    import warnings

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
    if psis and not isinstance(num_samples, bool) and int(num_samples) == num_samples:
        if num_samples < PSIS_MIN_SAMPLES:
            raise InputError(
                f"num_samples={num_samples} is too few for PSIS, which fits a Pareto tail to "
                f"the largest weights: use at least {PSIS_MIN_SAMPLES}, or psis=False"
            )
    ev, X = _prepare(program, X, num_samples)
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
    return LikelihoodEstimate(
        log_px=torch.cat(est).float(),
        mc_se=torch.cat(se).float(),
        khat=torch.cat(khats).float() if psis else None,
        num_samples=int(num_samples),
        data_dim=ev.info.data_dim,
    )


def _split_latents(z: torch.Tensor, sites: dict) -> dict[str, torch.Tensor]:
    """Flat latent vectors (..., n, L) -> {site: (..., n, *event_shape)}."""
    out, offset = {}, 0
    for name, shape in sites.items():
        size = math.prod(shape)
        out[name] = z[..., offset : offset + size].reshape(*z.shape[:-1], *shape)
        offset += size
    return out


class _LocalGaussianGuide:
    """A non-amortized guide: one diagonal Gaussian q_n per data point (fixed rows of X) over
    the program's local latent sites, flattened into one vector of width L."""

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, sites: dict):
        self.loc, self.log_scale, self.sites = loc, log_scale, sites

    def __call__(self, x, num_data=None, **kwargs):
        n = x.shape[0]
        locs = _split_latents(self.loc, self.sites)
        scales = _split_latents(self.log_scale.exp(), self.sites)
        with pyro.plate("data", size=n if num_data is None else num_data, subsample_size=n):
            for name, shape in self.sites.items():
                pyro.sample(
                    name, pyro.distributions.Normal(locs[name], scales[name]).to_event(len(shape))
                )


def _log_joint(ev: _Evaluation, x, z: torch.Tensor) -> torch.Tensor:
    """``log p(x, z)`` of the program's model, (K, n), at flat latents z of shape (K, n, L)."""

    def once(values: dict, particles: int | None) -> torch.Tensor:
        model = poutine.condition(ev.program.model, data={**values, **ev.fixed})
        shape = (x.shape[0],) if particles is None else (particles, x.shape[0])
        with pyro.plate("_particles", particles, dim=-2) if particles else _nullcontext():
            tr = poutine.trace(model).get_trace(x)
        return _sum_log_probs(tr, shape, ev.fixed)

    sites = ev.info.local_latents

    def attempt(vectorized: bool) -> torch.Tensor:
        if vectorized:
            return once(_split_latents(z, sites), z.shape[0])
        return torch.stack([once(_split_latents(zk, sites), None) for zk in z])

    return _vectorized(ev, attempt)


def _guide_moments(ev: _Evaluation, X: torch.Tensor, draws: int = 256):
    """Mean and standard deviation of q(z | x) per point over the flat local latents, (N, L).

    Read from the guide's distributions where they define ``mean`` and ``stddev`` (a
    Gaussian guide: exactly its parameters), else estimated from ``draws`` samples.
    """
    with _EvalMode(ev.module), torch.no_grad():
        tr = poutine.trace(ev.program.guide).get_trace(X)
        try:
            parts = [
                (tr.nodes[name]["fn"].mean, tr.nodes[name]["fn"].stddev)
                for name in ev.info.local_latents
            ]
            loc = torch.cat([m.reshape(X.shape[0], -1) for m, _ in parts], -1)
            scale = torch.cat([s.reshape(X.shape[0], -1) for _, s in parts], -1)
        except (NotImplementedError, AttributeError, KeyError):
            with pyro.plate("_particles", draws, dim=-2):
                tr = poutine.trace(ev.program.guide).get_trace(X)
            z = torch.cat(
                [
                    tr.nodes[name]["value"].reshape(draws, X.shape[0], -1)
                    for name in ev.info.local_latents
                ],
                -1,
            )
            loc, scale = z.mean(0), z.std(0)
    return loc, scale.clamp_min(1e-6)


class _Frozen:
    """The program's parameters without gradients, restored afterwards."""

    def __init__(self, ev: _Evaluation):
        params = program_parameters(ev.program, ev.info.param_names)
        self.params = [p for p in params if p.requires_grad]
        self.warnings = warnings.catch_warnings()

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)
        self.warnings.__enter__()
        # pyro.module says so of every frozen parameter: intended here
        warnings.filterwarnings("ignore", message=".*was not registered in the param store")
        return self

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        for p in self.params:
            p.requires_grad_(True)


def _local_elbo(
    ev: _Evaluation,
    x,
    loc,
    log_scale,
    num_samples: int,
    eps=None,
    max_elements: int = _DEFAULT_MAX_ELEMENTS,
) -> torch.Tensor:
    """Reparameterized ELBO of each point under q_n = N(loc_n, exp(log_scale_n)^2), (N,).

    ``mean_k [log p(x, z_k) - log q(z_k)]`` with ``z_k = loc + eps_k * scale``: log q is
    evaluated at the sample rather than replaced by the analytic entropy, so the estimate's
    variance vanishes as q approaches p(z | x) (with the entropy in closed form, the noise of
    log p(x, z) stays, ~0.06 nats per image at K = 1000 on a LinearVAE). The gradient with
    respect to loc and log_scale is the same. Samples are processed in chunks of at most
    ``max_elements`` floats of (K, N, D) work.
    """
    n = x.shape[0]
    k_total = eps.shape[0] if eps is not None else int(num_samples)
    per = max(1, max_elements // max(1, n * ev.width))
    scale = log_scale.exp()
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    total = 0.0
    for j in range(0, k_total, per):
        m = min(per, k_total - j)
        e = eps[j : j + m] if eps is not None else torch.randn(m, *loc.shape, device=loc.device)
        z = loc + e * scale
        log_q = (-0.5 * e.pow(2) - log_scale - half_log_2pi).sum(-1)
        total = total + (_log_joint(ev, x, z) - log_q).sum(0)
    return total / k_total


def inference_gaps(
    program,
    X,
    *,
    num_samples: int = 1000,
    steps: int = 500,
    lr: float = 0.05,
    elbo_samples: int = 1000,
    train_samples: int = 8,
    max_elements: int = _DEFAULT_MAX_ELEMENTS,
) -> dict:
    """Approximation and amortization gaps (Cremer et al. 2018), per data point and on average.

    * ``elbo_amortized``: the ELBO of the program's guide q(z | x);
    * ``elbo_optimal``: the ELBO of the best diagonal Gaussian over the local latent sites
      found for each point separately, by optimizing local parameters (loc_n, log_scale_n),
      started at the guide's mean and standard deviation, with Adam on a reparameterized ELBO
      (the variational-EM E-step, non-amortized);
    * ``log_px``: exact for a linear-Gaussian model, else the importance-weighted estimate
      with ``num_samples`` draws from the optimized local q;
    * ``approximation_gap = log_px - elbo_optimal`` (the cost of the Gaussian family; a bound
      where ``log_px`` is itself an estimate) and ``amortization_gap = elbo_optimal -
      elbo_amortized`` (the cost of sharing an encoder).

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair
        (see :mod:`ppvae.program`).
    X : array-like, shape (N, D)
    num_samples : int
        Importance samples per point for log p(x).
    steps, lr, train_samples : int, float, int
        Adam steps, learning rate and samples per step of the local optimization.
    elbo_samples : int
        Samples per point for the reported ELBOs.
    max_elements : int
        Bound on the floats in one chunk of the importance-sampling work.

    Returns
    -------
    dict
        Per-point tensors (N,) under ``log_px``, ``elbo_amortized``, ``elbo_optimal``,
        ``approximation_gap``, ``amortization_gap``, and their means under ``mean``, in nats.
    """
    ev, X = _prepare(program, X, num_samples)
    sites = ev.info.local_latents
    with _Frozen(ev), _EvalMode(ev.module):
        loc0, scale0 = _guide_moments(ev, X)
        with torch.no_grad():
            amortized = elbo(ev.program, X, elbo_samples, max_elements=max_elements).to(X.device)
        loc = loc0.detach().clone().requires_grad_(True)
        log_scale = scale0.detach().log().clone().requires_grad_(True)
        opt = torch.optim.Adam([loc, log_scale], lr=lr)
        for _ in range(int(steps)):
            loss = -_local_elbo(ev, X, loc, log_scale, train_samples).sum()
            # only the local parameters: the program's own gradients stay untouched
            loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
            opt.step()
        with torch.no_grad():
            # choose per point between the optimized and the guide's Gaussian with common
            # random numbers, then estimate the chosen one's ELBO afresh (no selection bias)
            eps = torch.randn(elbo_samples, *loc.shape, device=loc.device)
            better = _local_elbo(
                ev, X, loc, log_scale, 0, eps, max_elements=max_elements
            ) >= _local_elbo(ev, X, loc0, scale0.log(), 0, eps, max_elements=max_elements)
            loc_best = torch.where(better[:, None], loc, loc0)
            ls_best = torch.where(better[:, None], log_scale, scale0.log())
            optimal = _local_elbo(
                ev, X, loc_best, ls_best, elbo_samples, max_elements=max_elements
            )
    if isinstance(ev.module, LinearVAE):
        log_px = exact_log_likelihood(ev.module, X.cpu().double()).float()
    else:
        # one call per chunk of rows, each with the local guide of exactly those rows
        rows, _ = _chunks(X.shape[0], num_samples, ev.width, max_elements)
        log_px = torch.cat(
            [
                log_likelihood(
                    ev.program,
                    X[i : i + rows],
                    num_samples,
                    guide=_LocalGaussianGuide(
                        loc_best[i : i + rows], ls_best[i : i + rows], sites
                    ),
                    max_elements=max_elements,
                )
                for i in range(0, X.shape[0], rows)
            ]
        )
    out = {
        "log_px": log_px.cpu(),
        "elbo_amortized": amortized.cpu(),
        "elbo_optimal": optimal.cpu(),
    }
    out["approximation_gap"] = out["log_px"] - out["elbo_optimal"]
    out["amortization_gap"] = out["elbo_optimal"] - out["elbo_amortized"]
    out["mean"] = {key: float(v.mean()) for key, v in out.items()}
    return out


def nuts_posterior(
    program,
    X,
    *,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 2,
    seed: int = 0,
) -> list[dict]:
    """Gold-standard posteriors p(z | x) by NUTS for a few points, next to the guide's q(z | x).

    For each row x of X, ``pyro.infer.MCMC`` with ``NUTS`` samples the local latent sites of
    the program's model conditioned on x, its parameters fixed (global latents at the
    program's point estimates), running ``num_chains`` chains one after another from
    different seeds. ArviZ summarizes them (r-hat, bulk and tail ESS). Several latent sites
    are flattened into one vector, in the order the model samples them.

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair
        (see :mod:`ppvae.program`).
    X : array-like, shape (M, D)
        A few data points (each costs one MCMC run per chain).
    num_samples, warmup_steps, num_chains : int
        Per chain.
    seed : int

    Returns
    -------
    list of dict, one per point
        ``samples`` (chains, draws, L) tensor, ``nuts_mean``/``nuts_var`` (L,),
        ``q_mean``/``q_var`` (L,) of the guide (its own moments where it defines them, else
        estimated from draws), ``r_hat_max``, ``ess_bulk_min``, ``ess_tail_min``, and
        ``summary`` (the ArviZ summary as a dict of columns).
    """
    import arviz as az
    from pyro.infer import MCMC, NUTS

    ev, X = _prepare(program, X, 1)
    model = poutine.condition(ev.program.model, data=ev.fixed) if ev.fixed else ev.program.model
    sites = list(ev.info.local_latents)
    results = []
    with _Frozen(ev), _EvalMode(ev.module):
        for i in range(X.shape[0]):
            x = X[i : i + 1]
            chains = []
            for c in range(num_chains):
                pyro.set_rng_seed(seed + 1000 * i + c)
                mcmc = MCMC(
                    NUTS(model),
                    num_samples=num_samples,
                    warmup_steps=warmup_steps,
                    disable_progbar=True,
                )
                mcmc.run(x)
                draws = mcmc.get_samples()
                chains.append(
                    torch.cat([draws[s].detach().reshape(num_samples, -1) for s in sites], -1).cpu()
                )
            samples = torch.stack(chains)  # (chains, draws, L)
            idata = az.from_dict(posterior={"z": samples.numpy()})
            summary = az.summary(idata, kind="all")
            q_loc, q_scale = _guide_moments(ev, x)
            flat = samples.reshape(-1, samples.shape[-1])
            results.append(
                {
                    "samples": samples,
                    "nuts_mean": flat.mean(0),
                    "nuts_var": flat.var(0),
                    "q_mean": q_loc[0].cpu(),
                    "q_var": (q_scale[0] ** 2).cpu(),
                    "r_hat_max": float(summary["r_hat"].max()),
                    "ess_bulk_min": float(summary["ess_bulk"].min()),
                    "ess_tail_min": float(summary["ess_tail"].min()),
                    "summary": summary.to_dict(orient="list"),
                }
            )
    return results


# ---------------------------------------------------------------------- exact, linear models
def linear_gaussian_params(model) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(mean, W, s2)`` in float64 of a linear-Gaussian model: a fitted PPCA or a LinearVAE.

    Raises
    ------
    ValueError
        For any other model (a nonlinear VAE has no closed-form marginal).
    """
    if isinstance(model, PPCA):
        model._check_fitted()
        return model.mean_.double().cpu(), model.W_.double().cpu(), float(model.noise_variance_)
    if isinstance(model, LinearVAE):
        with torch.no_grad():
            return (
                model.b.detach().double().cpu(),
                model.W.detach().double().cpu(),
                float(model.noise_variance),
            )
    raise InputError(
        f"expected a PPCA or a LinearVAE (a linear-Gaussian model), got {type(model).__name__}; "
        "exact quantities exist only for linear-Gaussian models"
    )


def _as_ppca(model) -> PPCA:
    mean, W, s2 = linear_gaussian_params(model)
    return PPCA.from_params(mean, W, s2)


def exact_log_likelihood(model, X) -> torch.Tensor:
    """Exact log p(x) of a linear-Gaussian model, whose marginal is ``N(b, W W^T + s2 I)``.

    Parameters
    ----------
    model : LinearVAE or PPCA
    X : array-like, shape (N, D)

    Returns
    -------
    torch.Tensor, shape (N,), float64
        Log-densities in nats.
    """
    X = check_data(X, name="X", dtype=torch.float64)
    return _as_ppca(model).log_prob(X.cpu())


def elbo_decomposition(
    model, X, q_loc, q_scale=None, *, q_scale_tril=None
) -> dict[str, torch.Tensor]:
    """Closed-form ``log p(x) = ELBO(q) + KL(q(z) || p(z | x))`` for a Gaussian q.

    Parameters
    ----------
    model : LinearVAE or PPCA
        A linear-Gaussian model ``z ~ N(0, I)``, ``x | z ~ N(W z + b, s2 I)``.
    X : array-like, shape (N, D)
    q_loc : tensor, shape (N, k)
        Means of a Gaussian q(z) per data point.
    q_scale : tensor, shape (N, k) or (k,)
        Its standard deviations, for a diagonal q.
    q_scale_tril : tensor, shape (N, k, k) or (k, k), keyword-only
        Instead of ``q_scale``: lower-triangular scales L of a full-rank q, covariance L L^T.

    Returns
    -------
    dict of float64 tensors of shape (N,), in nats
        ``log_px`` (exact), ``elbo`` = E_q[log p(x | z)] - KL(q || p(z)), ``expected_log_lik``,
        ``kl_to_prior``, and ``kl_to_posterior`` = KL(q || p(z | x)).
    """
    mean, W, s2 = linear_gaussian_params(model)
    X = check_data(X, name="X", data_dim=W.shape[0], dtype=torch.float64).cpu()
    m = torch.as_tensor(q_loc).detach().double().cpu()
    n, k = m.shape
    if n != X.shape[0] or k != W.shape[1]:
        raise InputError(f"q_loc has shape {tuple(m.shape)}; expected ({X.shape[0]}, {W.shape[1]})")
    if (q_scale is None) == (q_scale_tril is None):
        raise InputError("give exactly one of q_scale (diagonal) and q_scale_tril (full rank)")
    if q_scale is not None:
        s = torch.as_tensor(q_scale).detach().double().cpu().expand_as(m)
        if not bool((s > 0).all()):
            raise InputError("q_scale must be positive")
        L = torch.diag_embed(s)
    else:
        L = torch.as_tensor(q_scale_tril).detach().double().cpu().expand(n, k, k)
        if not bool((L.diagonal(dim1=-2, dim2=-1) > 0).all()):
            raise InputError("q_scale_tril must have a positive diagonal")
    S = L @ L.transpose(-1, -2)  # q's covariance, (N, k, k)
    logdet_S = 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    d = W.shape[0]
    resid = X - mean - m @ W.T
    # E_q ||x - b - W z||^2 = ||x - b - W m||^2 + tr(W S W^T)
    expected_log_lik = -0.5 * (
        d * math.log(2 * math.pi * s2)
        + ((resid * resid).sum(1) + (S * (W.T @ W)).sum((-2, -1))) / s2
    )
    trace_S = S.diagonal(dim1=-2, dim2=-1).sum(-1)
    kl_prior = 0.5 * (trace_S + (m * m).sum(1) - k - logdet_S)
    post = _as_ppca(model).posterior(X)
    P = torch.linalg.inv(post.covariance_matrix[0])  # posterior precision, (k, k)
    diff = post.mean - m
    logdet_post = torch.linalg.slogdet(post.covariance_matrix[0])[1]
    kl_post = 0.5 * (
        (S * P).sum((-2, -1)) + ((diff @ P) * diff).sum(1) - k + logdet_post - logdet_S
    )
    elbo_ = expected_log_lik - kl_prior
    return {
        "log_px": _as_ppca(model).log_prob(X),
        "elbo": elbo_,
        "expected_log_lik": expected_log_lik,
        "kl_to_prior": kl_prior,
        "kl_to_posterior": kl_post,
    }


def _principal_angles_deg(A: torch.Tensor, B: torch.Tensor) -> list[float]:
    qa = torch.linalg.qr(A)[0]
    qb = torch.linalg.qr(B)[0]
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).tolist()


def compare_to_ppca(linear_vae: LinearVAE, ppca: PPCA, X, kl_threshold: float = 0.01) -> dict:
    """Check a trained linear VAE against the PPCA maximum-likelihood solution.

    Parameters
    ----------
    linear_vae : LinearVAE
    ppca : PPCA
        Fitted (by maximum likelihood) to the same data.
    X : array-like, shape (N, D)
        The data both were fitted to.
    kl_threshold : float
        A latent dimension is *active* when its mean KL(q(z_j | x) || p(z_j)) exceeds this
        (nats).

    Returns
    -------
    dict
        ``loglik_gap`` (PPCA MLE minus the VAE's exact log-likelihood, nats/sample),
        ``elbo_gap`` (the VAE's exact log-likelihood minus its closed-form ELBO, nats/sample),
        ``noise_variance_rel_error``, ``covariance_rel_error``
        (``||W W^T - W_ml W_ml^T||_F / ||W_ml W_ml^T||_F``), ``principal_angles_deg``
        (between the VAE's active columns of W and the PPCA subspace), ``active_units``,
        ``kl_per_dim`` and the log-likelihoods themselves.
    """
    if not isinstance(linear_vae, LinearVAE):
        raise InputError(
            f"compare_to_ppca needs a LinearVAE, got {type(linear_vae).__name__}; "
            "a nonlinear VAE has no closed-form likelihood to compare"
        )
    if not isinstance(ppca, PPCA):
        raise InputError(f"expected a fitted PPCA, got {type(ppca).__name__}")
    ppca._check_fitted()
    if linear_vae.data_dim != ppca.n_features_in_:
        raise InputError(
            f"data_dim mismatch: the LinearVAE has D={linear_vae.data_dim}, "
            f"the PPCA D={ppca.n_features_in_}"
        )
    X = check_data(X, name="X", data_dim=linear_vae.data_dim, dtype=torch.float64).cpu()
    _, W, s2 = linear_gaussian_params(linear_vae)
    _, W_ml, s2_ml = linear_gaussian_params(ppca)
    with torch.no_grad():
        param = next(linear_vae.parameters())
        x = X.to(device=param.device, dtype=param.dtype)
        loc, scale = linear_vae.encode(x)  # scale: per-dimension standard deviations
        if linear_vae.encoder.full_rank:
            L = linear_vae.guide_params()[2]
            parts = elbo_decomposition(linear_vae, X, loc, q_scale_tril=L)
        else:
            parts = elbo_decomposition(linear_vae, X, loc, scale)
    ll_ml = float(ppca.log_prob(X).mean())
    ll = float(parts["log_px"].mean())
    m, s = loc.double().cpu(), scale.double().cpu()
    kl_dim = (0.5 * (s * s + m * m - 1.0 - 2.0 * s.log())).mean(0)
    active = kl_dim > kl_threshold
    C, C_ml = W @ W.T, W_ml @ W_ml.T
    angles = _principal_angles_deg(W[:, active], W_ml) if int(active.sum()) > 0 else []
    return {
        "loglik_gap": ll_ml - ll,
        "elbo_gap": ll - float(parts["elbo"].mean()),
        "noise_variance_rel_error": abs(s2 - s2_ml) / s2_ml,
        "covariance_rel_error": float(torch.linalg.norm(C - C_ml) / torch.linalg.norm(C_ml)),
        "principal_angles_deg": angles,
        "active_units": int(active.sum()),
        "kl_per_dim": kl_dim.tolist(),
        "ppca_log_likelihood": ll_ml,
        "vae_log_likelihood": ll,
        "vae_elbo": float(parts["elbo"].mean()),
    }
