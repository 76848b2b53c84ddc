"""Reading SLURM's accounting: ``sacct`` lines to records, a record to the store's state and
reason (with the job's own last error line from its log), and ``poll``, which brings a
sweep's rows and attempts up to date from one sacct call."""

from __future__ import annotations

import datetime
import functools
import re
import time
from pathlib import Path
from typing import Any

from harness.launchers.base import HOST_FAILURE, PREFIXES, Row, judge_exit, not_run
from harness.launchers.slurm_site import _run
from records.schema import ENDED_BADLY
from records.spec import (
    EXIT_ALREADY_RUNNING,
    EXIT_DIVERGED,
    EXIT_HOST,
    EXIT_PARITY,
    EXIT_REQUEUE,
    EXIT_USER_ERROR,
)
from records.store import Store

SACCT_FIELDS = ("JobID", "State", "ExitCode", "Reason", "Start", "End", "Submit", "NodeList")
# The fields every line has; those after them came later (a recorded output may lack them).
REQUIRED_FIELDS = 6
# sacct state -> (store state, reason). Pending, requeued and suspended jobs wait in the queue.
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED"}
ACTIVE = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}
FAILED_REASONS = {
    "OUT_OF_MEMORY": "OOM: the job ran out of memory",
    "TIMEOUT": "TIMEOUT: the job reached its time limit",
    "NODE_FAIL": "NODE_FAIL: a node of the job failed",
    "PREEMPTED": "PREEMPTED: the job was preempted and not requeued",
    "BOOT_FAIL": "BOOT_FAIL: a node of the job failed to boot",
    "DEADLINE": "DEADLINE: the job reached its deadline",
}
NOT_RUN = "not run: a job it depends on did not succeed"
# SLURM splits an aftercorr array's pending tasks out a few at a time (SchedulerParameters
# correspond_after_task_cnt, 10 by default); a task split out after its parent task's record
# was purged (MinJobAge after it ended) is cancelled on a dependency its parent met.
DEPENDENCY_DROPPED = (
    "not run: SLURM cancelled it on its dependency, though every job it depends on "
    "succeeded (an aftercorr task split out after its parent's record was purged); "
    "status -c CLUSTER_YAML submits it again"
)
PREFIX = PREFIXES["slurm"]
JOB_CODES = (EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_PARITY, EXIT_ALREADY_RUNNING, EXIT_HOST)


