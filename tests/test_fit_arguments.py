"""Every keyword of ``ppvae.fit`` refuses a bad value with one InputError that names it, before
any step is taken or anything is written (issue #18: the validation errors of every argument)."""

from __future__ import annotations

import pytest
import torch

import ppvae
from ppvae.errors import InputError
from ppvae.train import TrainConfig

X = torch.rand(40, 6, generator=torch.Generator().manual_seed(0))

# keyword values -> a fragment the error must contain (the parameter's name, at least)
BAD = {
    "epochs=1.5": ({"epochs": 1.5}, "epochs must be an integer"),
    "epochs=-1": ({"epochs": -1}, "epochs must be an integer >= 0"),
    "batch_size=0": ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    "lr<0": ({"lr": -1.0}, "lr must be positive"),
    "lr=nan": ({"lr": float("nan")}, "lr must be positive"),
    "lr=inf": ({"lr": float("inf")}, "lr must be finite"),
    "seed<0": ({"seed": -1}, "seed must be an integer >= 0"),
    "seed=2**32": ({"seed": 2**32}, "seed must be an integer in [0, 2**32)"),
    "seed=1.5": ({"seed": 1.5}, "seed must be an integer"),
    "test columns": ({"test": torch.rand(5, 7)}, "test: expected 6 columns"),
    "test all-NaN rows": ({"test": torch.full((3, 6), float("nan"))}, "test: 3 row(s)"),
    "elbo name": ({"elbo": "bad"}, "unknown elbo 'bad'"),
    "elbo type": ({"elbo": 3}, "elbo must be a name or a pyro.infer.ELBO"),
    "num_particles=0": ({"num_particles": 0}, "num_particles must be an integer >= 1"),
    "betas range": ({"betas": (1.2, 0.9)}, "betas must be two numbers in [0, 1)"),
    "betas length": ({"betas": (0.9,)}, "betas must be two numbers"),
    "lr_decay=0": ({"lr_decay": 0.0}, "lr_decay must be positive"),
    "decay_start=1": ({"decay_start": 1.0}, "decay_start must lie in [0, 1)"),
    "device name": ({"device": "tpu"}, "unknown device 'tpu'"),
    "binarize": ({"binarize": "yes"}, "binarize must be None or 'dynamic'"),
    "binarize range": ({"binarize": "dynamic", "train": X * 3}, "dynamic binarization needs"),
    "clip_norm=0": ({"clip_norm": 0.0}, "clip_norm must be positive"),
    "kl_weight<0": ({"kl_weight": -1.0}, "kl_weight must be a finite number >= 0"),
    "kl_weight=nan": ({"kl_weight": float("nan")}, "kl_weight must be a finite number"),
    "kl_warmup_epochs<0": ({"kl_warmup_epochs": -1}, "kl_warmup_epochs must be an integer"),
    "resume without dir": ({"resume": True}, "resume=True needs checkpoint_dir"),
    "overwrite without dir": ({"overwrite": True}, "overwrite=True needs checkpoint_dir"),
    "metadata without dir": ({"metadata": {"a": 1}}, "metadata is stored in the checkpoint"),
    "progress": ({"progress": "yes"}, "progress must be True, False or None"),
    "validate": ({"validate": "x"}, "validate must be True, False or None"),
    "labels shape": (
        {"labels": torch.zeros(3, dtype=torch.long), "program": "stacked"},
        "labels must be integers of shape (40,)",
    ),
    "labels dtype": (
        {"labels": torch.zeros(40), "program": "stacked"},
        "labels must be integers",
    ),
    "labels for a program without y": (
        {"labels": torch.zeros(40, dtype=torch.long)},
        "take no y argument",
    ),
    "labels with test": (
        {"labels": torch.zeros(40, dtype=torch.long), "program": "stacked", "test": X[:5]},
        "test ELBOs are not computed for a labelled fit",
    ),
    "hooks type": ({"hooks": 3}, "hooks must be a sequence of Hook objects"),
    "hooks entry": ({"hooks": [object()]}, "has none of the hook methods"),
    "config type": ({"config": {"epochs": 1}}, "config must be a TrainConfig"),
    "mask shape": ({"mask": torch.ones(40, 5, dtype=torch.bool)}, "mask: shape (40, 5)"),
    "mask dtype": ({"mask": torch.rand(40, 6)}, "mask: expected a boolean array"),
    "mask for an autoencoder": (
        {"mask": torch.rand(40, 6) > 0.2, "program": "autoencoder"},
        "cannot marginalize missing entries",
    ),
}


