"""What every launcher is, and the rules they share.

A launcher (local processes, SLURM, Ray) is a subclass of ``Launcher``, registered by name
and found by ``harness.launchers.get``; its verbs are documented on the class. Jobs are store
rows (``records.store``), given in dependency order, each at the attempt it is about to run.
The rules every launcher shares live here too: when a job is not run for a parent, how a
job's exit reads, where its spec and logs go. The local and Ray launchers drive their jobs
with one ``Driver`` (``harness.launchers.driver``).
"""

from __future__ import annotations

import functools
import shlex
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from harness.config import JobEnvironment, environment_for
from records.errors import UserError
from records.schema import IN_FLIGHT, JobRow
from records.spec import (
    EXIT_ALREADY_RUNNING,
    EXIT_DIVERGED,
    EXIT_HOST,
    EXIT_OK,
    EXIT_PARITY,
    EXIT_REQUEUE,
    EXIT_USER_ERROR,
    Spec,
)
from records.store import Store

Row = JobRow


def next_attempt(row: Row) -> Row:
    """A copy of a job's row for its next attempt (the store's row is left as it is)."""
    again = row.copy()
    again["attempt"] = row["attempt"] + 1
    return again


class Launcher(ABC):
    """A place where a sweep's jobs run: a subclass per kind, registered by name
    (``register``), holding a store and the sweep's config when there is one. The harness
    asks a launcher for these verbs alone (``harness.sweep`` and the CLI never ask which
    launcher it is):

    - ``describe``: what ``submit --dry-run`` prints for a GPU type's jobs;
    - ``check``: refuse, before anything runs, jobs the cluster cannot run (UserError);
    - ``submit``: hand the jobs over (store rows in dependency order, each at the attempt it
      is about to run); from then on the launcher owns every state change of its jobs;
    - ``poll``: bring the jobs' states in the store up to date;
    - ``wait``: follow jobs to their ends;
    - ``look_after``: what the harness does for a sweep each time it looks at it (a queue's
      waiting jobs submitted as room frees, host failures retried);
    - ``cancel``: stop the jobs wherever they are;
    - ``logs``: the files a job's stdout and stderr go to.

    The defaults are those of a launcher that drives its jobs from the submitting process
    (local processes, Ray): the states in the store are current, there is nothing to wait for
    once ``submit`` returns, cancelling records it, and logs are in the job folders.
    """

    name: ClassVar[str] = ""
    prefix: ClassVar[str] = ""  # how its ids start in the store's launcher_job_id column
    # Whether its jobs run on the harness's own host, where they may write a SQLite store;
    # jobs on other hosts write a SQLite store's records to their outboxes alone.
    jobs_share_host: ClassVar[bool] = False
    # Whether its jobs wait in a cluster's queue and outlive the harness's process: one in
    # flight there is followed rather than launched again, and ``look_after`` tends them.
    queued: ClassVar[bool] = False

    def __init__(self, store: Store, config: Any = None) -> None:
        self.store = store
        self.config = config

    @property
    def direct(self) -> bool:
        """Whether this launcher's jobs write their records to the store themselves."""
        return self.jobs_share_host or not self.store.is_sqlite

    def sweep_config(self) -> Any:
        """The sweep's config, which submitting needs (UserError without it)."""
        if self.config is None:
            raise UserError(f"the {self.name} launcher needs the sweep's cluster.yaml to submit")
        return self.config

    @classmethod
    @abstractmethod
    def describe(cls, gpu: Any, per_node: int, nodes: int) -> str:
        """What a job of ``per_node`` x ``nodes`` GPUs of the GPU type ``gpu`` (its
        ``gpu_types`` entry) is asked for, in one line."""

    def check(self, jobs: list[Row]) -> None:
        """Refuse, before anything runs, jobs the cluster cannot run (UserError)."""
        self.sweep_config()

    @abstractmethod
    def submit(self, jobs: list[Row], progress: bool = True) -> dict[str, str] | None:
        """Hand the jobs over. A launcher that drives them to the end returns id -> final
        state; one that leaves them in a queue returns None (follow them with ``poll``)."""

    def poll(self, jobs: list[Row]) -> dict[str, str]:
        """Bring the jobs' states in the store up to date; return id -> state."""
        return {job["id"]: job["state"] for job in jobs}

    def wait(
        self, job_ids: list[str], progress: bool = True, timeout: float | None = None
    ) -> dict[str, str]:
        """Follow the jobs until every one has ended (or ``timeout`` seconds); id -> state."""
        return {row["id"]: row["state"] for row in self.store.jobs_by_ids(job_ids)}

    def look_after(self, rows: list[Row]) -> bool:
        """Tend a sweep's jobs as the harness looks at it; whether any row changed."""
        return False

    def waiting_note(self) -> str:
        """What submit says of how its waiting jobs will be brought in ("" for nothing)."""
        return ""

    def cancel(self, jobs: list[Row]) -> None:
        """Stop the jobs wherever they are, and record them as cancelled by the user."""
        for job in jobs:
            self.store.set_state(job["id"], "cancelled", reason="cancelled by the user")

    def logs(self, job: Row) -> list[Path]:
        """The job's stdout and stderr files (which may not exist yet)."""
        return folder_logs(job)