def _expand(job_id: str) -> list[str]:
    """``123_[0-3,5%2]`` (pending array tasks, collapsed by sacct) -> ``123_0`` ... ``123_5``."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    base, spec = match.groups()
    out: list[str] = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out.extend(f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return out


def parse_sacct(out: str) -> dict[str, dict[str, str]]:
    """``sacct -X -n -P`` lines -> SLURM id -> record. A concrete task's own line
    (``2_0 RUNNING``) always wins over a range that sacct still lists it in
    (``2_[0-1%2] PENDING``: the array's pending remainder); among a task's own lines (``-D``:
    one per run of a requeued job) the last one is its current state, and the run before it
    is kept as ``Previous`` (a job SLURM requeued after its node failed)."""
    concrete: dict[str, dict[str, str]] = {}
    ranged: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        values = line.split("|")
        if not REQUIRED_FIELDS <= len(values) <= len(SACCT_FIELDS):
            continue
        record = dict(zip(SACCT_FIELDS, values, strict=False))
        ids = _expand(record["JobID"])
        target = ranged if ids != [record["JobID"]] else concrete
        for job_id in ids:
            if job_id in target:
                record = {**record, "Previous": target[job_id]["State"].split()[0]}
            target[job_id] = record
    return {**ranged, **concrete}


@functools.lru_cache(maxsize=8192)
def timestamp(value: str | None) -> float | None:
    """A sacct time (``2026-11-29T01:00:00``, the cluster's local time) as Unix time; None
    for ``Unknown``, ``None`` or nothing (a job not started, or not ended, yet). Remembered:
    sacct's times are to the second, and the tasks of an array share theirs by the thousand
    (each conversion asks the C library for the local time zone's offset)."""
    if not value or not value[:1].isdigit():
        return None
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def hosts_of(record: dict[str, str]) -> str | None:
    """The nodes a job ran on, as sacct names them (``node[1-2]``); None before it has any."""
    nodes = record.get("NodeList") or ""
    return None if not nodes or nodes.startswith("None") else nodes


def map_state(
    record: dict[str, str], log_err: Path | list[Path] | None = None
) -> tuple[str, str | None]:
    """A sacct record -> (store state, reason), reading the job's own line from ``log_err``
    (rank 0's stderr, or every task's with rank 0's first: ``err_logs``)."""
    state = record["State"].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    reason = record.get("Reason", "")
    again = FAILED_REASONS.get(record.get("Previous", ""))
    if state in QUEUED:
        if again:  # SLURM requeued it, as it does after a node failure
            return "submitted", f"requeued after {again}" + (
                f"; waiting: {reason}" if reason not in ("", "None") else "")  # fmt: skip
        return "submitted", (None if reason in ("", "None") else reason)
    if state in ACTIVE:
        return "running", (f"running again after {again}" if again else None)
    if state == "COMPLETED":
        return "succeeded", None
    if state == "CANCELLED":
        # SLURM's own cancel of a job whose dependency failed says no "by": a person's
        # scancel of a job waiting on its dependency says "CANCELLED by UID", and stays so
        if reason in ("Dependency", "DependencyNeverSatisfied") and record["State"] == state:
            return "cancelled", NOT_RUN
        return "cancelled", record["State"]
    if state in FAILED_REASONS:
        return "failed", FAILED_REASONS[state]
    code, _, sig = record.get("ExitCode", "0:0").partition(":")
    last = _job_line(log_err)
    if last.startswith("resnest-bench: host failure"):  # whatever code srun passed on
        return "failed", last.removeprefix("resnest-bench: ")
    if code == str(EXIT_REQUEUE):
        return "failed", "stopped for requeue, but SLURM did not requeue it"
    if code.isdigit() and int(code) in JOB_CODES:  # the job's own: they mean the same anywhere
        return judge_exit(int(code), last)
    detail = f"FAILED exit code {code}" + (f" (signal {sig})" if sig not in ("", "0") else "")
    return "failed", detail + (f": {last}" if last else "")


def _lines(log_err: Path) -> list[str]:
    if not Path(log_err).is_file():
        return []
    return [
        re.sub(r"^\[rank\d+\]:\s*", "", line).strip()
        for line in Path(log_err).read_text(errors="replace").splitlines()
        if line.strip()
    ]


def _job_line(log_err: Path | list[Path] | None) -> str:
    """What the job's stderr says of the end: rank 0's own one-line error if it wrote one,
    else another rank's host failure (srun kills the other tasks when one ends badly, so the
    rank that met the failure first may be the only one to say it), else rank 0's last line
    (an exception), with srun's line naming the first task that ended badly and its node
    (``srun: error: node2: task 1: Exited with exit code 1``)."""
    paths = [] if log_err is None else [log_err] if isinstance(log_err, Path | str) else log_err
    if not paths:
        return ""
    lines = _lines(paths[0])
    own = [line for line in lines if line.startswith("resnest-bench:")]
    if own:
        return own[-1]
    for other in paths[1:]:
        theirs = [line for line in _lines(other) if line.startswith("resnest-bench: host failure")]
        if theirs:
            return theirs[-1]
    tasks = [line.removeprefix("srun: error: ") for line in lines
             if re.match(r"srun: error: \S+: tasks? [\d-]+: ", line)]  # fmt: skip
    job = [line for line in lines if not line.startswith("srun:")]
    text = job[-1] if job else (lines[-1] if lines else "")
    return text + (f" (first to end: {tasks[0]})" if tasks and job else "")


# -- following the jobs ---------------------------------------------------------------------


def sacct_states(slurm_ids: list[str], since: float | None = None) -> dict[str, dict[str, str]]:
    """One sacct call for many jobs: SLURM id -> {State, ExitCode, Reason, ...}. ``since``
    (a Unix time before the jobs were submitted) keeps out older jobs that had the same ids
    (job ids wrap around, and a rebuilt cluster counts from 1 again)."""
    if not slurm_ids:
        return {}
    roots = sorted({i.split("_")[0] for i in slurm_ids})
    cmd = ["sacct", "-X", "-n", "-P", "-D", "--format=" + ",".join(SACCT_FIELDS), "-j",
           ",".join(roots)]  # fmt: skip
    if since is not None:
        cmd += ["-S", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since))]
    return parse_sacct(_run(cmd))


def slurm_folder(job: Row) -> Path:
    """Where the job's sweep keeps its SLURM files (submitit's, the feed): beside ``jobs/``."""
    return Path(job["job_dir"]).parent.parent / "slurm"


def log_paths(job: Row) -> list[Path]:
    """submitit's stdout and stderr of rank 0 for a SLURM job of the store."""
    slurm_id = (job.get("launcher_job_id") or "").removeprefix(PREFIX)
    folder = slurm_folder(job)
    return [folder / f"{slurm_id}_0_log.out", folder / f"{slurm_id}_0_log.err"]


def err_logs(job: Row) -> list[Path]:
    """Every task's stderr of a SLURM job of the store, rank 0's first."""
    first = log_paths(job)[1]
    slurm_id = first.name.removesuffix("_0_log.err")
    others = sorted(first.parent.glob(f"{slurm_id}_*_log.err"), key=lambda p: p.name)
    return [first, *(p for p in others if p != first)]


def state_of(store: Store, job_id: str) -> str | None:
    """The state the store holds for a job (None: no such job)."""
    row = store.job(job_id)
    return None if row is None else row["state"]


def poll(store: Store, rows: list[Row]) -> dict[str, str]:
    """Update the store from one sacct call; return id -> store state for ``rows``."""
    followed = {
        row["id"]: (row["launcher_job_id"] or "").removeprefix(PREFIX)
        for row in rows
        if (row.get("launcher_job_id") or "").startswith(PREFIX)
    }
    submitted = [t for row in rows if (t := row.get("submitted_at"))]
    records = sacct_states(list(followed.values()), min(submitted) - 60 if submitted else None)
    attempts = store.latest_attempts(list(followed))
    new: dict[str, tuple[str, str | None]] = {}
    seen: list[dict[str, Any]] = []
    for row in rows:
        record = records.get(followed.get(row["id"], ""))
        if record is None:
            new[row["id"]] = (row["state"], row["reason"])
        elif row["state"] == "cancelled":
            new[row["id"]] = ("cancelled", row["reason"])  # by the harness: keep why
        else:
            # every task's log, read only for a job that ended badly
            ended_badly = record["State"].split()[0] not in (*QUEUED, *ACTIVE, "COMPLETED")
            new[row["id"]] = map_state(record, err_logs(row) if ended_badly else None)
    changes = []
    for row in rows:
        state, reason = new[row["id"]]
        # SLURM cancels a job whose parent failed (kill-on-invalid-dep); sacct does not always
        # say it was for the dependency: name the parent that did not succeed either way.
        if reason == NOT_RUN or (state == "cancelled" and reason in ("CANCELLED", "None", "")):
            parents = {
                parent: new[parent][0] if parent in new else state_of(store, parent)
                for parent in row["depends_on"] or []
            }
            failed = [(p, s) for p, s in parents.items() if s in ENDED_BADLY]
            if failed:
                reason = not_run(*failed[0])
            elif reason == NOT_RUN and parents and set(parents.values()) == {"succeeded"}:
                reason = DEPENDENCY_DROPPED
        attempt = max(row["attempt"], attempts.get(row["id"], row["attempt"]))
        if (state, reason, attempt) != (row["state"], row["reason"], row["attempt"]):
            changes.append((row["id"], state, {"reason": reason, "attempt": attempt}))
            record = records.get(followed.get(row["id"], ""))
            if record is not None:  # what the queue saw of this attempt: when and where
                seen.append(
                    attempt_of(row["id"], attempt, followed[row["id"]], state, record)
                    | {"reason": reason, "host_failure": host_failed(state, reason)}
                )
    store.set_states(changes)
    store.record_attempts(seen)
    return {job_id: state for job_id, (state, _) in new.items()}


def host_failed(state: str, reason: str | None) -> bool:
    """Whether a job's end belongs to its host rather than to the job (``HOST_FAILURE``)."""
    return state == "failed" and (reason or "").startswith(HOST_FAILURE)


def attempt_of(
    job_id: str, attempt: int, slurm_id: str, state: str, record: dict[str, str]
) -> dict[str, Any]:
    """An attempt's row from its sacct record: the queue's own times (Submit, Start, End) and
    nodes, which the figures of queue wait use."""
    return {
        "job_id": job_id, "attempt": attempt, "launcher_job_id": PREFIX + slurm_id,
        "state": state, "submitted_at": timestamp(record.get("Submit")),
        "started_at": timestamp(record.get("Start")), "ended_at": timestamp(record.get("End")),
        "hosts": hosts_of(record),
    }  # fmt: skip
