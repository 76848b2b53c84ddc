"""What every launcher is, and the rules they share.

A launcher (local processes, SLURM, Ray) is chosen by name (``get``) and offers the same five
operations: ``check`` that the cluster can run the jobs, ``submit`` them, ``poll`` their
states, ``cancel`` them and name their ``logs``. From submission on, the launcher owns every
state change of its jobs in the store. Jobs are store rows (``records.store``), given in
dependency order, each at the attempt it is about to run.

The local and Ray launchers run a sweep from the submitting process; both hand their jobs to
one ``Driver``, which starts each job once its parents have succeeded, marks it not run when
one of them did not, retries what the backend says to retry, and keeps the progress bar.
"""

from __future__ import annotations

import functools
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from harness.config import JobEnvironment, environment_for
from records.errors import UserError
from records.schema import ENDED_BADLY, IN_FLIGHT
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

Row = dict[str, Any]


class Launcher(Protocol):
    """The operations the harness asks of a launcher."""

    name: str
    prefix: str  # how its ids start in the store's launcher_job_id column ("slurm:", ...)

    def check(self, jobs: list[Row]) -> None:
        """Refuse, before anything runs, jobs the cluster cannot run (UserError)."""

    def submit(self, jobs: list[Row], progress: bool = True) -> dict[str, str] | None:
        """Hand the jobs over. A launcher that drives them to the end returns id -> final
        state; one that leaves them in a queue returns None (follow them with ``poll``)."""

    def poll(self, jobs: list[Row]) -> dict[str, str]:
        """Bring the jobs' states in the store up to date; return id -> state."""

    def cancel(self, jobs: list[Row]) -> None:
        """Stop the jobs wherever they are, and record them as cancelled by the user."""

    def logs(self, job: Row) -> list[Path]:
        """The job's stdout and stderr files (which may not exist yet)."""


class BaseLauncher:
    """What the launchers have in common: a store, the sweep's config when there is one, and
    the behaviour of a launcher that drives its jobs from the submitting process (the states
    in the store are current; cancelling records it; logs are in the job folders)."""

    name = ""
    prefix = ""
    # Whether its jobs run on the harness's own host, where they may write a SQLite store;
    # jobs on other hosts write a SQLite store's records to their outboxes alone.
    jobs_share_host = False

    def __init__(self, store: Store, config: Any = None) -> None:
        self.store = store
        self.config = config

    @property
    def direct(self) -> bool:
        """Whether this launcher's jobs write their records to the store themselves."""
        return self.jobs_share_host or not self.store.is_sqlite

    def sweep_config(self) -> Any:
        if self.config is None:
            raise UserError(f"the {self.name} launcher needs the sweep's cluster.yaml to submit")
        return self.config

    def check(self, jobs: list[Row]) -> None:
        self.sweep_config()

    def poll(self, jobs: list[Row]) -> dict[str, str]:
        return {job["id"]: job["state"] for job in jobs}

    def cancel(self, jobs: list[Row]) -> None:
        for job in jobs:
            self.store.set_state(job["id"], "cancelled", reason="cancelled by the user")

    def logs(self, job: Row) -> list[Path]:
        return folder_logs(job)


# How each launcher's ids start in the store's launcher_job_id column.
PREFIXES = {"local": "pid:", "slurm": "slurm:", "ray": "ray:"}
_REGISTERED: dict[str, type[BaseLauncher]] = {}


def register(name: str) -> Any:
    """Class decorator: the launcher called ``name`` in ``launcher.kind`` (its module is named
    in ``harness.launchers.MODULES``, and imported when the launcher is first asked for)."""

    def add(cls: type[BaseLauncher]) -> type[BaseLauncher]:
        cls.name = name
        cls.prefix = PREFIXES[name]
        _REGISTERED[name] = cls
        return cls

    return add


def registered(name: str) -> type[BaseLauncher]:
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


class Backend(Protocol):
    """How the Driver runs one job: start it, and hear when jobs end."""

    def room(self) -> bool:
        """Whether another job may start now."""

    def start(self, job: Row) -> None:
        """Start the job (its attempt set); record it as running with its launcher id."""

    def ended(self) -> list[tuple[Row, int, str]]:
        """Jobs that ended since the last call: (job, exit code, last line on stderr); may
        wait a little for one."""

    def retry(self, job: Row, code: int) -> bool:
        """Whether a job that ended with ``code`` runs again, as its next attempt."""

    def stop(self) -> None:
        """Stop every job still running (the user pressed Ctrl-C)."""


