"""Tables and Markdown reports of the workflows' results (:mod:`ppvae.workflows`).

Every function takes the JSON-able ``metrics`` a workflow returned (and wrote) and returns
text; log-likelihoods and ELBOs are in nats per sample.
"""

from __future__ import annotations

__all__ = [
    "check_line",
    "check_table",
    "compare_report",
    "compare_table",
    "fmt",
    "imputation_line",
    "run_report",
    "run_table",
    "stage_line",
    "trust_paragraph",
]


def fmt(x: float | None, spec: str = ".3f") -> str:
    """A number in format ``spec`` (3 decimals), or ``n/a`` for None."""
    return "n/a" if x is None else format(x, spec)


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


TRUSTED_GAP = 1.0
"""BDMC gaps (nats per point) below which a report says to trust AIS's estimate."""


def trust_paragraph(
    certified: dict | None, khat_share: float | None, iw_samples: int, skipped: str | None = None
) -> str:
    """Which of the VAE's likelihood estimates to trust, and why, in words.

    Parameters
    ----------
    certified : dict or None
        The ``certified`` block (:func:`ppvae.workflows.common.certify_likelihood`): AIS on
        the IW estimate's points and BDMC's gap, or None where AIS was skipped.
    khat_share : float or None
        Share of test points whose IW weights have PSIS k-hat > 0.7.
    iw_samples : int
        K of the IW estimate.
    skipped : str, optional
        Why AIS was not run, where a reason other than ``ais_points = 0`` kept it off.
    """
    share = (
        ""
        if khat_share is None
        else f" PSIS k-hat exceeds 0.7 on {khat_share:.0%} of the test points, so"
    )
    iw = (
        f"The importance-weighted (IW, K = {iw_samples}) estimate is a stochastic lower bound "
        f"on the VAE's log-likelihood, with the guide as proposal;{share} "
        + (
            "its weights are too heavy-tailed for its standard error to mean much and its "
            "distance to log p(x) is unknown."
            if khat_share is not None and khat_share > 0.1
            else "its distance to log p(x) is not known from it alone."
        )
    )
    if certified is None:
        why = f" {skipped}, so no second estimate checks it." if skipped else (
            " AIS was not run (ais_points = 0), so no second estimate checks it."
        )
        return iw + why
    a = certified["ais"]
    adapted = a.get("adapt", True)
    lines = [
        iw,
        "",
        f"Annealed importance sampling (AIS: T = {a['num_steps']} HMC transitions from the "
        f"guide to the posterior, {a['num_chains']} chains"
        + (", each point's step size adapted toward an acceptance rate of 0.65 as the chains "
           "run" if adapted else ", the step size fixed")
        + f") on {a['n_points']} of the same test points gives {a['mean']:.3f} ± "
        f"{a['sem']:.3f} nats, {a['minus_iw']:+.3f} ± {a['minus_iw_sem']:.3f} against IW on "
        "those points (paired). It is also a stochastic lower bound in expectation, one that "
        "tightens to log p(x) as T grows whatever the guide's quality"
        + (
            "; adapting the step size on the chains' own history makes it approximately, not "
            "exactly, unbiased. It ran at one T, so its convergence in T is not shown here "
            "(`benchmarks/ais_certify.py` measures a T-sweep with adaptation off, and what "
            "adaptation changes, on digits)."
            if adapted
            else ". It ran at one T, so its convergence in T is not shown here."
        ),
    ]
    b = certified.get("bdmc")
    if b is None:
        lines += ["", "BDMC was not run (bdmc_points = 0), so AIS's own error is not bounded."]
        return "\n".join(lines)
    lines += [
        "",
        f"On {b['n_points']} points simulated from the VAE, where an exact posterior sample is "
        f"known, bidirectional Monte Carlo (BDMC) at the same settings brackets log p(x) "
        f"between {b['lower']:.3f} (forward AIS) and {b['upper']:.3f} (reverse AIS), both "
        f"stochastic bounds: a gap of {b['gap']:.3f} ± {b['gap_sem']:.3f} nats per point "
        f"(largest {b['gap_max']:.2f}). The gap bounds AIS's error on those simulated points "
        "only; the test images are not drawn from the VAE.",
        "",
    ]
    ais_below = a["minus_iw"] < -3 * a["minus_iw_sem"]
    bound = max(b["gap"], 0.0) + 2 * b["gap_sem"]
    agree = abs(a["minus_iw"]) <= 3 * a["minus_iw_sem"]
    if b["gap"] <= TRUSTED_GAP and not ais_below:
        lines.append(
            "**Trust AIS** over IW: "
            + (
                "it is the tighter of the two lower bounds"
                if a["minus_iw"] > 3 * a["minus_iw_sem"]
                else "the two lower bounds agree within their errors, and AIS's does not rest "
                "on the guide being a good proposal"
            )
            + f"; on data drawn from the model it is within about {bound:.2f} nats of the "
            "truth on average "
            "(BDMC's gap plus two standard errors). That is a guide to its error on the test "
            "points, not a guarantee: it holds to the degree the VAE fits them as it fits its "
            "own samples."
            + (
                " That IW agrees with AIS is itself evidence that the guide is a good proposal "
                "for these points."
                if agree
                else ""
            )
        )
    elif ais_below:
        lines.append(
            "**Trust neither fully**: AIS falls below IW, so at these settings its chains do not "
            "reach the posterior; IW is the tighter lower bound. Raise the annealing steps "
            "(`--ais-steps`; `ais_steps=` in Python)."
        )
    else:
        lines.append(
            f"**Trust neither fully**: BDMC's gap of {b['gap']:.2f} nats says AIS has not "
            f"converged at T = {a['num_steps']}; both numbers are lower bounds whose distance "
            "to log p(x) may be that large. Raise the annealing steps (`--ais-steps`; "
            "`ais_steps=` in Python) until the gap is small."
        )
    return "\n".join(lines)


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
    a = (v.get("certified") or {}).get("ais")
    if a:
        rows.append(
            (
                f"VAE (AIS, T={a['num_steps']}, first {a['n_points']} test points)",
                f"{a['mean']:.3f} ± {a['sem']:.3f}",
                "",
                "",
                "",
            )
        )
        b = v["certified"].get("bdmc")
        if b:
            rows.append(
                (f"  BDMC gap on {b['n_points']} simulated points", fmt(b["gap"]), *[""] * 3)
            )
    table = f"{m['dataset']}: test set, nats per {per(m)} (higher is better)\n" + "\n".join(
        _align(rows)
    )
    return table + ais_warning(v.get("certified"), "report.md")


