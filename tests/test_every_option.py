"""Every option of every command is honoured or refused (issue 32, deliver 4).

The options are read from the argparse parsers themselves, so a new option cannot escape:
for each command (``fit`` once per ``--model``), each option is given, alone, on top of a
baseline, and must either

* be refused: exit 2 with one line on stderr that names it, before any work; or
* change what the command hands to its workflow (the keywords, or the data: their name,
  content and split), which the second half of this file follows into the computation; or
* be in :data:`NO_EFFECT`, the options that by design cannot change the numbers, each with
  its reason.

Three baselines (the bundled digits, a CSV table, MNIST read from a folder) let the data
options meet the data they are for; each option is honoured on at least one.

The second half follows each workflow keyword (read by ``inspect``, so a new keyword cannot
escape either) to what uses it: one tiny run per workflow with every keyword changed at once
(to values no two share), its calls of ``fit`` and the evaluators recorded, each value must
arrive at the parameter that uses it (whose effect on the numbers the evaluators' own tests
show); an autoencoder's own keywords are each checked to change the trained model. Unless in
:data:`NO_EFFECT_KEYWORDS`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import inspect

import numpy as np
import pytest
import torch

from ppvae import cli, evaluate, workflows
from ppvae.cli import main, subparser
from ppvae.cli import options as cli_options
from ppvae.data import Dataset
from ppvae.errors import InputError

NO_EFFECT = {
    "out": "where the outputs are written",
    "force": "whether an existing run folder may be replaced",
    "progress": "whether progress is shown on stderr",
    "device": "where the tensors live (cpu, cuda), not what is computed; a device that is "
    "not there is refused",
    "nproc": "how many processes share each minibatch (tests/test_distributed.py checks the "
    "distributed run)",
    "no_header": "states that a CSV's first line is data: a numeric first line is read as "
    "data anyway (with a note saying so), one with a word is refused (tested below)",
    "resume": "continues a saved run with its own settings (tests/test_checkpoint_integrity.py "
    "and test_cli.py); any other option given with it is refused",
    "help": "prints the help",
}
"""Options that cannot change the numbers, and why."""

VALUES = {
    "model": None,  # fit's --model: enumerated as baselines of its own
    "dataset": ["--dataset", "mnist"],
    "data_root": ["--data-root", "ROOT"],
    "download": ["--download"],
    "data": ["--data", "TABLE2"],
    "export_imputed": ["--export-imputed", "ROOT/filled.csv"],
    "hidden": ["--hidden", "6,5"],
    "latent_dim": ["--latent-dim", "3"],
    "seed": ["--seed", "1"],
    "n_train": ["--n-train", "30"],
    "n_test": ["--n-test", "8"],
    "missing_rate": ["--missing-rate", "0.1"],
    "likelihood": ["--likelihood", "laplace"],
    "noise_level": ["--noise-level", "0.2"],
    "rho": ["--rho", "0.1"],
    "beta": ["--beta", "5"],
    "l1": ["--l1", "0.01"],
    "contraction": ["--contraction", "0.2"],
    "labels": ["--labels", "20"],
    "alpha": ["--alpha", "2.5"],
    "labelled_per_batch": ["--labelled-per-batch", "5"],
    "lr": ["--lr", "0.01"],
    "clip_norm": ["--clip-norm", "5"],
    "kl_weight": ["--kl-weight", "0.5"],
}
"""A value to give each option where the generic one (another choice, default + 1) does
not say enough; a new option without a generic value fails :func:`_value` until added."""


def _value(action: argparse.Action) -> list[str]:
    """The arguments that give ``action`` a value other than its default."""
    flag = action.option_strings[0]
    if action.dest in VALUES:
        return VALUES[action.dest]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [flag]
    if action.nargs == 0:  # store_true
        return [flag]
    if action.choices:
        return [flag, next(c for c in action.choices if c != action.default)]
    if isinstance(action.default, int) and not isinstance(action.default, bool):
        return [flag, str(action.default + 1)]
    if isinstance(action.default, float):
        return [flag, str(action.default * 2 + 0.5)]
    if action.default is None and action.type in (
        cli_options.positive_int,
        cli_options.nonneg_int,
    ):
        return [flag, "3"]
    if action.default is None and action.type is cli_options.positive_float:
        return [flag, "0.5"]
    raise AssertionError(f"{flag}: add a value to VALUES in {__file__}")


def _options(command: str) -> list[argparse.Action]:
    return [
        a
        for a in subparser(command)._actions
        if a.option_strings and a.dest not in NO_EFFECT and VALUES.get(a.dest, []) is not None
    ]


def _heads(command: str) -> list[list[str]]:
    """The baselines' leading arguments: one per ``--model`` of fit."""
    if command != "fit":
        return [[]]
    models = next(a for a in subparser("fit")._actions if a.dest == "model").choices
    return [["--model", m] for m in models] + [["--model", "sae", "--sparsity", "l1"]]


