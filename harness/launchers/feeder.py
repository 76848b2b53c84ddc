"""The feeder: a small SLURM job that submits a sweep's waiting jobs from a compute node as
room frees, so that nothing is left running on the login node: the user may submit and log
out.

When a submission leaves jobs waiting for room (the site's submit limits, or
``launcher.slurm.max_queued``), the harness writes the feed (``slurm/feed.json`` in the
sweep's results folder, on the filesystem the compute nodes share): the waiting jobs, in
dependency order, each with its spec, and the SLURM ids of the parents already in the queue.
Then it submits one feeder, chained ``afterany`` to what it has just submitted, or to start a
minute later when nothing could go. A feeder, as it runs:

- reads the states of the parents from ``sacct``; a job whose parent failed is not run;
- submits what fits the room left (the next feeder counts against the limit too), with the
  same arrays and chains as the harness (``slurm_submit.Submission``);
- appends what it did to ``slurm/feed.jsonl``: each job's SLURM id, or why it was not run;
- submits the next feeder, chained ``afterany`` to what it submitted, while jobs still wait.

Like a job, a feeder never opens the store (a SQLite store is the harness's alone): the
harness reads ``feed.jsonl`` into the store as it reads the jobs' outboxes
(``harness.sweep.refresh``). Only one party submits waiting jobs at a time: while a feeder is
in the queue, ``status`` and ``submit --wait`` leave them to it; once none is (it stopped, or
was cancelled), they submit them themselves and start a new feeder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig
from harness.launchers.base import PREFIXES, Row, not_run, spec_for
from harness.launchers.sacct import slurm_folder
from harness.launchers.slurm_submit import Submission
from records.errors import UserError
from records.schema import ENDED_BADLY, IN_FLIGHT
from records.store import Store

PREFIX = PREFIXES["slurm"]
FEED = "feed.json"
LOG = "feed.jsonl"
LATER_S = 60  # with no room now: the next try starts this much later
ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "REQUEUED", "RESIZING", "UNKNOWN"}


def folder_of(config: ClusterConfig) -> Path:
    return Path(config.results_dir).resolve() / config.name / "slurm"


# -- the log: what the feeders did -----------------------------------------------------------


@dataclass
class FeedLog:
    fed: dict[tuple[str, int], str] = field(default_factory=dict)  # (id, attempt) -> SLURM id
    not_run: dict[tuple[str, int], str] = field(default_factory=dict)  # -> reason
    feeders: list[str] = field(default_factory=list)  # SLURM ids, in order
    errors: list[str] = field(default_factory=list)

    @property
    def settled(self) -> set[tuple[str, int]]:
        return set(self.fed) | set(self.not_run)


def read_log(path: Path) -> FeedLog:
    """The feed log's whole lines (a line being written waits for the next read)."""
    log = FeedLog()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return log
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        key = (entry.get("id"), entry.get("attempt"))
        if "slurm" in entry:
            log.fed[key] = entry["slurm"]
        elif "not_run" in entry:
            log.not_run[key] = entry["not_run"]
        elif "feeder" in entry:
            log.feeders.append(entry["feeder"])
        elif "error" in entry:
            log.errors.append(entry["error"])
    return log


def append(path: Path, entries: list[dict[str, Any]]) -> None:
    """Whole lines, flushed to disk before the next step (a feeder cut off half-way leaves
    at most a torn last line, which no reader takes)."""
    if not entries:
        return
    text = "".join(json.dumps(entry) + "\n" for entry in entries)
    with open(path, "a") as log:
        log.write(text)
        log.flush()
        os.fsync(log.fileno())


def collect(store: Store, rows: list[Row]) -> int:
    """Bring what the feeders submitted into the store: waiting jobs they sent get their
    SLURM ids (and are followed from then on), those they did not run their reasons.
    Returns how many rows changed."""
    waiting = {row["id"]: row for row in rows if row["state"] == "waiting" and row.get("job_dir")}
    if not waiting:
        return 0
    folders = {slurm_folder(row) for row in waiting.values()}
    changes = []
    for folder in folders:
        log = read_log(folder / LOG)
        for (job_id, attempt), slurm_id in log.fed.items():
            row = waiting.get(job_id)
            if row is not None and row["attempt"] == attempt:
                fields = {"launcher_job_id": PREFIX + slurm_id, "reason": None}
                changes.append((job_id, "submitted", fields))
        for (job_id, attempt), reason in log.not_run.items():
            row = waiting.get(job_id)
            if row is not None and row["attempt"] == attempt:
                changes.append((job_id, "cancelled", {"reason": reason}))
    store.set_states(changes)
    return len(changes)


