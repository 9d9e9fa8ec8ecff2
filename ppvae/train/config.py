"""One validated owner of the training settings.

:class:`TrainConfig` holds every setting ``fit`` uses. Settings left as None are filled from the
program's ``training_defaults`` (a class attribute ppvae's VAEs and autoencoders declare; a
user's program may declare one too) and then from :data:`DEFAULTS`; :meth:`TrainConfig.resolve`
does both and validates every value once, naming the parameter in its error.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from pyro.infer import ELBO

from ..errors import InputError
from ..program import Program

__all__ = ["DEFAULTS", "RESUME_MAY_CHANGE", "TrainConfig", "resolve_device"]

DEFAULTS = {"elbo": "auto", "lr": 1e-3, "betas": (0.9, 0.999), "lr_decay": 1.0, "decay_start": 0.0}
"""Defaults of settings a program's ``training_defaults`` does not give."""

RESUME_MAY_CHANGE = ("epochs", "lr", "clip_norm", "device", "progress", "validate")
"""Settings a resumed run may change: the usual remedies after a divergence (a lower learning
rate, clipping), a longer run, another device. Everything else must be the interrupted run's."""


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse a device string; a clear ``InputError`` if it is unknown or unavailable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(f"{name} must be positive, got {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (see :func:`ppvae.fit` for their meaning).

    Build one with :meth:`resolve`, which fills the settings left as None from the program and
    validates all of them; ``fit(...)``'s keywords are the convenient face of this object.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    betas: tuple[float, float] | None = None
    lr_decay: float | None = None
    decay_start: float | None = None
    elbo: ELBO | str | None = None
    num_particles: int = 1
    seed: int = 0
    binarize: str | None = None
    clip_norm: float | None = None
    kl_weight: float = 1.0
    kl_warmup_epochs: int = 0
    device: str | torch.device = "cpu"
    progress: bool | None = None
    validate: bool | None = None
    labelled_per_batch: int | None = None

    @classmethod
    def resolve(cls, program: Program | None = None, config=None, **settings) -> TrainConfig:
        """Defaults from ``program.training_defaults`` then :data:`DEFAULTS`, overridden by
        ``config`` (a TrainConfig) and then by ``settings``; validated.

        Raises
        ------
        InputError
            An unknown setting or a value out of range, naming the parameter.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise InputError(f"unknown training setting {unknown[0]!r}")
        if config is not None and not isinstance(config, cls):
            raise InputError(f"config must be a TrainConfig, got {type(config).__name__}")
        base = config if config is not None else cls()
        merged = dataclasses.replace(base, **settings)
        declared = getattr(getattr(program, "module", None), "training_defaults", None) or {}
        filled = {
            key: declared.get(key, DEFAULTS[key])
            for key in DEFAULTS
            if getattr(merged, key) is None
        }
        return dataclasses.replace(merged, **filled)._validated()

    def _validated(self) -> TrainConfig:
        _integer("epochs", self.epochs, 0)
        _integer("batch_size", self.batch_size, 1)
        _integer("num_particles", self.num_particles, 1)
        _integer("kl_warmup_epochs", self.kl_warmup_epochs, 0)
        _integer("seed", self.seed, 0)
        if self.labelled_per_batch is not None:
            _integer("labelled_per_batch", self.labelled_per_batch, 1)
        if self.seed >= 2**32:  # what every RNG it seeds (Pyro, NumPy, torch) accepts
            raise InputError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        for name in ("progress", "validate"):
            if getattr(self, name) not in (None, True, False):
                raise InputError(
                    f"{name} must be True, False or None (the default), got {getattr(self, name)!r}"
                )
        _positive("lr", self.lr)
        _positive("lr_decay", self.lr_decay)
        if self.clip_norm is not None:
            _positive("clip_norm", self.clip_norm)
        if not 0.0 <= self.decay_start < 1.0:
            raise InputError(f"decay_start must lie in [0, 1), got {self.decay_start!r}")
        if isinstance(self.kl_weight, bool) or not (
            isinstance(self.kl_weight, (int, float))
            and self.kl_weight >= 0
            and math.isfinite(self.kl_weight)
        ):
            raise InputError(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise InputError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.binarize not in (None, "dynamic"):
            raise InputError(f"binarize must be None or 'dynamic', got {self.binarize!r}")
        if not isinstance(self.elbo, (str, ELBO)):
            raise InputError(f"elbo must be a name or a pyro.infer.ELBO, got {self.elbo!r}")
        resolve_device(self.device)
        return dataclasses.replace(
            self,
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            betas=tuple(float(b) for b in betas),
            lr=float(self.lr),
            lr_decay=float(self.lr_decay),
            decay_start=float(self.decay_start),
            num_particles=int(self.num_particles),
            kl_weight=float(self.kl_weight),
            kl_warmup_epochs=int(self.kl_warmup_epochs),
            labelled_per_batch=(
                None if self.labelled_per_batch is None else int(self.labelled_per_batch)
            ),
        )

    def record(self, batch_size: int) -> dict:
        """The JSON-able settings a checkpoint stores and a resumed run is checked against
        (``batch_size``: the effective one, at most N)."""
        return {
            "batch_size": int(batch_size),
            "lr": self.lr,
            "betas": list(self.betas),
            "lr_decay": self.lr_decay,
            "decay_start": self.decay_start,
            "elbo": self.elbo if isinstance(self.elbo, str) else type(self.elbo).__name__,
            "num_particles": self.num_particles,
            "seed": int(self.seed),
            "binarize": self.binarize,
            "clip_norm": self.clip_norm,
            "kl_weight": self.kl_weight,
            "kl_warmup_epochs": self.kl_warmup_epochs,
            "labelled_per_batch": self.labelled_per_batch,
        }

    def kl_factor(self, epoch: int) -> float:
        """The KL weight of epoch ``epoch`` (0-based): ``kl_weight`` after a linear warm-up."""
        warm = self.kl_warmup_epochs
        return self.kl_weight * (min(1.0, (epoch + 1) / warm) if warm else 1.0)


class HoldThenDecay:
    """Learning-rate factor: 1 for the first ``start`` share of steps, then exponential decay
    reaching ``final`` at the last step."""

    def __init__(self, total_steps: int, final: float, start: float):
        self.hold = int(start * total_steps)
        self.span = max(1, total_steps - self.hold)
        self.log_final = math.log(final)

    def __call__(self, step: int) -> float:
        if step <= self.hold:
            return 1.0
        return math.exp(self.log_final * min(1.0, (step - self.hold) / self.span))
