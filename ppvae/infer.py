"""Training by stochastic variational inference, with resumable checkpoints.

:func:`fit` steps Pyro's ELBO estimators (``Trace_ELBO``, or ``TraceMeanField_ELBO`` where the
prior's KL has a closed form) over shuffled minibatches with one torch Adam optimizer.
Each step's loss is the negative minibatch ELBO scaled to the whole training set, so the
history reports ``-loss / N``: the ELBO in nats per sample.

Training happens inside a fresh scope of Pyro's global parameter store, so several models can
be trained in one process without their parameters colliding; the trained values live in the
model's own ``nn.Parameter`` tensors afterwards.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer import (
    ELBO,
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)
from pyro.poutine.messenger import Messenger
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .autoencoders import StackedAutoencoder
from .checkpoints import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    _model_entry,
    atomic_torch_save,
    load_weights,
    read_training_checkpoint,
    rng_state,
    set_rng_state,
)
from .data import check_data
from .errors import InputError, WrongTypeError
from .vae import VAE, LinearVAE

__all__ = [
    "ELBOS",
    "CachedJitTraceMeanField_ELBO",
    "CachedJitTrace_ELBO",
    "History",
    "LatentScale",
    "TrainingInterrupted",
    "distributed_world",
    "finetune",
    "fit",
    "pretrain",
    "resolve_device",
]


class _JitTraceMeanFieldOnce(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` that compiles once.

    In pyro-ppl 1.9.2 the parent stores its compiled loss under ``_differentiable_loss`` but
    tests ``_loss_and_surrogate_loss`` before building it, so it re-traces on every call (4-6x
    slower than no JIT). Setting the attribute it tests makes it reuse the compiled loss.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self._loss_and_surrogate_loss = self._differentiable_loss
        return loss


def _warm_backward(loss: torch.Tensor) -> None:
    """Run the backward graph of ``loss`` without touching any ``.grad``."""
    store = pyro.get_param_store()
    params = [store[name].unconstrained() for name in store.keys()]
    params = [p for p in params if p.requires_grad]
    if loss.requires_grad and params:
        torch.autograd.grad(loss, params, allow_unused=True)


def _identity(fn) -> tuple:
    """A key for a callable that is stable across ``vae.model`` look-ups (bound methods are
    new objects on every attribute access)."""
    if isinstance(fn, types.MethodType):
        return (id(fn.__self__), fn.__func__)
    return (id(fn), None)


class _TraceKeyed:
    """One compiled ELBO per model, guide, tensor shapes and :attr:`trace_key`.

    Pyro's JIT ELBOs key their compiled traces on the non-tensor keyword arguments only, and
    bind the model and guide of their first call. A trace bakes in Python numbers: the N/B
    scale of a minibatch of B rows, and any weight a handler multiplies into a site's scale
    (:class:`LatentScale`: a beta or a KL warm-up step). So a shorter last minibatch, a new
    weight, or another model each get their own compiled instance here; the objective is the
    eager estimator's. :meth:`loss` stays eager (evaluation needs no gradient).

    Attributes
    ----------
    trace_key : hashable
        Whatever else a trace bakes in; :func:`fit` sets it to the KL weight of the epoch.
    fallback : bool
        If a new trace fails to compile, warn and run the eager estimator for that key (same
        objective) instead of raising. :func:`fit` sets it where it chose the JIT itself.
    """

    _jit_base: type
    trace_key = None
    fallback = False

    def __init__(self, *, ignore_jit_warnings: bool = True, **kwargs):
        super().__init__(ignore_jit_warnings=ignore_jit_warnings, **kwargs)
        self._init_kwargs = {"ignore_jit_warnings": ignore_jit_warnings, **kwargs}
        self._compiled: dict = {}
        self.compile_seconds = 0.0  # spent compiling, in total

    def differentiable_loss(self, model, guide, *args, **kwargs):
        shapes = tuple(
            (tuple(a.shape), a.dtype, a.device)
            for a in (*args, *kwargs.values())
            if isinstance(a, torch.Tensor)
        )
        options = tuple(
            (k, v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
            for k, v in sorted(kwargs.items())
            if not isinstance(v, torch.Tensor)
        )
        key = (_identity(model), _identity(guide), shapes, options, self.trace_key)
        entry = self._compiled.get(key)
        if entry is None:  # the references to model and guide keep the ids unique
            entry = self._compiled[key] = (self._compile(model, guide, args, kwargs), model, guide)
        compiled, model, guide = entry  # the objects the trace was keyed on
        if compiled is None:  # this key failed to compile; see ``fallback``
            return super().differentiable_loss(model, guide, *args, **kwargs)
        return compiled.differentiable_loss(model, guide, *args, **kwargs)

    def _compile(self, model, guide, args, kwargs):
        """A compiled instance for this key, or None where ``fallback`` allows failure."""
        compiled = self._jit_base(**self._init_kwargs)
        tic = time.perf_counter()
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        cuda = sorted({a.device.index or 0 for a in tensors if a.device.type == "cuda"})
        try:
            # Compiling runs the program twice; on forked RNG states, so that the compiled
            # call after it draws the same noise as an eager step would (seeded runs, resumes).
            with torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
                # torch 2.14 flags torch.jit.trace as deprecated
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.trace", category=FutureWarning
                )
                for _ in range(2):  # trace; then the executor profiles and optimizes
                    warm = compiled.differentiable_loss(model, guide, *args, **kwargs)
                    _warm_backward(warm)
        except Exception as exc:
            if not self.fallback:
                raise
            warnings.warn(
                f"{type(self).__name__}: the program could not be traced ({exc}); "
                "running the eager estimator instead (same objective)",
                RuntimeWarning,
                stacklevel=3,
            )
            compiled = None
        self.compile_seconds += time.perf_counter() - tic
        return compiled

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)

    def reset(self) -> None:
        """Forget every compiled trace. A trace reads its parameters from Pyro's param store
        by name, so it is bound to the store it was compiled in: :func:`fit` calls this as
        it opens a fresh store scope."""
        self._compiled.clear()
        self.compile_seconds = 0.0


class CachedJitTraceMeanField_ELBO(_TraceKeyed, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` (analytic KL), compiled with ``torch.jit.trace`` once per key.

    Pyro's ``JitTraceMeanField_ELBO`` re-traces on every step in pyro-ppl 1.9.2, and neither of
    Pyro's JIT ELBOs keys its traces on tensor shapes or on handler weights; see
    :class:`_TraceKeyed`. Same objective as ``TraceMeanField_ELBO``.
    """

    _jit_base = _JitTraceMeanFieldOnce


