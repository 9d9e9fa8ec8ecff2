"""Approximation and amortization gaps (Cremer et al. 2018)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..vae import LinearVAE
from ._common import (
    _DEFAULT_MAX_ELEMENTS,
    _chunks,
    _count,
    _EvalMode,
    _Evaluation,
    _Frozen,
    _guide_moments,
    _is_identity,
    _log_joint,
    _prepare,
    _split_latents,
)
from .ais import ais_log_likelihood
from .importance import elbo, log_likelihood
from .linear import exact_log_likelihood


class _LocalGaussianGuide:
    """A non-amortized guide: one diagonal Gaussian q_n per data point (fixed rows of X) over
    the program's local latents in unconstrained coordinates (a flat vector of width U),
    mapped onto each site's support (:class:`~ppvae.evaluate._common.LatentSpace`)."""

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, space, plate="data"):
        self.loc, self.log_scale, self.space, self.plate = loc, log_scale, space, plate

    def __call__(self, x, num_data=None, **kwargs):
        n = x.shape[0]
        locs = _split_latents(self.loc, self.space.u_shapes)
        scales = _split_latents(self.log_scale.exp(), self.space.u_shapes)
        with pyro.plate(self.plate, size=n if num_data is None else num_data, subsample_size=n):
            for name, shape in self.space.u_shapes.items():
                q = dist.Normal(locs[name], scales[name]).to_event(len(shape))
                transform = self.space.transforms[name]
                if not _is_identity(transform):
                    q = dist.TransformedDistribution(q, [transform])
                pyro.sample(name, q)


def _plug(ev: _Evaluation):
    """The plug-in values of the global latents the gaps condition on throughout, or None."""
    return ev.fixed if ev.info.global_latents else None


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


class _LocalFamilyGuide:
    """A non-amortized guide in a ppvae VAE's own family: ``q.distribution(out_n)`` with a free
    encoder output ``out_n`` per data point (fixed rows of X)."""

    def __init__(self, vae, raw: list, positive: list):
        self.vae, self.raw, self.positive = vae, raw, positive

    def out(self, rows=slice(None)):
        return tuple(
            r[rows].exp() if pos else r[rows]
            for r, pos in zip(self.raw, self.positive, strict=True)
        )

    def __call__(self, x, num_data=None, **kwargs):
        n = x.shape[0]
        with pyro.plate("data", size=n if num_data is None else num_data, subsample_size=n):
            pyro.sample("z", self.vae.q.distribution(self.out()))


def _family_elbo(ev: _Evaluation, x, local: _LocalFamilyGuide, num_samples: int, chunk: int):
    """Reparameterized ELBO of each point under its local member of the guide's family, (n,)."""
    total = 0.0
    for j in range(0, num_samples, chunk):
        m = min(chunk, num_samples - j)
        q = local.vae.q.distribution(local.out())
        z = q.rsample((m,))
        total = total + (_log_joint(ev, x, z) - q.log_prob(z)).sum(0)
    return total / num_samples


def _steps(steps: int, progress: bool | None, what: str):
    """``range(steps)`` with a progress bar (None: only on a terminal)."""
    disable = None if progress is None else not progress
    return tqdm(range(int(steps)), desc=what, unit="step", disable=disable, leave=False)


def _optimize_family(
    ev: _Evaluation, X, *, steps: int, lr: float, train_samples: int, progress=False
):
    """Per-point encoder outputs maximizing the ELBO within the guide's family, from the
    encoder's own; returns the local guide and its starting copy."""
    vae = ev.module
    if not (ev.program.is_ppvae and hasattr(vae, "q") and hasattr(vae, "encoder_output")):
        raise InputError(
            "family='guide' optimizes the encoder's output per point, which needs a ppvae VAE "
            f"(its Guide's distribution of that output); got {type(vae).__name__}: use "
            "family='gaussian'"
        )
    with torch.no_grad():
        out = vae.encoder_output(X)
    out = out if isinstance(out, tuple) else (out,)
    # tensors positive at the start (scales) are optimized on the log scale
    positive = [bool((t > 0).all()) and t.dim() == 2 for t in out]
    raw = [
        (t.log() if pos else t).detach().clone().requires_grad_(True)
        for t, pos in zip(out, positive, strict=True)
    ]
    start = _LocalFamilyGuide(vae, [r.detach().clone() for r in raw], positive)
    local = _LocalFamilyGuide(vae, raw, positive)
    opt = torch.optim.Adam(raw, lr=lr)
    for _ in _steps(steps, progress, "gaps: per-point guides"):
        loss = -_family_elbo(ev, X, local, train_samples, train_samples).sum()
        grads = torch.autograd.grad(loss, raw)
        for r, g in zip(raw, grads, strict=True):
            r.grad = g
        opt.step()
    return local, start


