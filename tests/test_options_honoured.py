"""Every model-specific option of ``ppvae fit`` is honoured or refused (issue 32, deliver 4).

The table below is written out by hand (not read from the CLI's own tables, which would make
the test agree with any bug in them): for each model, the options it honours. Every other
model-specific option is refused with exit 2 naming it, before any work; an honoured one
reaches the workflow with the value given.
"""

from __future__ import annotations

import types

import pytest

from ppvae import workflows
from ppvae.cli import main

VALUES = {
    "prior": ["--prior", "mog"],
    "architecture": ["--architecture", "conv"],
    "guide": ["--guide", "fullrank"],
    "elbo": ["--elbo", "trace"],
    "num_particles": ["--num-particles", "2"],
    "kl_weight": ["--kl-weight", "0.5"],
    "kl_warmup": ["--kl-warmup", "2"],
    "iw_samples": ["--iw-samples", "7"],
    "noise": ["--noise", "gaussian"],
    "noise_level": ["--noise-level", "0.2"],
    "sparsity": ["--sparsity", "l1"],
    "rho": ["--rho", "0.1"],
    "beta": ["--beta", "5.0"],
    "l1": ["--l1", "0.01"],
    "contraction": ["--contraction", "0.2"],
    "finetune_epochs": ["--finetune-epochs", "3"],
    "labels": ["--labels", "50"],
    "alpha": ["--alpha", "2.5"],
    "conditional_prior": ["--conditional-prior"],  # a switch: reaches the workflow as True
}
HONOURS = {
    "vae": {
        "prior",
        "architecture",
        "guide",
        "elbo",
        "num_particles",
        "kl_weight",
        "kl_warmup",
        "iw_samples",
    },
    "ae": set(),
    "dae": {"noise", "noise_level"},
    "sae": {"sparsity", "rho", "beta"},  # the default KL penalty; --sparsity l1 takes --l1
    "cae": {"contraction"},
    "stacked": {"noise_level", "finetune_epochs", "labels"},
    "cvae": {"labels", "conditional_prior", "iw_samples"},
    "ssvae": {"labels", "alpha"},
}
CASES = [(model, option) for model in HONOURS for option in VALUES]


def _captured(monkeypatch) -> dict:
    seen: dict = {}

    def capture(ds, **kwargs):
        seen.update(kwargs)
        return types.SimpleNamespace(metrics={})  # as a non-zero rank: nothing to print

    monkeypatch.setattr(workflows, "fit_vae", capture)
    monkeypatch.setattr(workflows, "fit_autoencoder", capture)
    monkeypatch.setattr(workflows, "fit_labelled", capture)
    return seen


def _fit(model, extra, tmp_path, capsys, monkeypatch):
    seen = _captured(monkeypatch)
    argv = ["fit", "--model", model, "--n-train", "60", "--n-test", "20", "--epochs", "0"]
    code = main([*argv, *extra, "--out", str(tmp_path / "o")])
    return code, capsys.readouterr().err.strip().splitlines(), seen


@pytest.mark.parametrize("model, option", CASES, ids=[f"{m}-{o}" for m, o in CASES])
def test_each_option_is_honoured_or_refused(model, option, tmp_path, capsys, monkeypatch):
    given = VALUES[option]
    flag, value = given[0], (given[1] if len(given) > 1 else "True")
    code, err, seen = _fit(model, given, tmp_path, capsys, monkeypatch)
    if option in HONOURS[model]:
        assert code == 0, err
        assert str(seen[option]) == value, (option, seen.get(option))
    else:
        assert code == 2 and len(err) == 1 and flag in err[0], err
        assert not seen  # refused before the workflow ran


@pytest.mark.parametrize(
    "extra, refused",
    [
        (["--sparsity", "l1", "--rho", "0.1"], "--rho"),
        (["--sparsity", "l1", "--beta", "100"], "--beta"),
        (["--l1", "5"], "--l1"),  # the default penalty is the KL one
        (["--sparsity", "kl", "--l1", "5"], "--l1"),
        (["--sparsity", "l1", "--l1", "5"], None),
        (["--rho", "0.1", "--beta", "5"], None),
    ],
)
def test_the_sparse_autoencoder_takes_the_options_of_its_penalty(
    extra, refused, tmp_path, capsys, monkeypatch
):
    code, err, seen = _fit("sae", extra, tmp_path, capsys, monkeypatch)
    if refused is None:
        assert code == 0 and seen["sparsity"] == (extra[1] if extra[0] == "--sparsity" else "kl")
    else:
        assert code == 2 and len(err) == 1 and refused in err[0] and "--sparsity" in err[0], err


def test_the_options_reach_the_model(tmp_path):
    """What the workflow receives changes the model it builds (the penalty's own weights)."""
    def sae(**kw):
        return workflows.make_autoencoder("sae", 64, 2, hidden=(8,), **kw).config()

    assert sae(sparsity="l1", l1=0.01) != sae(sparsity="l1", l1=5.0)
    assert sae(sparsity="kl", rho=0.1, beta=5.0) != sae(sparsity="kl")


@pytest.mark.parametrize("command", ["run", "fit", "check-ppca", "compare"])
@pytest.mark.parametrize("option", [["--data-root", "/nonexistent"], ["--download"]])
def test_data_root_and_download_are_refused_with_the_bundled_digits(
    command, option, tmp_path, capsys
):
    code = main([command, *option, "--epochs", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and option[0] in err[0] and "bundled" in err[0], err
