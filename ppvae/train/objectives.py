"""Which ELBO estimator trains a program, and the KL weight applied to its latent sites."""

from __future__ import annotations

import warnings
from functools import partial

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from ..errors import InputError
from ..program import Program, as_program
from ..vae import known_static
from .iwae import IWAE_ELBO
from .pyro_jit import PATCH_APPLIES, CachedJitTrace_ELBO, CachedJitTraceMeanField_ELBO

__all__ = [
    "ELBOS",
    "LatentScale",
    "analytic_kl",
    "estimator_name",
    "estimator_ran",
    "held_out_elbo",
    "make_elbo",
]

ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "jit": CachedJitTrace_ELBO,
    "jit-meanfield": CachedJitTraceMeanField_ELBO,
    "iwae": IWAE_ELBO,
    "iwae-dreg": partial(IWAE_ELBO, dreg=True),
    "enum": TraceEnum_ELBO,
}
"""Estimators by name; each is called with ``num_particles`` (K draws per data point for the
importance-weighted ``"iwae"`` and ``"iwae-dreg"``, see :mod:`ppvae.train.iwae`)."""


def analytic_kl(program: Program) -> bool:
    """Whether KL(q(z | x) || p(z)) has a closed form: a ppvae VAE whose prior says so."""
    prior = getattr(program.module, "prior", None) if program.is_ppvae else None
    guide = getattr(program.module, "q", None) if program.is_ppvae else None
    return bool(getattr(prior, "analytic_kl", False) and getattr(guide, "analytic_kl", True))


def make_elbo(elbo: ELBO | str | None, num_particles: int, program) -> ELBO:
    """The estimator for ``fit(elbo=...)``: an instance, a name of :data:`ELBOS`, or "auto".

    ``"auto"`` is the analytic-KL ``TraceMeanField_ELBO`` where the prior has a closed-form KL,
    compiled for ppvae's own static VAEs, and ``Trace_ELBO`` otherwise (any user program).
    """
    program = as_program(program)
    if elbo is None:
        return Trace_ELBO(num_particles=num_particles)
    if isinstance(elbo, ELBO):
        if isinstance(elbo, IWAE_ELBO):
            elbo.data_plate = program.data_plate
        return elbo
    key = str(elbo).lower()
    loss = _named_elbo(key, elbo, num_particles, program)
    if isinstance(loss, IWAE_ELBO):
        loss.data_plate = program.data_plate
    return loss


def _named_elbo(key: str, elbo, num_particles: int, program: Program) -> ELBO:
    if key == "auto":
        analytic = analytic_kl(program)
        if analytic and known_static(program):
            if PATCH_APPLIES:
                loss = CachedJitTraceMeanField_ELBO(num_particles=num_particles)
                loss.fallback = True
                return loss
            warnings.warn(
                "the installed pyro-ppl no longer has what ppvae's JIT workaround patches; "
                "training with the eager analytic-KL estimator (same objective)",
                RuntimeWarning,
                stacklevel=3,
            )
        key = "meanfield" if analytic else "trace"
    if key not in ELBOS:
        raise InputError(f"unknown elbo {elbo!r}; choose one of auto, {', '.join(ELBOS)}")
    return ELBOS[key](num_particles=num_particles)


def estimator_name(elbo, program: Program) -> str:
    """The estimator an ELBO name stands for, compiled or not ("meanfield" or "trace")."""
    if elbo == "auto":
        return "meanfield" if analytic_kl(program) else "trace"
    return {"jit-meanfield": "meanfield", "jit": "trace"}.get(elbo, elbo)


def estimator_ran(loss: ELBO) -> str:
    """The name (a key of :data:`ELBOS`) of the estimator instance that trains, or its class
    name for a user's own."""
    if isinstance(loss, IWAE_ELBO):
        return "iwae-dreg" if loss.dreg else "iwae"
    for key in ("jit-meanfield", "jit", "meanfield", "trace", "enum"):  # subclasses first
        if type(loss) is ELBOS[key]:
            return key
    return type(loss).__name__


def held_out_elbo(loss: ELBO, program: Program) -> ELBO:
    """The estimator of the held-out ELBO (one guide draw per point): the training one where
    it is an ELBO, else the analytic-KL or plain trace ELBO of the same program."""
    if not isinstance(loss, IWAE_ELBO):
        return loss
    return TraceMeanField_ELBO() if analytic_kl(program) else Trace_ELBO()


def enumerating_elbo(loss: ELBO, requested, info, num_particles: int) -> ELBO:
    """The estimator for a program with sites marked for enumeration: ``TraceEnum_ELBO`` with
    the program's ``max_plate_nesting``, chosen for ``elbo="auto"`` or ``"enum"``; any other
    estimator would draw the marked sites instead of summing them out, and is refused."""
    if not isinstance(loss, TraceEnum_ELBO):
        if requested != "auto":
            site = (info.enumerated or info.guide_enumerated)[0]
            raise InputError(
                f"elbo={requested!r}: the site {site!r} is marked for enumeration, which this "
                "estimator would draw instead of summing out; use elbo='enum' (or 'auto')"
            )
        loss = TraceEnum_ELBO(num_particles=num_particles)
    loss.max_plate_nesting = info.max_plate_nesting
    return loss


class LatentScale(Messenger):
    """Multiply the log-density scale of the named latent sites by ``factor``.

    Applied to model and guide alike, it weights ``log p(z) - log q(z | x)`` (or the analytic
    KL) by ``factor``: the beta of a beta-VAE, or a KL warm-up coefficient. ``fit`` names the
    program's local latent sites (those in the ``"data"`` plate, read from a trace).
    """

    def __init__(self, *names: str, factor: float = 1.0):
        super().__init__()
        self.names = set(names)
        self.factor = factor

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.names and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.factor