def inference_gaps(
    program,
    X,
    *,
    num_samples: int = 1000,
    steps: int = 500,
    lr: float = 0.05,
    elbo_samples: int = 1000,
    train_samples: int = 8,
    family: str = "gaussian",
    max_elements: int = _DEFAULT_MAX_ELEMENTS,
    point_estimates=None,
    progress: bool | None = False,
    ais: dict | None = None,
) -> dict:
    """Approximation and amortization gaps (Cremer et al. 2018), per data point and on average.

    * ``elbo_amortized``: the ELBO of the program's guide q(z | x);
    * ``elbo_optimal``: the ELBO of the best diagonal Gaussian over the local latent sites
      found for each point separately, by optimizing local parameters (loc_n, log_scale_n),
      started at the guide's mean and standard deviation, with Adam on a reparameterized ELBO
      (the variational-EM E-step, non-amortized);
    * ``log_px``: exact for a linear-Gaussian model, else the importance-weighted estimate
      with ``num_samples`` draws from the optimized local q;
    * ``approximation_gap = log_px - elbo_optimal`` (the cost of the family) and
      ``amortization_gap = elbo_optimal - elbo_amortized`` (the cost of sharing an encoder).

    Both gaps are estimates, not bounds. ``log_px`` from importance sampling is a stochastic
    lower bound, so the approximation gap computed from it is biased low by IW's looseness;
    ``elbo_optimal`` is the best member Adam found in ``steps`` steps, not the family's
    optimum, so the approximation gap is biased high and the amortization gap low by what the
    optimization left. With ``ais=``, annealed importance sampling (:func:`ais_log_likelihood`)
    gives a second, typically tighter, estimate of log p(x) on the same points, and with it
    ``approximation_gap_ais``.

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
    family : {"gaussian", "guide"}
        The family whose best member per point defines ``elbo_optimal``: a diagonal Gaussian
        over the local latents (any program), or the guide's own family (ppvae VAEs), reached
        by optimizing the encoder's output per point with the guide's other parameters (an
        IAF's flow weights) fixed: the approximation gap of a flow guide, as an upper bound
        (the flow weights stay the amortized ones).
    max_elements : int
        Bound on the floats in one chunk of the importance-sampling work.

    point_estimates : True or dict, optional
        Plug-in values of the global latents (sites outside the data plate), which this
        estimator conditions on: a dict ``{site: value}``, or True (and by default) the
        module's ``point_estimates()``; a program with global latents and neither is refused.
    progress : bool or None
        A progress bar over the optimizer's steps on stderr (None: only on a terminal).
    ais : dict, optional
        Keyword arguments of :func:`ais_log_likelihood` (``num_steps``, ``num_chains``,
        ``adapt``, ``step_size``, ``seed``, ...): run AIS on X as well and report the
        approximation gap against it. ``{}`` takes AIS's defaults.

    Returns
    -------
    dict
        Per-point tensors (N,) under ``log_px``, ``elbo_amortized``, ``elbo_optimal``,
        ``approximation_gap``, ``amortization_gap``, and their means under ``mean``, in nats.
        With ``ais``, also ``log_px_ais`` (AIS's estimate), ``log_px_ais_mc_se`` (its Monte
        Carlo standard error over chains) and ``approximation_gap_ais = log_px_ais -
        elbo_optimal``, (N,) each, with their means.
    """
    if family not in ("gaussian", "guide"):
        raise InputError(f"family must be 'gaussian' or 'guide', got {family!r}")
    for name, value in (("steps", steps), ("elbo_samples", elbo_samples)):
        _count(value, name)
    _count(train_samples, "train_samples")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise InputError(f"lr must be a positive number, got {lr!r}")
    ev, X = _prepare(
        program, X, num_samples, any_rows="inference_gaps", point_estimates=point_estimates
    )
    if ev.rows_per_call is not None and X.shape[0] > ev.rows_per_call:
        raise InputError(
            f"X: inference_gaps optimizes its {X.shape[0]} rows in one call of the program, "
            f"whose plate {ev.program.data_plate!r} subsamples {ev.rows_per_call} rows: pass "
            f"at most {ev.rows_per_call} rows"
        )
    plate = ev.program.data_plate
    if ais is not None and not isinstance(ais, dict):
        raise InputError(f"ais must be a dict of ais_log_likelihood's keywords, got {ais!r}")
    if family == "guide":
        return _gaps_in_family(
            ev,
            X,
            ais=ais,
            num_samples=num_samples,
            steps=steps,
            lr=lr,
            elbo_samples=elbo_samples,
            train_samples=train_samples,
            max_elements=max_elements,
            progress=progress,
        )
    ev.require_continuous("inference_gaps")
    sites = ev.space
    with _Frozen(ev), _EvalMode(ev.module):
        loc0, scale0 = _guide_moments(ev, X, unconstrained=True)
        with torch.no_grad():
            amortized = elbo(
                ev.program, X, elbo_samples, max_elements=max_elements, point_estimates=_plug(ev)
            ).to(X.device)
        loc = loc0.detach().clone().requires_grad_(True)
        log_scale = scale0.detach().log().clone().requires_grad_(True)
        opt = torch.optim.Adam([loc, log_scale], lr=lr)
        for _ in _steps(steps, progress, "gaps: per-point Gaussians"):
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
            optimal = _local_elbo(ev, X, loc_best, ls_best, elbo_samples, max_elements=max_elements)
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
                        loc_best[i : i + rows], ls_best[i : i + rows], sites, plate
                    ),
                    max_elements=max_elements,
                    point_estimates=_plug(ev),
                )
                for i in range(0, X.shape[0], rows)
            ]
        )
    return _gaps_out(log_px, amortized, optimal, _ais_estimate(ev, X, ais))


