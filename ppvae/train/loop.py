"""The training loop: :func:`fit` steps a program's ELBO over shuffled minibatches.

``fit`` validates its settings once (:class:`~ppvae.train.config.TrainConfig`), traces the
program (:func:`~ppvae.program.inspect_program`), builds one guarded step
(:class:`~ppvae.train.step.GuardedStep`) and a :class:`Run`, then calls
:meth:`Run.run_epoch` epoch by epoch; everything that is not training (test ELBO, checkpoints,
early stopping, the progress bar, TensorBoard) is a hook (:mod:`ppvae.train.hooks`).

Each step's loss is the negative minibatch ELBO scaled to the whole training set, so the
history reports ``-loss / N``: the ELBO in nats per sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import pyro
import torch
from pyro.infer import ELBO
from torch.utils.data import DataLoader, Dataset

from ..autoencoders import StackedAutoencoder
from ..checkpoints import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    load_weights,
    read_training_checkpoint,
    rng_state,
)
from ..data import (
    UNLABELLED,
    check_data,
    check_missing,
    missing_as_nan,
    row_blocks,
    split_missing,
)
from ..errors import InputError, ProgramError
from ..initialization import keep_parameters, seed_parameters
from ..program import (
    Program,
    _accepts,
    as_program,
    check_mask_contract,
    head_kwargs,
    inspect_program,
    inspect_rows,
    plate_problem,
)
from . import step as _step
from .batches import Stream, blockwise, fingerprint, support_check
from .config import HoldThenDecay, TrainConfig, resolve_device
from .hooks import (
    Checkpoint,
    ProgressBar,
    SigintFlag,
    TestELBO,
    TrainingInterrupted,
    Untimed,
    _call,
)
from .labelled import StratifiedLabelledLoss, stratified_batches, stratified_permutation
from .objectives import (
    LatentScale,
    enumerating_elbo,
    estimator_ran,
    held_out_elbo,
    make_elbo,
)
from .pyro_jit import _TraceKeyed
from .resume import (
    check_resumable,
    checkpoint_path,
    load_param_store,
    model_state,
    restore_rng,
)
from .step import GuardedStep, distributed_world

__all__ = ["History", "Run", "finetune", "fit", "pretrain"]


@dataclass
class History:
    """What :func:`fit` measured, per epoch.

    Attributes
    ----------
    train_elbo : list of float
        Mean minibatch ELBO over each epoch, nats per sample (the KL-weighted objective when
        ``kl_weight`` is not 1 or a warm-up runs).
    test_elbo : list of float
        ELBO of the test data after each epoch (one guide sample per point, whatever the
        training objective; global latents drawn from the guide and their KL not charged to
        test points), nats per sample; empty when no test data were given.
    test_objective : list of float
        The training objective on the test data after each epoch, where it is not the ELBO
        (the IWAE bound of ``elbo="iwae"``); empty otherwise.
    validation_elbo : list of float
        The same for the validation split of :class:`~ppvae.train.hooks.EarlyStopping`.
    best_epoch : int or None
        The epoch (1-based) whose parameters early stopping restored.
    seconds : float
        Wall time of training (steps, checkpoints), excluding test and validation evaluation.
    steps : int
        Number of SVI steps taken.
    compile_seconds : float
        Part of ``seconds`` spent compiling the program with ``torch.jit.trace`` (a JIT
        estimator compiles once per minibatch shape and KL weight); 0 for an eager one.
    config : dict
        The training settings as resolved (defaults filled in from the program), JSON-able;
        ``config["elbo"]`` names the estimator that ran ("meanfield", "jit-meanfield",
        "trace", "iwae", ...), ``config["elbo_requested"]`` what was asked for ("auto").
    """

    train_elbo: list[float] = field(default_factory=list)
    test_elbo: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    compile_seconds: float = 0.0
    config: dict = field(default_factory=dict)
    validation_elbo: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    test_objective: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_elbo)

    def to_dict(self) -> dict:
        return asdict(self)


def _program_and_data(program, train, data) -> tuple[Program, object]:
    """``fit(program, X)`` or ``fit(model, guide, X)``."""
    if data is not None:
        return as_program(program, train), data
    if callable(train) and not isinstance(train, (torch.Tensor, Dataset, DataLoader)):
        raise InputError("fit(model, guide, train): the training data are missing")
    return as_program(program), train


class Run:
    """One training run in progress: the state hooks read and :meth:`run_epoch` advances.

    Attributes
    ----------
    program : Program
    config : TrainConfig
    history : History
    epoch : int
        Epochs completed.
    stop : bool
        Set by a hook to end training after the current epoch.
    rank, world : int
        This process's rank and the number of processes (1 without torch.distributed).
    """

    def __init__(self, program, config, loss_fn, train, n, batch_size, device):
        self.program, self.config, self.loss_fn = program, config, loss_fn
        self.train, self.n, self.batch_size, self.device = train, n, batch_size, device
        self.stream = train if isinstance(train, Stream) else None
        self.n_batches = math.ceil(n / batch_size)
        self.world, self.rank = distributed_world()
        self.history = History()
        self.epoch, self.step, self.perm, self.partial = 0, 0, None, 0.0
        self.stop = False
        self.gen = torch.Generator(device=device)
        self.hooks: list = []
        self.user_hooks: list = []
        self.stepper: GuardedStep | None = None
        self.fit_config: dict = {}
        self.metadata: dict = {}
        self.labels = None
        self.strata: tuple[torch.Tensor, torch.Tensor] | None = None  # labelled, unlabelled rows
        self.observed = None  # (N, D) bool where the data have missing entries, else None
        self.masked = False  # model and guide are bound to take the observed mask
        self.data_dim = None
        self.support_check = None
        self.latent_scale = LatentScale()
        self.elbo_fn = loss_fn  # the ELBO estimator of held-out data (see hooks.mean_elbo)
        self.per_point_elbo = False  # held-out ELBO row by row (global latents, subsampling)
        self.rows_per_call: int | None = None  # rows the program subsamples in its plate
        self.store_before: set = set()  # param-store sites present before fit (others')
        self.param_names: set = set()  # sites the program's trace touched
        self.start = time.perf_counter()
        self.compiled_before = 0.0

    def owns(self, name: str) -> bool:
        """Whether a param-store site is this program's: touched by its trace, or created
        during this fit (lazily); sites other programs left in the global store are not."""
        return name in self.param_names or name not in self.store_before

    def store_params(self) -> dict[str, torch.Tensor]:
        """The program's param-store sites (unconstrained values), by name."""
        store = pyro.get_param_store()
        return {n: store._params[n] for n in sorted(store.keys()) if self.owns(n)}

    # ------------------------------------------------------------------ for hooks
    def untimed(self) -> Untimed:
        """``with run.untimed():`` work that is not training (excluded from ``seconds``)."""
        return Untimed(self)

    def clock(self) -> None:
        self.history.seconds = time.perf_counter() - self.start
        self.history.compile_seconds = self.compiled_before + getattr(
            self.loss_fn, "compile_seconds", 0.0
        )

    def parameters(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by name (the module's state and, for a user's program, its
        param-store sites), for snapshots such as early stopping's best epoch."""
        out = {}
        if self.program.module is not None:
            out.update({f"module/{k}": v for k, v in self.program.module.state_dict().items()})
        if not self.program.is_ppvae:
            out.update({f"store/{n}": v for n, v in self.store_params().items()})
        return out

    def load_parameters(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a :meth:`parameters` snapshot back in place."""
        current = self.parameters()
        with torch.no_grad():
            for key, value in state.items():
                current[key].copy_(value)

    def current_lr(self) -> float:
        opt = None if self.stepper is None else self.stepper.optimizer
        return float(opt.param_groups[0]["lr"]) if opt is not None else self.config.lr

    def rng_state(self) -> dict:
        return rng_state(self.gen)

    def checkpoint_payload(self, ranks_rng=None) -> dict:
        """Everything an exact resume needs, as tensors and plain values."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": FORMAT_VERSION,
            **model_state(self.program, self.store_params()),
            "optimizer": self.stepper.state_dict(),
            "rng": rng_state(self.gen),
            "rank_rng": ranks_rng,
            "stream_rng": None if self.stream is None else self.stream.gen.get_state(),
            "progress": {
                "epoch": self.epoch,
                "step": self.step,
                "perm": None if self.perm is None else self.perm.cpu(),
                "partial": self.partial,
            },
            "history": self.history.to_dict(),
            "fit_config": {**self.fit_config, "epochs": self.config.epochs},
            "hooks": [h.state_dict() if hasattr(h, "state_dict") else {} for h in self.user_hooks],
            "metadata": self.metadata,
        }

    # ------------------------------------------------------------------ training
    def _minibatch(self, rows, b: int):
        n_rows = self.n if rows is None else len(rows)
        if self.world > 1:  # this rank's share of the global minibatch
            rows = (
                torch.arange(self.rank, self.n, self.world, device=self._rows_device())
                if rows is None
                else rows[self.rank :: self.world]
            )
        mask = None
        if self.stream is not None:
            xb = self.stream.batch(rows, b).to(self.device, non_blocking=True)
            if self.masked:  # known only as each batch is read
                xb, mask = split_missing(xb)
        else:
            # index_select: the same rows as train[rows], in half the time of advanced
            # indexing for a (100, 784) minibatch (0.1 of 0.2 ms per step)
            xb = self.train if rows is None else self.train.index_select(0, rows)
            if self.observed is not None:
                mask = self.observed if rows is None else self.observed.index_select(0, rows)
        if self.config.binarize == "dynamic":
            # Uniforms for the whole global minibatch on every rank, this rank's rows
            # kept: the binarization is the single-process one, and the shared
            # generator (it also shuffles) advances alike on all ranks.
            u = torch.rand((n_rows, xb.shape[1]), generator=self.gen, device=self.device)
            xb = (u[self.rank :: self.world] < xb).to(xb.dtype)
        extra = {}
        if self.labels is not None:
            extra["y"] = self.labels if rows is None else self.labels[rows]
        return xb, mask, n_rows, extra

    def _rows_device(self):
        return "cpu" if self.stream is not None else self.device

    def run_epoch(self, sigint) -> None:
        """One pass over the training data from the current position (NumPyro's ``run`` is
        a loop of these; each step is :meth:`GuardedStep.step`)."""
        epoch = self.epoch
        if self.perm is None and self.strata is not None:
            self.perm = stratified_permutation(
                *self.strata, self.batch_size, self.config.labelled_per_batch,
                self.stream.gen if self.stream else self.gen,
            )  # fmt: skip
        elif self.perm is None and self.n_batches > 1:
            self.perm = torch.randperm(
                self.n,
                device=self._rows_device(),
                generator=self.stream.gen if self.stream else self.gen,
            )
        self.latent_scale.factor = self.config.kl_factor(epoch)
        if isinstance(self.loss_fn, _TraceKeyed):  # a compiled trace bakes the weight in
            self.loss_fn.trace_key = self.latent_scale.factor
        # minus the epoch's summed minibatch ELBOs, kept on the device (read once per epoch)
        epoch_loss = torch.tensor(self.partial, dtype=torch.float64, device=self.device)
        bs = self.batch_size
        for b in range(self.step, self.n_batches):
            if sigint.raised:
                self.partial = float(epoch_loss)
                self.clock()
                _call(self.hooks, "on_interrupt", self)
                where = f"epoch {epoch + 1}, step {b + 1} of {self.n_batches}"
                raise TrainingInterrupted(f"interrupted at {where}{self._saved_note()}")
            rows = None if self.perm is None else self.perm[b * bs : (b + 1) * bs]
            xb, mask, n_rows, extra = self._minibatch(rows, b)
            args = (xb,) if mask is None else (xb, mask)  # the mask is positional: see bind
            try:
                share = self.world * xb.shape[0] / n_rows
                loss = self.stepper.step(*args, num_data=self.n, share=share, **extra)
            except FloatingPointError as exc:
                raise FloatingPointError(
                    f"{exc} at epoch {epoch + 1}, step {b + 1}: training stopped"
                    f"{self._kept_note()}. Usual remedies: a lower learning rate (lr), "
                    "gradient clipping (clip_norm), or checking the data for extreme values; "
                    "then resume"
                ) from None
            epoch_loss += loss
            self.step = b + 1
            self.history.steps += 1
        if self.world > 1:  # each rank's loss estimates the same full-data loss: average them
            torch.distributed.all_reduce(epoch_loss)
            epoch_loss /= self.world
        self.history.train_elbo.append(-float(epoch_loss) / (self.n_batches * self.n))
        self.epoch, self.step, self.perm, self.partial = epoch + 1, 0, None, 0.0

    def _saved_path(self):
        for hook in self.hooks:
            if isinstance(hook, Checkpoint) and hook.path is not None:
                return hook.path
        return None

    def _saved_note(self) -> str:
        path = self._saved_path()
        return f"; checkpoint saved to {path}" if path is not None and self.rank == 0 else ""

    def _kept_note(self) -> str:
        path = self._saved_path()
        if path is None or not path.exists():
            return ""
        return f"; the last good checkpoint {path} (epoch {self.epoch}) is kept"


def fit(
    program,
    train,
    data=None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float | None = None,
    seed: int = 0,
    test=None,
    elbo: ELBO | str | None = None,
    num_particles: int = 1,
    betas: tuple[float, float] | None = None,
    lr_decay: float | None = None,
    decay_start: float | None = None,
    device: str | torch.device = "cpu",
    binarize: str | None = None,
    clip_norm: float | None = None,
    kl_weight: float = 1.0,
    kl_warmup_epochs: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    metadata: dict | None = None,
    progress: bool | None = None,
    labels: torch.Tensor | None = None,
    labelled_per_batch: int | None = None,
    validate: bool | None = None,
    hooks=(),
    config: TrainConfig | None = None,
    mask: torch.Tensor | None = None,
) -> History:
    """Train a Pyro program by stochastic variational inference.

    ``fit(program, train)`` trains a module with Pyro ``model``/``guide`` methods (a VAE, an
    autoencoder, any user's ``nn.Module``) in place; ``fit(model, guide, train)`` trains two
    plain functions whose parameters live in Pyro's param store, as ``pyro.infer.SVI`` does.
    The one contract is a plate named ``"data"`` holding the per-point sites
    (:mod:`ppvae.program`).

    Parameters
    ----------
    program : program, or the model function
        A VAE or any ``nn.Module`` with Pyro ``model(x, ...)``/``guide(x, ...)`` methods, or a
        ``(model, guide)`` tuple; or the model function, with the guide as the next argument.
    train : array-like of shape (N, D), or torch.utils.data.Dataset / DataLoader
        Training data: in memory (moved to ``device`` once and indexed in place), or streamed
        batch by batch from a dataset (e.g. :class:`~ppvae.MemmapDataset`) in the same seeded
        order. NaN entries are missing values: a program that can marginalize them (its
        model and guide take ``mask``, as ppvae's VAE and LinearVAE do; see
        :mod:`ppvae.program`) is trained on the observed entries only, any other refuses them.
    epochs : int
        Passes over the training data (in total, counting those of a resumed run).
    batch_size : int
        Minibatch size B; a batch size >= N gives full-batch steps.
    lr : float, optional
        Adam learning rate (default: the model's ``training_defaults``; 1e-3 for a VAE).
    seed : int
        Seeds Pyro, torch, NumPy and Python RNGs and the shuffling.
    test : array-like, shape (M, D), optional
        Held-out data whose ELBO is recorded after every epoch.
    elbo : pyro.infer.ELBO or {"auto", "trace", "meanfield", "jit", "jit-meanfield"}, optional
        The ELBO estimator (default: the model's ``training_defaults``, ``"auto"`` for a VAE
        and a LinearVAE). ``"auto"`` is ``TraceMeanField_ELBO`` (analytic KL) when
        ``vae.prior.analytic_kl`` and ``Trace_ELBO`` otherwise; for a VAE built only from
        ppvae's own parts (static structure) the analytic-KL estimator is compiled by
        ``torch.jit.trace``, once per minibatch shape and KL weight
        (:class:`CachedJitTraceMeanField_ELBO`): the same objective and, seed for seed, the
        same noise, at 10-40% less time per step; a program that cannot be traced falls
        back to the eager estimator with a ``RuntimeWarning``. ``"jit"`` and
        ``"jit-meanfield"`` compile any program (its structure must be static).
    num_particles : int
        Samples per data point of an ELBO estimator given by name.
    betas : (float, float), optional
        Adam's moment decay rates (default: the model's ``training_defaults``).
    lr_decay : float, optional
        Final learning rate as a fraction of ``lr``; the rate decays exponentially, step by
        step, over the run (default: the model's ``training_defaults``; 1.0, constant, for a
        VAE).
    decay_start : float, optional
        Fraction of the run with a constant learning rate before the decay begins (default:
        the model's ``training_defaults``).
    device : str
        ``"cpu"`` or ``"cuda"``; the model and data are moved there.
    binarize : {None, "dynamic"}
        ``"dynamic"`` resamples binary training data x ~ Bernoulli(train) at every step
        (``train`` then holds intensities in [0, 1]).
    clip_norm : float, optional
        Clip the global 2-norm of the gradients to this value before each step.
    kl_weight : float
        beta: the program's local latent sites (``"z"`` for a VAE) are scaled by it in model
        and guide, so the objective is E[log p(x|z)] - beta KL (beta-VAE). With a weight
        other than 1, ``History.train_elbo`` reports that weighted objective;
        ``History.test_elbo`` is always the true ELBO.
    kl_warmup_epochs : int
        KL annealing: the weight rises linearly, epoch by epoch, from kl_weight / W to
        kl_weight over the first W epochs.
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` there, atomically, after every epoch (and on Ctrl-C): model,
        optimizer and every RNG state, progress, history and the full configuration.
    hooks : sequence of Hook, optional
        Called by the loop around training (:mod:`ppvae.train.hooks`):
        :class:`~ppvae.train.hooks.EarlyStopping` on a validation split,
        :class:`~ppvae.train.hooks.TensorBoard`, or your own.
    config : TrainConfig, optional
        Settings as one object (:class:`~ppvae.train.config.TrainConfig`); keywords given
        here override it.
    mask : bool tensor of shape (N, D), optional
        True where ``train`` is observed: the same as NaN at the False entries (in-memory data
        only; a streamed dataset marks its missing entries with NaN).
    resume : bool
        Continue from ``checkpoint_dir/checkpoint.pt``. The model, data and settings must be
        those of the interrupted run; the result is then identical to an uninterrupted run.
    overwrite : bool
        Start afresh in a ``checkpoint_dir`` that already holds a checkpoint, replacing it;
        without it (and without ``resume``) such a folder is refused, so that no run is
        overwritten without being asked.
    metadata : dict, optional
        JSON-able extras stored in the checkpoint (the CLI stores its arguments).
    progress : bool, optional
        Show a progress bar (default: when writing to a terminal).
    labels : tensor of shape (N,), optional
        Integer labels passed to model and guide as ``y`` (the stacked autoencoder's
        classifier, the conditional and semi-supervised VAEs); ``-1`` marks an unlabelled row.
    labelled_per_batch : int, optional
        Put this many labelled rows in every minibatch (cycling through the labelled set),
        the rest unlabelled; an epoch is one pass over the unlabelled rows. The loss sums the
        estimator on the two parts, each scaled by its own set's size, so it stays an
        unbiased estimate of the same objective (:mod:`ppvae.train.labelled`). For few labels
        among many rows (M2 with 100 labels); needs labelled and unlabelled rows, one process,
        an eager estimator and no latent sites outside the data plate.
    validate : bool, optional
        Pyro's per-site validation inside the loop (default: :data:`VALIDATE_STEPS`, off).
        A compiled estimator (``elbo="auto"`` on a ppvae VAE, ``"jit"``, ``"jit-meanfield"``)
        validates only the eager pass it makes when it compiles a trace; pass
        ``elbo="meanfield"`` or ``"trace"`` to validate every step.

    Returns
    -------
    History
        ELBOs per epoch in nats per sample, and the resolved settings (``History.config``).

    Notes
    -----
    ppvae's own programs are trained in a fresh scope of Pyro's param store (their parameters
    are their modules'), so several can be trained in one process without colliding. A user's
    program is trained in the global param store, exactly as ``pyro.infer.SVI`` would: its
    ``pyro.param`` sites persist after ``fit``; call ``pyro.clear_param_store()`` between
    unrelated programs that share site names.

    Raises
    ------
    FloatingPointError
        A non-finite loss or gradient; the parameters stay at their last finite values and
        the checkpoint of the last completed epoch is kept.
    TrainingInterrupted
        Ctrl-C; a checkpoint of the exact position is written first when ``checkpoint_dir``
        is set.
    """
    prog, train = _program_and_data(program, train, data)
    settings = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, elbo=elbo,
        num_particles=num_particles, betas=betas, lr_decay=lr_decay, decay_start=decay_start,
        device=device, binarize=binarize, clip_norm=clip_norm, kl_weight=kl_weight,
        kl_warmup_epochs=kl_warmup_epochs, progress=progress, validate=validate,
        labelled_per_batch=labelled_per_batch,
    )  # fmt: skip
    if config is not None:  # keywords left at their defaults do not override the object
        settings = {k: v for k, v in settings.items() if v != _KEYWORD_DEFAULTS[k]}
    cfg = TrainConfig.resolve(prog, config, **settings)
    ckpt_path = checkpoint_path(checkpoint_dir, resume, overwrite)
    hooks = _checked_hooks(hooks)
    _check_metadata(metadata, checkpoint_dir)
    run = _new_run(prog, cfg, train, labels, test, ckpt_path, metadata, mask)
    payload = read_training_checkpoint(ckpt_path) if resume else None
    _start(run, payload, ckpt_path)
    scope = pyro.get_param_store().scope() if prog.is_ppvae else contextlib.nullcontext()
    with scope, SigintFlag() as sigint, _ReleaseParams(prog):
        info = _trace_and_check(run, payload, ckpt_path)
        run.stepper = _make_stepper(run, info, payload)
        run.user_hooks = hooks
        run.hooks = [
            *([TestELBO(test)] if test is not None else []),
            *run.user_hooks,
            Checkpoint(ckpt_path),
            ProgressBar(cfg.progress),
        ]
        if payload is not None:
            for hook, state in zip(run.user_hooks, payload.get("hooks") or [], strict=False):
                if hasattr(hook, "load_state_dict"):
                    hook.load_state_dict(state)
        run.start = time.perf_counter() - run.history.seconds
        run.compiled_before = run.history.compile_seconds  # of the run this one resumes
        _call(run.hooks, "on_fit_start", run)
        if prog.module is not None:  # trained from here: a later fit continues from them
            keep_parameters(prog.module)
        try:
            while run.epoch < cfg.epochs and not run.stop:
                run.run_epoch(sigint)
                run.clock()
                _call(run.hooks, "on_epoch_end", run)
        finally:
            _call(run.hooks, "on_fit_end", run)
        run.clock()
    if run.world > 1:  # rank 0's last checkpoint is on disk before any rank goes on (to a resume)
        torch.distributed.barrier()
    return run.history


