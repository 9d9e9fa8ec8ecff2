"""Programs with labels: the conditional VAE (Sohn et al. 2015) and the semi-supervised VAE
(Kingma et al. 2014, M2), whose unlabelled rows carry their class as an enumerated latent.

Labels ``y`` (class indices, shape (B,)) are an argument of model and guide beside ``x``:
``fit(cvae, X, labels=y)`` trains it, and the estimators take ``y=`` to score log p(x | y).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .errors import InputError
from .likelihoods import Likelihood, make_likelihood
from .nets import GaussianEncoder, mlp
from .vae import data_plate, register_module

__all__ = ["ConditionalVAE", "SemiSupervisedVAE"]


def _check_sizes(**sizes) -> None:
    """Refuse, by name, a size that is not a positive integer."""
    for what, v in sizes.items():
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise InputError(f"{what} must be a positive integer, got {v!r}")


class ConditionalVAE(nn.Module):
    """p(z | y) p(x | z, y) with q(z | x, y), for class-conditional generation.

    Parameters
    ----------
    data_dim : int
        D.
    n_classes : int
        C, the number of classes y takes (0..C-1).
    latent_dim : int
        k.
    hidden : sequence of int
        Hidden widths of the encoder (the decoder mirrors them).
    likelihood : str or Likelihood
        As for :class:`~ppvae.VAE`.
    conditional_prior : bool
        False: p(z) = N(0, I) (Sohn et al.'s baseline); True: a learned p(z | y) =
        N(loc_y, diag(scale_y^2)), one Gaussian per class.
    activation : str
    name : str
        Prefix of the parameters in Pyro's param store.
    """

    training_defaults: ClassVar[dict] = {"elbo": "auto", "lr": 1e-3, "betas": (0.9, 0.999),
                                         "lr_decay": 1.0}  # fmt: skip

    def __init__(
        self,
        data_dim: int,
        n_classes: int,
        latent_dim: int,
        hidden: Sequence[int] = (256,),
        likelihood: str | Likelihood = "bernoulli",
        conditional_prior: bool = False,
        activation: str = "relu",
        name: str = "cvae",
    ):
        super().__init__()
        _check_sizes(data_dim=data_dim, n_classes=n_classes, latent_dim=latent_dim)
        self.data_dim, self.n_classes = int(data_dim), int(n_classes)
        self.latent_dim = int(latent_dim)
        self.hidden, self.activation, self.pyro_name = tuple(hidden), activation, name
        self.conditional_prior = bool(conditional_prior)
        self.encoder = GaussianEncoder(data_dim + n_classes, latent_dim, hidden, activation)
        self.decoder = mlp(latent_dim + n_classes, tuple(reversed(self.hidden)), data_dim,
                           activation)  # fmt: skip
        self.likelihood = make_likelihood(likelihood, data_dim)
        if self.conditional_prior:
            self.prior_loc = nn.Parameter(torch.zeros(n_classes, latent_dim))
            self.prior_log_scale = nn.Parameter(torch.zeros(n_classes, latent_dim))

    def _onehot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        y = torch.as_tensor(y, device=like.device)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise InputError(
                f"y: the conditional VAE needs every label in [0, {self.n_classes}), found "
                f"{int(y.min())}..{int(y.max())} (unlabelled rows cannot be conditioned on)"
            )
        return F.one_hot(y.long(), self.n_classes).to(like.dtype)

    def prior(self, onehot: torch.Tensor) -> dist.TorchDistribution:
        """p(z | y) (or p(z)) for one-hot labels (..., C): batch shape (...), event (k,)."""
        if not self.conditional_prior:
            zeros = onehot.new_zeros(*onehot.shape[:-1], self.latent_dim)
            return dist.Normal(zeros, 1.0).to_event(1)
        loc = onehot @ self.prior_loc
        return dist.Normal(loc, (onehot @ self.prior_log_scale).exp()).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None):
        """p(z | y) p(x | z, y), ``x`` observed at site ``"x"``, z at ``"z"``."""
        register_module(self, self.pyro_name, self)
        onehot = self._onehot(y, x)
        with data_plate(x, num_data):
            z = pyro.sample("z", self.prior(onehot))
            cond = onehot.expand(*z.shape[:-1], self.n_classes)
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([z, cond], -1))), obs=x)
        return z

    def guide(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None):
        """q(z | x, y): a diagonal Gaussian from an encoder reading x and one-hot y."""
        register_module(self, self.pyro_name, self)
        onehot = self._onehot(y, x)
        with data_plate(x, num_data):
            loc, scale = self.encoder(torch.cat([x, onehot], -1))
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def sample(self, y: torch.Tensor) -> torch.Tensor:
        """Means E[x | z, y] of one draw z ~ p(z | y) per label, shape (len(y), D)."""
        y = torch.as_tensor(y)
        with torch.no_grad():
            onehot = self._onehot(y, self.prior_loc if self.conditional_prior else
                                  torch.zeros(()))  # fmt: skip
            z = self.prior(onehot).sample()
            return self.likelihood.mean(self.decoder(torch.cat([z, onehot], -1)))

    def config(self) -> dict:
        return {
            "data_dim": self.data_dim,
            "n_classes": self.n_classes,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "likelihood": self.likelihood.config(),
            "conditional_prior": self.conditional_prior,
            "activation": self.activation,
        }


class SemiSupervisedVAE(nn.Module):
    """The semi-supervised VAE of Kingma et al. (2014), model M2, as one Pyro program.

    p(y) = Cat(1/C), p(z) = N(0, I), p(x | y, z); guide q(y | x) (a classifier) and
    q(z | x, y). ``model(x, y)`` / ``guide(x, y)`` take labels with
    :data:`~ppvae.data.UNLABELLED` (-1) for rows without one: a labelled row observes y (its
    term is the supervised ELBO of (x, y)), an unlabelled row's y is a latent site marked
    ``infer={"enumerate": "parallel"}`` in the guide, summed over all C classes at once by
    ``TraceEnum_ELBO`` (which ``fit`` chooses), not looped over. For a labelled row the guide's
    q(y) is the one-hot of its label (up to 1e-30), so that the same enumerated site costs
    nothing there. The classifier's extra term ``alpha * log q(y | x)`` per labelled row
    (Kingma et al.: alpha = 0.1 N / N_labelled in these units) is a ``pyro.factor``.

    Parameters
    ----------
    data_dim, n_classes, latent_dim : int
    hidden : sequence of int
        Hidden widths of the encoder and the classifier (the decoder mirrors them).
    likelihood : str or Likelihood
    alpha : float
        Weight of log q(y | x) per labelled row, in nats.
    activation : str
    name : str
    """

    training_defaults: ClassVar[dict] = {"elbo": "auto", "lr": 1e-3, "betas": (0.9, 0.999),
                                         "lr_decay": 1.0}  # fmt: skip

    def __init__(
        self,
        data_dim: int,
        n_classes: int,
        latent_dim: int,
        hidden: Sequence[int] = (256,),
        likelihood: str | Likelihood = "bernoulli",
        alpha: float = 10.0,
        activation: str = "relu",
        name: str = "ssvae",
    ):
        super().__init__()
        _check_sizes(data_dim=data_dim, n_classes=n_classes, latent_dim=latent_dim)
        if not float(alpha) >= 0:
            raise InputError(f"alpha must be >= 0, got {alpha!r}")
        self.data_dim, self.n_classes = int(data_dim), int(n_classes)
        self.latent_dim, self.alpha = int(latent_dim), float(alpha)
        self.hidden, self.activation, self.pyro_name = tuple(hidden), activation, name
        self.classifier = mlp(data_dim, self.hidden, n_classes, activation)
        self.encoder = GaussianEncoder(data_dim + n_classes, latent_dim, hidden, activation)
        self.decoder = mlp(latent_dim + n_classes, tuple(reversed(self.hidden)), data_dim,
                           activation)  # fmt: skip
        self.likelihood = make_likelihood(likelihood, data_dim)

    def _labels(self, y: torch.Tensor, x: torch.Tensor):
        y = torch.as_tensor(y, device=x.device).long()
        if y.numel() and (int(y.min()) < -1 or int(y.max()) >= self.n_classes):
            raise InputError(f"y: labels must lie in [0, {self.n_classes}) or be -1 "
                             f"(unlabelled), found {int(y.min())}..{int(y.max())}")  # fmt: skip
        labelled = y >= 0
        return labelled, torch.where(labelled, y, torch.zeros_like(y))

    def _onehot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.n_classes).to(like.dtype)

    def model(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None):
        """p(y) p(z) p(x | y, z): y observed at ``"y_label"`` where labelled, latent at
        ``"y"`` elsewhere; z at ``"z"``; x at ``"x"``; the classifier term ``"classify"``."""
        register_module(self, self.pyro_name, self)
        labelled, y_fill = self._labels(y, x)
        prior_y = dist.Categorical(logits=x.new_zeros(self.n_classes))
        with data_plate(x, num_data):
            pyro.sample("y_label", prior_y.mask(labelled), obs=y_fill)
            y_free = pyro.sample("y", prior_y.mask(~labelled),
                                 infer={"enumerate": "parallel"})  # fmt: skip
            ys = torch.where(labelled, y_fill, y_free)
            onehot = self._onehot(ys, x)
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0)
                            .expand([*onehot.shape[:-1], self.latent_dim]).to_event(1))  # fmt: skip
            onehot = onehot.expand(*z.shape[:-1], self.n_classes)
            params = self.decoder(torch.cat([z, onehot], -1))
            pyro.sample("x", self.likelihood(params), obs=x)
            if self.alpha > 0:
                log_q = dist.Categorical(logits=self.classifier(x)).log_prob(y_fill)
                pyro.factor("classify", self.alpha * log_q * labelled.to(x.dtype))

    def guide(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None):
        """q(y | x) at ``"y"`` (enumerated; the one-hot of the label on labelled rows) and
        q(z | x, y) at ``"z"``."""
        register_module(self, self.pyro_name, self)
        labelled, y_fill = self._labels(y, x)
        probs = torch.softmax(self.classifier(x), -1)
        known = self._onehot(y_fill, x).clamp_min(1e-30)
        probs = torch.where(labelled[:, None], known / known.sum(-1, keepdim=True), probs)
        with data_plate(x, num_data):
            y_free = pyro.sample("y", dist.Categorical(probs=probs),
                                 infer={"enumerate": "parallel"})  # fmt: skip
            ys = torch.where(labelled, y_fill, y_free)
            onehot = self._onehot(ys, x)
            xs = x.expand(*onehot.shape[:-1], self.data_dim)
            loc, scale = self.encoder(torch.cat([xs, onehot], -1))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y | x), shape (N,)."""
        with torch.no_grad():
            return self.classifier(x).argmax(-1)

    def sample(self, y: torch.Tensor) -> torch.Tensor:
        """Means E[x | y, z] of one draw z ~ p(z) per label, shape (len(y), D)."""
        y = torch.as_tensor(y).long()
        with torch.no_grad():
            onehot = F.one_hot(y, self.n_classes).float()
            z = torch.randn(len(y), self.latent_dim)
            return self.likelihood.mean(self.decoder(torch.cat([z, onehot], -1)))

    def config(self) -> dict:
        return {
            "data_dim": self.data_dim,
            "n_classes": self.n_classes,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "likelihood": self.likelihood.config(),
            "alpha": self.alpha,
            "activation": self.activation,
        }
