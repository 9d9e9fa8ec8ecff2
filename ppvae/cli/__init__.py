"""The ``ppvae`` command (also ``python -m ppvae``).

Each subcommand accepts only the options it uses. A user error (a bad or unused option,
missing data, a bad file, an existing run folder) exits with status 2 and a one-line message
on stderr; a failed check exits with 1; any other exception is a bug and keeps its traceback.
The experiments themselves are :mod:`ppvae.workflows`; this package parses, calls and prints.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import torch

from .. import __version__
from ..errors import InputError
from ..workflows import TrainingInterrupted
from . import check_ppca, compare, fit, run
from .options import UserError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "UserError",
    "build_parser",
    "main",
]

EXIT_FAILED = 1
"""A check failed (check-ppca's FAIL) or training diverged."""
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

COMMANDS = {"run": run, "fit": fit, "check-ppca": check_ppca, "compare": compare}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(*, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The parser of ``ppvae``; with ``suppress_defaults``, one that records given options only."""
    parser = _Parser(prog="ppvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ppvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module in COMMANDS.items():
        p = module.add_parser(sub, name)
        if suppress_defaults:
            for action in p._actions:
                action.default = argparse.SUPPRESS
    return parser


def given_options(argv: list[str]) -> set[str]:
    """The destinations of the options given on the command line ``argv`` (already valid)."""
    ns = build_parser(suppress_defaults=True).parse_args(argv)
    return set(vars(ns)) - {"command"}


def subparser(command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (for naming its options in messages)."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


PYTHON_NAMES = {
    "root": "--data-root",
    "lam": "--contraction",
    "num_samples": "--iw-samples",
    "ais_points": "--ais-points",
    "ais_steps": "--ais-steps",
    "ais_chains": "--ais-chains",
    "bdmc_points": "--bdmc-points",
    "kl_warmup_epochs": "--kl-warmup",
    "rate": "--missing-rate",
    "penalty": "--sparsity",
    "noise_level": "--noise-level",
}
"""The Python names of library messages (``ppvae.errors``) that are options of the command
under another name."""


PYTHON_PHRASES = {"header=False says": "--no-header says"}
"""Library phrases whose Python keyword is a flag of another form."""


def speak_flags(message: str, command: str) -> str:
    """A library message (which names Python parameters) as the command line says it: each
    parameter that is an option of ``command`` by its flag (``lam must`` -> ``--contraction
    must``, ``root=...`` -> ``--data-root ...``, ``num_samples=3`` -> ``--iw-samples 3``).
    Advice that has no flag (``psis=False``) is dropped."""
    dests = {
        a.dest: a.option_strings[0]
        for a in subparser(command)._actions
        if a.option_strings and a.option_strings[0].startswith("--")
    }
    names = {**{d: f for d, f in dests.items() if "_" in d or d in ("lr", "seed")}}
    names.update({k: v for k, v in PYTHON_NAMES.items() if v in dests.values()})
    message = message.replace(", or psis=False", "")
    for phrase, words in PYTHON_PHRASES.items():
        message = message.replace(phrase, words)
    message = re.sub(r"^out (?=\S)", "--out ", message)  # the output folder of a workflow
    for name, flag in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"(?<![\w-]){name}=", f"{flag} ", message)
        message = re.sub(rf"(?<![\w-]){name}(?= (must|is|are|=|<|>))", flag, message)
        message = re.sub(rf"\b(pass|Pass|raise|Raise|lower|Lower) {name}\b", rf"\1 {flag}", message)
    return message


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.given = given_options(argv)
    module = COMMANDS[args.command]
    joined = finished = False
    try:
        if getattr(args, "nproc", 1) > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            module.preflight(args)  # refuse bad options once, before starting N processes
            return _launch(argv, args.nproc)
        joined = _init_distributed(args)
        status = module.main(args)
        finished = status == 0
        return status
    except UserError as exc:
        print(f"ppvae {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except InputError as exc:
        message = speak_flags(_one_line(exc), args.command)
        print(f"ppvae {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a file that cannot be read or written: the disk, not a bug
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"ppvae {args.command}: error: {where}{exc.strerror or _one_line(exc)}",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except TrainingInterrupted as exc:
        hint = module.resume_hint(args) if hasattr(module, "resume_hint") else ""
        print(f"ppvae {args.command}: {exc}{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"ppvae {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FloatingPointError as exc:
        print(f"ppvae {args.command}: error: {module.remedy(args, exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if joined:
            _leave_process_group(barrier=finished)


def _leave_process_group(*, barrier: bool) -> None:
    """Destroy the process group, after a barrier when this rank finished its work, so that no
    rank tears its connections down while a peer still uses them (gloo then aborts the peer:
    "terminate called without an active exception"). A rank that failed skips the barrier:
    its peers fail on their next collective instead of waiting for it."""
    if barrier:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def divergence_remedy(message: str, *, clip: bool, resume: str | None) -> str:
    """fit's FloatingPointError message with its remedies named as options."""
    head = message.split("Usual remedies")[0].rstrip(" .")
    knobs = "a lower --lr" + (", gradient clipping (--clip-norm NORM)" if clip else "")
    then = (
        f"then continue with: ppvae fit --resume {resume} --lr LR"
        + (" --clip-norm NORM" if clip else "")
        if resume
        else "then run again with --force"
    )
    return f"{head}. Usual remedies: {knobs}, or checking the data for extreme values; {then}"


# ---------------------------------------------------------------------- torch.distributed
def _distributed_worker(rank: int, argv: list[str], nproc: int, rendezvous: str) -> None:
    """One process of ``ppvae fit --nproc N`` (the target of ``start_processes``)."""
    os.environ.update(
        PPVAE_INIT_METHOD=rendezvous,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    status = main(argv)
    # Leave without interpreter finalization: by now every file is written (atomically) and
    # the process group destroyed, but gloo's worker threads can still hold work objects
    # (DDP's) whose tensors reference Python; freeing them during finalization aborts the
    # process ("terminate called without an active exception", exit -6), which under load
    # failed an otherwise finished run. os._exit skips that teardown; the status is the same.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _launch(argv: list[str], nproc: int) -> int:
    import tempfile

    import torch.multiprocessing as mp

    # A file rendezvous: a TCP port picked in advance can be taken before rank 0 binds it.
    folder = tempfile.TemporaryDirectory(prefix="ppvae-rendezvous-")
    rendezvous = f"file://{Path(folder.name) / 'init'}"
    try:
        # forkserver where the platform has it: one server process imports ppvae once and
        # forks every rank from it (spawn starts N interpreters, each importing torch, Pyro and
        # ppvae: measured 16-17 s of CPU for a 2-process test run against 19-23 s)
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        if method == "forkserver":
            mp.set_forkserver_preload(["ppvae.cli"])
        mp.start_processes(
            _distributed_worker,
            args=(argv, nproc, rendezvous),
            nprocs=nproc,
            start_method=method,
        )
    except mp.ProcessRaisedException as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "a worker failed"
        print(f"ppvae: error: distributed training failed: {last}", file=sys.stderr)
        return EXIT_FAILED
    except mp.ProcessExitedException as exc:
        print(f"ppvae: error: a training process exited with {exc.exit_code}", file=sys.stderr)
        return exc.exit_code or EXIT_FAILED
    finally:
        folder.cleanup()
    return 0


def _init_distributed(args) -> bool:
    """Join the process group described by torchrun-style environment variables, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    cuda = str(args.device).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    method = os.environ.get("PPVAE_INIT_METHOD")  # set by --nproc; torchrun uses env://
    if method:
        torch.distributed.init_process_group(
            "nccl" if cuda else "gloo",
            init_method=method,
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    else:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return True
