"""Figures, written as PNG files.

Uses matplotlib's object-oriented API with the Agg canvas, so it never touches pyplot's global
state or needs a display. Image grids are drawn with matplotlib alone (no torchvision).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import InputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "feature_tiles",
    "image_grid",
    "imputation_scatter",
    "latent_scatter",
    "loglik_scatter",
    "loss_curve",
    "nuts_vs_guide",
    "ppca_check",
    "training_curve",
]


def _new_figure(*args, **kwargs) -> Figure:
    """A matplotlib ``Figure``; matplotlib is imported on the first figure, not with ppvae
    (0.3-0.6 s of every ``import ppvae`` otherwise)."""
    from matplotlib.figure import Figure as _Figure

    return _Figure(*args, **kwargs)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def training_curve(
    history,
    path: str | os.PathLike,
    *,
    reference: dict[str, float] | None = None,
    title: str = "SVI training",
) -> Path:
    """ELBO per epoch (train and test), with optional horizontal reference lines.

    Parameters
    ----------
    history : ppvae.History
    path : path of the PNG to write
    reference : dict, optional
        Label -> value in nats per sample, e.g. ``{"PPCA test log-lik": 17.9}``.
    """
    fig = _new_figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    epochs = np.arange(1, len(history.train_elbo) + 1)
    ax.plot(epochs, history.train_elbo, label="train ELBO (minibatch mean)")
    if history.test_elbo:
        ax.plot(epochs, history.test_elbo, label="test ELBO")
    for i, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(value, color=f"C{i + 2}", linestyle="--", label=label)
    values = np.asarray(history.train_elbo + history.test_elbo, dtype=float)
    if values.size > 4:  # keep the early, very negative epochs from flattening the plot
        lo = np.percentile(values, 5)
        hi = max([values.max(), *(reference or {}).values()])
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per sample")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def loss_curve(
    train: Sequence[float],
    path: str | os.PathLike,
    *,
    quantity: str,
    unit: str,
    test: Sequence[float] = (),
    reference: dict[str, float] | None = None,
    title: str = "",
) -> Path:
    """A loss per epoch (lower is better), train and optionally test, labelled as given.

    ``reference``: label -> value drawn as horizontal dashed lines (same unit).

    Parameters
    ----------
    train, test : sequences of float
        The per-epoch values (``test`` may be empty).
    quantity : str
        What is plotted, e.g. ``"squared error + penalty"``: the legend reads
        ``"train <quantity>"`` and ``"test <quantity>"``.
    unit : str
        The y-axis label, e.g. ``"per image (sum over pixels)"``.
    """
    fig = _new_figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, list(train), label=f"train {quantity} (minibatch mean)")
    if len(test):
        ax.plot(epochs, list(test), label=f"test {quantity}")
    for i, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(value, color=f"C{i + 2}", linestyle="--", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def error_curve(
    epochs: Sequence[int],
    errors: Sequence[float],
    path: str | os.PathLike,
    *,
    reference: dict[str, float] | None = None,
    title: str = "",
) -> Path:
    """A classifier's test error (a share, drawn in percent) against the epoch.

    ``reference``: label -> error drawn as horizontal dashed lines (e.g. a baseline).
    """
    fig = _new_figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    ax.plot(list(epochs), [100 * v for v in errors], marker="." if len(errors) < 40 else None,
            label="test error")  # fmt: skip
    for i, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(100 * value, color=f"C{i + 1}", linestyle="--", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def image_grid(
    rows: Sequence[torch.Tensor],
    image_shape: tuple[int, int],
    path: str | os.PathLike,
    *,
    row_labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Draw images as a grid: one tensor of shape (n, D) per row, in [0, 1].

    Missing (NaN) pixels are drawn in red.

    Parameters
    ----------
    rows : sequence of tensors, each (n, D)
    image_shape : (H, W) with H * W == D
    path : path of the PNG to write
    row_labels : one label per row
    """
    h, w = image_shape
    n_rows = len(rows)
    n_cols = max(int(r.shape[0]) for r in rows)
    import matplotlib

    cmap = matplotlib.colormaps["gray"].with_extremes(bad="tab:red")
    fig = _new_figure(figsize=(max(1.0, 0.6 * n_cols) + 1.2, 0.6 * n_rows + 0.5))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, r in enumerate(rows):
        imgs = r.detach().cpu().float().clamp(0, 1).reshape(-1, h, w).numpy()
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(imgs):
                ax.imshow(imgs[j], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def feature_tiles(
    weights: torch.Tensor,
    image_shape: tuple[int, int],
    path: str | os.PathLike,
    *,
    max_tiles: int = 64,
    title: str = "",
) -> Path:
    """First-layer filters as image tiles: one row of ``weights`` (units, D) per tile.

    Each tile is scaled symmetrically by its own largest absolute weight (blue negative, red
    positive), so the pattern each unit responds to is visible whatever its norm.
    """
    w = weights.detach().cpu().double()[:max_tiles]
    h, wd = image_shape
    if w.shape[1] != h * wd:
        raise InputError(f"weights have {w.shape[1]} inputs, not {h} x {wd}")
    n = w.shape[0]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig = _new_figure(figsize=(0.9 * cols + 0.6, 0.9 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < n:
            tile = w[i].reshape(h, wd).numpy()
            lim = max(float(np.abs(tile).max()), 1e-12)
            ax.imshow(tile, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        else:
            ax.set_axis_off()
    fig.suptitle(title or f"{n} first-layer filters (input weights, per-tile scale)", fontsize=10)
    return _save(fig, path)


def latent_scatter(
    panels: dict[str, torch.Tensor],
    labels: torch.Tensor | None,
    path: str | os.PathLike,
    *,
    code_name: str = "posterior means",
) -> Path:
    """Scatter 2-D views of latent codes, one panel per model, coloured by label.

    Codes with more than two dimensions are projected onto their first two principal
    components (axes say so).

    Parameters
    ----------
    panels : dict
        Title -> codes of shape (N, k), e.g. posterior means.
    labels : tensor of shape (N,), optional
    code_name : str
        What the codes are, for the axis labels.
    """
    n_points = {int(z.shape[0]) for z in panels.values()}
    if len(n_points) != 1:
        raise InputError(f"latent panels have different numbers of points: {sorted(n_points)}")
    if labels is not None and int(labels.shape[0]) not in n_points:
        raise InputError(
            f"labels: expected {n_points.pop()} labels, one per point, got {int(labels.shape[0])}"
        )
    fig = _new_figure(figsize=(4.6 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    c = None if labels is None else labels.detach().cpu().numpy()
    sc = None
    for ax, (title, z) in zip(axes, panels.items(), strict=True):
        z = z.detach().cpu().double().numpy()
        if z.shape[1] > 2:
            zc = z - z.mean(0)
            _, _, vt = np.linalg.svd(zc, full_matrices=False)
            z2 = zc @ vt[:2].T
            xlabel, ylabel = f"PC 1 of {code_name}", f"PC 2 of {code_name}"
        elif z.shape[1] == 2:
            z2, xlabel, ylabel = z, "z1", "z2"
        else:
            z2 = np.column_stack([z[:, 0], np.zeros(len(z))])
            xlabel, ylabel = "z1", ""
        colours = {"c": c, "cmap": "tab10"} if c is not None else {}  # unlabelled: one colour
        sc = ax.scatter(z2[:, 0], z2[:, 1], s=6, alpha=0.8, **colours)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if c is not None and sc is not None:
        fig.colorbar(sc, ax=list(axes), label="label")
    return _save(fig, path)


def ppca_check(X: torch.Tensor, ppca, linear_vae, result: dict, path: str | os.PathLike) -> Path:
    """Two panels: the sample-covariance eigenvalues with PPCA's and the LinearVAE's model
    eigenvalues (``|w_j|^2 + s2``) and noise levels; the LinearVAE's KL per latent dimension.
    """
    X = X.detach().double().cpu()
    obs = (~torch.isnan(X)).double()  # missing entries: the pairwise-observed covariance
    Xc = torch.nan_to_num(X - torch.nansum(X, 0) / obs.sum(0)) * obs
    pairs = (obs.T @ obs).clamp_min(1.0)
    evals = torch.linalg.eigvalsh(Xc.T @ Xc / pairs).flip(0).numpy()
    with torch.no_grad():
        W = linear_vae.W.detach().double().cpu()
        s2_vae = float(linear_vae.noise_variance)
    vae_eig = np.sort(torch.linalg.svdvals(W).numpy() ** 2)[::-1] + s2_vae
    ppca_eig = np.sort(torch.linalg.svdvals(ppca.W_.double().cpu()).numpy() ** 2)[::-1]
    ppca_eig = ppca_eig + ppca.noise_variance_
    fig = _new_figure(figsize=(10, 3.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    idx = np.arange(1, len(evals) + 1)
    label = "sample covariance" + (" (pairwise observed)" if bool((obs < 1).any()) else "")
    ax.semilogy(idx, np.maximum(evals, 1e-300), "k.", ms=4, label=label)
    k = len(ppca_eig)
    ax.semilogy(np.arange(1, k + 1), ppca_eig, "o", mfc="none", ms=8, label="PPCA |w|² + s²")
    ax.semilogy(np.arange(1, k + 1), vae_eig, "x", ms=7, label="LinearVAE |w|² + s²")
    ax.axhline(ppca.noise_variance_, color="C0", ls="--", lw=1, label="PPCA s²")
    ax.axhline(s2_vae, color="C1", ls=":", lw=1, label="LinearVAE s²")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("variance (data units²)")
    ax.set_title("Covariance spectrum")
    ax.legend(fontsize=7)
    kl = np.asarray(result["kl_per_dim"])
    order = np.argsort(kl)[::-1]
    ax2.bar(np.arange(1, len(kl) + 1), kl[order], color="C1")
    ax2.axhline(0.01, color="k", ls="--", lw=1, label="active threshold 0.01 nats")
    ax2.set_yscale("log")
    ax2.set_xlabel("latent dimension (sorted)")
    ax2.set_ylabel("mean KL(q(z_j|x) || p(z_j)) (nats)")
    ax2.set_title(f"Active units: {result['active_units']}")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def loglik_scatter(
    a: torch.Tensor,
    b: torch.Tensor,
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    names: tuple[str, str] = ("the first model", "the second model"),
    what: str = "images",
) -> Path:
    """Per-sample log-likelihoods of two models against each other, with the diagonal;
    ``names`` (of ``a``'s model, then ``b``'s) name them in the title, ``what`` the test
    points (images, rows)."""
    a = a.detach().double().cpu().numpy()
    b = b.detach().double().cpu().numpy()
    fig = _new_figure(figsize=(5.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(a, b, s=5, alpha=0.5)
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal")
    above = float((b > a).mean())
    ax.set_title(f"Test {what}: {names[1]} higher than {names[0]} on {100 * above:.0f}%")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _save(fig, path)


def imputation_scatter(
    truth: torch.Tensor, imputed: dict[str, torch.Tensor], path: str | os.PathLike
) -> Path:
    """Imputed against true values of the missing entries, one panel per method.

    Parameters
    ----------
    truth : tensor of shape (M,)
        The values that were removed.
    imputed : dict of name -> tensor of shape (M,)
        Each method's imputation of the same entries; its RMSE is in the panel's title.
    path : path of the PNG to write
    """
    t = truth.detach().double().cpu().numpy()
    if not imputed:
        raise InputError("imputed must name at least one method")
    fig = _new_figure(figsize=(4.2 * len(imputed), 4.0), layout="constrained")
    axes = fig.subplots(1, len(imputed), squeeze=False)[0]
    lo, hi = float(t.min()), float(t.max())
    for ax, (name, values) in zip(axes, imputed.items(), strict=True):
        v = values.detach().double().cpu().numpy()
        if v.shape != t.shape:
            raise InputError(f"imputed[{name!r}] has shape {v.shape}, truth {t.shape}")
        rmse = float(np.sqrt(np.mean((v - t) ** 2)))
        ax.scatter(t, v, s=4, alpha=0.4)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="imputed = true")
        ax.set_title(f"{name}: RMSE {rmse:.3g} over {t.size} entries", fontsize=9)
        ax.set_xlabel("true value of the missing entry")
        ax.set_ylabel("imputed value E[x_m | x_o]")
        ax.legend(fontsize=7)
    return _save(fig, path)


def nuts_vs_guide(results: list[dict], path: str | os.PathLike) -> Path:
    """NUTS samples of p(z | x) with the guide's q(z | x) as 1- and 2-sigma ellipses.

    One panel per data point, latent dimensions 1 and 2 (``results`` from
    :func:`ppvae.evaluate.nuts_posterior`).
    """
    theta = np.linspace(0, 2 * np.pi, 200)
    fig = _new_figure(figsize=(4.2 * len(results), 4.0), layout="constrained")
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for i, (ax, r) in enumerate(zip(axes, results, strict=True)):
        z = r["samples"].reshape(-1, r["samples"].shape[-1]).numpy()
        ax.scatter(z[:, 0], z[:, 1], s=3, alpha=0.3, label="NUTS p(z|x)")
        m = r["q_mean"].numpy()
        sd = r["q_var"].sqrt().numpy()
        for k_sigma, style in ((1, "-"), (2, "--")):
            ax.plot(
                m[0] + k_sigma * sd[0] * np.cos(theta),
                m[1] + k_sigma * sd[1] * np.sin(theta),
                "C1" + style,
                lw=1.5,
                label=f"q(z|x) {k_sigma} sd",
            )
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
        ax.set_title(
            f"point {i}: r-hat {r['r_hat_max']:.3f}, ESS {r['ess_bulk_min']:.0f}", fontsize=9
        )
        if i == 0:
            ax.legend(fontsize=7)
    return _save(fig, path)
