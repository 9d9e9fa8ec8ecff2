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
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import Dataset, check_seed
from .errors import InputError, MissingFileError

__all__ = ["TABLE_SUFFIXES", "Standardization", "load_table", "write_table"]

TABLE_SUFFIXES = (".npy", ".csv", ".parquet")


def load_table(
    path: str | os.PathLike,
    *,
    standardize: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    header: bool | None = None,
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
    header : bool, optional
        For a ``.csv``: whether its first line names the columns. ``None`` (default) detects
        it: a first line with a cell that is not a number is a header, and so is one that
        reads ``0,1,...`` or ``,0,1,...`` (pandas' names for unnamed columns); otherwise the
        first line is data, and ``info["notes"]`` says so. ``False`` refuses a first line
        that is not numeric; ``True`` always takes the first line as the names.
        An unnamed first column of distinct integers (``DataFrame.to_csv()``'s index) is
        dropped, and ``info["notes"]`` says so.

    Returns
    -------
    Dataset
        ``train`` and ``test`` as float32 (N, D) tensors with NaN at missing entries;
        ``info`` holds the ``columns``, the ``source``, the share ``missing`` and, with
        ``standardize``, the ``center`` and ``scale`` used; ``notes``: what was assumed
        in reading the file (no header, an index column dropped), one sentence each.

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
    seed = check_seed(seed)
    if not isinstance(standardize, (bool, np.bool_)):
        raise InputError(f"standardize must be True or False, got {standardize!r}")
    if isinstance(test_fraction, (bool, str)) or not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    if header not in (None, True, False):
        raise InputError(f"header must be None (detect), True or False, got {header!r}")
    notes: list[str] = []
    if suffix == ".npy":
        values, columns, first_line = _read_npy(p), None, 1
    elif suffix == ".csv":
        values, columns, first_line = _read_csv(p, header, notes)
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
        "notes": notes,
        "rows": {"train": perm[n_test:].tolist(), "test": perm[:n_test].tolist()},
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
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(
            f"data: {p} holds complex values ({arr.dtype}); expected real numbers (split the "
            "real and imaginary parts into columns of their own)"
        )
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


def _read_csv(p: Path, header: bool | None, notes: list) -> tuple:
    with p.open(newline="") as f:
        rows = list(csv.reader(f))
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()  # trailing blank lines
    if not rows:
        raise InputError(f"data: {p} is empty")
    names = None
    first = [c.strip() for c in rows[0]]
    numeric = all(_is_number(c) for c in first)
    if header is False and not numeric:
        cell = next(c for c in first if not _is_number(c))
        raise InputError(
            f"data: {p} line 1 is not numeric ({cell!r}) but header=False says it is data"
        )
    if header is None and numeric and _pandas_names(first):
        header = True
        notes.append(
            f"the first line of {p.name} ({','.join(first)}) is read as a header: it is "
            "pandas' numbering of unnamed columns"
        )
    if header or (header is None and not numeric):
        names, rows = first, rows[1:]
    elif header is None:
        notes.append(
            f"{p.name} has no header (its first line is all numbers): read as data, the "
            "columns numbered from 0"
        )
    first_line = 2 if names is not None else 1
    width = len(names) if names is not None else len(rows[0]) if rows else 0
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(
                f"data: {p} line {i + first_line} has {len(row)} field(s), expected {width} "
                "(ragged rows)"
            )
    import pandas as pd  # lazy: only tables need it

    frame = pd.DataFrame(rows, columns=names if names is not None else range(width))
    values = _numeric(p, frame, first_line)
    if names is not None and names and names[0] in ("", "Unnamed: 0") and _is_index(values[:, 0]):
        notes.append(
            f"the unnamed first column of {p.name} holds distinct integers (a written "
            "DataFrame's index, as DataFrame.to_csv() writes it): dropped"
        )
        values, names = values[:, 1:], names[1:]
    return values, names, first_line


def _pandas_names(cells: list[str]) -> bool:
    """Whether a numeric first line is pandas' header of unnamed columns: ``0,1,...,D-1``,
    or the same after an empty cell (the index's)."""
    body = cells[1:] if cells and cells[0] == "" else cells
    return len(body) >= 2 and body == [str(j) for j in range(len(body))]


def _is_index(column: np.ndarray) -> bool:
    """Distinct integers with nothing missing: row numbers, not a feature."""
    return (
        not np.isnan(column).any()
        and bool(np.all(column == np.round(column)))
        and len(np.unique(column)) == len(column)
    )


def _read_parquet(p: Path) -> tuple[np.ndarray, list[str], int]:
    import pandas as pd

    try:
        frame = pd.read_parquet(p)
    except ImportError as exc:
        raise InputError(
            f"data: reading {p} needs pyarrow (pip install 'ppvae[parquet]'): {exc}"
        ) from None
    except Exception as exc:  # pyarrow's ArrowInvalid, OSError, ...: a damaged or other file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"data: {p} is not a readable parquet file ({first[:200]})") from None
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


@dataclass(frozen=True)
class Standardization:
    """The centres and scales a table's columns were standardized with:
    ``x_std = (x - center) / scale``, undone by ``x = x_std * scale + center``.

    A model trained on standardized rows takes :meth:`transform` of raw rows, its outputs
    (reconstructions, samples, imputations) go back with :meth:`inverse`, and a log-density
    of a standardized row plus :attr:`log_density_shift` is the log-density of the raw row.
    """

    columns: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def from_dict(cls, record: dict | None) -> Standardization | None:
        """From the ``standardization`` record of a report or a saved model (None: none)."""
        if not record:
            return None
        return cls(
            tuple(record.get("columns") or ()), tuple(record["center"]), tuple(record["scale"])
        )

    @property
    def log_density_shift(self) -> float:
        """``-sum(log scale)``: add it to a log-density of standardized rows."""
        return -sum(math.log(v) for v in self.scale)

    def transform(self, x) -> torch.Tensor:
        """Raw rows (N, D) to the standardized scale the model was trained on."""
        c, s = self._tensors(x)
        return (torch.as_tensor(x, dtype=c.dtype) - c) / s

    def inverse(self, x) -> torch.Tensor:
        """Standardized rows (N, D) back to the raw scale."""
        c, s = self._tensors(x)
        return torch.as_tensor(x, dtype=c.dtype) * s + c

    def _tensors(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = x.dtype if isinstance(x, torch.Tensor) and x.is_floating_point() else None
        c = torch.tensor(self.center, dtype=dtype or torch.float64)
        if np.shape(x)[-1] != c.shape[0]:
            raise InputError(
                f"x has {np.shape(x)[-1]} columns; the standardization has {c.shape[0]}"
            )
        return c, torch.tensor(self.scale, dtype=c.dtype)

    def to_dict(self) -> dict:
        """JSON-able, with the log-density shift."""
        return {
            "columns": list(self.columns),
            "center": list(self.center),
            "scale": list(self.scale),
            "log_density_shift": self.log_density_shift,
        }


def write_table(path: str | os.PathLike, X, columns) -> Path:
    """Write rows ``X`` (N, D) as a CSV with a header of ``columns`` (missing entries empty).

    Raises
    ------
    InputError
        The folder of ``path`` does not exist or cannot be written.
    """
    p = Path(path)
    X = np.asarray(X, dtype=np.float64)
    lines = [",".join(str(c) for c in columns)]
    lines += [",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in X]
    try:
        p.write_text("\n".join(lines) + "\n")
    except OSError as exc:
        raise InputError(f"{p} cannot be written: {exc.strerror or exc}") from None
    return p