_HOOK_METHODS = ("on_fit_start", "on_epoch_end", "on_interrupt", "on_fit_end")


def _checked_hooks(hooks) -> list:
    """``hooks`` as a list, each one an object with at least one of the hook methods."""
    if isinstance(hooks, (str, bytes)) or not hasattr(hooks, "__iter__"):
        raise InputError(f"hooks must be a sequence of Hook objects, got {type(hooks).__name__}")
    hooks = list(hooks)
    for hook in hooks:
        if not any(callable(getattr(hook, m, None)) for m in _HOOK_METHODS):
            raise InputError(
                f"hooks: {hook!r} has none of the hook methods ({', '.join(_HOOK_METHODS)})"
            )
    return hooks


def _check_metadata(metadata, checkpoint_dir) -> None:
    """Refuse metadata that the checkpoint could not store as JSON, before any step."""
    if metadata is None:
        return
    if checkpoint_dir is None:
        raise InputError("metadata is stored in the checkpoint: it needs checkpoint_dir")
    if not isinstance(metadata, dict):
        raise InputError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as e:
        raise InputError(f"metadata must be JSON-able (str, numbers, lists, dicts): {e}") from None


def _new_run(
    prog: Program, cfg: TrainConfig, train, labels, test, ckpt_path, metadata, mask=None
) -> Run:
    """Validate the data against the program and set up a run at its start (no RNG drawn)."""
    dev = resolve_device(cfg.device)
    data_dim = getattr(prog.module, "data_dim", None) if prog.is_ppvae else None
    observed = None
    if isinstance(train, (Dataset, DataLoader)):
        if mask is not None:
            raise InputError(
                "mask: given for a streamed dataset; mark its missing entries with NaN instead"
            )
        train = Stream(train)
        train.data_dim = data_dim
        train.allow_nan = prog.takes_mask
        n = len(train)
    else:
        train = check_data(
            train, name="train", data_dim=data_dim, dtype=torch.float32, allow_nan=True
        )
        train, observed = _observed_entries(prog, missing_as_nan(train, mask), "train")
        n = train.shape[0]
    labels = _check_labels(labels, n, test, prog)
    loss_fn = make_elbo(cfg.elbo, cfg.num_particles, prog)
    if isinstance(loss_fn, _TraceKeyed):  # traces of an earlier fit read another param store
        loss_fn.reset()
    bs = _batch_size(cfg.batch_size, n, distributed_world()[0])
    strata = _strata(cfg.labelled_per_batch, labels, bs, loss_fn)
    run = Run(prog, cfg, loss_fn, train, n, bs, dev)
    if strata is not None:
        run.strata = tuple(rows.to(run._rows_device()) for rows in strata)
        run.n_batches = stratified_batches(len(strata[1]), bs, cfg.labelled_per_batch)
    run.elbo_fn = held_out_elbo(loss_fn, prog)
    run.labels = labels
    run.observed = observed
    run.masked = observed is not None or (run.stream is not None and prog.takes_mask)
    run.fit_config = cfg.record(bs)
    run.metadata = metadata or {}
    if ckpt_path is not None:  # a float64 pass over the data: only where a checkpoint needs it
        run.fit_config["data"] = train.fingerprint() if run.stream else fingerprint(train)
        if observed is not None:
            run.fit_config["observed"] = fingerprint(observed)
        if labels is not None:
            run.fit_config["labels"] = fingerprint(labels[:, None])
    if run.stream is not None and dev.type == "cpu":
        # One generator shuffles and binarizes, in the same order as for an in-memory tensor:
        # a streamed run then equals the in-memory one bit for bit. (On CUDA the permutation
        # of host rows is drawn on the CPU, and the in-memory one on the device.)
        run.stream.gen = run.gen
    return run


