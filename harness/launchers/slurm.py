"""The SLURM launcher: submitit job arrays, afterok dependencies, sacct polling.

Submission needs neither torch nor a GPU: the pickled callable is ``jobs.slurm_task.SlurmTask``
(torch-free at import). Each GPU type's settings in cluster.yaml become the sbatch options of
its jobs; a job with N GPUs per node on M nodes runs as N x M tasks, one per GPU, which form
one process group from the SLURM environment.

Jobs with nothing to wait for go out as one array per GPU type (``--array=0-K%P``, P from
``launcher.slurm.array_parallelism``), in chunks of at most the site's ``MaxArraySize``
tasks (read with ``scontrol show config``); each chunk is an array of its own, and the
chains below are kept chunk by chunk. The jobs of a later stage whose parents form such an
array, one child per task (a transfer per training job, an export per transfer, an inference
per export), go out as one array too, chained task by task with
``--dependency=aftercorr:<parents' array>``: task i starts when task i of the parents'
array has succeeded. A job with several parents (the winner's export) goes out on its own
with ``--dependency=afterok:<parent>:<parent>...``. Either way ``--kill-on-invalid-dep=yes``
makes a failed parent cancel exactly its own dependants, rather than leave them pending for
ever. A sweep of 1,000 training jobs with their transfer, export and inference jobs is a
handful of sbatch calls: four per GPU type (``harness.launchers.slurm_submit``). Jobs over
the site's submit limits wait in the store, and a feeder job brings them in from the
cluster as room frees (``harness.launchers.feeder``).

States come from ``sacct`` (``harness.launchers.sacct.poll``), one call for all the jobs being
followed, polled with backoff.
"""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig
from harness.launchers import feeder
from harness.launchers.base import (
    PREFIXES,
    REQUEUABLE,
    Launcher,
    Row,
    downstream,
    needs_care,
    next_attempt,
    not_run,
    not_run_for_a_parent,
    progress_bar,
    register,
)
from harness.launchers.sacct import DEPENDENCY_DROPPED, host_failed, log_paths, poll
from harness.launchers.slurm_site import (
    _run,
    check_gpu_types,
    fit,
    sbatch_parameters,
    submit_room,
)
from harness.launchers.slurm_submit import Submission
from harness.planner import layout
from records.errors import UserError
from records.schema import ENDED, ENDED_BADLY, IN_FLIGHT
from records.store import Store

PREFIX = PREFIXES["slurm"]
POLL_MIN_S = 1.0
POLL_MAX_S = 30.0


def submit(config: ClusterConfig, store: Store, jobs: list[Row]) -> dict[str, str]:
    """Submit ``jobs`` (store rows in dependency order), as many as the site's limits leave
    room for; the others wait in the store (state ``waiting``, with the reason), and a
    feeder job submits them as room frees (``harness.launchers.feeder``; else ``top_up``).
    Return id -> SLURM job id of those submitted."""
    if any(job.get("state") == "waiting" for job in jobs) and feeder.current(
        feeder.folder_of(config)
    ):
        jobs = [job for job in jobs if job.get("state") != "waiting"]  # the feeder's to send
    store.set_states([(job["id"], "pending", {"attempt": job["attempt"], "reason": None})
                      for job in jobs])  # fmt: skip
    room, why = submit_room(config)
    left: list[Row] = []
    if room is not None and room < len(jobs):
        feeding = config.launcher.slurm.feeder  # the feeder counts against the limit too
        chosen = fit(jobs, max(0, room - 1) if feeding else room)
        left = [job for job in jobs if job["id"] not in chosen]
        reason = {"reason": f"waiting for room: {why}", "launcher_job_id": None}
        store.set_states([(job["id"], "waiting", reason) for job in left])
        jobs = [job for job in jobs if job["id"] in chosen]
    submitted = _submit_now(config, store, jobs) if jobs else {}
    if left and config.launcher.slurm.feeder:
        feeder.start(config, store, after=list(submitted.values()))
    return submitted


def _submit_now(config: ClusterConfig, store: Store, jobs: list[Row]) -> dict[str, str]:
    submission = Submission.from_store(config, store, jobs)
    try:
        submission.run()
    except Exception as exc:
        # Nothing half-submitted: cancel what this call submitted, leave the rows pending.
        submitted = submission.submitted
        if submitted:
            subprocess.run(["scancel", *submitted.values()], capture_output=True, timeout=60)
        store.set_states([(job_id, "pending", {"launcher_job_id": None, "reason": None})
                          for job_id in submitted])  # fmt: skip
        message = str(exc).strip().splitlines()
        detail = next((line for line in reversed(message) if "error" in line.lower()), "")
        raise UserError(
            f"sbatch refused the sweep ({detail or (message[-1] if message else exc)}); "
            f"nothing was left submitted"
        ) from None
    store.set_states([
        (job["id"], "submitted",
         {"launcher_job_id": PREFIX + submission.submitted[job["id"]], "reason": None})
        for job in jobs
    ])  # fmt: skip
    return submission.submitted