def _queue_state(slurm_id: str) -> str:
    """The job's state in the queue; "" once SLURM no longer lists it; "UNKNOWN" where the
    queue cannot be asked (taken as alive: two parties feeding one sweep is worse than a
    wait)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    if out.returncode != 0:
        return "" if "Invalid job id" in out.stderr else "UNKNOWN"
    return out.stdout.strip()


def current(folder: Path) -> str | None:
    """The SLURM id of the sweep's feeder while one is in the queue, else None. A feeder
    logs its successor before it ends: the log read after seeing it gone is final."""
    seen = None
    for _ in range(5):
        feeders = read_log(folder / LOG).feeders
        if not feeders or feeders[-1] == seen:
            return None
        seen = feeders[-1]
        if _queue_state(seen) in ALIVE:
            return seen
    return None


# -- the harness: write the feed, start a feeder ----------------------------------------------


def write_feed(config: ClusterConfig, store: Store, rows: list[Row], folder: Path) -> int:
    """The feed of the sweep's waiting jobs (``rows``: the sweep's jobs), written whole
    (a feeder reading it meanwhile sees the old one or the new one). Returns how many."""
    by_id = {row["id"]: row for row in rows}
    waiting = [row for row in rows if row["state"] == "waiting"]
    parents = {p for row in waiting for p in row["depends_on"] or []}
    outside = {p: by_id[p] for p in parents if p in by_id and by_id[p]["state"] != "waiting"}
    folders = {p: row["job_dir"] for p, row in outside.items()}
    folders |= {row["id"]: row["job_dir"] for row in waiting}
    direct = not store.is_sqlite  # a SQLite store is the harness's: records go by outbox
    submitted = [t for row in rows if (t := row.get("submitted_at"))]
    feed = {
        "sweep": config.name,
        "since": (min(submitted) if submitted else time.time()) - 60,
        "folders": folders,
        "queued": {
            p: (row["launcher_job_id"] or "").removeprefix(PREFIX)
            for p, row in outside.items()
            if row["state"] in IN_FLIGHT and (row["launcher_job_id"] or "").startswith(PREFIX)
        },
        "states": {p: row["state"] for p, row in outside.items() if row["state"] not in IN_FLIGHT},
        "jobs": [
            {
                **{k: v for k, v in row.items() if k != "spec"},
                "spec_text": spec_for(store, row, folders, direct=direct).to_json(),
            }
            for row in waiting
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{FEED}.{os.getpid()}"
    temporary.write_text(json.dumps(feed, default=str))
    os.replace(temporary, folder / FEED)
    return len(waiting)


def start(config: ClusterConfig, store: Store, after: list[str]) -> str | None:
    """Write the feed of the sweep's waiting jobs and, unless a feeder is in the queue
    already (it reads the new feed when it runs), submit one, chained ``afterany`` to the
    SLURM ids ``after``. Returns the new feeder's SLURM id, or None."""
    folder = folder_of(config)
    rows = store.jobs(config.name)
    if not write_feed(config, store, rows, folder) or current(folder):
        return None
    gpu_type = next(row["gpu_type"] for row in rows if row["state"] == "waiting")
    try:
        feeder = submit_feeder(config, folder, after, gpu_type)
    except Exception as exc:  # the jobs wait on; status submits them as room frees
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        print(f"resnest-bench: no feeder started ({message}); `status -c CLUSTER_YAML` submits "
              "the waiting jobs as room frees", file=sys.stderr)  # fmt: skip
        return None
    append(folder / LOG, [{"feeder": feeder, "at": round(time.time(), 3)}])
    return feeder


def withdraw(rows: list[Row]) -> None:
    """Waiting jobs cancelled by the user: their sweep's feeder is stopped (``status``
    starts a new one for the jobs still waiting), what a feeder had already sent of them is
    cancelled in SLURM, and the log says they are not to be run, for any feeder still
    running."""
    by_folder: dict[Path, list[Row]] = {}
    for row in rows:
        if row.get("job_dir"):
            by_folder.setdefault(slurm_folder(row), []).append(row)
    for folder, group in by_folder.items():
        if not (folder / LOG).exists() and not (folder / FEED).exists():
            continue
        running = current(folder)
        if running:
            subprocess.run(["scancel", running], capture_output=True, timeout=60)
        (folder / FEED).unlink(missing_ok=True)
        fed = read_log(folder / LOG).fed
        keys = [(row["id"], row["attempt"]) for row in group]
        sent = [fed[key] for key in keys if key in fed]
        if sent:
            subprocess.run(["scancel", *sent], capture_output=True, timeout=60)
        said = "cancelled by the user"
        append(folder / LOG, [{"id": i, "attempt": a, "not_run": said} for i, a in keys])


