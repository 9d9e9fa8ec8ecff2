"""Initial parameters drawn from :func:`~ppvae.fit`'s seed.

A network's initial weights come from torch's global generator when it is built, before ``fit``
seeds anything; torch seeds that generator at random in every process. So that
``fit(model, X, seed=s)`` is one run, bit for bit, in any process, the first ``fit`` of a
model draws its initial parameters again from ``s``:

* a ppvae model (one with ``config()``) is rebuilt from its configuration under
  ``torch.manual_seed(s)`` and its fresh parameters copied in: exactly the model its
  constructor builds after ``torch.manual_seed(s)``;
* any other module has ``reset_parameters()`` called, in registration order under
  ``torch.manual_seed(s)``, on every submodule that defines it (every PyTorch layer), which
  is again what building it after ``torch.manual_seed(s)`` gives for a stack of layers.

Parameters that ``fit`` has trained, that :func:`ppvae.load` read, or that were marked with
:func:`keep_parameters` (after setting them by hand) are never drawn again. torch's global
generator is left as it was.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["is_kept", "keep_parameters", "seed_parameters"]

_KEPT = "_ppvae_kept"


def keep_parameters(module: nn.Module) -> nn.Module:
    """Mark every parameter of ``module`` as set: :func:`~ppvae.fit` will not draw it again.

    Call it after giving a model initial values by hand (a warm start); models trained by
    ``fit`` or read by :func:`ppvae.load` are marked already.

    Returns
    -------
    nn.Module
        ``module`` itself.
    """
    for p in module.parameters():
        setattr(p, _KEPT, True)
    return module


def is_kept(param: torch.Tensor) -> bool:
    """Whether ``param`` was marked by :func:`keep_parameters`."""
    return bool(getattr(param, _KEPT, False))


def seed_parameters(module: nn.Module, seed: int) -> bool:
    """Draw the initial parameters of ``module`` from ``seed`` (see the module docstring).

    Only parameters not marked by :func:`keep_parameters` are drawn; torch's global random
    state is restored afterwards.

    Returns
    -------
    bool
        Whether any parameter was drawn.
    """
    params = list(module.parameters())
    if not params or all(is_kept(p) for p in params):
        return False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if not any(is_kept(p) for p in params) and _rebuild(module):
            return True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        drawn = False
        for sub in module.modules():
            own = list(sub.parameters(recurse=False))
            if callable(getattr(sub, "reset_parameters", None)) and own:
                if not any(is_kept(p) for p in own):
                    sub.reset_parameters()
                    drawn = True
        return drawn


def _rebuild(module: nn.Module) -> bool:
    """Copy in the parameters of a new ``type(module)(**module.config())``; False where the
    module has no configuration it can be rebuilt from."""
    config = getattr(module, "config", None)
    if not callable(config):
        return False
    try:
        fresh = type(module)(**config())
        state = fresh.state_dict()
        if {k: v.shape for k, v in state.items()} != {
            k: v.shape for k, v in module.state_dict().items()
        }:
            return False
    except Exception:  # a configuration that does not rebuild: reset the layers instead
        return False
    with torch.no_grad():
        module.load_state_dict(state)
    return True