class CachedJitTrace_ELBO(_TraceKeyed, Trace_ELBO):
    """``Trace_ELBO`` compiled by Pyro's ``JitTrace_ELBO``, once per key (:class:`_TraceKeyed`)."""

    _jit_base = JitTrace_ELBO


ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "jit": CachedJitTrace_ELBO,
    "jit-meanfield": CachedJitTraceMeanField_ELBO,
}


@dataclass
class History:
    """What :func:`fit` measured, per epoch.

    Attributes
    ----------
    train_elbo : list of float
        Mean minibatch ELBO over each epoch, nats per sample.
    test_elbo : list of float
        ELBO of the test data after each epoch (one guide sample per point), nats per sample;
        empty when no test data were given.
    seconds : float
        Wall time of training (steps, checkpoints), excluding test evaluation.
    steps : int
        Number of SVI steps taken.
    compile_seconds : float
        Part of ``seconds`` spent compiling the program with ``torch.jit.trace`` (a JIT
        estimator compiles once per minibatch shape and KL weight); 0 for an eager one.
    config : dict
        The training settings as resolved (defaults filled in from the program), JSON-able.
    """

    train_elbo: list[float] = field(default_factory=list)
    test_elbo: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    compile_seconds: float = 0.0
    config: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.train_elbo)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse a device string; a clear ``ValueError`` if it is unknown or unavailable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


def _make_elbo(elbo: ELBO | str | None, num_particles: int, vae: VAE) -> ELBO:
    if elbo is None:
        return Trace_ELBO(num_particles=num_particles)
    if isinstance(elbo, ELBO):
        return elbo
    key = str(elbo).lower()
    if key == "auto":  # analytic KL only where the prior/guide pair has a closed form
        analytic = _analytic_kl(vae)
        if analytic and _known_static(vae):
            loss = CachedJitTraceMeanField_ELBO(num_particles=num_particles)
            loss.fallback = True
            return loss
        key = "meanfield" if analytic else "trace"
    if key not in ELBOS:
        raise InputError(f"unknown elbo {elbo!r}; choose one of auto, {', '.join(ELBOS)}")
    return ELBOS[key](num_particles=num_particles)


def _analytic_kl(vae) -> bool:
    """Whether KL(q(z | x) || p(z)) has a closed form for the program's prior."""
    return bool(getattr(getattr(vae, "prior", None), "analytic_kl", False))