def ais_warning(certified: dict | None, report: str) -> str:
    """A line (with its leading newline) for a printed table whose AIS number BDMC says has not
    converged (gap over :data:`TRUSTED_GAP`), naming the ``report`` that says more; else ""."""
    a, b = ((certified or {}).get(k) for k in ("ais", "bdmc"))
    if not (a and b) or b["gap"] <= TRUSTED_GAP:
        return ""
    return (
        f"\nAIS has not converged at T = {a['num_steps']}: BDMC's gap is {b['gap']:.3g} nats "
        f"(over {TRUSTED_GAP:g}), so neither the AIS nor the IW number is to be trusted fully "
        f"({report} says why; raise --ais-steps)"
    )


def _linear_guide(check: dict) -> str:
    """The LinearVAE guide the check used: full rank on data with holes (``linear_check``)."""
    if check.get("missing_share_train"):
        return "a full-rank Gaussian q(z | x_o) per row, the family of the exact p(z | x_o)"
    return "N(V (x - c), diag(d^2))"


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
    missing = r.get("missing_share_train") or 0.0
    note = (
        f"\n{100 * missing:.1f}% of the training entries are missing: PPCA is fitted by EM, "
        "the LinearVAE's guide is full rank, and every likelihood is the exact density of "
        "each row's observed entries"
        if missing
        else ""
    )
    return (
        f"LinearVAE (SVI) vs PPCA maximum likelihood, training data, nats per {per(r)}\n"
        + "\n".join(_align(rows))
        + f"\nprincipal angles (deg): {angles}{note}\n{verdict}"
    )


def per(m: dict) -> str:
    """What a likelihood is per: a row of a ``--data`` table, else a sample (an image)."""
    return "row" if m.get("source") else "sample"


def stage_line(seconds: dict | None) -> str:
    """``Time per stage: PPCA fit 0.1 s, VAE training 12.3 s, ...`` ("" without stages)."""
    if not seconds:
        return ""
    names = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in seconds.items())
    return f"Time per stage: {names}."


