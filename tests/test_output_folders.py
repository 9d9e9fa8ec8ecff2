"""Output folders (issue 32, deliver 3): checked before any work, emptied by --force, a full
disk is one line and leaves the previous checkpoint intact."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest
import torch

import ppvae
import ppvae.checkpoints
from ppvae.cli import main
from ppvae.errors import UnwritableError
from ppvae.workflows.common import RUN_OUTPUTS

from .conftest import REPO

SMALL = ["--n-train", "60", "--n-test", "20", "--latent-dim", "2"]


def _error(argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _unwritable() -> Path:
    """A folder no one may create files in, even root (sysfs)."""
    target = Path("/sys/ppvae-test-out")
    if not Path("/sys").is_dir():
        pytest.skip("no /sys to stand for an unwritable folder")
    try:
        target.mkdir()
    except OSError:
        return target
    target.rmdir()
    pytest.skip("/sys is writable here")


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _error(["check-ppca", *SMALL, "--epochs", "1", "--out", ""], capsys)
    assert code == 2 and len(err) == 1 and "--out is empty" in err[0], err
    assert not (tmp_path / "runs").exists()  # not the default folder instead


@pytest.mark.parametrize("command", ["check-ppca", "fit", "run", "compare"])
def test_an_unwritable_out_is_refused_before_any_work(command, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(ppvae.workflows.common, "load", lambda *a, **k: calls.append(a))
    t = time.perf_counter()
    code, err = _error([command, *SMALL, "--out", str(_unwritable())], capsys)
    assert code == 2 and len(err) == 1, err
    assert "--out /sys/ppvae-test-out cannot be created" in err[0], err
    assert "Traceback" not in err[0] and not calls  # no data loaded, nothing trained
    assert time.perf_counter() - t < 5


def test_an_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _error(["fit", *SMALL, "--out", str(tmp_path / "file" / "run")], capsys)
    assert code == 2 and len(err) == 1 and "cannot be created" in err[0], err


def test_force_removes_what_the_previous_run_wrote_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = ["metrics.json", "report.md", "training_curve.png", "samples_vae.png"]
    for name in stale:
        (out / name).write_text("the previous run")
    (out / ".checkpoint.pt.abc.tmp").write_text("an interrupted write")
    (out / "notes.txt").write_text("the user's own")
    code = main(["check-ppca", *SMALL, "--epochs", "1", "--out", str(out), "--force"])
    assert code in (0, 1)  # one epoch may FAIL the check; what matters is the folder
    assert {p.name for p in out.iterdir()} == {"check_ppca.json", "ppca_check.png", "notes.txt"}


def test_every_file_a_workflow_writes_is_one_force_removes():
    """RUN_OUTPUTS must list every ``out / "name"`` the package writes (else --force would
    leave that file of the previous run beside the new one)."""
    import re

    written = set()
    for path in (REPO / "ppvae").rglob("*.py"):
        written |= set(re.findall(r'out / "([^"]+)"', path.read_text()))
    assert written, "the pattern found nothing: the test would pass vacuously"
    assert written <= set(RUN_OUTPUTS), written - set(RUN_OUTPUTS)


def _full_disk_after(calls: int, monkeypatch):
    """Make the checkpoint writer fail with ENOSPC from its ``calls + 1``-th write on."""
    real = ppvae.checkpoints._write
    count = {"n": 0}

    def write(fh, data):
        count["n"] += 1
        if count["n"] > calls:
            fh.write(data[: len(data) // 2])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, data)

    monkeypatch.setattr(ppvae.checkpoints, "_write", write)


def test_a_full_disk_is_one_error_and_the_previous_checkpoint_is_intact(tmp_path, monkeypatch):
    x = torch.rand(100, 6, generator=torch.Generator().manual_seed(0))
    _full_disk_after(1, monkeypatch)
    with pytest.raises(UnwritableError) as err:
        ppvae.fit(
            ppvae.VAE(6, 2, hidden=(8,)), x, epochs=3, batch_size=50, checkpoint_dir=tmp_path
        )
    message = str(err.value)
    assert "No space left on device" in message and "checkpoint.pt is kept" in message
    assert isinstance(err.value, OSError)
    monkeypatch.undo()
    payload = ppvae.checkpoints.read_training_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["progress"]["epoch"] == 1  # the last good one, verified by its digest
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_a_full_disk_in_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    _full_disk_after(1, monkeypatch)
    out = tmp_path / "run"
    argv = ["fit", "--model", "ae", *SMALL, "--epochs", "3", "--hidden", "8", "--out", str(out)]
    code, err = _error(argv, capsys)
    assert code == 2 and len(err) == 1, err
    assert "No space left on device" in err[0] and "checkpoint.pt is kept" in err[0], err


def test_save_to_an_unwritable_path_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnwritableError, match=r"cannot write .*model\.pt"):
        ppvae.save(ppvae.VAE(6, 2, hidden=(8,)), tmp_path / "file" / "model.pt")
