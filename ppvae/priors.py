"""Priors p(z): the extension point for Bayesian modelers.

The protocol is plain Pyro. A prior is an ``nn.Module`` with

* ``model(plate)``: called by the VAE's model *outside* the data plate, it must make the
  sample site ``"z"`` inside ``plate`` (``with plate: pyro.sample("z", ...)``) and return z.
  Global latent variables or hyperparameters, if any, are sampled before entering the plate;
* ``guide(plate)``: called by the VAE's guide; it makes the guide sites of any global latents
  the prior introduced (the default makes none);
* ``log_prob(z)``: log p(z), shape (...,), for evaluation.

``model`` and ``log_prob`` of the default implementation both use ``distribution()``, so a
prior with no sites of its own only needs to implement that one method.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["PRIORS", "Prior", "StandardNormal", "make_prior"]


class Prior(nn.Module):
    """Base class for priors over a ``latent_dim``-dimensional z."""

    name = "prior"

    def __init__(self, latent_dim: int):
        super().__init__()
        if isinstance(latent_dim, bool) or int(latent_dim) != latent_dim or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)

    def distribution(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        """p(z) with ``event_shape == (latent_dim,)`` and empty batch shape."""
        raise NotImplementedError

    def model(self, plate: pyro.plate) -> torch.Tensor:
        with plate:
            return pyro.sample("z", self.distribution())

    def guide(self, plate: pyro.plate) -> None:
        return None

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.distribution().log_prob(z)

    def config(self) -> dict:
        return {"name": self.name, "latent_dim": self.latent_dim}


class StandardNormal(Prior):
    """``z ~ N(0, I_k)``."""

    name = "standard"

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("_zeros", torch.zeros(self.latent_dim))

    def distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self._zeros, torch.ones_like(self._zeros)).to_event(1)


PRIORS = {"standard": StandardNormal}


def make_prior(spec: str | dict | Prior | None, latent_dim: int) -> Prior:
    """Build a prior from a name, a saved config dict, or pass an instance through."""
    if spec is None:
        return StandardNormal(latent_dim)
    if isinstance(spec, Prior):
        if spec.latent_dim != latent_dim:
            raise ValueError(f"prior has latent_dim={spec.latent_dim}, the model has {latent_dim}")
        return spec
    kwargs = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = str(kwargs.pop("name")).lower()
    kwargs.pop("latent_dim", None)
    if name not in PRIORS:
        raise ValueError(
            f"unknown prior {name!r}; choose one of {', '.join(PRIORS)} or pass a Prior instance"
        )
    return PRIORS[name](latent_dim, **kwargs)
