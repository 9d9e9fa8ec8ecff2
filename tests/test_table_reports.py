"""Reports of tables (issue 32, deliver 7, in part): standardization recorded, and the words
of images not used for rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
