"""``ppvae fit --model cvae|ssvae``: a program trained with labels, some or all of them.

The conditional VAE (Sohn et al. 2015) trains on the labelled training rows only (it cannot
condition on a missing class); the semi-supervised VAE (Kingma et al. 2014, M2) trains on all
of them, the unlabelled ones with their class summed out by enumeration. Both report a test
error after every epoch (the curve), one row of conditional samples per class, and the test
error of logistic regression fitted on the same labelled rows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import evaluate, plots, workflows
from ..checkpoints import save
from ..conditional import ConditionalVAE, SemiSupervisedVAE
from ..data import UNLABELLED, Dataset, as_image_shape, binarize, labelled_subset
from ..errors import InputError
from ..train.hooks import Hook
from .common import Result, data_record, environment, finish, start

LABELLED_MODELS = ("cvae", "ssvae")
"""The models of :func:`fit_labelled`: conditional and semi-supervised VAE."""

CVAE_CLASSIFY_SAMPLES = 4
"""Guide draws per class of the conditional VAE's classifier: the ELBO of (x, y) for every
class y, averaged over this many draws of q(z | x, y), picks the class (uniform p(y))."""


def cvae_classify(cvae: ConditionalVAE, x: torch.Tensor, num_samples: int = 4) -> torch.Tensor:
    """The conditional VAE as a generative classifier: argmax over y of ELBO(x, y).

    Parameters
    ----------
    cvae : ConditionalVAE
    x : tensor of shape (N, D)
    num_samples : int
        Draws of q(z | x, y) per class in each ELBO.

    Returns
    -------
    tensor of shape (N,)
        The class whose ELBO (a lower bound on log p(x | y), nats) is largest.
    """
    n, c = len(x), cvae.n_classes
    classes = torch.arange(c).repeat_interleave(n)  # one call for all (row, class) pairs
    elbos = evaluate.elbo(cvae, x.repeat(c, 1), y=classes, num_samples=num_samples)
    return elbos.reshape(c, n).argmax(0)


def classification_error(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` whose predicted class is not ``y``: q(y | x)'s argmax for M2, the
    largest ELBO(x, y) for the conditional VAE."""
    model.eval()
    with torch.no_grad():
        if isinstance(model, SemiSupervisedVAE):
            predicted = model.classify(x)
        else:
            predicted = cvae_classify(model, x, CVAE_CLASSIFY_SAMPLES)
    model.train()
    return float((predicted.cpu() != y.cpu()).double().mean())


class ErrorCurve(Hook):
    """The test error after every ``every``-th epoch (and the last), kept across a resume.

    Attributes
    ----------
    curve : list of (int, float)
        (epoch, test error) pairs.
    """

    def __init__(self, model, x: torch.Tensor, y: torch.Tensor, epochs: int, every: int = 1):
        self.model, self.x, self.y = model, x, y
        self.epochs, self.every = int(epochs), max(1, int(every))
        self.curve: list[tuple[int, float]] = []

    def on_epoch_end(self, run) -> None:
        epoch = run.history.epochs
        if epoch % self.every and epoch != self.epochs:
            return
        with run.untimed():
            self.curve.append(
                (epoch, classification_error(self.model, self.x.to(run.device), self.y))
            )

    def state_dict(self) -> dict:
        return {"epochs": [e for e, _ in self.curve], "errors": [v for _, v in self.curve]}

    def load_state_dict(self, state: dict) -> None:
        self.curve = list(zip(state.get("epochs", []), state.get("errors", []), strict=True))


def logistic_regression_error(x, y, x_test, y_test, seed: int) -> float:
    """Test error of scikit-learn's logistic regression fitted on the labelled rows."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000, random_state=seed).fit(x.numpy(), y.numpy())
    return 1.0 - float(clf.score(x_test.numpy(), y_test.numpy()))


def _as_test_rows(ds: Dataset, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Training rows as the test rows look: binarized (one seeded draw) where the test split
    of a dynamically binarized data set is, so that the baseline sees what M2 sees."""
    return binarize(x, seed) if ds.binarize else x


