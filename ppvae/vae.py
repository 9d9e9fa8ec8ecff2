"""The variational autoencoder as a Pyro program: ``model`` is p(z) p(x | z), ``guide`` is q(z | x).

Both take a minibatch ``x`` of shape (B, D) and the size N of the whole data set, and run inside
``pyro.plate("data", size=N, subsample=rows)``, so that Pyro scales every per-sample term by
N / B and the minibatch ELBO is an unbiased estimate of the full-data ELBO (in nats)::

    ELBO = sum_n  E_q(z_n|x_n) [ log p(x_n | z_n) + log p(z_n) - log q(z_n | x_n) ]

Models import nothing from training, evaluation or the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .custom_parts import custom_config
from .errors import InputError
from .guides import GUIDES, DiagonalGaussian, Guide, make_guide
from .likelihoods import LIKELIHOODS, Gaussian, Likelihood, make_likelihood
from .nets import ConvDecoder, ConvEncoder, LinearGaussianEncoder, MLPDecoder
from .priors import PRIORS, Prior, make_prior

__all__ = ["VAE", "LinearVAE"]


def register_module(program: nn.Module, name: str, module: nn.Module) -> None:
    """``pyro.module(name, module)``, hoisted out of ``ppvae.fit``'s training loop.

    Registration puts the parameters into Pyro's param store, which ``pyro.infer.SVI`` needs to
    find them. ``fit`` optimizes the program's parameters directly, so after its first step it
    sets ``program.params_held = True`` and this call (about 0.4 ms per model or guide call,
    some 10% of a small step) is skipped; the objective is unchanged.
    """
    if not getattr(program, "params_held", False):
        pyro.module(name, module)


def data_plate(x: torch.Tensor, num_data: int | None = None) -> pyro.plate:
    """The plate over data points: a minibatch ``x`` of B rows out of ``num_data`` (default B).

    Sites inside it are scaled by N/B. The minibatch is passed as ``subsample`` (its row
    indices), so the plate does not draw a random permutation of N at every step: the
    training loop has already chosen the rows, and the global RNG stays free for the guide.
    """
    n = x.shape[0] if num_data is None else int(num_data)
    rows = torch.arange(x.shape[0], device=x.device)
    return pyro.plate("data", size=n, subsample=rows, device=x.device)


class VAE(nn.Module):
    """A VAE whose ``model`` and ``guide`` are Pyro functions.

    Parameters
    ----------
    data_dim : int
        D, the number of observed features.
    latent_dim : int
        k, the number of latent dimensions.
    hidden : sequence of int
        Hidden widths of the encoder; the decoder mirrors them. Ignored for a network that is
        passed in.
    likelihood : str or Likelihood
        ``"gaussian"`` (learned isotropic scale), ``"bernoulli"``, ``"continuous-bernoulli"``,
        ``"laplace"``, or a :class:`~ppvae.likelihoods.Likelihood`.
    prior : str or Prior, optional
        ``"standard"`` (the default, N(0, I)), ``"learned"``, ``"mog"``, ``"vamp"``,
        ``"hierarchical"``, or any :class:`~ppvae.priors.Prior`.
    activation : str
        Hidden activation of the default networks.
    encoder, decoder : nn.Module, optional
        Replace the default MLPs; they must follow the shapes documented in
        :mod:`ppvae.nets`.
    name : str
        Prefix of this module's parameters in Pyro's parameter store.
    architecture : {"mlp", "conv"}
        Default networks: MLPs, or convolutional ones for 28 x 28 images.

    Examples
    --------
    >>> import pyro, torch
    >>> from ppvae import VAE
    >>> vae = VAE(data_dim=64, latent_dim=2, hidden=(32,))
    >>> trace = pyro.poutine.trace(vae.model).get_trace(torch.rand(5, 64), num_data=100)
    >>> trace.nodes["z"]["value"].shape
    torch.Size([5, 2])
    """

    #: Training settings :func:`ppvae.fit` uses for arguments left as None.
    training_defaults: ClassVar[dict] = {
        "elbo": "auto",
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "lr_decay": 1.0,
    }

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (256,),
        likelihood: str | Likelihood = "gaussian",
        prior: str | Prior | None = None,
        activation: str = "relu",
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        name: str = "vae",
        architecture: str = "mlp",
        guide: str | dict | Guide | None = None,
    ):
        super().__init__()
        if architecture not in ("mlp", "conv"):
            raise InputError(f"architecture must be 'mlp' or 'conv', got {architecture!r}")
        if architecture == "conv" and data_dim != 784:
            raise InputError(
                f"architecture='conv' is for 28 x 28 images (D = 784), got D={data_dim}"
            )
        for what, v in (("data_dim", data_dim), ("latent_dim", latent_dim)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise InputError(f"{what} must be a positive integer, got {v!r}")
        self.data_dim = int(data_dim)
        self.latent_dim = int(latent_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.pyro_name = name
        self.architecture = architecture
        self._custom_nets = encoder is not None or decoder is not None
        q = make_guide(guide, latent_dim)
        if architecture == "conv":
            if not isinstance(q, DiagonalGaussian) and encoder is None:
                raise InputError("architecture='conv' has an encoder for guide='diagonal' only")
            encoder = encoder or ConvEncoder(latent_dim)
            decoder = decoder or ConvDecoder(latent_dim)
        self.encoder = encoder or q.encoder(data_dim, self.hidden, activation)
        self.decoder = decoder or MLPDecoder(latent_dim, data_dim, self.hidden, activation)
        self.likelihood = make_likelihood(likelihood, data_dim)
        self.prior = make_prior(prior, latent_dim)
        self.q = q  # after the networks: a diagonal VAE's parameters keep their order
        if self.prior.name == "vamp" and not isinstance(q, DiagonalGaussian):
            raise InputError(
                "the VampPrior mixes the guide's diagonal Gaussians at its pseudo-inputs; "
                "use guide='diagonal' with prior='vamp'"
            )
        self.prior.attach(self)

    # ------------------------------------------------------------------ Pyro program
    def _plate(self, x: torch.Tensor, num_data: int | None) -> pyro.plate:
        return data_plate(x, num_data)

    def model(
        self,
        x: torch.Tensor,
        num_data: int | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generative model p(z) p(x | z) with ``x`` observed at site ``"x"``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, D)
            A minibatch.
        num_data : int, optional
            Size N of the full data set the minibatch is drawn from (default B: no scaling).
        mask : torch.Tensor of bool, shape (B, D), optional
            True where ``x`` is observed: the likelihood is then that of the observed entries
            only (:meth:`~ppvae.likelihoods.Likelihood.masked`); ``x`` holds 0 elsewhere.

        Returns
        -------
        torch.Tensor, shape (B, k)
            The latent sample z.
        """
        register_module(self, self.pyro_name, self)
        plate = self._plate(x, num_data)
        z = self.prior.model(plate)
        with plate:
            pyro.sample("x", self.likelihood.masked(self.decoder(z), mask), obs=x)
        return z

    def guide(
        self,
        x: torch.Tensor,
        num_data: int | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Recognition model q(z | x) at site ``"z"``: the :class:`~ppvae.guides.Guide`'s
        distribution of the encoder's output (``N(loc(x), diag(scale(x)^2))`` by default).
        With a ``mask``, the encoder reads ``x`` with its missing entries at 0 (zero
        imputation, as in MIWAE; Mattei & Frellsen 2019)."""
        register_module(self, self.pyro_name, self)
        plate = self._plate(x, num_data)
        self.prior.guide(plate)
        with plate:
            return pyro.sample("z", self.q.distribution(self.encoder_output(x, mask)))

    @property
    def can_mask(self) -> bool:
        """Whether this VAE can be trained and evaluated on data with missing entries: its
        likelihood factorizes over features (every likelihood ppvae ships does)."""
        return self.likelihood.factorizes

    # ------------------------------------------------------------------ plain PyTorch API
    def encoder_output(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """What the guide's distribution is built from (the encoder's output); ``x`` holds 0
        at the missing entries where ``mask`` is given."""
        return self.encoder(x)

    def encode(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x) per dimension, each of shape (N, k); with a
        ``mask`` (True where observed), ``x`` holds 0 at the missing entries
        (:func:`ppvae.data.split_missing`)."""
        return self.q.moments(self.encoder_output(x, mask))

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """The distribution p(x | z), batch shape z.shape[:-1], event shape (D,)."""
        return self.likelihood(self.decoder(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z] at z = E_q[z | x], shape (N, D)."""
        return self.likelihood.mean(self.decoder(self.encode(x)[0]))

    def sample(self, n: int) -> torch.Tensor:
        """Means E[x | z] of ``n`` draws z ~ p(z), shape (n, D) (uses torch's global RNG)."""
        with torch.no_grad():
            z = self.prior.distribution().sample((n,))
            return self.likelihood.mean(self.decoder(z))

    def point_estimates(self) -> dict[str, torch.Tensor]:
        """Plug-in values of the prior's global latent sites (the data-plate contract's hook
        for evaluators; none for most priors)."""
        estimates = getattr(self.prior, "point_estimates", None)
        return dict(estimates()) if callable(estimates) else {}

    @property
    def eval_width(self) -> int:
        """Floats per (sample, point) the model's log-density touches: D, k, or a mixture
        prior's components x k (sizes evaluation chunks)."""
        return max(self.data_dim, self.latent_dim, self.prior.eval_width)

    # ------------------------------------------------------------------ saving
    def config(self) -> dict:
        """JSON-able constructor arguments; ``VAE(**config())`` rebuilds the architecture."""
        if self._custom_nets:
            raise InputError(
                "a VAE with custom encoder/decoder modules cannot be rebuilt from a config; "
                "save its state_dict() and rebuild it in your own code"
            )
        return {
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "likelihood": _part_config(self.likelihood, LIKELIHOODS),
            "prior": _part_config(self.prior, PRIORS),
            "activation": self.activation,
            "architecture": self.architecture,
            **self._guide_config(),
        }

    def _guide_config(self) -> dict:
        """``{"guide": ...}`` unless it is the default (configs saved before guides match)."""
        return {} if type(self.q) is DiagonalGaussian else {"guide": _part_config(self.q, GUIDES)}

    def extra_repr(self) -> str:
        return f"data_dim={self.data_dim}, latent_dim={self.latent_dim}"


def _part_config(part, registry: dict) -> dict:
    """A part's saved config: its own for ppvae's classes, else (a user's class, or a subclass
    of one of ppvae's) its import path and ``init_kwargs()``, so that loading rebuilds the same
    class rather than the ppvae class it derives from."""
    if type(part) in registry.values():
        return part.config()
    return custom_config(part, part.init_kwargs())


class LinearVAE(VAE):
    """The linear-Gaussian VAE, whose exact optimum is probabilistic PCA.

    Model: ``z ~ N(0, I_k)``, ``x | z ~ N(W z + b, s2 I_D)`` with learned W, b and s2.
    Guide: ``q(z | x) = N(V (x - c), diag(d^2))`` with learned V, c and d, where d does not
    depend on x (Lucas et al. 2019, "Don't Blame the ELBO"). The marginal likelihood is the
    Gaussian ``N(b, W W^T + s2 I)``, so it and the ELBO are available in closed form
    (:func:`ppvae.evaluate.exact_log_likelihood`, :func:`ppvae.evaluate.elbo_decomposition`),
    and the ELBO's global maximum is the PPCA maximum-likelihood solution, where it is tight.

    Parameters
    ----------
    data_dim, latent_dim : int
        D and k.
    encoder : {"residual", "free"}
        How the guide's (V, c, d) are parameterized; the variational family and the ELBO are
        the same either way. ``"free"``: V, c and log-ish d are the parameters themselves.
        ``"residual"`` (default): they are offsets from the exact posterior of the current
        decoder, ``V = M^-1 W^T + dV``, ``c = b + dc``, ``d = sqrt(s2 / diag(M)) * exp(dl)``
        with ``M = W^T W + s2 I``, and dV, dc, dl free. The ELBO then couples W and V far more
        weakly, which makes gradient training well conditioned even at high signal-to-noise
        ratios, where the free parameterization crawls along a narrow valley.
    init_scale : float
        Initial observation noise standard deviation sqrt(s2).
    noise_scale : float, optional
        A fixed observation noise standard deviation sqrt(s2) instead of a learned one. With s2
        fixed, the ELBO's maximum is the PPCA maximum at that s2: column j of W has squared
        norm ``max(lambda_j - s2, 0)``, so a latent dimension whose sample eigenvalue
        ``lambda_j`` does not exceed s2 collapses *exactly* to the prior (zero KL).

    Notes
    -----
    :func:`ppvae.fit` trains it, by default, with its own ``training_defaults``: analytic KL
    (``TraceMeanField_ELBO``, compiled once per minibatch shape; see ``elbo="auto"`` in
    :func:`ppvae.fit`), Adam with a short second-moment memory (beta2 = 0.9, so that
    steps do not shrink as the full-batch gradients do), a learning rate of 0.05 for the first
    half of the run, then decaying exponentially to 5e-5.
    """

    training_defaults: ClassVar[dict] = {
        "elbo": "auto",
        "lr": 0.05,
        "betas": (0.9, 0.9),
        "lr_decay": 1e-3,
        "decay_start": 0.5,
    }

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        encoder: str = "residual",
        init_scale: float = 1.0,
        name: str = "vae",
        guide: str = "diagonal",
        noise_scale: float | None = None,
    ):
        if encoder not in ("residual", "free"):
            raise InputError(f"encoder must be 'residual' or 'free', got {encoder!r}")
        if guide not in ("diagonal", "fullrank"):
            raise InputError(f"guide must be 'diagonal' or 'fullrank', got {guide!r}")
        if noise_scale is not None and not float(noise_scale) > 0:
            raise InputError(f"noise_scale must be positive (or None: learned), got {noise_scale}")
        super().__init__(
            data_dim,
            latent_dim,
            hidden=(),
            likelihood=Gaussian(
                data_dim,
                scale="isotropic" if noise_scale is None else float(noise_scale),
                init_scale=init_scale,
            ),
            prior=None,
            encoder=LinearGaussianEncoder(
                data_dim,
                latent_dim,
                residual=encoder == "residual",
                full_rank=guide == "fullrank",
            ),
            decoder=nn.Linear(latent_dim, data_dim),
            name=name,
            guide=guide,
        )
        self._custom_nets = False
        self.encoder_parameterization = encoder
        self.init_scale = float(init_scale)
        self.noise_scale = None if noise_scale is None else float(noise_scale)

    @property
    def W(self) -> torch.Tensor:
        """Decoder loading matrix, shape (D, k)."""
        return self.decoder.weight

    @property
    def b(self) -> torch.Tensor:
        """Decoder offset (the marginal mean), shape (D,)."""
        return self.decoder.bias

    @property
    def noise_variance(self) -> torch.Tensor:
        """s2, a scalar tensor."""
        return self.likelihood.scale.squeeze() ** 2

    def guide_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The guide's ``(V, c, d)``: shapes (k, D), (D,) and (k,); with
        ``guide="fullrank"``, ``(V, c, L)`` with the lower-triangular scale L, (k, k)."""
        enc = self.encoder
        if not enc.residual:
            return enc.V, enc.c, enc.scale
        W, s2 = self.W, self.noise_variance
        eye = torch.eye(self.latent_dim, dtype=W.dtype, device=W.device)
        M = W.T @ W + s2 * eye
        V = torch.linalg.solve(M, W.T) + enc.V
        if enc.full_rank:  # offsets from the Cholesky factor of the exact posterior s2 M^-1
            exact = torch.linalg.cholesky(s2 * torch.cholesky_inverse(torch.linalg.cholesky(M)))
            offsets = enc.tril.tril(-1) + torch.diag(torch.exp(enc.raw_scale))
            return V, self.b + enc.c, exact @ offsets + enc.min_scale * eye
        d = torch.sqrt(s2 / M.diagonal()) * torch.exp(enc.raw_scale) + enc.min_scale
        return V, self.b + enc.c, d

    def encoder_output(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is not None:
            return self._masked_encoder_output(x, mask)
        V, c, scale = self.guide_params()
        loc = (x - c) @ V.T
        if self.encoder.full_rank:  # one (k, k) factor for every row: MultivariateNormal
            return loc, scale  # broadcasts it without a triangular solve per row
        return loc, scale.expand(loc.shape)

    def _masked_encoder_output(self, x: torch.Tensor, mask: torch.Tensor):
        """q(z | x_o) for rows with missing entries.

        ``"residual"``: offsets from each row's exact posterior given its observed entries,
        ``N(M_n^-1 W_o^T (x_o - b_o), s2 M_n^-1)`` with ``M_n = W_o^T W_o + s2 I``: the mean
        is ``M_n^-1 W^T r + dV r`` with ``r = mask * (x - b - dc)``, the scale
        ``sqrt(s2 / diag M_n) exp(dl)`` (diagonal) or ``chol(s2 M_n^-1) (L_offsets)``
        (full rank, which contains the exact posterior of every row: the ELBO is then the exact
        observed-data log-likelihood at zero offsets). ``"free"``: ``V (mask * (x - c))`` with
        the row-independent scale.
        """
        enc = self.encoder
        m = mask.to(x.dtype)
        if not enc.residual:
            loc = (m * (x - enc.c)) @ enc.V.T
            scale = enc.scale
            return (loc, scale) if enc.full_rank else (loc, scale.expand(loc.shape))
        W, s2 = self.W, self.noise_variance
        k = self.latent_dim
        eye = torch.eye(k, dtype=W.dtype, device=W.device)
        WW = (W[:, :, None] * W[:, None, :]).reshape(W.shape[0], k * k)
        M = (m @ WW).reshape(*m.shape[:-1], k, k) + s2 * eye  # (B, k, k)
        r = m * (x - self.b - enc.c)
        chol = torch.linalg.cholesky(M)
        loc = torch.cholesky_solve((r @ W).unsqueeze(-1), chol).squeeze(-1) + r @ enc.V.T
        if enc.full_rank:
            exact = torch.linalg.cholesky(s2 * torch.cholesky_inverse(chol))
            offsets = enc.tril.tril(-1) + torch.diag(torch.exp(enc.raw_scale))
            return loc, exact @ offsets + enc.min_scale * eye
        diag = M.diagonal(dim1=-2, dim2=-1)
        return loc, torch.sqrt(s2 / diag) * torch.exp(enc.raw_scale) + enc.min_scale

    def config(self) -> dict:
        return {
            "data_dim": self.data_dim,
            "latent_dim": self.latent_dim,
            "encoder": self.encoder_parameterization,
            "init_scale": self.init_scale,
            **({"guide": "fullrank"} if self.encoder.full_rank else {}),
            **({} if self.noise_scale is None else {"noise_scale": self.noise_scale}),
        }


def known_static(program) -> bool:
    """True for a VAE built only from ppvae's own parts, whose structure is static.

    Tracing records one pass through the program; Python branches on tensor values would be
    frozen into it. ppvae's priors, likelihoods and networks branch on shapes and options only,
    so ``elbo="auto"`` compiles such a VAE (and AIS its log density); anything user-defined
    runs eagerly unless a JIT estimator is asked for by name. ``program``: a
    :class:`~ppvae.program.Program`.
    """
    vae = program.module
    if type(vae) not in (VAE, LinearVAE) or getattr(vae, "_custom_nets", True):
        return False
    if type(vae.q) is not DiagonalGaussian:  # full-rank and flow guides are not verified
        return False  # under torch.jit.trace; they run eagerly
    parts = (vae.prior, vae.likelihood, vae.encoder, vae.decoder)
    return all(type(p).__module__.startswith(("ppvae.", "torch.nn.")) for p in parts)
