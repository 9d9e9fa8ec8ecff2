"""The experiments behind the ``ppvae`` command, as Python functions.

Each function takes a data set (a :class:`~ppvae.Dataset` or a name for
:func:`~ppvae.load_dataset`) and Python parameters, trains and evaluates, writes its files
only into the ``out`` folder it is given (nothing at all when ``out`` is None), prints
nothing, and returns a :class:`Result`: the JSON-able numbers it wrote (log-likelihoods and
ELBOs in nats per sample) and the fitted models.

>>> from ppvae import workflows
>>> r = workflows.check_ppca("digits", latent_dim=4, epochs=50)      # doctest: +SKIP
>>> r.metrics["loglik_gap"], r.models["linear_vae"]                   # doctest: +SKIP

The ``ppvae`` command (:mod:`ppvae.cli`) only parses options, calls these and prints
(:mod:`ppvae.reports` formats the tables).

One module per experiment, over the shared pieces of :mod:`~ppvae.workflows.common`:

* :mod:`~ppvae.workflows.run`: :func:`run_experiment` (``ppvae run``);
* :mod:`~ppvae.workflows.ppca_check`: :func:`check_ppca` (``ppvae check-ppca``);
* :mod:`~ppvae.workflows.comparison`: :func:`compare` (``ppvae compare``);
* :mod:`~ppvae.workflows.fitting`: :func:`fit_vae`, :func:`fit_autoencoder` (``ppvae fit``);
* :mod:`~ppvae.workflows.labelled`: :func:`fit_labelled` (``ppvae fit --model cvae|ssvae``).

The experiments call the training loop (``fit``, ``pretrain``, ``finetune``, ...) and read
the ``LINEAR_*`` schedule constants, ``VAE_STEPS`` and ``CHECK_TARGETS`` through this package
at call time, so setting ``ppvae.workflows.fit`` or ``ppvae.workflows.LINEAR_STEPS`` reaches
all of them.
"""

from __future__ import annotations

from .common import (  # noqa: F401  (the training loop, re-exported for ppvae.cli)
    AIS_DEFAULTS,
    CHECK_TARGETS,
    ELBOS,
    LINEAR_BATCH_SIZE,
    LINEAR_FULL_BATCH_EPOCHS,
    LINEAR_FULL_BATCH_MAX,
    LINEAR_MINIBATCH_LR,
    LINEAR_STEPS,
    RUN_AIS_DEFAULTS,
    RUN_FILES,
    VAE_STEPS,
    History,
    Result,
    TrainingInterrupted,
    bits_per_dim,
    distributed_world,
    environment,
    existing_run,
    finetune,
    fit,
    linear_schedule,
    load,
    make_vae,
    prepare_out,
    pretrain,
    resolve_device,
    vae_epochs,
    write_json,
)
from .comparison import compare
from .fitting import (  # noqa: F401  (AUTOENCODER_OPTIONS: read by ppvae.cli)
    AUTOENCODER_OPTIONS,
    fit_autoencoder,
    fit_vae,
    make_autoencoder,
)
from .labelled import LABELLED_MODELS, fit_labelled  # noqa: F401  (LABELLED_MODELS: read by ppvae.cli)
from .ppca_check import check_ppca
from .run import run_experiment

__all__ = [
    "CHECK_TARGETS",
    "LINEAR_FULL_BATCH_MAX",
    "RUN_FILES",
    "VAE_STEPS",
    "Result",
    "check_ppca",
    "compare",
    "existing_run",
    "fit_autoencoder",
    "fit_labelled",
    "fit_vae",
    "linear_schedule",
    "load",
    "run_experiment",
    "vae_epochs",
]
