"""The one contract between a Pyro program and ppvae's trainer and evaluators: the data plate.

A *program* is a Pyro model p(z) p(x | z) and guide q(z | x), given as

* any ``torch.nn.Module`` with ``model(x, ...)`` and ``guide(x, ...)`` methods (ppvae's own
  :class:`~ppvae.VAE`, :class:`~ppvae.LinearVAE` and autoencoders are such modules), or
* a ``(model, guide)`` pair of plain functions whose parameters live in Pyro's param store,
  exactly as for ``pyro.infer.SVI`` (``ppvae.fit(model, guide, data)`` is the SVI-like spelling).

**The contract.** Model and guide take a minibatch ``x`` of shape (B, D) as their first
argument, and every site that belongs to one data point (the observation, the local latents)
lives inside a ``pyro.plate`` named ``"data"`` whose dimension indexes the rows of ``x``; each
such site has one log-density per data point (declare feature dimensions with
``.to_event(...)``). Sites may have any names. Latent sites outside the plate are global;
training handles them like any Pyro ELBO, and evaluators that need per-point weights fix them
at ``program.point_estimates()`` (a module method returning ``{site: value}``).

Minibatch scaling: a program whose model and guide accept ``num_data`` is called with
``num_data=N`` and scales its own plate (``pyro.plate("data", size=N, subsample=...)``, as
ppvae's VAE does); a program whose model takes only ``x`` (Pyro's ``examples/vae/vae.py``)
is run under :class:`ScaleDataPlate`, which multiplies every site inside the ``"data"`` plate by
N / (plate size). Either way a minibatch ELBO is an unbiased estimate of the full-data ELBO.

Missing entries: a program whose model and guide accept ``mask`` can be trained and evaluated
on data with missing entries (NaN in the data, or ``fit(..., mask=...)``). It is then called with
``x`` holding 0 at every missing entry and ``mask``, a boolean (B, D) tensor that is True where x
is observed; the model must leave the missing entries out of its likelihood by masking the
per-feature distribution before summing over features (``Normal(loc, scale).mask(mask)
.to_event(1)``, as ppvae's likelihoods do in ``Likelihood.masked``), so that its log density is
the exact marginal of the observed entries, and the guide may read ``x`` and ``mask`` as its
encoding of what was observed. Data without missing entries are passed with no ``mask`` at all.
A program that takes no ``mask`` refuses data with NaN entries.

Everything else an evaluator needs (the data dimension, the support of the observations, the
local latent sites and their widths) is read from a trace of the program on a few rows of the
data by :func:`inspect_program`, which also turns a broken contract into one
:class:`~ppvae.errors.ProgramError` naming the site.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from .errors import InputError, ProgramError

__all__ = [
    "DATA_PLATE",
    "Program",
    "ProgramInfo",
    "ScaleDataPlate",
    "as_program",
    "inspect_program",
    "program_parameters",
]

DATA_PLATE = "data"


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (explicitly or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins, some C callables: assume not
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class ScaleDataPlate(Messenger):
    """Scale every sample site inside the data plate by ``num_data / (the plate's full size)``.

    Applied to a program that does not take ``num_data``: its plate covers the minibatch's B
    rows, so each per-point log-density is multiplied by N / B, as ``pyro.plate(size=N,
    subsample=...)`` would do. A program that subsamples inside its plate
    (``pyro.plate("data", len(x), subsample_size=s)``) is already scaled by Pyro by B / s;
    this adds N / B, so that the total is N / s, once: the full size over the rows drawn.
    Sites outside the plate (globals) are left alone.
    """

    def __init__(self, num_data: int | None, plate: str = DATA_PLATE):
        super().__init__()
        self.num_data = num_data
        self.plate = plate

    def _process_message(self, msg):
        if msg["type"] != "sample" or self.num_data is None:
            return
        for frame in msg["cond_indep_stack"]:
            if frame.name == self.plate:
                full = frame.full_size if frame.full_size is not None else frame.size
                if full and full > 0:
                    msg["scale"] = msg["scale"] * (self.num_data / full)
                return


@dataclass(frozen=True)
class Program:
    """A model/guide pair in the normal form ppvae trains and evaluates.

    Attributes
    ----------
    model, guide : callable
        The user's Pyro functions (bound methods of ``module`` for a module program).
    module : torch.nn.Module or None
        The module that owns the program's parameters (None for plain functions, whose
        parameters live in Pyro's param store).
    takes_num_data : bool
        Whether model and guide accept ``num_data`` (they scale their plate themselves).
    takes_mask : bool
        Whether model and guide accept ``mask`` (they can marginalize missing entries).
    data_plate : str
        The name of the plate over data points (``"data"`` unless the program says otherwise).
    """

    model: Callable
    guide: Callable
    module: nn.Module | None = None
    takes_num_data: bool = False
    takes_mask: bool = False
    data_plate: str = DATA_PLATE

    @property
    def name(self) -> str:
        if self.module is not None:
            return type(self.module).__name__
        model = getattr(self.model, "__name__", "model")
        return f"({model}, {getattr(self.guide, '__name__', 'guide')})"

    @property
    def is_ppvae(self) -> bool:
        """A program built by ppvae itself (its modules follow the ``params_held`` protocol)."""
        return self.module is not None and type(self.module).__module__.startswith("ppvae.")

    def bind(self, num_data: int | None, masked: bool = False) -> tuple[Callable, Callable]:
        """``(model, guide)`` to call as ``fn(x, **kwargs)`` on minibatches of an N-row set.

        ``masked=True``: called as ``fn(x, mask, **kwargs)``, the observed mask positional, so
        that a compiled estimator (``torch.jit.trace``) takes it as an input, not a constant.
        """
        if self.takes_num_data:
            model, guide = self.model, self.guide
        else:
            scale = ScaleDataPlate(num_data, self.data_plate)
            model, guide = _drop_num_data(scale(self.model)), _drop_num_data(scale(self.guide))
        if masked:
            return _mask_positional(model), _mask_positional(guide)
        return model, guide

    def require_mask(self, what: str, n_missing: int) -> None:
        """Raise ``InputError`` unless the program can marginalize missing entries."""
        if not self.takes_mask:
            raise InputError(
                f"{what}: {n_missing} NaN (missing) value(s); the program {self.name} cannot "
                "marginalize missing entries (its model and guide take no mask argument; see "
                "ppvae.program): drop or impute them, or use a program that takes mask "
                "(ppvae's VAE and LinearVAE do)"
            )

    def point_estimates(self) -> dict[str, torch.Tensor]:
        """Plug-in values of global latent sites (``module.point_estimates()``), else {}."""
        fn = getattr(self.module, "point_estimates", None)
        return dict(fn()) if callable(fn) else {}


def _mask_positional(fn: Callable) -> Callable:
    def call(x, mask=None, *args, **kwargs):
        return fn(x, *args, mask=mask, **kwargs)

    return call


def _drop_num_data(fn: Callable) -> Callable:
    def call(x, *args, num_data=None, **kwargs):
        return fn(x, *args, **kwargs)

    return call


def as_program(
    program, guide: Callable | None = None, *, data_plate: str | None = None
) -> Program:
    """Normalize what a user passes as a program.

    Parameters
    ----------
    program : Program, torch.nn.Module, (model, guide) tuple, or a model function
        A module with ``model``/``guide`` methods, a pair of functions, or the model function
        itself when ``guide`` is given.
    guide : callable, optional
        The guide, when ``program`` is the model function.
    data_plate : str, optional
        The name of the program's plate over data points (default ``"data"``, or a module's
        ``data_plate`` attribute): ``as_program(model, guide, data_plate="rows")`` for a
        program written with ``pyro.plate("rows", ...)``. ``fit`` and every evaluator take
        the returned :class:`Program`.

    Raises
    ------
    ProgramError
        Anything else, naming what is missing.
    """
    if data_plate is not None and (not isinstance(data_plate, str) or not data_plate):
        raise InputError(f"data_plate must be a non-empty string, got {data_plate!r}")
    if isinstance(program, Program) and guide is None:
        if data_plate is None or data_plate == program.data_plate:
            return program
        return dataclasses.replace(program, data_plate=data_plate)
    if guide is not None:
        model = program
    elif isinstance(program, tuple) and len(program) == 2:
        model, guide = program
    elif isinstance(program, nn.Module):
        missing = [a for a in ("model", "guide") if not callable(getattr(program, a, None))]
        if missing:
            raise ProgramError(
                f"program: the {type(program).__name__} module has no {' or '.join(missing)} "
                "method; a program is a module with Pyro model(x, ...) and guide(x, ...) "
                "methods, or a (model, guide) pair of functions"
            )
        model, guide = program.model, program.guide
    else:
        raise ProgramError(
            "program: expected a ppvae VAE or any torch.nn.Module with Pyro model/guide "
            f"methods, or a (model, guide) pair of functions; got {type(program).__name__}"
        )
    for what, fn in (("model", model), ("guide", guide)):
        if not callable(fn):
            raise ProgramError(f"{what}: expected a callable, got {type(fn).__name__}")
    owner = program if isinstance(program, nn.Module) else getattr(model, "__self__", None)
    module = owner if isinstance(owner, nn.Module) else None
    if data_plate is None:
        data_plate = getattr(module, "data_plate", None)
        data_plate = data_plate if isinstance(data_plate, str) and data_plate else DATA_PLATE
    return Program(
        model,
        guide,
        module=module,
        takes_num_data=_accepts(model, "num_data") and _accepts(guide, "num_data"),
        takes_mask=_takes_mask(model, guide, module),
        data_plate=data_plate,
    )


def _takes_mask(model: Callable, guide: Callable, module) -> bool:
    """Model and guide accept ``mask`` (explicitly: ``**kwargs`` alone does not promise to
    use it), and a module may decline (``module.can_mask`` False: a ppvae VAE whose
    likelihood does not factorize over features)."""
    explicit = all("mask" in _parameters(fn) for fn in (model, guide))
    return explicit and bool(getattr(module, "can_mask", True))


def _parameters(fn: Callable) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def program_parameters(program: Program, store_names=None) -> list[torch.Tensor]:
    """The tensors a program is made of: its module's parameters and the unconstrained values
    of its param-store sites (``store_names``; default every site in the store), deduplicated,
    in a stable order."""
    seen, params = set(), []
    named = dict(program.module.named_parameters()) if program.module is not None else {}
    store = pyro.get_param_store()
    for name in sorted(store.keys()):
        if store_names is None or name in store_names:
            named.setdefault(name, store._params[name])
    for p in named.values():
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


@dataclass
class ProgramInfo:
    """What a trace of a program on a few rows says about it.

    Attributes
    ----------
    observed : dict of str to constraint
        Observed sites in the data plate and their distributions' supports.
    local_latents : dict of str to tuple of int
        Latent sites in the data plate and their per-point shapes (event shapes).
    local_supports : dict of str to constraint
        The support of each local latent site (for moving it in unconstrained space).
    global_latents : list of str
        Latent sites outside the plate.
    discrete_latents : list of str
        Latent sites (local or global) whose distributions have a discrete support.
    data_dim : int
        D, the number of columns of ``x``.
    support : constraint or None
        Support of the observed site that holds ``x`` itself (same number of values), for
        checking whole data sets; None where no site observes ``x`` unchanged.
    param_names : set of str
        Param-store sites the program touched (``pyro.param``, and ``pyro.module``'s per
        parameter): other programs' sites left in the store are not this program's.
    data_plate : str
        The name of the plate over data points.
    rows : int
        The rows of ``x`` the program was traced on.
    plate_size : int
        The data plate's full size in that trace (``rows`` for a plate over ``len(x)``; a
        constant for a plate of fixed size).
    subsample_size : int
        The rows the plate drew in that trace (< ``plate_size`` where the program subsamples
        inside its plate).
    enumerated : list of str
        Model sites marked ``infer={"enumerate": "parallel"}`` that the guide does not sample:
        summed out exactly (``TraceEnum_ELBO`` in training, inside each importance weight in
        evaluation).
    guide_enumerated : list of str
        Guide sites marked for enumeration.
    max_plate_nesting : int
        The most vectorized plates any site sits in (for ``TraceEnum_ELBO``).
    """

    observed: dict = field(default_factory=dict)
    local_latents: dict = field(default_factory=dict)
    global_latents: list = field(default_factory=list)
    data_dim: int = 0
    support: object = None
    support_site: str | None = None
    param_names: set = field(default_factory=set)
    local_supports: dict = field(default_factory=dict)
    discrete_latents: list = field(default_factory=list)
    data_plate: str = DATA_PLATE
    rows: int = 0
    plate_size: int = 0
    subsample_size: int = 0
    enumerated: list = field(default_factory=list)
    guide_enumerated: list = field(default_factory=list)
    max_plate_nesting: int = 1

    @property
    def latent_width(self) -> int:
        """Values per data point over all local latents (the k of a VAE)."""
        return sum(math.prod(s) for s in self.local_latents.values())

    @property
    def subsamples(self) -> bool:
        """Whether the program draws a subsample of the rows it is given inside its plate."""
        return 0 < self.subsample_size < self.plate_size

    @property
    def fixed_plate(self) -> bool:
        """Whether the data plate's size is a constant, not the number of rows given."""
        return self.plate_size != self.rows


