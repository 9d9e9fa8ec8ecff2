"""Evaluation of trained models, in nats per data point.

For a data point x and guide samples ``z_1..z_K ~ q(z | x)``, the log importance weights are
``log w_k = log p(x, z_k) - log q(z_k | x)``. Then

* the ELBO estimate is ``mean_k log w_k``;
* the importance-weighted bound (Burda et al. 2015) is ``log (1/K) sum_k w_k``, a lower bound
  on log p(x) that grows with K and converges to log p(x) as K -> infinity.

Every estimator takes a *program* (see :mod:`ppvae.program`): ppvae's own VAEs, any
``nn.Module`` with Pyro ``model``/``guide`` methods, or a ``(model, guide)`` pair of functions,
as long as per-point sites live in the ``"data"`` plate. Weights are computed from Pyro traces of
the model replayed against the guide, vectorized over K in a particle plate (one sample at a
time for a program that does not broadcast over an extra batch dimension). Work is split in
chunks over data points and over K so that memory stays bounded.

Where the guide is a poor proposal (PSIS k-hat above 0.7), :func:`ais_log_likelihood` anneals
from it to the posterior instead, and :func:`bdmc` bounds the error of that estimate from both
sides on data simulated from the model (:mod:`ppvae.evaluate.ais`).

Missing entries (NaN) are marginalized by :func:`elbo`, :func:`log_likelihood` and
:func:`estimate_log_likelihood` for a program that takes ``mask`` (the estimate is then of the
observed-data log-likelihood log p(x_o)), and filled in by :func:`impute`; the linear-Gaussian
functions take them in closed form.
"""

from ._common import global_point_estimates
from .ais import AISEstimate, BDMCResult, ais_log_likelihood, bdmc, sigmoid_schedule
from .gaps import inference_gaps
from .importance import (
    PSIS_MIN_SAMPLES,
    LikelihoodEstimate,
    elbo,
    estimate_log_likelihood,
    log_importance_weights,
    log_likelihood,
)
from .imputation import Imputation, impute
from .linear import (
    compare_to_ppca,
    elbo_decomposition,
    exact_log_likelihood,
    linear_gaussian_params,
)
from .mcmc import nuts_posterior

__all__ = [
    "PSIS_MIN_SAMPLES",
    "AISEstimate",
    "BDMCResult",
    "Imputation",
    "LikelihoodEstimate",
    "ais_log_likelihood",
    "bdmc",
    "compare_to_ppca",
    "elbo",
    "elbo_decomposition",
    "estimate_log_likelihood",
    "exact_log_likelihood",
    "global_point_estimates",
    "impute",
    "inference_gaps",
    "linear_gaussian_params",
    "log_importance_weights",
    "log_likelihood",
    "nuts_posterior",
    "sigmoid_schedule",
]