def _observed_entries(prog: Program, X: torch.Tensor, name: str):
    """``(x, mask)`` of :func:`~ppvae.data.split_missing`, after checking that the program can
    marginalize the missing entries and that no row is missing entirely."""
    # counted block by block: a whole-matrix isnan peaked at 180 MiB above MNIST's data
    n_missing = sum(int(torch.isnan(block).sum()) for block in row_blocks(X))
    if n_missing == 0:
        return X, None
    missing = torch.isnan(X)
    prog.require_mask(name, n_missing)
    check_missing(~missing, name)
    return split_missing(X)


def _start(run: Run, payload: dict | None, ckpt_path) -> None:
    """Seed a new run, or restore a checkpoint's weights, history, position and random
    states; then move the program and the data to the device."""
    prog, cfg = run.program, run.config
    if payload is not None:
        check_resumable(payload, prog, run.fit_config, cfg.epochs, ckpt_path)
        if prog.module is not None:
            load_weights(prog.module, payload["state_dict"], ckpt_path)
        run.history = History(**payload["history"])
        progress_state = payload["progress"]
        run.epoch, run.step = progress_state["epoch"], progress_state["step"]
        run.perm, run.partial = progress_state["perm"], progress_state["partial"]
    else:
        if prog.module is not None:  # initial weights from the seed, not from the build
            seed_parameters(prog.module, cfg.seed)
        pyro.set_rng_seed(cfg.seed + run.rank)  # per-rank guide noise; the shuffling is shared
        run.gen.manual_seed(cfg.seed)
        if run.stream is not None:
            run.stream.gen.manual_seed(cfg.seed)
    if prog.module is not None:
        prog.module.to(run.device)
    if run.stream is None:
        run.train = run.train.to(run.device)
    if run.observed is not None:
        run.observed = run.observed.to(run.device)
    if run.labels is not None:
        run.labels = run.labels.to(run.device)
    if payload is not None:
        restore_rng(run, payload)
    run.history.config = {
        **{k: v for k, v in run.fit_config.items() if k not in ("data", "labels")},
        "elbo": estimator_ran(run.loss_fn),
        "elbo_requested": run.fit_config.get("elbo"),
        "epochs": cfg.epochs,
        "device": str(run.device),
    }