def _training_labels(ds: Dataset, labels: int | None, seed: int) -> torch.Tensor:
    """The training labels with all but ``labels`` of them (balanced, seeded) unlabelled."""
    if ds.train_labels is None or ds.test_labels is None:
        raise InputError(
            f"data set {ds.name!r} has no labels; a conditional or semi-supervised VAE "
            "needs a labelled data set (digits, mnist, fashion-mnist)"
        )
    if labels is None:
        return ds.train_labels.long()
    n_classes = len(torch.unique(ds.train_labels))
    if isinstance(labels, bool) or int(labels) != labels or labels < 1 or labels % n_classes:
        raise InputError(
            f"labels must be a positive multiple of the {n_classes} classes of {ds.name!r} "
            f"(the same number from each class), got {labels!r}"
        )
    return labelled_subset(ds.train_labels, int(labels), seed=seed)


def make_labelled(
    model: str,
    data_dim: int,
    n_classes: int,
    latent_dim: int,
    *,
    hidden=(256,),
    likelihood: str = "gaussian",
    alpha: float = 1.0,
    conditional_prior: bool = False,
):
    """A :class:`~ppvae.ConditionalVAE` (``"cvae"``) or :class:`~ppvae.SemiSupervisedVAE`
    (``"ssvae"``)."""
    if model == "cvae":
        return ConditionalVAE(
            data_dim,
            n_classes,
            latent_dim,
            hidden=hidden,
            likelihood=likelihood,
            conditional_prior=conditional_prior,
        )
    if model == "ssvae":
        return SemiSupervisedVAE(
            data_dim, n_classes, latent_dim, hidden=hidden, likelihood=likelihood, alpha=alpha
        )
    raise InputError(f"model must be one of {', '.join(LABELLED_MODELS)}, got {model!r}")


def _check_settings(
    model: str, alpha, conditional_prior: bool, *, resume: bool, out, labelled_per_batch=None
) -> None:
    """Refuse, by name, settings :func:`fit_labelled` cannot honour, before any work."""
    if resume and out is None:
        raise InputError("resume=True needs out, the folder of the run")
    if model not in LABELLED_MODELS:
        raise InputError(f"model must be one of {', '.join(LABELLED_MODELS)}, got {model!r}")
    if model == "cvae" and alpha is not None:
        raise InputError("alpha weights M2's classifier (model='ssvae'); the cvae has none")
    if model == "cvae" and labelled_per_batch is not None:
        raise InputError(
            "labelled_per_batch mixes labelled and unlabelled rows (model='ssvae'); the cvae "
            "trains on labelled rows only"
        )
    if model == "ssvae" and conditional_prior:
        raise InputError("conditional_prior is the cvae's p(z | y); M2's p(z) is N(0, I)")


def _test_scores(net, ds: Dataset, curve: ErrorCurve, y, *, iw_samples: int, seed: int) -> dict:
    """The test error (the curve's last point), its curve, logistic regression on the same
    labelled rows and, for the conditional VAE, the test log p(x | y) with the true labels."""
    labelled = y != UNLABELLED
    cvae = isinstance(net, ConditionalVAE)
    last = curve.curve[-1][1] if curve.curve else classification_error(net, ds.test, ds.test_labels)
    scores = {
        "test_error": last,
        "test_error_curve": [list(p) for p in curve.curve],
        "test_error_by": f"argmax over y of ELBO(x, y), {CVAE_CLASSIFY_SAMPLES} draws"
        if cvae
        else "argmax q(y | x)",
        "logistic_regression_test_error": logistic_regression_error(
            _as_test_rows(ds, ds.train[labelled], seed),
            y[labelled],
            ds.test,
            ds.test_labels,
            seed,
        ),
    }
    if cvae:
        torch.manual_seed(seed)
        est = evaluate.estimate_log_likelihood(
            net, ds.test, num_samples=iw_samples, y=ds.test_labels
        )
        scores.update(
            test_log_likelihood_given_label_iw=est.mean,
            iw_samples=iw_samples,
            iw_sem=est.sem,
            iw_mc_se_mean=float(est.mc_se.mean()),
            iw_khat_share_gt_0_7=est.khat_share,
        )
    return scores


