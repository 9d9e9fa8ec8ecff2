"""Annealed importance sampling (Neal 2001) and bidirectional Monte Carlo (Grosse et al. 2015).

For a data point x, AIS moves C chains through intermediate densities

    f_b(z) = q0(z) ** (1 - b) * p(x, z) ** b,    0 = b_0 < b_1 < ... < b_T = 1,

from a normalized start q0 (the guide q(z | x), or the prior p(z)) to the unnormalized
posterior p(x, z), whose normalizer is p(x). Each chain carries a log weight

    log w = sum_t (b_t - b_{t-1}) [log p(x, z_{t-1}) - log q0(z_{t-1})],

where z_{t-1} is the chain's state before the transition that leaves f_{b_t} invariant (here
Hamiltonian Monte Carlo). E[w] = p(x), so ``log mean_c w_c`` is a stochastic lower bound on
log p(x) (Jensen) that tightens as T grows, whatever the proposal's quality; with T = 0 it is
the importance-weighted bound with C samples.

Run backwards from an exact posterior sample (b from 1 down to 0), the same recursion gives an
unbiased estimate of 1 / p(x), so ``-log mean_c w_c`` is a stochastic *upper* bound. Exact
posterior samples exist for data simulated from the model, (z, x) ~ p(z) p(x | z): that is
BDMC, and the gap between the two bounds bounds the error of forward AIS on such data.

HMC runs batched over chains and data points, each (chain, point) accepting or rejecting on its
own, with a diagonal mass matrix from the guide's per-point standard deviation and one step
size per data point adapted toward a target acceptance rate after every transition (Wu et al.
2017 adapt it too). Adapting on
the chains' own history makes the transitions depend on the past, so the estimate is
approximately, not exactly, unbiased; ``adapt=False`` keeps the step size fixed and the
guarantee exact.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from ..errors import InputError, ProgramError
from ..vae import known_static
from ._common import (
    _EvalMode,
    _Evaluation,
    _Frozen,
    _guide_moments,
    _nullcontext,
    _prepare,
    _sum_log_probs,
    _vectorized,
)
from .importance import LikelihoodEstimate

__all__ = ["AISEstimate", "BDMCResult", "ais_log_likelihood", "bdmc", "sigmoid_schedule"]

_AIS_MAX_ELEMENTS = 2**22  # floats of (C, n, width) per chunk; autograd holds a few times this
_STARTS = ("guide", "prior")
_ADAPT_RATE = 0.5  # log step-size change per unit of acceptance-rate error, per transition


def sigmoid_schedule(num_steps: int, delta: float = 4.0) -> torch.Tensor:
    """Inverse temperatures b_0 = 0 < ... < b_T = 1 spaced by a rescaled sigmoid.

    ``b_t`` is ``sigmoid(delta (2 t / T - 1))`` mapped affinely onto [0, 1] (Grosse et al.
    2015): denser at both ends, where the intermediate densities change fastest in log space.

    Returns
    -------
    torch.Tensor, shape (T + 1,), float64
    """
    if num_steps < 1:
        raise InputError(f"num_steps must be a positive integer, got {num_steps!r}")
    s = torch.sigmoid(delta * torch.linspace(-1.0, 1.0, num_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class AISEstimate(LikelihoodEstimate):
    """An AIS estimate of log p(x) (nats), the same kind of result as
    :func:`~ppvae.evaluate.estimate_log_likelihood` with chains in place of samples.

    Attributes
    ----------
    log_px : torch.Tensor, shape (N,)
        ``log mean_c w_c``: a stochastic lower bound on log p(x).
    mc_se : torch.Tensor, shape (N,)
        Monte Carlo standard error of ``log_px`` over the C chains (delta method).
    khat : None
        (PSIS is not applied to C chain weights.)
    num_samples : int
        C, the number of chains.
    ess : torch.Tensor, shape (N,)
        Effective sample size of the final weights, ``(sum w)^2 / sum w^2``, in [1, C].
    acceptance : torch.Tensor, shape (N,)
        Mean HMC acceptance probability over chains and transitions.
    step_size : torch.Tensor, shape (N,)
        Final leapfrog step size per point (in units of the guide's standard deviations).
    num_steps : int
        T, the number of intermediate densities.
    start : str
        ``"guide"`` or ``"prior"``.
    """

    ess: torch.Tensor = None
    acceptance: torch.Tensor = None
    step_size: torch.Tensor = None
    num_steps: int = 0
    start: str = "guide"

    def summary(self) -> dict:
        out = super().summary()
        out.update(
            num_chains=self.num_samples,
            num_steps=self.num_steps,
            start=self.start,
            ess_mean=float(self.ess.mean()),
            acceptance_mean=float(self.acceptance.mean()),
        )
        return out


class _Target:
    """The annealing path of one chunk of points: log p(x, z) and log q0(z) at flat latents."""

    def __init__(self, ev: _Evaluation, x: torch.Tensor, start: str):
        self.ev, self.x, self.start = ev, x, start
        self.sites = ev.info.local_latents
        self.model = (
            poutine.condition(ev.program.model, data=ev.fixed) if ev.fixed else ev.program.model
        )
        guide = ev.program.guide
        self.guide = poutine.block(guide, hide=list(ev.fixed)) if ev.fixed else guide
        self.observed = set(ev.info.observed)
        # ppvae's own static VAE: log p(x, z) and log q0(z) compiled once per shape of z (the
        # Pyro trace runs once, not at every leapfrog step); the same numbers, bit for bit
        self.compile = (
            known_static(ev.program) and not ev.fixed and ev.mask is None and ev.labels is None
        )
        self._compiled: dict = {}

    def _shape(self, particles):
        n = self.x.shape[0]
        return (n,) if particles is None else (particles, n)

    def _plate(self, particles):
        return pyro.plate("_particles", particles, dim=-2) if particles else _nullcontext()

    def _once(self, values: dict, particles: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        shape = self._shape(particles)
        with self._plate(particles):
            tr = poutine.trace(poutine.condition(self.model, data=values)).get_trace(self.x)
        log_joint = _sum_log_probs(tr, shape, self.ev.fixed)
        if self.start == "prior":
            # the latent sites' own terms of the same trace: log p(z)
            log_q0 = _sum_log_probs(tr, shape, set(self.ev.fixed) | self.observed)
        else:
            with self._plate(particles):
                gtr = poutine.trace(poutine.condition(self.guide, data=values)).get_trace(self.x)
            log_q0 = _sum_log_probs(gtr, shape, self.ev.fixed)
        return log_joint, log_q0

    def log_parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(x, z), log q0(z))``, each (C, n), at flat unconstrained latents u of shape
        (C, n, U): both densities over u, with the same ``log |det J|`` added to each
        (:class:`~ppvae.evaluate._common.LatentSpace`), so that their ratio is unchanged."""
        space = self.ev.space

        def at(u, particles):
            values, log_det = space.values(u)
            # a proposal can leave the floats of a support (exp(u) = 0): its density is then
            # -inf or NaN and the transition rejects it, rather than Pyro's validation raising
            with pyro.validation_enabled(False):
                log_joint, log_q0 = self._once(values, particles)
            return log_joint + log_det, log_q0 + log_det

        def attempt(vectorized: bool):
            if vectorized:
                return at(z, z.shape[0])
            parts = [at(zc, None) for zc in z]
            return torch.stack([a for a, _ in parts]), torch.stack([b for _, b in parts])

        if self.compile and self.ev.vectorized:
            fn = self._compiled.get(z.shape)
            if fn is None:
                fn = self._compiled[z.shape] = _traced(lambda u: at(u, u.shape[0]), z)
            if fn is not None:
                return fn(z)
        return _vectorized(self.ev, attempt)

    def sample_start(self, num_chains: int) -> torch.Tensor:
        """C draws from q0 per point, flat and unconstrained, (C, n, U)."""
        fn = self.model if self.start == "prior" else self.guide

        def once(particles):
            with self._plate(particles):
                tr = poutine.trace(fn).get_trace(self.x)
            values = {name: tr.nodes[name]["value"] for name in self.sites}
            return self.ev.space.flat(values, self._shape(particles))

        def attempt(vectorized: bool):
            if vectorized:
                return once(num_chains)
            return torch.stack([once(None) for _ in range(num_chains)])

        with torch.no_grad():
            if self.start == "prior":  # the model itself: its answer holds for log_parts
                return _vectorized(self.ev, attempt).detach()
            try:  # the guide alone says nothing of whether the model vectorizes
                return attempt(self.ev.vectorized is not False).detach()
            except Exception:
                return attempt(False).detach()


def _traced(fn, example: torch.Tensor):
    """``torch.jit.trace`` of ``fn`` at ``example``'s shape, or None where tracing fails (the
    caller then stays eager). The parameters are frozen during AIS, so they enter the graph
    as constants and only z is differentiated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(fn, (example.detach().requires_grad_(True),), check_trace=False)
    except Exception:
        return None


class _State:
    """Chains at one inverse temperature: positions and the log densities there."""

    def __init__(self, target: _Target, z: torch.Tensor, beta: float):
        self.target = target
        self.evaluate(z, beta)

    def evaluate(self, z: torch.Tensor, beta: float) -> None:
        self.z, self.beta = z.detach(), beta
        self.log_joint, self.log_q0, self.grad = _densities(self.target, z, beta)

    @property
    def log_ratio(self) -> torch.Tensor:
        """``log p(x, z) - log q0(z)``, (C, n): what each weight increment multiplies."""
        return self.log_joint - self.log_q0

    def log_f(self, beta: float) -> torch.Tensor:
        return self.log_q0 + beta * self.log_ratio


def _densities(target: _Target, z: torch.Tensor, beta: float):
    """log p(x, z), log q0(z) and the gradient of log f_beta, at z (C, n, L)."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_joint, log_q0 = target.log_parts(z)
        log_f = (1.0 - beta) * log_q0 + beta * log_joint
        (grad,) = torch.autograd.grad(log_f.sum(), z)
    return log_joint.detach(), log_q0.detach(), grad.detach()


def _hmc_transition(
    state: _State, beta: float, step: torch.Tensor, scale: torch.Tensor, leapfrog_steps: int
) -> torch.Tensor:
    """One HMC transition leaving f_beta invariant, accepted per (chain, point).

    The mass matrix is diag(1 / scale^2): momenta p ~ N(0, diag(1 / scale^2)), velocity
    scale^2 p. ``step`` (n,) is in units of ``scale`` (n, L). Updates ``state``; returns the
    (C, n) acceptance probabilities min(1, exp(log alpha)), 0 where the proposal is not finite.
    """
    if state.beta != beta:
        state.evaluate(state.z, beta)
    eps = step[None, :, None]
    var = scale.pow(2)
    p0 = torch.randn_like(state.z) / scale
    z, grad = state.z, state.grad
    p = p0 + 0.5 * eps * grad
    diverged = torch.zeros(z.shape[:-1], dtype=torch.bool, device=z.device)
    for i in range(leapfrog_steps):
        z = z + eps * var * p
        # a trajectory that left the floats (a NaN gradient, an overflow) is rejected; its
        # chains are evaluated at their current state so that nothing non-finite reaches the
        # program (Pyro's validation would refuse it)
        diverged |= ~(torch.isfinite(z).all(-1) & torch.isfinite(p).all(-1))
        z = torch.where(diverged[..., None], state.z, z)
        log_joint, log_q0, grad = _densities(state.target, z, beta)
        if i < leapfrog_steps - 1:
            p = p + eps * grad
    p = p + 0.5 * eps * grad
    log_f_new = (1.0 - beta) * log_q0 + beta * log_joint
    kinetic0 = 0.5 * (var * p0.pow(2)).sum(-1)
    kinetic1 = 0.5 * (var * p.pow(2)).sum(-1)
    log_accept = (log_f_new - kinetic1) - (state.log_f(beta) - kinetic0)
    finite = torch.isfinite(log_accept) & ~diverged
    u = torch.rand_like(log_accept).clamp_min(1e-30)
    log_accept = torch.where(finite, log_accept, torch.full_like(log_accept, -math.inf))
    accept = u.log() < log_accept
    a = accept[..., None]
    state.z = torch.where(a, z.detach(), state.z)
    state.grad = torch.where(a, grad, state.grad)
    state.log_joint = torch.where(accept, log_joint, state.log_joint)
    state.log_q0 = torch.where(accept, log_q0, state.log_q0)
    return log_accept.clamp_max(0.0).exp()


def _anneal(
    target: _Target,
    z0: torch.Tensor,
    betas: torch.Tensor,
    scale: torch.Tensor,
    *,
    leapfrog_steps: int,
    step_size: float,
    target_accept: float,
    adapt: bool,
    bar=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run chains from z0 along ``betas``; return log weights (C, n), final z, acceptance
    rate (n,) and final step sizes (n,).

    Forward (betas rising from 0) the weights estimate p(x); reverse (falling from 1), 1/p(x).
    """
    n = z0.shape[1]
    state = _State(target, z0, float(betas[0]))
    log_w = torch.zeros(z0.shape[:2], dtype=torch.float64, device=z0.device)
    step = torch.full((n,), float(step_size), device=z0.device)
    accepted = torch.zeros(n, dtype=torch.float64, device=z0.device)
    for t in range(1, betas.shape[0]):
        b_prev, b = float(betas[t - 1]), float(betas[t])
        log_w += (b - b_prev) * state.log_ratio.double()
        accept = _hmc_transition(state, b, step, scale, leapfrog_steps).mean(0)
        accepted += accept.double()
        if adapt:
            # the chains' mean acceptance probability moves each point's log step size
            # (a Robbins-Monro step toward target_accept, fast enough for T in the tens
            # while the path changes; Wu et al. 2017's 2% nudges need thousands of steps)
            step = step * torch.exp(_ADAPT_RATE * (accept - target_accept))
        if bar is not None:
            bar.update(1)
    rate = accepted / max(1, betas.shape[0] - 1)
    return log_w, state.z, rate.float(), step


def _check_ais_args(num_steps, num_chains, leapfrog_steps, step_size, target_accept, start):
    for name, value in (
        ("num_steps", num_steps),
        ("num_chains", num_chains),
        ("leapfrog_steps", leapfrog_steps),
    ):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not step_size > 0:
        raise InputError(f"step_size must be positive, got {step_size!r}")
    if not 0 < target_accept < 1:
        raise InputError(f"target_accept must lie in (0, 1), got {target_accept!r}")
    if start not in _STARTS:
        raise InputError(f"start must be one of {_STARTS}, got {start!r}")


def _log_mean_exp_stats(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From (C, n) log weights: log mean w, its delta-method standard error, and the ESS."""
    c = log_w.shape[0]
    lse1 = log_w.logsumexp(0)
    lse2 = (2 * log_w).logsumexp(0)
    ratio = torch.exp(lse2 - 2 * lse1 + math.log(c))  # mean w^2 / (mean w)^2
    se = ((ratio - 1.0).clamp_min(0.0) / c).sqrt()
    ess = torch.exp(2 * lse1 - lse2)
    return lse1 - math.log(c), se, ess


@dataclass
class _Settings:
    num_steps: int
    num_chains: int
    leapfrog_steps: int
    step_size: float
    target_accept: float
    adapt: bool
    start: str
    max_elements: int
    progress: bool | None


def _rows_per_chunk(ev: _Evaluation, n: int, settings: _Settings) -> int:
    rows = max(1, min(n, settings.max_elements // (settings.num_chains * max(ev.width, 1))))
    return min(rows, ev.rows_per_call or rows)


def _forward(ev: _Evaluation, X: torch.Tensor, settings: _Settings, betas, bar):
    """Forward AIS over chunks of rows: (log_w (C, N), acceptance (N,), step (N,))."""
    rows = _rows_per_chunk(ev, X.shape[0], settings)
    parts = []
    for i in range(0, X.shape[0], rows):
        x = X[i : i + rows]
        target = _Target(ev, x, settings.start)
        _, scale = _guide_moments(ev, x, unconstrained=True)
        z0 = target.sample_start(settings.num_chains)
        parts.append(
            _anneal(
                target,
                z0,
                betas,
                scale,
                leapfrog_steps=settings.leapfrog_steps,
                step_size=settings.step_size,
                target_accept=settings.target_accept,
                adapt=settings.adapt,
                bar=bar,
            )
        )
    return (
        torch.cat([p[0] for p in parts], 1),
        torch.cat([p[2] for p in parts]),
        torch.cat([p[3] for p in parts]),
    )


def _estimate(ev, log_w, rate, step, settings: _Settings) -> AISEstimate:
    log_px, se, ess = _log_mean_exp_stats(log_w)
    return AISEstimate(
        log_px=log_px.float().cpu(),
        mc_se=se.float().cpu(),
        khat=None,
        num_samples=settings.num_chains,
        data_dim=ev.info.data_dim,
        ess=ess.float().cpu(),
        acceptance=rate.cpu(),
        step_size=step.cpu(),
        num_steps=settings.num_steps,
        start=settings.start,
    )


class _Seeded:
    """Seed torch's global generator for the duration, then restore it (``seed=None``: no-op)."""

    def __init__(self, seed: int | None, device: torch.device):
        self.seed, self.device = seed, device

    def __enter__(self):
        if self.seed is None:
            self.fork = None
            return self
        devices = [self.device] if self.device.type == "cuda" else []
        self.fork = torch.random.fork_rng(devices=devices)
        self.fork.__enter__()
        torch.manual_seed(int(self.seed))
        return self

    def __exit__(self, *exc):
        if self.fork is not None:
            self.fork.__exit__(*exc)
        return False


def ais_log_likelihood(
    program,
    X,
    *,
    num_steps: int = 500,
    num_chains: int = 16,
    leapfrog_steps: int = 10,
    step_size: float = 0.5,
    target_accept: float = 0.65,
    adapt: bool = True,
    start: str = "guide",
    schedule: torch.Tensor | None = None,
    seed: int | None = None,
    max_elements: int = _AIS_MAX_ELEMENTS,
    progress: bool | None = False,
    point_estimates=None,
) -> AISEstimate:
    """Annealed importance sampling estimate of log p(x) per data point (Neal 2001).

    Anneals ``num_chains`` HMC chains per point from ``q0`` (the guide q(z | x) with
    ``start="guide"``, or the prior with ``start="prior"``) to p(z | x) along the geometric
    path ``q0^(1-b) p(x, z)^b`` (see :mod:`ppvae.evaluate.ais`), every local latent moved in
    unconstrained space (``biject_to`` of its support, with the Jacobian). Global latents are
    fixed at plug-in values (``point_estimates``): the estimate is of log p(x | g-hat).

    Parameters
    ----------
    program : program
        A VAE, a module with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair
        (see :mod:`ppvae.program`); its local latents must be continuous (real, positive,
        on a simplex, a real-valued mixture, ...).
    X : array-like, shape (N, D)
    num_steps : int
        T, intermediate densities (one HMC transition each). Cost grows linearly in T;
        the bound tightens toward log p(x).
    num_chains : int
        C, independent chains per point; their weights give the standard error and the ESS.
    leapfrog_steps : int
        Leapfrog steps per HMC transition.
    step_size : float
        Initial leapfrog step, in units of the guide's per-point standard deviations (the
        diagonal mass matrix).
    target_accept : float
        Acceptance rate the per-point step sizes are adapted toward.
    adapt : bool
        Adapt step sizes (approximately unbiased); False keeps ``step_size`` fixed.
    start : {"guide", "prior"}
        q0. The guide starts close to the posterior; the prior needs no guide but more steps.
    schedule : tensor of shape (T + 1,), optional
        Inverse temperatures from 0 to 1, increasing (default: :func:`sigmoid_schedule`).
    seed : int, optional
        Seed for the draws (torch's generator is restored afterwards).
    max_elements : int
        Bound on the floats of (C, n, width) work per chunk of points.
    progress : bool or None
        A progress bar over transitions (None: only on a terminal).

    point_estimates : True or dict, optional
        Plug-in values of the global latents (sites outside the data plate), which this
        estimator conditions on: a dict ``{site: value}``, or True (and by default) the
        module's ``point_estimates()``; a program with global latents and neither is refused.

    Returns
    -------
    AISEstimate
    """
    _check_ais_args(num_steps, num_chains, leapfrog_steps, step_size, target_accept, start)
    betas = _schedule(schedule, num_steps)
    settings = _Settings(
        len(betas) - 1,
        int(num_chains),
        int(leapfrog_steps),
        float(step_size),
        float(target_accept),
        bool(adapt),
        start,
        int(max_elements),
        progress,
    )
    ev, X = _prepare(
        program, X, num_chains, any_rows="ais_log_likelihood", point_estimates=point_estimates
    )
    ev.require_continuous("ais_log_likelihood")
    rows = _rows_per_chunk(ev, X.shape[0], settings)
    total = settings.num_steps * math.ceil(X.shape[0] / rows)
    with (
        _Frozen(ev),
        _EvalMode(ev.module),
        _Seeded(seed, X.device),
        tqdm(total=total, desc="AIS", disable=_disabled(progress), leave=False) as bar,
    ):
        log_w, rate, step = _forward(ev, X, settings, betas, bar)
    return _estimate(ev, log_w, rate, step, settings)


def _disabled(progress: bool | None):
    return None if progress is None else not progress


def _schedule(schedule, num_steps) -> torch.Tensor:
    if schedule is None:
        return sigmoid_schedule(int(num_steps))
    betas = torch.as_tensor(schedule, dtype=torch.float64).flatten()
    if (
        betas.numel() < 2
        or float(betas[0]) != 0.0
        or float(betas[-1]) != 1.0
        or not bool((betas[1:] > betas[:-1]).all())
    ):
        raise InputError("schedule must rise strictly from 0 to 1 (at least two values)")
    return betas


@dataclass
class BDMCResult:
    """Bidirectional Monte Carlo bounds on log p(x) for data simulated from the model (nats).

    Attributes
    ----------
    lower : AISEstimate
        Forward AIS on the simulated x: a stochastic lower bound, shape (n,) per point.
    upper : torch.Tensor, shape (n,)
        ``-log mean_c w_c`` of reverse AIS started from the simulated z: a stochastic upper
        bound.
    upper_se : torch.Tensor, shape (n,)
        Its Monte Carlo standard error over chains.
    x : torch.Tensor, shape (n, D)
        The simulated data.
    z : torch.Tensor, shape (n, L)
        The latents they were drawn from (exact posterior samples given x).
    """

    lower: AISEstimate
    upper: torch.Tensor
    upper_se: torch.Tensor
    upper_acceptance: torch.Tensor
    x: torch.Tensor
    z: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """``upper - lower`` per point, (n,): how far forward AIS can be from log p(x)."""
        return self.upper - self.lower.log_px

    def summary(self) -> dict:
        return {
            "lower_mean": float(self.lower.log_px.mean()),
            "upper_mean": float(self.upper.mean()),
            "gap_mean": float(self.gap.mean()),
            "gap_max": float(self.gap.max()),
            "num_points": int(self.x.shape[0]),
            "num_steps": self.lower.num_steps,
            "num_chains": self.lower.num_samples,
            "start": self.lower.start,
            "acceptance_forward": float(self.lower.acceptance.mean()),
            "acceptance_reverse": float(self.upper_acceptance.mean()),
        }


def _simulate(ev: _Evaluation, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, z) ~ p(z) p(x | z): the model run with its observation of x unconditioned."""
    site = ev.info.support_site
    others = [name for name in ev.info.observed if name != site]
    if site is None or others:
        raise ProgramError(
            "BDMC simulates x from the model, which needs one observed site holding x itself "
            f"(found observed sites {sorted(ev.info.observed)}, none or several)"
        )
    dummy = torch.zeros(n, ev.info.data_dim, device=device)
    model = poutine.condition(poutine.uncondition(ev.program.model), data=ev.fixed)
    with torch.no_grad():
        tr = poutine.trace(model).get_trace(dummy)
    x = tr.nodes[site]["value"].detach().reshape(n, -1).to(torch.float32)
    z = ev.space.flat({s: tr.nodes[s]["value"].detach() for s in ev.info.local_latents}, (n,))
    return x, z


def bdmc(
    program,
    num_points: int = 100,
    *,
    num_steps: int = 500,
    num_chains: int = 4,
    leapfrog_steps: int = 10,
    step_size: float = 0.5,
    target_accept: float = 0.65,
    adapt: bool = True,
    start: str = "guide",
    schedule: torch.Tensor | None = None,
    seed: int | None = None,
    max_elements: int = _AIS_MAX_ELEMENTS,
    progress: bool | None = False,
    data_dim: int | None = None,
    point_estimates=None,
) -> BDMCResult:
    """Bidirectional Monte Carlo (Grosse et al. 2015): sandwich log p(x) on simulated data.

    Draws (z, x) from the model, runs forward AIS on x (a stochastic lower bound) and reverse
    AIS from z (a stochastic upper bound: z is an exact sample of p(z | x)). On such data the
    gap ``upper - lower`` bounds the error of forward AIS with the same settings; Grosse et al.
    and Wu et al. (2017) take it as the error to expect on real data of the same kind, which
    holds to the degree the model fits that data.

    Parameters
    ----------
    program : program
        As for :func:`ais_log_likelihood`; its model must observe x in one site (``x`` is
        simulated there).
    num_points : int
        n, simulated data points.
    num_steps, num_chains, leapfrog_steps, step_size, target_accept, adapt, start, schedule,
    seed, max_elements, progress
        As for :func:`ais_log_likelihood`, for both directions.
    data_dim : int, optional
        D of the simulated data (default: the program's ``data_dim`` attribute).

    point_estimates : True or dict, optional
        Plug-in values of the global latents (sites outside the data plate), which this
        estimator conditions on: a dict ``{site: value}``, or True (and by default) the
        module's ``point_estimates()``; a program with global latents and neither is refused.

    Returns
    -------
    BDMCResult
    """
    _check_ais_args(num_steps, num_chains, leapfrog_steps, step_size, target_accept, start)
    if isinstance(num_points, bool) or int(num_points) != num_points or num_points < 1:
        raise InputError(f"num_points must be a positive integer, got {num_points!r}")
    betas = _schedule(schedule, num_steps)
    settings = _Settings(
        len(betas) - 1,
        int(num_chains),
        int(leapfrog_steps),
        float(step_size),
        float(target_accept),
        bool(adapt),
        start,
        int(max_elements),
        progress,
    )
    prog_ev, _ = _prepare(
        program,
        _probe(program, data_dim),
        num_chains,
        any_rows="bdmc",
        point_estimates=point_estimates,
    )
    prog_ev.require_continuous("bdmc")
    device = _device_of(prog_ev)
    with _Seeded(seed, device), _Frozen(prog_ev), _EvalMode(prog_ev.module):
        x, z = _simulate(prog_ev, int(num_points), device)
        # validates the simulated x like real data
        ev, x = _prepare(
            program, x, num_chains, any_rows="bdmc", point_estimates=point_estimates
        )
        rows = _rows_per_chunk(ev, x.shape[0], settings)
        total = 2 * settings.num_steps * math.ceil(x.shape[0] / rows)
        with tqdm(total=total, desc="BDMC", disable=_disabled(progress), leave=False) as bar:
            log_w, rate, step = _forward(ev, x, settings, betas, bar)
            lower = _estimate(ev, log_w, rate, step, settings)
            reverse = torch.flip(betas, (0,))
            ups, ses, accs = [], [], []
            for i in range(0, x.shape[0], rows):
                xi, zi = x[i : i + rows], z[i : i + rows].to(x.device)
                target = _Target(ev, xi, start)
                _, scale = _guide_moments(ev, xi, unconstrained=True)
                z0 = zi.unsqueeze(0).expand(settings.num_chains, *zi.shape).contiguous()
                lw, _, acc, _ = _anneal(
                    target,
                    z0,
                    reverse,
                    scale,
                    leapfrog_steps=settings.leapfrog_steps,
                    step_size=settings.step_size,
                    target_accept=settings.target_accept,
                    adapt=settings.adapt,
                    bar=bar,
                )
                log_inv, se, _ = _log_mean_exp_stats(lw)  # log of an estimate of 1 / p(x)
                ups.append(-log_inv)
                ses.append(se)
                accs.append(acc)
    return BDMCResult(
        lower=lower,
        upper=torch.cat(ups).float().cpu(),
        upper_se=torch.cat(ses).float().cpu(),
        upper_acceptance=torch.cat(accs).cpu(),
        x=x.cpu(),
        z=z.cpu(),
    )


def _device_of(ev: _Evaluation) -> torch.device:
    from ..program import program_parameters

    params = program_parameters(ev.program)
    return params[0].device if params else torch.device("cpu")


def _probe(program, data_dim: int | None) -> torch.Tensor:
    """Two rows of zeros, to trace the program before any data exist."""
    from ..program import as_program

    d = data_dim if data_dim is not None else getattr(as_program(program).module, "data_dim", None)
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise InputError(
            "bdmc simulates data from the program and needs their dimension: pass data_dim "
            f"(the program has no integer data_dim attribute; got {d!r})"
        )
    return torch.zeros(2, d)
