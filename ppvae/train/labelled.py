"""Labelled rows in every minibatch (``fit(labelled_per_batch=b)``): a stratified sampler and
the objective that keeps it unbiased.

With 100 labels among 60,000 images a uniform minibatch of 100 holds a labelled row about
every sixth step, and the labelled terms (the supervised ELBO and the classifier's
``alpha log q(y | x)``) reach the gradient that rarely. Kingma et al.'s M2 is trained with
labelled rows in every minibatch. Here each minibatch of B rows holds ``b`` labelled rows
(cycling through the labelled set in a fresh random order) and ``B - b`` unlabelled ones
(one pass over the unlabelled set per epoch). The loss is the sum of the estimator on each
part, its data plate scaled by its own set: N_l / b on the labelled part, N_u / (B - b) on
the unlabelled one. That is an unbiased estimate of the same full-data objective as uniform
minibatches, so the reported ELBO means what it always does; only its variance changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["StratifiedLabelledLoss", "stratified_batches", "stratified_permutation"]


def stratified_batches(n_unlabelled: int, batch_size: int, per_batch: int) -> int:
    """Minibatches per epoch: one pass over the unlabelled rows, ``batch_size - per_batch``
    of them per minibatch."""
    return math.ceil(n_unlabelled / (batch_size - per_batch))


def stratified_permutation(
    labelled: torch.Tensor, unlabelled: torch.Tensor, batch_size: int, per_batch: int,
    generator: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    """One epoch's row order: consecutive slices of ``batch_size`` rows each hold
    ``per_batch`` labelled rows then ``batch_size - per_batch`` unlabelled ones (the last
    slice fewer unlabelled ones).

    Parameters
    ----------
    labelled, unlabelled : int64 tensors of shape (N_l,), (N_u,)
        Row indices of the two sets.
    generator : torch.Generator
        The run's generator (on the indices' device): the order is fixed by the seed.

    Returns
    -------
    int64 tensor of shape (n_batches * per_batch + N_u,)
    """
    dev = labelled.device
    n_batches = stratified_batches(len(unlabelled), batch_size, per_batch)
    cycles = math.ceil(n_batches * per_batch / len(labelled))
    lab = torch.cat(
        [labelled[torch.randperm(len(labelled), device=dev, generator=generator)]
         for _ in range(cycles)]
    )[: n_batches * per_batch].view(n_batches, per_batch)  # fmt: skip
    unl = unlabelled[torch.randperm(len(unlabelled), device=dev, generator=generator)]
    per_unl = batch_size - per_batch
    parts = []
    for b in range(n_batches):
        parts += [lab[b], unl[b * per_unl : (b + 1) * per_unl]]
    return torch.cat(parts)


class StratifiedLabelledLoss:
    """An ELBO estimator's loss on a minibatch of labelled and unlabelled rows, each part with
    its own data-plate scale.

    ``differentiable_loss(model, guide, *args, y=..., **kwargs)`` splits the positional
    tensors (``x``, and a mask where there is one) and ``y`` by ``y >= 0`` and returns
    ``loss(labelled part, N_l) + loss(unlabelled part, N_u)``. The ``model`` and ``guide``
    passed are ignored: the program is bound once per part (``bind(N_l)``, ``bind(N_u)``),
    so that a program whose plate takes no ``num_data`` is scaled right too.

    Parameters
    ----------
    loss : pyro.infer.ELBO
        The estimator (``TraceEnum_ELBO`` for M2).
    labelled, unlabelled : (model, guide, N)
        The program bound to the labelled set of N_l rows, and to the unlabelled one.
    """

    def __init__(self, loss, labelled: tuple[Callable, Callable, int],
                 unlabelled: tuple[Callable, Callable, int]) -> None:  # fmt: skip
        self.loss, self.parts = loss, (labelled, unlabelled)

    def differentiable_loss(self, model, guide, *args, y: torch.Tensor, num_data=None, **kwargs):
        known = y >= 0
        total = None
        for keep, (part_model, part_guide, n) in zip((known, ~known), self.parts, strict=True):
            rows = keep.nonzero().squeeze(-1)
            if len(rows) == 0:
                continue
            part = [a.index_select(0, rows) if torch.is_tensor(a) else a for a in args]
            value = self.loss.differentiable_loss(
                part_model, part_guide, *part, y=y.index_select(0, rows), num_data=n, **kwargs
            )
            total = value if total is None else total + value
        return total
