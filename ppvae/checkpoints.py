"""Saving and loading: trained models (``model.pt``) and resumable training checkpoints.

Both are written atomically (temporary file in the same folder, flush, fsync, ``os.replace``)
with the SHA-256 of their content appended, checked on every read,
hold only tensors and plain Python values, and are read with ``torch.load(weights_only=True)``,
so a tampered file cannot execute code. Every problem with a file is reported as one
``ValueError`` naming the file and what is wrong, never as a traceback from torch internals.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .autoencoders import AUTOENCODERS
from .conditional import ConditionalVAE, SemiSupervisedVAE
from .errors import InputError, MissingFileError, UnwritableError
from .initialization import keep_parameters
from .tables import Standardization
from .vae import VAE, LinearVAE

__all__ = ["load", "load_checkpoint", "rng_state", "save", "set_rng_state"]

MODEL_CLASSES: dict[str, type] = {
    "VAE": VAE,
    "LinearVAE": LinearVAE,
    "ConditionalVAE": ConditionalVAE,
    "SemiSupervisedVAE": SemiSupervisedVAE,
    **{cls.__name__: cls for cls in AUTOENCODERS.values()},
}
MODEL_FORMAT = "ppvae.model"
CHECKPOINT_FORMAT = "ppvae.checkpoint"
FORMAT_VERSION = 1


DIGEST_TAG = b"\nppvae-sha256 "
"""A file's last 79 bytes: this tag, the SHA-256 of everything before it (64 hex digits), and a
newline. ``torch.load`` ignores bytes after the archive, so the file stays a PyTorch file."""
_TRAILER_LEN = len(DIGEST_TAG) + 64 + 1


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path`` (with the SHA-256 of its content
    appended, see :data:`DIGEST_TAG`), fsync, then ``os.replace``: an interrupted or failed
    write leaves any previous file at ``path`` as it was."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    body = buffer.getvalue()
    digest = hashlib.sha256(body).hexdigest().encode()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            _write(fh, body + DIGEST_TAG + digest + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = f"; the previous {path.name} is kept as it was" if path.exists() else ""
        raise UnwritableError(f"cannot write {path}: {exc.strerror or exc}{kept}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write(fh, data: bytes) -> None:
    """One write of a checkpoint's bytes (a seam for tests that simulate a full disk)."""
    fh.write(data)


def verified_bytes(path: Path, what: str) -> bytes:
    """The content of a ppvae file, checked against the SHA-256 written with it.

    A file written before ppvae wrote digests has none and is returned as it is (its archive
    is still checked by ``torch.load``).

    Raises
    ------
    InputError
        If the file is not a PyTorch archive or its content does not match its digest.
    """
    data = path.read_bytes()
    if not data.startswith(b"PK\x03\x04"):
        raise InputError(
            f"{path}: not a readable ppvae {what} file (not a PyTorch archive: "
            f"{'empty' if not data else 'it starts with ' + repr(data[:8])})"
        )
    trailer = data[-_TRAILER_LEN:]
    if not trailer.startswith(DIGEST_TAG):
        return data
    body = data[:-_TRAILER_LEN]
    if hashlib.sha256(body).hexdigest().encode() != trailer[len(DIGEST_TAG) : -1]:
        raise InputError(
            f"{path}: the {what} file is damaged: its content does not match the SHA-256 "
            "written with it (a partial copy, a disk error or an edit); use another copy"
        )
    return body


def _model_entry(model: VAE) -> dict:
    cls = type(model).__name__
    if cls not in MODEL_CLASSES:
        raise InputError(f"cannot save a {cls}; known classes: {', '.join(MODEL_CLASSES)}")
    return {
        "class": cls,
        "config": model.config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save(model: VAE, path: str | os.PathLike, *, history=None, metadata: dict | None = None):
    """Write a model to ``path`` atomically: its configuration and state dict, no pickled objects.

    Parameters
    ----------
    model : VAE
    path : path
        Usually ``DIR/model.pt``.
    history : ppvae.History, optional
        Stored alongside, for the record.
    metadata : dict, optional
        JSON-able extras (dataset name, seed, ...).

    Returns
    -------
    pathlib.Path
    """
    payload = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        **_model_entry(model),
        "history": history.to_dict() if history is not None else None,
        "metadata": metadata or {},
    }
    return atomic_torch_save(payload, path)