def _trace_and_check(run: Run, payload: dict | None, ckpt_path):
    """Trace the program on two rows (creating lazy parameters), check the training data's
    support against it, and restore a resumed user program's param-store sites."""
    prog, train = run.program, run.train
    rows = min(run.n, run.batch_size)  # what a step calls the program on
    head = train.head(rows) if run.stream else train
    run.store_before = set(pyro.get_param_store().keys())
    head, head_mask = split_missing(head) if run.stream else (head, None)
    if run.observed is not None:
        head_mask = run.observed
    kwargs = _label_kwargs(run.labels, len(head))  # a streamed head holds `rows` rows
    if head_mask is not None:
        kwargs["mask"] = head_mask.to(run.device)
    info = inspect_rows(prog, head.to(run.device), rows, **kwargs)
    if head_mask is not None:
        some = head.to(run.device)[:rows]
        check_mask_contract(prog, some, kwargs["mask"][:rows], **_label_kwargs(run.labels, rows))
    problem = plate_problem(info, rows, "fit")
    if problem is not None:
        if info.plate_size == run.n and rows < run.n:
            problem += f", or train with batch_size={run.n} (all rows in every step)"
        raise ProgramError(problem)
    last = run.n % run.batch_size
    if info.subsamples and 0 < last < info.subsample_size and run.stream is None:
        try:  # Pyro's own plate refuses a subsample larger than the rows it is given
            inspect_program(
                prog, head[:last].to(run.device), **head_kwargs(kwargs, last, len(head))
            )
        except ProgramError:
            raise ProgramError(
                f"the last minibatch ({run.n} rows, batch_size {run.batch_size}) holds {last} "
                f"rows, fewer than the {info.subsample_size} that the plate "
                f"{prog.data_plate!r} subsamples: choose a batch_size that leaves no remainder "
                f"or use subsample_size=min({info.subsample_size}, len(x))"
            ) from None
    run.param_names = info.param_names
    run.per_point_elbo = bool(info.global_latents) or info.subsamples
    run.rows_per_call = info.subsample_size if info.subsamples else None
    _choose_for_discrete(run, info)
    run.data_dim = info.data_dim
    run.support_check = support_check(prog, info, run.config.binarize)
    if run.observed is not None:
        run.support_check = _observed_only(run.support_check, run.observed)
    if run.stream is None:  # block by block where no mask ties the check to x's shape
        whole = run.observed is not None
        (run.support_check if whole else blockwise(run.support_check))(train, "train")
    else:
        run.stream.data_dim, run.stream.check = info.data_dim, run.support_check
    if payload is not None and payload.get("param_store") and not prog.is_ppvae:
        load_param_store(payload["param_store"], ckpt_path)
    return info


