"""Imputation of missing entries by importance sampling from the guide.

For a row with observed entries ``x_o`` and missing ones ``x_m``, the conditional mean is

    E[x_m | x_o] = E_{p(z | x_o)} [ E[x_m | z] ]
                 ~ sum_k w~_k E[x_m | z_k],   z_k ~ q(z | x_o),
                   w~_k = w_k / sum_j w_j,    w_k = p(x_o, z_k) / q(z_k | x_o)

(self-normalized importance sampling; the likelihood factorizes over features, so x_m is
independent of x_o given z). Multiple imputations are drawn by sampling-importance-resampling:
pick z_k with probability w~_k, then draw x_m ~ p(x_m | z_k). The PSIS k-hat of each row's
weights (Vehtari et al. 2024) says how far to trust both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError, ProgramError
from ._common import (
    _DEFAULT_MAX_ELEMENTS,
    _chunks,
    _EvalMode,
    _log_weights,
    _prepare,
)
from .importance import PSIS_MIN_SAMPLES, _psis

__all__ = ["Imputation", "impute"]


@dataclass
class Imputation:
    """Imputed data and how far to trust them.

    Attributes
    ----------
    mean : torch.Tensor, shape (N, D)
        The data with each missing entry replaced by its conditional mean E[x_m | x_o];
        observed entries as given.
    variance : torch.Tensor, shape (N, D)
        Conditional variance Var[x_m | x_o] of each missing entry (0 where observed).
    mean_se : torch.Tensor, shape (N, D)
        Monte Carlo standard error of ``mean`` (delta method for the self-normalized
        estimate, ``sqrt(sum_k w~_k^2 (f_k - mean)^2)``; 0 where observed).
    draws : torch.Tensor, shape (M, N, D), or None
        ``multiple=M`` imputations by sampling-importance-resampling; observed entries as
        given.
    khat : torch.Tensor, shape (N,)
        PSIS k-hat of each row's importance weights; above 0.7 the row's imputation is
        unreliable.
    ess : torch.Tensor, shape (N,)
        Effective sample size ``1 / sum_k w~_k^2`` of each row's weights.
    mask : torch.Tensor of bool, shape (N, D)
        True where the data were observed.
    num_samples : int
        K.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    mean_se: torch.Tensor
    draws: torch.Tensor | None
    khat: torch.Tensor
    ess: torch.Tensor
    mask: torch.Tensor
    num_samples: int

    @property
    def khat_share(self) -> float:
        """Share of rows with k-hat > 0.7."""
        return float((self.khat > 0.7).double().mean())


def impute(
    program,
    X,
    num_samples: int = 1000,
    *,
    multiple: int = 0,
    seed: int | None = None,
    max_elements: int = _DEFAULT_MAX_ELEMENTS,
    point_estimates=None,
) -> Imputation:
    """Impute the missing (NaN) entries of ``X`` under a program, with their uncertainty.

    Parameters
    ----------
    program : program
        A VAE, a LinearVAE, or any program whose model and guide take ``mask``
        (:mod:`ppvae.program`) and whose observation site's distribution has ``mean``,
        ``variance`` and ``sample`` (every torch distribution does).
    X : array-like, shape (N, D)
        Data with NaN at the missing entries; every row needs one observed entry.
    num_samples : int
        K, guide draws per row (at least 5, for PSIS).
    multiple : int
        M, multiple imputations to draw by sampling-importance-resampling (0: none).
    seed : int, optional
        Seeds the draws without touching torch's global generator.
    max_elements : int
        Bound on the floats in one chunk of (K, n, D) work (three such arrays are held).

    point_estimates : True or dict, optional
        Plug-in values of the global latents (sites outside the data plate), which this
        estimator conditions on: a dict ``{site: value}``, or True (and by default) the
        module's ``point_estimates()``; a program with global latents and neither is refused.

    Returns
    -------
    Imputation
    """
    if isinstance(multiple, bool) or int(multiple) != multiple or multiple < 0:
        raise InputError(f"multiple must be a non-negative integer, got {multiple!r}")
    if not isinstance(num_samples, bool) and int(num_samples) == num_samples:
        if num_samples < PSIS_MIN_SAMPLES:
            raise InputError(
                f"num_samples={num_samples} is too few: use at least {PSIS_MIN_SAMPLES} (the "
                "PSIS k-hat of the weights needs them)"
            )
    ev, X0 = _prepare(
        program,
        X,
        num_samples,
        missing="impute",
        any_rows="impute",
        point_estimates=point_estimates,
    )
    if ev.mask is None:
        raise InputError("X: nothing to impute (no NaN entries)")
    site = ev.info.support_site or (
        next(iter(ev.info.observed)) if len(ev.info.observed) == 1 else None
    )
    if site is None:
        raise ProgramError(
            "impute: no single observed site holds x; the program must observe x at one site"
        )
    cuda = [X0.device.index or 0] if X0.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        parts = _impute_chunks(ev, X0, int(num_samples), int(multiple), site, max_elements)
    mean, var, se, draws, khat, ess = (
        None if parts[0][i] is None else torch.cat([p[i] for p in parts], dim=1 if i == 3 else 0)
        for i in range(6)
    )
    mask = ev.mask.cpu()
    x = X0.cpu()
    return Imputation(
        mean=torch.where(mask, x, mean),
        variance=torch.where(mask, torch.zeros(()), var),
        mean_se=torch.where(mask, torch.zeros(()), se),
        draws=None if draws is None else torch.where(mask, x, draws),
        khat=khat,
        ess=ess,
        mask=mask,
        num_samples=int(num_samples),
    )