def _plate_frame(site, plate: str):
    """The frame of the plate named ``plate`` in a site's stack, or None."""
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame
    return None


def _in_data_plate(site, plate: str = DATA_PLATE) -> bool:
    return _plate_frame(site, plate) is not None


def inspect_program(program: Program, x: torch.Tensor, **kwargs) -> ProgramInfo:
    """Trace ``program`` on the rows ``x`` and check the data-plate contract.

    The guide runs first and the model is replayed against it, as an ELBO would; no gradient
    is taken, Pyro's validation is on, and torch's random state is left as it was. Parameters
    a program creates lazily are created here. The returned facts include the plate's full
    size and the rows it drew, so that callers can tell a program that subsamples inside its
    plate, or whose plate has a fixed size, from one whose plate covers the rows it is given.

    Raises
    ------
    ProgramError
        No data plate; an observed site outside it; a site in it whose log-density is not
        one number per data point; or the program failing on the rows (chained).
    """
    plate = program.data_plate
    model_tr, guide_tr, validated = _traces(program, x, kwargs)
    frames = [
        _plate_frame(site, plate) for _, site in _sample_sites(model_tr)
        if _in_data_plate(site, plate)
    ]  # fmt: skip
    if not frames:
        raise ProgramError(
            f"program {program.name} has no sample site inside a plate named {plate!r}; wrap "
            f"the per-data-point sites in pyro.plate({plate!r}, ...), or name the plate it "
            "uses with ppvae.as_program(model, guide, data_plate=...) (see ppvae.program)"
        )
    info = ProgramInfo(data_dim=int(x.shape[-1]), data_plate=plate, rows=int(x.shape[0]))
    frame = frames[0]
    info.plate_size = int(frame.size if frame.full_size is None else frame.full_size)
    info.subsample_size = int(frame.size)
    info.param_names = {
        name for tr in (model_tr, guide_tr) for name, site in tr.nodes.items()
        if site["type"] == "param"
    }  # fmt: skip
    for name, site in _sample_sites(guide_tr):
        if _in_data_plate(site, plate):
            _check_per_point("guide", name, site, plate)
    for which, tr in (("guide", guide_tr), ("model", model_tr)):
        for name, site in _sample_sites(tr):
            if not site["is_observed"] and (site.get("infer") or {}).get("enumerate"):
                if which == "guide":
                    info.guide_enumerated.append(name)
                elif name not in guide_tr.nodes:
                    info.enumerated.append(name)
    info.max_plate_nesting = max(
        (
            sum(1 for f in site["cond_indep_stack"] if f.vectorized)
            for tr in (guide_tr, model_tr)
            for _, site in _sample_sites(tr)
        ),
        default=1,
    )
    for name, site in _sample_sites(model_tr):
        _record_model_site(info, name, site, x, validated)
    if not info.observed:
        raise ProgramError(
            f"program {program.name}'s model observes nothing in the {plate!r} plate"
        )
    return info


