"""Checkpoints and model files carry a SHA-256 of their content, checked on every read; a
resume checks the training data by content (issue 32, deliver 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ppvae
from ppvae.checkpoints import DIGEST_TAG
from ppvae.errors import InputError


def _fit(x, folder, epochs=1, **kw):
    return ppvae.fit(
        ppvae.VAE(x.shape[1], 2, hidden=(8,)),
        x,
        epochs=epochs,
        batch_size=50,
        checkpoint_dir=folder,
        progress=False,
        **kw,
    )


@pytest.fixture
def x():
    return torch.rand(100, 6, generator=torch.Generator().manual_seed(0))


def _flip_middle(path, n=100):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_checkpoint_are_one_error_naming_the_file(tmp_path, x):
    _fit(x, tmp_path)
    path = tmp_path / "checkpoint.pt"
    assert path.read_bytes()[-79:].startswith(DIGEST_TAG)
    assert torch.load(path, weights_only=True)["format"] == "ppvae.checkpoint"  # still torch's
    _flip_middle(path)
    with pytest.raises(InputError, match="checkpoint file is damaged") as err:
        _fit(x, tmp_path, epochs=2, resume=True)
    assert str(path) in str(err.value)


def test_a_damaged_model_file_is_refused_by_load(tmp_path, x):
    vae = ppvae.VAE(6, 2, hidden=(8,))
    path = ppvae.save(vae, tmp_path / "model.pt")
    assert ppvae.load(path).config() == vae.config()
    _flip_middle(path, n=10)
    with pytest.raises(InputError, match=f"{path}: the model file is damaged"):
        ppvae.load(path)


def test_random_bytes_and_a_csv_are_not_ppvae_files(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="not a readable ppvae model file") as err:
        ppvae.load(noise)
    assert "weights_only" not in str(err.value)
    table = tmp_path / "table.csv"
    table.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(InputError, match=f"{table}: not a readable ppvae model file") as err:
        ppvae.load(table)
    assert "pop from empty list" not in str(err.value)
    with pytest.raises(InputError, match="not a readable ppvae checkpoint file"):
        ppvae.fit(
            ppvae.VAE(6, 2, hidden=(8,)),
            torch.rand(10, 6),
            checkpoint_dir=_as_ckpt(tmp_path, noise.read_bytes()),
            resume=True,
            progress=False,
        )


def _as_ckpt(tmp_path, data: bytes):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(data)
    return folder


def test_resume_refuses_data_changed_in_content_alone(tmp_path, x):
    """One column permuted: shape, sum and sum of squares all equal (as after
    standardization), only the content tells."""
    _fit(x, tmp_path)
    changed = x.clone()
    changed[:, 2] = changed.flip(0)[:, 2]
    with pytest.raises(InputError, match="the training data changed since the checkpoint"):
        _fit(changed, tmp_path, epochs=2, resume=True)
    assert len(_fit(x, tmp_path, epochs=2, resume=True).train_elbo) == 2


def test_resume_on_data_of_another_shape_says_the_data_changed(tmp_path, x):
    _fit(x, tmp_path)
    with pytest.raises(InputError) as err:
        _fit(x[:, :5], tmp_path, epochs=2, resume=True)
    msg = str(err.value)
    assert "the training data changed since the checkpoint: it had 100 rows of 6 columns" in msg
    assert "different model" not in msg


def test_cli_resume_from_another_folder_and_a_changed_csv(tmp_path, monkeypatch, capsys):
    """The data path is stored absolute: a resume from another folder finds the file (and
    reads it: here, to find one cell changed, refused with exit 2 in one line naming it).
    Both commands run in this process (``main``), from the two folders."""
    from ppvae.cli import main

    rng = np.random.default_rng(0)
    table = tmp_path / "table.csv"
    values = rng.normal(size=(60, 3))
    np.savetxt(table, values, delimiter=",", header="a,b,c", comments="")
    common = ["--model", "ae", "--epochs", "1", "--hidden", "8", "--latent-dim", "2"]
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--data", "table.csv", "--standardize", "--out", "run", *common]) == 0
    values[5, 1] += 0.5
    np.savetxt(table, values, delimiter=",", header="a,b,c", comments="")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["fit", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "the training data changed since the checkpoint" in err
    assert f"(the run trained on --data {table})" in err
