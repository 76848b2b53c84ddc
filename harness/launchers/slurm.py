"""The SLURM launcher: submitit job arrays, afterok dependencies, sacct polling.

Submission needs neither torch nor a GPU: the pickled callable is ``jobs.slurm_task.SlurmTask``
(torch-free at import). Each GPU type's settings in cluster.yaml become the sbatch options of
its jobs; a job with N GPUs per node on M nodes runs as N x M tasks, one per GPU, which form
one process group from the SLURM environment.

Jobs with nothing to wait for go out as one array per GPU type (``--array=0-K%P``, P from
``launcher.slurm.array_parallelism``). The jobs of a later stage whose parents form such an
array, one child per task (a transfer per training job, an export per transfer, an inference
per export), go out as one array too, chained task by task with
``--dependency=aftercorr:<parents' array>``: task i starts when task i of the parents'
array has succeeded. A job with several parents (the winner's export) goes out on its own
with ``--dependency=afterok:<parent>:<parent>...``. Either way ``--kill-on-invalid-dep=yes``
makes a failed parent cancel exactly its own dependants, rather than leave them pending for
ever. A sweep of 1,000 training jobs with their transfer, export and inference jobs is a
handful of sbatch calls: four per GPU type.

States come from ``sacct``, one call for all the jobs being followed, polled with backoff.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig, GpuType
from harness.launchers.base import (
    PREFIXES,
    BaseLauncher,
    Row,
    environment_of,
    not_run,
    progress_bar,
    setup_lines,
    spec_for,
)
from harness.launchers.sacct import NOT_RUN, SACCT_FIELDS, map_state, parse_sacct
from harness.planner import layout
from records.errors import UserError
from records.spec import SPEC_FILE
from records.store import Store

PREFIX = PREFIXES["slurm"]
POLL_MIN_S = 1.0
POLL_MAX_S = 30.0


def _run(cmd: list[str], timeout: float = 60) -> str:
    if shutil.which(cmd[0]) is None:
        raise UserError(f"{cmd[0]}: not found; the SLURM launcher needs the SLURM client tools")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{cmd[0]}: no answer from SLURM within {timeout:.0f} s") from None
    if out.returncode != 0:
        message = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"{' '.join(cmd[:2])}: {message}")
    return out.stdout


# -- before submitting: does the cluster have what the sweep asks for? ----------------------


def cluster_resources() -> dict[str, set[str]]:
    """Partition -> the gres of its nodes (``gpu:v100``, ...); the default partition is also
    listed under ``""``."""
    found: dict[str, set[str]] = defaultdict(set)
    for line in _run(["sinfo", "-h", "-o", "%P|%G"]).splitlines():
        partition, _, gres = line.strip().partition("|")
        names = set()
        for item in re.split(r",(?![^(]*\))", gres):
            parts = item.split("(")[0].split(":")
            if parts[0] and parts[0] != "(null)":
                names.add(parts[0])
                if len(parts) >= 3 or (len(parts) == 2 and not parts[1].isdigit()):
                    names.add(f"{parts[0]}:{parts[1]}")
        if partition.endswith("*"):
            partition = partition[:-1]
            found[""] |= names
        found[partition] |= names
    return dict(found)


def check_gpu_types(config: ClusterConfig, used: set[str]) -> None:
    """Refuse, before anything is submitted, GPU types the cluster cannot run."""
    resources = cluster_resources()
    partitions = sorted(p for p in resources if p)
    for name in sorted(used):
        gpu = config.gpu_types[name]
        partition = gpu.partition or ""
        if partition not in resources:
            raise UserError(
                f"gpu_types.{name}: the SLURM cluster has no partition {partition!r} "
                f"(it has {', '.join(partitions)})"
            )
        if gpu.gres:
            wanted = ":".join(gpu.gres.split(":")[:2])
            if wanted not in resources[partition]:
                where = f"partition {partition}" if partition else "the default partition"
                have = ", ".join(sorted(r for r in resources[partition] if ":" in r)) or "none"
                raise UserError(
                    f"gpu_types.{name}: the SLURM cluster has no {wanted} in {where} "
                    f"(gres there: {have})"
                )


# -- submission -----------------------------------------------------------------------------


def _minutes(limit: str | None) -> int | None:
    """A SLURM time limit in whole minutes (seconds round up). SLURM's forms: ``M``,
    ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    if limit is None:
        return None
    days, dash, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if dash:
        hours, minutes, seconds = (*parts, 0, 0)[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, minutes, seconds = 0, parts[0], (parts[1] if len(parts) == 2 else 0)
    return int(days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)


def sbatch_parameters(gpu: GpuType, gpus_per_node: int, nodes: int) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one job of this GPU type."""
    params: dict[str, Any] = {
        "nodes": nodes,
        "ntasks_per_node": gpus_per_node,
        "cpus_per_task": gpu.cpus_per_gpu,
    }
    extra: dict[str, Any] = {}
    if gpu.partition:
        params["partition"] = gpu.partition
    if gpu.gres:
        params["gres"] = f"{gpu.gres}:{gpus_per_node}"
    if gpu.constraint:
        params["constraint"] = gpu.constraint
    if gpu.account:
        params["account"] = gpu.account
    if gpu.qos:
        params["qos"] = gpu.qos
    # Without a time in cluster.yaml the partition's default applies (not submitit's 5 min).
    params["time"] = _minutes(gpu.time)
    if gpu.mem_per_gpu:
        params["mem_per_gpu"] = gpu.mem_per_gpu
    if gpus_per_node * nodes > 1:
        # A rank that fails takes the step down: its peers would otherwise wait in a
        # collective (up to the job's collective timeout) on a rank that is gone.
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    params["additional_parameters"] = extra
    return params


def _executor(folder: Path, params: dict[str, Any], job_name: str, python: str | None = None):
    """A submitit executor; ``python`` is the interpreter the batch script starts on the node
    (after the ``setup`` lines in ``params``, so it may come from them)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3, python=python)
    executor.update_parameters(job_name=job_name, **params)
    return executor