def _choose_for_discrete(run: Run, info) -> None:
    """Sites marked for enumeration are summed out by ``TraceEnum_ELBO`` (in training and in
    the held-out ELBO); other discrete latents train with Pyro's score-function estimator,
    with a warning naming them."""
    if info.enumerated or info.guide_enumerated:
        requested = run.fit_config.get("elbo")
        run.loss_fn = enumerating_elbo(run.loss_fn, requested, info, run.config.num_particles)
        run.elbo_fn = run.loss_fn
        run.per_point_elbo = False  # the estimator sums the marked sites out, chunk by chunk
        run.history.config["elbo"] = estimator_ran(run.loss_fn)
        return
    drawn = [name for name in info.discrete_latents if name in info.local_latents]
    if drawn and run.rank == 0:
        warnings.warn(
            f"the latent site {drawn[0]!r} is discrete and not marked for enumeration: it is "
            "drawn and trained by the score-function estimator (high-variance gradients); "
            "mark it infer={'enumerate': 'parallel'} to sum it out exactly",
            RuntimeWarning,
            stacklevel=4,
        )


def _make_stepper(run: Run, info, payload: dict | None) -> GuardedStep:
    """The guarded step on the program bound to N rows, KL-weighted where asked."""
    cfg = run.config
    weighted = cfg.kl_weight != 1.0 or cfg.kl_warmup_epochs > 0
    if weighted:
        run.latent_scale = LatentScale(*info.local_latents)

    def bound(n: int) -> tuple:
        model, guide = run.program.bind(n, masked=run.masked)
        if weighted:
            model, guide = run.latent_scale(model), run.latent_scale(guide)
        return model, guide

    model, guide = bound(run.n)
    loss = run.loss_fn
    if run.strata is not None:  # (a compiled estimator was refused by _strata already)
        if info.global_latents:
            raise InputError(
                f"labelled_per_batch: the latent site {info.global_latents[0]!r} lies outside "
                "the data plate (it would be counted once per part)"
            )
        if info.subsamples:
            raise InputError(
                f"labelled_per_batch: the program subsamples inside its plate "
                f"{run.program.data_plate!r}, which would draw from each part, not from the rows "
                "fit chose; let fit choose the minibatch (a plate over len(x))"
            )
        loss = StratifiedLabelledLoss(
            loss, (*bound(len(run.strata[0])), len(run.strata[0])),
            (*bound(len(run.strata[1])), len(run.strata[1])),
        )  # fmt: skip
    total_steps = max(1, cfg.epochs * run.n_batches)
    schedule = (
        None if cfg.lr_decay == 1.0 else HoldThenDecay(total_steps, cfg.lr_decay, cfg.decay_start)
    )
    stepper = GuardedStep(
        run.program,
        model,
        guide,
        loss,
        lr=cfg.lr,
        betas=cfg.betas,
        schedule=schedule,
        clip_norm=cfg.clip_norm,
        validate=_step.VALIDATE_STEPS if cfg.validate is None else cfg.validate,
    )
    stepper.owns = run.owns
    if payload is not None:
        stepper.pending_state = payload["optimizer"]
        stepper.new_lr = payload["fit_config"].get("lr") != cfg.lr
    return stepper


