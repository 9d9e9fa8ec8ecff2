"""Datasets, dequantization, binarization, splits and input validation.

Every loader returns pixel data as float32 tensors of shape (N, D) with values in [0, 1].
Continuous data are *uniformly dequantized*: an integer pixel value ``v`` in
``{0, ..., levels - 1}`` becomes ``(v + u) / levels`` with ``u ~ U(0, 1)`` (seeded), so a density
on ``[0, 1]^D`` fitted to it is an honest density and its log-likelihood, in nats, is comparable
across models (Theis et al. 2016). Bernoulli models use binarized data instead, either *static*
(sampled once, seeded) or *dynamic* (resampled every epoch by :func:`ppvae.fit`).

This module imports nothing from the model side of the package.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, MissingFileError, WrongTypeError

__all__ = [
    "DATASETS",
    "UNLABELLED",
    "Dataset",
    "MemmapDataset",
    "binarize",
    "check_data",
    "check_missing",
    "dequantize",
    "labelled_subset",
    "load_dataset",
    "missing_as_nan",
    "read_idx",
    "remove_at_random",
    "row_blocks",
    "split_missing",
    "with_missing",
]

DATASETS = ("digits", "mnist", "fashion-mnist")
BINARIZE_MODES = (None, "static", "dynamic")

# torchvision's folder layout: ROOT/<folder>/raw/<file>.gz
_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Dataset:
    """A train/test split of flattened data.

    Attributes
    ----------
    name : str
        Dataset name, e.g. ``"digits"``.
    train, test : torch.Tensor
        float32, shape (N_train, D) and (N_test, D), values in [0, 1].
    train_labels, test_labels : torch.Tensor or None
        int64, shape (N_train,) and (N_test,).
    image_shape : tuple of int or None
        Shape of one image, e.g. (28, 28); ``prod(image_shape) == D``.
    levels : int or None
        Number of integer pixel levels of the raw data (17 for digits, 256 for MNIST).
    dequantized : bool
        Whether ``train`` and ``test`` were uniformly dequantized.
    binarize : str or None
        ``"static"``: both splits are binary. ``"dynamic"``: ``train`` holds pixel intensities
        in [0, 1] to be resampled every epoch (pass ``binarize="dynamic"`` to :func:`ppvae.fit`),
        and ``test`` is binarized once, seeded.
    test_complete : torch.Tensor or None
        Where :func:`with_missing` made the test split's holes: that split before them, the
        truth its imputations are scored against (None otherwise).
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    image_shape: tuple[int, ...] | None = None
    levels: int | None = None
    dequantized: bool = False
    binarize: str | None = None
    info: dict = field(default_factory=dict)
    test_complete: torch.Tensor | None = None

    @property
    def data_dim(self) -> int:
        """Number of features D."""
        return int(self.train.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train.shape)}, "
            f"test={tuple(self.test.shape)}, image_shape={self.image_shape}, "
            f"dequantized={self.dequantized}, binarize={self.binarize!r})"
        )


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int in [0, 2**32) (what NumPy, torch and Pyro all accept), or one
    :class:`~ppvae.errors.InputError` naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise InputError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def check_data(
    X,
    *,
    name: str = "data",
    data_dim: int | None = None,
    allow_nan: bool = False,
    min_rows: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Validate a data matrix and return it as a floating-point tensor.

    Parameters
    ----------
    X : array-like or torch.Tensor, shape (N, D)
        The data. NumPy arrays and nested sequences are converted; integer, boolean and
        float16 inputs become float32; float32 and float64 keep their dtype unless ``dtype``
        is given.
    name : str
        What the data are called in error messages.
    data_dim : int, optional
        Required number of columns D.
    allow_nan : bool
        Whether NaN entries (missing values) are allowed. Infinite values never are.
    min_rows : int
        Minimum number of rows.
    dtype : torch.dtype, optional
        Cast to this floating dtype.

    Returns
    -------
    torch.Tensor, shape (N, D)

    Raises
    ------
    ValueError
        If X is not two-dimensional, has too few rows, the wrong number of columns, or
        non-finite entries.
    TypeError
        If X cannot be read as a numeric array.
    """
    if not isinstance(X, torch.Tensor):
        try:
            arr = np.asarray(X)
        except Exception as exc:  # ragged lists and the like
            raise WrongTypeError(f"{name}: cannot be read as a numeric array ({exc})") from None
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise WrongTypeError(f"{name}: expected numeric data, got dtype {arr.dtype}")
        X = torch.from_numpy(np.ascontiguousarray(arr))
    if X.is_complex():
        raise WrongTypeError(f"{name}: complex data are not supported")
    if not X.is_floating_point() or X.dtype in (torch.float16, torch.bfloat16):
        X = X.to(torch.float32)
    if dtype is not None:
        X = X.to(dtype)
    if X.dim() != 2:
        raise InputError(
            f"{name}: expected a 2-D array of shape (N, D), got shape {tuple(X.shape)}"
        )
    if X.shape[0] < min_rows:
        raise InputError(f"{name}: expected at least {min_rows} row(s), got {X.shape[0]}")
    if X.shape[1] == 0:
        raise InputError(f"{name}: has no columns")
    if data_dim is not None and X.shape[1] != data_dim:
        raise InputError(f"{name}: expected {data_dim} columns, got {X.shape[1]}")
    if any(bool(_non_finite(b, allow_nan).any()) for b in row_blocks(X)):
        bad = _non_finite(X, allow_nan)  # the whole matrix, for the message
        n_bad = int(bad.sum())
        row, col = (int(i) for i in bad.nonzero()[0])
        kind = "infinite" if allow_nan else "NaN or infinite"
        raise InputError(f"{name}: {n_bad} {kind} value(s), first at row {row}, column {col}")
    return X


def row_blocks(X: torch.Tensor, elements: int = 2**20) -> tuple[torch.Tensor, ...]:
    """Consecutive blocks of rows of X (views), each of about ``elements`` values.

    Whole-matrix checks run block by block so that their temporaries stay small: on the
    60,000 x 784 MNIST matrix, ``torch.isinf(X)`` alone peaked at 180 MiB above the data.
    """
    if X.dim() < 2 or X.shape[0] == 0:
        return (X,)
    return X.split(max(1, elements // max(1, X[0].numel())))


def _non_finite(X: torch.Tensor, allow_nan: bool) -> torch.Tensor:
    """Where X is infinite (and, unless ``allow_nan``, NaN): bool, X's shape."""
    return torch.isinf(X) if allow_nan else ~torch.isfinite(X)


def split_missing(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, mask)``: the data with 0 at every missing (NaN) entry, and the boolean observed
    mask (True where observed), the encoding a program that takes ``mask`` receives
    (:mod:`ppvae.program`). ``mask`` is None for complete data, which are returned as given.

    Parameters
    ----------
    X : torch.Tensor, shape (N, D)

    Returns
    -------
    x : torch.Tensor, shape (N, D)
    mask : torch.Tensor of bool, shape (N, D), or None
    """
    missing = torch.isnan(X)
    if not bool(missing.any()):
        return X, None
    return X.masked_fill(missing, 0.0), ~missing


def missing_as_nan(X: torch.Tensor, mask, *, name: str = "mask") -> torch.Tensor:
    """``X`` with NaN wherever the boolean observed ``mask`` is False (a copy), the other way
    of saying which entries are missing. ``mask=None`` returns ``X``.

    Raises
    ------
    ValueError
        A mask of another shape, or not boolean.
    """
    if mask is None:
        return X
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise WrongTypeError(
            f"{name}: expected a boolean array (True where observed), got {mask.dtype}"
        )
    if tuple(mask.shape) != tuple(X.shape):
        raise InputError(
            f"{name}: shape {tuple(mask.shape)} does not match the data's {tuple(X.shape)}"
        )
    return X.masked_fill(~mask.to(X.device), float("nan"))


def remove_at_random(X: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``X`` with each entry missing (NaN) with probability ``rate``, completely at
    random; a row left with nothing observed keeps one entry (chosen at random)."""
    if not 0.0 <= float(rate) < 1.0:
        raise InputError(f"missing_rate must lie in [0, 1), got {rate!r}")
    drop = torch.rand(X.shape, generator=generator) < rate
    empty = drop.all(dim=1)
    if bool(empty.any()):
        keep = torch.randint(X.shape[1], (int(empty.sum()),), generator=generator)
        drop[empty.nonzero()[:, 0], keep] = False
    return X.masked_fill(drop.to(X.device), float("nan"))


def with_missing(ds: Dataset, rate: float, seed: int = 0) -> Dataset:
    """``ds`` with a share ``rate`` of the entries of both splits missing completely at random
    (:func:`remove_at_random`, seeded), keeping the complete test split as ``test_complete``.

    The Python face of the CLI's ``--missing-rate``: ``ppvae run --missing-rate P --seed S``
    fits ``with_missing(ds, P, seed=S)``.

    Parameters
    ----------
    ds : Dataset
        Complete or not; entries already missing stay missing.
    rate : float
        In [0, 1); 0 returns ``ds`` unchanged.
    seed : int
        Seeds the holes (train first, then test, from one generator).

    Returns
    -------
    Dataset
        A new data set; ``info["missing_rate"]`` records ``rate``.
    """
    if not 0.0 <= float(rate) < 1.0:
        raise InputError(f"rate must lie in [0, 1), got {rate!r}")
    if rate == 0:
        return ds
    g = torch.Generator().manual_seed(check_seed(seed) + 7)
    train = remove_at_random(ds.train, rate, g)
    test = remove_at_random(ds.test, rate, g)
    info = {**ds.info, "missing_rate": float(rate)}
    return replace(ds, train=train, test=test, info=info, test_complete=ds.test.clone())


def check_missing(observed: torch.Tensor, name: str = "data") -> None:
    """Refuse rows with no observed entry (they carry no information about anything)."""
    empty = ~observed.any(dim=1)
    if bool(empty.any()):
        raise InputError(
            f"{name}: {int(empty.sum())} row(s) have every entry missing (NaN), first at row "
            f"{int(empty.nonzero()[0])}; drop them, they carry no information"
        )


def dequantize(values: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform dequantization ``(v + u) / levels`` with ``u ~ U(0, 1)``.

    Parameters
    ----------
    values : torch.Tensor
        Integer pixel values in ``{0, ..., levels - 1}``, any shape.
    levels : int
        Number of pixel levels.
    generator : torch.Generator
        Source of the uniform noise.

    Returns
    -------
    torch.Tensor
        float32, same shape, values in (0, 1).
    """
    v = values.to(torch.float32)
    if bool((v < 0).any()) or bool((v > levels - 1).any()):
        raise InputError(f"pixel values must lie in [0, {levels - 1}] to dequantize")
    u = torch.rand(v.shape, generator=generator, dtype=torch.float32)
    return (v + u) / levels


def binarize(probs: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """Sample binary data ``x ~ Bernoulli(probs)`` elementwise.

    Parameters
    ----------
    probs : torch.Tensor
        Intensities in [0, 1], any shape.
    generator : torch.Generator or int, optional
        Random source, or a seed for a fresh CPU generator.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``probs``, values in {0, 1}.
    """
    if isinstance(generator, int):
        generator = torch.Generator(device=probs.device).manual_seed(generator)
    if bool((probs < 0).any()) or bool((probs > 1).any()):
        raise InputError("binarize: intensities must lie in [0, 1]")
    return torch.bernoulli(probs, generator=generator)


# Aliases: load_dataset's keyword arguments shadow these names.
_dequantize = dequantize
_binarize = binarize


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is truncated, not gzip where its name says so, or has a bad magic number.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no such file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read ({exc}); the file may be truncated") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise InputError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise InputError(
            f"{path}: expected {expected} data bytes for shape {shape}, "
            f"found {len(raw) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(root: Path, folder: str, stem: str) -> Path | None:
    for candidate in (root / folder / "raw" / f"{stem}.gz", root / folder / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dataset(name: str, root, download: bool):
    if root is None:
        raise InputError(f"dataset {name!r} needs a data root: pass root=...")
    root = Path(root).expanduser()
    folder = _IDX_FOLDERS[name]
    paths = {key: _find_idx(root, folder, stem) for key, stem in _IDX_FILES.items()}
    missing = [_IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing and download:
        _download_with_torchvision(name, root)
        paths = {key: _find_idx(root, folder, stem) for key, stem in _IDX_FILES.items()}
        missing = [_IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise MissingFileError(
            f"{name}: missing {', '.join(m + '.gz' for m in missing)} under "
            f"{root / folder / 'raw'} (pass download=True to fetch them)"
        )
    arrays = {key: read_idx(p) for key, p in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise InputError(
                f"{name}: {split} images {images.shape} and labels {labels.shape} do not match"
            )
    image_shape = tuple(int(s) for s in arrays["train_images"].shape[1:])
    return (
        arrays["train_images"].reshape(len(arrays["train_images"]), -1),
        arrays["train_labels"],
        arrays["test_images"].reshape(len(arrays["test_images"]), -1),
        arrays["test_labels"],
        image_shape,
        256,
    )


def _download_with_torchvision(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd  # lazy: only an explicit download needs it
    except Exception as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            f"download=True needs torchvision, which failed to import: {exc}"
        ) from exc
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[name]
    cls(str(root), train=True, download=True)
    cls(str(root), train=False, download=True)


def _load_digits(seed: int, test_fraction: float):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = bunch.data.astype(np.int64)  # (1797, 64), values 0..16
    labels = bunch.target.astype(np.int64)
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(len(values))
    n_test = round(test_fraction * len(values))
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return values[train_idx], labels[train_idx], values[test_idx], labels[test_idx], (8, 8), 17


def _subset(n: int | None, total: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if n is None or n >= total:
        return np.arange(total)
    if n < 1:
        raise InputError(f"{what} must be at least 1, got {n}")
    return np.sort(rng.choice(total, size=n, replace=False))


def load_dataset(
    name: str = "digits",
    root: str | os.PathLike | None = None,
    download: bool = False,
    *,
    seed: int = 0,
    dequantize: bool = True,
    binarize: str | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load a dataset as flattened float32 tensors in [0, 1].

    Parameters
    ----------
    name : {"digits", "mnist", "fashion-mnist"}
        ``"digits"`` is scikit-learn's bundled 8x8 handwritten digits (1797 images, 17 grey
        levels, no download), split into train/test by a permutation seeded with ``seed``.
        ``"mnist"`` and ``"fashion-mnist"`` are read from ``root`` in torchvision's layout
        (``ROOT/MNIST/raw/*-ubyte.gz``, ``ROOT/FashionMNIST/raw/*-ubyte.gz``).
    root : path, optional
        Folder holding the raw files. Only read, never written to unless ``download=True``.
    download : bool
        Fetch missing MNIST files with torchvision (needs network access).
    seed : int
        Seeds the digits split, the dequantization noise, static binarization and subsetting.
    dequantize : bool
        Uniformly dequantize pixel values: ``(v + u) / levels``. If False, values are
        ``v / (levels - 1)``. Ignored when ``binarize`` is given.
    binarize : {None, "static", "dynamic"}
        Binary data for Bernoulli models (see :class:`Dataset`).
    n_train, n_test : int, optional
        Keep a seeded random subset of this many rows of each split.
    test_fraction : float
        Share of digits held out for testing.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Unknown name or option, corrupt files.
    FileNotFoundError
        Raw files missing under ``root``.
    """
    seed = check_seed(seed)
    key = str(name).lower().replace("_", "-")
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if binarize not in BINARIZE_MODES:
        raise InputError(f"binarize must be one of {BINARIZE_MODES}, got {binarize!r}")
    if key == "digits":
        xtr, ytr, xte, yte, image_shape, levels = _load_digits(seed, test_fraction)
    else:
        xtr, ytr, xte, yte, image_shape, levels = _load_idx_dataset(key, root, download)

    rng = np.random.default_rng(seed)
    tr = _subset(n_train, len(xtr), rng, "n_train")
    te = _subset(n_test, len(xte), rng, "n_test")
    xtr, ytr, xte, yte = xtr[tr], ytr[tr], xte[te], yte[te]
    v_train = torch.from_numpy(np.ascontiguousarray(xtr))
    v_test = torch.from_numpy(np.ascontiguousarray(xte))

    gen = torch.Generator().manual_seed(seed)
    if binarize is not None:
        train = v_train.to(torch.float32) / (levels - 1)
        test = _binarize(v_test.to(torch.float32) / (levels - 1), gen)
        if binarize == "static":
            train = _binarize(train, gen)
        deq = False
    elif dequantize:
        train = _dequantize(v_train, levels, gen)
        test = _dequantize(v_test, levels, gen)
        deq = True
    else:
        train = v_train.to(torch.float32) / (levels - 1)
        test = v_test.to(torch.float32) / (levels - 1)
        deq = False

    return Dataset(
        name=key,
        train=train,
        test=test,
        train_labels=torch.from_numpy(np.asarray(ytr, dtype=np.int64)),
        test_labels=torch.from_numpy(np.asarray(yte, dtype=np.int64)),
        image_shape=tuple(image_shape),
        levels=levels,
        dequantized=deq,
        binarize=binarize,
        info={"seed": seed, "root": None if root is None else str(root)},
    )


def as_image_shape(image_shape: Sequence[int] | None, data_dim: int) -> tuple[int, int] | None:
    """The (H, W) to draw a D-vector as, or None when it is not an image."""
    if image_shape is not None and int(np.prod(image_shape)) == data_dim:
        return tuple(int(s) for s in image_shape[-2:])  # type: ignore[return-value]
    side = round(data_dim**0.5)
    return (side, side) if side * side == data_dim else None


class MemmapDataset(torch.utils.data.Dataset):
    """Rows of a raw binary matrix on disk (a NumPy memmap layout, e.g. uint8 pixels), read on
    demand, for training on data larger than memory (``fit(vae, MemmapDataset(...))``).

    Rows are fetched with positioned reads (``os.pread``) rather than through a memory
    mapping: a mapping read in random order maps the neighbouring pages of every row (the
    kernel's fault-around), so one shuffled epoch over a 750 MiB file grew the resident set by
    the whole file; positioned reads leave the file in the OS page cache only.

    Parameters
    ----------
    path : path
        A file of ``n_rows * n_cols`` values of ``dtype``, row-major, no header.
    n_cols : int
        D, the values per row; the row count follows from the file size.
    dtype : numpy dtype
        Of the stored values (default uint8).
    scale : float
        Multiplies the values on reading (default 1/255: uint8 pixels to [0, 1]).

    ``dataset[rows]`` with a ``LongTensor`` (or list) of indices returns the float32 batch of
    shape (B, D); an integer index returns one row of shape (D,).
    """

    def __init__(self, path, n_cols: int, dtype=np.uint8, scale: float = 1.0 / 255.0):
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{path}: no such file")
        self.dtype = np.dtype(dtype)
        size = path.stat().st_size
        if n_cols < 1 or size == 0 or size % (self.dtype.itemsize * n_cols):
            raise InputError(
                f"{path}: {size} bytes is not a whole number of rows of {n_cols} {self.dtype}"
            )
        self.path, self.n_cols, self.scale = path, int(n_cols), float(scale)
        self._row_bytes = self.dtype.itemsize * self.n_cols
        self._n = size // self._row_bytes
        self._fd: int | None = None

    def __len__(self) -> int:
        return int(self._n)

    def __getstate__(self):  # picklable for DataLoader workers: reopen the file there
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        if rows.size and (rows.min() < -self._n or rows.max() >= self._n):
            raise IndexError(f"row index out of range for {self._n} rows")
        rows = np.where(rows < 0, rows + self._n, rows)
        rb = self._row_bytes
        buf = b"".join(os.pread(self._fd, rb, int(r) * rb) for r in rows)
        return np.frombuffer(buf, dtype=self.dtype).reshape(len(rows), self.n_cols)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        single = np.ndim(index) == 0
        rows = self._read(np.atleast_1d(np.asarray(index, dtype=np.int64)))
        out = torch.from_numpy(rows.astype(np.float32) * np.float32(self.scale))
        return out[0] if single else out


UNLABELLED = -1
"""The label of a row whose class is not known (``fit(..., labels=...)``, semi-supervised)."""


def labelled_subset(labels, n: int, *, seed: int = 0) -> torch.Tensor:
    """Keep ``n`` labels in all, ``n / C`` per class chosen with ``seed``; the others become
    :data:`UNLABELLED`.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Classes 0..C-1 (C the number of distinct values).
    n : int
        Labelled rows to keep, a multiple of C (balanced, as in Kingma et al. 2014).
    seed : int

    Returns
    -------
    torch.Tensor of int64, shape (N,)
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16):
        raise InputError(f"labels must be integers of shape (N,), got {labels.dtype} "
                         f"of shape {tuple(labels.shape)}")  # fmt: skip
    classes = torch.unique(labels[labels != UNLABELLED])
    c = len(classes)
    if isinstance(n, bool) or int(n) != n or n < c or n % max(c, 1):
        raise InputError(f"n must be a positive multiple of the {c} classes, got {n!r}")
    per = int(n) // c
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.full_like(labels.long(), UNLABELLED)
    for k in classes.tolist():
        rows = (labels == k).nonzero().flatten()
        if len(rows) < per:
            raise InputError(f"class {k} has {len(rows)} rows, fewer than the {per} asked for")
        keep = rows[torch.randperm(len(rows), generator=gen)[:per]]
        out[keep] = k
    return out
