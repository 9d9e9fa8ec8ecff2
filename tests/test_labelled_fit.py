"""``ppvae fit --model cvae|ssvae --labels N`` and :func:`ppvae.workflows.fit_labelled`
(issue 29, deliver 6): the test error, its curve, conditional samples, a report; resumable."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import ppvae
from ppvae import workflows
from ppvae.cli import main
from ppvae.errors import InputError
from ppvae.workflows.labelled import classification_error

TINY = {"latent_dim": 2, "hidden": (16,), "iw_samples": 10, "progress": False}


def test_ssvae_reports_its_error_curve_samples_and_saves_the_model_it_scored(tmp_path):
    out = tmp_path / "ss"
    r = workflows.fit_labelled("digits", model="ssvae", labels=50, epochs=2, out=out, **TINY)
    m = r.metrics
    ds = ppvae.load_dataset("digits", seed=0)
    assert m["labels_used"] == 50 and m["n_train_rows_used"] == len(ds.train)
    assert [e for e, _ in m["test_error_curve"]] == [1, 2]
    assert m["alpha"] == pytest.approx(0.1 * len(ds.train) / 50)  # Kingma et al.'s default
    # the number reported is the saved model's own error on the test split
    loaded = ppvae.load(out / "model.pt")
    assert isinstance(loaded, ppvae.SemiSupervisedVAE)
    assert classification_error(loaded, ds.test, ds.test_labels) == m["test_error"]
    assert m["test_error"] == m["test_error_curve"][-1][1]
    assert 0.0 <= m["logistic_regression_test_error"] < 0.5  # 50 digits suffice for < 50%
    report = (out / "report.md").read_text()
    assert f"{m['test_error']:.2%}" in report and "error_curve.png" in report
    for name in ("error_curve.png", "conditional_samples.png", "metrics.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "metrics.json").read_text())["test_error"] == m["test_error"]


def test_cvae_trains_on_the_labelled_rows_and_resumes_its_curve(tmp_path):
    out = tmp_path / "cv"
    first = workflows.fit_labelled("digits", model="cvae", labels=30, epochs=2, out=out, **TINY)
    assert first.metrics["n_train_rows_used"] == 30
    assert (
        first.metrics["iw_samples"] == 10 and "test_log_likelihood_given_label_iw" in first.metrics
    )
    more = workflows.fit_labelled(
        "digits", model="cvae", labels=30, epochs=3, out=out, resume=True, **TINY
    )
    curve = more.metrics["test_error_curve"]
    assert [e for e, _ in curve] == [1, 2, 3]
    assert curve[:2] == first.metrics["test_error_curve"]  # kept by the checkpoint


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"model": "ssvae", "labels": 7}, "labels must be a positive multiple of the 10"),
        ({"model": "cvae", "alpha": 1.0}, "alpha"),
        ({"model": "ssvae", "conditional_prior": True}, "conditional_prior"),
        ({"model": "vae"}, "model must be one of cvae, ssvae"),
    ],
)
def test_bad_settings_are_refused_by_name_before_training(kwargs, needle):
    with pytest.raises(InputError, match=needle):
        workflows.fit_labelled("digits", epochs=1, **kwargs)


def test_a_table_without_labels_is_refused():
    ds = ppvae.Dataset("table", torch.rand(40, 3), torch.rand(10, 3))
    with pytest.raises(InputError, match="has no labels"):
        workflows.fit_labelled(ds, model="ssvae", labels=None, epochs=1)


def test_the_cli_prints_the_test_error(tmp_path, capsys):
    argv = ["fit", "--model", "ssvae", "--labels", "20", "--n-train", "200", "--epochs", "1",
            "--latent-dim", "2", "--hidden", "8", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert "test error" in line and "with 20 labels" in line and "report.md" in line


def _fingerprint(result) -> str:
    weights = [v.numpy().tobytes() for v in result.models["model"].state_dict().values()]
    return hashlib.sha256(b"".join(weights)).hexdigest()


@pytest.mark.parametrize(
    "model, keyword, value",
    [("ssvae", "labels", 20), ("ssvae", "alpha", 5.0), ("cvae", "conditional_prior", True)],
)
def test_each_keyword_of_a_labelled_model_changes_the_trained_model(model, keyword, value):
    """The model-specific keywords of fit_labelled (test_every_option.py follows the common
    ones and the CLI's options to this call) each change what is trained."""
    ds = workflows.load("digits", n_train=60, n_test=12)
    base = {"model": model, "labels": 10, "latent_dim": 2, "hidden": (4,), "epochs": 1}
    before = _fingerprint(workflows.fit_labelled(ds, **base, iw_samples=5, progress=False))
    after = workflows.fit_labelled(ds, **{**base, keyword: value}, iw_samples=5, progress=False)
    assert _fingerprint(after) != before
