"""What every stage's job shares, whichever way it was started: its folder's lock, its end
(an exit code of ``records.spec`` and one line on stderr), a host's failure told from the
job's own (any failure after the job's GPU reported an XID is the host's), and its command
line (``python -m jobs.train`` and its siblings).

``jobs.run`` dispatches a spec to its stage's module; the stages import this module, never
``jobs.run``, so that the dispatch and the stages form no import cycle.
"""

from __future__ import annotations

import argparse
import logging
import re
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from records.errors import UserError
from records.lock import take
from records.options import parser_for, spec_from_args
from records.spec import EXIT_DIVERGED, EXIT_FAILED, EXIT_HOST, EXIT_OK, EXIT_USER_ERROR, Spec

Outcome = tuple[int, int | None]  # the exit code, and the signal that stopped the job


class Ended(Exception):
    """A job that ends on purpose with its own exit code (``records.spec``); the message,
    after ``what``, is its one line on stderr."""

    code = EXIT_FAILED
    what = "error"


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
        if isinstance(outcome, tuple) and outcome[0] == EXIT_DIVERGED and gpu_faults():
            return _host_failure(f"{gpu_faults()}, then the loss diverged")  # NaNs of a fault
    except (UserError, *user_errors) as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR, None
    except Ended as exc:
        print(f"resnest-bench: {exc.what}: {exc}", file=sys.stderr)
        return exc.code, None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if gpu_faults():  # a job that fails after its GPU reported an XID: the host's fault
            traceback.print_exc()
            return _host_failure(f"{gpu_faults()}, then {first}")
        if not host_fault(exc):
            raise  # the job's own error: its traceback says where
        return _host_failure(first)
    finally:
        lock.release()
    return outcome if isinstance(outcome, tuple) else (EXIT_OK, None)


def gpu_faults() -> str:
    """The hardware XIDs this process's GPUs reported ("GPU XID 79 on GPU 0"), "" if none
    (``jobs.nvml.HOST_XIDS``: an XID a program's own bug causes is not the host's)."""
    from jobs.nvml import HOST_XIDS, xids_seen  # imports no torch

    found = [(gpu, xid) for gpu, xid, _ in xids_seen() if xid in HOST_XIDS]
    seen = dict.fromkeys(f"XID {xid} on GPU {gpu}" for gpu, xid in found)
    return f"GPU {', '.join(seen)}" if seen else ""


def _host_failure(what: str) -> Outcome:
    print(f"resnest-bench: host failure on {socket.gethostname()}: {what}", file=sys.stderr)
    return EXIT_HOST, None


def from_command_line(
    args: argparse.Namespace, stage: str, execute: Callable[[Spec], Outcome]
) -> int:
    """A job started by hand, from its parsed command line, run by ``execute``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = spec_from_args(args, stage)
    except UserError as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return execute(spec)[0]


def main_for(
    stage: str,
    description: str,
    execute: Callable[[Spec], Outcome],
    argv: Sequence[str] | None = None,
) -> int:
    """``python -m jobs.STAGE``: the job's own command line."""
    args = parser_for(stage, description=description).parse_args(argv)
    return from_command_line(args, stage, execute)