def _traces(program: Program, x: torch.Tensor, kwargs: dict):
    """Model and guide traces on ``x`` and whether Pyro's validation was on for them."""
    model, guide = program.bind(None)
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []

    def traces(validate: bool):
        # on a forked RNG: inspecting leaves the random streams where they were
        rng = torch.random.fork_rng(devices=cuda)
        with rng, torch.no_grad(), pyro.validation_enabled(validate):
            guide_tr = poutine.trace(guide).get_trace(x, **kwargs)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, **kwargs)
            model_tr.compute_log_prob()
            guide_tr.compute_log_prob()
        return model_tr, guide_tr

    try:
        return (*traces(validate=True), True)
    except Exception as first:
        # Data outside the support fail Pyro's validation: trace again without it, so that
        # check_support can name the rows; any other fault fails both times.
        try:
            return (*traces(validate=False), False)
        except Exception:
            raise ProgramError(
                f"program {program.name} failed on a minibatch of shape {tuple(x.shape)}: "
                f"{type(first).__name__}: {first}"
            ) from first


def _sample_sites(tr):
    """``(name, site)`` of a trace's sample sites, without plates' subsample sites and
    ``pyro.factor`` penalties."""
    for name, site in tr.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site) and not _is_factor(site):
            yield name, site


def _record_model_site(info: ProgramInfo, name: str, site, x, validated: bool) -> None:
    plate = info.data_plate
    inside = _in_data_plate(site, plate)
    if inside:
        _check_per_point("model", name, site, plate)
    if not site["is_observed"]:
        if getattr(site["fn"], "has_enumerate_support", False) and _is_discrete(site["fn"]):
            info.discrete_latents.append(name)
        if inside:
            info.local_latents[name] = tuple(site["fn"].event_shape)
            info.local_supports[name] = site["fn"].support
        else:
            info.global_latents.append(name)
        return
    if not inside:
        raise ProgramError(
            f"the observed site {name!r} lies outside the plate named {plate!r}; "
            f"observations must be made inside pyro.plate({plate!r}, ...)"
        )
    info.observed[name] = site["fn"].support
    # the site observing x itself gives the support for checking whole data sets, unless
    # the program turned validation off on that distribution
    if (
        info.support is None
        and site["value"].numel() == x.numel()
        and (not validated or _validates(site["fn"]))
    ):
        info.support, info.support_site = site["fn"].support, name