def _read(path: Path, fmt: str, what: str, map_location) -> dict:
    if not path.is_file():
        raise MissingFileError(f"no such {what} file: {path}")
    data = verified_bytes(path, what)
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, tampered, or not a torch file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in first:  # PyTorch's advice to unpickle anything: not for a user
            first = "it holds objects other than tensors and plain values"
        raise InputError(f"{path}: not a readable ppvae {what} file ({first[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise InputError(
            f"{path}: not a ppvae {what} file (no '{fmt}' header"
            + (f"; it is a '{found}' file" if found else "")
            + ")"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: {what} file format version {payload.get('format_version')!r} is not "
            f"supported (this ppvae reads version {FORMAT_VERSION})"
        )
    for key in ("class", "config", "state_dict"):
        if key not in payload:
            raise InputError(f"{path}: {what} file is missing its {key!r} entry")
    return payload


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a saved model file safely (``weights_only=True``) and check its layout."""
    return _read(Path(path), MODEL_FORMAT, "model", map_location)


def build_model(payload: dict, path) -> VAE:
    """Rebuild a model from a payload's class, configuration and state dict."""
    cls = MODEL_CLASSES.get(payload["class"])
    if cls is None:
        raise InputError(f"{path}: unknown model class {payload['class']!r}")
    try:
        model = cls(**payload["config"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: invalid model configuration ({exc})") from None
    load_weights(model, payload["state_dict"], path)
    return model


def load_weights(model: VAE, state_dict: dict, path) -> None:
    """``load_state_dict(strict=True)`` with a one-line error on any mismatch."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:3])
        raise InputError(
            f"{path}: weights do not match the model configuration ({detail[:300]})"
        ) from None


def load(path: str | os.PathLike, map_location="cpu") -> VAE:
    """Rebuild a model saved by :func:`save` (or ``ppvae fit``); a training checkpoint works too.

    A model fitted on a standardized table (``ppvae fit --standardize``) was trained on
    standardized rows and saved with the centres and scales: it comes back with them as
    ``model.standardization`` (a :class:`~ppvae.tables.Standardization`; None for other
    models), and a UserWarning says how to use them: give the model
    ``model.standardization.transform(x)`` of raw rows, map its outputs back with
    ``.inverse(...)``, and add ``.log_density_shift`` to its log-densities for those of the
    raw rows.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a readable ppvae file or its weights do not fit its configuration.
    """
    path = Path(path)
    try:
        payload = _read(path, MODEL_FORMAT, "model", map_location)
    except ValueError as exc:
        if "'ppvae.checkpoint' file" not in str(exc):
            raise
        payload = _read(path, CHECKPOINT_FORMAT, "checkpoint", map_location)
    model = keep_parameters(build_model(payload, path))  # fit continues from these weights
    _attach_standardization(model, payload, path)
    return model.to(map_location) if map_location is not None else model


def _attach_standardization(model, payload: dict, path) -> None:
    """``model.standardization`` from the saved metadata, with a warning saying how to use it."""
    record = (payload.get("metadata") or {}).get("standardization")
    model.standardization = Standardization.from_dict(record)
    if model.standardization is not None:
        shift = model.standardization.log_density_shift
        warnings.warn(
            f"{path}: this model was trained on standardized columns (centres and scales in "
            "model.standardization): give it model.standardization.transform(x) of raw rows, "
            "map its outputs (reconstructions, samples, imputations) back with "
            "model.standardization.inverse(...), and add "
            f"model.standardization.log_density_shift ({shift:.4f}) "
            "to its log-densities for those of the raw rows",
            UserWarning,
            stacklevel=3,
        )


def read_training_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a training checkpoint written by :func:`ppvae.fit` (``checkpoint_dir=``)."""
    payload = _read(Path(path), CHECKPOINT_FORMAT, "checkpoint", map_location)
    for key in ("optimizer", "rng", "progress", "fit_config", "history"):
        if key not in payload:
            raise InputError(f"{path}: checkpoint file is missing its {key!r} entry")
    return payload


# ---------------------------------------------------------------------- random number states
def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every random state training depends on, as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what users seed
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
