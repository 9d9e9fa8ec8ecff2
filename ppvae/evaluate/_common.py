"""What every estimator shares: a program prepared for evaluation (validated data, traced
sites, fixed global latents), chunking for bounded memory, and the log joint at given latents."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import ComposeTransform, IndependentTransform, Transform

from ..data import check_data, check_missing, split_missing
from ..errors import InputError, ProgramError
from ..program import (
    Program,
    ProgramInfo,
    as_program,
    check_mask_contract,
    check_support,
    inspect_program,
    inspect_rows,
    plate_problem,
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
    rows_per_call: int | None = None  # the program subsamples this many rows in its plate
    global_draws: list = field(default_factory=lambda: [{}])  # values of the global latents
    labels: torch.Tensor | None = None  # (N,) labels y passed beside the rows, if any
    _space: LatentSpace | None = None

    def blocks(self, n: int, n_chunk: int):
        """``(start, stop, lo)`` per chunk of rows: the program is called on rows lo:stop and
        the last ``stop - start`` values are this chunk's. A program that subsamples s rows in
        its plate is called on exactly s rows (a short last chunk overlaps the one before),
        so that it draws every row it is given and each row gets its own value."""
        s = self.rows_per_call
        if s is not None:
            n_chunk = min(n_chunk, s)
        for start in range(0, n, n_chunk):
            stop = min(n, start + n_chunk)
            lo = start if s is None else max(0, stop - s)
            yield start, stop, lo

    @property
    def module(self):
        return self.program.module

    @property
    def enumerate_from(self) -> int | None:
        """Where the model's enumerated sites go (left of its plates), or None."""
        return -1 - self.info.max_plate_nesting if self.info.enumerated else None

    @property
    def space(self) -> LatentSpace:
        """The local latents in unconstrained coordinates (built once)."""
        if self._space is None:
            self._space = LatentSpace(self.info)
        return self._space

    def require_continuous(self, what: str) -> None:
        """Refuse discrete local latents where ``what`` moves latents by gradients."""
        if self.info.enumerated:
            raise ProgramError(
                f"the latent site {self.info.enumerated[0]!r} is enumerated; {what} does not "
                "sum enumerated sites out yet: use the importance-weighted estimators "
                "(estimate_log_likelihood), which do, inside each weight"
            )
        discrete = [n for n in self.info.discrete_latents if n in self.info.local_latents]
        if discrete:
            raise ProgramError(
                f"the latent site {discrete[0]!r} is discrete; {what} moves the local latents "
                "by gradients (Hamiltonian dynamics, or a Gaussian over them), which needs "
                "every one continuous: use the importance-weighted estimators "
                "(estimate_log_likelihood), which take discrete latents"
            )


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
    program: Program,
    x,
    fixed,
    guide,
    particles: int | None,
    mask=None,
    traces=None,
    enumerate_from: int | None = None,
    extra: dict | None = None,
) -> torch.Tensor:
    """``log p(x, z) - log q(z | x)``: (K, n) under a particle plate, or (n,) for one draw.
    ``mask``: the observed entries of ``x`` (passed to model and guide as ``mask``).
    ``traces``: a list to which ``(guide_tr, model_tr)`` is appended (for imputation).
    ``enumerate_from``: the model's sites marked for enumeration are enumerated in parallel
    from this dimension leftwards (Pyro's ``poutine.enum``) and summed out exactly, so that
    log p(x, z) is the marginal over them and the weight is over the continuous latents."""
    model = poutine.condition(program.model, data=fixed) if fixed else program.model
    guide = poutine.condition(guide, data=fixed) if fixed else guide
    kwargs = {**(extra or {}), **({} if mask is None else {"mask": mask})}
    shape = (x.shape[0],) if particles is None else (particles, x.shape[0])
    if enumerate_from is not None:
        first = enumerate_from - (1 if particles else 0)  # left of the particle plate too
        model = poutine.enum(model, first_available_dim=first)
    with pyro.plate("_particles", particles or 1, dim=-2) if particles else _nullcontext():
        guide_tr = poutine.trace(guide).get_trace(x, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, **kwargs)
    if traces is not None:
        traces.append((guide_tr, model_tr))
    log_p = (
        _sum_log_probs(model_tr, shape, fixed)
        if enumerate_from is None
        else _sum_enumerated(model_tr, shape, fixed)
    )
    return log_p - _sum_log_probs(guide_tr, shape, fixed)


