"""The classic autoencoders as Pyro programs: vanilla, denoising, sparse, contractive, stacked.

Every member is a model/guide pair trained by :func:`ppvae.fit`, like the VAE:

* the **guide** computes the code deterministically, ``z = f(x~)``, and records it at the site
  ``"z"`` as a ``Delta`` (a point estimate of z; ``log q = 0``). ``x~`` is x itself, or a
  corrupted copy for the denoising autoencoder: corruption lives in the guide's input;
* the **model** puts a flat improper prior on z (``log p(z) = 0``, so the Delta guide's ELBO has
  no KL term), observes x at ``"x"`` through the reconstruction likelihood, and adds the
  regularizers as ``pyro.factor`` sites (sparsity, contraction).

With a Gaussian likelihood of fixed scale ``sigma`` the reconstruction term is
``||x - g(z)||^2 / (2 sigma^2) + D log(sigma sqrt(2 pi))``: the squared error plus a constant
(``sigma = 1/sqrt(2)``, the default, makes it exactly the summed squared error plus
``D/2 log pi``). With a Bernoulli likelihood it is the cross-entropy. For a minibatch of B rows
out of N, the loss ``Trace_ELBO`` returns is therefore ``N * J`` with the textbook objective

``J = (1/B) sum_i [ l(x_i, g(f(x~_i))) + Omega_i ] + Omega_batch``

where ``Omega_i`` is a per-example penalty (L1 sparsity, contraction) and ``Omega_batch`` one on
batch statistics (the KL sparsity penalty on the batch-averaged activations). The tests check
this equality numerically against a direct PyTorch computation for every model.

Models here are Pyro programs only. Layer-wise pretraining and supervised fine-tuning of the
stacked autoencoder, which train these programs, live in :mod:`ppvae.train`
(:func:`ppvae.train.pretrain`, :func:`ppvae.train.finetune`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from .errors import InputError
from .likelihoods import Bernoulli, Gaussian, Likelihood
from .nets import ACTIVATIONS, _activation, _check_widths, mlp
from .vae import data_plate, register_module

__all__ = [
    "AUTOENCODERS",
    "Autoencoder",
    "ContractiveAutoencoder",
    "DenoisingAutoencoder",
    "LayerwiseAutoencoder",
    "SparseAutoencoder",
    "StackedAutoencoder",
    "StackedClassifier",
    "bernoulli_kl",
    "jacobian_frobenius_sq",
]

# fit's defaults for every program here: Trace_ELBO (the Delta guide has no KL to take in
# closed form), Adam at 1e-3, no learning-rate decay
TRAINING_DEFAULTS = {"elbo": "trace", "lr": 1e-3, "betas": (0.9, 0.999), "lr_decay": 1.0}
MSE_SCALE = 1.0 / math.sqrt(2.0)  # sigma with ||x - x_hat||^2 / (2 sigma^2) = ||x - x_hat||^2


def _make_reconstruction(likelihood: str | Likelihood, data_dim: int, scale: float) -> Likelihood:
    if isinstance(likelihood, Likelihood):
        return likelihood
    if likelihood == "gaussian":
        return Gaussian(data_dim, scale=float(scale))
    if likelihood == "bernoulli":
        return Bernoulli()
    raise InputError(
        f"unknown autoencoder likelihood {likelihood!r}; choose 'gaussian' (squared error with "
        "fixed scale) or 'bernoulli' (cross-entropy), or pass a Likelihood"
    )


def _optional_activation(name: str | None) -> nn.Module:
    return nn.Identity() if name in (None, "none", "linear") else _activation(name)()


def bernoulli_kl(rho: float, rho_hat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``KL(Bernoulli(rho) || Bernoulli(rho_hat))`` in nats, elementwise."""
    rho_hat = rho_hat.clamp(eps, 1 - eps)
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


