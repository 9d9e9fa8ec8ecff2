"""Priors p(z): the extension point for Bayesian modelers.

The protocol is plain Pyro. A prior is an ``nn.Module`` with

* ``model(plate)``: called by the VAE's model *outside* the data plate, it must make the
  sample site ``"z"`` inside ``plate`` (``with plate: pyro.sample("z", ...)``) and return z.
  Global latent variables or hyperparameters, if any, are sampled before entering the plate,
  outside it, so Pyro does not scale them by N / B;
* ``guide(plate)``: called by the VAE's guide before the encoder's ``"z"`` site; it makes the
  guide sites of any global latents the prior introduced (the default makes none);
* ``log_prob(z)``: log p(z), shape (...,), for evaluation and plots;
* ``analytic_kl`` (class attribute): True when KL(N(loc, scale) || p(z)) has a closed form, so
  that :func:`ppvae.fit` may use ``TraceMeanField_ELBO``; False means Monte Carlo.

A prior without sites of its own only needs ``distribution()``: ``model`` and ``log_prob``
use it. A prior that needs the VAE (the VampPrior uses its encoder) overrides ``attach(vae)``,
which the VAE calls once when the prior is given to it.

Writing a new prior takes a few lines; a Student-t prior, for instance::

    class StudentT(ppvae.Prior):
        analytic_kl = False

        def __init__(self, latent_dim, df=3.0):
            super().__init__(latent_dim)
            self.df = df
            self.register_buffer("zero", torch.zeros(latent_dim))

        def distribution(self):
            return dist.StudentT(self.df, self.zero, torch.ones_like(self.zero)).to_event(1)
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .custom_parts import build_custom, custom_config
from .errors import InputError

__all__ = [
    "PRIORS",
    "HierarchicalGaussian",
    "LearnedGaussian",
    "MixtureOfGaussians",
    "Prior",
    "StandardNormal",
    "VampPrior",
    "make_prior",
]


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class Prior(nn.Module):
    """Base class for priors over a ``latent_dim``-dimensional z."""

    name = "prior"
    analytic_kl = False

    @property
    def eval_width(self) -> int:
        """Floats that ``log_prob`` touches per z (for chunking evaluation memory)."""
        return self.latent_dim

    def __init__(self, latent_dim: int):
        super().__init__()
        if isinstance(latent_dim, bool) or int(latent_dim) != latent_dim or latent_dim < 1:
            raise InputError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)

    def attach(self, vae) -> None:
        """Called by the VAE that owns this prior (default: nothing to do)."""

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
        """JSON-able constructor arguments (for saving); a prior of your own class is saved
        as its import path and :meth:`init_kwargs` (see :mod:`ppvae.custom_parts`)."""
        if type(self) not in PRIORS.values():
            return custom_config(self, self.init_kwargs())
        return {"name": self.name, "latent_dim": self.latent_dim}

    def init_kwargs(self) -> dict:
        """Keyword arguments that rebuild this prior (override where the constructor takes
        more than ``latent_dim``)."""
        return {"latent_dim": self.latent_dim}


class StandardNormal(Prior):
    """``z ~ N(0, I_k)``."""

    name = "standard"
    analytic_kl = True

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("_zeros", torch.zeros(self.latent_dim))

    def distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self._zeros, torch.ones_like(self._zeros)).to_event(1)


class LearnedGaussian(Prior):
    """``z ~ N(mu, diag(sigma^2))`` with learned mean and scale (``sigma >= 1e-3``)."""

    name = "learned"
    analytic_kl = True

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(self.latent_dim))
        self.raw_scale = nn.Parameter(torch.full((self.latent_dim,), _inv_softplus(1.0 - 1e-3)))

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + 1e-3

    def distribution(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class MixtureOfGaussians(Prior):
    """``z ~ sum_c pi_c N(mu_c, diag(sigma_c^2))`` with learned weights, means and scales.

    Parameters
    ----------
    latent_dim : int
    n_components : int
        C, the number of mixture components.
    init_spread : float
        Standard deviation of the random initial means.
    """

    name = "mog"

    def __init__(self, latent_dim: int, n_components: int = 10, init_spread: float = 1.0):
        super().__init__(latent_dim)
        if int(n_components) != n_components or n_components < 1:
            raise InputError(f"n_components must be a positive integer, got {n_components!r}")
        self.n_components = int(n_components)
        self.init_spread = float(init_spread)
        self.logits = nn.Parameter(torch.zeros(self.n_components))
        self.locs = nn.Parameter(torch.randn(self.n_components, self.latent_dim) * init_spread)
        self.raw_scales = nn.Parameter(
            torch.full((self.n_components, self.latent_dim), _inv_softplus(1.0 - 1e-3))
        )

    @property
    def scales(self) -> torch.Tensor:
        return F.softplus(self.raw_scales) + 1e-3

    @property
    def eval_width(self) -> int:
        return self.n_components * self.latent_dim

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def distribution(self) -> dist.TorchDistribution:
        components = dist.Normal(self.locs, self.scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)

    def config(self) -> dict:
        return {
            **super().config(),
            "n_components": self.n_components,
            "init_spread": self.init_spread,
        }


class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling 2018): ``p(z) = (1/C) sum_c q(z | u_c)``.

    A uniform mixture of the VAE's own encoder posteriors at C learned pseudo-inputs u_c
    (shape (C, D), initialized uniformly in [0, 1]). The prior is bound to the VAE it is given
    to, whose encoder it evaluates at the pseudo-inputs.
    """

    name = "vamp"

    def __init__(self, latent_dim: int, n_pseudo_inputs: int = 500):
        super().__init__(latent_dim)
        if int(n_pseudo_inputs) != n_pseudo_inputs or n_pseudo_inputs < 1:
            raise InputError(f"n_pseudo_inputs must be a positive integer, got {n_pseudo_inputs!r}")
        self.n_pseudo_inputs = int(n_pseudo_inputs)
        self._encode = None
        self.pseudo_inputs = None

    @property
    def eval_width(self) -> int:
        return self.n_pseudo_inputs * self.latent_dim

    def attach(self, vae) -> None:
        if self.pseudo_inputs is None:
            self.pseudo_inputs = nn.Parameter(torch.rand(self.n_pseudo_inputs, vae.data_dim))
        # a plain function, not a submodule: the encoder's weights belong to the VAE
        self._encode = vae.encode

    def distribution(self) -> dist.TorchDistribution:
        if self._encode is None:
            raise RuntimeError("a VampPrior must be given to a VAE before use")
        loc, scale = self._encode(self.pseudo_inputs)
        mix = dist.Categorical(logits=torch.zeros(self.n_pseudo_inputs, device=loc.device))
        return dist.MixtureSameFamily(mix, dist.Normal(loc, scale).to_event(1))

    def config(self) -> dict:
        return {**super().config(), "n_pseudo_inputs": self.n_pseudo_inputs}


