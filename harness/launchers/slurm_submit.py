"""The sbatch side of the SLURM launcher: one submission of jobs, as arrays per GPU type
and job shape cut under the site's ``MaxArraySize``, then stage after stage, chained task by
task (``aftercorr``) or job by job (``afterok``). Used by the harness (``slurm.submit``) and
by a feeder on a compute node (``harness.launchers.feeder``), which bring what it needs of
the sweep with them."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig
from harness.launchers.base import PREFIXES, Row, environment_of, setup_lines, spec_for
from harness.launchers.slurm_site import max_array_size, sbatch_parameters
from harness.planner import layout
from records.schema import IN_FLIGHT
from records.spec import SPEC_FILE
from records.store import Store

PREFIX = PREFIXES["slurm"]


def _executor(folder: Path, params: dict[str, Any], job_name: str, python: str | None = None):
    """A submitit executor; ``python`` is the interpreter the batch script starts on the node
    (after the ``setup`` lines in ``params``, so it may come from them)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3, python=python)
    executor.update_parameters(job_name=job_name, **params)
    return executor


class Submission:
    """The sbatch calls of one submission: arrays first, then stage after stage. What it
    needs of the sweep comes in with it (``from_store`` reads it from the store; a feeder
    on a compute node, from its feed file): the folders of the jobs and of their parents,
    the SLURM ids of parents still in the queue, and each job's spec text."""

    def __init__(
        self,
        config: ClusterConfig,
        jobs: list[Row],
        folders: dict[str, str],
        flying: dict[str, str],
        spec_text: Callable[[Row], str],
        on_sent: Callable[[list[Row], dict[str, str]], None] | None = None,
    ) -> None:
        """``on_sent(group, submitted)``: called after each sbatch with the jobs it sent."""
        self.config, self.jobs, self.spec_text, self.on_sent = config, jobs, spec_text, on_sent
        self.folder = Path(config.results_dir).resolve() / config.name / "slurm"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ids = {job["id"] for job in jobs}
        self.folders = folders
        # Parents from an earlier submission still in the queue: waited on by their SLURM id
        # (the others have succeeded).
        self.flying = flying
        self.submitted: dict[str, str] = {}
        self.position: dict[str, tuple[str, int]] = {}  # job id -> (array's SLURM id, task)

    @classmethod
    def from_store(cls, config: ClusterConfig, store: Store, jobs: list[Row]) -> Submission:
        # Every job's folder, for its children's specs: one query for parents not submitted.
        folders = {job["id"]: job["job_dir"] for job in jobs}
        ids = set(folders)
        outside = {p for job in jobs for p in job["depends_on"] or []} - ids
        outside_rows = store.jobs_by_ids(sorted(outside))
        folders |= {row["id"]: row["job_dir"] for row in outside_rows}
        flying = {
            row["id"]: (row["launcher_job_id"] or "").removeprefix(PREFIX)
            for row in outside_rows
            if row["state"] in IN_FLIGHT and (row["launcher_job_id"] or "").startswith(PREFIX)
        }
        # A SQLite store is the harness's alone: the job's records travel in its outbox.
        direct = not store.is_sqlite

        def spec_text(job: Row) -> str:
            return spec_for(store, job, folders, direct=direct).to_json()

        return cls(config, jobs, folders, flying, spec_text)

    def parents(self, job: Row) -> list[str]:
        """The job's parents in this submission (others have succeeded already, or are in
        the queue from an earlier one: ``flying_parents``)."""
        return [p for p in job["depends_on"] or [] if p in self.ids]

    def flying_parents(self, job: Row) -> list[str]:
        return [self.flying[p] for p in job["depends_on"] or [] if p in self.flying]

    def run(self) -> None:
        name = self.config.name
        # Jobs with nothing to wait for: one array per GPU type and job shape.
        groups: dict[tuple, list[Row]] = defaultdict(list)
        for job in self.jobs:
            if not self.parents(job) and not self.flying_parents(job):
                key = (job["gpu_type"], layout(self.config, job), job.get("exclude"))
                groups[key].append(job)
        size = max_array_size()
        for (gpu_type, *_), group in groups.items():
            for start in range(0, len(group), size):  # chunks the site's MaxArraySize allows
                self.send(group[start : start + size], f"{name}-{gpu_type}")
        # Then, stage after stage, the jobs whose parents are submitted.
        waiting = [job for job in self.jobs if job["id"] not in self.submitted]
        while waiting:
            ready = [j for j in waiting if all(p in self.submitted for p in self.parents(j))]
            if not ready:  # a plan is ordered parents first: this is a broken store
                raise RuntimeError("error: jobs that wait on each other in a circle")
            chained = [j for j in ready if not self.flying_parents(j)]
            chains = array_chains(chained, self.parents, self.position, self.config)
            chains += [([j], None) for j in ready if self.flying_parents(j)]
            for group, array in chains:
                if array is not None:  # task i waits on task i of the parents' array
                    self.send(group, f"{name}-{group[0]['stage']}", f"aftercorr:{array}")
                    continue
                (job,) = group
                ids = [self.submitted[p] for p in self.parents(job)] + self.flying_parents(job)
                self.send(group, f"{name}-{job['stage']}", "afterok:" + ":".join(ids))
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
        if first.get("exclude"):  # a retry after a host failure: not on that host again
            params["exclude"] = first["exclude"]
        if len(group) > 1:
            params["array_parallelism"] = self.config.launcher.slurm.array_parallelism
        if dependency:
            params["dependency"] = dependency
            params["additional_parameters"] = {**params.get("additional_parameters", {}),
                                               "kill-on-invalid-dep": "yes"}  # fmt: skip
        executor = _executor(self.folder, params, name, environment.python)
        requeue = self.config.launcher.slurm.requeue_on_preemption

        def task(job: Row) -> SlurmTask:  # its spec file is written on the node, as it starts
            return SlurmTask(os.path.join(job["job_dir"], SPEC_FILE), requeue, self.spec_text(job))

        if len(group) == 1:
            self.submitted[first["id"]] = executor.submit(task(first)).job_id
        else:
            with executor.batch():
                handles = [executor.submit(task(job)) for job in group]
            array = handles[0].job_id.split("_")[0]
            for index, (job, handle) in enumerate(zip(group, handles, strict=True)):
                self.submitted[job["id"]] = handle.job_id
                self.position[job["id"]] = (array, index)
        if self.on_sent is not None:
            self.on_sent(group, self.submitted)