def fit_labelled(
    dataset: Dataset | str = "digits",
    *,
    model: str = "ssvae",
    labels: int | None = 100,
    latent_dim: int = 8,
    hidden=(256,),
    likelihood: str = "gaussian",
    alpha: float | None = None,
    labelled_per_batch: int | None = None,
    conditional_prior: bool = False,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float | None = None,
    clip_norm: float | None = None,
    iw_samples: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Result:
    """Train a conditional or semi-supervised VAE with ``labels`` labelled training rows.

    Parameters
    ----------
    dataset : Dataset or str
        A labelled data set (a name is loaded with ``seed``, dynamically binarized for
        ``likelihood="bernoulli"``).
    model : {"cvae", "ssvae"}
        The conditional VAE (trained on the labelled rows only) or M2 (trained on all rows,
        the unlabelled ones with y enumerated).
    labels : int or None
        Labelled training rows in all, ``labels / C`` per class chosen with ``seed``
        (:func:`~ppvae.data.labelled_subset`); None: every row keeps its label.
    latent_dim, hidden, likelihood
        The networks and p(x | y, z).
    alpha : float, optional
        M2's weight of log q(y | x) per labelled row (default Kingma et al.'s
        0.1 N / labels in these units).
    labelled_per_batch : int, optional
        M2: put this many labelled rows in every minibatch of ``batch_size`` (see
        :func:`~ppvae.fit`); default uniform minibatches.
    conditional_prior : bool
        The conditional VAE's learned p(z | y) instead of N(0, I).
    epochs, batch_size, lr, clip_norm, seed, device, progress
        Training (see :func:`~ppvae.fit`).
    iw_samples : int
        K of the conditional VAE's test log p(x | y) (importance weighted, true labels).
    out, resume, overwrite, metadata
        As in :func:`~ppvae.workflows.fit_vae`.

    Returns
    -------
    Result
        ``metrics`` as in ``metrics.json``: ``test_error`` (share of test rows misclassified),
        ``test_error_curve`` ([epoch, error] pairs), ``logistic_regression_test_error`` on the
        same labelled rows, ``labels_used``; ``models`` ``model``.
    """
    _check_settings(model, alpha, conditional_prior, resume=resume, out=out,
                    labelled_per_batch=labelled_per_batch)  # fmt: skip
    binarize = "dynamic" if likelihood == "bernoulli" else None
    ds = workflows.load(dataset, seed=seed, binarize=binarize)
    y = _training_labels(ds, labels, seed)
    labelled = y != UNLABELLED
    n_labelled = int(labelled.sum())
    n_classes = int(ds.train_labels.max()) + 1
    if alpha is None:
        alpha = 0.1 * len(y) / max(n_labelled, 1)
    s = start(
        ds,
        latent_dim=latent_dim,
        seed=seed,
        device=device,
        out=out,
        overwrite=overwrite,
        resume=resume,
        build=lambda d: make_labelled(
            model,
            d,
            n_classes,
            latent_dim,
            hidden=hidden,
            likelihood=likelihood,
            alpha=alpha,
            conditional_prior=conditional_prior,
        ),
    )
    net, out = s.model, s.out
    x_train, y_train = (ds.train[labelled], y[labelled]) if model == "cvae" else (ds.train, y)
    every = 1 if model == "ssvae" else max(1, epochs // 20)
    curve = ErrorCurve(net, ds.test, ds.test_labels, epochs, every)
    history = workflows.fit(
        net,
        x_train,
        labels=y_train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        clip_norm=clip_norm,
        seed=seed,
        device=s.device,
        binarize=binarize,
        hooks=[curve],
        labelled_per_batch=labelled_per_batch,
        checkpoint_dir=out,
        resume=resume,
        overwrite=overwrite,
        metadata=metadata,
        progress=progress,
    )
    if workflows.distributed_world()[1] != 0:
        return Result({}, {"model": net}, history, out)
    net.cpu()
    metrics = {
        "command": "fit",
        "model": model,
        "dataset": ds.name,
        "seed": seed,
        **data_record(ds),
        "latent_dim": latent_dim,
        "hidden": list(hidden),
        "likelihood": likelihood,
        **(
            {"alpha": alpha, "labelled_per_batch": labelled_per_batch}
            if model == "ssvae"
            else {"conditional_prior": conditional_prior}
        ),
        "labels_used": n_labelled,
        "n_train_rows_used": len(x_train),
        "epochs": history.config["epochs"],
        "batch_size": history.config["batch_size"],
        "lr": history.config["lr"],
        "fit_config": history.config,
        "fit_seconds": history.seconds,
        **_test_scores(net, ds, curve, y, iw_samples=iw_samples, seed=seed),
        "history": history.to_dict(),
    }
    if out is not None:
        metrics["figures"] = _figures(net, ds, out, metrics, n_classes, seed)
        save(net, out / "model.pt", history=history, metadata={"dataset": ds.name, "seed": seed})
    metrics["environment"] = environment()
    finish(out, "metrics.json", metrics, report=("report.md", labelled_report))
    return Result(metrics, {"model": net}, history, out)


def _figures(net, ds: Dataset, out: Path, metrics: dict, n_classes: int, seed: int) -> dict:
    """The test-error curve and, for images, conditional samples: one row per class."""
    figs = {}
    curve = metrics["test_error_curve"]
    figs["error_curve"] = plots.error_curve(
        [e for e, _ in curve],
        [v for _, v in curve],
        out / "error_curve.png",
        reference={"logistic regression, same labels": metrics["logistic_regression_test_error"]},
        title=f"{metrics['model']}: test error with {metrics['labels_used']} labels",
    ).name
    image_shape = as_image_shape(ds.image_shape, ds.data_dim)
    if image_shape is not None:
        torch.manual_seed(seed)
        rows = [net.sample(torch.full((10,), c, dtype=torch.long)) for c in range(n_classes)]
        figs["conditional_samples"] = plots.image_grid(
            rows,
            image_shape,
            out / "conditional_samples.png",
            row_labels=[f"y = {c}" for c in range(n_classes)],
            title="E[x | y, z], z from the prior: one row per class",
        ).name
    return figs


def labelled_report(m: dict) -> str:
    """The Markdown report of a labelled fit: test error, the curve, the samples."""
    name = {"cvae": "Conditional VAE", "ssvae": "Semi-supervised VAE (M2)"}[m["model"]]
    lines = [
        f"# {name} on {m['dataset']}",
        "",
        f"Trained {m['epochs']} epochs on {m['n_train_rows_used']} training rows, "
        f"{m['labels_used']} of them labelled (balanced, seed {m['seed']}); "
        f"{m['fit_seconds']:.1f} s of training.",
        "",
        "| classifier | test error |",
        "|---|---|",
        f"| {m['model']}: {m['test_error_by']} | {m['test_error']:.2%} |",
        f"| logistic regression on the same labelled rows | "
        f"{m['logistic_regression_test_error']:.2%} |",
        "",
    ]
    if "test_log_likelihood_given_label_iw" in m:
        lines += [
            f"Test log p(x | y), true labels, importance weighted (K = {m['iw_samples']}): "
            f"{m['test_log_likelihood_given_label_iw']:.3f} ± {m['iw_sem']:.3f} nats per "
            f"sample (standard error over test rows; mean per-row Monte Carlo error "
            f"{m['iw_mc_se_mean']:.3f}; k-hat > 0.7 for {m['iw_khat_share_gt_0_7']:.0%}).",
            "",
        ]
    figs = m.get("figures", {})
    lines += ["![test error per epoch](error_curve.png)", ""]
    if "conditional_samples" in figs:
        lines += ["![conditional samples, one row per class](conditional_samples.png)", ""]
    return "\n".join(lines)