class HierarchicalGaussian(Prior):
    """A global scale shared by all codes: ``tau ~ LogNormal(0, 1)``, ``z_n | tau ~ N(0, tau^2 I)``.

    ``tau`` is a global latent variable. The model samples it outside the data plate (so
    Pyro does not scale it by N / B) and :meth:`guide` gives it its own guide site,
    ``q(tau) = LogNormal(m, s)`` with learned m and s. For evaluation, ``log_prob`` plugs in the
    posterior median ``exp(m)``, and :mod:`ppvae.evaluate` fixes ``tau`` there, so
    per-point likelihoods are conditional on it.
    """

    name = "hierarchical"

    def __init__(self, latent_dim: int, tau_loc: float = 0.0, tau_scale: float = 1.0):
        super().__init__(latent_dim)
        self.tau_loc = float(tau_loc)
        self.tau_scale = float(tau_scale)
        self.q_tau_loc = nn.Parameter(torch.tensor(0.0))
        self.q_tau_raw_scale = nn.Parameter(torch.tensor(_inv_softplus(0.1)))
        self.register_buffer("_zeros", torch.zeros(self.latent_dim))

    def _tau_prior(self) -> dist.TorchDistribution:
        loc = torch.tensor(self.tau_loc, device=self._zeros.device)
        return dist.LogNormal(loc, torch.tensor(self.tau_scale, device=loc.device))

    def q_tau(self) -> dist.TorchDistribution:
        """The guide's q(tau)."""
        return dist.LogNormal(self.q_tau_loc, F.softplus(self.q_tau_raw_scale) + 1e-4)

    def model(self, plate: pyro.plate) -> torch.Tensor:
        tau = pyro.sample("tau", self._tau_prior())
        with plate:
            scale = tau.unsqueeze(-1) * torch.ones_like(self._zeros)
            return pyro.sample("z", dist.Normal(self._zeros, scale).to_event(1))

    def guide(self, plate: pyro.plate) -> None:
        pyro.sample("tau", self.q_tau())

    def point_estimates(self) -> dict[str, torch.Tensor]:
        """Plug-in values of the global latents for evaluation: the median of q(tau)."""
        return {"tau": self.q_tau_loc.detach().exp()}

    def distribution(self) -> dist.TorchDistribution:
        tau = self.q_tau_loc.exp()
        return dist.Normal(self._zeros, tau * torch.ones_like(self._zeros)).to_event(1)

    def config(self) -> dict:
        return {**super().config(), "tau_loc": self.tau_loc, "tau_scale": self.tau_scale}


PRIORS: dict[str, type[Prior]] = {
    "standard": StandardNormal,
    "learned": LearnedGaussian,
    "mog": MixtureOfGaussians,
    "vamp": VampPrior,
    "hierarchical": HierarchicalGaussian,
}


def make_prior(spec: str | dict | Prior | None, latent_dim: int) -> Prior:
    """Build a prior from a name, a saved config dict, or pass an instance through."""
    if spec is None:
        return StandardNormal(latent_dim)
    if isinstance(spec, Prior):
        if spec.latent_dim != latent_dim:
            raise InputError(f"prior has latent_dim={spec.latent_dim}, the model has {latent_dim}")
        return spec
    if isinstance(spec, dict) and "import" in spec:
        return make_prior(build_custom(spec, Prior, "prior"), latent_dim)
    kwargs = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = str(kwargs.pop("name")).lower()
    kwargs.pop("latent_dim", None)
    if name not in PRIORS:
        raise InputError(
            f"unknown prior {name!r}; choose one of {', '.join(PRIORS)} or pass a Prior instance"
        )
    return PRIORS[name](latent_dim, **kwargs)