def array_chains(
    ready: list[Row],
    parents: Any,
    position: dict[str, tuple[str, int]],
    config: ClusterConfig,
) -> list[tuple[list[Row], str | None]]:
    """The ready jobs in groups: (jobs, the parents' array) where the group is one array
    chained task by task to an array already submitted (each job has one parent, task i of
    that array, and tasks 0 to k-1 have one such child each: a transfer per training job of
    a GPU type, an export per transfer...; the first k where a site's limits let only those
    go now); (one job, None) for the others (several parents, as
    the winner's export; or a parent not in an array), which wait with afterok."""
    alike: dict[tuple, list[Row]] = defaultdict(list)
    alone: list[Row] = []
    for job in ready:
        mine = parents(job)
        if len(mine) == 1 and mine[0] in position:
            key = (position[mine[0]][0], job["stage"], job["dataset"], job["gpu_type"],
                   layout(config, job), job.get("exclude"))  # fmt: skip
            alike[key].append(job)
        else:
            alone.append(job)
    out: list[tuple[list[Row], str | None]] = []
    for (array, *_), group in alike.items():
        group.sort(key=lambda job: position[parents(job)[0]][1])
        # aftercorr pairs array tasks: a group of one goes out as a plain job, with afterok
        if len(group) > 1 and [position[parents(j)[0]][1] for j in group] == list(
            range(len(group))
        ):
            out.append((group, array))
        else:
            alone += group
    return out + [([job], None) for job in alone]
