"""Every notebook in notebooks/ runs top to bottom, at the small size, without an error.

Each notebook is executed from an in-memory copy (the committed file, which carries the outputs
of a full-size run, is never written) in a fresh ``python3`` kernel of this interpreter, with
``PPVAE_NOTEBOOK_SMALL=1`` and the working directory ``notebooks/``. A cell that raises,
including a failed ``assert`` of a numerical identity, fails the test.
"""

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_in_small_mode(path):
    before = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    # a first cell that reports which interpreter the kernel runs
    probe = nbformat.v4.new_code_cell("import sys; print(sys.executable)")
    nb.cells.insert(0, probe)
    env = {**os.environ, "PPVAE_NOTEBOOK_SMALL": "1"}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one thread per kernel, as conftest gives each worker: two workers' kernels at the
        # default thread count oversubscribe 2 cores (notebook 06 then took 109 s, not 13 s)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    kernel_python = "".join(o.get("text", "") for o in probe.outputs).strip()
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve(), (
        f"the notebook ran in {kernel_python}, not in this interpreter {sys.executable}"
    )
    assert path.read_bytes() == before, "executing must not modify the committed notebook"
