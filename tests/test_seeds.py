"""``fit(seed=...)`` is one run in any process: the initial parameters come from the seed.

Issue 32: the network was initialized when built, from torch's global generator (seeded at
random in every process), so ``fit(VAE(...), X, seed=0)`` gave another ELBO in each process.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import torch

import ppvae
from ppvae.initialization import keep_parameters, seed_parameters
from tests.programs import PyroExampleVAE

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    import ppvae
    from tests.programs import PyroExampleVAE

    torch.set_num_threads(1)
    torch.manual_seed(int(sys.argv[1]))  # the global state the models are built under
    x = torch.rand(96, 12, generator=torch.Generator().manual_seed(0))
    models = {  # custom initializations: the full-rank guide's zeros, the mixture's draws
        "vae": ppvae.VAE(12, 2, hidden=(16,), prior="mog", guide="fullrank"),
        "linear": ppvae.LinearVAE(12, 3, encoder="free"),
        "user": PyroExampleVAE(12, 3, 16),
    }
    out = {}
    for name, model in models.items():
        h = ppvae.fit(model, x, epochs=2, batch_size=32, seed=0, progress=False)
        digest = hashlib.sha256()
        for key, value in sorted(model.state_dict().items()):
            digest.update(key.encode() + value.detach().numpy().tobytes())
        out[name] = [h.train_elbo, digest.hexdigest()]
    print(json.dumps(out))
    """
)


def _run(global_seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(global_seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_same_seed_gives_the_same_run_in_two_processes():
    """Two fresh processes, the models built under different global random states: the same
    train ELBOs and the same trained weights, bit for bit, for ppvae's models (their custom
    initializations included) and a user's module."""
    runs = [_run(1), _run(2)]
    results = []
    for proc in runs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert results[0] == results[1]
    # and the runs are not trivially equal: each model trained, the models differ
    assert len({digest for _, digest in results[0].values()}) == len(results[0])


def test_a_new_run_draws_what_the_constructor_draws_after_manual_seed():
    """For a ppvae model the seeded initialization is exactly its constructor's after
    ``torch.manual_seed(seed)``; torch's global random state is left untouched."""
    torch.manual_seed(3)
    vae = ppvae.VAE(12, 3, hidden=(16,), guide="fullrank")
    torch.manual_seed(5)
    expected = ppvae.VAE(12, 3, hidden=(16,), guide="fullrank").state_dict()
    state = torch.get_rng_state()
    assert seed_parameters(vae, 5)
    assert torch.equal(torch.get_rng_state(), state)
    for key, value in expected.items():
        assert torch.equal(vae.state_dict()[key], value), key


def _digest(module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode() + value.detach().numpy().tobytes())
    return h.hexdigest()


def test_trained_loaded_and_kept_parameters_are_not_drawn_again(tmp_path):
    x = torch.rand(64, 12, generator=torch.Generator().manual_seed(0))
    vae = ppvae.VAE(12, 3, hidden=(16,))
    ppvae.fit(vae, x, epochs=1, batch_size=32, seed=0, progress=False)
    trained = _digest(vae)
    assert not seed_parameters(vae, 0)  # a second fit continues from the trained weights
    assert _digest(vae) == trained

    ppvae.save(vae, tmp_path / "model.pt")
    loaded = ppvae.load(tmp_path / "model.pt")
    assert not seed_parameters(loaded, 0)
    assert _digest(loaded) == trained

    warm = ppvae.VAE(12, 3, hidden=(16,))
    with torch.no_grad():
        warm.decoder.net[-1].bias.fill_(0.25)  # a warm start set by hand, then marked
    keep_parameters(warm)
    before = _digest(warm)
    ppvae.fit(warm, x, epochs=0, seed=0, progress=False)
    assert _digest(warm) == before


def test_only_the_unkept_layers_of_a_user_module_are_drawn():
    """A module partly marked (a pretrained part below a new head) keeps the marked part."""
    user = PyroExampleVAE(12, 3, 16)
    keep_parameters(user.encoder)
    encoder = {k: v.clone() for k, v in user.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in user.decoder.state_dict().items()}
    assert seed_parameters(user, 7)
    assert all(torch.equal(user.encoder.state_dict()[k], v) for k, v in encoder.items())
    assert not all(torch.equal(user.decoder.state_dict()[k], v) for k, v in decoder.items())
