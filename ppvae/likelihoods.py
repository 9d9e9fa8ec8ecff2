"""Observation models p(x | z).

A likelihood is an ``nn.Module`` (it may own parameters, such as a learned noise scale) that
turns the decoder's output, shape (..., D), into a ``pyro.distributions`` object with
``event_shape == (D,)``. It also checks that data lie in its support, so that a bad data set
fails with a clear message before any training.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LIKELIHOODS",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "Laplace",
    "Likelihood",
    "make_likelihood",
]


class Likelihood(nn.Module):
    """Base class: ``forward(params) -> Distribution`` with event dim 1."""

    name = "likelihood"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError

    def check_support(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise ``ValueError`` if ``x`` has values outside the support."""

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | z] for decoder output ``params``."""
        return self(params).mean

    def config(self) -> dict:
        """JSON-able constructor arguments (for saving)."""
        return {"name": self.name}


class Bernoulli(Likelihood):
    """Independent Bernoulli pixels; the decoder outputs logits."""

    name = "bernoulli"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params).to_event(1)

    def check_support(self, x: torch.Tensor, what: str = "data") -> None:
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            v = float(x[bad][0])
            raise ValueError(
                f"{what}: the Bernoulli likelihood needs binary data in {{0, 1}}, found {v:g} "
                f"({int(bad.sum())} non-binary values); binarize the data "
                "(load_dataset(..., binarize='static'), or fit(..., binarize='dynamic'))"
            )

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class Gaussian(Likelihood):
    """Gaussian pixels ``N(mu(z), sigma^2)``; the decoder outputs the mean.

    Parameters
    ----------
    data_dim : int
        D (needed for ``scale="diagonal"``).
    scale : {"isotropic", "diagonal"} or float
        A learned scalar sigma, a learned sigma per dimension, or a fixed sigma.
    init_scale : float
        Initial sigma for the learned variants.
    min_scale : float
        Floor on sigma, keeping it positive (sigma = min_scale + softplus(raw)).
    """

    name = "gaussian"

    def __init__(
        self,
        data_dim: int,
        scale: str | float = "isotropic",
        init_scale: float = 0.5,
        min_scale: float = 1e-4,
    ):
        super().__init__()
        self.data_dim = int(data_dim)
        self.min_scale = float(min_scale)
        self.init_scale = float(init_scale)
        if isinstance(scale, str):
            if scale not in ("isotropic", "diagonal"):
                raise ValueError(
                    f"Gaussian scale must be 'isotropic', 'diagonal' or a number, got {scale!r}"
                )
            if not init_scale > min_scale:
                raise ValueError(f"init_scale must exceed min_scale={min_scale}")
            shape = (1,) if scale == "isotropic" else (self.data_dim,)
            raw = math.log(math.expm1(init_scale - min_scale))  # inverse softplus
            self.raw_scale = nn.Parameter(torch.full(shape, raw))
            self.scale_mode = scale
        else:
            if not float(scale) > 0:
                raise ValueError(f"a fixed Gaussian scale must be positive, got {scale}")
            self.register_buffer("fixed_scale", torch.tensor(float(scale)))
            self.scale_mode = float(scale)

    @property
    def scale(self) -> torch.Tensor:
        """sigma, shape (1,), (D,) or ()."""
        if isinstance(self.scale_mode, float):
            return self.fixed_scale
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, self.scale.expand(params.shape)).to_event(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def config(self) -> dict:
        return {
            "name": self.name,
            "scale": self.scale_mode,
            "init_scale": self.init_scale,
            "min_scale": self.min_scale,
        }


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli pixels on [0, 1] (Loaiza-Ganem & Cunningham 2019); decoder logits.

    A proper density for intensities in [0, 1], unlike the Bernoulli cross-entropy often
    applied to them.
    """

    name = "continuous-bernoulli"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params).to_event(1)

    def check_support(self, x: torch.Tensor, what: str = "data") -> None:
        bad = (x < 0) | (x > 1)
        if bool(bad.any()):
            raise ValueError(
                f"{what}: the continuous Bernoulli likelihood needs data in [0, 1], found "
                f"{float(x[bad][0]):g} ({int(bad.sum())} values outside)"
            )


class Laplace(Gaussian):
    """Laplace pixels ``Laplace(mu(z), b)``; the decoder outputs the location.

    Same scale options as :class:`Gaussian` (``b`` learned isotropic, per dimension, or fixed).
    """

    name = "laplace"

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Laplace(params, self.scale.expand(params.shape)).to_event(1)


LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "continuous-bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
    "laplace": Laplace,
}


def make_likelihood(spec: str | dict | Likelihood, data_dim: int) -> Likelihood:
    """Build a likelihood from a name, a saved config dict, or pass an instance through."""
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, dict):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
    else:
        name, kwargs = spec, {}
    key = str(name).lower()
    if key not in LIKELIHOODS:
        raise ValueError(
            f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)} "
            "or pass a Likelihood instance"
        )
    if key in ("gaussian", "laplace"):
        return LIKELIHOODS[key](data_dim, **kwargs)
    return LIKELIHOODS[key](**kwargs)