def submit(config: ClusterConfig, store: Store, jobs: list[Row]) -> dict[str, str]:
    """Submit ``jobs`` (store rows in dependency order); return id -> SLURM job id."""
    store.set_states([(job["id"], "pending", {"attempt": job["attempt"], "reason": None})
                      for job in jobs])  # fmt: skip
    submission = _Submission(config, store, jobs)
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


class _Submission:
    """The sbatch calls of one submission: arrays first, then stage after stage."""

    def __init__(self, config: ClusterConfig, store: Store, jobs: list[Row]) -> None:
        self.config, self.store, self.jobs = config, store, jobs
        self.folder = Path(config.results_dir).resolve() / config.name / "slurm"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ids = {job["id"] for job in jobs}
        # Every job's folder, for its children's specs: one query for parents not submitted.
        self.folders = {job["id"]: job["job_dir"] for job in jobs}
        outside = {p for job in jobs for p in job["depends_on"] or []} - self.ids
        self.folders |= {row["id"]: row["job_dir"] for row in store.jobs_by_ids(sorted(outside))}
        self.submitted: dict[str, str] = {}
        self.position: dict[str, tuple[str, int]] = {}  # job id -> (array's SLURM id, task)
        self.sizes: dict[str, int] = {}  # SLURM array id -> tasks

    def parents(self, job: Row) -> list[str]:
        """The job's parents in this submission (others have succeeded already)."""
        return [p for p in job["depends_on"] or [] if p in self.ids]

    def run(self) -> None:
        name = self.config.name
        # Jobs with nothing to wait for: one array per GPU type and job shape.
        groups: dict[tuple, list[Row]] = defaultdict(list)
        for job in self.jobs:
            if not self.parents(job):
                groups[(job["gpu_type"], layout(self.config, job))].append(job)
        for (gpu_type, _), group in groups.items():
            self.send(group, f"{name}-{gpu_type}")
        # Then, stage after stage, the jobs whose parents are submitted.
        waiting = [job for job in self.jobs if self.parents(job)]
        while waiting:
            ready = [j for j in waiting if all(p in self.submitted for p in self.parents(j))]
            if not ready:  # a plan is ordered parents first: this is a broken store
                raise RuntimeError("error: jobs that wait on each other in a circle")
            for group, array in _chains(ready, self.parents, self.position, self.sizes,
                                        self.config):  # fmt: skip
                if array is not None:  # task i waits on task i of the parents' array
                    self.send(group, f"{name}-{group[0]['stage']}", f"aftercorr:{array}")
                    continue
                (job,) = group
                after = "afterok:" + ":".join(self.submitted[p] for p in self.parents(job))
                self.send(group, f"{name}-{job['stage']}", after)
            waiting = [job for job in waiting if job["id"] not in self.submitted]

    def send(self, group: list[Row], name: str, dependency: str | None = None) -> None:
        """One sbatch: the jobs of ``group`` (same sbatch options), as an array if several."""
        from jobs.slurm_task import SlurmTask

        first = group[0]
        environment = environment_of(self.config, first)
        params = sbatch_parameters(self.config.gpu_types[first["gpu_type"]],
                                   *layout(self.config, first))  # fmt: skip
        lines = setup_lines(environment)
        if lines:
            params["setup"] = lines
        if len(group) > 1:
            params["array_parallelism"] = self.config.launcher.slurm.array_parallelism
        if dependency:
            params["dependency"] = dependency
            params["additional_parameters"] = {**params.get("additional_parameters", {}),
                                               "kill-on-invalid-dep": "yes"}  # fmt: skip
        executor = _executor(self.folder, params, name, environment.python)
        requeue = self.config.launcher.slurm.requeue_on_preemption

        def task(job: Row) -> SlurmTask:  # its spec file is written on the node, as it starts
            spec = spec_for(self.store, job, self.folders)
            return SlurmTask(os.path.join(job["job_dir"], SPEC_FILE), requeue, spec.to_json())

        if len(group) == 1:
            self.submitted[first["id"]] = executor.submit(task(first)).job_id
            return
        with executor.batch():
            handles = [executor.submit(task(job)) for job in group]
        array = handles[0].job_id.split("_")[0]
        self.sizes[array] = len(handles)
        for index, (job, handle) in enumerate(zip(group, handles, strict=True)):
            self.submitted[job["id"]] = handle.job_id
            self.position[job["id"]] = (array, index)