def _gaps_in_family(
    ev: _Evaluation,
    X,
    *,
    ais,
    num_samples,
    steps,
    lr,
    elbo_samples,
    train_samples,
    max_elements,
    progress=False,
) -> dict:
    """:func:`inference_gaps` with ``family="guide"``."""
    chunk = max(1, max_elements // max(1, X.shape[0] * ev.width))
    with _Frozen(ev), _EvalMode(ev.module):
        with torch.no_grad():
            amortized = elbo(
                ev.program, X, elbo_samples, max_elements=max_elements, point_estimates=_plug(ev)
            ).to(X.device)
        local, start = _optimize_family(
            ev, X, steps=steps, lr=lr, train_samples=train_samples, progress=progress
        )
        with torch.no_grad():
            # per point, the better of the optimized and the starting member (compared on
            # common random numbers), then its ELBO estimated afresh (no selection bias)
            state = torch.random.get_rng_state()
            e_local = _family_elbo(ev, X, local, elbo_samples, chunk)
            torch.random.set_rng_state(state)
            e_start = _family_elbo(ev, X, start, elbo_samples, chunk)
            better = e_local >= e_start
            raw = [
                torch.where(better.reshape(-1, *[1] * (a.dim() - 1)), a.detach(), b)
                for a, b in zip(local.raw, start.raw, strict=True)
            ]
            best = _LocalFamilyGuide(local.vae, raw, local.positive)
            optimal = _family_elbo(ev, X, best, elbo_samples, chunk)
    if isinstance(ev.module, LinearVAE):
        log_px = exact_log_likelihood(ev.module, X.cpu().double()).float()
    else:
        rows, _ = _chunks(X.shape[0], num_samples, ev.width, max_elements)
        log_px = torch.cat(
            [
                log_likelihood(
                    ev.program,
                    X[i : i + rows],
                    num_samples,
                    guide=_LocalFamilyGuide(
                        best.vae, [r[i : i + rows] for r in best.raw], best.positive
                    ),
                    max_elements=max_elements,
                )
                for i in range(0, X.shape[0], rows)
            ]
        )
    return _gaps_out(log_px, amortized, optimal, _ais_estimate(ev, X, ais))


def _ais_estimate(ev: _Evaluation, X: torch.Tensor, ais: dict | None):
    """AIS on X with the keyword arguments ``ais`` (None: not run)."""
    if ais is None:
        return None
    return ais_log_likelihood(ev.program, X, point_estimates=_plug(ev), **ais)


def _gaps_out(log_px, amortized, optimal, ais_est) -> dict:
    """The gaps' result: per-point tensors (N,) and their means, nats."""
    out = {"log_px": log_px.cpu(), "elbo_amortized": amortized.cpu(), "elbo_optimal": optimal.cpu()}
    out["approximation_gap"] = out["log_px"] - out["elbo_optimal"]
    out["amortization_gap"] = out["elbo_optimal"] - out["elbo_amortized"]
    if ais_est is not None:
        out["log_px_ais"] = ais_est.log_px.cpu()
        out["log_px_ais_mc_se"] = ais_est.mc_se.cpu()
        out["approximation_gap_ais"] = out["log_px_ais"] - out["elbo_optimal"]
    out["mean"] = {key: float(v.mean()) for key, v in out.items()}
    return out
