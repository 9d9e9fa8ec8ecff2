"""The errors ppvae raises on purpose about its input.

Every check of a user's argument, file, data or program raises one of these, with one sentence
naming the parameter (never a command-line flag) and what is wrong. They subclass the built-in
exception a Python user would expect (``ValueError``, ``TypeError``, ``FileNotFoundError``), so
``except ValueError`` keeps working. The CLI reports exactly these as user errors (exit status
2, one line); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "MissingFileError", "ProgramError", "UnwritableError", "WrongTypeError"]


class InputError(ValueError):
    """A value, setting or data set that ppvae cannot use."""


class WrongTypeError(InputError, TypeError):
    """An argument of the wrong kind (a ``TypeError`` as well as an ``InputError``)."""


class ProgramError(InputError, TypeError):
    """A Pyro program that does not keep ppvae's data-plate contract (see ``ppvae.program``)."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder that does not exist."""


class UnwritableError(InputError, OSError):
    """A file that cannot be written where it was asked for (a missing or read-only folder, a
    full disk); an ``OSError`` as well as an ``InputError``."""