def _program(kind: str):
    torch.manual_seed(0)
    if kind == "stacked":  # the fine-tuning program, whose model and guide take y
        return ppvae.StackedAutoencoder(6, (4, 2), n_classes=2).classifier_program()
    if kind == "autoencoder":
        return ppvae.Autoencoder(6, 2, hidden=(8,))
    return ppvae.VAE(6, 2, hidden=(8,))


@pytest.mark.parametrize("case", list(BAD))
def test_every_fit_keyword_refuses_a_bad_value_by_name(case, tmp_path):
    kwargs, fragment = dict(BAD[case][0]), BAD[case][1]
    program = _program(kwargs.pop("program", "vae"))
    train = kwargs.pop("train", X)
    before = {k: v.clone() for k, v in program.state_dict().items()}
    with pytest.raises(InputError) as err:
        ppvae.fit(program, train, **{"epochs": 1, "progress": False, **kwargs})
    assert fragment in str(err.value), str(err.value)
    for k, v in program.state_dict().items():  # refused before any step
        torch.testing.assert_close(v, before[k], msg=f"{case}: {k} changed")


def test_checkpoint_dir_errors_leave_the_folder_as_it_was(tmp_path):
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("keep me")
    with pytest.raises(InputError, match="exists and is not a folder"):
        ppvae.fit(_program("vae"), X, epochs=1, checkpoint_dir=a_file, progress=False)
    assert a_file.read_text() == "keep me"

    run = tmp_path / "run"
    ppvae.fit(_program("vae"), X, epochs=1, checkpoint_dir=run, progress=False)
    written = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(InputError, match=r"already holds a run's checkpoint\.pt"):
        ppvae.fit(_program("vae"), X, epochs=2, checkpoint_dir=run, progress=False)
    with pytest.raises(InputError, match="resume=True and overwrite=True exclude each other"):
        ppvae.fit(
            _program("vae"), X, epochs=2, checkpoint_dir=run, resume=True, overwrite=True,
            progress=False,
        )  # fmt: skip
    with pytest.raises(InputError, match="metadata must be JSON-able"):
        ppvae.fit(
            _program("vae"), X, epochs=2, checkpoint_dir=run, resume=True,
            metadata={"a": object()}, progress=False,
        )  # fmt: skip
    with pytest.raises(InputError, match="metadata must be a dict"):
        ppvae.fit(
            _program("vae"), X, epochs=2, checkpoint_dir=run, overwrite=True, metadata=[1],
            progress=False,
        )  # fmt: skip
    assert (run / "checkpoint.pt").read_bytes() == written  # the finished run is intact


def test_a_config_object_and_keywords_agree_with_the_keywords_alone():
    via_config = ppvae.fit(
        _program("vae"), X, config=TrainConfig(epochs=2, lr=0.01, seed=3), progress=False
    )
    via_keywords = ppvae.fit(_program("vae"), X, epochs=2, lr=0.01, seed=3, progress=False)
    assert via_config.train_elbo == via_keywords.train_elbo
    overridden = ppvae.fit(
        _program("vae"), X, config=TrainConfig(epochs=5, lr=0.01, seed=3), epochs=2,
        progress=False,
    )  # fmt: skip
    assert len(overridden.train_elbo) == 2 and overridden.train_elbo == via_keywords.train_elbo