def top_up(config: ClusterConfig, store: Store, rows: list[Row]) -> int:
    """Submit the sweep's waiting jobs that can go now, as room allows: those whose parents
    have succeeded or are in the queue (waited on by their SLURM ids). A waiting job whose
    parent failed is recorded as not run. Returns how many were submitted."""
    by_id = {row["id"]: row for row in rows}
    waiting = [row for row in rows if row["state"] == "waiting"]
    if not waiting:
        return 0
    ready: list[Row] = []
    going: set[str] = set()
    not_run_now = []
    for row in waiting:
        parents = [by_id.get(p) or store.job(p) for p in row["depends_on"] or []]
        ended_badly = [p for p in parents if p and p["state"] in ENDED_BADLY]
        if ended_badly:
            reason = not_run(ended_badly[0]["id"], ended_badly[0]["state"])
            not_run_now.append((row["id"], "cancelled", {"reason": reason}))
        elif all(p and (p["state"] in ("succeeded", *IN_FLIGHT) or p["id"] in going)
                 for p in parents):  # fmt: skip
            ready.append(row)
            going.add(row["id"])
    store.set_states(not_run_now)
    if not ready:
        return 0
    try:
        return len(submit(config, store, ready))
    except UserError:  # refused (a parent gone from the queue meanwhile): they wait on
        store.set_states([(row["id"], "waiting", {"reason": row["reason"]}) for row in ready])
        raise


def retry_host_failures(config: ClusterConfig, store: Store, rows: list[Row]) -> list[str]:
    """Submit again the sweep's jobs whose last attempt failed because of its host, up to
    ``launcher.slurm.max_retries`` times each, with the hosts of their failed attempts
    excluded, and with the jobs after them that were not run for it. A NODE_FAIL is left to
    SLURM, which requeues the job itself (its node is down meanwhile). A job over several
    nodes is retried without exclusion: which of its hosts failed is not known (rank 0
    reports a peer that stopped answering), and SLURM runs nothing on a node that is down.
    Returns the ids retried."""
    failed = [row for row in rows if host_failed(row["state"], row["reason"])
              and not (row["reason"] or "").startswith(REQUEUABLE)]  # fmt: skip
    if not failed:
        return []
    tries = store.attempts_of([row["id"] for row in failed])
    limit = config.launcher.slurm.max_retries
    chosen, given_up = [], []
    for row in failed:
        bad = [a for a in tries.get(row["id"], []) if a["host_failure"]]
        if not bad or bad[-1]["attempt"] != row["attempt"]:
            continue  # its attempt not seen by the queue (poll records it first)
        if len(bad) > limit:
            if "retried" not in (row["reason"] or ""):
                said = f"{row['reason']} (retried {limit} time(s) on other hosts)"
                given_up.append((row["id"], "failed", {"reason": said}))
            continue
        single = layout(config, row)[1] == 1  # one host per attempt: its name
        retry = next_attempt(row)
        if single:  # one host per attempt: not on those again
            retry["exclude"] = ",".join(sorted({a["hosts"] for a in bad if a["hosts"]}))
        chosen.append(retry)
    store.set_states(given_up)
    if not chosen:
        return []
    ids = {row["id"] for row in chosen}
    jobs, _ = downstream(rows, chosen)  # and those not run for it: new attempts as well
    submit(config, store, [job if job["id"] in ids else next_attempt(job) for job in jobs])
    return [row["id"] for row in chosen]


def not_run_for_nothing(row: Row, by_id: dict[str, Row]) -> bool:
    """A job cancelled as not run whose reason no longer holds: SLURM cancelled it on a
    dependency its parents met (``sacct.DEPENDENCY_DROPPED``), or every parent it depends on
    has succeeded or is on its way again (one that SLURM had dropped, submitted again while
    a feeder held this job, which then found the parent's old attempt cancelled)."""
    if row["state"] != "cancelled":
        return False
    if row["reason"] == DEPENDENCY_DROPPED:
        return True
    if not not_run_for_a_parent(row["reason"]):
        return False
    parents = [by_id.get(p) for p in row["depends_on"] or []]
    going = ("succeeded", "pending", "waiting", *IN_FLIGHT)
    return bool(parents) and all(p is not None and p["state"] in going for p in parents)


def retry_dropped_dependencies(config: ClusterConfig, store: Store, rows: list[Row]) -> list[str]:
    """Submit again, as new attempts, the sweep's jobs not run for nothing
    (``not_run_for_nothing``: above all those SLURM cancelled on a dependency their parents
    met, an aftercorr task split out after its parent task's record was purged), with the
    jobs after them that were not run for it. Returns the ids submitted again."""
    by_id = {row["id"]: row for row in rows}
    dropped = [row for row in rows if not_run_for_nothing(row, by_id)]
    if not dropped:
        return []
    jobs, _ = downstream(rows, dropped)
    again = [next_attempt(job) for job in jobs if job["state"] == "cancelled"]
    submit(config, store, again)
    return [row["id"] for row in dropped]


