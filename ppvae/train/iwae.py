"""Importance-weighted objectives: the IWAE bound (Burda et al. 2015) per data point, and its
doubly reparameterized gradient (DReG; Tucker et al. 2019).

For a minibatch of B points out of N, with K guide draws per point,

    IWAE = (N / B) sum_n log (1/K) sum_k w_nk,    w_nk = p(x_n, z_nk) / q(z_nk | x_n),

a lower bound on sum_n log p(x_n) that grows with K. The weights are per data point because
every latent site lives in the ``"data"`` plate, so the K draws are independent *per point*.
Pyro's ``RenyiELBO(alpha=0)`` computes ``log (1/K) sum_k`` of the weight of the whole
minibatch instead (one product over points per draw), a looser bound for B > 1 whose
estimates do not decompose over points (pyro-ppl/pyro#3104); here the log-sum-exp is taken per
point, inside the plate.

``dreg=True`` keeps the value and changes the guide's gradient: q's own parameters are detached
in log q, so they receive gradient only through the reparameterized draws z, and that gradient
is reweighted by the normalized weights once more (a hook on each z), which gives Tucker et
al.'s estimator ``sum_k w~_k^2 d log w_k / dz dz / dphi``: unbiased for the same gradient as
IWAE's, with a variance that does not grow with K for the guide. The model's gradient is
IWAE's, ``sum_k w~_k grad_theta log p(x, z_k)``.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.util import prune_subsample_sites

from ..errors import ProgramError
from ..program import _in_data_plate

__all__ = ["IWAE_ELBO"]


def _detached(fn):
    """The same distribution with its parameters detached (for DReG's log q)."""
    if isinstance(fn, dist.Independent):
        return dist.Independent(_detached(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, dist.MultivariateNormal):
        return dist.MultivariateNormal(
            fn.loc.detach(), scale_tril=fn._unbroadcasted_scale_tril.detach()
        )
    names = [n for n in fn.arg_constraints if n in fn.__dict__]
    if isinstance(fn, dist.TransformedDistribution) or not names:
        raise ProgramError(
            f"elbo='iwae-dreg' needs guide distributions whose parameters it can detach; "
            f"{type(fn).__name__} is not one (use elbo='iwae')"
        )
    return type(fn)(**{n: getattr(fn, n).detach() for n in names})


class IWAE_ELBO(ELBO):
    """The per-point importance-weighted bound as a Pyro ELBO (``num_particles`` = K).

    Parameters
    ----------
    num_particles : int
        K, guide draws per data point.
    dreg : bool
        Doubly reparameterized gradients for the guide (same value).

    Notes
    -----
    The program must keep ppvae's data-plate contract, with every latent site in the
    ``"data"`` plate, and broadcast over one extra batch dimension on the left (the K draws).
    Site scales are honoured relative to the observation's: a KL weight beta (``LatentScale``)
    raises p(z) / q(z | x) inside each weight to the power beta.
    """

    def __init__(self, num_particles: int = 5, dreg: bool = False):
        super().__init__(num_particles=num_particles)  # the particle plate is our own
        self.dreg = bool(dreg)
        self._plate_dim: int | None = None
        self.data_plate = "data"  # the program's plate over data points (set by fit)

    def _particle_dim(self, model, guide, args, kwargs) -> int:
        """One left of the program's leftmost plate (found by running it once, on a forked
        RNG so that training draws the same noise as without this look)."""
        if self._plate_dim is None:
            with torch.random.fork_rng(), torch.no_grad(), poutine.block():
                guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
                model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
                    *args, **kwargs
                )
            dims = [
                frame.dim
                for tr in (model_tr, guide_tr)
                for site in tr.nodes.values()
                if site["type"] == "sample"
                for frame in site["cond_indep_stack"]
                if frame.vectorized
            ]
            self._plate_dim = min(dims, default=0) - 1
        return self._plate_dim

    def _log_weights(self, model, guide, args, kwargs):
        """Per-point log weights (K, B), relative to the observation's scale, and that scale."""
        dim = self._particle_dim(model, guide, args, kwargs)
        with pyro.plate("_iwae_particles", self.num_particles, dim=dim):
            guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
                *args, **kwargs
            )
        guide_tr, model_tr = prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)
        observed = [
            s for s in model_tr.nodes.values()
            if s["type"] == "sample" and s["is_observed"] and _in_data_plate(s, self.data_plate)
        ]  # fmt: skip
        if not observed:
            raise ProgramError(
                f"elbo='iwae' needs an observed site in the {self.data_plate!r} plate"
            )
        scale = observed[0]["scale"]  # N / B (and no KL weight: observations are not scaled)
        model_tr.compute_log_prob()
        log_w = 0.0
        for name, site in model_tr.nodes.items():
            if site["type"] != "sample":
                continue
            if not _in_data_plate(site, self.data_plate):
                raise ProgramError(
                    f"elbo='iwae' weighs each data point on its own, so every latent site must "
                    f"lie in the {self.data_plate!r} plate; {name!r} does not"
                )
            log_w = log_w + site["log_prob"]
        for name, site in guide_tr.nodes.items():
            if site["type"] != "sample" or name not in model_tr.nodes:
                continue
            fn = _detached(site["fn"]) if self.dreg else site["fn"]
            lp = fn.log_prob(site["value"])
            log_w = log_w - scale_and_mask(lp, site["scale"], site["mask"])
        return log_w / scale, scale, guide_tr

    def differentiable_loss(self, model, guide, *args, **kwargs):
        log_w, scale, guide_tr = self._log_weights(model, guide, args, kwargs)
        if log_w.dim() < 1 or log_w.shape[0] != self.num_particles:
            raise ProgramError(
                f"elbo='iwae': the log weights have shape {tuple(log_w.shape)}; the program "
                "must broadcast over the K draws on a batch dimension left of its plates"
            )
        log_w = log_w.reshape(self.num_particles, -1)  # (K, B)
        if self.dreg and torch.is_grad_enabled():
            w = torch.softmax(log_w.detach(), dim=0)  # normalized weights per point
            for site in guide_tr.nodes.values():
                z = site.get("value")
                if site["type"] == "sample" and isinstance(z, torch.Tensor) and z.requires_grad:
                    event = len(site["fn"].event_shape)
                    batch = z.shape[: z.dim() - event]  # (K, ..., B): one weight per draw
                    factor = w.reshape(batch + (1,) * event)
                    z.register_hook(lambda g, f=factor: g * f)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)
        return -scale * bound.sum()

    def _get_trace(self, model, guide, args, kwargs):  # pragma: no cover - not used
        raise NotImplementedError("IWAE_ELBO vectorizes its particles in differentiable_loss")

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)