# How each launcher's ids start in the store's launcher_job_id column.
PREFIXES = {"local": "pid:", "slurm": "slurm:", "ray": "ray:"}
_REGISTERED: dict[str, type[Launcher]] = {}


def register(name: str) -> Any:
    """Class decorator: the launcher called ``name`` in ``launcher.kind`` (its module is named
    in ``harness.launchers.MODULES``, and imported when the launcher is first asked for)."""

    def add(cls: type[Launcher]) -> type[Launcher]:
        cls.name = name
        cls.prefix = PREFIXES[name]
        _REGISTERED[name] = cls
        return cls

    return add


def registered(name: str) -> type[Launcher]:
    """The class registered as ``name`` (its module imported already)."""
    return _REGISTERED[name]


def launcher_of(row: Row) -> str | None:
    """The name of the launcher that holds a job, from its launcher id; None if none does."""
    launcher_id = row.get("launcher_job_id") or ""
    for name, prefix in PREFIXES.items():
        if launcher_id.startswith(prefix):
            return name
    return None


def not_run(parent: str, state: str | None) -> str:
    """Why a job was not run: the first parent that did not succeed."""
    return f"not run: depends on {parent}, which {state}"


def not_run_for_a_parent(reason: str | None) -> bool:
    """Whether ``reason`` is one of ``not_run``'s."""
    return (reason or "").startswith("not run: depends on ")


def needs_care(row: Row) -> bool:
    """Whether a job is one a launcher's look at the sweep may act on (SLURM's
    ``look_after``): waiting, failed, or not run."""
    return row["state"] in ("waiting", "failed") or (
        row["state"] == "cancelled" and (row["reason"] or "").startswith("not run: ")
    )


def downstream(rows: list[Row], chosen: list[Row]) -> tuple[list[Row], list[str]]:
    """The chosen jobs and every job downstream of them that has not succeeded and is not in
    flight (a transfer, export or inference not run because its training failed), in plan
    order, parents first; and the ids of downstream jobs that did succeed (on the earlier
    result). The chosen rows are returned as given."""
    by_id = {row["id"]: row for row in rows}
    depth: dict[str, int] = {}

    def depth_of(job_id: str) -> int:  # parents before their dependants, whatever the order
        if job_id not in depth:
            parents = by_id[job_id]["depends_on"] or [] if job_id in by_id else []
            depth[job_id] = 1 + max((depth_of(p) for p in parents), default=-1)
        return depth[job_id]

    rows = sorted(rows, key=lambda row: depth_of(row["id"]))
    ids = {row["id"] for row in chosen}
    stale = []
    for row in rows:
        if row["id"] in ids or not set(row["depends_on"] or []) & ids:
            continue
        if row["state"] == "succeeded":
            stale.append(row["id"])
        elif row["state"] not in IN_FLIGHT:
            ids.add(row["id"])
    picked = {row["id"]: row for row in chosen}
    return [picked.get(row["id"], row) for row in rows if row["id"] in ids], stale


# Reasons of failures that belong to the job's host, not to the job (SLURM's NODE_FAIL and
# BOOT_FAIL; a job's exit EXIT_HOST): the SLURM launcher retries them on another host, but
# for those SLURM takes back itself (REQUEUABLE).
HOST_FAILURE = ("host failure", "NODE_FAIL", "BOOT_FAIL")
# Ends a cluster may take back: SLURM requeues a job whose node failed, or that was
# preempted, when its requeue policy says so; such a job is followed until it is seen again.
REQUEUABLE = ("NODE_FAIL", "PREEMPTED")