COMMANDS = ["fit", "run", "compare", "check-ppca"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) * 3.0 + 10.0
    path = tmp_path_factory.mktemp("table") / "t.csv"
    np.savetxt(path, X, delimiter=",", header=",".join("abcdef"), comments="")
    np.savetxt(
        path.with_name("t2.csv"), X[::-1], delimiter=",", header=",".join("abcdef"), comments=""
    )
    return path


def _fake_mnist(name: str, *, data_root, download, seed, n_train, n_test, binarize) -> Dataset:
    """MNIST as a workflow would get it, without the files: 784-dimensional noise whose
    ``info`` records how it was asked for."""
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        name=name,
        train=torch.rand(n_train or 40, 784, generator=g),
        test=torch.rand(n_test or 10, 784, generator=g),
        image_shape=(28, 28),
        levels=256,
        dequantized=True,
        info={"root": data_root, "download": download, "binarize": binarize},
    )


def _digest(value) -> str:
    if isinstance(value, Dataset):
        parts = [value.name, value.train, value.test, value.info.get("root"), value.binarize]
        parts += [value.info.get("download"), value.info.get("standardized")]
        parts += [value.info.get("missing_rate"), value.info.get("binarize")]
        return hashlib.sha256(repr([_digest(p) for p in parts]).encode()).hexdigest()
    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.numpy().tobytes()).hexdigest()
    return repr(value)


_LOADED: dict = {}


_cached_parser = functools.lru_cache(cli.build_parser)


class _Called(Exception):
    """Raised by the captured workflow: the command got as far as calling it."""


IGNORED_KEYWORDS = {"out", "overwrite", "progress", "device", "metadata", "resume"}


def _call(command, argv, tmp_path, capsys, monkeypatch):
    """Exit status, stderr lines, and a digest of the workflow call (None: no call)."""
    seen: dict = {}
    real_load = cli_options.load

    def capture(ds, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in IGNORED_KEYWORDS}
        seen["call"] = _digest(ds), sorted((k, _digest(v)) for k, v in kwargs.items())
        raise _Called  # the workflow's work is not this test's

    def load(dataset, **kwargs):
        if dataset in ("mnist", "fashion-mnist"):
            return _fake_mnist(dataset, **kwargs)
        if not isinstance(dataset, str):
            return real_load(dataset, **kwargs)
        key = repr(sorted(kwargs.items()))
        if key not in _LOADED:  # the digits take 50 ms to load, a few hundred times here
            _LOADED[key] = real_load(dataset, **kwargs)
        ds = _LOADED[key]
        return dataclasses.replace(ds, info=copy.deepcopy(ds.info))

    for name in (
        "fit_vae",
        "fit_autoencoder",
        "fit_labelled",
        "run_experiment",
        "compare",
        "check_ppca",
    ):
        monkeypatch.setattr(workflows, name, capture)
    monkeypatch.setattr(cli_options, "load", load)
    monkeypatch.setattr(cli, "build_parser", _cached_parser)  # 90% of a refusal's time
    size = ["--n-train", "40", "--n-test", "10"] if "--data" not in argv else []
    try:
        code = main([command, *size, *argv, "--out", str(tmp_path / "o"), "--force"])
    except _Called:
        code = 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err, seen.get("call")


def _substitute(argv: list[str], table, root) -> list[str]:
    names = {"TABLE2": str(table.with_name("t2.csv")), "ROOT": str(root)}
    return [names.get(a, a).replace("ROOT/", f"{root}/") for a in argv]


def _data_options(command: str) -> set[str]:
    """The options of the "data" group: tried on every baseline, the others on the digits."""
    group = next(g for g in subparser(command)._action_groups if g.title == "data")
    return {a.dest for a in group._group_actions} | {"export_imputed"}  # tables only


