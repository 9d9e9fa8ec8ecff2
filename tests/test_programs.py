"""Any Pyro program: users' own model/guide pairs through fit and every evaluator (issue #14)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppvae
from ppvae import evaluate
from ppvae.errors import InputError, ProgramError
from ppvae.program import as_program, inspect_program

from .programs import PyroExampleVAE, StudentTVAE, student_t_functions


def _unseen(n: int, seed: int = 7) -> torch.Tensor:
    """Data no tuning saw: a 2-D nonlinear manifold in 20 dimensions, squashed into [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    A, B = torch.randn(2, 12, generator=g), torch.randn(12, 20, generator=g)
    x = torch.sigmoid(torch.tanh(z @ A) @ B + 0.1 * torch.randn(n, 20, generator=g))
    return x


@pytest.fixture(scope="module")
def datasets(digits):
    unseen = _unseen(360)
    return {
        "digits": (digits.train[:300], digits.test[:60]),
        "unseen": (unseen[:300], unseen[300:]),
    }


def _make(kind: str, D: int):
    if kind == "pyro-example":
        return PyroExampleVAE(D, z_dim=2, hidden_dim=16)
    if kind == "student-t":
        return StudentTVAE(D, latent_dim=2, hidden=16)
    return student_t_functions(D, latent_dim=2, hidden=16, prefix=f"fn{D}")


@pytest.mark.parametrize("data", ["digits", "unseen"])
@pytest.mark.parametrize("kind", ["pyro-example", "student-t", "functions"])
def test_a_users_program_trains_and_gets_every_evaluator(kind, data, datasets):
    pyro.clear_param_store()
    train, test = datasets[data]
    torch.manual_seed(0)
    program = _make(kind, train.shape[1])
    args = (*program, train) if isinstance(program, tuple) else (program, train)
    h = ppvae.fit(*args, epochs=30, batch_size=50, lr=1e-2, test=test, seed=0)
    # It learned: the rise exceeds 4 standard errors of the difference of two one-sample test
    # ELBOs (each the mean over M points of one draw: Monte Carlo variance mean_n var_n / M).
    with torch.no_grad():
        log_w = evaluate.log_importance_weights(program, test, num_samples=32)
    se_one = math.sqrt(float(log_w.var(0).mean()) / test.shape[0])
    assert h.test_elbo[-1] - h.test_elbo[0] > 4 * math.sqrt(2) * se_one, h.test_elbo
    assert h.config["lr"] == 1e-2 and h.config["elbo"] == "trace"
    assert h.config["elbo_requested"] == "auto"

    pyro.set_rng_seed(1)
    x = test[:20]
    elbo = evaluate.elbo(program, x, num_samples=64)
    est = evaluate.estimate_log_likelihood(program, x, num_samples=256)
    # Jensen: E[log mean_k w_k] >= E[log w]; the means over 20 points with K = 64 and 256
    # have Monte Carlo errors of a few hundredths of a nat, far below the gaps measured (> 0.1)
    assert est.mean >= float(elbo.mean())
    assert est.khat is not None and est.khat.shape == (20,)
    assert torch.isfinite(est.mc_se).all()

    gaps = evaluate.inference_gaps(
        program, x[:6], num_samples=128, steps=40, elbo_samples=128, train_samples=4
    )
    m = gaps["mean"]
    assert m["elbo_optimal"] >= m["elbo_amortized"] - 0.05  # never worse: chosen per point
    assert m["approximation_gap"] > -0.1  # a lower-bound estimate of log p(x) minus an ELBO
    assert math.isclose(
        m["log_px"] - m["elbo_amortized"],
        m["approximation_gap"] + m["amortization_gap"],
        rel_tol=1e-4,
        abs_tol=1e-4,
    )

    # 25 warmup steps left the step size unadapted and a chain stuck (r-hat inf) on one program
    nuts = evaluate.nuts_posterior(program, x[:1], num_samples=25, warmup_steps=100, seed=0)
    assert nuts[0]["samples"].shape == (2, 25, 2)
    assert nuts[0]["q_mean"].shape == (2,) and math.isfinite(nuts[0]["r_hat_max"])


def test_a_program_without_num_data_is_scaled_by_n_over_b():
    """Pyro's example takes only x: fit runs it under ScaleDataPlate, so the minibatch loss is
    N / B times the unscaled one (same draws), the unbiased full-data estimate."""
    vae = PyroExampleVAE(20, z_dim=2, hidden_dim=8)
    prog = as_program(vae)
    assert not prog.takes_num_data
    x = _unseen(10)
    losses = []
    for num_data in (None, 1000):
        model, guide = prog.bind(num_data)
        pyro.set_rng_seed(0)
        losses.append(pyro.infer.Trace_ELBO().loss(model, guide, x, num_data=num_data))
    assert losses[1] == pytest.approx(100 * losses[0], rel=1e-5)


def test_a_users_module_and_functions_resume_exactly(tmp_path, datasets):
    train, _ = datasets["unseen"]
    for kind in ("student-t", "functions"):
        finals = []
        for split in (False, True):
            pyro.clear_param_store()
            torch.manual_seed(0)
            program = _make(kind, 20)
            args = (*program, train) if isinstance(program, tuple) else (program, train)
            folder = tmp_path / f"{kind}-{split}"
            if split:
                ppvae.fit(*args, epochs=2, batch_size=64, checkpoint_dir=folder)
                pyro.clear_param_store()  # a new process: nothing left in the store
                torch.manual_seed(123)
                program = _make(kind, 20)
                args = (*program, train) if isinstance(program, tuple) else (program, train)
                h = ppvae.fit(*args, epochs=4, batch_size=64, checkpoint_dir=folder, resume=True)
            else:
                h = ppvae.fit(*args, epochs=4, batch_size=64, checkpoint_dir=folder)
            state = (
                {k: v.clone() for k, v in program.state_dict().items()}
                if not isinstance(program, tuple)
                else {}
            )
            store = pyro.get_param_store()
            state.update({n: store._params[n].detach().clone() for n in store.keys()})
            finals.append((h.train_elbo, state))
        assert finals[0][0] == finals[1][0], kind
        assert finals[0][1].keys() == finals[1][1].keys()
        for key in finals[0][1]:
            assert torch.equal(finals[0][1][key], finals[1][1][key]), (kind, key)


# ---------------------------------------------------------------------- the contract's errors
def _plain(x, plate=True, to_event=True, global_latent=False):
    loc = torch.zeros(x.shape[-1])
    if global_latent:
        loc = loc + pyro.sample("shift", dist.Normal(0.0, 1.0))
    ctx = pyro.plate("data", x.shape[0]) if plate else pyro.plate("rows", x.shape[0])
    with ctx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))
        obs = dist.Normal(loc + z.sum(-1, keepdim=True), 1.0)
        pyro.sample("x", obs.to_event(1) if to_event else obs, obs=x)