def _is_discrete(fn) -> bool:
    """Whether a distribution's support is discrete (integers, booleans, categories)."""
    support = fn.support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return bool(getattr(support, "is_discrete", False))


def _is_factor(site) -> bool:
    """A ``pyro.factor`` site: a penalty on the log joint, allowed inside or outside the plate."""
    return isinstance(site["fn"], dist.Unit)


def _validates(fn) -> bool:
    """False where the program turned validation off on the distribution itself (as Pyro's
    VAE example does to score intensities with a Bernoulli): its support is then not checked."""
    while fn is not None:
        if getattr(fn, "_validate_args", None) is False:
            return False
        fn = getattr(fn, "base_dist", None)
    return True


def _check_per_point(trace_name: str, name: str, site, plate: str = DATA_PLATE) -> None:
    frame = _plate_frame(site, plate)
    n = frame.size
    shape = tuple(site["log_prob"].shape)
    if shape != (n,):
        raise ProgramError(
            f"{trace_name} site {name!r} has log-density shape {shape} on a plate of {n} "
            f"rows; every site in the {plate!r} plate needs one log-density per data point "
            "(declare its feature dimensions with .to_event(...))"
        )


def check_support(info: ProgramInfo, X: torch.Tensor, what: str) -> None:
    """Raise ``InputError`` if ``X`` has values outside the support of the site observing it."""
    if info.support is None:
        return
    ok = info.support.check(X)
    while ok.dim() > 1:  # independent constraints reduce over event dims already
        ok = ok.all(-1)
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0, 0])
        raise InputError(
            f"{what}: row {row} lies outside the support of the observed site "
            f"{info.support_site!r} ({info.support}); the program's likelihood cannot score it"
        )


