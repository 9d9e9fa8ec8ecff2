"""Training by stochastic variational inference, one part per module.

* :mod:`~ppvae.train.config`: :class:`TrainConfig`, the one validated owner of the settings;
* :mod:`~ppvae.train.objectives`: which ELBO estimator, and the KL weight (:class:`LatentScale`);
* :mod:`~ppvae.train.pyro_jit`: the quarantined workaround for Pyro's JIT ELBOs;
* :mod:`~ppvae.train.step`: one guarded SVI step (:class:`GuardedStep`);
* :mod:`~ppvae.train.batches`: minibatches in memory or streamed from a dataset;
* :mod:`~ppvae.train.hooks`: test metrics, checkpoints, early stopping, progress, TensorBoard;
* :mod:`~ppvae.train.loop`: :func:`fit`, the loop that ties them together.
"""

from .config import TrainConfig, resolve_device
from .hooks import (
    Checkpoint,
    EarlyStopping,
    Hook,
    ProgressBar,
    TensorBoard,
    TestELBO,
    TrainingInterrupted,
)
from .loop import History, Run, finetune, fit, pretrain
from .objectives import ELBOS, LatentScale, make_elbo
from .pyro_jit import CachedJitTrace_ELBO, CachedJitTraceMeanField_ELBO
from .step import VALIDATE_STEPS, GuardedStep, distributed_world

__all__ = [
    "ELBOS",
    "VALIDATE_STEPS",
    "CachedJitTraceMeanField_ELBO",
    "CachedJitTrace_ELBO",
    "Checkpoint",
    "EarlyStopping",
    "GuardedStep",
    "History",
    "Hook",
    "LatentScale",
    "ProgressBar",
    "Run",
    "TensorBoard",
    "TestELBO",
    "TrainConfig",
    "TrainingInterrupted",
    "distributed_world",
    "finetune",
    "fit",
    "make_elbo",
    "pretrain",
    "resolve_device",
]