_KEYWORD_DEFAULTS = {
    p.name: p.default
    for p in inspect.signature(fit).parameters.values()
    if p.name in {f.name for f in dataclasses.fields(TrainConfig)}
}
"""fit's own defaults of the settings (read from its signature, so they cannot drift): a
keyword left at its default does not override a ``config=`` object."""


def _observed_only(check, observed: torch.Tensor):
    """The support check of the training data applied to its observed entries: the zeros at
    the missing ones are placeholders (replaced, for the check, by an observed value)."""

    def checked(x: torch.Tensor, what: str) -> None:
        if what == "train" and x.shape == observed.shape:
            fill = x[observed][:1].to(x.dtype)
            x = torch.where(observed.to(x.device), x, fill.to(x.device))
        check(x, what)

    return checked


def _check_labels(labels, n: int, test, prog: Program):
    if labels is None:
        return None
    refusing = [
        w for w, fn in (("model", prog.model), ("guide", prog.guide)) if not _accepts(fn, "y")
    ]
    if refusing:
        raise InputError(
            f"labels are passed to model and guide as y, but the {' and '.join(refusing)} of "
            f"{prog.name} take no y argument"
        )
    labels = torch.as_tensor(labels)
    if labels.shape != (n,) or labels.dtype not in (torch.int64, torch.int32):
        raise InputError(
            f"labels must be integers of shape ({n},), got "
            f"{labels.dtype} of shape {tuple(labels.shape)}"
        )
    n_classes = getattr(prog.module, "n_classes", None)
    low, high = (int(labels.min()), int(labels.max())) if n else (0, 0)
    if low < UNLABELLED or (n_classes is not None and high >= n_classes):
        bound = "" if n_classes is None else f" and below n_classes={n_classes}"
        raise InputError(
            f"labels must be class indices from 0{bound}, or {UNLABELLED} for an unlabelled "
            f"row; found {low}..{high}"
        )
    if test is not None:
        raise InputError("test ELBOs are not computed for a labelled fit; pass test=None")
    return labels.long()