def _chains(
    ready: list[Row],
    parents: Any,
    position: dict[str, tuple[str, int]],
    sizes: dict[str, int],
    config: ClusterConfig,
) -> list[tuple[list[Row], str | None]]:
    """The ready jobs in groups: (jobs, the parents' array) where the group is one array
    chained task by task to an array already submitted (each job has one parent, task i of
    that array, and every task has one such child: a transfer per training job of a GPU
    type, an export per transfer...); (one job, None) for the others (several parents, as
    the winner's export; or a parent not in an array), which wait with afterok."""
    alike: dict[tuple, list[Row]] = defaultdict(list)
    alone: list[Row] = []
    for job in ready:
        mine = parents(job)
        if len(mine) == 1 and mine[0] in position:
            key = (position[mine[0]][0], job["stage"], job["dataset"], job["gpu_type"],
                   layout(config, job))  # fmt: skip
            alike[key].append(job)
        else:
            alone.append(job)
    out: list[tuple[list[Row], str | None]] = []
    for (array, *_), group in alike.items():
        group.sort(key=lambda job: position[parents(job)[0]][1])
        if [position[parents(job)[0]][1] for job in group] == list(range(sizes[array])):
            out.append((group, array))
        else:
            alone += group
    return out + [([job], None) for job in alone]


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