def submit_feeder(config: ClusterConfig, folder: Path, after: list[str], gpu_type: str) -> str:
    """One feeder job: one CPU, a few minutes, on ``launcher.slurm.feeder_partition`` (else
    the cluster's default partition), never requeued; in the account and QOS of the GPU type
    of the jobs it feeds, so that it counts against their limit."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0, python=sys.executable)
    params: dict[str, Any] = {"job_name": f"{config.name}-feeder", "ntasks_per_node": 1,
                              "cpus_per_task": 1, "time": 10}  # fmt: skip
    if config.launcher.slurm.feeder_partition:
        params["partition"] = config.launcher.slurm.feeder_partition
    gpu = config.gpu_types.get(gpu_type)
    for name in ("account", "qos"):
        if gpu is not None and getattr(gpu, name):
            params[name] = getattr(gpu, name)
    roots = sorted({slurm_id.split("_")[0] for slurm_id in after})
    if roots:
        params["dependency"] = "afterany:" + ":".join(roots)
    else:
        params["additional_parameters"] = {"begin": f"now+{LATER_S}"}
    executor.update_parameters(**params)
    return executor.submit(Feeder(config, str(folder))).job_id


# -- the feeder, on a compute node -------------------------------------------------------------


class Feeder:
    """The submitit callable of a feeder job."""

    def __init__(self, config: ClusterConfig, folder: str) -> None:
        self.config, self.folder = config, folder

    def __call__(self) -> None:
        from submitit.helpers import clean_env

        with clean_env():  # the job's SLURM variables would leak into what it submits
            feed(self.config, Path(self.folder))


def feed(config: ClusterConfig, folder: Path) -> tuple[int, int, str | None]:
    """One feeder's work (see the module's docstring). Returns (submitted, not run, the
    next feeder's SLURM id)."""
    from harness.launchers.sacct import map_state, sacct_states
    from harness.launchers.slurm_site import fit, submit_room

    plan = json.loads((folder / FEED).read_text())
    log = read_log(folder / LOG)
    jobs = [job for job in plan["jobs"] if (job["id"], job["attempt"]) not in log.settled]
    if not jobs:
        return 0, 0, None
    # Parents in the queue: those the feed names, and those of this feed's own jobs that a
    # feeder sent (at the attempt the feed holds: an older attempt's id is not the job's).
    mine = {(job["id"], job["attempt"]) for job in plan["jobs"]}
    queued = {job_id: slurm_id for (job_id, attempt), slurm_id in log.fed.items()
              if (job_id, attempt) in mine}  # fmt: skip
    queued |= plan["queued"]
    records = sacct_states(list(queued.values()), plan["since"])
    states = dict(plan["states"])
    for parent, slurm_id in queued.items():
        record = records.get(slurm_id)
        states[parent] = map_state(record)[0] if record else "submitted"
    ready: list[Row] = []
    ready_ids: set[str] = set()
    not_run_now: list[dict[str, Any]] = []
    for job in jobs:
        parents = job["depends_on"] or []
        bad = next((p for p in parents if states.get(p) in ENDED_BADLY), None)
        if bad is not None:
            not_run_now.append({"id": job["id"], "attempt": job["attempt"],
                                "not_run": not_run(bad, states[bad])})  # fmt: skip
            states[job["id"]] = "cancelled"
        elif all(states.get(p) in ("succeeded", *IN_FLIGHT) or p in ready_ids for p in parents):
            ready.append(job)
            ready_ids.add(job["id"])
    append(folder / LOG, not_run_now)
    room, _ = submit_room(config)
    room = len(ready) if room is None else max(0, room - 1)  # the next feeder's place
    chosen_ids = fit(ready, room)
    chosen = [job for job in ready if job["id"] in chosen_ids]
    sent: dict[str, str] = {}
    if chosen:
        now = round(time.time(), 3)
        flying = {p: queued[p] for job in chosen for p in job["depends_on"] or []
                  if states.get(p) in IN_FLIGHT and p in queued}  # fmt: skip

        def spec_text(job: Row) -> str:
            return json.dumps({**json.loads(job["spec_text"]), "submitted_at": now})

        def sent_now(group: list[Row], ids: dict[str, str]) -> None:  # logged at once
            append(log_path, [{"id": j["id"], "attempt": j["attempt"], "slurm": ids[j["id"]]}
                              for j in group])  # fmt: skip

        log_path = folder / LOG
        submission = Submission(config, chosen, plan["folders"], flying, spec_text, sent_now)
        try:
            submission.run()
        except Exception as exc:  # what went out is logged and stays: the rest waits on
            append(folder / LOG, [{"error": f"sbatch refused ({exc})", "at": now}])
            raise UserError(f"feeder: sbatch refused the waiting jobs ({exc})") from None
        sent = submission.submitted
    left = len(jobs) - len(sent) - len(not_run_now)
    following = None
    if left:
        dropped = {entry["id"] for entry in not_run_now}
        gpu_type = next(
            j["gpu_type"] for j in jobs if j["id"] not in sent and j["id"] not in dropped
        )
        following = submit_feeder(config, folder, list(sent.values()), gpu_type)
        append(folder / LOG, [{"feeder": following, "at": round(time.time(), 3)}])
    print(f"feeder: {len(sent)} submitted, {len(not_run_now)} not run, {left} still waiting",
          flush=True)  # fmt: skip
    return len(sent), len(not_run_now), following
