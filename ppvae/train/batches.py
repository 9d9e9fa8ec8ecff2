"""Training data as minibatches: in memory, or streamed from a dataset in fit's seeded order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from ..data import check_data, check_missing, row_blocks
from ..errors import InputError
from ..program import Program, ProgramInfo, check_support

__all__ = [
    "Stream",
    "blockwise",
    "fingerprint",
    "fingerprint_change",
    "same_fingerprint",
    "support_check",
]


def support_check(program: Program, info: ProgramInfo, binarize) -> Callable:
    """``check(x, what)`` raising ``InputError`` for values the program cannot score.

    Dynamic binarization needs intensities in [0, 1]; otherwise ppvae's own likelihoods check
    their support (their messages name the remedy) and any other program is checked against the
    support of the site that observes x, read from its trace.
    """
    if binarize == "dynamic":

        def check(x: torch.Tensor, what: str) -> None:
            if bool((x < 0).any()) or bool((x > 1).any()):
                raise InputError(f"{what}: dynamic binarization needs intensities in [0, 1]")

        return check
    likelihood = getattr(program.module, "likelihood", None) if program.is_ppvae else None
    if likelihood is not None:
        return likelihood.check_support
    return lambda x, what: check_support(info, x, what)


def blockwise(check: Callable) -> Callable:
    """``check(x, what)`` run on blocks of rows (:func:`~ppvae.data.row_blocks`), so that
    its temporaries stay small; where a block fails, the whole of x is checked again, so
    the error's counts are those of all of x."""

    def checked(x: torch.Tensor, what: str) -> None:
        for block in row_blocks(x):
            try:
                check(block, what)
            except InputError as exc:
                first = exc
                break
        else:
            return
        check(x, what)  # raises with the counts of all of x
        raise first

    return checked


def fingerprint(x: torch.Tensor) -> list:
    """Identity of a data matrix: rows, columns, sum and sum of squares in float64, and the
    SHA-256 of its float32 values (``"sha256:<hex>"``), so that any changed value shows."""
    x64 = x.detach().to(torch.float64)
    values = x.detach().to("cpu", torch.float32).contiguous().numpy()
    digest = hashlib.sha256(memoryview(values).cast("B")).hexdigest()
    return [
        float(x.shape[0]),
        float(x.shape[1]),
        float(x64.sum()),
        float((x64 * x64).sum()),
        f"sha256:{digest}",
    ]


def same_fingerprint(a: list, b: list) -> bool:
    """Whether two :func:`fingerprint` s are of the same data (by content where both carry a
    digest; a checkpoint written before digests compares shape and sums)."""
    return not fingerprint_change(a, b)


def fingerprint_change(saved: list, now: list) -> str:
    """What differs between the data a fingerprint ``saved`` was taken of and the data of
    ``now``, in words; empty where nothing does."""
    if saved[:2] != now[:2]:
        return (
            f"it had {int(saved[0])} rows of {int(saved[1])} columns, "
            f"now {int(now[0])} rows of {int(now[1])} columns"
        )
    sums = [
        abs(u - v) <= 1e-9 * max(1.0, abs(u), abs(v))
        for u, v in zip(saved[2:4], now[2:4], strict=True)
    ]
    if len(saved) > 4 and len(now) > 4:
        if saved[4] == now[4]:
            return ""
    elif all(sums):
        return ""
    if all(sums):
        return (
            "the same shape, sum and sum of squares, but other values (rows reordered or changed)"
        )
    return (
        f"the same shape, other values (sum {saved[2]:.6g}, now {now[2]:.6g}; "
        f"sum of squares {saved[3]:.6g}, now {now[3]:.6g})"
    )


class Stream:
    """Training data that stays where it is (a memory-mapped file, a database): a
    ``torch.utils.data.Dataset`` indexed batch by batch in ``fit``'s own seeded order.

    The dataset's ``__getitem__`` receives a ``LongTensor`` of row indices and may
    return the (B, D) batch at once (fast for NumPy memmaps); otherwise rows are fetched one
    by one and stacked. Each batch is validated (shape, finiteness, the program's support)
    before it is used, and the error names the batch. A ``DataLoader`` contributes its dataset:
    the order is fit's, so that a resumed run continues exactly where it stopped.
    """

    def __init__(self, data):
        self.dataset = data.dataset if isinstance(data, DataLoader) else data
        try:
            self.n = len(self.dataset)
        except TypeError:
            raise InputError("a streamed training set must have a length (len(dataset))") from None
        if self.n == 0:
            raise InputError("train: the dataset is empty")
        self.gen = torch.Generator()  # CPU: the permutation indexes host data
        self._batched = None
        self.data_dim: int | None = None  # known after the first batch
        self.allow_nan = False  # NaN marks a missing entry (a program that takes mask)
        self.check: Callable | None = None  # set by fit once the program is traced

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
        x = check_data(
            x, name=what, data_dim=self.data_dim, dtype=torch.float32, allow_nan=self.allow_nan
        )
        if self.check is not None:
            self.check(_observed_filled(x, what), what)
        return x

    def head(self, rows: int = 2) -> torch.Tensor:
        """The first rows, checked, for tracing the program."""
        x = check_data(
            self._fetch(torch.arange(min(self.n, rows))),
            name="train batch 1",
            data_dim=self.data_dim,
            dtype=torch.float32,
            allow_nan=self.allow_nan,
        )
        return x

    def fingerprint(self) -> list:
        """:func:`fingerprint` of the first 1024 rows, with the number of rows of the whole."""
        head = self._fetch(torch.arange(min(self.n, 1024)))
        return [float(self.n), *fingerprint(head.float())[1:]]


def _observed_filled(x: torch.Tensor, what: str) -> torch.Tensor:
    """``x`` with each missing (NaN) entry replaced by an observed value, for support checks;
    a row with nothing observed is refused."""
    missing = torch.isnan(x)
    if not bool(missing.any()):
        return x
    check_missing(~missing, what)
    return torch.where(missing, x[~missing][:1], x)