def _impute_chunks(ev, X, K: int, M: int, site: str, max_elements: int) -> list:
    n_chunk, _ = _chunks(X.shape[0], K, 3 * ev.width, max_elements)
    n_chunk = min(n_chunk, ev.rows_per_call or n_chunk)
    k_chunk = max(1, min(K, max_elements // (3 * ev.width * n_chunk)))
    out = []
    with _EvalMode(ev.module), torch.no_grad():
        for i in range(0, X.shape[0], n_chunk):
            x, mask = X[i : i + n_chunk], ev.mask[i : i + n_chunk]
            lw, means, variances, samples = [], [], [], []
            for j in range(0, K, k_chunk):
                traces: list = []
                lw.append(_log_weights(ev, x, min(k_chunk, K - j), mask=mask, traces=traces))
                fns = [model_tr.nodes[site]["fn"] for _, model_tr in traces]
                try:
                    means.append(_stack([fn.mean for fn in fns], x))
                    variances.append(_stack([fn.variance for fn in fns], x))
                except (NotImplementedError, AttributeError) as exc:
                    raise ProgramError(
                        f"impute: the distribution at site {site!r} has no mean or variance ({exc})"
                    ) from None
                if M:
                    samples.append(_stack([fn.sample() for fn in fns], x))
            out.append(_summaries(torch.cat(lw).double(), means, variances, samples, M))
    return out


def _stack(values: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(k, n, D) from one particle-plate value (k, n, D) or k single-draw values (n, D)."""
    v = values[0] if len(values) == 1 and values[0].dim() == 3 else torch.stack(values)
    return v.expand(v.shape[0], *x.shape).double()


def _summaries(lw, means, variances, samples, M: int):
    """Mean, variance, SE, SIR draws, k-hat and ESS of one chunk of rows."""
    w = torch.softmax(lw, dim=0)  # (K, n)
    f = torch.cat(means).cpu()  # (K, n, D)
    w = w.cpu()
    mean = (w[..., None] * f).sum(0)
    second = (w[..., None] * (torch.cat(variances).cpu() + f * f)).sum(0)
    var = (second - mean * mean).clamp_min(0.0)
    se = ((w[..., None] ** 2) * (f - mean) ** 2).sum(0).sqrt()
    _, khat = _psis(lw)
    ess = 1.0 / (w * w).sum(0)
    draws = None
    if M:
        s = torch.cat(samples).cpu()  # (K, n, D)
        idx = torch.multinomial(w.T, M, replacement=True)  # (n, M)
        rows = torch.arange(s.shape[1])[:, None]
        draws = s[idx, rows].permute(1, 0, 2).float()  # (M, n, D)
    return (mean.float(), var.float(), se.float(), draws, khat.float(), ess.float())