def _known_static(vae) -> bool:
    """True for a VAE built only from ppvae's own parts, whose structure is static.

    Tracing records one pass through the program; Python branches on tensor values would be
    frozen into it. ppvae's priors, likelihoods and networks branch on shapes and options only,
    so ``elbo="auto"`` compiles such a VAE; anything user-defined runs eagerly unless a JIT
    estimator is asked for by name.
    """
    if type(vae) not in (VAE, LinearVAE) or getattr(vae, "_custom_nets", True):
        return False
    parts = (vae.prior, vae.likelihood, vae.encoder, vae.decoder)
    return all(type(p).__module__.startswith(("ppvae.", "torch.nn.")) for p in parts)


def _check_positive(**kwargs) -> None:
    for name, value in kwargs.items():
        if isinstance(value, bool) or not value > 0:
            raise InputError(f"{name} must be positive, got {value!r}")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT) after saving a checkpoint at a step boundary."""


VALIDATE_STEPS = False
"""Default of ``fit(validate=None)``: Pyro's per-site validation inside the training loop.

``fit`` validates the data once, up front (shape, finiteness, the likelihood's support), so
the per-step checks are redundant there and cost ~10% of a small step; the test suite turns
them back on by setting this to True.
"""


class _GuardedStep:
    """One guarded SVI step on ``loss.differentiable_loss``, one torch Adam over all parameters.

    The objective is Pyro's (the ELBO estimator's ``differentiable_loss`` of model and guide,
    what ``ELBOModule`` computes); what differs from ``pyro.infer.SVI`` is the plumbing: no
    parameter-capturing trace per step, one ``torch.optim.Adam`` (the fused kernel) instead of one
    optimizer per parameter, and one fused finiteness check (a single host sync) of the loss and
    all gradient norms. A non-finite value leaves the parameters and the optimizer untouched
    and raises ``FloatingPointError`` naming the first offending parameter.
    """

    def __init__(self, program, model, guide, loss, *, lr, betas, schedule, clip_norm, validate):
        self.program, self.model, self.guide, self.loss = program, model, guide, loss
        self.objective = None
        if distributed_world()[0] > 1:
            # Gradients are averaged over ranks during backward: each rank's loss is scaled
            # R x N / B (the plate's N / b_r times ``share``), so the average is the gradient
            # of the single-process loss on the union of the R shares of the minibatch.
            self.objective = torch.nn.parallel.DistributedDataParallel(
                _Objective(program, model, guide, loss), find_unused_parameters=True
            )
        self.lr, self.betas, self.schedule = lr, tuple(betas), schedule
        self.clip_norm, self.validate = clip_norm, bool(validate)
        self.params: list[torch.Tensor] | None = None
        self.names: dict[int, str] = {}
        self.optimizer = self.scheduler = None
        self.pending_state: dict | None = None
        self.new_lr = False  # set when a resumed run changes the learning rate

    def _build(self) -> None:
        """Parameters are known after the first call (Pyro may create some lazily)."""
        named = dict(self.program.named_parameters())
        for name, value in sorted(pyro.get_param_store().named_parameters()):
            named.setdefault(name, value)
        seen, params = set(), []
        for name, p in named.items():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
                self.names[id(p)] = name
        self.params = params
        # The fused kernel: one pass over all parameters, the default's update (one loop per
        # tensor on CPU) up to float rounding; 0.4 ms instead of 1.15 ms per step for the
        # 784-400-20 MLP. A checkpoint's optimizer state, if written unfused, keeps its flag.
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        self.optimizer = torch.optim.Adam(params, lr=self.lr, betas=self.betas, fused=fused)
        if self.schedule is not None:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        if self.pending_state is not None:
            self.load_state_dict(self.pending_state)
            self.pending_state = None
            if self.new_lr:  # resumed with another learning rate: the schedule restarts from it
                self._set_base_lr(self.lr)

    def _set_base_lr(self, lr: float) -> None:
        if self.scheduler is not None:
            self.scheduler.base_lrs = [lr for _ in self.optimizer.param_groups]
            factor = self.schedule(self.scheduler.last_epoch)
        else:
            factor = 1.0
        for group in self.optimizer.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * factor

    def step(self, *args, share: float = 1.0, **kwargs) -> torch.Tensor:
        """Loss (a 0-d tensor, minus the minibatch ELBO scaled to N) before the update.

        ``share``: world size x this rank's rows / the global minibatch's rows. The plate
        scales a rank's loss by N / (its rows); times ``share`` that is world x N / B, so the
        gradient averaged over ranks is the single-process gradient on the union even when
        the minibatch does not split evenly.
        """
        with pyro.validation_enabled(self.validate):
            if self.objective is not None:
                loss = self.objective(*args, **kwargs)
            else:
                loss = self.loss.differentiable_loss(self.model, self.guide, *args, **kwargs)
        if share != 1.0:
            loss = loss * share
        if self.params is None:
            self._build()
            if not isinstance(self.loss, _TraceKeyed):  # a new trace must see the registration
                self.program.params_held = True  # registered once; see vae.register_module
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        norms = torch.stack(torch._foreach_norm(grads)) if grads else loss.new_zeros(1)
        if not bool(torch.isfinite(loss.detach() + norms.sum())):  # the one host sync
            bad = f"loss {float(loss)}" if not torch.isfinite(loss) else "gradient"
            for p in self.params:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    bad = f"gradient of {self.names[id(p)]}"
                    break
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(f"non-finite {bad}")
        if self.clip_norm is not None and grads:  # clip_grad_norm_, reusing the norms above
            coef = (self.clip_norm / (torch.linalg.vector_norm(norms) + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, coef)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def state_dict(self) -> dict:
        if self.optimizer is None:
            return self.pending_state or {}
        return {
            "adam": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        try:
            self.optimizer.load_state_dict(state["adam"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"the checkpoint's optimizer state does not fit: {exc}") from None


class LatentScale(Messenger):
    """Multiply the log-density scale of the named latent sites by ``factor``.

    Applied to model and guide alike, it weights ``log p(z) - log q(z | x)`` (or the analytic
    KL) by ``factor``: the beta of a beta-VAE, or a KL warm-up coefficient.
    """

    def __init__(self, *names: str, factor: float = 1.0):
        super().__init__()
        self.names = set(names)
        self.factor = factor

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.names and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.factor


class _ReleaseParams:
    """On leaving ``fit``, let the program register its parameters with Pyro again."""

    def __init__(self, program):
        self.program = program

    def __enter__(self):
        self.program.params_held = False
        return self

    def __exit__(self, *exc):
        self.program.params_held = False


class _SigintFlag:
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


def _fingerprint(x: torch.Tensor) -> list[float]:
    """Cheap identity of a data matrix: shape, sum and sum of squares in float64."""
    x64 = x.detach().to(torch.float64)
    return [float(x.shape[0]), float(x.shape[1]), float(x64.sum()), float((x64 * x64).sum())]


def _same_fingerprint(a: list[float], b: list[float]) -> bool:
    return a[:2] == b[:2] and all(
        abs(u - v) <= 1e-9 * max(1.0, abs(u), abs(v)) for u, v in zip(a[2:], b[2:], strict=True)
    )


def fit(
    vae: VAE,
    train,
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
    validate: bool | None = None,
) -> History:
    """Train a VAE (or any ppvae Pyro program: an autoencoder, a classifier head) by SVI.

    Parameters
    ----------
    vae : VAE or another ppvae Pyro program
        The model (a VAE, an autoencoder, a layer-wise or classifier program); trained in
        place.
    train : array-like of shape (N, D), or torch.utils.data.Dataset / DataLoader
        Training data: in memory (moved to ``device`` once and indexed in place), or streamed
        batch by batch from a dataset (e.g. :class:`~ppvae.MemmapDataset`) in the same seeded
        order.
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
        beta: the latent site ``"z"`` is scaled by it in model and guide (``poutine.scale``
        on that site), so the objective is E[log p(x|z)] - beta KL (beta-VAE). With a weight
        other than 1, ``History.train_elbo`` reports that weighted objective;
        ``History.test_elbo`` is always the true ELBO.
    kl_warmup_epochs : int
        KL annealing: the weight rises linearly, epoch by epoch, from kl_weight / W to
        kl_weight over the first W epochs.
    checkpoint_dir : path, optional
        Write ``checkpoint.pt`` there, atomically, after every epoch (and on Ctrl-C): model,
        optimizer and every RNG state, progress, history and the full configuration.
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
        Integer labels passed to model and guide as ``y`` (the stacked autoencoder's classifier).
    validate : bool, optional
        Pyro's per-site validation inside the loop (default: :data:`VALIDATE_STEPS`, off).
        A compiled estimator (``elbo="auto"`` on a ppvae VAE, ``"jit"``, ``"jit-meanfield"``)
        validates only the eager pass it makes when it compiles a trace; pass
        ``elbo="meanfield"`` or ``"trace"`` to validate every step.

    Returns
    -------
    History
        ELBOs per epoch in nats per sample.

    Raises
    ------
    FloatingPointError
        A non-finite loss or gradient; the parameters stay at their last finite values and
        the checkpoint of the last completed epoch is kept.
    TrainingInterrupted
        Ctrl-C; a checkpoint of the exact position is written first when ``checkpoint_dir``
        is set.
    """
    _check_program(vae)
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise InputError(f"epochs must be a non-negative integer, got {epochs!r}")
    defaults = type(vae).training_defaults
    lr = defaults["lr"] if lr is None else lr
    betas = tuple(defaults["betas"] if betas is None else betas)
    lr_decay = defaults["lr_decay"] if lr_decay is None else lr_decay
    decay_start = defaults.get("decay_start", 0.0) if decay_start is None else decay_start
    if not 0.0 <= decay_start < 1.0:
        raise InputError(f"decay_start must lie in [0, 1), got {decay_start!r}")
    elbo = defaults["elbo"] if elbo is None else elbo
    _check_positive(batch_size=batch_size, lr=lr, num_particles=num_particles, lr_decay=lr_decay)
    if clip_norm is not None:
        _check_positive(clip_norm=clip_norm)
    if not (kl_weight >= 0 and math.isfinite(kl_weight)):
        raise InputError(f"kl_weight must be a finite number >= 0, got {kl_weight!r}")
    if (
        isinstance(kl_warmup_epochs, bool)
        or int(kl_warmup_epochs) != kl_warmup_epochs
        or (kl_warmup_epochs < 0)
    ):
        raise InputError(f"kl_warmup_epochs must be an integer >= 0, got {kl_warmup_epochs!r}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise InputError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if binarize not in (None, "dynamic"):
        raise InputError(f"binarize must be None or 'dynamic', got {binarize!r}")
    if resume and checkpoint_dir is None:
        raise InputError("resume=True needs checkpoint_dir")
    if resume and overwrite:
        raise InputError("resume=True and overwrite=True exclude each other")
    if (
        checkpoint_dir is not None
        and not (resume or overwrite)
        and (Path(checkpoint_dir) / "checkpoint.pt").exists()
    ):
        raise InputError(
            f"checkpoint_dir {checkpoint_dir} already holds a run's checkpoint.pt; pass "
            "resume=True to continue it or overwrite=True to start afresh"
        )
    dev = resolve_device(device)
    stream = None
    if isinstance(train, (Dataset, DataLoader)):
        stream = _Stream(train, vae, binarize)
        n = len(stream)
    else:
        train = check_data(train, name="train", data_dim=vae.data_dim, dtype=torch.float32)
        _check_train_support(train, vae, binarize, "train")
        n = train.shape[0]
    if test is not None:
        test = check_data(test, name="test", data_dim=vae.data_dim, dtype=torch.float32)
        vae.likelihood.check_support(test, "test")
        test = test.to(dev)
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (n,) or labels.dtype not in (torch.int64, torch.int32):
            raise InputError(
                f"labels must be integers of shape ({n},), got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        labels = labels.long().to(dev)
        if test is not None:
            raise InputError("test ELBOs are not computed for a labelled fit; pass test=None")
    loss_fn = _make_elbo(elbo, int(num_particles), vae)
    if isinstance(loss_fn, _TraceKeyed):  # traces of an earlier fit read another param store
        loss_fn.reset()
    world, rank = distributed_world()

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
    n_batches = math.ceil(n / bs)
    fit_config = {
        "batch_size": bs,
        "lr": float(lr),
        "betas": [float(b) for b in betas],
        "lr_decay": float(lr_decay),
        "decay_start": float(decay_start),
        "elbo": elbo if isinstance(elbo, str) else type(elbo).__name__,
        "num_particles": int(num_particles),
        "seed": int(seed),
        "binarize": binarize,
        "clip_norm": clip_norm,
        "kl_weight": float(kl_weight),
        "kl_warmup_epochs": int(kl_warmup_epochs),
    }
    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    if ckpt_path is not None:  # a float64 pass over the data: only where a checkpoint needs it
        fit_config["data"] = stream.fingerprint() if stream else _fingerprint(train)
        if labels is not None:
            fit_config["labels"] = _fingerprint(labels[:, None])
    gen = torch.Generator(device=dev)
    if stream is not None and dev.type == "cpu":
        # One generator shuffles and binarizes, in the same order as for an in-memory tensor:
        # a streamed run then equals the in-memory one bit for bit. (On CUDA the permutation
        # of host rows is drawn on the CPU, and the in-memory one on the device.)
        stream.gen = gen
    history = History()
    progress_state = {"epoch": 0, "step": 0, "perm": None, "partial": 0.0}
    if resume:
        payload = read_training_checkpoint(ckpt_path)
        _check_resumable(payload, vae, fit_config, int(epochs), ckpt_path)
        load_weights(vae, payload["state_dict"], ckpt_path)
        history = History(**payload["history"])
        progress_state = dict(payload["progress"])
    else:
        pyro.set_rng_seed(seed + rank)  # per-rank guide noise; the shuffling below is shared
        gen.manual_seed(seed)
        if stream is not None:
            stream.gen.manual_seed(seed)
    history.config = {
        **{k: v for k, v in fit_config.items() if k not in ("data", "labels")},
        "epochs": int(epochs),
        "device": str(dev),
    }
    vae.to(dev)
    if stream is None:
        train = train.to(dev)

    total_steps = max(1, int(epochs) * n_batches)
    schedule = None if lr_decay == 1.0 else _HoldThenDecay(total_steps, lr_decay, decay_start)
    if resume:
        ranks_rng = payload.get("rank_rng")
        if world > 1 and ranks_rng is not None and len(ranks_rng) == world:
            set_rng_state(ranks_rng[rank], gen)  # each rank's own guide noise continues
        else:
            set_rng_state(payload["rng"], gen)
            if world > 1 and rank > 0:  # only rank 0's state was saved (an interrupted epoch,
                # or another world size): fresh noise per rank, not a copy of rank 0's
                pyro.set_rng_seed(seed + rank + 1009 * (1 + progress_state["epoch"]))
        if stream is not None and payload.get("stream_rng") is not None:
            stream.gen.set_state(payload["stream_rng"])
        if progress_state["perm"] is not None:
            progress_state["perm"] = progress_state["perm"].to("cpu" if stream else dev)

    def write_checkpoint(every_rank_here: bool) -> None:
        """Rank 0 writes. With ``every_rank_here`` (the end of an epoch, which all ranks
        reach) the ranks' own RNG states are gathered too, for a bit-exact resume."""
        ranks_rng = None
        if world > 1 and every_rank_here:  # a collective: every rank calls it, whether or
            ranks_rng = [None] * world  # not it was given a checkpoint_dir
            torch.distributed.all_gather_object(ranks_rng, rng_state(gen))
        if ckpt_path is None or rank != 0:  # one writer
            return
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "format_version": FORMAT_VERSION,
                **_model_entry(vae),
                "optimizer": stepper.state_dict(),
                "rng": rng_state(gen),
                "rank_rng": ranks_rng,
                "stream_rng": None if stream is None else stream.gen.get_state(),
                "progress": {
                    **progress_state,
                    "perm": None
                    if progress_state["perm"] is None
                    else progress_state["perm"].cpu(),
                },
                "history": history.to_dict(),
                "fit_config": {**fit_config, "epochs": int(epochs)},
                "metadata": metadata or {},
            },
            ckpt_path,
        )

    with pyro.get_param_store().scope(), _SigintFlag() as sigint, _ReleaseParams(vae):
        weighted = kl_weight != 1.0 or kl_warmup_epochs > 0
        latent_scale = LatentScale("z")
        model = latent_scale(vae.model) if weighted else vae.model
        guide = latent_scale(vae.guide) if weighted else vae.guide
        stepper = _GuardedStep(
            vae,
            model,
            guide,
            loss_fn,
            lr=lr,
            betas=betas,
            schedule=schedule,
            clip_norm=clip_norm,
            validate=VALIDATE_STEPS if validate is None else validate,
        )
        if resume:
            stepper.pending_state = payload["optimizer"]
            stepper.new_lr = payload["fit_config"].get("lr") != fit_config["lr"]
        bar = tqdm(
            range(progress_state["epoch"], int(epochs)),
            desc="SVI",
            unit="epoch",
            initial=progress_state["epoch"],
            total=int(epochs),
            disable=True if rank != 0 else _no_bar(progress),
        )
        start = time.perf_counter() - history.seconds
        compiled_before = history.compile_seconds  # of the run this one resumes

        def clock() -> None:
            history.seconds = time.perf_counter() - start
            history.compile_seconds = compiled_before + getattr(loss_fn, "compile_seconds", 0.0)

        for epoch in bar:
            if progress_state["perm"] is None and n_batches > 1:
                progress_state["perm"] = torch.randperm(
                    n, device="cpu" if stream else dev, generator=stream.gen if stream else gen
                )
            perm = progress_state["perm"]
            latent_scale.factor = kl_weight * (
                min(1.0, (epoch + 1) / kl_warmup_epochs) if kl_warmup_epochs else 1.0
            )
            if isinstance(loss_fn, _TraceKeyed):  # a compiled trace bakes the weight in
                loss_fn.trace_key = latent_scale.factor
            # minus the epoch's summed minibatch ELBOs, kept on the device (read once per epoch)
            epoch_loss = torch.tensor(progress_state["partial"], dtype=torch.float64, device=dev)
            for b in range(progress_state["step"], n_batches):
                if sigint.raised:
                    progress_state["partial"] = float(epoch_loss)
                    clock()
                    write_checkpoint(every_rank_here=False)
                    where = f"epoch {epoch + 1}, step {b + 1} of {n_batches}"
                    saved = f"; checkpoint saved to {ckpt_path}" if ckpt_path else ""
                    raise TrainingInterrupted(f"interrupted at {where}{saved}")
                rows = None if perm is None else perm[b * bs : (b + 1) * bs]
                n_rows = n if rows is None else len(rows)
                if world > 1:  # this rank's share of the global minibatch
                    rows = (
                        torch.arange(rank, n, world, device="cpu" if stream else dev)
                        if rows is None
                        else rows[rank::world]
                    )
                if stream is not None:
                    xb = stream.batch(rows, b).to(dev, non_blocking=True)
                else:
                    xb = train if rows is None else train[rows]
                if binarize == "dynamic":
                    # Uniforms for the whole global minibatch on every rank, this rank's rows
                    # kept: the binarization is the single-process one, and the shared
                    # generator (it also shuffles) advances alike on all ranks.
                    u = torch.rand((n_rows, xb.shape[1]), generator=gen, device=dev)
                    xb = (u[rank::world] < xb).to(xb.dtype)
                extra = {} if labels is None else {"y": labels if rows is None else labels[rows]}
                try:
                    share = world * xb.shape[0] / n_rows
                    loss = stepper.step(xb, num_data=n, share=share, **extra)
                except FloatingPointError as exc:
                    kept = (
                        f"; the last good checkpoint {ckpt_path} (epoch {epoch}) is kept"
                        if ckpt_path is not None and ckpt_path.exists()
                        else ""
                    )
                    raise FloatingPointError(
                        f"{exc} at epoch {epoch + 1}, step {b + 1}: training stopped{kept}. "
                        "Usual remedies: a lower learning rate (lr), gradient clipping "
                        "(clip_norm), or checking the data for extreme values; then resume"
                    ) from None
                epoch_loss += loss
                progress_state["step"] = b + 1
                history.steps += 1
            if world > 1:  # each rank's loss estimates the same full-data loss: average them
                torch.distributed.all_reduce(epoch_loss)
                epoch_loss /= world
            partial = float(epoch_loss)
            history.train_elbo.append(-partial / (n_batches * n))
            if test is not None and rank == 0:
                tic = time.perf_counter()
                history.test_elbo.append(_mean_elbo(loss_fn, vae, test))
                start += time.perf_counter() - tic  # not training time
            progress_state.update(epoch=epoch + 1, step=0, perm=None, partial=0.0)
            clock()
            write_checkpoint(every_rank_here=True)
            bar.set_postfix(
                train_elbo=f"{history.train_elbo[-1]:.2f}",
                **({"test_elbo": f"{history.test_elbo[-1]:.2f}"} if history.test_elbo else {}),
            )
        clock()
    return history


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


