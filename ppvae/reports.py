"""Tables and Markdown reports of the workflows' results (:mod:`ppvae.workflows`).

Every function takes the JSON-able ``metrics`` a workflow returned (and wrote) and returns
text; log-likelihoods and ELBOs are in nats per sample.
"""

from __future__ import annotations

__all__ = [
    "check_table",
    "compare_report",
    "compare_table",
    "fmt",
    "run_report",
    "run_table",
]


def fmt(x: float | None) -> str:
    """A number to 3 decimals, or ``n/a`` for None."""
    return "n/a" if x is None else f"{x:.3f}"


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def run_table(m: dict) -> str:
    """PPCA's exact and the VAE's IW test log-likelihood, ELBO, bits/dim and fit time.

    Parameters
    ----------
    m : dict
        The metrics of :func:`ppvae.workflows.run_experiment` (``metrics.json``).
    """
    p, v = m["ppca"], m["vae"]
    rows = [
        ("model", "test log p(x)", "test ELBO", "bits/dim", "fit s"),
        (
            "PPCA (exact)",
            f"{p['test_log_likelihood']:.3f}",
            "= log p(x)",
            fmt(p["test_bits_per_dim"]),
            f"{p['fit_seconds']:.2f}",
        ),
        (
            f"VAE (IW, K={v['iw_samples']})",
            f"{v['test_log_likelihood_iw']:.3f} ± {v['test_log_likelihood_iw_sem']:.3f}",
            f"{v['test_elbo']:.3f}",
            fmt(v["test_bits_per_dim_iw"]),
            f"{v['fit_seconds']:.1f}",
        ),
    ]
    return f"{m['dataset']}: test set, nats per sample (higher is better)\n" + "\n".join(
        _align(rows)
    )


def check_table(r: dict) -> str:
    """The LinearVAE-vs-PPCA check: each quantity against its target, then PASS or FAIL.

    Parameters
    ----------
    r : dict
        The metrics of :func:`ppvae.workflows.check_ppca` (gaps in nats per sample).
    """
    targets = r["targets"]
    rows = [("quantity", "value", "target")]
    for key in ("loglik_gap", "elbo_gap", "noise_variance_rel_error", "covariance_rel_error"):
        rows.append((key, f"{r[key]:.2e}", f"<= {targets[key]:g}"))
    angles = ", ".join(f"{a:.2f}" for a in r["principal_angles_deg"]) or "n/a"
    rows.append(
        ("max principal angle (deg)", f"{max(r['principal_angles_deg'], default=0):.3f}", "")
    )
    rows.append(("active units", str(r["active_units"]), ""))
    verdict = "PASS" if r["passed"] else "FAIL"
    return (
        "LinearVAE (SVI) vs PPCA maximum likelihood, training data, nats per sample\n"
        + "\n".join(_align(rows))
        + f"\nprincipal angles (deg): {angles}\n{verdict}"
    )


