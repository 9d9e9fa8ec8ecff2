import os
from pathlib import Path

import pyro
import pytest
import torch

import ppvae

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PPVAE_DATA_ROOT", REPO.parent / "shared" / "data"))

# Under pytest-xdist (``make test`` runs two workers on the two cores) each worker computes on
# one thread, so the workers do not oversubscribe the cores; alone, a run takes up to two.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _pyro_validation(request):
    """Every test runs with Pyro's argument and support validation on, inside fit too, except
    those marked ``long_convergence``: thousands of steps of one of ppvae's own programs to
    check where the optimization lands, whose sites the short tests validate already. The
    checks cost about 20% of such a test (measured: 94 s -> 75 s for six of them)."""
    on = request.node.get_closest_marker("long_convergence") is None
    pyro.enable_validation(on)
    ppvae.train.step.VALIDATE_STEPS = on
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def digits():
    return ppvae.load_dataset("digits", seed=0)


def needs_shared_data(name: str):
    folder = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[name]
    return pytest.mark.skipif(
        not (SHARED_DATA / folder / "raw").is_dir(),
        reason=f"{SHARED_DATA / folder / 'raw'} not present",
    )


def check_status(out) -> int:
    """The exit status a ``run`` or ``compare`` into ``out`` must have returned: 1 where its
    LinearVAE check against PPCA failed (FAIL), else 0 (issue 32: a FAIL exits 1)."""
    import json

    for name, key in (("metrics.json", "ppca_check"), ("compare.json", "linear_check")):
        path = Path(out) / name
        if path.exists():
            return 0 if json.loads(path.read_text())[key]["passed"] else 1
    raise AssertionError(f"{out} holds neither metrics.json nor compare.json")
