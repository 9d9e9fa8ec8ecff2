"""``ppvae fit --model cvae|ssvae --labels N`` and :func:`ppvae.workflows.fit_labelled`
(issue 29, deliver 6): the test error, its curve, conditional samples, a report; resumable."""

from __future__ import annotations

import hashlib
import json
import math

import pyro
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
    [
        ("ssvae", "labels", 20),
        ("ssvae", "alpha", 5.0),
        ("ssvae", "labelled_per_batch", 5),
        ("cvae", "conditional_prior", True),
    ],
)
def test_each_keyword_of_a_labelled_model_changes_the_trained_model(model, keyword, value):
    """The model-specific keywords of fit_labelled (test_every_option.py follows the common
    ones and the CLI's options to this call) each change what is trained."""
    ds = workflows.load("digits", n_train=60, n_test=12)
    base = {"model": model, "labels": 10, "latent_dim": 2, "hidden": (4,), "epochs": 1}
    before = _fingerprint(workflows.fit_labelled(ds, **base, iw_samples=5, progress=False))
    after = workflows.fit_labelled(ds, **{**base, keyword: value}, iw_samples=5, progress=False)
    assert _fingerprint(after) != before


# ---------------------------------------------------------------- labelled_per_batch
def test_a_stratified_epoch_holds_b_labelled_rows_in_every_minibatch():
    from ppvae.train.labelled import stratified_batches, stratified_permutation

    labelled, unlabelled = torch.arange(0, 7), torch.arange(7, 50)  # 43 unlabelled rows
    perm = stratified_permutation(labelled, unlabelled, 10, 3, torch.Generator().manual_seed(0))
    n_batches = stratified_batches(43, 10, 3)
    assert n_batches == 7  # ceil(43 / 7)
    for b in range(n_batches):
        rows = perm[b * 10 : (b + 1) * 10]
        assert (rows[:3] < 7).all() and (rows[3:] >= 7).all()
        assert len(rows) == (10 if b < n_batches - 1 else 3 + 43 - 6 * 7)
    assert sorted(perm[perm >= 7].tolist()) == unlabelled.tolist()  # each once per epoch
    counts = torch.bincount(perm[perm < 7], minlength=7)  # 21 draws cycle through 7 rows
    assert counts.tolist() == [3] * 7


def _gaussian_program():
    import pyro.distributions as dist

    def model(x, y):
        loc = pyro.param("strat_loc", torch.zeros(x.shape[1]))
        with pyro.plate("data", x.shape[0]):  # no num_data: fit scales the plate itself
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x, y):
        pass

    return model, guide


def test_the_stratified_loss_scales_each_part_by_its_own_set():
    """A program without latents: the loss is exact, so the scales can be read off it:
    N_l / b_l on the labelled part, N_u / b_u on the unlabelled one."""
    import pyro

    from ppvae.program import as_program
    from ppvae.train.labelled import StratifiedLabelledLoss

    pyro.clear_param_store()
    prog = as_program(*_gaussian_program())
    x = torch.randn(8, 3)
    y = torch.tensor([2, -1, 0, -1, -1, 1, -1, -1])  # 3 labelled of 8 rows in this batch
    n_l, n_u = 30, 500
    loss = StratifiedLabelledLoss(
        pyro.infer.Trace_ELBO(), (*prog.bind(n_l), n_l), (*prog.bind(n_u), n_u)
    )
    value = loss.differentiable_loss(None, None, x, y=y, num_data=n_l + n_u)
    nll = -torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)  # loc starts at 0
    known = y >= 0
    expected = n_l / 3 * nll[known].sum() + n_u / 5 * nll[~known].sum()
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-6)


def test_m2_trains_with_labelled_rows_in_every_minibatch(small_ssvae_data):
    x, y = small_ssvae_data
    m = ppvae.SemiSupervisedVAE(x.shape[1], 10, 2, hidden=(8,), alpha=5.0, likelihood="gaussian")
    h = ppvae.fit(m, x, labels=y, epochs=2, batch_size=40, labelled_per_batch=10, progress=False)
    n_unlabelled = int((y < 0).sum())
    assert h.steps == 2 * math.ceil(n_unlabelled / 30)  # an epoch: one pass over unlabelled rows
    assert h.config["labelled_per_batch"] == 10
    assert all(math.isfinite(e) for e in h.train_elbo)