def look_after(config: ClusterConfig, store: Store, rows: list[Row]) -> bool:
    """What the harness does for a SLURM sweep each time it looks at it (``status``,
    ``submit --wait``): retry host failures and dependencies SLURM dropped, then submit
    waiting jobs as room frees, unless the sweep's feeder is in the queue to do it (what the
    feeders sent is read in first). Whether it changed any job's row."""
    # Each step works on the rows as the one before left them.
    fed = feeder.collect(store, rows)
    if fed:
        rows = store.jobs_by_ids([row["id"] for row in rows])
    retried = retry_host_failures(config, store, rows)
    if retried:
        rows = store.jobs_by_ids([row["id"] for row in rows])
    dropped = retry_dropped_dependencies(config, store, rows)
    if dropped:
        rows = store.jobs_by_ids([row["id"] for row in rows])
    changed = bool(fed or retried or dropped)
    waiting = any(row["state"] == "waiting" for row in rows)
    if not waiting or feeder.current(feeder.folder_of(config)):
        return changed
    if feeder.collect(store, rows):  # the last feeder's work, read after it left the queue
        rows = store.jobs_by_ids([row["id"] for row in rows])
    top_up(config, store, rows)
    return True


# -- following the jobs (states from sacct: harness.launchers.sacct) --------------------------


def wait(
    store: Store,
    job_ids: list[str],
    progress: bool = True,
    timeout: float | None = None,
    config: ClusterConfig | None = None,
) -> dict[str, str]:
    """Follow jobs until each has ended; sacct is polled with backoff (1 s, up to 30 s,
    back to 1 s whenever something changed), and, given the sweep's ``config``, waiting
    jobs are submitted as room frees (``top_up``). Return id -> final state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = POLL_MIN_S
    bar = progress_bar(len(job_ids), progress)
    previous: dict[str, str] = {}
    try:
        from harness.collect import collect

        while True:
            rows = store.jobs_by_ids(job_ids)
            states = poll(store, rows)
            collect(store, rows)  # the jobs' records, from their outboxes
            if config is not None:
                rows = store.jobs_by_ids(job_ids)
                if any(needs_care(row) for row in rows) and look_after(config, store, rows):
                    states = {row["id"]: row["state"] for row in store.jobs_by_ids(job_ids)}
            done = sum(1 for s in states.values() if s in ENDED)
            bar.n = done
            counts: dict[str, int] = defaultdict(int)
            for s in states.values():
                counts[s] += 1
            bar.set_postfix(**counts)
            if done == len(job_ids):
                return states
            if deadline is not None and time.monotonic() > deadline:
                raise UserError(
                    f"jobs still not finished after {timeout:.0f} s: "
                    + ", ".join(f"{n} {s}" for s, n in counts.items())
                )
            delay = POLL_MIN_S if states != previous else min(delay * 1.5, POLL_MAX_S)
            previous = states
            time.sleep(delay)
    finally:
        bar.close()


def cancel(slurm_ids: list[str]) -> None:
    if slurm_ids:
        _run(["scancel", *slurm_ids])


@register("slurm")
class SlurmLauncher(Launcher):
    """Jobs as SLURM jobs through submitit; ``submit`` returns once they are queued."""

    queued = True

    @classmethod
    def describe(cls, gpu: Any, per_node: int, nodes: int) -> str:
        params = sbatch_parameters(gpu, per_node, nodes)
        flags = [
            f"--{key.replace('_', '-')}={value}"
            for key, value in params.items()
            if value not in (None, {}, []) and key != "srun_args"
        ]
        flags += [f"(srun {' '.join(params['srun_args'])})"] if "srun_args" in params else []
        return "sbatch " + " ".join(flags)

    def look_after(self, rows: list[Row]) -> bool:
        return look_after(self.sweep_config(), self.store, rows)

    def waiting_note(self) -> str:
        fed = feeder.current(feeder.folder_of(self.sweep_config()))
        if not fed:
            return ""
        return (f"; feeder job {fed} submits the waiting jobs as room frees (nothing needs to "
                "stay running here)")  # fmt: skip

    def check(self, jobs: list[Row]) -> None:
        check_gpu_types(self.sweep_config(), {job["gpu_type"] for job in jobs})

    def submit(self, jobs: list[Row], progress: bool = True) -> None:
        self.check(jobs)
        submit(self.config, self.store, jobs)

    def poll(self, jobs: list[Row]) -> dict[str, str]:
        return poll(self.store, jobs)

    def wait(self, job_ids: list[str], progress: bool = True, timeout: float | None = None):
        return wait(self.store, job_ids, progress, timeout, self.config)

    def cancel(self, jobs: list[Row]) -> None:
        """All recorded as cancelled (so that sacct's CANCELLED keeps the user's reason),
        then scancel for those in the queue."""
        super().cancel(jobs)
        cancel([(job["launcher_job_id"] or "").removeprefix(PREFIX) for job in jobs
                if (job["launcher_job_id"] or "").startswith(PREFIX)])  # fmt: skip

    def logs(self, job: Row) -> list[Path]:
        return log_paths(job)
