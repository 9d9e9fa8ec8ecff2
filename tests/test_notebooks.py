"""Every notebook in notebooks/ runs top to bottom, at the small size, without an error.

Each notebook is executed from an in-memory copy (the committed file, which carries the outputs
of a full-size run, is never written) in a ``python3`` kernel of this interpreter, with
``PPVAE_NOTEBOOK_SMALL=1`` and the working directory ``notebooks/``. A cell that raises,
including a failed ``assert`` of a numerical identity, fails the test and names its notebook.

The notebooks run in two groups, one kernel per group: a kernel's start and the imports of
torch, Pyro and ArviZ cost about 8 s, which eight kernels paid eight times. Between two
notebooks of a group the kernel's namespace is emptied (``%reset -f``), Pyro's parameter store
cleared and the figures closed, so a notebook that used a name another one defined still fails;
only imported modules are shared (every notebook imports and seeds what it uses itself).
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
# two groups of about equal small-mode time (60 s each measured, in parallel)
HALF = len(NOTEBOOKS) // 2
GROUPS = {"first-half": NOTEBOOKS[:HALF], "second-half": NOTEBOOKS[HALF:]}
RESET = (
    "%reset -f\n"
    "import pyro as _pyro, matplotlib.pyplot as _plt\n"
    "_pyro.clear_param_store(); _plt.close('all'); del _pyro, _plt"
)


@pytest.mark.parametrize("group", list(GROUPS))
def test_notebooks_execute_in_small_mode(group):
    paths = GROUPS[group]
    before = {path: path.read_bytes() for path in paths}
    combined = nbformat.v4.new_notebook()
    # a first cell that reports which interpreter the kernel runs
    probe = nbformat.v4.new_code_cell("import sys; print(sys.executable)")
    combined.cells.append(probe)
    owner = {}  # index of a cell in the combined notebook -> its notebook's name
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        combined.cells.append(nbformat.v4.new_code_cell(RESET))
        for cell in nb.cells:
            owner[len(combined.cells)] = path.name
            combined.cells.append(cell)
    env = {**os.environ, "PPVAE_NOTEBOOK_SMALL": "1"}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one thread per kernel, as conftest gives each worker: two workers' kernels at the
        # default thread count oversubscribe 2 cores (notebook 06 then took 109 s, not 13 s)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    client = nbclient.NotebookClient(
        combined,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as error:
        failed = next(
            (
                i
                for i, c in enumerate(combined.cells)
                if any(o.get("output_type") == "error" for o in c.get("outputs", []))
            ),
            None,
        )
        name = owner.get(failed, "the group's setup")
        raise AssertionError(f"{name} failed in small mode:\n{error}") from None
    kernel_python = "".join(o.get("text", "") for o in probe.outputs).strip()
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve(), (
        f"the notebooks ran in {kernel_python}, not in this interpreter {sys.executable}"
    )
    for path in paths:
        assert path.read_bytes() == before[path], f"executing must not modify {path.name}"
