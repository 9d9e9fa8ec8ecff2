"""Saving a VAE built with a user's own prior, guide or likelihood class.

A part that is not one of ppvae's own is saved as the import path of its class and the
keyword arguments of its constructor (``part.init_kwargs()``), never as a pickled object: the
file stays loadable with ``torch.load(weights_only=True)``, and loading imports the class by
name, checks that it is a subclass of the expected base, and calls it with those arguments.
The weights then come from the state dict as for any other part.
"""

from __future__ import annotations

import importlib

from .errors import InputError

__all__ = ["build_custom", "custom_config", "import_path"]


def import_path(cls: type) -> str:
    """``"package.module:QualName"`` of a class, refused where it could not be imported back
    (a class defined inside a function)."""
    if "<locals>" in cls.__qualname__:
        raise InputError(
            f"the class {cls.__qualname__} is defined inside a function, so a saved model "
            "could not import it again: define it at module level to save the model"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def custom_config(part, kwargs: dict) -> dict:
    """The saved form of a user's part: its class's import path and constructor arguments."""
    return {"import": import_path(type(part)), "kwargs": dict(kwargs)}


def build_custom(spec: dict, base: type, what: str):
    """Import ``spec["import"]`` (a subclass of ``base``) and build it from ``spec["kwargs"]``.

    Raises
    ------
    InputError
        One line naming the class, where it cannot be imported, is not a ``base``, or does
        not accept its saved arguments.
    """
    path = str(spec["import"])
    module_name, _, qualname = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for attr in qualname.split("."):
            obj = getattr(obj, attr)
    except Exception as exc:  # ImportError, AttributeError, or the module's own failure
        raise InputError(
            f"the {what} class {path!r} saved with the model cannot be imported "
            f"({type(exc).__name__}: {exc}); make the module that defines it importable "
            "(installed, or on sys.path) before loading"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise InputError(f"{path!r} saved as the model's {what} is not a {base.__name__} class")
    kwargs = dict(spec.get("kwargs") or {})
    try:
        return obj(**kwargs)
    except TypeError as exc:
        raise InputError(
            f"the {what} class {path!r} does not accept its saved arguments {kwargs} ({exc}); "
            "give it an init_kwargs() method returning its constructor's keyword arguments"
        ) from None
