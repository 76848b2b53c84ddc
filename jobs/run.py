"""Every job starts here: one dispatch from a spec to the job of its stage.

Launchers write a spec file per job (``records.spec``) and run
``python -m jobs.run --spec spec.json`` (SLURM tasks and Ray workers call ``execute_file``
in-process); ``resnest-bench train`` builds the spec from a command line and comes here
too (``python -m jobs.train`` and its siblings run their own stage: ``jobs.stage``). A job
takes its folder's lock, runs, and ends with one of the exit codes of ``records.spec``; bad
input is one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from jobs.stage import Outcome, from_command_line
from records.errors import UserError
from records.spec import EXIT_USER_ERROR, Spec, load, store_from_environment

# The module whose ``execute(spec) -> (exit code, stopping signal)`` runs each stage.
STAGE_MODULES = {
    "train": "jobs.train",
    "transfer": "jobs.train",
    "export": "jobs.export",
    "infer": "jobs.infer",
}


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


def run_from_args(args: argparse.Namespace, stage: str) -> int:
    """A job started by hand from the harness's command line (``resnest-bench train``)."""
    return from_command_line(args, stage, execute)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the job's spec file (JSON)")
    args = parser.parse_args(argv)
    return execute_file(args.spec)[0]


if __name__ == "__main__":
    sys.exit(main())