def _baselines(head: list[str], table, root) -> dict[str, list[str]]:
    """The digits first; the table and MNIST for the options the digits do not honour."""
    return {
        "digits": [*head],
        "table": [*head, "--data", str(table)],
        "mnist": [*head, "--dataset", "mnist", "--data-root", str(root)],
    }


def _try(command, baseline, call0, action, table, tmp_path, capsys, monkeypatch):
    """(honoured, failure or None) of ``action``'s option given on top of ``baseline``."""
    flag = action.option_strings[0]
    extra = _substitute(_value(action), table, tmp_path)
    if action.dest in ("data_root", "dataset") and "--data-root" in baseline:
        extra = [flag, str(tmp_path / "other")] if action.dest == "data_root" else []
    if not extra:
        return False, None
    code, err, call = _call(command, [*baseline, *extra], tmp_path, capsys, monkeypatch)
    if code == 2:
        clear = len(err) == 1 and flag in err[0] and call is None
        return False, None if clear else f"{flag}: refused unclearly: {err}"
    if code != 0:
        return False, f"{flag}: exit {code}: {err}"
    if call == call0:
        return False, f"{flag} {' '.join(baseline)}: accepted and silently ignored"
    return True, None


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_changes_the_call_or_is_refused(command, table, tmp_path, capsys, monkeypatch):
    honoured: set[str] = set()
    failures = []
    for head in _heads(command):
        baselines = _baselines(head, table, tmp_path)
        calls = {
            name: _call(command, argv, tmp_path, capsys, monkeypatch)[2]
            for name, argv in baselines.items()
        }
        assert calls["digits"] is not None, head
        for action in _options(command):
            if action.option_strings[0] in head:  # varied by the baselines themselves
                honoured.add(action.option_strings[0])
                continue
            for name, argv in baselines.items():
                if calls[name] is None:  # this baseline is refused (stacked: tables)
                    continue
                if name != "digits" and action.dest not in _data_options(command):
                    break
                ok, failure = _try(
                    command, argv, calls[name], action, table, tmp_path, capsys, monkeypatch
                )
                failures += [f"{' '.join(head)} on {name}: {failure}"] if failure else []
                if ok:
                    honoured.add(action.option_strings[0])
                    break
    never = {a.option_strings[0] for a in _options(command)} - honoured
    failures += [f"{flag}: honoured nowhere" for flag in sorted(never)]
    assert not failures, "\n".join(failures)


def test_the_no_effect_list_names_real_options():
    dests = {a.dest for c in COMMANDS for a in subparser(c)._actions}
    assert set(NO_EFFECT) <= dests
    assert set(VALUES) <= dests


@pytest.mark.parametrize(
    "command, argv, flag",
    [
        ("run", ["--ais-points", "0", "--ais-steps", "5"], "--ais-steps"),
        ("compare", ["--ais-points", "0", "--bdmc-points", "5"], "--bdmc-points"),
        ("compare", ["--ais-points", "0", "--ais-chains", "2"], "--ais-chains"),
        ("compare", ["--nuts-points", "0", "--nuts-samples", "9"], "--nuts-samples"),
        ("run", ["--missing-rate", "0.1", "--ais-points", "3"], "--ais-points"),
        ("compare", ["--missing-rate", "0.1", "--gap-points", "3"], "--gap-points"),
        ("fit", ["--architecture", "conv", "--hidden", "8"], "--hidden"),
    ],
)
def test_an_option_switched_off_by_another_is_refused(
    command, argv, flag, tmp_path, capsys, monkeypatch
):
    code, err, call = _call(command, argv, tmp_path, capsys, monkeypatch)
    assert code == 2 and len(err) == 1 and flag in err[0] and call is None, err