def inspect_rows(program: Program, X: torch.Tensor, rows: int, **kwargs) -> ProgramInfo:
    """:func:`inspect_program` on the first ``rows`` rows of ``X``; where the program fails
    there but runs on all of ``X``, the facts of that run (a plate of fixed size, or a
    subsample larger than ``rows``), for the caller to refuse with a message that says why.

    ``kwargs`` holding per-row tensors (``mask``, ``y``) are cut to the same rows.
    """
    n = int(X.shape[0])
    rows = max(1, min(int(rows), n))

    def head(k):
        return head_kwargs(kwargs, k, n)

    try:
        return inspect_program(program, X[:rows], **head(rows))
    except ProgramError as first:
        if rows >= n:
            raise
        try:
            info = inspect_program(program, X, **head(n))
        except ProgramError:
            raise first from None
        if not (info.fixed_plate or info.subsample_size > rows or info.plate_size == n):
            raise first from None
        info.rows_failed, info.first_error = rows, str(first)
        return info


def head_kwargs(kwargs: dict, rows: int, n: int) -> dict:
    """``kwargs`` with every per-row tensor (first dimension ``n``: mask, y) cut to its first
    ``rows`` rows, to go with ``x[:rows]``."""
    return {key: v[:rows] if _per_row(v, n) else v for key, v in kwargs.items()}