def jacobian_frobenius_sq(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``||J_f(x_i)||_F^2`` per row of ``x`` (shape (N,)), differentiable in f's parameters.

    Closed form for a single sigmoid layer ``h = sigmoid(W x + b)``:
    ``sum_j (h_j (1 - h_j))^2 sum_i W_ji^2``. Any other encoder goes through
    ``torch.func.vmap(torch.func.jacrev(f))``, which costs one backward pass per code unit.
    """
    if (
        isinstance(encoder, nn.Sequential)
        and len(encoder) == 2
        and isinstance(encoder[0], nn.Linear)
        and isinstance(encoder[1], nn.Sigmoid)
    ):
        h = encoder(x)
        w2 = encoder[0].weight.pow(2).sum(1)  # (k,)
        return ((h * (1 - h)).pow(2) * w2).sum(-1)
    jac = torch.func.vmap(torch.func.jacrev(encoder))(x)  # (N, k, D)
    return jac.pow(2).sum((-2, -1))


class Autoencoder(nn.Module):
    """Vanilla autoencoder ``x -> z = f(x) -> g(z)`` with a reconstruction likelihood.

    Parameters
    ----------
    data_dim : int
        D.
    latent_dim : int
        Code size k (the bottleneck).
    hidden : sequence of int
        Widths of the encoder's hidden layers; the decoder mirrors them. ``()`` gives a single
        linear map each way (with linear code and output, the linear autoencoder, whose optimum
        spans the PCA subspace).
    activation : str
        Hidden-layer nonlinearity.
    code_activation : str or None
        Nonlinearity on the code z (``None``: linear; ``"sigmoid"`` for the KL-sparse and the
        contractive autoencoder; ``"relu"`` for the L1-sparse one).
    output_activation : str or None
        Nonlinearity on the decoder output (e.g. ``"softplus"``); only with a Gaussian
        likelihood, whose mean it is.
    likelihood : {"gaussian", "bernoulli"} or Likelihood
        Gaussian with fixed ``scale``: squared error. Bernoulli: cross-entropy on binary data.
    scale : float
        Fixed sigma of the Gaussian (default ``1/sqrt(2)``: summed squared error).
    name : str
        Prefix of the parameters in Pyro's param store.
    """

    kind = "ae"
    training_defaults: ClassVar[dict] = TRAINING_DEFAULTS

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (),
        activation: str = "relu",
        code_activation: str | None = None,
        output_activation: str | None = None,
        likelihood: str | Likelihood = "gaussian",
        scale: float = MSE_SCALE,
        name: str = "ae",
    ):
        super().__init__()
        if int(data_dim) < 1 or int(latent_dim) < 1:
            raise InputError(
                f"data_dim and latent_dim must be positive, got {data_dim}, {latent_dim}"
            )
        for act in (code_activation, output_activation):
            if act not in (None, "none", "linear") and act not in ACTIVATIONS:
                raise InputError(
                    f"unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}"
                )
        if not float(scale) > 0:
            raise InputError(f"scale must be positive, got {scale!r}")
        self.data_dim, self.latent_dim = int(data_dim), int(latent_dim)
        self.hidden = _check_widths(hidden)
        self.activation = activation
        self.code_activation = code_activation
        self.output_activation = output_activation
        self.scale = float(scale)
        self.pyro_name = name
        self.encoder = nn.Sequential(
            *mlp(self.data_dim, self.hidden, self.latent_dim, activation),
            _optional_activation(code_activation),
        )
        self.decoder = nn.Sequential(
            *mlp(self.latent_dim, self.hidden[::-1], self.data_dim, activation),
            _optional_activation(output_activation),
        )
        self.likelihood = _make_reconstruction(likelihood, self.data_dim, scale)
        if output_activation not in (None, "none", "linear") and not isinstance(
            self.likelihood, Gaussian
        ):
            raise InputError("output_activation applies to a Gaussian likelihood's mean only")

    # ------------------------------------------------------------------ Pyro program
    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's input x~ (the identity here; noise for the denoising autoencoder)."""
        return x

    def penalties(self, x: torch.Tensor, z: torch.Tensor, plate: pyro.plate) -> None:
        """Add the regularizers as ``pyro.factor`` sites (none for the vanilla autoencoder)."""

    def model(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """Flat prior on z, reconstruction likelihood at ``"x"``, penalties as factors.

        Parameters
        ----------
        x : torch.Tensor, shape (B, D)
            A minibatch (the clean data: the reconstruction target).
        num_data : int, optional
            N, the size of the data set the minibatch comes from (scales the loss by N/B).
        """
        register_module(self, self.pyro_name, self)
        plate = data_plate(x, num_data)
        with plate:
            flat = dist.ImproperUniform(constraints.real, (), (self.latent_dim,))
            z = pyro.sample("z", flat)
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        self.penalties(x, z, plate)
        return z

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        """The code as a point mass: ``z = f(corrupt(x))`` at site ``"z"``."""
        register_module(self, self.pyro_name, self)
        with data_plate(x, num_data):
            return pyro.sample("z", dist.Delta(self.encoder(self.corrupt(x))).to_event(1))

    # ------------------------------------------------------------------ plain PyTorch API
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code f(x) of clean inputs, shape (N, k)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z), batch shape z.shape[:-1], event shape (D,)."""
        return self.likelihood(self.decoder(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction E[x | z = f(x)] of (uncorrupted) x, shape (N, D)."""
        return self.likelihood.mean(self.decoder(self.encoder(x)))

    def reconstruction_error(self, x: torch.Tensor, target: torch.Tensor | None = None):
        """Mean over rows of ``||target - reconstruct(x)||^2`` (target defaults to x), a float."""
        target = x if target is None else target
        with torch.no_grad():
            return float((self.reconstruct(x) - target).pow(2).sum(-1).mean())

    def first_layer_features(self) -> torch.Tensor:
        """The encoder's first weight matrix, shape (units, D): one input filter per row."""
        return next(m for m in self.encoder.modules() if isinstance(m, nn.Linear)).weight

    def config(self) -> dict:
        """JSON-able constructor arguments (for :func:`ppvae.save`)."""
        if not isinstance(self.likelihood, (Gaussian, Bernoulli)):
            raise InputError("an autoencoder with a custom likelihood cannot be saved by config")
        return {
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "code_activation": self.code_activation,
            "output_activation": self.output_activation,
            "likelihood": "bernoulli" if isinstance(self.likelihood, Bernoulli) else "gaussian",
            "scale": self.scale,
            **self._extra_config(),
        }

    def _extra_config(self) -> dict:
        return {}

    def extra_repr(self) -> str:
        return f"data_dim={self.data_dim}, latent_dim={self.latent_dim}"


class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder (Vincent et al. 2008): encode a corrupted x~, reconstruct clean x.

    Parameters
    ----------
    noise : {"mask", "gaussian"}
        Masking noise zeroes each input coordinate with probability ``noise_level`` (dropout on
        the input, without rescaling); Gaussian noise adds ``N(0, noise_level^2)``.
    noise_level : float
        Masking probability in [0, 1), or the Gaussian noise's standard deviation (> 0).
    **kwargs
        As for :class:`Autoencoder`.
    """

    kind = "dae"

    def __init__(self, *args, noise: str = "mask", noise_level: float = 0.3, **kwargs):
        kwargs.setdefault("name", "dae")
        super().__init__(*args, **kwargs)
        if noise not in ("mask", "gaussian"):
            raise InputError(f"noise must be 'mask' or 'gaussian', got {noise!r}")
        if noise == "mask" and not 0 <= noise_level < 1:
            raise InputError(f"masking probability must lie in [0, 1), got {noise_level!r}")
        if noise == "gaussian" and not noise_level > 0:
            raise InputError(f"Gaussian noise level must be positive, got {noise_level!r}")
        self.noise, self.noise_level = noise, float(noise_level)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """x~ drawn from the corruption process (torch's global RNG, seeded by ``fit``)."""
        if self.noise == "mask":
            keep = torch.rand_like(x) >= self.noise_level
            return x * keep
        return x + self.noise_level * torch.randn_like(x)

    def _extra_config(self) -> dict:
        return {"noise": self.noise, "noise_level": self.noise_level}


class SparseAutoencoder(Autoencoder):
    """Sparse autoencoder with one of the two penalties of the course material.

    * ``penalty="kl"``: sigmoid code units and ``beta * sum_j KL(rho || rho_hat_j)``, where
      ``rho_hat_j`` is unit j's activation averaged over the minibatch (a batch-level term);
    * ``penalty="l1"``: ReLU code units, ``l1 * sum_j |h_ij|`` per example, and a softplus
      output (non-negative reconstructions).

    Parameters
    ----------
    penalty : {"kl", "l1"}
    rho : float
        Target mean activation in (0, 1) for ``"kl"``.
    beta : float
        Weight of the KL penalty (nats of penalty per nat of reconstruction loss).
    l1 : float
        Weight of the L1 penalty.
    **kwargs
        As for :class:`Autoencoder` (``code_activation`` and ``output_activation`` are set by
        the penalty unless given).
    """

    kind = "sae"

    def __init__(
        self,
        *args,
        penalty: str = "kl",
        rho: float = 0.05,
        beta: float = 3.0,
        l1: float = 1e-3,
        **kwargs,
    ):
        if penalty not in ("kl", "l1"):
            raise InputError(f"penalty must be 'kl' or 'l1', got {penalty!r}")
        if penalty == "kl" and not 0 < rho < 1:
            raise InputError(f"rho must lie in (0, 1), got {rho!r}")
        if not (beta >= 0 and l1 >= 0):
            raise InputError(f"penalty weights must be >= 0, got beta={beta!r}, l1={l1!r}")
        kwargs.setdefault("name", "sae")
        kwargs.setdefault("code_activation", "sigmoid" if penalty == "kl" else "relu")
        if penalty == "l1":
            kwargs.setdefault("output_activation", "softplus")
        super().__init__(*args, **kwargs)
        self.penalty, self.rho, self.beta, self.l1 = penalty, float(rho), float(beta), float(l1)

    def sparsity_penalty(self, z: torch.Tensor) -> torch.Tensor:
        """``beta * sum_j KL(rho || mean_i z_ij)`` (a scalar) or ``l1 * sum_j |z_ij|`` (per row)."""
        if self.penalty == "kl":
            return self.beta * bernoulli_kl(self.rho, z.mean(0)).sum()
        return self.l1 * z.abs().sum(-1)

    def penalties(self, x: torch.Tensor, z: torch.Tensor, plate: pyro.plate) -> None:
        if self.penalty == "kl":
            # A batch statistic: counted once per minibatch, scaled like the N/B-scaled data term
            # so that the loss stays N times the per-example objective.
            with pyro.poutine.scale(scale=plate.size):
                pyro.factor("sparsity", -self.sparsity_penalty(z))
        else:
            with plate:
                pyro.factor("sparsity", -self.sparsity_penalty(z))

    def _extra_config(self) -> dict:
        return {"penalty": self.penalty, "rho": self.rho, "beta": self.beta, "l1": self.l1}


class ContractiveAutoencoder(Autoencoder):
    """Contractive autoencoder (Rifai et al. 2011): penalty ``lam * ||J_f(x)||_F^2`` per example.

    The Jacobian is exact: in closed form for a single sigmoid layer (the default,
    ``hidden=()``, ``code_activation="sigmoid"``), through ``torch.func`` otherwise.
    """

    kind = "cae"

    def __init__(self, *args, lam: float = 0.1, **kwargs):
        if not lam >= 0:
            raise InputError(f"lam must be >= 0, got {lam!r}")
        kwargs.setdefault("name", "cae")
        kwargs.setdefault("code_activation", "sigmoid")
        super().__init__(*args, **kwargs)
        self.lam = float(lam)

    def contraction(self, x: torch.Tensor) -> torch.Tensor:
        """``||J_f(x_i)||_F^2`` per row, shape (N,)."""
        return jacobian_frobenius_sq(self.encoder, x)

    def penalties(self, x: torch.Tensor, z: torch.Tensor, plate: pyro.plate) -> None:
        with plate:
            pyro.factor("contraction", -self.lam * self.contraction(x))

    def _extra_config(self) -> dict:
        return {"lam": self.lam}


# ---------------------------------------------------------------------- stacked autoencoder
class StackedAutoencoder(nn.Module):
    """A stack of sigmoid layers pretrained greedily as autoencoders, then fine-tuned with labels.

    Layer l maps ``h_{l-1}`` (``h_0 = x``) to ``h_l = act(W_l h_{l-1} + b_l)``; during
    pretraining it is the encoder of :class:`LayerwiseAutoencoder` ``(self, l)``, whose decoder
    reconstructs ``h_{l-1}`` while the layers below stay frozen. Fine-tuning trains all layers
    and a softmax head through :class:`StackedClassifier`.

    Parameters
    ----------
    data_dim : int
    hidden : sequence of int
        Widths of the stacked layers, e.g. ``(128, 64)``.
    n_classes : int
        Outputs of the classifier head.
    activation : str
        Nonlinearity of every layer (default sigmoid, as in the material).
    noise_level : float
        Masking probability of each layer's input during pretraining (0: plain autoencoders;
        > 0: a stacked denoising autoencoder).
    """

    kind = "stacked"
    training_defaults: ClassVar[dict] = TRAINING_DEFAULTS

    def __init__(
        self,
        data_dim: int,
        hidden: Sequence[int] = (128, 64),
        n_classes: int = 10,
        activation: str = "sigmoid",
        noise_level: float = 0.0,
    ):
        super().__init__()
        widths = _check_widths(hidden)
        if not widths:
            raise InputError("a stacked autoencoder needs at least one hidden layer")
        if int(n_classes) < 2:
            raise InputError(f"n_classes must be at least 2, got {n_classes!r}")
        if not 0 <= noise_level < 1:
            raise InputError(f"noise_level must lie in [0, 1), got {noise_level!r}")
        act = _activation(activation)
        self.data_dim, self.hidden, self.n_classes = int(data_dim), widths, int(n_classes)
        self.latent_dim = widths[-1]
        self.activation, self.noise_level = activation, float(noise_level)
        dims = (self.data_dim, *widths)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), act()) for a, b in itertools.pairwise(dims)
        )
        self.decoders = nn.ModuleList(nn.Linear(b, a) for a, b in itertools.pairwise(dims))
        self.head = nn.Linear(widths[-1], self.n_classes)
        self.likelihood = Likelihood()  # support check of raw inputs: any real data

    def features(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """``h_depth`` (default: the top layer), shape (N, hidden[depth - 1])."""
        depth = len(self.layers) if depth is None else depth
        for layer in self.layers[:depth]:
            x = layer(x)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The top-layer code, shape (N, hidden[-1])."""
        return self.features(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, n_classes)."""
        return self.head(self.features(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most probable class, shape (N,)."""
        with torch.no_grad():
            return self.logits(x).argmax(-1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Encode through the whole stack and decode back down with the pretraining decoders."""
        h = self.features(x)
        for dec in reversed(self.decoders):  # linear, as pretrained (Gaussian mean = dec(z))
            h = dec(h)
        return h

    def reconstruction_error(self, x: torch.Tensor, target: torch.Tensor | None = None):
        """Mean over rows of ``||target - reconstruct(x)||^2`` (target defaults to x), a float."""
        return Autoencoder.reconstruction_error(self, x, target)

    def first_layer_features(self) -> torch.Tensor:
        """The first layer's weights, shape (hidden[0], D)."""
        return self.layers[0][0].weight

    def layer_program(self, depth: int) -> LayerwiseAutoencoder:
        """The Pyro program that pretrains layer ``depth`` (0-based) on the frozen stack below."""
        return LayerwiseAutoencoder(self, depth)

    def classifier_program(self) -> StackedClassifier:
        """The Pyro program ``y ~ Categorical(softmax(head(h(x))))`` for fine-tuning."""
        return StackedClassifier(self)

    def config(self) -> dict:
        return {
            "data_dim": self.data_dim,
            "hidden": list(self.hidden),
            "n_classes": self.n_classes,
            "activation": self.activation,
            "noise_level": self.noise_level,
        }


class LayerwiseAutoencoder(nn.Module):
    """Pretraining program for one layer of a :class:`StackedAutoencoder`.

    Input is the raw x; the layers below ``depth`` run under ``torch.no_grad`` and are not
    registered with Pyro, so they stay frozen. The guide codes ``h_depth`` (from a masked copy
    of ``h_{depth-1}`` if ``noise_level > 0``); the model reconstructs ``h_{depth-1}`` with the
    squared error (Gaussian of fixed scale ``1/sqrt(2)``).
    """

    training_defaults = StackedAutoencoder.training_defaults

    def __init__(self, stack: StackedAutoencoder, depth: int):
        super().__init__()
        if not 0 <= depth < len(stack.layers):
            raise InputError(f"depth must lie in [0, {len(stack.layers)}), got {depth!r}")
        self.depth = int(depth)
        self.data_dim = stack.data_dim
        self.latent_dim = stack.hidden[depth]
        self.noise_level = stack.noise_level
        self.pyro_name = f"stacked.layer{depth}"
        object.__setattr__(self, "stack", stack)  # not a submodule: only the trained part is
        self.trained = nn.ModuleDict(
            {"encoder": stack.layers[depth], "decoder": stack.decoders[depth]}
        )
        in_dim = stack.data_dim if depth == 0 else stack.hidden[depth - 1]
        self.likelihood = Gaussian(in_dim, scale=MSE_SCALE)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``h_{depth-1}`` from the frozen layers below (no gradient)."""
        with torch.no_grad():
            return self.stack.features(x, self.depth)

    def model(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        register_module(self, self.pyro_name, self.trained)
        h_in = self.inputs(x)
        with data_plate(x, num_data):
            flat = dist.ImproperUniform(constraints.real, (), (self.latent_dim,))
            z = pyro.sample("z", flat)
            pyro.sample("x", self.likelihood(self.trained["decoder"](z)), obs=h_in)
        return z

    def guide(self, x: torch.Tensor, num_data: int | None = None) -> torch.Tensor:
        register_module(self, self.pyro_name, self.trained)
        h_in = self.inputs(x)
        if self.noise_level > 0:
            h_in = h_in * (torch.rand_like(h_in) >= self.noise_level)
        with data_plate(x, num_data):
            return pyro.sample("z", dist.Delta(self.trained["encoder"](h_in)).to_event(1))


class StackedClassifier(nn.Module):
    """Fine-tuning program: ``y_i ~ Categorical(logits = head(h(x_i)))`` for the whole stack.

    No latent variables: the guide only registers parameters, and ``Trace_ELBO``'s loss is
    ``N/B`` times the minibatch's summed cross-entropy.
    """

    training_defaults = StackedAutoencoder.training_defaults

    def __init__(self, stack: StackedAutoencoder):
        super().__init__()
        self.stack = stack
        self.data_dim = stack.data_dim
        self.pyro_name = "stacked"
        self.likelihood = stack.likelihood

    def _trained(self) -> nn.Module:
        return nn.ModuleDict({"layers": self.stack.layers, "head": self.stack.head})

    def model(
        self, x: torch.Tensor, num_data: int | None = None, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        register_module(self, self.pyro_name, self._trained())
        with data_plate(x, num_data):
            return pyro.sample("y", dist.Categorical(logits=self.stack.logits(x)), obs=y)

    def guide(self, x: torch.Tensor, num_data: int | None = None, y: torch.Tensor | None = None):
        register_module(self, self.pyro_name, self._trained())


AUTOENCODERS: dict[str, type[nn.Module]] = {
    "ae": Autoencoder,
    "dae": DenoisingAutoencoder,
    "sae": SparseAutoencoder,
    "cae": ContractiveAutoencoder,
    "stacked": StackedAutoencoder,
}
