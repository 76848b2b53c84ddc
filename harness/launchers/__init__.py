"""Launchers: where a sweep's jobs run (local processes, SLURM, Ray)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, enabled: bool) -> Any:
    """The sweep's progress bar, on stderr, one tick per job that has ended."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="job",
        desc="sweep",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def exit_reason(code: int, last_line: str) -> str:
    """Why a job process ended badly, from its exit code and its last line on stderr."""
    from jobs.spec import EXIT_ALREADY_RUNNING, EXIT_DIVERGED, EXIT_USER_ERROR

    if code == EXIT_DIVERGED:
        return "diverged"
    if code == EXIT_ALREADY_RUNNING:
        return "not run: " + (last_line.removeprefix("resnest-bench: ") or "already running")
    if code == EXIT_USER_ERROR:
        return f"bad input: {last_line.removeprefix('resnest-bench: error: ')}"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}" + (f": {last_line}" if last_line else "")


def last_line(path: Any, prefer: str | None = None) -> str:
    """The last non-empty line of a log file ("" if there is none); with ``prefer``, the
    last line starting with it if there is one (the job's own error among a runner's)."""
    from pathlib import Path

    if path is None or not Path(path).is_file():
        return ""
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    preferred = [line for line in lines if prefer and line.startswith(prefer)]
    return (preferred or lines or [""])[-1].strip()


def mark_interrupted(store: Any, job_ids: Any) -> None:
    """Ctrl-C in the submitting process: the jobs it was running or holding are cancelled."""
    for job_id in job_ids:
        store.set_state(job_id, "cancelled", reason="interrupted by the user")
