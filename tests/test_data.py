import gzip
import struct

import numpy as np
import pytest
import torch

import ppvae
from ppvae.data import check_data, read_idx

from .conftest import SHARED_DATA, needs_shared_data


def _write_idx(path, array, gz=True, magic_type=0x08):
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(root, folder="MNIST", n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train))
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))
    return raw


def test_digits_split_and_dequantization(digits):
    ds = digits
    assert ds.train.shape == (1438, 64) and ds.test.shape == (359, 64)
    assert ds.train.dtype == torch.float32 and ds.image_shape == (8, 8) and ds.levels == 17
    assert ds.train_labels.shape == (1438,) and ds.test_labels.dtype == torch.int64
    assert float(ds.train.min()) > 0 and float(ds.train.max()) < 1
    # (v + u) / 17 with u in [0, 1): floor(17 x) recovers the integer pixel v
    raw = ppvae.load_dataset("digits", seed=0, dequantize=False)
    torch.testing.assert_close((ds.train * 17).floor(), (raw.train * 16).round())
    # the noise u is uniform: mean 1/2, variance 1/12 (n = 92k values, SE of mean ~0.001)
    u = ds.train * 17 - (ds.train * 17).floor()
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.003


def test_digits_is_reproducible_and_seeded():
    a = ppvae.load_dataset("digits", seed=3)
    b = ppvae.load_dataset("digits", seed=3)
    c = ppvae.load_dataset("digits", seed=4)
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.test_labels, c.test_labels)


def test_binarization_static_and_dynamic():
    s = ppvae.load_dataset("digits", binarize="static")
    assert set(s.train.unique().tolist()) == {0.0, 1.0}
    assert set(s.test.unique().tolist()) == {0.0, 1.0}
    d = ppvae.load_dataset("digits", binarize="dynamic")
    assert d.binarize == "dynamic" and len(d.train.unique()) > 2
    assert set(d.test.unique().tolist()) == {0.0, 1.0}
    # binarize draws Bernoulli(p): mean over many draws -> p
    p = torch.full((200000,), 0.3)
    assert abs(float(ppvae.binarize(p, 0).mean()) - 0.3) < 0.005
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ppvae.binarize(torch.tensor([1.5]))


def test_subsets():
    ds = ppvae.load_dataset("digits", n_train=100, n_test=20)
    assert ds.train.shape == (100, 64) and ds.test_labels.shape == (20,)


def test_mnist_layout_from_fake_files(tmp_path):
    _fake_mnist(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    ds = ppvae.load_dataset("mnist", root=tmp_path, seed=1)
    assert ds.train.shape == (30, 784) and ds.test.shape == (10, 784)
    assert ds.image_shape == (28, 28) and ds.levels == 256 and ds.dequantized
    assert float(ds.train.min()) > 0 and float(ds.train.max()) < 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    _fake_mnist(tmp_path, folder="FashionMNIST")
    assert ppvae.load_dataset("fashion-mnist", root=tmp_path).train.shape == (30, 784)


@needs_shared_data("mnist")
def test_real_mnist_from_shared_data():
    ds = ppvae.load_dataset("mnist", root=SHARED_DATA, n_train=500, n_test=100)
    assert ds.train.shape == (500, 784) and ds.test.shape == (100, 784)
    assert set(ds.train_labels.unique().tolist()) == set(range(10))


@needs_shared_data("fashion-mnist")
def test_real_fashion_mnist_from_shared_data():
    ds = ppvae.load_dataset("fashion-mnist", root=SHARED_DATA, n_train=200, n_test=50)
    assert ds.train.shape == (200, 784)


def test_bad_dataset_requests(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        ppvae.load_dataset("cifar")
    with pytest.raises(ValueError, match="needs a data root"):
        ppvae.load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz"):
        ppvae.load_dataset("mnist", root=tmp_path)
    with pytest.raises(ValueError, match="binarize"):
        ppvae.load_dataset("digits", binarize="sometimes")


def test_corrupt_idx_files(tmp_path):
    raw = _fake_mnist(tmp_path)
    img = raw / "train-images-idx3-ubyte.gz"
    blob = img.read_bytes()
    img.write_bytes(blob[: len(blob) // 2])  # truncated gzip stream
    with pytest.raises(ValueError, match="truncated"):
        ppvae.load_dataset("mnist", root=tmp_path)
    bad = tmp_path / "bad"
    _write_idx(bad, np.zeros((2, 2)), gz=False)
    blob = bytearray(bad.read_bytes())
    blob[2] = 0x42  # unknown type code
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="magic number"):
        read_idx(bad)
    short = tmp_path / "short"
    _write_idx(short, np.zeros((4, 4)), gz=False)
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(ValueError, match="expected 16 data bytes"):
        read_idx(short)


def test_check_data_errors_and_conversions():
    with pytest.raises(ValueError, match="2-D"):
        check_data(torch.zeros(5))
    with pytest.raises(ValueError, match="2-D"):
        check_data(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="at least 1 row"):
        check_data(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="expected 4 columns"):
        check_data(torch.zeros(2, 3), data_dim=4)
    x = torch.zeros(3, 3)
    x[1, 2] = float("inf")
    with pytest.raises(ValueError, match="row 1, column 2"):
        check_data(x)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        check_data(x)
    assert check_data(x, allow_nan=True).shape == (3, 3)
    with pytest.raises(TypeError, match="numeric"):
        check_data(np.array([["a", "b"]]))
    assert check_data(np.arange(6).reshape(2, 3)).dtype == torch.float32
    assert check_data(torch.zeros(2, 2, dtype=torch.float16)).dtype == torch.float32
    assert check_data(torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.float64


def test_library_errors_name_parameters_not_flags(tmp_path):
    with pytest.raises(ValueError, match="pass root=") as err:
        ppvae.load_dataset("mnist")
    assert "--" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        ppvae.load_dataset("mnist", root=tmp_path)
    assert "--" not in str(err.value)


def test_dequantization_noise_follows_the_seed(tmp_path):
    """Same rows (no subsampling), other seeds: the uniform dequantization noise must differ,
    and the same seed must give the same noise."""
    _fake_mnist(tmp_path)
    a = ppvae.load_dataset("mnist", root=tmp_path, seed=1).train
    b = ppvae.load_dataset("mnist", root=tmp_path, seed=2).train
    assert not torch.equal(a, b)
    assert torch.equal(a, ppvae.load_dataset("mnist", root=tmp_path, seed=1).train)


def test_static_binarization_draws_each_pixel_with_its_intensity():
    """x ~ Bernoulli(p) once: over the 20,034 train entries with 0 < p <= 0.5 the share of ones
    must match their mean intensity (0.269) within 0.02, about 6 standard deviations of a mean
    of that many Bernoulli draws (<= 0.5 / sqrt(20034) = 0.0035; measured difference 0.0018).
    Thresholding at 0.5 would give 0 there."""
    s = ppvae.load_dataset("digits", seed=0, binarize="static")
    raw = ppvae.load_dataset("digits", seed=0, dequantize=False)  # the same split
    sel = (raw.train > 0) & (raw.train <= 0.5)
    assert int(sel.sum()) > 10000
    assert abs(float(s.train[sel].mean()) - float(raw.train[sel].mean())) < 0.02
