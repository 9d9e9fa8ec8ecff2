"""Guides q(z | x): the extension point for the recognition model, as plain Pyro as the prior's.

A guide is an ``nn.Module`` subclassing :class:`Guide` with

* ``encoder(data_dim, hidden, activation)``: the default network, whose output feeds
* ``distribution(out)``: q(z | x) as a Pyro distribution with batch shape (B,) and event
  shape (k,), sampled at the VAE guide's site ``"z"``;
* ``moments(out)``: its mean and per-dimension standard deviation (for ``VAE.encode``,
  reconstructions and plots); the default estimates them from draws;
* ``analytic_kl``: whether KL(q || N(0, I)) has a closed form (``TraceMeanField_ELBO``);
* ``config()``: JSON-able constructor arguments, for saving.

Built in: :class:`DiagonalGaussian` (the default), :class:`FullRankGaussian` (a mean and a
lower-triangular scale, ``MultivariateNormal(scale_tril=...)``) and :class:`IAF` (a diagonal
base followed by inverse autoregressive flow layers conditioned on an encoder context, built
from Pyro's ``conditional_affine_autoregressive``). A new guide takes a few lines; a Student-t
q with the default diagonal encoder, for instance::

    class StudentTGuide(ppvae.Guide):
        def distribution(self, out):
            loc, scale = out
            return dist.StudentT(4.0, loc, scale).to_event(1)

Models import nothing from training, evaluation or the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.distributions.kl import register_kl
from torch.nn import functional as F

from .custom_parts import build_custom, custom_config
from .errors import InputError
from .nets import GaussianEncoder, mlp

__all__ = ["GUIDES", "IAF", "DiagonalGaussian", "FullRankGaussian", "Guide", "make_guide"]


class Guide(nn.Module):
    """Base class: q(z | x) over a ``latent_dim``-dimensional z (default: diagonal encoder)."""

    name = "guide"
    analytic_kl = False

    def __init__(self, latent_dim: int):
        super().__init__()
        if isinstance(latent_dim, bool) or int(latent_dim) != latent_dim or latent_dim < 1:
            raise InputError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)

    def encoder(self, data_dim: int, hidden: Sequence[int], activation: str) -> nn.Module:
        """The default network for this guide (an MLP giving ``(loc, scale)``)."""
        return GaussianEncoder(data_dim, self.latent_dim, hidden, activation)

    def distribution(self, out) -> dist.TorchDistribution:  # pragma: no cover - abstract
        """q(z | x) from the encoder's output ``out``."""
        raise NotImplementedError

    def moments(self, out, draws: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q per dimension, each (B, k); here from draws."""
        z = self.distribution(out).sample((draws,))
        return z.mean(0), z.std(0)

    def config(self) -> dict:
        """JSON-able constructor arguments; a guide of your own class is saved as its import
        path and :meth:`init_kwargs` (see :mod:`ppvae.custom_parts`)."""
        if type(self) not in GUIDES.values():
            return custom_config(self, self.init_kwargs())
        return {"name": self.name}

    def init_kwargs(self) -> dict:
        """Keyword arguments that rebuild this guide (override where the constructor takes
        more than ``latent_dim``)."""
        return {"latent_dim": self.latent_dim}


class DiagonalGaussian(Guide):
    """``q(z | x) = N(loc(x), diag(scale(x)^2))``: the encoder gives ``(loc, scale)``."""

    name = "diagonal"
    analytic_kl = True

    def distribution(self, out) -> dist.TorchDistribution:
        loc, scale = out
        return dist.Normal(loc, scale).to_event(1)

    def moments(self, out, draws: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        return out


class FullRankEncoder(nn.Module):
    """MLP giving the mean and a lower-triangular scale (positive diagonal) of a Gaussian."""

    def __init__(self, data_dim, latent_dim, hidden=(256,), activation="relu", min_scale=1e-4):
        super().__init__()
        k = self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        self.net = mlp(data_dim, hidden, k + k * (k + 1) // 2, activation)
        rows, cols = torch.tril_indices(k, k)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        with torch.no_grad():  # start uncorrelated: the off-diagonal outputs begin at zero
            last = self.net[-1]
            off = k + (rows != cols).nonzero().squeeze(-1)
            last.weight[off] = 0.0
            last.bias[off] = 0.0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.latent_dim
        out = self.net(x)
        loc, entries = out[..., :k], out[..., k:]
        tril = out.new_zeros(*out.shape[:-1], k, k)
        tril[..., self._rows, self._cols] = entries
        diag = F.softplus(tril.diagonal(dim1=-2, dim2=-1)) + self.min_scale
        scale_tril = tril.tril(-1) + torch.diag_embed(diag)
        return loc, scale_tril


@register_kl(dist.MultivariateNormal, dist.Independent)
def _kl_fullrank_diagonal(p: dist.MultivariateNormal, q: dist.Independent) -> torch.Tensor:
    """KL(N(m, L L^T) || N(mu, diag(sigma^2))) in closed form, so that a full-rank guide
    against a Gaussian prior trains on the analytic-KL ``TraceMeanField_ELBO``:
    ``0.5 [sum_j (S_jj + (m_j - mu_j)^2) / sigma_j^2 - k + sum_j log sigma_j^2 - log det S]``."""
    base = q.base_dist
    if not isinstance(base, dist.Normal) or q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    var = base.scale.pow(2)
    L = p._unbroadcasted_scale_tril
    cov_diag = L.pow(2).sum(-1)
    logdet = 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    quad = ((cov_diag + (p.loc - base.loc).pow(2)) / var).sum(-1)
    return 0.5 * (quad - p.event_shape[-1] + var.log().sum(-1) - logdet)


class FullRankGaussian(Guide):
    """``q(z | x) = N(loc(x), L(x) L(x)^T)`` with a lower-triangular ``L`` (all correlations).

    Its KL to a Gaussian prior with a diagonal covariance has a closed form (registered with
    ``torch.distributions.kl``), so it trains on the analytic-KL estimator like the diagonal
    guide (eagerly: it is not compiled).
    """

    name = "fullrank"
    analytic_kl = True

    def encoder(self, data_dim, hidden, activation) -> nn.Module:
        return FullRankEncoder(data_dim, self.latent_dim, hidden, activation)

    def distribution(self, out) -> dist.TorchDistribution:
        loc, scale_tril = out
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)

    def moments(self, out, draws: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale_tril = out
        return loc, scale_tril.pow(2).sum(-1).sqrt().expand(loc.shape)


class ContextEncoder(nn.Module):
    """MLP trunk giving a diagonal Gaussian's ``(loc, scale)`` and a context vector ``h``."""

    def __init__(self, data_dim, latent_dim, context_dim, hidden=(256,), activation="relu"):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.base = GaussianEncoder(data_dim, latent_dim, hidden, activation)
        widths = tuple(hidden)
        self.context = mlp(data_dim, widths, int(context_dim), activation)

    def forward(self, x: torch.Tensor):
        loc, scale = self.base(x)
        return loc, scale, self.context(x)


class IAF(Guide):
    """A diagonal Gaussian base followed by ``num_flows`` inverse autoregressive flow layers
    (Kingma et al. 2016), each an affine autoregressive transform whose network also sees an
    encoder context h(x) (Pyro's ``conditional_affine_autoregressive``).

    Sampling and scoring the sample just drawn take one pass per layer (Pyro caches the
    inverse); the log-density of an arbitrary z inverts each layer dimension by dimension.
    """

    name = "iaf"

    def __init__(
        self,
        latent_dim: int,
        num_flows: int = 2,
        context_dim: int = 32,
        flow_hidden: Sequence[int] = (64,),
    ):
        super().__init__(latent_dim)
        for what, v in (("num_flows", num_flows), ("context_dim", context_dim)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise InputError(f"{what} must be a positive integer, got {v!r}")
        self.num_flows, self.context_dim = int(num_flows), int(context_dim)
        self.flow_hidden = tuple(int(h) for h in flow_hidden)
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(
                self.latent_dim, self.context_dim, hidden_dims=list(self.flow_hidden)
            )
            for _ in range(self.num_flows)
        )

    def encoder(self, data_dim, hidden, activation) -> nn.Module:
        return ContextEncoder(data_dim, self.latent_dim, self.context_dim, hidden, activation)

    def distribution(self, out) -> dist.TorchDistribution:
        loc, scale, context = out
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(context) for f in self.flows])

    def config(self) -> dict:
        return {
            **super().config(),
            "num_flows": self.num_flows,
            "context_dim": self.context_dim,
            "flow_hidden": list(self.flow_hidden),
        }


GUIDES: dict[str, type[Guide]] = {
    "diagonal": DiagonalGaussian,
    "fullrank": FullRankGaussian,
    "iaf": IAF,
}


def make_guide(spec: str | dict | Guide | None, latent_dim: int) -> Guide:
    """A guide from a name, a saved config, or an instance (checked against ``latent_dim``)."""
    if spec is None:
        spec = "diagonal"
    if isinstance(spec, Guide):
        if spec.latent_dim != latent_dim:
            raise InputError(
                f"the guide has latent_dim={spec.latent_dim}, the VAE latent_dim={latent_dim}"
            )
        return spec
    if isinstance(spec, dict) and "import" in spec:
        return make_guide(build_custom(spec, Guide, "guide"), latent_dim)
    options = {}
    if isinstance(spec, dict):
        options = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name")
    if spec not in GUIDES:
        raise InputError(f"unknown guide {spec!r}; choose one of {', '.join(GUIDES)}")
    return GUIDES[spec](latent_dim, **options)
