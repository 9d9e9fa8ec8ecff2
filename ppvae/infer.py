"""Training by stochastic variational inference, and saving / loading trained models.

:func:`fit` runs ``pyro.infer.SVI`` (``Trace_ELBO`` by default) over shuffled minibatches.
Each step's loss is the negative minibatch ELBO scaled to the whole training set, so the
history reports ``-loss / N``: the ELBO in nats per sample.

Training happens inside a fresh scope of Pyro's global parameter store, so several models can
be trained in one process without their parameters colliding; the trained values live in the
model's own ``nn.Parameter`` tensors afterwards.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer import ELBO, SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from .data import check_data
from .vae import VAE, LinearVAE

__all__ = ["ELBOS", "History", "fit", "load", "load_checkpoint", "resolve_device", "save"]

ELBOS = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "jit": JitTrace_ELBO,
}
MODEL_CLASSES: dict[str, type] = {"VAE": VAE, "LinearVAE": LinearVAE}
FORMAT = "ppvae.model"
FORMAT_VERSION = 1


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
        Wall time of training, excluding test evaluation.
    steps : int
        Number of SVI steps taken.
    """

    train_elbo: list[float] = field(default_factory=list)
    test_elbo: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0

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
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


def _make_elbo(elbo: ELBO | str | None, num_particles: int) -> ELBO:
    if elbo is None:
        return Trace_ELBO(num_particles=num_particles)
    if isinstance(elbo, ELBO):
        return elbo
    key = str(elbo).lower()
    if key not in ELBOS:
        raise ValueError(f"unknown elbo {elbo!r}; choose one of {', '.join(ELBOS)}")
    return ELBOS[key](num_particles=num_particles)


def _check_positive(**kwargs) -> None:
    for name, value in kwargs.items():
        if isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


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
    progress: bool | None = None,
) -> History:
    """Train a VAE by SVI.

    Parameters
    ----------
    vae : VAE
        The model; trained in place.
    train : array-like, shape (N, D)
        Training data.
    epochs : int
        Passes over the training data.
    batch_size : int
        Minibatch size B; a batch size >= N gives full-batch steps.
    lr : float, optional
        Adam learning rate (default: the model's ``training_defaults``; 1e-3 for a VAE).
    seed : int
        Seeds Pyro, torch, NumPy and Python RNGs and the shuffling.
    test : array-like, shape (M, D), optional
        Held-out data whose ELBO is recorded after every epoch.
    elbo : pyro.infer.ELBO or {"trace", "meanfield", "jit"}, optional
        The ELBO estimator (default: the model's ``training_defaults``; ``Trace_ELBO`` for a
        VAE, ``TraceMeanField_ELBO`` with analytic KL for a :class:`~ppvae.LinearVAE`).
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
    progress : bool, optional
        Show a progress bar (default: when writing to a terminal).

    Returns
    -------
    History
        ELBOs per epoch in nats per sample.
    """
    if not isinstance(vae, VAE):
        raise TypeError(f"fit expects a ppvae VAE, got {type(vae).__name__}")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    defaults = type(vae).training_defaults
    lr = defaults["lr"] if lr is None else lr
    betas = tuple(defaults["betas"] if betas is None else betas)
    lr_decay = defaults["lr_decay"] if lr_decay is None else lr_decay
    decay_start = defaults.get("decay_start", 0.0) if decay_start is None else decay_start
    if not 0.0 <= decay_start < 1.0:
        raise ValueError(f"decay_start must lie in [0, 1), got {decay_start!r}")
    elbo = defaults["elbo"] if elbo is None else elbo
    _check_positive(batch_size=batch_size, lr=lr, num_particles=num_particles, lr_decay=lr_decay)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if binarize not in (None, "dynamic"):
        raise ValueError(f"binarize must be None or 'dynamic', got {binarize!r}")
    dev = resolve_device(device)
    train = check_data(train, name="train", data_dim=vae.data_dim, dtype=torch.float32)
    if binarize == "dynamic":
        if bool((train < 0).any()) or bool((train > 1).any()):
            raise ValueError("train: dynamic binarization needs intensities in [0, 1]")
    else:
        vae.likelihood.check_support(train, "train")
    if test is not None:
        test = check_data(test, name="test", data_dim=vae.data_dim, dtype=torch.float32)
        vae.likelihood.check_support(test, "test")
        test = test.to(dev)
    loss_fn = _make_elbo(elbo, int(num_particles))

    pyro.set_rng_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    vae.to(dev)
    train = train.to(dev)
    n = train.shape[0]
    bs = min(int(batch_size), n)
    n_batches = math.ceil(n / bs)
    history = History()

    total_steps = max(1, int(epochs) * n_batches)
    if lr_decay == 1.0:
        optim = pyro.optim.Adam({"lr": lr, "betas": betas})
    else:
        optim = pyro.optim.LambdaLR(
            {
                "optimizer": torch.optim.Adam,
                "optim_args": {"lr": lr, "betas": betas},
                "lr_lambda": _HoldThenDecay(total_steps, lr_decay, decay_start),
            }
        )
    scheduled = isinstance(optim, pyro.optim.PyroLRScheduler)

    with pyro.get_param_store().scope():
        svi = SVI(vae.model, vae.guide, optim, loss=loss_fn)
        bar = tqdm(range(int(epochs)), desc="SVI", unit="epoch", disable=_no_bar(progress))
        start = time.perf_counter()
        for epoch in bar:
            perm = torch.randperm(n, device=dev, generator=gen) if n_batches > 1 else None
            total = 0.0
            for b in range(n_batches):
                xb = train if perm is None else train[perm[b * bs : (b + 1) * bs]]
                if binarize == "dynamic":
                    xb = torch.bernoulli(xb, generator=gen)
                loss = svi.step(xb, num_data=n)
                if scheduled:
                    optim.step()
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss {loss} at epoch {epoch + 1}, step {b + 1}; "
                        "try a lower learning rate"
                    )
                total += loss
                history.steps += 1
            history.train_elbo.append(-total / (n_batches * n))
            if test is not None:
                history.test_elbo.append(_mean_elbo(loss_fn, vae, test))
            bar.set_postfix(
                train_elbo=f"{history.train_elbo[-1]:.2f}",
                **({"test_elbo": f"{history.test_elbo[-1]:.2f}"} if test is not None else {}),
            )
        history.seconds = time.perf_counter() - start
    return history


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


