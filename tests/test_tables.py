"""A user's own table: .npy, .csv and .parquet files with holes; one clear error per bad file."""

import importlib.util

import numpy as np
import pytest
import torch

import ppvae
from ppvae.errors import InputError


def _matrix(n=30, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.array([1.0, 10.0, 0.1, 3.0]) + 5.0
    X[rng.random((n, d)) < 0.15] = np.nan
    X[:, 0][np.isnan(X).all(axis=1)] = 1.0  # no empty row
    return X


def _rows_of(ds) -> np.ndarray:
    return np.concatenate([ds.train.numpy(), ds.test.numpy()]).astype(np.float64)


def _same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    key = lambda m: m[np.lexsort(np.nan_to_num(m, nan=-1e9).T[::-1])]  # noqa: E731
    return np.allclose(key(a), key(b), equal_nan=True, atol=1e-5, rtol=1e-5)


def test_npy_and_csv_with_empty_cells_read_the_same_table(tmp_path):
    X = _matrix()
    np.save(tmp_path / "t.npy", X)
    lines = ["a,b,c,d"] + [
        ",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in X
    ]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    a = ppvae.load_table(tmp_path / "t.npy", seed=3)
    b = ppvae.load_table(tmp_path / "t.csv", seed=3)
    assert b.info["columns"] == ["a", "b", "c", "d"] and a.info["columns"][0] == "column 0"
    for ds in (a, b):
        assert ds.train.shape[0] + ds.test.shape[0] == 30 and ds.test.shape[0] == 6
        assert _same_rows(_rows_of(ds), X)
        assert not ds.dequantized and ds.levels is None
    assert torch.equal(torch.isnan(a.train), torch.isnan(b.train))  # same seeded split
    assert abs(a.info["missing"] - float(np.isnan(X).mean())) < 1e-12
    # a headerless csv keeps its first row; the split moves with the seed
    (tmp_path / "h.csv").write_text("\n".join(lines[1:]))
    assert sum(len(x) for x in (ppvae.load_table(tmp_path / "h.csv").train,)) == 24
    assert not torch.equal(
        ppvae.load_table(tmp_path / "t.npy", seed=4).test.nan_to_num(),
        a.test.nan_to_num(),
    )


def test_standardize_uses_the_observed_training_moments(tmp_path):
    X = _matrix(n=200)
    np.save(tmp_path / "t.npy", X)
    ds = ppvae.load_table(tmp_path / "t.npy", standardize=True)
    train = ds.train.double()
    obs = ~torch.isnan(train)
    mean = torch.where(obs, train, 0.0).sum(0) / obs.sum(0)
    var = torch.where(obs, (train - mean) ** 2, 0.0).sum(0) / obs.sum(0)
    torch.testing.assert_close(mean, torch.zeros(4, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(var, torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)
    raw = ppvae.load_table(tmp_path / "t.npy")
    center, scale = torch.tensor(ds.info["center"]), torch.tensor(ds.info["scale"])
    torch.testing.assert_close(
        (raw.test.double() - center) / scale, ds.test.double(), equal_nan=True, atol=1e-5, rtol=0
    )


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow")
def test_parquet_tables_read_like_npy(tmp_path):
    import pandas as pd

    X = _matrix()
    pd.DataFrame(X, columns=list("wxyz")).to_parquet(tmp_path / "t.parquet")
    np.save(tmp_path / "t.npy", X)
    a, b = ppvae.load_table(tmp_path / "t.parquet"), ppvae.load_table(tmp_path / "t.npy")
    assert a.info["columns"] == list("wxyz")
    torch.testing.assert_close(a.train, b.train, equal_nan=True)


@pytest.mark.parametrize(
    "text, match",
    [
        ("a,b,c\n1,2,3\n4,5\n6,7,8\n", "line 3 has 2 field"),
        ("a,b,c\n1,2,3\n4,5,6,7\n6,7,8\n", "line 3 has 4 field"),
        ("a,b,c\n1,x,3\n4,5,6\n6,7,8\n", "column 'b' is not numeric .line 2"),
        ("a,b,c\n1,2,3\n,,\n6,7,8\n", "line 3 has every entry missing"),
        ("a,b,c\n1,,3\n4,,6\n6,,8\n", "column 'b' is missing in every row"),
        ("a,b,c\n1,2,3\n", "1 row"),
        ("a,b,c\n1,2,inf\n4,5,6\n6,7,8\n", "line 2, column 'c' is infinite"),
    ],
)
def test_bad_tables_get_one_clear_error_naming_the_row_or_column(tmp_path, text, match):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(InputError, match=match):
        ppvae.load_table(tmp_path / "bad.csv")


def test_bad_files_and_arguments_are_named(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ppvae.load_table(tmp_path / "none.csv")
    (tmp_path / "t.txt").write_text("1,2\n")
    with pytest.raises(InputError, match=r"neither \.npy"):
        ppvae.load_table(tmp_path / "t.txt")
    np.save(tmp_path / "o.npy", np.array([["a", "b"], ["c", "d"]], dtype=object))
    with pytest.raises(InputError, match="numeric"):
        ppvae.load_table(tmp_path / "o.npy")
    np.save(tmp_path / "v.npy", np.zeros(5))
    with pytest.raises(InputError, match=r"expected \(N, D\)"):
        ppvae.load_table(tmp_path / "v.npy")
    np.save(tmp_path / "t.npy", _matrix())
    with pytest.raises(InputError, match="test_fraction"):
        ppvae.load_table(tmp_path / "t.npy", test_fraction=1.0)
    X = _matrix()
    X[:, 2] = 4.0
    np.save(tmp_path / "c.npy", X)
    with pytest.raises(InputError, match="column 'column 2' is constant"):
        ppvae.load_table(tmp_path / "c.npy", standardize=True)


def test_a_table_trains_a_vae_and_ppca_em_on_its_holes(tmp_path):
    """The table's holes go straight into PPCA-EM and a VAE (likelihoods on the data's own
    scale, nats per row)."""
    X = _matrix(n=120)
    np.save(tmp_path / "t.npy", X)
    ds = ppvae.load_table(tmp_path / "t.npy", standardize=True)
    em = ppvae.PPCA(2, method="em").fit(ds.train)
    vae = ppvae.VAE(4, 2, hidden=(8,))
    h = ppvae.fit(vae, ds.train, test=ds.test, epochs=3, batch_size=32, progress=False)
    assert all(np.isfinite(h.test_elbo))
    assert torch.isfinite(em.log_prob(ds.test)).all()


# ---------------------------------------------------------------------- read as written (#32)
def test_a_headerless_csv_is_read_as_data_and_says_so(tmp_path):
    X = np.arange(40, dtype=float).reshape(10, 4) / 7
    np.savetxt(tmp_path / "h.csv", X, delimiter=",")
    ds = ppvae.load_table(tmp_path / "h.csv")
    assert _same_rows(_rows_of(ds), X)  # every row, the first included
    assert ds.info["notes"] == [
        "h.csv has no header (its first line is all numbers): read as data, the columns "
        "numbered from 0"
    ]
    assert _same_rows(_rows_of(ppvae.load_table(tmp_path / "h.csv", header=False)), X)
    named = ppvae.load_table(tmp_path / "h.csv", header=True)  # stated: the first line names
    assert named.train.shape[0] + named.test.shape[0] == 9
    (tmp_path / "named.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    with pytest.raises(InputError, match=r"line 1 is not numeric \('a'\) but header=False"):
        ppvae.load_table(tmp_path / "named.csv", header=False)
    with pytest.raises(InputError, match="header must be None"):
        ppvae.load_table(tmp_path / "named.csv", header="yes")


def test_pandas_index_and_numbered_columns_are_not_features(tmp_path):
    import pandas as pd

    X = np.random.default_rng(0).normal(size=(12, 3))
    pd.DataFrame(X, columns=["a", "b", "c"]).to_csv(tmp_path / "index.csv")
    pd.DataFrame(X).to_csv(tmp_path / "numbered.csv", index=False)
    pd.DataFrame(X).to_csv(tmp_path / "both.csv")
    for name, columns in (("index", ["a", "b", "c"]), ("numbered", ["0", "1", "2"])):
        ds = ppvae.load_table(tmp_path / f"{name}.csv")
        assert ds.info["columns"] == columns and _same_rows(_rows_of(ds), X), name
    both = ppvae.load_table(tmp_path / "both.csv")
    assert both.info["columns"] == ["0", "1", "2"] and _same_rows(_rows_of(both), X)
    assert "pandas' numbering" in both.info["notes"][0] and "dropped" in both.info["notes"][1]
    # an unnamed first column that is not row numbers is data
    text = "\n".join([",x,y"] + [f"{v:.3f},{v + 1},{v * 2}" for v in X[:, 0]])
    (tmp_path / "values.csv").write_text(text)
    kept = ppvae.load_table(tmp_path / "values.csv")
    assert kept.data_dim == 3 and kept.info["notes"] == []


def test_complex_npy_and_damaged_parquet_are_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((5, 3)) + 1j)
    with pytest.raises(InputError, match="holds complex values"):
        ppvae.load_table(tmp_path / "c.npy")
    (tmp_path / "d.parquet").write_bytes(b"PAR1" + bytes(200))
    with pytest.raises(InputError, match=r"d\.parquet is not a readable parquet file"):
        ppvae.load_table(tmp_path / "d.parquet")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\)"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"standardize": "yes"}, "standardize must be True or False"),
        ({"test_fraction": "0.2"}, "test_fraction must lie in"),
    ],
)
def test_load_table_refuses_bad_arguments_by_name(tmp_path, kwargs, match):
    np.save(tmp_path / "t.npy", _matrix())
    with pytest.raises(InputError, match=match):
        ppvae.load_table(tmp_path / "t.npy", **kwargs)


def test_the_cli_prints_what_it_assumed_and_takes_no_header(tmp_path, capsys):
    from ppvae.cli import main

    X = np.random.default_rng(1).normal(size=(30, 3))
    np.savetxt(tmp_path / "h.csv", X, delimiter=",")
    argv = ["check-ppca", "--data", str(tmp_path / "h.csv"), "--latent-dim", "1"]
    main([*argv, "--epochs", "1", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert "note: h.csv has no header" in err
    main([*argv, "--no-header", "--epochs", "1", "--out", str(tmp_path / "b")])
    assert "note" not in capsys.readouterr().err  # nothing assumed: it was said
    assert main(["check-ppca", "--no-header", "--out", str(tmp_path / "c")]) == 2
    assert "--no-header is for --data" in capsys.readouterr().err
