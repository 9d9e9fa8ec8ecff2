"""Checkpoints from the training side: what a run saves of its program, where, and the
checks and restores that make a resumed run continue exactly where the interrupted one stopped.

The file format and its atomic writing live in :mod:`ppvae.checkpoints`; the checkpoint hook
(:class:`~ppvae.train.hooks.Checkpoint`) decides when to write.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import torch

from ..checkpoints import MODEL_CLASSES, _model_entry, set_rng_state
from ..errors import InputError
from ..program import Program
from .batches import fingerprint_change, same_fingerprint
from .config import RESUME_MAY_CHANGE
from .objectives import estimator_name

__all__ = [
    "check_resumable",
    "checkpoint_path",
    "load_param_store",
    "model_state",
    "model_state_class",
    "restore_rng",
]


def model_state(program: Program, store_params: dict) -> dict:
    """The program's entry in a checkpoint: class, config and weights (and, for a user's
    program, the unconstrained values of its param-store sites)."""
    if program.is_ppvae and type(program.module).__name__ in MODEL_CLASSES:
        return _model_entry(program.module)
    module = program.module
    return {
        "class": program.name,
        "config": None,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}
        if module is not None
        else {},
        "param_store": {n: v.detach().cpu() for n, v in store_params.items()},
    }


def checkpoint_path(checkpoint_dir, resume: bool, overwrite: bool) -> Path | None:
    if resume and checkpoint_dir is None:
        raise InputError("resume=True needs checkpoint_dir")
    if resume and overwrite:
        raise InputError("resume=True and overwrite=True exclude each other")
    if checkpoint_dir is None:
        if overwrite:
            raise InputError("overwrite=True needs checkpoint_dir (there is nothing to replace)")
        return None
    if Path(checkpoint_dir).exists() and not Path(checkpoint_dir).is_dir():
        raise InputError(f"checkpoint_dir {checkpoint_dir} exists and is not a folder")
    path = Path(checkpoint_dir) / "checkpoint.pt"
    if path.exists() and not (resume or overwrite):
        raise InputError(
            f"checkpoint_dir {checkpoint_dir} already holds a run's checkpoint.pt; pass "
            "resume=True to continue it or overwrite=True to start afresh"
        )
    return path


def restore_rng(run, payload: dict) -> None:
    """Every random stream where the interrupted run left it (each rank its own)."""
    ranks_rng = payload.get("rank_rng")
    if run.world > 1 and ranks_rng is not None and len(ranks_rng) == run.world:
        set_rng_state(ranks_rng[run.rank], run.gen)  # each rank's own guide noise continues
    else:
        set_rng_state(payload["rng"], run.gen)
        if run.world > 1 and run.rank > 0:  # only rank 0's state was saved (an interrupted
            # epoch, or another world size): fresh noise per rank, not a copy of rank 0's
            pyro.set_rng_seed(run.config.seed + run.rank + 1009 * (1 + run.epoch))
    if run.stream is not None and payload.get("stream_rng") is not None:
        run.stream.gen.set_state(payload["stream_rng"])
    if run.perm is not None:
        run.perm = run.perm.to(run._rows_device())


def load_param_store(saved: dict, path) -> None:
    store = pyro.get_param_store()
    with torch.no_grad():
        for name, value in saved.items():
            if name not in store.keys():
                raise InputError(f"{path}: the program has no param-store site {name!r}")
            store._params[name].copy_(value)


def check_resumable(payload: dict, program: Program, fit_config: dict, epochs: int, path) -> None:
    saved = payload["fit_config"]
    change = fingerprint_change(saved["data"], fit_config["data"])
    if change:  # before the model: other columns also mean another data_dim in its config
        raise InputError(f"{path}: the training data changed since the checkpoint: {change}")
    config = program.module.config() if program.is_ppvae and payload["config"] else None
    if payload["class"] != model_state_class(program) or payload["config"] != config:
        raise InputError(
            f"{path}: the checkpoint is of a different model ({payload['class']} "
            f"{payload['config']}), not {model_state_class(program)} {config}"
        )
    holes, now = saved.get("observed"), fit_config.get("observed")
    if (holes is None) != (now is None) or (holes is not None and not same_fingerprint(holes, now)):
        raise InputError(
            f"{path}: the checkpoint was written for training data with other missing entries"
        )
    for key, value in fit_config.items():
        if key == "elbo" and estimator_name(saved.get(key), program) == estimator_name(
            value, program
        ):
            continue  # compiled or eager, auto or named: the same estimator
        if key not in ("data", "observed", *RESUME_MAY_CHANGE) and saved.get(key) != value:
            raise InputError(
                f"{path}: cannot resume with {key}={value!r}; the run used {saved.get(key)!r}"
            )
    done = payload["progress"]["epoch"]
    if epochs < done:
        raise InputError(
            f"{path}: the checkpoint has {done} epochs done, more than epochs={epochs}"
        )
    if epochs != saved["epochs"] and fit_config["lr_decay"] != 1.0:
        raise InputError(
            f"{path}: the learning-rate schedule spans {saved['epochs']} epochs; "
            f"resume with epochs={saved['epochs']}"
        )


def model_state_class(program: Program) -> str:
    if program.is_ppvae and type(program.module).__name__ in MODEL_CLASSES:
        return type(program.module).__name__
    return program.name