def run_report(m: dict) -> str:
    """``report.md`` of a run: the table, the LinearVAE check, figures and resolved settings.

    Parameters
    ----------
    m : dict
        The metrics of :func:`ppvae.workflows.run_experiment` (``metrics.json``).
    """
    p, v = m["ppca"], m["vae"]
    c = m["ppca_check"]
    figs = m.get("figures", {})
    gap = v["test_log_likelihood_iw"] - p["test_log_likelihood"]
    check_steps = (
        f"{c['epochs']} full-batch epochs"
        if c["batch_size"] >= m["n_train"]
        else f"{c['epochs']} epochs of minibatches of {c['batch_size']}"
    )
    lines = [
        f"# ppvae run: {m['dataset']}",
        "",
        f"PPCA and a Gaussian VAE with the same latent size (k = {m['latent_dim']}) fitted on the "
        f"same {m['n_train']} uniformly dequantized training images (D = {m['data_dim']}), "
        f"evaluated on {m['n_test']} test images. Log-likelihoods are densities on [0, 1]^D in "
        "nats per image; higher is better.",
        "",
        "| model | test log p(x) | test ELBO | bits/dim | train | fit time |",
        "|---|---|---|---|---|---|",
        f"| PPCA (closed form, exact) | {p['test_log_likelihood']:.3f} ± "
        f"{p['test_log_likelihood_sem']:.3f} | (exact) | {fmt(p['test_bits_per_dim'])} | "
        f"{p['train_log_likelihood']:.3f} | {p['fit_seconds']:.2f} s |",
        f"| VAE ({v['prior']} prior, {v['likelihood']}), hidden {tuple(v['hidden'])}, "
        f"{v['epochs']} epochs | "
        f"{v['test_log_likelihood_iw']:.3f} ± {v['test_log_likelihood_iw_sem']:.3f} "
        f"(IW, K = {v['iw_samples']}) | {v['test_elbo']:.3f} | "
        f"{fmt(v['test_bits_per_dim_iw'])} | {v['train_elbo']:.3f} (ELBO) | "
        f"{v['fit_seconds']:.1f} s |",
        "",
        "± is the standard error of the mean over test images. The VAE's importance-weighted "
        "estimate is a stochastic lower bound on its log-likelihood; PPCA's is exact.",
        "",
        f"The VAE's test log-likelihood is {abs(gap):.2f} nats per image "
        f"{'above' if gap > 0 else 'below'} PPCA's.",
        "",
        "## The linear VAE against PPCA",
        "",
        f"A LinearVAE (decoder W z + b, guide N(V (x - c), diag(d^2))) trained by SVI for "
        f"{check_steps} (learning rate {c['lr']:g}, {c['fit_seconds']:.1f} s), compared with "
        "the PPCA maximum-likelihood solution on the training data (`ppvae check-ppca`):",
        "",
        "```",
        check_table(c),
        "```",
        "",
        "## Figures",
        "",
    ]
    captions = {
        "training_curve": "ELBO per epoch, with PPCA's exact test log-likelihood for reference",
        "samples": "VAE samples: decoder means at z ~ p(z)",
        "samples_ppca": "PPCA samples x ~ p(x)",
        "reconstructions": "Test images and their reconstructions",
        "latent_scatter": "Posterior means of the test images, coloured by digit",
        "ppca_check": "Sample-covariance spectrum with the PPCA and LinearVAE fits; KL per "
        "latent dimension",
    }
    for key, name in figs.items():
        lines += [f"![{captions.get(key, key)}]({name})", f"*{captions.get(key, key)}.*", ""]
    cfg = v.get("fit_config", {})
    extras = ", ".join(
        f"{key} {cfg[key]}"
        for key in ("elbo", "betas", "clip_norm", "kl_weight", "kl_warmup_epochs")
        if key in cfg
    )
    lines += [
        "## Settings",
        "",
        f"VAE: batch size {v['batch_size']}, learning rate {v['lr']:g}"
        + (f", {extras}" if extras else "")
        + f"; seed {m['seed']}, device {m['device']}; total time {m['seconds_total']:.1f} s; "
        f"torch {m['environment']['torch']}, {m['environment']['threads']} threads.",
        "",
    ]
    return "\n".join(lines)


def compare_table(r: dict) -> str:
    """PPCA vs LinearVAE vs VAE: train/test nats, SE, bits/dim, ELBO, k-hat share, gaps.

    Parameters
    ----------
    r : dict
        The metrics of :func:`ppvae.workflows.compare` (``compare.json``).
    """
    head = (
        "model",
        "train",
        "test",
        "test ± se",
        "bits/dim",
        "test ELBO",
        "k>0.7",
        "approx gap",
        "amort gap",
        "fit s",
    )
    rows = [head]
    for name, m in r["models"].items():
        tr, te = m["train"], m["test"]
        test_val = te.get("exact", te.get("iw"))
        se = te.get("exact_sem", te.get("iw_sem"))
        rows.append(
            (
                name,
                f"{tr.get('exact', tr.get('iw')):.3f}",
                f"{test_val:.3f}",
                f"{te.get('iw', test_val):.3f} ± {se:.3f}",
                fmt(te.get("bits_per_dim")),
                fmt(te.get("elbo")),
                fmt(te.get("khat_share_gt_0.7")),
                fmt(m.get("approximation_gap")),
                fmt(m.get("amortization_gap")),
                f"{m['fit_seconds']:.1f}",
            )
        )
    note = (
        f"nats per sample (higher is better); train/test: exact for PPCA and LinearVAE, "
        f"IW (K={r['iw_samples']}) for the VAE on {r['eval_points']} points per split"
    )
    return f"{r['dataset']}: {note}\n" + "\n".join(_align(rows))


def compare_report(r: dict) -> str:
    """``compare.md``: the table of :func:`compare_table` and the scatter figure."""
    figure = f"\n![PPCA vs VAE]({r['figure']})\n" if r.get("figure") else ""
    return f"# ppvae compare: {r['dataset']}\n\n```\n{compare_table(r)}\n```\n{figure}"