def judge_exit(code: int, last_line: str) -> tuple[str, str | None]:
    """The state and reason of a job process that ended with ``code``, given its last line
    on stderr (the job's own one-line error, where it wrote one)."""
    if code == EXIT_OK:
        return "succeeded", None
    if code == EXIT_ALREADY_RUNNING:  # another runner holds the job: this one did nothing
        return "cancelled", "not run: " + (last_line.removeprefix("resnest-bench: ") or
                                           "already running")  # fmt: skip
    if code == EXIT_DIVERGED:
        return "failed", "diverged"
    if code == EXIT_USER_ERROR:
        return "failed", f"bad input: {last_line.removeprefix('resnest-bench: error: ')}"
    if code == EXIT_PARITY:
        return "failed", last_line.removeprefix("resnest-bench: ") or "parity check failed"
    if code == EXIT_REQUEUE:
        return "failed", "stopped for requeue too many times"
    if code == EXIT_HOST:  # its line: "host failure on HOST: what the collective said"
        line = last_line.removeprefix("resnest-bench: ")
        return "failed", line if line.startswith(HOST_FAILURE) else f"host failure: {line}"
    if code < 0:
        return "failed", f"killed by signal {-code}"
    return "failed", f"exit code {code}" + (f": {last_line}" if last_line else "")


def last_line(path: Any, prefer: str | None = None) -> str:
    """The last non-empty line of a log file ("" if there is none); with ``prefer``, the
    last line starting with it if there is one (the job's own error among a runner's)."""
    if path is None or not Path(path).is_file():
        return ""
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    preferred = [line for line in lines if prefer and line.startswith(prefer)]
    return (preferred or lines or [""])[-1].strip()


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


def environment_of(config: Any, job: Row) -> JobEnvironment:
    """The job environment of ``job`` (none without the sweep's config, as for a rerun from
    the store alone)."""
    if config is None or job["gpu_type"] not in config.gpu_types:
        return JobEnvironment()
    return environment_for(config, job["gpu_type"])


def setup_lines(environment: JobEnvironment) -> list[str]:
    """The shell lines that prepare a job's process: the setup lines, then the variables (so
    that they win over what the setup sets)."""
    exports = [f"export {name}={shlex.quote(value)}" for name, value in environment.env]
    return [*environment.setup, *exports]


def job_command(environment: JobEnvironment, spec_path: str | Path) -> list[str]:
    """The command that runs a job's spec on this machine: its python with ``-m jobs.run``,
    behind a ``bash`` that runs the setup lines first where there are any (``set -e``: a
    failing line fails the job; the python is looked up after them, on their PATH)."""
    command = [environment.python or sys.executable, "-m", "jobs.run", "--spec", str(spec_path)]
    lines = setup_lines(environment)
    if not lines:
        return command
    script = "\n".join(["set -e", *lines, 'exec "$@"'])
    return ["bash", "-c", script, "resnest-bench-job", *command]


def folder_logs(job: Row) -> list[Path]:
    """A job's logs in its own folder (the local and Ray launchers write them there)."""
    return [Path(job["job_dir"]) / name for name in ("stdout.log", "stderr.log")]


@functools.lru_cache(maxsize=16)
def _url_for_jobs(url: str) -> str:
    from records.store import url_for_jobs

    return url_for_jobs(url)


def spec_for(
    store: Store, job: Row, folders: dict[str, str] | None = None, direct: bool = True
) -> Spec:
    """The job's spec for its current attempt: the planned spec, in the folder the store
    gives the job, with the folders of its parents as inputs (``folders``: job id -> folder,
    known already where a whole sweep is submitted; else read from the store). ``direct``:
    the job writes its records to the store itself; else to its outbox alone."""
    from records.spec import OUTBOX_ONLY, from_dict, inputs_of

    parents = job["depends_on"] or []
    data = {**job["spec"], "out_dir": job["job_dir"], "attempt": job["attempt"],
            "store": _url_for_jobs(store.url) if direct else OUTBOX_ONLY,
            "submitted_at": round(time.time(), 3)}  # fmt: skip
    if parents:
        if folders is None or not all(parent in folders for parent in parents):
            folders = {row["id"]: row["job_dir"] for row in store.jobs_by_ids(parents)}
        data.update(inputs_of(data.get("stage", "train"), [folders[p] for p in parents]))
    return from_dict(data)


def write_spec(store: Store, job: Row, direct: bool = True) -> Path:
    """Write the job's spec file (``spec_for``) into its folder."""
    from records.spec import SPEC_FILE, save

    return save(Path(job["job_dir"]) / SPEC_FILE, spec_for(store, job, direct=direct).to_json())