def _sum_enumerated(tr, shape: tuple, exclude) -> torch.Tensor:
    """``log sum_c p(x, z, c)`` over the enumerated values c, ``shape``: every site's
    log-density broadcast over the enumeration dimensions (left of ``shape``), summed, then
    log-sum-exp over those dimensions (exact: each joint value of the enumerated sites once)."""
    tr.compute_log_prob()
    total = torch.zeros(())
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or name in exclude or site_is_subsample(site):
            continue
        total = total + site["log_prob"]
    extra = total.dim() - len(shape)
    if extra > 0:
        total = total.reshape(-1, *total.shape[extra:]).logsumexp(0)
    return total.expand(shape) if total.shape != shape else total


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
    ev: _Evaluation,
    x,
    num_samples: int,
    guide=None,
    mask=None,
    traces=None,
    fixed=None,
    extra=None,
) -> torch.Tensor:
    """(K, n) log weights given the global latents ``fixed`` (default ``ev.fixed``);
    ``extra``: per-row keyword arguments of model and guide (labels ``y``)."""
    guide = ev.program.guide if guide is None else guide
    fixed = ev.fixed if fixed is None else fixed

    def attempt(vectorized: bool) -> torch.Tensor:
        if traces is not None:
            traces.clear()
        enum = ev.enumerate_from
        if vectorized:
            return _weights_once(
                ev.program, x, fixed, guide, num_samples, mask, traces, enum, extra
            )
        return torch.stack(
            [
                _weights_once(ev.program, x, fixed, guide, None, mask, traces, enum, extra)
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
    program,
    X,
    num_samples: int,
    *,
    missing: str | None = None,
    any_rows: str | None = None,
    point_estimates=None,
    global_samples: int | None = None,
    y=None,
) -> tuple[_Evaluation, torch.Tensor]:
    """Validate ``X`` and ``num_samples`` against a program, trace it, move ``X`` to it.

    ``missing``: None refuses NaN entries; otherwise the name of the estimator, which
    marginalizes them (``X`` comes back with 0 there and ``ev.mask`` says what is observed).
    ``any_rows``: the name of an estimator that calls the program on blocks of any size up to
    ``ev.rows_per_call``, which a program subsampling a fixed number of rows refuses.
    ``point_estimates``, ``global_samples``: the global latents (see :func:`_global_values`).
    """
    prog = as_program(program)
    _count(num_samples, "num_samples")
    data_dim = getattr(prog.module, "data_dim", None) if prog.is_ppvae else None
    X = check_data(X, name="X", data_dim=data_dim, dtype=torch.float32, allow_nan=True)
    X = X.to(_program_device(prog, X))
    X, mask = _missing_entries(prog, X, missing)
    n = X.shape[0]
    # traced on fewer rows than X holds, so that a plate of fixed size shows itself
    labels = _labels(y, n, X.device)
    row_kwargs = {**_mask_kwargs(mask), **({} if labels is None else {"y": labels})}
    info = inspect_rows(prog, X, min(n - 1, 64) if n > 1 else 1, **row_kwargs)
    problem = plate_problem(info, n, "the estimator")
    if problem is not None:
        raise ProgramError(problem)
    if mask is not None:
        rows = info.rows if not info.subsamples else info.plate_size
        check_mask_contract(prog, X[:rows], mask[:rows])
    if info.guide_enumerated:
        raise ProgramError(
            f"the guide site {info.guide_enumerated[0]!r} is marked for enumeration; the "
            "estimators sum out enumerated sites of the model (inside each importance weight), "
            "not of the guide: sample it in the guide, or enumerate it in the model"
        )
    checked = X if mask is None else torch.where(mask, X, X[mask][:1])  # observed values only
    likelihood = getattr(prog.module, "likelihood", None) if prog.is_ppvae else None
    if likelihood is not None:
        likelihood.check_support(checked, "X")  # ppvae's own, with a message naming the remedy
    else:
        check_support(info, checked, "X")
    width = max(info.data_dim, info.latent_width, getattr(prog.module, "eval_width", 0) or 0)
    ev = _Evaluation(prog, info, {}, width=width, mask=mask)
    ev.labels = labels
    ev.rows_per_call = info.subsample_size if info.subsamples else None
    if info.global_latents:
        head = X[: max(info.rows, ev.rows_per_call or 0)]
        ev.global_draws = _global_values(ev, head, point_estimates, global_samples)
        ev.fixed = ev.global_draws[0]
    if any_rows is not None:
        _require_any_rows(ev, X, any_rows)
    return ev, X


def _global_values(ev: _Evaluation, x, point_estimates, global_samples) -> list[dict]:
    """The values the global latents are fixed at, one dict per draw.

    ``point_estimates``: True for the module's ``point_estimates()``, a dict ``{site: value}``
    for plain functions (plug-in, one draw); None averages over ``global_samples`` draws of
    the guide's q(globals) where the estimator takes it (its ``global_samples`` is not None),
    and otherwise uses the module's ``point_estimates()`` or refuses.
    """
    names = ev.info.global_latents
    if point_estimates is None and global_samples is not None:
        if isinstance(global_samples, bool) or int(global_samples) != global_samples or (
            global_samples < 1
        ):
            raise InputError(f"global_samples must be a positive integer, got {global_samples!r}")
        return [_draw_globals(ev, x, names) for _ in range(int(global_samples))]
    if point_estimates is None or point_estimates is True:
        values = ev.program.point_estimates()
        source = f"{ev.program.name}.point_estimates()"
    elif isinstance(point_estimates, dict):
        values, source = dict(point_estimates), "point_estimates"
    else:
        raise InputError(
            f"point_estimates must be True, a dict {{site: value}} or None, got "
            f"{type(point_estimates).__name__}"
        )
    missing = [name for name in names if name not in values]
    if missing:
        raise ProgramError(
            f"the latent site {missing[0]!r} lies outside the plate {ev.program.data_plate!r} "
            f"(a global latent) and {source} gives no value for it; this estimator conditions "
            "on plug-in values of the global latents: pass point_estimates={site: value} "
            "(or give the module a point_estimates() method)"
        )
    device = x.device
    return [{k: torch.as_tensor(v, device=device) for k, v in values.items()}]


def _draw_globals(ev: _Evaluation, x, names) -> dict:
    """One draw of the global latents from the guide, ``{site: value}``."""
    kwargs = {} if ev.mask is None else {"mask": ev.mask[: x.shape[0]]}
    with torch.no_grad(), _EvalMode(ev.module):
        tr = poutine.trace(ev.program.guide).get_trace(x, **kwargs)
    missing = [name for name in names if name not in tr.nodes]
    if missing:
        raise ProgramError(
            f"the global latent {missing[0]!r} is sampled by the model but not by the guide"
        )
    return {name: tr.nodes[name]["value"].detach() for name in names}


def _labels(y, n: int, device) -> torch.Tensor | None:
    """Labels ``y`` passed to model and guide beside each row, checked: integers, shape (N,)."""
    if y is None:
        return None
    y = torch.as_tensor(y)
    if y.shape != (n,) or y.dtype not in (torch.int64, torch.int32):
        raise InputError(f"y must be integer labels of shape ({n},), got {y.dtype} of shape "
                         f"{tuple(y.shape)}")  # fmt: skip
    return y.long().to(device)


def _mask_kwargs(mask) -> dict:
    return {} if mask is None else {"mask": mask}


def _require_any_rows(ev: _Evaluation, X: torch.Tensor, what: str) -> None:
    """Refuse, before any work, a program that subsamples a fixed number of rows in its plate
    where ``what`` must call it on fewer (one row for NUTS; chunks of rows for AIS)."""
    if ev.rows_per_call is None:
        return
    try:
        inspect_program(ev.program, X[:1], **_mask_kwargs(None if ev.mask is None else ev.mask[:1]))
    except ProgramError as exc:
        raise ProgramError(
            f"{what} calls the program on blocks of fewer rows, but its plate "
            f"{ev.program.data_plate!r} subsamples {ev.rows_per_call} rows whatever it is given "
            f"({exc}); write subsample_size=min({ev.rows_per_call}, len(x))"
        ) from None


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


def unconstraining(support) -> Transform:
    """The bijection from the reals onto a latent's support (``biject_to``), with real-valued
    mixtures (``MixtureSameFamily`` over real components: ppvae's ``mog`` and ``vamp``
    priors) moved by the identity, as NumPyro and TFP do."""
    base, dims = support, 0
    while isinstance(base, constraints.independent):
        dims += base.reinterpreted_batch_ndims
        base = base.base_constraint
    if isinstance(base, constraints.MixtureSameFamilyConstraint):
        inner = base.base_constraint
        while isinstance(inner, constraints.independent):
            inner = inner.base_constraint
        if inner is constraints.real:
            return biject_to(constraints.independent(constraints.real, dims) if dims else
                             constraints.real)  # fmt: skip
    return biject_to(support)


class LatentSpace:
    """The local latents as one flat unconstrained vector per point, u (..., n, U).

    Each site is mapped from the reals onto its support by :func:`unconstraining`;
    :meth:`values` returns the constrained values and ``log |det J|`` per point, which
    densities over u add (so that NUTS, AIS and the local Gaussians of the gaps move every
    latent in unconstrained space, as Pyro's own NUTS does).
    """

    def __init__(self, info: ProgramInfo):
        self.sites = dict(info.local_latents)
        self.transforms, self.u_shapes = {}, {}
        for name, shape in self.sites.items():
            support = info.local_supports.get(name, constraints.real)
            t = unconstraining(support)
            self.transforms[name] = t
            self.u_shapes[name] = tuple(t.inverse_shape(torch.Size(shape))) if shape else ()
        self.identity = all(_is_identity(t) for t in self.transforms.values())
        self.width = sum(math.prod(s) for s in self.u_shapes.values())

    def values(self, u: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """``({site: z}, log |det dz/du|)`` at flat u (..., n, U); the second is (..., n)."""
        parts = _split_latents(u, self.u_shapes)
        if self.identity:
            return parts, torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
        out, log_det = {}, torch.zeros(u.shape[:-1], dtype=u.dtype, device=u.device)
        for name, part in parts.items():
            t = self.transforms[name]
            z = t(part)
            out[name] = z
            if not _is_identity(t):
                log_det = log_det + _event_sum(t.log_abs_det_jacobian(part, z), u.dim() - 1)
        return out, log_det

    def flat(self, values: dict, lead: tuple) -> torch.Tensor:
        """Flat u (*lead, U) of constrained values ``{site: z}`` with leading shape ``lead``."""
        return torch.cat(
            [
                self.transforms[name].inv(values[name]).reshape(*lead, -1)
                for name in self.sites
            ],
            -1,
        )


def _is_identity(t) -> bool:
    while isinstance(t, IndependentTransform):
        t = t.base_transform
    return isinstance(t, ComposeTransform) and not t.parts  # biject_to(real) is Compose([])


def _event_sum(log_det: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """Sum a log-det over the dimensions right of the (..., n) batch."""
    while log_det.dim() > batch_dims:
        log_det = log_det.sum(-1)
    return log_det


def _log_joint(ev: _Evaluation, x, z: torch.Tensor) -> torch.Tensor:
    """``log p(x, T(u)) + log |det J_T(u)|``, (K, n), at flat unconstrained latents u of shape
    (K, n, U) (:class:`LatentSpace`; for real-valued latents u = z and the Jacobian is 1)."""

    def once(values: dict, particles: int | None) -> torch.Tensor:
        model = poutine.condition(ev.program.model, data={**values, **ev.fixed})
        shape = (x.shape[0],) if particles is None else (particles, x.shape[0])
        with pyro.plate("_particles", particles, dim=-2) if particles else _nullcontext():
            tr = poutine.trace(model).get_trace(x)
        return _sum_log_probs(tr, shape, ev.fixed)

    space = ev.space

    def at(u: torch.Tensor, particles: int | None) -> torch.Tensor:
        values, log_det = space.values(u)
        return once(values, particles) + log_det

    def attempt(vectorized: bool) -> torch.Tensor:
        if vectorized:
            return at(z, z.shape[0])
        return torch.stack([at(zk, None) for zk in z])

    return _vectorized(ev, attempt)


def _guide_moments(ev: _Evaluation, X: torch.Tensor, draws: int = 2000, unconstrained=False):
    """Mean and standard deviation of q(z | x) per point over the flat local latents, (N, L).

    The marginal moments of each latent under q. Read from the guide's distributions where
    that is exact: one local latent site, no global latents, and a distribution that defines
    ``mean`` and ``stddev`` (a Gaussian guide: exactly its parameters). Otherwise, for a
    hierarchical guide q(z1 | x) q(z2 | z1, x) whose sites' parameters depend on other draws,
    estimated from ``draws`` samples of the whole guide (Monte Carlo error about
    sd / sqrt(draws)). ``unconstrained=True``: the moments of u, the latents in the
    unconstrained space of :class:`LatentSpace` (the same where every latent is real).
    """
    guide = poutine.condition(ev.program.guide, data=ev.fixed) if ev.fixed else ev.program.guide
    kwargs = {} if ev.mask is None or ev.mask.shape[0] != X.shape[0] else {"mask": ev.mask}
    sites = ev.info.local_latents
    with _EvalMode(ev.module), torch.no_grad():
        space = ev.space if unconstrained and not ev.space.identity else None
        if len(sites) == 1 and not ev.info.global_latents and space is None:
            tr = poutine.trace(guide).get_trace(X, **kwargs)
            try:
                (name,) = sites
                fn = tr.nodes[name]["fn"]
                loc, scale = fn.mean.reshape(X.shape[0], -1), fn.stddev.reshape(X.shape[0], -1)
                return loc, scale.clamp_min(1e-6)
            except (NotImplementedError, AttributeError, KeyError):
                pass
        width = ev.info.latent_width if space is None else space.width
        total = torch.zeros(X.shape[0], width, dtype=torch.float64, device=X.device)
        total_sq = torch.zeros_like(total)
        per = max(1, min(draws, _DEFAULT_MAX_ELEMENTS // max(1, X.shape[0] * ev.width)))
        for j in range(0, draws, per):
            m = min(per, draws - j)

            def attempt(vectorized: bool, m=m) -> torch.Tensor:
                if vectorized:
                    with pyro.plate("_particles", m, dim=-2):
                        tr = poutine.trace(guide).get_trace(X, **kwargs)
                    return _flat(tr, sites, (m, X.shape[0]), space)
                return torch.stack(
                    [
                        _flat(
                            poutine.trace(guide).get_trace(X, **kwargs),
                            sites,
                            (X.shape[0],),
                            space,
                        )
                        for _ in range(m)
                    ]
                )

            try:  # the guide alone: whether it vectorizes says nothing of the model
                z = attempt(True).double()
            except Exception:
                z = attempt(False).double()
            total += z.sum(0)
            total_sq += z.pow(2).sum(0)
        loc = total / draws
        var = (total_sq / draws - loc.pow(2)).clamp_min(0.0) * draws / max(1, draws - 1)
    return loc.to(X.dtype), var.sqrt().to(X.dtype).clamp_min(1e-6)


def _flat(tr, sites: dict, lead: tuple, space=None) -> torch.Tensor:
    """The local latents of a trace as one flat vector per point, (*lead, L), or in the
    unconstrained coordinates of ``space`` (*lead, U)."""
    if space is not None:
        return space.flat({name: tr.nodes[name]["value"] for name in sites}, lead)
    return torch.cat([tr.nodes[name]["value"].reshape(*lead, -1) for name in sites], -1)


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
