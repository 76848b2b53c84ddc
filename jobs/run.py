"""Every job starts here: one dispatch from a spec to the job of its stage.

Launchers write a spec file per job (``records.spec``) and run
``python -m jobs.run --spec spec.json`` (SLURM tasks and Ray workers call ``execute_file``
in-process); ``python -m jobs.train`` and its siblings, and ``resnest-bench train``, build
the spec from a command line and come here too. A job takes its folder's lock, runs, and
ends with one of the exit codes of ``records.spec``; bad input is one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from records.errors import UserError
from records.lock import take
from records.options import parser_for, spec_from_args
from records.spec import (
    EXIT_FAILED,
    EXIT_HOST,
    EXIT_OK,
    EXIT_USER_ERROR,
    Spec,
    load,
    store_from_environment,
)

# The module whose ``execute(spec) -> (exit code, stopping signal)`` runs each stage.
STAGE_MODULES = {
    "train": "jobs.train",
    "transfer": "jobs.train",
    "export": "jobs.export",
    "infer": "jobs.infer",
}
Outcome = tuple[int, int | None]  # the exit code, and the signal that stopped the job


class Ended(Exception):
    """A job that ends on purpose with its own exit code (``records.spec``); the message,
    after ``what``, is its one line on stderr."""

    code = EXIT_FAILED
    what = "error"


def execute(spec: Spec) -> Outcome:
    """Run the job of ``spec`` to its end."""
    return importlib.import_module(STAGE_MODULES[spec.stage]).execute(spec)


def execute_file(path: str | Path, attempt_offset: int = 0) -> Outcome:
    """Run the job of a spec file; ``attempt_offset`` counts the requeues SLURM has made. A
    spec that names no store (one written by hand) reports where a job started by hand does:
    to the store of the environment, if it names one."""
    try:
        spec = load(path)
    except UserError as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR, None
    if attempt_offset:
        spec = spec.with_(attempt=spec.attempt + attempt_offset)
    if spec.store is None:
        spec = spec.with_(store=store_from_environment())
    return execute(spec)


# torch.distributed's errors of the process group's transport and store (torch.distributed.
# DistError and its kinds, matched by name: this module does not import torch), and the
# messages gloo and NCCL raise as plain RuntimeErrors when a peer or the network fails.
HOST_ERRORS = {"DistError", "DistNetworkError", "DistStoreError", "DistBackendError"}
HOST_MESSAGES = re.compile(
    r"connection (closed|reset|refused)|timed out|timeout|socket|rendezvous|"
    r"\bnccl\b.*(error|failure|unhandled system)|gloo.*(transport|connect)",
    re.IGNORECASE,
)


def host_fault(exc: BaseException) -> bool:
    """Whether an exception that ended a job belongs to its host or network rather than to
    the job: torch.distributed's own errors, or a RuntimeError of a collective that names a
    timeout or a lost connection."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & HOST_ERRORS:
        return True
    return isinstance(exc, RuntimeError) and bool(HOST_MESSAGES.search(str(exc)))


def guarded(
    spec: Spec,
    body: Callable[[Spec], Any],
    user_errors: tuple[type[Exception], ...],
    rank: int = 0,
) -> Outcome:
    """Run ``body`` holding the job folder's lock (one runner per folder and rank: a second
    one exits at once, having done nothing). A user error becomes one line and exit 2; an
    ``Ended`` its own line and code; a body that returns no outcome succeeded."""
    lock, refused = take(spec.out_dir, rank)
    if lock is None:
        return refused, None
    try:
        outcome = body(spec)
    except (UserError, *user_errors) as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR, None
    except Ended as exc:
        print(f"resnest-bench: {exc.what}: {exc}", file=sys.stderr)
        return exc.code, None
    except Exception as exc:
        if not host_fault(exc):
            raise  # the job's own error: its traceback says where
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"resnest-bench: host failure on {socket.gethostname()}: {first}", file=sys.stderr)
        return EXIT_HOST, None
    finally:
        lock.release()
    return outcome if isinstance(outcome, tuple) else (EXIT_OK, None)


def run_from_args(args: argparse.Namespace, stage: str) -> int:
    """A job started by hand, from its parsed command line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = spec_from_args(args, stage)
    except UserError as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return execute(spec)[0]


def main_for(stage: str, description: str, argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.STAGE``: the job's own command line."""
    args = parser_for(stage, description=description).parse_args(argv)
    return run_from_args(args, stage)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the job's spec file (JSON)")
    args = parser.parse_args(argv)
    return execute_file(args.spec)[0]


if __name__ == "__main__":
    sys.exit(main())