def test_no_header_on_a_table_with_a_header_is_refused_in_flags(table, tmp_path, capsys):
    code = main(["fit", "--data", str(table), "--no-header", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--no-header says" in err[0], err
    assert "header=" not in err[0]


# ---------------------------------------------------------------------- the workflows
TRACED = (
    "estimate_log_likelihood",
    "log_likelihood",
    "elbo",
    "inference_gaps",
    "nuts_posterior",
    "ais_log_likelihood",
    "bdmc",
    "impute",
)
"""The evaluators the workflows call (through ``ppvae.evaluate``), recorded with ``fit``."""

CHEAP = {
    "fit": {"epochs": 1},
    "inference_gaps": {"steps": 1},
    "ais_log_likelihood": {"num_steps": 1, "num_chains": 1},
    "bdmc": {"num_points": 1, "num_steps": 1, "num_chains": 1},
    "nuts_posterior": {"num_samples": 2, "warmup_steps": 2},
}
"""What the recorded calls then run with: the least work that lets the workflow go on (what
they were asked for is recorded first)."""

NO_EFFECT_KEYWORDS = {
    "dataset": "the data themselves (the first half of this file varies them)",
    "progress": NO_EFFECT["progress"],
    "device": NO_EFFECT["device"],
    "out": NO_EFFECT["out"],
    "overwrite": NO_EFFECT["force"],
    "resume": NO_EFFECT["resume"],
    "metadata": "extra JSON stored in the checkpoint",
}

BASE = {"latent_dim": 2, "hidden": (4,), "epochs": 1, "batch_size": 20, "progress": False}
BASE_EVAL = {"iw_samples": 5, "ais_points": 1, "ais_steps": 2, "ais_chains": 2, "bdmc_points": 1}
BASELINE = {
    "fit_vae": {**BASE, "iw_samples": 5, "elbo": "trace"},
    "run_experiment": {**BASE, **BASE_EVAL, "elbo": "trace", "check_epochs": 1},
    "compare": {
        **BASE,
        **BASE_EVAL,
        "elbo": "trace",
        "linear_epochs": 1,
        "eval_points": 12,
        "gap_points": 2,
        "nuts_points": 1,
        "nuts_samples": 3,
    },
    "check_ppca": {"latent_dim": 2, "epochs": 1, "batch_size": 20, "progress": False},
}
"""Each workflow at tiny sizes."""

GIVEN = {
    "latent_dim": (3, "fit", "program.latent_dim", 3),
    "hidden": ((6,), "fit", "program.hidden", [6]),
    "likelihood": ("laplace", "fit", "program.likelihood.name", "laplace"),
    "prior": ("mog", "fit", "program.prior.name", "mog"),
    "guide": ("fullrank", "fit", "program.guide.name", "fullrank"),
    "architecture": ("conv", None, "refused", "architecture"),
    "export_imputed": ("filled.csv", None, "refused", "export_imputed"),
    "epochs": (2, "fit", "epochs", 2),
    "batch_size": (16, "fit", "batch_size", 16),
    "lr": (0.002, "fit", "lr", 0.002),
    "elbo": ("meanfield", "fit", "elbo", "meanfield"),
    "clip_norm": (7.0, "fit", "clip_norm", 7.0),
    "kl_weight": (0.5, "fit", "kl_weight", 0.5),
    "kl_warmup": (3, "fit", "kl_warmup_epochs", 3),
    "num_particles": (2, "fit", "num_particles", 2),
    "seed": (3, "fit", "seed", 3),
    "iw_samples": (6, "estimate_log_likelihood|log_likelihood", "num_samples", 6),
    "ais_points": (2, "ais_log_likelihood", "X", 2),
    "ais_steps": (3, "ais_log_likelihood", "num_steps", 3),
    "ais_chains": (3, "ais_log_likelihood", "num_chains", 3),
    "bdmc_points": (2, "bdmc", "num_points", 2),
    "check_epochs": (5, "fit", "epochs", 5),
    "check_batch_size": (15, "fit", "batch_size", 15),
    "linear_epochs": (5, "fit", "epochs", 5),
    "linear_batch_size": (15, "fit", "batch_size", 15),
    "eval_points": (9, "estimate_log_likelihood", "X", 9),
    "gap_points": (3, "inference_gaps", "X", 3),
    "nuts_points": (2, "nuts_posterior", "X", 2),
    "nuts_samples": (4, "nuts_posterior", "num_samples", 4),
}
"""For each keyword: a value, and the evaluator (or fit) parameter it must reach with it
(``X``: that many rows; ``program.*``: the model's configuration), or ``refused`` on the
digits (a convolutional VAE needs 28 x 28 images; only a table is exported, see
test_table_reports.py)."""


def _summary(value):
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() else float(value)
    if hasattr(value, "config") and callable(value.config):
        config = value.config()
        for key in ("likelihood", "prior", "guide"):
            if not isinstance(config.get(key, {}), dict):
                config[key] = {"name": config[key]}
        return config
    return value


def _traced(monkeypatch) -> list:
    calls: list = []

    def wrap(name, fn):
        signature = inspect.signature(fn)

        def recorded(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            record = {k: _summary(v) for k, v in bound.arguments.items()}
            calls.append(
                (name, {("program" if k in ("vae", "model") else k): v for k, v in record.items()})
            )
            bound.arguments.update(CHEAP.get(name, {}))
            return fn(*bound.args, **bound.kwargs)

        return recorded

    monkeypatch.setattr(workflows, "fit", wrap("fit", workflows.fit))
    for name in TRACED:
        monkeypatch.setattr(evaluate, name, wrap(name, getattr(evaluate, name)))
    return calls


def _reached(calls, function: str, path: str, value) -> bool:
    for name, record in calls:
        if name not in function.split("|"):
            continue
        found = record
        for key in path.split("."):
            found = found.get(key) if isinstance(found, dict) else None
        if found == value:
            return True
    return False


@pytest.fixture(scope="module")
def small_digits():
    return workflows.load("digits", n_train=40, n_test=12)


@pytest.mark.parametrize("workflow", list(BASELINE))
def test_every_keyword_of_a_workflow_reaches_what_uses_it(workflow, small_digits, monkeypatch):
    """One run with every keyword changed (to values no two keywords share), its calls of
    fit and the evaluators recorded: each value must arrive where it is used."""
    fn = getattr(workflows, workflow)
    names = [n for n in inspect.signature(fn).parameters if n not in NO_EFFECT_KEYWORDS]
    missing = [n for n in names if n not in GIVEN]
    assert not missing, f"{workflow}: add {missing} to GIVEN in {__file__}"
    kwargs = {**BASELINE[workflow]}
    kwargs.update({n: GIVEN[n][0] for n in names if GIVEN[n][1] is not None})
    calls = _traced(monkeypatch)
    fn(small_digits, **kwargs)
    failures = [
        f"{workflow}({n}={GIVEN[n][0]!r}) did not reach {GIVEN[n][1]}'s {GIVEN[n][2]}"
        for n in names
        if GIVEN[n][1] is not None and not _reached(calls, *GIVEN[n][1:])
    ]
    for n in (n for n in names if GIVEN[n][1] is None):
        with pytest.raises(InputError, match=GIVEN[n][3]):
            fn(small_digits, **{**BASELINE[workflow], n: GIVEN[n][0]})
    assert not failures, "\n".join(failures)


AE_GIVEN = {
    "noise": "gaussian",
    "noise_level": 0.2,
    "sparsity": "l1",
    "rho": 0.1,
    "beta": 5.0,
    "l1": 0.5,
    "contraction": 0.5,
    "finetune_epochs": 2,
    "labels": 10,
}
"""A value of each model-specific keyword of fit_autoencoder."""


def _fingerprint(result) -> str:
    """The trained weights and the metrics, without times and versions."""
    model = result.models["model"]
    weights = [v.numpy().tobytes() for v in model.state_dict().values()]
    numbers = {k: v for k, v in result.metrics.items() if "seconds" not in k}
    numbers.pop("environment", None)
    return hashlib.sha256(b"".join(weights) + repr(numbers).encode()).hexdigest()


OWN = {**workflows.AUTOENCODER_OPTIONS, "sae": ("rho", "beta"), "sae-l1": ("l1",)}
"""The keywords of each autoencoder (the sparse one's l1 is its other penalty's); the CLI
refuses the others (first half of this file); the common ones are the VAE's (above)."""


@pytest.mark.parametrize("model", [m for m in OWN if OWN[m]])
def test_every_keyword_of_an_autoencoder_changes_it_or_is_refused(model, small_digits):
    """Each keyword of its own changes the trained model or raises InputError."""
    base = {"model": model, "latent_dim": 2, "hidden": (4,), "epochs": 1, "batch_size": 20}
    if model == "sae-l1":
        base.update(model="sae", sparsity="l1")
    specific = set().union(*workflows.AUTOENCODER_OPTIONS.values())
    assert specific <= set(AE_GIVEN), "add new keywords to AE_GIVEN"
    before = _fingerprint(workflows.fit_autoencoder(small_digits, **base))
    failures = []
    for name in OWN[model]:
        try:
            after = workflows.fit_autoencoder(small_digits, **base, **{name: AE_GIVEN[name]})
        except InputError:
            continue
        if _fingerprint(after) == before:
            failures.append(f"{model}: {name}={AE_GIVEN[name]!r} changed nothing")
    assert not failures, "\n".join(failures)