def check_line(r: dict) -> str:
    """One line of the LinearVAE-vs-PPCA check (:func:`check_table`'s verdict): PASS, or
    FAIL naming the quantities that missed their targets."""
    targets = r["targets"]
    missed = [f"{k} {r[k]:.2e} > {t:g}" for k, t in targets.items() if not r[k] <= t]
    if not missed:
        return "LinearVAE (SVI) vs PPCA maximum likelihood: PASS (every quantity within its target)"
    return f"LinearVAE (SVI) vs PPCA maximum likelihood: FAIL ({'; '.join(missed)})"


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
    ppca_label = "EM, exact" if p.get("method") == "em" else "closed form, exact"
    unit = "row" if m.get("source") else "image"  # a --data table has rows, not images
    lines = [
        f"# ppvae run: {m['dataset']}",
        "",
        data_sentence(m),
        "",
        "| model | test log p(x) | test ELBO | bits/dim | train | fit time |",
        "|---|---|---|---|---|---|",
        f"| PPCA ({ppca_label}) | {p['test_log_likelihood']:.3f} ± "
        f"{p['test_log_likelihood_sem']:.3f} | (exact) | {fmt(p['test_bits_per_dim'])} | "
        f"{p['train_log_likelihood']:.3f} | {p['fit_seconds']:.2f} s |",
        f"| VAE ({v['prior']} prior, {v['likelihood']}), hidden {tuple(v['hidden'])}, "
        f"{v['epochs']} epochs | "
        f"{v['test_log_likelihood_iw']:.3f} ± {v['test_log_likelihood_iw_sem']:.3f} "
        f"(IW, K = {v['iw_samples']}) | {v['test_elbo']:.3f} | "
        f"{fmt(v['test_bits_per_dim_iw'])} | {v['train_elbo']:.3f} (ELBO) | "
        f"{v['fit_seconds']:.1f} s |",
        "",
        f"± is the standard error of the mean over test {unit}s. The VAE's importance-weighted "
        "estimate is a stochastic lower bound on its log-likelihood; PPCA's is exact.",
        "",
        f"The VAE's test log-likelihood (IW) is {abs(gap):.2f} nats per {unit} "
        f"{'above' if gap > 0 else 'below'} PPCA's.",
        "",
        "## Which likelihood of the VAE to trust",
        "",
        trust_paragraph(
            v.get("certified"),
            v.get("khat_share_gt_0.7"),
            v["iw_samples"],
            skipped=v.get("certified_skipped"),
        ),
        "",
        *imputation_section(m.get("imputation")),
        "## The linear VAE against PPCA",
        "",
        f"A LinearVAE (decoder W z + b, guide {_linear_guide(c)}) trained by SVI for "
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
        "reconstructions": f"Test {unit}s and their reconstructions",
        "imputations": "Test rows with holes and the conditional-mean imputations of the holes",
        "latent_scatter": f"Posterior means of the test {unit}s"
        + ("" if m.get("source") else ", coloured by label"),
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
    if m.get("stage_seconds"):
        lines += [stage_line(m["stage_seconds"]), ""]
    return "\n".join(lines)


def data_sentence(m: dict) -> str:
    """What a run fitted and what its likelihoods are densities of, in one paragraph."""
    what = "rows of " + m["source"].rsplit("/", 1)[-1] if m.get("source") else "images"
    prep = "uniformly dequantized " if m.get("dequantized", True) else ""
    text = (
        f"PPCA and a VAE with the same latent size (k = {m['latent_dim']}) fitted on the same "
        f"{m['n_train']} {prep}training {what} (D = {m['data_dim']}), evaluated on "
        f"{m['n_test']} test {what}. Log-likelihoods are in {m['units']}; higher is better."
    )
    std = m.get("standardization")
    if std:
        text += (
            f" The columns were standardized ({len(std['scale'])} centres and scales in "
            "metrics.json under standardization: x = x_std * scale + center); a log-density "
            f"of the original rows is {std['log_density_shift']:+.3f} nats from the one "
            "reported."
        )
    share = m.get("missing_share_train") or 0.0
    if share > 0:
        made = (
            f" (removed completely at random at rate {m['missing_rate']:g})"
            if m.get("missing_rate")
            else ""
        )
        text += (
            f" {share:.1%} of the training entries are missing{made}: PPCA is fitted by EM and "
            "the VAE's model scores only the observed entries of each row."
        )
    return text


def imputation_line(block: dict | None) -> str:
    """One printed line of imputation RMSEs by method ("" without scored holes)."""
    rmse = (block or {}).get("rmse")
    if not rmse:
        return ""
    return "imputation RMSE over missing test entries: " + ", ".join(
        f"{name} {value:.4f}" for name, value in rmse.items()
    )


def imputation_section(block: dict | None) -> list[str]:
    """The ``## Imputation`` lines of a run report (none where the test split is complete)."""
    if block is None:
        return []
    lines = [
        "## Imputation",
        "",
        f"{block['n_missing_test']} test entries ({block['missing_share_test']:.1%}) are "
        "missing. Each method fills them with a conditional mean E[x_m | x_o]: PPCA's is exact; "
        f"the VAE's is a self-normalized importance-sampling estimate (K = "
        f"{block['vae_num_samples']} guide draws per row; PSIS k-hat > 0.7 on "
        f"{fmt(block['vae_khat_share_gt_0.7'], '.0%')} of rows).",
        "",
    ]
    rmse = block.get("rmse")
    if rmse is None:
        return [*lines, "The holes came with the data, so there is no truth to score them.", ""]
    scale = block.get("scale")
    lines += [
        f"| imputation | RMSE over {block.get('n_scored', block['n_missing_test'])} removed "
        "test entries" + (f", on {scale} scale" if scale else "") + " |",
        "|---|---|",
        f"| column mean of the observed training data | {rmse['mean']:.4f} |",
        f"| PPCA conditional mean (exact) | {rmse['ppca']:.4f} |",
        f"| VAE conditional mean (importance sampling) | {rmse['vae']:.4f} |",
        "",
    ]
    return lines


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
        a = (m.get("certified") or {}).get("ais")
        if a:
            rows.append(
                (
                    f"  same VAE, AIS (T={a['num_steps']}, {a['num_chains']} chains; IW on "
                    f"its {a['n_points']} points: {a['iw_same_points']:.3f})",
                    "",
                    f"{a['mean']:.3f}",
                    f"{a['mean']:.3f} ± {a['sem']:.3f}",
                    *([""] * 3),
                    fmt(m.get("approximation_gap_ais")),
                    *([""] * 2),
                )
            )
    note = (
        f"nats per {per(r)} (higher is better); train/test: exact for PPCA and LinearVAE, "
        f"IW (K={r['iw_samples']}) for the VAE on {_points(r)} points" + _ais_note(r)
    )
    warnings = "".join(ais_warning(m.get("certified"), "compare.md") for m in r["models"].values())
    return f"{r['dataset']}: {note}\n" + "\n".join(_align(rows)) + warnings


def _points(r: dict) -> str:
    """How many points per split the IW estimates used: eval_points, or the split if smaller."""
    n = r["eval_points"]
    train, test = (min(n, r.get(f"n_{split}", n)) for split in ("train", "test"))
    return f"{n}" if train == test == n else f"{train} train / {test} test"


def _ais_note(r: dict) -> str:
    for m in r["models"].values():
        a = (m.get("certified") or {}).get("ais")
        if a:
            return f"; AIS on the first {a['n_points']} of the IW test points"
    return ""


def compare_report(r: dict) -> str:
    """``compare.md``: the table of :func:`compare_table`, which likelihood to trust, figures."""
    point = "row" if r.get("source") else "image"  # a --data table has rows, not images
    figure = (
        f"\n![Per-{point} test log-likelihoods, PPCA (exact) against the VAE (IW)]({r['figure']})\n"
        if r.get("figure")
        else ""
    )
    if r.get("nuts_figure"):
        figure += (
            f"\n![NUTS samples of p(z | x) with the guide's 1- and 2-sigma ellipses]"
            f"({r['nuts_figure']})\n"
        )
    trust = ""
    for name, m in r["models"].items():
        if "certified" in m:
            text = trust_paragraph(
                m["certified"],
                m["test"].get("khat_share_gt_0.7"),
                r["iw_samples"],
                skipped=m.get("certified_skipped"),
            )
            trust = f"\n## Which likelihood of the {name} to trust\n\n{text}\n"
    holes = f"\nLikelihoods are in {r['units']}.\n" if r.get("units") else ""
    share = r.get("missing_share_train") or 0.0
    if share > 0:
        holes += (
            f"\n{share:.1%} of the training entries are missing: PPCA is fitted by EM, every "
            f"likelihood is of each row's observed entries, and {r.get('skipped', '')}.\n"
        )
    imputation = "\n".join(imputation_section(r.get("imputation")))
    if r.get("imputation_figure"):
        imputation += (
            f"\n![Test rows with holes and their imputations]({r['imputation_figure']})\n"
        )
    table = compare_table(r)
    if r.get("linear_check"):
        holes += f"\n{check_line(r['linear_check'])}\n"
    if r.get("stage_seconds"):
        holes += f"\n{stage_line(r['stage_seconds'])}\n"
    return (
        f"# ppvae compare: {r['dataset']}\n\n```\n{table}\n```\n{holes}{trust}{figure}"
        + (f"\n{imputation}" if imputation else "")
    )