def _plain_guide(x, plate=True, global_latent=False, **_):
    if global_latent:
        pyro.sample("shift", dist.Normal(pyro.param("q_shift", torch.tensor(0.0)), 1.0))
    with pyro.plate("data" if plate else "rows", x.shape[0]):
        pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]).to_event(1))


def test_a_broken_contract_is_one_error_naming_the_site():
    x = torch.randn(6, 5)

    def bind(**kw):
        return (lambda x: _plain(x, **kw)), (lambda x: _plain_guide(x, **kw))

    with pytest.raises(ProgramError, match="no sample site inside a plate named 'data'"):
        ppvae.fit(*bind(plate=False), x, epochs=1)
    # Pyro's own plate check names the site; with as many rows as columns it cannot, and
    # ppvae's per-point check does
    with pytest.raises(ProgramError, match=r"failed on a minibatch.*site x"):
        ppvae.fit(*bind(to_event=False), x, epochs=1)
    with pytest.raises(ProgramError, match=r"'x' has log-density shape \(2, 2\).*to_event"):
        ppvae.fit(*bind(to_event=False), x[:2, :2], epochs=1)
    # a global latent trains; likelihoods average over q(shift) (tests/test_pyro_idioms.py),
    # and estimators that condition on plug-in values ask for them by name
    ppvae.fit(*bind(global_latent=True), x, epochs=1, progress=False)
    assert evaluate.log_likelihood(bind(global_latent=True), x, num_samples=4).shape == (6,)
    with pytest.raises(ProgramError, match=r"'shift' lies outside the plate 'data'.*point_est"):
        evaluate.nuts_posterior(bind(global_latent=True), x[:1], num_samples=2, warmup_steps=2)
    with pytest.raises(ProgramError, match="failed on a minibatch of shape"):
        ppvae.fit(StudentTVAE(7), x, epochs=1)  # 5 columns for a 7-column network
    with pytest.raises(ProgramError, match="has no model or guide method"):
        ppvae.fit(torch.nn.Linear(2, 2), x)
    with pytest.raises(InputError, match="training data are missing"):
        ppvae.fit(_plain, _plain_guide)


def test_support_is_read_from_the_trace(datasets):
    train, _ = datasets["unseen"]

    def model(x):
        with pyro.plate("data", x.shape[0]):
            logits = pyro.param("pixel_logits", torch.zeros(x.shape[-1]))
            pyro.sample("pixels", dist.Bernoulli(logits=logits).expand(x.shape).to_event(1), obs=x)

    def guide(x):
        pass

    info = inspect_program(as_program(model, guide), train[:2])
    assert info.support_site == "pixels" and info.data_dim == 20
    with pytest.raises(InputError, match="outside the support of the observed site 'pixels'"):
        ppvae.fit(model, guide, train)
    # binary data are fine; Pyro's example scores intensities with validate_args=False
    ppvae.fit(model, guide, (train > 0.5).float(), epochs=1, progress=False)


def test_estimate_log_likelihood_refuses_too_few_samples_for_psis(digits):
    vae = ppvae.VAE(64, 2, hidden=(8,))
    with pytest.raises(InputError, match="too few for PSIS"):
        evaluate.estimate_log_likelihood(vae, digits.test[:5], num_samples=1)
    est = evaluate.estimate_log_likelihood(vae, digits.test[:5], num_samples=1, psis=False)
    assert est.khat is None and bool(torch.isnan(est.mc_se).all())  # unknown from one draw


def test_other_programs_sites_in_the_store_are_not_trained_or_saved(tmp_path, datasets):
    """Two programs in turn, the store not cleared (as users do): the second's optimizer and
    checkpoint hold its own sites only, so it resumes in a process where the first never ran."""
    train, _ = datasets["unseen"]
    pyro.clear_param_store()
    ppvae.fit(*student_t_functions(20, prefix="first"), train, epochs=1, progress=False)
    first = {n: pyro.param(n).detach().clone() for n in pyro.get_param_store().keys()}
    second = student_t_functions(20, prefix="second")
    ppvae.fit(*second, train, epochs=1, checkpoint_dir=tmp_path, progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["param_store"]
    assert saved and all(name.startswith("second") for name in saved)
    for name, value in first.items():  # left exactly as they were
        assert torch.equal(pyro.param(name).detach(), value), name
    pyro.clear_param_store()
    h = ppvae.fit(*second, train, epochs=2, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert h.epochs == 2