# ---------------------------------------------------------------------- saving / loading
def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(
    model: VAE,
    path: str | os.PathLike,
    *,
    history: History | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write a model to ``path`` atomically: its configuration and state dict, no pickled objects.

    Parameters
    ----------
    model : VAE
    path : path
        Usually ``DIR/model.pt``.
    history : History, optional
        Stored alongside, for the record.
    metadata : dict, optional
        JSON-able extras (dataset name, seed, ...).
    """
    path = Path(path)
    cls = type(model).__name__
    if cls not in MODEL_CLASSES:
        raise ValueError(f"cannot save a {cls}; known classes: {', '.join(MODEL_CLASSES)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": cls,
        "config": model.config(),
        "state_dict": state,
        "history": history.to_dict() if history is not None else None,
        "metadata": metadata or {},
    }
    _atomic_torch_save(payload, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a saved model file safely (``weights_only=True``) and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, tampered, or not a torch file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable ppvae model file ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a ppvae model file (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: model file format version {payload.get('format_version')!r} is not "
            f"supported (this ppvae reads version {FORMAT_VERSION})"
        )
    for key in ("class", "config", "state_dict"):
        if key not in payload:
            raise ValueError(f"{path}: model file is missing its {key!r} entry")
    return payload


def load(path: str | os.PathLike, map_location="cpu") -> VAE:
    """Rebuild a model saved by :func:`save` (or ``ppvae fit``).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a readable ppvae model file or its weights do not fit its configuration.
    """
    payload = load_checkpoint(path, map_location)
    cls = MODEL_CLASSES.get(payload["class"])
    if cls is None:
        raise ValueError(f"{path}: unknown model class {payload['class']!r}")
    try:
        model = cls(**payload["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid model configuration ({exc})") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ValueError(
            f"{path}: weights do not match the model configuration ({detail[:300]})"
        ) from None
    return model.to(map_location) if map_location is not None else model