def distributed_world() -> tuple[int, int]:
    """(world size, rank) of an initialized ``torch.distributed`` group, else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class _Objective(torch.nn.Module):
    """The negative ELBO as a module (Pyro's ``ELBOModule`` for method-based programs), so
    that ``DistributedDataParallel`` can wrap it and all-reduce the program's gradients."""

    def __init__(self, program, model, guide, loss):
        super().__init__()
        self.program = program
        self._model, self._guide, self._loss = model, guide, loss

    def forward(self, *args, **kwargs):
        return self._loss.differentiable_loss(self._model, self._guide, *args, **kwargs)


def _check_train_support(x: torch.Tensor, program, binarize, what: str) -> None:
    if binarize == "dynamic":
        if bool((x < 0).any()) or bool((x > 1).any()):
            raise InputError(f"{what}: dynamic binarization needs intensities in [0, 1]")
    else:
        program.likelihood.check_support(x, what)


class _Stream:
    """Training data that stays where it is (a memory-mapped file, a database): a
    ``torch.utils.data.Dataset`` indexed batch by batch in ``fit``'s own seeded order.

    The dataset's ``__getitem__`` receives a ``LongTensor`` of row indices and may
    return the (B, D) batch at once (fast for NumPy memmaps); otherwise rows are fetched one
    by one and stacked. Each batch is validated (shape, finiteness, the likelihood's support)
    before it is used, and the error names the batch. A ``DataLoader`` contributes its dataset:
    the order is fit's, so that a resumed run continues exactly where it stopped.
    """

    def __init__(self, data, program, binarize):
        self.dataset = data.dataset if isinstance(data, DataLoader) else data
        self.program, self.binarize = program, binarize
        try:
            self.n = len(self.dataset)
        except TypeError:
            raise InputError("a streamed training set must have a length (len(dataset))") from None
        if self.n == 0:
            raise InputError("train: the dataset is empty")
        self.gen = torch.Generator()  # CPU: the permutation indexes host data
        self._batched = None

    def __len__(self) -> int:
        return self.n

    def _fetch(self, rows: torch.Tensor) -> torch.Tensor:
        if self._batched is None or self._batched:
            try:
                x = torch.as_tensor(self.dataset[rows])
                if x.dim() == 2 and x.shape[0] == len(rows):
                    self._batched = True
                    return x
            except Exception:  # any failure: fall back to row-by-row access
                if self._batched:
                    raise
            self._batched = False
        return torch.stack([torch.as_tensor(self.dataset[int(i)]).reshape(-1) for i in rows])

    def batch(self, rows: torch.Tensor | None, index: int) -> torch.Tensor:
        rows = torch.arange(self.n) if rows is None else rows
        x = self._fetch(rows)
        what = f"train batch {index + 1}"
        x = check_data(x, name=what, data_dim=self.program.data_dim, dtype=torch.float32)
        _check_train_support(x, self.program, self.binarize, what)
        return x

    def fingerprint(self) -> list[float]:
        head = self._fetch(torch.arange(min(self.n, 1024)))
        return [float(self.n), *_fingerprint(head.float())[1:]]


def _check_program(program) -> None:
    """``fit`` trains any module with Pyro ``model``/``guide`` methods and a ``likelihood``."""
    missing = [
        attr
        for attr in ("model", "guide", "likelihood", "data_dim", "training_defaults")
        if not hasattr(program, attr)
    ]
    if not isinstance(program, torch.nn.Module) or missing:
        raise WrongTypeError(
            f"fit expects a ppvae model (a VAE, an autoencoder or another torch.nn.Module with "
            f"Pyro model/guide methods), got {type(program).__name__}"
            + (f" lacking {', '.join(missing)}" if missing else "")
        )


RESUME_MAY_CHANGE = ("lr", "clip_norm")
"""Settings in a checkpoint's ``fit_config`` that a resumed run may change (besides ``epochs``,
``device`` and ``progress``, which are not part of it): the usual remedies after a divergence."""


def _check_resumable(payload: dict, vae: VAE, fit_config: dict, epochs: int, path) -> None:
    saved = payload["fit_config"]
    if payload["class"] != type(vae).__name__ or payload["config"] != vae.config():
        raise InputError(
            f"{path}: the checkpoint is of a different model ({payload['class']} "
            f"{payload['config']}), not {type(vae).__name__} {vae.config()}"
        )
    if not _same_fingerprint(saved["data"], fit_config["data"]):
        raise InputError(f"{path}: the checkpoint was written for different training data")
    for key, value in fit_config.items():
        if key == "elbo" and _objective(saved.get(key), vae) == _objective(value, vae):
            continue  # compiled or eager, auto or named: the same estimator
        if key not in ("data", *RESUME_MAY_CHANGE) and saved.get(key) != value:
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


def _objective(elbo, vae) -> str:
    """The estimator an ELBO name stands for, compiled or not ("meanfield" or "trace")."""
    if elbo == "auto":
        return "meanfield" if _analytic_kl(vae) else "trace"
    return {"jit-meanfield": "meanfield", "jit": "trace"}.get(elbo, elbo)


class _HoldThenDecay:
    """Learning-rate factor: 1 for the first ``start`` share of steps, then exponential decay
    reaching ``final`` at the last step."""

    def __init__(self, total_steps: int, final: float, start: float):
        self.hold = int(start * total_steps)
        self.span = max(1, total_steps - self.hold)
        self.log_final = math.log(final)

    def __call__(self, step: int) -> float:
        if step <= self.hold:
            return 1.0
        return math.exp(self.log_final * min(1.0, (step - self.hold) / self.span))


def _no_bar(progress: bool | None) -> bool | None:
    # tqdm's disable=None means: disable when not writing to a terminal
    return None if progress is None else not progress


def _mean_elbo(loss_fn: ELBO, vae: VAE, X: torch.Tensor, chunk: int = 4096) -> float:
    """ELBO of X in nats per sample, one estimate with the training estimator."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, X.shape[0], chunk):
            total += loss_fn.loss(vae.model, vae.guide, X[i : i + chunk])
    return -total / X.shape[0]