@pytest.fixture(scope="module")
def small_ssvae_data():
    ds = workflows.load("digits", n_train=200, n_test=10)
    y = ds.train_labels.clone()
    y[20:] = -1
    return ds.train, y


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"labels": None}, "given without labels"),
        ({"labelled_per_batch": 40}, r"labelled_per_batch \(40\) must be smaller than batch_size"),
        ({"all_labelled": True}, "needs labelled and unlabelled rows"),
        ({"labelled_per_batch": 0}, "labelled_per_batch must be an integer >= 1"),
        ({"elbo": "jit"}, "compiled estimator"),
    ],
)
def test_labelled_per_batch_refuses_what_it_cannot_do(small_ssvae_data, change, needle):
    x, y = small_ssvae_data
    kwargs = {"labels": y, "labelled_per_batch": 10, "batch_size": 40, "epochs": 1}
    if change.pop("all_labelled", False):
        kwargs["labels"] = workflows.load("digits", n_train=200, n_test=10).train_labels
    kwargs.update(change)
    if kwargs["labels"] is None:
        m = ppvae.VAE(x.shape[1], 2, hidden=(8,))
    else:
        m = ppvae.SemiSupervisedVAE(x.shape[1], 10, 2, hidden=(8,), likelihood="gaussian")
    with pytest.raises(InputError, match=needle):
        ppvae.fit(m, x, progress=False, **kwargs)


def test_labelled_per_batch_refuses_a_latent_outside_the_data_plate(small_ssvae_data):
    import pyro
    import pyro.distributions as dist

    x, y = small_ssvae_data

    def model(x, y):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))  # global: once per part
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(shift, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(x, y):
        loc = pyro.param("strat_shift_loc", torch.tensor(0.0))
        pyro.sample("shift", dist.Normal(loc, 1.0))

    pyro.clear_param_store()
    with pytest.raises(InputError, match="'shift' lies outside the data plate"):
        ppvae.fit(model, guide, x, labels=y, labelled_per_batch=10, batch_size=40, epochs=1,
                  progress=False)  # fmt: skip


def test_a_stratified_run_resumes_exactly(small_ssvae_data, tmp_path):
    """The epoch's row order is in the checkpoint: 1 + 1 epochs equal 2 at once."""
    x, y = small_ssvae_data
    kwargs = {"labels": y, "labelled_per_batch": 10, "batch_size": 40, "progress": False}

    def model():
        torch.manual_seed(0)
        return ppvae.SemiSupervisedVAE(x.shape[1], 10, 2, hidden=(8,), likelihood="gaussian")

    whole = model()
    h2 = ppvae.fit(whole, x, epochs=2, **kwargs)
    part = model()
    ppvae.fit(part, x, epochs=1, checkpoint_dir=tmp_path, **kwargs)
    h = ppvae.fit(part, x, epochs=2, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert h.train_elbo == h2.train_elbo
    for k, v in whole.state_dict().items():
        assert torch.equal(v, part.state_dict()[k]), k
    with pytest.raises(InputError, match="labelled_per_batch"):
        ppvae.fit(part, x, epochs=3, checkpoint_dir=tmp_path, resume=True,
                  **{**kwargs, "labelled_per_batch": 5})  # fmt: skip


def test_labelled_per_batch_refuses_a_program_that_subsamples_in_its_plate(small_ssvae_data):
    import pyro.distributions as dist

    x, y = small_ssvae_data

    def model(x, y):
        loc = pyro.param("strat_sub_loc", torch.zeros(x.shape[1]))
        with pyro.plate("data", x.shape[0], subsample_size=5) as rows:
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x[rows])

    def guide(x, y):
        pass

    pyro.clear_param_store()
    with pytest.raises(InputError, match="subsamples inside its plate 'data'"):
        ppvae.fit(model, guide, x, labels=y, labelled_per_batch=10, batch_size=40, epochs=1,
                  progress=False)  # fmt: skip
