"""Upstream workaround, quarantined: Pyro's JIT ELBOs, compiled once per key.

Two faults of pyro-ppl 1.9 are worked around here and nowhere else:

* ``JitTraceMeanField_ELBO`` stores its compiled loss under ``_differentiable_loss`` but tests
  ``_loss_and_surrogate_loss`` before building it, so it re-traces on every call (4-6x slower
  than no JIT). :class:`_JitTraceMeanFieldOnce` sets the attribute it tests.
* Neither JIT ELBO keys its compiled trace on tensor shapes or handler weights, and both bind
  the model and guide of their first call; :class:`_TraceKeyed` keeps one compiled instance
  per (model, guide, shapes, options, :attr:`~_TraceKeyed.trace_key`).

:data:`PATCH_APPLIES` checks that the installed Pyro still has the attributes the first fix
relies on; where it does not, ``fit(elbo="auto")`` warns once and runs the eager estimator
(the same objective), and the JIT estimators by name raise.
"""

from __future__ import annotations

import time
import types
import warnings

import pyro
import torch
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

__all__ = ["PATCH_APPLIES", "CachedJitTraceMeanField_ELBO", "CachedJitTrace_ELBO"]


def _patch_applies() -> bool:
    """Whether ``JitTraceMeanField_ELBO.differentiable_loss`` still guards on
    ``_loss_and_surrogate_loss`` and caches in ``_differentiable_loss`` (pyro-ppl 1.9.x)."""
    code = getattr(JitTraceMeanField_ELBO.differentiable_loss, "__code__", None)
    if code is None:
        return False
    # attribute names, whether read as ``self.name`` or by ``getattr(self, "name")``
    names = set(code.co_names) | {c for c in code.co_consts if isinstance(c, str)}
    return {"_loss_and_surrogate_loss", "_differentiable_loss"} <= names


PATCH_APPLIES = _patch_applies()


class _JitTraceMeanFieldOnce(JitTraceMeanField_ELBO):
    """``JitTraceMeanField_ELBO`` that compiles once.

    In pyro-ppl 1.9.2 the parent stores its compiled loss under ``_differentiable_loss`` but
    tests ``_loss_and_surrogate_loss`` before building it, so it re-traces on every call (4-6x
    slower than no JIT). Setting the attribute it tests makes it reuse the compiled loss.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if not PATCH_APPLIES:
            raise RuntimeError(
                "the installed pyro-ppl's JitTraceMeanField_ELBO no longer has the attributes "
                "ppvae's workaround patches (ppvae.train.pyro_jit); use elbo='meanfield'"
            )
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