def log_paths(job: Row) -> list[Path]:
    """submitit's stdout and stderr of rank 0 for a SLURM job of the store."""
    slurm_id = (job.get("launcher_job_id") or "").removeprefix(PREFIX)
    folder = Path(job["job_dir"]).parent.parent / "slurm"
    return [folder / f"{slurm_id}_0_log.out", folder / f"{slurm_id}_0_log.err"]


def poll(store: Store, rows: list[Row]) -> dict[str, str]:
    """Update the store from one sacct call; return id -> store state for ``rows``."""
    followed = {
        row["id"]: row["launcher_job_id"].removeprefix(PREFIX)
        for row in rows
        if (row.get("launcher_job_id") or "").startswith(PREFIX)
    }
    submitted = [row["submitted_at"] for row in rows if row.get("submitted_at")]
    records = sacct_states(list(followed.values()), min(submitted) - 60 if submitted else None)
    attempts = store.latest_attempts(list(followed))
    new: dict[str, tuple[str, str | None]] = {}
    for row in rows:
        record = records.get(followed.get(row["id"], ""))
        if record is None:
            new[row["id"]] = (row["state"], row["reason"])
        elif row["state"] == "cancelled":
            new[row["id"]] = ("cancelled", row["reason"])  # by the harness: keep why
        else:
            new[row["id"]] = map_state(record, log_paths(row)[1])
    changes = []
    for row in rows:
        state, reason = new[row["id"]]
        # SLURM cancels a job whose parent failed (kill-on-invalid-dep); sacct does not always
        # say it was for the dependency: name the parent that did not succeed either way.
        if reason == NOT_RUN or (state == "cancelled" and reason in ("CANCELLED", "None", "")):
            for parent in row["depends_on"] or []:
                parent_state = new[parent][0] if parent in new else store.job(parent)["state"]
                if parent_state in ("failed", "cancelled"):
                    reason = not_run(parent, parent_state)
                    break
        attempt = max(row["attempt"], attempts.get(row["id"], row["attempt"]))
        if (state, reason, attempt) != (row["state"], row["reason"], row["attempt"]):
            changes.append((row["id"], state, {"reason": reason, "attempt": attempt}))
    store.set_states(changes)
    return {job_id: state for job_id, (state, _) in new.items()}


def wait(
    store: Store,
    job_ids: list[str],
    progress: bool = True,
    timeout: float | None = None,
) -> dict[str, str]:
    """Follow jobs until each has ended; sacct is polled with backoff (1 s, up to 30 s,
    back to 1 s whenever something changed). Return id -> final state."""
    ended = ("succeeded", "failed", "cancelled")
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = POLL_MIN_S
    bar = progress_bar(len(job_ids), progress)
    previous: dict[str, str] = {}
    try:
        while True:
            states = poll(store, store.jobs_by_ids(job_ids))
            done = sum(1 for s in states.values() if s in ended)
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


class SlurmLauncher(BaseLauncher):
    """Jobs as SLURM jobs through submitit; ``submit`` returns once they are queued."""

    name = "slurm"
    prefix = PREFIX

    def check(self, jobs: list[Row]) -> None:
        check_gpu_types(self.sweep_config(), {job["gpu_type"] for job in jobs})

    def submit(self, jobs: list[Row], progress: bool = True) -> None:
        self.check(jobs)
        submit(self.config, self.store, jobs)

    def poll(self, jobs: list[Row]) -> dict[str, str]:
        return poll(self.store, jobs)

    def wait(self, job_ids: list[str], progress: bool = True, timeout: float | None = None):
        return wait(self.store, job_ids, progress, timeout)

    def cancel(self, jobs: list[Row]) -> None:
        """All recorded as cancelled (so that sacct's CANCELLED keeps the user's reason),
        then scancel for those in the queue."""
        super().cancel(jobs)
        cancel([(job["launcher_job_id"] or "").removeprefix(PREFIX) for job in jobs
                if (job["launcher_job_id"] or "").startswith(PREFIX)])  # fmt: skip

    def logs(self, job: Row) -> list[Path]:
        return log_paths(job)
