"""A user's own data file as a :class:`~ppvae.data.Dataset`: ``.npy``, ``.csv`` or ``.parquet``.

Empty cells and NaN are missing entries (kept as NaN: PPCA-EM and ppvae's VAEs marginalize
them). The rows are split into train and test by a seeded permutation, and ``standardize``
centres and scales each column by its observed mean and standard deviation on the training
rows. The values stay on the data's own continuous scale: no dequantization, and likelihoods
of them are densities in nats on that scale.

This module imports nothing from the model side of the package.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from .data import Dataset
from .errors import InputError, MissingFileError

__all__ = ["TABLE_SUFFIXES", "load_table"]

TABLE_SUFFIXES = (".npy", ".csv", ".parquet")


def load_table(
    path: str | os.PathLike,
    *,
    standardize: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Read a numeric table with holes and split it into train and test.

    Parameters
    ----------
    path : path
        A ``.npy`` matrix (N, D), a ``.csv`` file (a header row is recognised when one of its
        cells is not a number), or a ``.parquet`` table (needs ``pyarrow``).
    standardize : bool
        Subtract each column's observed training mean and divide by its observed training
        standard deviation (both splits, with the training statistics).
    test_fraction : float
        Share of rows held out as the test split, in (0, 1); at least one row each side, two
        for training.
    seed : int
        Seeds the split.

    Returns
    -------
    Dataset
        ``train`` and ``test`` as float32 (N, D) tensors with NaN at missing entries;
        ``info`` holds the ``columns``, the ``source``, the share ``missing`` and, with
        ``standardize``, the ``center`` and ``scale`` used.

    Raises
    ------
    InputError
        A missing file, an unknown suffix, ragged rows, a non-numeric column, infinite
        values, a row or column with every entry missing, or fewer than 3 rows; each names
        the row (1-based line of the file) or column.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"data: {p} does not exist")
    suffix = p.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(
            f"data: {p} is neither .npy, .csv nor .parquet (got {p.suffix or 'no suffix'!r})"
        )
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    if suffix == ".npy":
        values, columns, first_line = _read_npy(p), None, 1
    elif suffix == ".csv":
        values, columns, first_line = _read_csv(p)
    else:
        values, columns, first_line = _read_parquet(p)
    columns = columns or [f"column {j}" for j in range(values.shape[1])]
    _check_values(p, values, columns, first_line, suffix)
    n = values.shape[0]
    n_test = min(n - 2, max(1, round(n * float(test_fraction))))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    X = torch.from_numpy(values.astype(np.float64))
    train, test = X[perm[n_test:]], X[perm[:n_test]]
    info = {
        "source": str(p),
        "columns": list(columns),
        "missing": float(np.isnan(values).mean()),
        "standardized": bool(standardize),
    }
    if standardize:
        center, scale = _observed_moments(train, columns)
        train, test = (train - center) / scale, (test - center) / scale
        info["center"], info["scale"] = center.tolist(), scale.tolist()
    return Dataset(
        name=p.stem,
        train=train.float(),
        test=test.float(),
        image_shape=None,
        levels=None,
        dequantized=False,
        info=info,
    )


def _read_npy(p: Path) -> np.ndarray:
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle: not numeric
        raise InputError(f"data: {p} does not hold a numeric array ({exc})") from None
    if arr.ndim != 2:
        raise InputError(f"data: {p} holds an array of shape {arr.shape}; expected (N, D)")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"data: {p} holds {arr.dtype} values; expected numbers")
    return arr.astype(np.float64)


def _is_number(cell: str) -> bool:
    if cell.strip().lower() in _BLANK:
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(p: Path) -> tuple[np.ndarray, list[str] | None, int]:
    with p.open(newline="") as f:
        rows = list(csv.reader(f))
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()  # trailing blank lines
    if not rows:
        raise InputError(f"data: {p} is empty")
    header = None
    if not all(_is_number(c) for c in rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    first_line = 2 if header is not None else 1
    width = len(header) if header is not None else len(rows[0]) if rows else 0
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(
                f"data: {p} line {i + first_line} has {len(row)} field(s), expected {width} "
                "(ragged rows)"
            )
    import pandas as pd  # lazy: only tables need it

    frame = pd.DataFrame(rows, columns=header if header is not None else range(width))
    return _numeric(p, frame, first_line), header, first_line


def _read_parquet(p: Path) -> tuple[np.ndarray, list[str], int]:
    import pandas as pd

    try:
        frame = pd.read_parquet(p)
    except ImportError as exc:
        raise InputError(
            f"data: reading {p} needs pyarrow (pip install 'ppvae[parquet]'): {exc}"
        ) from None
    return _numeric(p, frame, 1), [str(c) for c in frame.columns], 1


def _numeric(p: Path, frame, first_line: int) -> np.ndarray:
    """Every column as float64, empty cells as NaN; the first non-numeric cell is named."""
    import pandas as pd

    out = np.empty(frame.shape, dtype=np.float64)
    for j, name in enumerate(frame.columns):
        col = frame.iloc[:, j]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        cells = ["" if pd.isna(v) else str(v).strip() for v in col.tolist()]
        for i, cell in enumerate(cells):
            if cell.lower() in _BLANK:
                out[i, j] = np.nan
                continue
            try:
                out[i, j] = float(cell)
            except ValueError:
                raise InputError(
                    f"data: {p} column {name!r} is not numeric (line {i + first_line}: {cell!r})"
                ) from None
    return out


_BLANK = ("", "nan", "na", "none")


def _check_values(p: Path, values: np.ndarray, columns, first_line: int, suffix: str) -> None:
    where = "row" if suffix != ".csv" else "line"
    if values.shape[0] < 3:
        raise InputError(
            f"data: {p} has {values.shape[0]} row(s); a train/test split needs at least 3"
        )
    if values.shape[1] < 2:
        raise InputError(f"data: {p} has {values.shape[1]} column(s); at least 2 are needed")
    inf = np.isinf(values)
    if inf.any():
        i, j = (int(v) for v in np.argwhere(inf)[0])
        raise InputError(f"data: {p} {where} {i + first_line}, column {columns[j]!r} is infinite")
    missing = np.isnan(values)
    empty_rows = missing.all(axis=1)
    if empty_rows.any():
        i = int(np.flatnonzero(empty_rows)[0])
        raise InputError(
            f"data: {p} {where} {i + first_line} has every entry missing "
            f"({int(empty_rows.sum())} such row(s)); drop them"
        )
    empty_cols = missing.all(axis=0)
    if empty_cols.any():
        j = int(np.flatnonzero(empty_cols)[0])
        raise InputError(f"data: {p} column {columns[j]!r} is missing in every row; drop it")


def _observed_moments(X: torch.Tensor, columns) -> tuple[torch.Tensor, torch.Tensor]:
    observed = ~torch.isnan(X)
    count = observed.sum(0)
    if bool((count == 0).any()):
        j = int((count == 0).nonzero()[0])
        raise InputError(f"standardize: column {columns[j]!r} has no observed training value")
    X0 = torch.where(observed, X, torch.zeros((), dtype=X.dtype))
    center = X0.sum(0) / count
    var = (torch.where(observed, X - center, torch.zeros((), dtype=X.dtype)) ** 2).sum(0) / count
    scale = var.sqrt()
    if bool((scale == 0).any()):
        j = int((scale == 0).nonzero()[0])
        raise InputError(
            f"standardize: column {columns[j]!r} is constant on the training rows; drop it"
        )
    return center, scale