def _per_row(value, n: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n


def plate_problem(info: ProgramInfo, rows: int, what: str) -> str | None:
    """Why a program cannot be called on blocks of ``rows`` rows each scored on its own, or
    None. ``what``: who calls it ("fit" on minibatches, an evaluator on chunks)."""
    plate = info.data_plate
    fix = (
        f"write pyro.plate({plate!r}, len(x)) (Pyro's subsample_size inside it is fine)"
    )
    if info.subsamples and info.subsample_size > rows:
        return (
            f"the plate {plate!r} subsamples {info.subsample_size} rows inside it, more than "
            f"the {rows} rows {what} calls it on; use subsample_size=min({info.subsample_size},"
            " len(x))"
        )
    if info.fixed_plate:
        return (
            f"the plate {plate!r} has a fixed size {info.plate_size} whatever rows the program "
            f"is given (traced on {info.rows} rows): {what} calls it on blocks of rows of the "
            f"data; {fix}"
        )
    failed = getattr(info, "rows_failed", None)
    if failed is not None and not info.subsamples:
        return (
            f"the program fails on {failed} rows ({info.first_error}) but runs on all "
            f"{info.rows}: its plate {plate!r} of size {info.plate_size} needs every row (a "
            f"fixed size?), and {what} calls it on blocks of rows of the data; {fix}"
        )
    return None


def local_elbo(program: Program, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """One-draw ELBO of each row of ``x`` given one draw of the global latents, (n,) nats.

    ``log p(x_i, z_i | g) - log q(z_i | x_i, g)`` with ``g ~ q(g)`` and ``z_i ~ q(z_i | x_i,
    g)``: the sites inside the data plate only. The global latents' own terms (log p(g) -
    log q(g), and ``pyro.factor`` penalties outside the plate) are not charged: a held-out
    point is conditioned on the posterior over globals learned from the training data, so
    its expected value does not depend on how many points share a call. The program is
    called unscaled, on exactly the rows given (a caller of a subsampling program passes
    blocks of its subsample size).
    """
    plate = program.data_plate
    guide_tr = poutine.trace(program.guide).get_trace(x, **kwargs)
    model_tr = poutine.trace(poutine.replay(program.model, trace=guide_tr)).get_trace(
        x, **kwargs
    )
    total = torch.zeros(x.shape[0], device=x.device)
    for sign, tr in ((1.0, model_tr), (-1.0, guide_tr)):
        tr.compute_log_prob(lambda name, site: _in_data_plate(site, plate))
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if not _in_data_plate(site, plate):
                continue
            if sign < 0 and name not in model_tr.nodes:
                continue
            total = total + sign * site["log_prob"].reshape(-1)
    return total


def check_mask_contract(program: Program, x: torch.Tensor, mask: torch.Tensor, **kwargs) -> None:
    """Refuse a program whose model's log-density changes when a missing entry changes.

    The model is replayed twice against one guide draw, with the missing entries of ``x``
    (False in ``mask``) at 0 and then at 1; a site whose log-density differs reads entries it
    was told are missing (it takes ``mask`` but does not mask its likelihood), and would
    train on them as observed zeros.

    Raises
    ------
    ProgramError
        Naming the first such site.
    """
    if bool(mask.all()):
        return
    other = torch.where(mask, x, torch.ones_like(x))
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), pyro.validation_enabled(False):
        guide_tr = poutine.trace(program.guide).get_trace(x, mask=mask, **kwargs)
        traces = [
            poutine.trace(poutine.replay(program.model, trace=guide_tr)).get_trace(
                xs, mask=mask, **kwargs
            )
            for xs in (x, other)
        ]
        for tr in traces:
            tr.compute_log_prob()
    for name, site in traces[0].nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        changed = traces[1].nodes[name]["log_prob"] - site["log_prob"]
        if not bool((changed.abs() <= 1e-5 * (1 + site["log_prob"].abs())).all()):
            raise ProgramError(
                f"program {program.name} takes mask, but the log-density of its site {name!r} "
                "changes when a missing entry changes: it scores missing entries as observed "
                "values. Mask the per-feature distribution before summing over features, e.g. "
                "Normal(loc, scale).mask(mask).to_event(1) (see ppvae.program)"
            )
