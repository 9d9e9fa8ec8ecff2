"""Encoder and decoder networks.

Shapes are the contract a VAE relies on, so any module that follows them can be passed as
``encoder=`` / ``decoder=``:

* an **encoder** maps x of shape (..., D) to ``(loc, scale)``, each of shape (..., k), scale > 0;
* a **decoder** maps z of shape (..., k) to the likelihood's parameters, shape (..., D).

Leading batch dimensions must broadcast (importance sampling evaluates the decoder on
z of shape (K, N, k)).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .errors import InputError

__all__ = [
    "ACTIVATIONS",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianEncoder",
    "LinearGaussianEncoder",
    "MLPDecoder",
    "mlp",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
}


def _activation(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise InputError(
            f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}"
        ) from None


def _check_widths(hidden: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(int(h) for h in hidden)
    if any(h < 1 for h in widths):
        raise InputError(f"hidden widths must be positive, got {tuple(hidden)}")
    return widths


def mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"
) -> nn.Sequential:
    """A multilayer perceptron ``in_dim -> hidden... -> out_dim``, no final activation."""
    act = _activation(activation)
    dims = (int(in_dim), *_check_widths(hidden), int(out_dim))
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """MLP encoder for a diagonal Gaussian ``q(z | x) = N(loc(x), diag(scale(x)^2))``.

    Parameters
    ----------
    data_dim, latent_dim : int
        D and k.
    hidden : sequence of int
        Hidden widths; empty for a linear (affine) encoder.
    activation : str
        One of :data:`ACTIVATIONS`.
    min_scale : float
        Floor added to ``softplus`` so that scales stay positive in float32.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        min_scale: float = 1e-4,
    ):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        self.net = mlp(data_dim, hidden, 2 * latent_dim, activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        loc, raw_scale = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return loc, F.softplus(raw_scale) + self.min_scale


class MLPDecoder(nn.Module):
    """MLP decoder: z (..., k) -> likelihood parameters (..., D)."""

    def __init__(
        self,
        latent_dim: int,
        data_dim: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
    ):
        super().__init__()
        self.net = mlp(latent_dim, tuple(reversed(tuple(hidden))), data_dim, activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class LinearGaussianEncoder(nn.Module):
    """Parameters of a linear encoder with a data-independent diagonal scale.

    ``q(z | x) = N(V (x - c), diag(d^2))``, the recognition model of the linear VAE
    (Lucas et al. 2019). With ``residual=False`` its parameters are V (k, D), c (D,) and
    d = softplus(raw_scale) + min_scale, and ``forward`` gives (loc, scale). With
    ``residual=True`` they are offsets from the exact posterior of a decoder, combined by
    :meth:`ppvae.LinearVAE.guide_params`; ``forward`` is then unavailable on its own.
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        residual: bool = False,
        min_scale: float = 1e-4,
        full_rank: bool = False,
    ):
        super().__init__()
        self.residual = bool(residual)
        self.full_rank = bool(full_rank)
        self.min_scale = float(min_scale)
        if residual:  # offsets start at zero: the exact posterior of the initial decoder
            self.V = nn.Parameter(torch.zeros(latent_dim, data_dim))
            self.c = nn.Parameter(torch.zeros(data_dim))
            self.raw_scale = nn.Parameter(torch.zeros(latent_dim))
        else:
            self.V = nn.Parameter(torch.randn(latent_dim, data_dim) / data_dim**0.5)
            self.c = nn.Parameter(torch.zeros(data_dim))
            self.raw_scale = nn.Parameter(torch.zeros(latent_dim))
        if self.full_rank:  # the strictly lower triangle of a full-rank scale (zero: diagonal)
            self.tril = nn.Parameter(torch.zeros(latent_dim, latent_dim))

    @property
    def scale(self) -> torch.Tensor:
        """d, shape (k,), or with ``full_rank`` the lower-triangular L, (k, k) (free
        parameterization)."""
        diag = F.softplus(self.raw_scale) + self.min_scale
        return self.tril.tril(-1) + torch.diag(diag) if self.full_rank else diag

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.residual:
            raise RuntimeError("a residual linear encoder is evaluated by LinearVAE.encode")
        loc = (x - self.c) @ self.V.T
        if self.full_rank:  # one (k, k) factor, broadcast by MultivariateNormal
            return loc, self.scale
        return loc, self.scale.expand(loc.shape)


def _flatten_batch(x: torch.Tensor, tail: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = tuple(x.shape[:-tail]) if tail else tuple(x.shape)
    return x.reshape(-1, *x.shape[len(lead) :]), lead


class ConvEncoder(nn.Module):
    """Convolutional encoder for 28x28 images: x (..., 784) -> (loc, scale), each (..., k).

    Two stride-2 convolutions (32 and 64 channels, 28 -> 14 -> 7), then a linear layer.
    """

    def __init__(
        self, latent_dim: int, channels: tuple[int, int] = (32, 64), min_scale: float = 1e-4
    ):
        super().__init__()
        c1, c2 = channels
        self.latent_dim = int(latent_dim)
        self.min_scale = float(min_scale)
        self.conv = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(c2 * 7 * 7, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] != 784:
            raise InputError(f"ConvEncoder expects 784 = 28 x 28 features, got {x.shape[-1]}")
        flat, lead = _flatten_batch(x, 1)
        h = self.conv(flat.reshape(-1, 1, 28, 28)).flatten(1)
        out = self.head(h).reshape(*lead, 2 * self.latent_dim)
        loc, raw = out[..., : self.latent_dim], out[..., self.latent_dim :]
        return loc, F.softplus(raw) + self.min_scale


class ConvDecoder(nn.Module):
    """Transposed-convolutional decoder: z (..., k) -> parameters (..., 784) of 28x28 images."""

    def __init__(self, latent_dim: int, channels: tuple[int, int] = (64, 32)):
        super().__init__()
        c1, c2 = channels
        self.c1 = c1
        self.fc = nn.Sequential(nn.Linear(latent_dim, c1 * 7 * 7), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat, lead = _flatten_batch(z, 1)
        h = self.fc(flat).reshape(-1, self.c1, 7, 7)
        return self.deconv(h).reshape(*lead, 784)
