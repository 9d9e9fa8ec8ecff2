"""Pyro programs written the way users write them, with no ppvae parts.

* :class:`PyroExampleVAE`: the VAE class of Pyro's ``examples/vae/vae.py`` (sites "latent" and
  "obs", ``model(x)`` without ``num_data``, ``pyro.module`` per network, a Bernoulli likelihood
  with ``validate_args=False`` on intensities), with 784 replaced by ``data_dim``.
* :class:`StudentTVAE`: a VAE written from scratch as an ``nn.Module`` with
  ``model(x, num_data=None)`` / ``guide(x, num_data=None)`` and a Student-t likelihood.
* :func:`student_t_functions`: the same program as two plain functions whose parameters live
  in Pyro's param store (``pyro.param``), as for ``pyro.infer.SVI``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn


class _Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, data_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, data_dim)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class _Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim, data_dim):
        super().__init__()
        self.data_dim = data_dim
        self.fc1 = nn.Linear(data_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, self.data_dim)
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class PyroExampleVAE(nn.Module):
    """Pyro's examples/vae/vae.py VAE (784 -> data_dim)."""

    def __init__(self, data_dim=784, z_dim=50, hidden_dim=400):
        super().__init__()
        self.encoder = _Encoder(z_dim, hidden_dim, data_dim)
        self.decoder = _Decoder(z_dim, hidden_dim, data_dim)
        self.z_dim, self.data_dim = z_dim, data_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, self.data_dim),
            )
            return loc_img

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


class StudentTVAE(nn.Module):
    """A VAE from scratch: N(0, I) prior, tanh MLPs, a Student-t likelihood (df = 4)."""

    def __init__(self, data_dim, latent_dim=2, hidden=32, df=4.0):
        super().__init__()
        self.k = latent_dim
        self.enc = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh())
        self.enc_loc = nn.Linear(hidden, latent_dim)
        self.enc_scale = nn.Linear(hidden, latent_dim)
        self.dec = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim)
        )
        self.log_scale = nn.Parameter(torch.full((data_dim,), -1.0))
        self.df = df

    def _plate(self, x, num_data):
        return pyro.plate("data", size=num_data or len(x), subsample=torch.arange(len(x)))

    def model(self, x, num_data=None):
        pyro.module("student_t_vae", self)
        with self._plate(x, num_data):
            z = pyro.sample(
                "code", dist.Normal(x.new_zeros(self.k), 1.0).expand([len(x), self.k]).to_event(1)
            )
            pyro.sample(
                "pixels",
                dist.StudentT(self.df, self.dec(z), self.log_scale.exp()).to_event(1),
                obs=x,
            )

    def guide(self, x, num_data=None):
        pyro.module("student_t_vae", self)
        with self._plate(x, num_data):
            h = self.enc(x)
            scale = nn.functional.softplus(self.enc_scale(h)) + 1e-3
            pyro.sample("code", dist.Normal(self.enc_loc(h), scale).to_event(1))


def student_t_functions(data_dim, latent_dim=2, hidden=32, df=4.0, prefix="st"):
    """The Student-t VAE as two plain functions; parameters are ``pyro.param`` sites."""
    D, k, h = data_dim, latent_dim, hidden

    def init(*shape):
        return lambda: 0.3 * torch.randn(*shape) / shape[-1] ** 0.5

    def model(x, num_data=None):
        W1 = pyro.param(f"{prefix}_dec_W1", init(k, h))
        W2 = pyro.param(f"{prefix}_dec_W2", init(h, D))
        b2 = pyro.param(f"{prefix}_dec_b2", lambda: torch.zeros(D))
        scale = pyro.param(
            f"{prefix}_scale", lambda: torch.full((D,), 0.4), constraint=constraints.positive
        )
        with pyro.plate("data", size=num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(x.new_zeros(k), 1.0).expand([len(x), k]).to_event(1))
            loc = torch.tanh(z @ W1) @ W2 + b2
            pyro.sample("x", dist.StudentT(df, loc, scale).to_event(1), obs=x)

    def guide(x, num_data=None):
        V1 = pyro.param(f"{prefix}_enc_V1", init(D, h))
        V_loc = pyro.param(f"{prefix}_enc_loc", init(h, k))
        V_scale = pyro.param(f"{prefix}_enc_scale", init(h, k))
        with pyro.plate("data", size=num_data or len(x), subsample=torch.arange(len(x))):
            hid = torch.tanh(x @ V1)
            scale = nn.functional.softplus(hid @ V_scale) + 1e-3
            pyro.sample("z", dist.Normal(hid @ V_loc, scale).to_event(1))

    return model, guide