class Following(Protocol):
    """A backend that follows a job another runner holds (exit ``EXIT_ALREADY_RUNNING``)
    to its end, rather than marking it not run."""

    def following(self, job: Row) -> None:
        """Record that the job is followed (and who runs it)."""

    def follow(self, job: Row) -> tuple[str, str | None] | None:
        """The job's end, (state, reason), once its runner has let go; None until then."""


class Driver:
    """Runs store rows in dependency order through a backend, to the end of every one.

    One failed job never stops the others; the jobs after it are marked as not run. A job
    whose process ended with ``EXIT_ALREADY_RUNNING`` is followed to its end where the
    backend can follow (``Following``), and marked not run where it cannot.
    """

    POLL_S = 0.2

    def __init__(
        self,
        store: Store,
        jobs: list[Row],
        backend: Backend,
        progress: bool = True,
    ) -> None:
        self.store = store
        self.backend = backend
        self.follows = hasattr(backend, "follow")
        self.waiting = {job["id"]: job for job in jobs}
        self.running: dict[str, Row] = {}
        self.followed: dict[str, Row] = {}
        self.final: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.outside: dict[str, str | None] = {}  # jobs outside this run: they stay put
        self.bar = progress_bar(len(jobs), progress)

    def run(self) -> dict[str, str]:
        """Drive every job to its end; return id -> final state."""
        try:
            while self.waiting or self.running or self.followed:
                self._check_followed()
                self._start_ready()
                for job, code, last in self.backend.ended():
                    self._judge(job, code, last)
                if not self.running and (self.waiting or self.followed):
                    time.sleep(self.POLL_S)  # waiting on jobs outside this run
        except KeyboardInterrupt:
            self.backend.stop()
            for job_id in [*self.running, *self.waiting, *self.followed]:
                self.store.set_state(job_id, "cancelled", reason="interrupted by the user")
            raise
        finally:
            self.bar.close()
        return self.final

    def state_of(self, job_id: str) -> str | None:
        if job_id in self.final:
            return self.final[job_id]
        if job_id in self.waiting or job_id in self.running or job_id in self.followed:
            return "pending"
        if job_id not in self.outside:
            row = self.store.job(job_id)
            self.outside[job_id] = row["state"] if row else None
        return self.outside[job_id]

    def finish(self, job_id: str, state: str, reason: str | None = None, record: bool = True):
        if record:
            self.store.set_state(job_id, state, reason=reason)
        self.final[job_id] = state
        self.counts[state] += 1
        self.bar.update(1)
        self.bar.set_postfix(running=len(self.running), **self.counts)

    def _start_ready(self) -> None:
        for job_id, job in list(self.waiting.items()):
            parents = job["depends_on"] or []
            states = [self.state_of(parent) for parent in parents]
            blocked = [p for p, s in zip(parents, states, strict=True) if s in ENDED_BADLY]
            if blocked:
                del self.waiting[job_id]
                self.finish(job_id, "cancelled", not_run(blocked[0], self.state_of(blocked[0])))
            elif all(s == "succeeded" for s in states) and self.backend.room():
                del self.waiting[job_id]
                self.running[job_id] = job
                self.backend.start(job)

    def _judge(self, job: Row, code: int, last: str) -> None:
        job_id = job["id"]
        del self.running[job_id]
        if (self.store.job(job_id) or {}).get("state") == "cancelled":
            self.finish(job_id, "cancelled", record=False)  # by `cancel`: keep its reason
        elif code == EXIT_ALREADY_RUNNING and self.follows:
            self.backend.following(job)  # type: ignore[attr-defined]
            self.followed[job_id] = job
        elif code not in (EXIT_OK, EXIT_ALREADY_RUNNING) and self.backend.retry(job, code):
            job["attempt"] += 1
            self.running[job_id] = job
            self.backend.start(job)
        else:
            self.finish(job_id, *judge_exit(code, last))

    def _check_followed(self) -> None:
        for job_id, job in list(self.followed.items()):
            ended = self.backend.follow(job)  # type: ignore[attr-defined]
            if ended is not None:
                del self.followed[job_id]
                self.finish(job_id, *ended)