def _strata(per_batch: int | None, labels, batch_size: int, loss_fn):
    """(labelled rows, unlabelled rows) for ``labelled_per_batch``, validated; else None."""
    if per_batch is None:
        return None
    if labels is None:
        raise InputError("labelled_per_batch: given without labels")
    known = labels >= 0
    n_known = int(known.sum())
    if n_known == 0 or n_known == len(labels):
        raise InputError(
            f"labelled_per_batch: needs labelled and unlabelled rows; labels has {n_known} "
            f"labelled of {len(labels)}"
        )
    if per_batch >= batch_size:
        raise InputError(
            f"labelled_per_batch ({per_batch}) must be smaller than batch_size ({batch_size}), "
            "to leave room for unlabelled rows"
        )
    if distributed_world()[0] > 1:
        raise InputError("labelled_per_batch: not with distributed training (one process only)")
    if isinstance(loss_fn, _TraceKeyed):
        raise InputError(
            "labelled_per_batch: a compiled estimator traces one minibatch shape; pass "
            "elbo='trace' or 'meanfield'"
        )
    return known.nonzero().squeeze(-1), (~known).nonzero().squeeze(-1)


def _label_kwargs(labels, rows: int) -> dict:
    return {} if labels is None else {"y": labels[:rows].to(labels.device)}


