"""Labels beside the data: the unlabelled sentinel, validation, a balanced labelled subset."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppvae
from ppvae.data import UNLABELLED, labelled_subset
from ppvae.errors import InputError


def test_labelled_subset_is_balanced_seeded_and_marks_the_rest():
    ds = ppvae.load_dataset("digits", seed=0)
    kept = labelled_subset(ds.train_labels, 50, seed=3)
    assert kept.shape == ds.train_labels.shape
    labelled = kept != UNLABELLED
    assert int(labelled.sum()) == 50
    assert torch.equal(kept[labelled], ds.train_labels[labelled])  # the true labels, kept
    assert torch.bincount(kept[labelled], minlength=10).tolist() == [5] * 10
    assert torch.equal(kept, labelled_subset(ds.train_labels, 50, seed=3))
    assert not torch.equal(kept, labelled_subset(ds.train_labels, 50, seed=4))
    with pytest.raises(InputError, match="multiple of the 10 classes"):
        labelled_subset(ds.train_labels, 55)


class _Classes(torch.nn.Module):
    """A program that takes labels (and ignores them): only the checks are under test."""

    n_classes = 3

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(2))

    def model(self, x, y=None):
        pyro.module("classes", self)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(self.loc, 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        pass


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0, 1, 2, -2]), r"found -2\.\.2"),
        (torch.tensor([0, 1, 3, 0]), r"below n_classes=3.*found 0\.\.3"),
        (torch.tensor([0.0, 1.0, 2.0, 0.0]), "integers"),
        (torch.tensor([0, 1, 2]), r"shape \(4,\)"),
    ],
)
def test_bad_labels_are_refused_by_name(labels, match):
    with pytest.raises(InputError, match=match):
        ppvae.fit(_Classes(), torch.randn(4, 2), labels=labels, epochs=1, progress=False)


def test_unlabelled_rows_are_accepted():
    labels = torch.tensor([0, UNLABELLED, 2, UNLABELLED])
    h = ppvae.fit(_Classes(), torch.randn(4, 2), labels=labels, epochs=1, progress=False)
    assert h.steps == 1


class _Rows(torch.utils.data.Dataset):
    """A streamed training set: rows fetched by index, nothing held by fit."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def test_streamed_rows_with_labels_in_memory_train_as_the_in_memory_run():
    """Labels (8 bytes a row) stay in memory beside a streamed x; minibatch rows pick both.
    The streamed run equals the in-memory one bit for bit (it once traced the program on
    the first minibatch's rows with all N labels, and failed)."""
    x = torch.rand(150, 6)
    y = labelled_subset(torch.arange(150) % 3, 30, seed=0)
    curves = []
    for data in (x, _Rows(x)):
        torch.manual_seed(0)
        m = ppvae.SemiSupervisedVAE(6, 3, 2, hidden=(8,), likelihood="gaussian")
        curves.append(ppvae.fit(m, data, labels=y, epochs=2, batch_size=64, seed=0).train_elbo)
    assert curves[0] == curves[1]
