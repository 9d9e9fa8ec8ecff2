"""What the training loop calls that is not training: metrics, checkpoints, early stopping,
the progress bar, a TensorBoard logger, and Ctrl-C.

A hook is any object with some of the methods of :class:`Hook`; the loop calls them in order,
passing the :class:`~ppvae.train.loop.Run` it is driving (its ``history``, ``epoch``,
``program``, ``config``, and ``stop``, which a hook sets to end training after this epoch).
``fit`` builds its own hooks from its arguments (``test=``, ``checkpoint_dir=``, ``progress=``)
and runs a user's ``hooks=[...]`` between them: test metrics first, then the user's hooks, then
the checkpoint (which saves every hook's ``state_dict()``), then the progress bar.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoints import atomic_torch_save
from ..data import check_data, check_missing, split_missing
from ..errors import InputError
from ..program import local_elbo

__all__ = [
    "Checkpoint",
    "EarlyStopping",
    "Hook",
    "ProgressBar",
    "TensorBoard",
    "TestELBO",
    "TrainingInterrupted",
]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT) after saving a checkpoint at a step boundary."""


class Hook:
    """Base class (optional: any object with some of these methods is a hook)."""

    def on_fit_start(self, run) -> None:
        """After the program, data and any resumed state are in place, before the first step."""

    def on_epoch_end(self, run) -> None:
        """After each epoch's last step (``run.history.train_elbo`` has the epoch's value)."""

    def on_interrupt(self, run) -> None:
        """On Ctrl-C, at a step boundary, before :class:`TrainingInterrupted` is raised."""

    def on_fit_end(self, run) -> None:
        """After the last epoch (or an early stop), also when training raised."""

    def state_dict(self) -> dict:
        """What a checkpoint stores of this hook, for an exact resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


def _call(hooks, method: str, run) -> None:
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn(run)


def mean_elbo(run, X: torch.Tensor, chunk: int = 4096) -> float:
    """ELBO of X in nats per sample: one guide draw per point, whatever the training objective.

    Rows with missing (NaN) entries score their observed entries (the program takes mask).
    Global latents (sites outside the data plate) are drawn from the guide and not charged:
    held-out points are conditioned on the posterior learned from the training data (see
    :func:`~ppvae.program.local_elbo`), so the value does not depend on ``chunk``. A program
    without global latents that does not subsample is scored by the training estimator where
    that is an ELBO (the analytic-KL one of a VAE: the same expectation, less noise).
    """
    if not run.per_point_elbo:
        return _mean_elbo_by_loss(run, run.elbo_fn, X, chunk)
    return float(_held_out_objective(run, X, chunk, local_elbo).sum()) / X.shape[0]


def mean_objective(run, X: torch.Tensor, chunk: int = 4096) -> float:
    """The training objective (the IWAE bound, say) of X in nats per sample."""
    return _mean_elbo_by_loss(run, run.loss_fn, X, chunk)


def _mean_elbo_by_loss(run, loss_fn, X, chunk: int) -> float:
    plain, masked = run.program.bind(None), None
    total = 0.0
    with torch.no_grad():
        for i in range(0, X.shape[0], chunk):
            x, mask = split_missing(X[i : i + chunk])
            if mask is None:
                total += loss_fn.loss(*plain, x)
            else:
                masked = masked or run.program.bind(None, masked=True)
                total += loss_fn.loss(*masked, x, mask)
    return -total / X.shape[0]


def _held_out_objective(run, X, chunk: int, per_point) -> torch.Tensor:
    """``per_point(program, x, **kwargs)`` over blocks of X, (M,): blocks of exactly the
    program's subsample size where it subsamples (a short last block overlapping the one
    before, its overlap dropped), so that every row gets its own value."""
    s = run.rows_per_call
    n = X.shape[0]
    step = chunk if s is None else min(chunk, s)
    out = []
    with torch.no_grad():
        for start in range(0, n, step):
            stop = min(n, start + step)
            lo = start if s is None else max(0, stop - s)
            x, mask = split_missing(X[lo:stop])
            kwargs = {} if mask is None else {"mask": mask}
            out.append(per_point(run.program, x, **kwargs)[-(stop - start) :])
    return torch.cat(out)


def _held_out(run, X, name: str) -> torch.Tensor:
    takes_mask = run.program.takes_mask
    X = check_data(X, name=name, data_dim=run.data_dim, dtype=torch.float32, allow_nan=takes_mask)
    missing = torch.isnan(X)
    if bool(missing.any()):
        check_missing(~missing, name)
        run.support_check(torch.where(missing, X[~missing][:1], X), name)
    else:
        run.support_check(X, name)
    return X.to(run.device)


class TestELBO(Hook):
    """The ELBO of held-out data after every epoch, into ``history.test_elbo`` (its time is not
    counted as training time)."""

    def __init__(self, test):
        self.test = test

    def on_fit_start(self, run) -> None:
        self.test = _held_out(run, self.test, "test")

    def on_epoch_end(self, run) -> None:
        if run.rank != 0:
            return
        with run.untimed():
            run.history.test_elbo.append(mean_elbo(run, self.test))
            if run.elbo_fn is not run.loss_fn:  # the training objective is not the ELBO
                run.history.test_objective.append(mean_objective(run, self.test))


class EarlyStopping(Hook):
    """Stop when the ELBO of a validation split has not improved for ``patience`` epochs, and
    restore the parameters of its best epoch.

    Parameters
    ----------
    validation : array-like, shape (M, D)
        Held-out rows (not the test set); their ELBO goes to ``history.validation_elbo``.
    patience : int
        Epochs without an improvement of more than ``min_delta`` nats per sample before
        training stops.
    min_delta : float
        The improvement that counts, nats per sample.

    Notes
    -----
    The ELBO is one guide sample per point, so it is noisy: on 200 digits rows its standard
    deviation between evaluations of the same parameters is about 0.1 nats per sample
    (measured: 0.11), comparable to the epoch-to-epoch changes on a plateau. The best epoch
    is the maximum of that noisy curve, so the epochs around it are not distinguishable from
    it, and its validation ELBO is biased upward; ``patience`` keeps the noise from ending a
    plateau early.
    """

    def __init__(self, validation, *, patience: int = 10, min_delta: float = 0.0):
        if isinstance(patience, bool) or int(patience) != patience or patience < 1:
            raise InputError(f"patience must be a positive integer, got {patience!r}")
        if not min_delta >= 0:
            raise InputError(f"min_delta must be >= 0, got {min_delta!r}")
        self.validation = validation
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best = -float("inf")
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.stopped = False

    def on_fit_start(self, run) -> None:
        self.validation = _held_out(run, self.validation, "validation")
        if self.stopped:  # a resumed run that had already stopped
            run.stop = True

    def on_epoch_end(self, run) -> None:
        with run.untimed():
            value = mean_elbo(run, self.validation)
        run.history.validation_elbo.append(value)
        if value > self.best + self.min_delta:
            self.best, self.best_epoch = value, run.epoch
            self.best_state = {k: v.detach().clone() for k, v in run.parameters().items()}
        elif run.epoch - self.best_epoch >= self.patience:
            self.stopped = run.stop = True

    def on_fit_end(self, run) -> None:
        if self.best_state is not None:
            run.load_parameters(self.best_state)
            run.history.best_epoch = self.best_epoch

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_state, self.stopped = state["best_state"], state["stopped"]


class Checkpoint(Hook):
    """Write ``DIR/checkpoint.pt`` atomically after every epoch and on Ctrl-C: the program's
    parameters, the optimizer, every random state, the position, the history, the settings and
    each hook's state. Under ``torch.distributed`` every rank takes part (each rank's random
    state is gathered at epoch ends) and rank 0 writes; ``path`` may be None there."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)

    def _write(self, run, every_rank_here: bool) -> None:
        run.clock()
        ranks_rng = None
        if run.world > 1 and every_rank_here:  # a collective: every rank calls it
            ranks_rng = [None] * run.world
            torch.distributed.all_gather_object(ranks_rng, run.rng_state())
        if self.path is None or run.rank != 0:  # one writer
            return
        atomic_torch_save(run.checkpoint_payload(ranks_rng), self.path)

    def on_epoch_end(self, run) -> None:
        self._write(run, every_rank_here=True)

    def on_interrupt(self, run) -> None:
        self._write(run, every_rank_here=False)