def _batch_size(batch_size: int, n: int, world: int) -> int:
    bs = min(int(batch_size), n)
    if bs < world:
        raise InputError(f"batch_size {bs} is smaller than the {world} processes sharing it")
    if 0 < n % bs < world:
        left = n % bs
        raise InputError(
            f"the last minibatch ({n} rows, batch_size {bs}) holds {left} "
            f"row{'' if left == 1 else 's'}, fewer than the {world} processes sharing it; "
            f"choose a batch_size that leaves no remainder or one of at least {world}"
        )
    return bs


class _ReleaseParams:
    """On entering and leaving ``fit``, let a ppvae program register its parameters with
    Pyro again (``params_held``; see ``ppvae.vae.register_module``)."""

    def __init__(self, program: Program):
        self.module = program.module if program.is_ppvae else None

    def __enter__(self):
        if self.module is not None:
            self.module.params_held = False
        return self

    def __exit__(self, *exc):
        if self.module is not None:
            self.module.params_held = False


def pretrain(
    stack: StackedAutoencoder,
    train: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> list[History]:
    """Greedy layer-wise pretraining of a :class:`~ppvae.autoencoders.StackedAutoencoder`.

    Layer l is trained by :func:`fit` as the autoencoder
    :meth:`~ppvae.autoencoders.StackedAutoencoder.layer_program` ``(l)`` on the features of the
    layers below, which stay frozen (they are neither registered with Pyro nor differentiated).

    Returns
    -------
    list of History
        One per layer, bottom first.
    """
    stack.to(resolve_device(device))
    return [
        fit(
            stack.layer_program(depth),
            train,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed + depth,
            device=device,
            progress=progress,
        )
        for depth in range(len(stack.layers))
    ]


def finetune(
    stack: StackedAutoencoder,
    train: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> History:
    """Supervised fine-tuning of the whole stack and its softmax head.

    Maximizes ``sum_i log p(y_i | x_i)`` (the :class:`~ppvae.autoencoders.StackedClassifier`
    program); ``History.train_elbo`` is then minus the cross-entropy in nats per example.
    """
    labels = torch.as_tensor(labels)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= stack.n_classes):
        raise InputError(
            f"labels must lie in [0, {stack.n_classes}), found "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    return fit(
        stack.classifier_program(),
        train,
        labels=labels,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
    )
