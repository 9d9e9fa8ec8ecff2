"""What every estimator shares: a program prepared for evaluation (validated data, traced
sites, fixed global latents), chunking for bounded memory, and the log joint at given latents."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..data import check_data, check_missing, split_missing
from ..errors import InputError, ProgramError
from ..program import (
    Program,
    ProgramInfo,
    as_program,
    check_support,
    inspect_program,
    program_parameters,
)

_DEFAULT_MAX_ELEMENTS = 2**22  # floats held per chunk of (K, N, D): 16 MiB in float32
# Measured (Burda VAE, K = 5000, 1 thread, both ppvae and the hand-written loop of
# benchmarks/eval_speed.py): chunks of 2**23 floats took 1.3-1.5x as long as 2**22 or 2**21,
# which run at the same speed; most likely glibc hands the freed ~32 MiB buffers back to the
# OS and every chunk faults its pages in afresh.


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
    mask: torch.Tensor | None = None  # (N, D) True where X is observed; None: complete data

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


def _weights_once(
    program: Program, x, fixed, guide, particles: int | None, mask=None, traces=None
) -> torch.Tensor:
    """``log p(x, z) - log q(z | x)``: (K, n) under a particle plate, or (n,) for one draw.
    ``mask``: the observed entries of ``x`` (passed to model and guide as ``mask``).
    ``traces``: a list to which ``(guide_tr, model_tr)`` is appended (for imputation)."""
    model = poutine.condition(program.model, data=fixed) if fixed else program.model
    guide = poutine.block(guide, hide=list(fixed)) if fixed else guide
    kwargs = {} if mask is None else {"mask": mask}
    shape = (x.shape[0],) if particles is None else (particles, x.shape[0])
    with pyro.plate("_particles", particles or 1, dim=-2) if particles else _nullcontext():
        guide_tr = poutine.trace(guide).get_trace(x, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, **kwargs)
    if traces is not None:
        traces.append((guide_tr, model_tr))
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


def _log_weights(
    ev: _Evaluation, x, num_samples: int, guide=None, mask=None, traces=None
) -> torch.Tensor:
    guide = ev.program.guide if guide is None else guide

    def attempt(vectorized: bool) -> torch.Tensor:
        if traces is not None:
            traces.clear()
        if vectorized:
            return _weights_once(ev.program, x, ev.fixed, guide, num_samples, mask, traces)
        return torch.stack(
            [
                _weights_once(ev.program, x, ev.fixed, guide, None, mask, traces)
                for _ in range(num_samples)
            ]
        )

    return _vectorized(ev, attempt).to(x.dtype)


def _evaluation(program) -> _Evaluation:
    """An :class:`_Evaluation` without data checks (for the low-level entry points)."""
    prog = as_program(program)
    return _Evaluation(prog, ProgramInfo(), prog.point_estimates(), width=1)


def _program_device(program: Program, X: torch.Tensor) -> torch.device:
    """Where the program's parameters live (its module's, else the param store's)."""
    params = program_parameters(program)
    return params[0].device if params else X.device


def _count(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``, or one InputError naming ``name`` (a
    string, a float with a fraction or a bool is not a count)."""
    whole = isinstance(value, numbers.Integral) or (
        isinstance(value, float) and value.is_integer()
    )
    if isinstance(value, bool) or not whole or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _prepare(
    program, X, num_samples: int, *, missing: str | None = None
) -> tuple[_Evaluation, torch.Tensor]:
    """Validate ``X`` and ``num_samples`` against a program, trace it, move ``X`` to it.

    ``missing``: None refuses NaN entries; otherwise the name of the estimator, which
    marginalizes them (``X`` comes back with 0 there and ``ev.mask`` says what is observed).
    """
    prog = as_program(program)
    _count(num_samples, "num_samples")
    data_dim = getattr(prog.module, "data_dim", None) if prog.is_ppvae else None
    X = check_data(X, name="X", data_dim=data_dim, dtype=torch.float32, allow_nan=True)
    X = X.to(_program_device(prog, X))
    X, mask = _missing_entries(prog, X, missing)
    head = {} if mask is None else {"mask": mask[:2]}
    info = inspect_program(prog, X[:2], **head)
    checked = X if mask is None else torch.where(mask, X, X[mask][:1])  # observed values only
    likelihood = getattr(prog.module, "likelihood", None) if prog.is_ppvae else None
    if likelihood is not None:
        likelihood.check_support(checked, "X")  # ppvae's own, with a message naming the remedy
    else:
        check_support(info, checked, "X")
    fixed = prog.point_estimates()
    unfixed = [name for name in info.global_latents if name not in fixed]
    if unfixed:
        raise ProgramError(
            f"the latent site {unfixed[0]!r} lies outside the 'data' plate and the program "
            "gives no point estimate for it; per-point likelihoods need every latent site in "
            "the plate, or a point_estimates() method returning values for the global ones"
        )
    width = max(info.data_dim, info.latent_width, getattr(prog.module, "eval_width", 0) or 0)
    return _Evaluation(prog, info, fixed, width=width, mask=mask), X


def _missing_entries(prog: Program, X: torch.Tensor, estimator: str | None):
    """``split_missing(X)`` where the estimator and the program take missing entries."""
    missing = torch.isnan(X)
    n_missing = int(missing.sum())
    if n_missing == 0:
        return X, None
    if estimator is None:
        raise InputError(
            f"X: {n_missing} NaN (missing) value(s); this estimator needs complete data "
            "(elbo, log_likelihood, estimate_log_likelihood and impute take missing entries)"
        )
    prog.require_mask("X", n_missing)
    check_missing(~missing, "X")
    return split_missing(X)


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


def _split_latents(z: torch.Tensor, sites: dict) -> dict[str, torch.Tensor]:
    """Flat latent vectors (..., n, L) -> {site: (..., n, *event_shape)}."""
    out, offset = {}, 0
    for name, shape in sites.items():
        size = math.prod(shape)
        out[name] = z[..., offset : offset + size].reshape(*z.shape[:-1], *shape)
        offset += size
    return out


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