class ProgressBar(Hook):
    """A tqdm bar over epochs with the latest ELBOs (``progress=None``: only on a terminal)."""

    def __init__(self, progress: bool | None):
        self.progress = progress
        self.bar = None

    def on_fit_start(self, run) -> None:
        # tqdm's disable=None means: disable when not writing to a terminal
        disable = None if self.progress is None else not self.progress
        self.bar = tqdm(
            desc="SVI",
            unit="epoch",
            initial=run.epoch,
            total=run.config.epochs,
            disable=True if run.rank != 0 else disable,
        )

    def on_epoch_end(self, run) -> None:
        h = run.history
        shown = {"train_elbo": f"{h.train_elbo[-1]:.2f}"}
        if h.test_elbo:
            shown["test_elbo"] = f"{h.test_elbo[-1]:.2f}"
        self.bar.update(1)
        self.bar.set_postfix(**shown)

    def on_fit_end(self, run) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoard(Hook):
    """Log the ELBO curves (nats per sample) and the learning rate for TensorBoard, live.

    Needs the optional ``tensorboard`` package (``pip install 'ppvae[tensorboard]'``); run
    ``tensorboard --logdir DIR`` to watch. ``writer`` may be any object with ``add_scalar``,
    ``flush`` and ``close`` (a ``torch.utils.tensorboard.SummaryWriter`` by default).
    """

    def __init__(self, log_dir: str | Path, *, writer=None):
        self.log_dir = Path(log_dir)
        self.writer = writer

    def on_fit_start(self, run) -> None:
        if self.writer is None and run.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError(
                    "TensorBoard logging needs the tensorboard package: "
                    "pip install 'ppvae[tensorboard]'"
                ) from None
            self.writer = SummaryWriter(str(self.log_dir))

    def on_epoch_end(self, run) -> None:
        if self.writer is None:
            return
        h, epoch = run.history, run.epoch
        for tag, values in (
            ("elbo/train", h.train_elbo),
            ("elbo/test", h.test_elbo),
            ("elbo/validation", h.validation_elbo),
        ):
            if values:
                self.writer.add_scalar(tag, values[-1], epoch)
        self.writer.add_scalar("lr", run.current_lr(), epoch)
        self.writer.flush()

    def on_fit_end(self, run) -> None:
        if self.writer is not None:
            self.writer.close()


class SigintFlag:
    """Turn SIGINT into a flag checked between steps, so a checkpoint is never half-updated."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.raised:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Untimed:
    """Context that moves the training clock's start forward by the time spent inside."""

    def __init__(self, run):
        self.run = run

    def __enter__(self):
        self.tic = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.run.start += time.perf_counter() - self.tic


