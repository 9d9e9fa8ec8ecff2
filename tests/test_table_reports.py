"""Reports of tables (issue 32, deliver 7, in part): standardization recorded, and the words
of images not used for rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ppvae
from ppvae import reports, workflows


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)) * np.array([1.0, 10.0, 0.1]) + np.array([0.0, 5.0, -2.0])
    np.savetxt(tmp_path / "t.csv", X, delimiter=",", header="a,b,c", comments="")
    return tmp_path / "t.csv"


def test_standardization_is_recorded_with_how_to_undo_it(table):
    ds = ppvae.load_table(table, standardize=True)
    r = workflows.check_ppca(ds, latent_dim=1, epochs=1, progress=False).metrics
    std = r["standardization"]
    assert std["columns"] == ["a", "b", "c"] and std["center"] == ds.info["center"]
    assert std["log_density_shift"] == pytest.approx(-sum(math.log(s) for s in ds.info["scale"]))
    printed = reports.check_table(r)
    assert "nats per row" in printed and "image" not in printed
    plain = workflows.check_ppca(ppvae.load_table(table), latent_dim=1, epochs=1, progress=False)
    assert plain.metrics["standardization"] is None
    assert "standardized data" in workflows.common.units(ds)
    assert "own scale" in workflows.common.units(ppvae.load_table(table))


def test_a_table_s_report_speaks_of_rows_and_its_standardization():
    m = {
        "latent_dim": 2,
        "n_train": 48,
        "n_test": 12,
        "data_dim": 3,
        "units": "nats per sample",
        "source": "/x/t.csv",
        "dequantized": False,
        "standardization": {"center": [0, 0, 0], "scale": [1, 2, 3], "log_density_shift": -1.79},
    }
    text = reports.data_sentence(m)
    assert "training rows of t.csv" in text and "images" not in text
    assert "standardized" in text and "-1.790 nats" in text
    assert "standardized" not in reports.data_sentence({**m, "standardization": None})


def test_fit_metrics_name_the_source_sizes_and_missing_share(table):
    ds = ppvae.load_table(table, standardize=True)
    ae = workflows.fit_autoencoder(ds, model="ae", latent_dim=1, hidden=(4,), epochs=1).metrics
    vae = workflows.fit_vae(
        ds, latent_dim=1, hidden=(4,), epochs=1, iw_samples=2, progress=False
    ).metrics
    for m in (ae, vae):
        assert m["source"] == str(table) and (m["n_train"], m["n_test"]) == (48, 12)
        assert m["data_dim"] == 3 and m["missing_share_train"] == 0.0
        assert m["standardization"]["columns"] == ["a", "b", "c"]
        assert "standardized data" in m["units"]


@pytest.fixture
def holes(tmp_path):
    """A 40 x 4 table on very different scales, with about 15% of its entries missing."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 2)) @ rng.normal(size=(2, 4)) * [1.0, 10.0, 100.0, 0.1]
    X += [0.0, 50.0, -300.0, 2.0]
    X[rng.random(X.shape) < 0.15] = np.nan
    X[np.isnan(X).all(1), 0] = 1.0
    np.savetxt(tmp_path / "h.csv", X, delimiter=",", header="a,b,c,d", comments="")
    return tmp_path / "h.csv", X


def test_the_standardization_transforms_and_undoes(table):
    ds = ppvae.load_table(table, standardize=True)
    scaling = workflows.common.data_standardization(ds)
    raw = torch.cat([ds.train, ds.test]).double()
    assert torch.allclose(scaling.transform(scaling.inverse(raw)), raw, atol=1e-9)
    assert scaling.log_density_shift == pytest.approx(-sum(math.log(v) for v in scaling.scale))
    assert ppvae.tables.Standardization.from_dict(scaling.to_dict()) == scaling
    rows = ds.info["rows"]
    assert sorted(rows["train"] + rows["test"]) == list(range(60))


def test_a_standardized_fit_exports_imputations_on_the_file_s_scale_and_loads_with_it(
    holes, tmp_path
):
    path, X = holes
    ds = ppvae.load_table(path, standardize=True)
    out, export = tmp_path / "run", tmp_path / "filled.csv"
    settings = {"latent_dim": 1, "hidden": (4,), "epochs": 2, "iw_samples": 5}
    m = workflows.fit_vae(ds, **settings, progress=False, out=out, export_imputed=export).metrics
    lines = export.read_text().splitlines()
    assert lines[0] == "a,b,c,d" and len(lines) == 41
    filled = np.loadtxt(export, delimiter=",", skiprows=1)
    seen = ~np.isnan(X)
    assert np.allclose(filled[seen], X[seen], rtol=1e-5, atol=1e-4)  # the rows in file order
    assert np.isfinite(filled).all()
    col_range = np.nanmax(X, 0) - np.nanmin(X, 0)
    off = np.abs(filled - np.nanmean(X, 0)) / col_range
    assert (off[~seen] < 3).all()  # on each column's own scale, not the standardized one
    assert m["export_imputed"]["imputed_entries"] == int((~seen).sum())
    assert m["units"].startswith("nats per row") and set(m["stage_seconds"]) >= {"training"}
    with pytest.warns(UserWarning, match="model.standardization.transform"):
        vae = ppvae.load(out / "model.pt")
    assert vae.standardization.center == tuple(ds.info["center"])
    raw = torch.as_tensor(X[:3])
    expected = (raw - torch.tensor(ds.info["center"])) / torch.tensor(ds.info["scale"])
    assert torch.allclose(vae.standardization.transform(raw), expected, equal_nan=True)


def test_export_imputed_is_refused_before_training_where_it_cannot_apply(holes, table, tmp_path):
    with pytest.raises(ppvae.errors.InputError, match="load_table"):
        workflows.fit_vae("digits", epochs=1, export_imputed=tmp_path / "x.csv")
    with pytest.raises(ppvae.errors.InputError, match="no missing entries"):
        workflows.fit_vae(
            ppvae.load_table(table), latent_dim=1, epochs=1, export_imputed=tmp_path / "x.csv"
        )
    with pytest.raises(ppvae.errors.InputError, match="does not exist"):
        workflows.fit_vae(
            ppvae.load_table(holes[0]),
            latent_dim=1,
            epochs=1,
            export_imputed=tmp_path / "no" / "x.csv",
        )
