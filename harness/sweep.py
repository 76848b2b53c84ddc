"""Submitting a sweep and rerunning jobs: plan, record in the store, hand to a launcher."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from harness import launchers
from harness.config import ClusterConfig
from harness.launchers.base import REQUEUABLE, Row, downstream, launcher_of
from harness.planner import JobPlan, job_dir, plan, select
from records.errors import UserError
from records.schema import ENDED_BADLY, IN_FLIGHT, UNFINISHED, PlannedJob
from records.store import Store, open_store, url_for_jobs


def store_for(config: ClusterConfig) -> Store:
    return open_store(config.store, config.results_dir)


def placement(config: ClusterConfig, jobs: list[JobPlan]) -> list[str]:
    """What the launcher will ask for, per GPU type and job shape: the sbatch options (and
    the python SLURM starts), the Ray resources and placement, or the local device; and the
    job environment's setup lines and variables. For ``submit --dry-run``."""
    import shlex

    from harness.config import environment_for
    from harness.launchers.base import setup_lines

    describe = launchers.class_of(config.launcher.kind).describe
    lines = []
    shapes = dict.fromkeys((j.gpu_type, j.gpus_per_node, j.nodes) for j in jobs)
    for gpu_type, per_node, nodes in shapes:
        gpu = config.gpu_types[gpu_type]
        environment = environment_for(config, gpu_type)
        head = f"{gpu_type} ({per_node * nodes} GPU{'s' if per_node * nodes > 1 else ''}):"
        what = describe(gpu, per_node, nodes)
        lines.append(f"{head} {what}")
        for line in setup_lines(environment):
            lines.append(f"    {line}")
        if environment.python:
            lines.append(f"    python: {shlex.quote(environment.python)}")
    return lines


def _row(jobs_folder: str, job: JobPlan) -> PlannedJob:
    """The store's row of a planned job (its folder in ``jobs_folder``); its spec is the
    planned spec's dict."""
    return {
        "id": job.id,
        "stage": job.stage,
        "model": job.model,
        "dataset": job.dataset,
        "gpu_type": job.gpu_type,
        "gpus": job.gpus_per_node * job.nodes,
        "seed": job.seed,
        "repeat": job.repeat,
        "spec": job.spec.to_dict() if job.spec else {},
        "depends_on": list(job.depends_on),
        "job_dir": os.path.join(jobs_folder, job.id),
    }


def _launch(
    config: ClusterConfig,
    store: Store,
    rows: list[Row],
    progress: bool,
    wait: bool,
    timeout: float | None,
) -> dict[str, str] | None:
    """Hand ``rows`` (already at their new attempt) to the configured launcher. The local and
    Ray launchers run them to the end; SLURM returns once they are queued, unless ``wait``."""
    url_for_jobs(store.url)  # a store the jobs could not be told of stops the launch here
    launcher = launchers.get(config.launcher.kind, store, config)
    final = launcher.submit(rows, progress)
    if final is None and wait:
        return launcher.wait([row["id"] for row in rows], progress, timeout)
    return final


def refresh(store: Store, rows: list[Row]) -> bool:
    """Bring the states of unfinished jobs (and of jobs whose end the cluster may take back)
    up to date from the launchers that hold them (for SLURM, one sacct call), then collect
    the jobs' new records from their outboxes (``harness.collect``); whether anything was
    asked or stored (if not, ``rows`` are as current as the store)."""
    from harness.collect import Collection
    from harness.launchers import feeder

    fed = feeder.collect(store, rows)  # waiting jobs a feeder has submitted (or not run)
    if fed:
        rows = store.reread(rows)
    held: dict[str, list[Row]] = {}
    for row in rows:
        name = launcher_of(row)
        unfinished = row["state"] in UNFINISHED
        taken_back = row["state"] == "failed" and (row["reason"] or "").startswith(REQUEUABLE)
        if (unfinished or taken_back) and name is not None:
            held.setdefault(name, []).append(row)
    # The rows as they were: a job that ends in this poll is still one to read. A large
    # collection's workers begin at once and read while the harness polls; the poll's writes
    # wait for theirs.
    collection = Collection(store, rows)
    with store.held():
        try:
            for name, group in held.items():
                launchers.get(name, store).poll(group)
        finally:
            collected = collection.finish()
    return bool(held) or collected > 0 or fed > 0


def record_plan(config: ClusterConfig, store: Store, jobs: list[JobPlan] | None = None) -> set[str]:
    """Record the sweep and its planned jobs (all of them by default) in the store; jobs it
    already holds keep their state. Return the planned ids."""
    jobs = plan(config) if jobs is None else jobs
    store.add_sweep(config.name, config.model_dump(mode="json"))
    folder = str(job_dir(config, "-").parent)
    store.add_jobs(config.name, [_row(folder, job) for job in jobs])
    return {job.id for job in jobs}


def submit(
    config: ClusterConfig,
    only: list[str],
    progress: bool = True,
    wait: bool = False,
    timeout: float | None = None,
    jobs: list[JobPlan] | None = None,
) -> dict[str, Any]:
    """Plan, record and launch the sweep (or only ``jobs``, planned already); jobs that
    already succeeded, and jobs still in a cluster's queue from an earlier submission, are
    skipped."""
    jobs = select(plan(config), only) if jobs is None else jobs
    store = store_for(config)
    record_plan(config, store, jobs)
    rows_now = store.jobs(config.name)
    if refresh(store, rows_now):
        rows_now = store.jobs(config.name)
    rows = {row["id"]: row for row in rows_now}
    in_flight = 0
    todo = []
    for job in jobs:
        row = rows[job.id]
        if row["state"] == "succeeded":
            continue
        holder = launcher_of(row)
        if row["state"] in IN_FLIGHT and holder and launchers.class_of(holder).queued:
            in_flight += 1
            continue
        if row["state"] in ENDED_BADLY:
            row["attempt"] += 1
        todo.append(row)
    final = _launch(config, store, todo, progress, wait, timeout)
    return {
        "planned": len(jobs),
        "skipped": len(jobs) - len(todo) - in_flight,
        "in_flight": in_flight,
        "launched": [row["id"] for row in todo],
        "final": final,
        "store": store,
    }


def rerun(
    config: ClusterConfig,
    job_ids: list[str],
    failed: bool,
    progress: bool = True,
    wait: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run the chosen jobs again, as new attempts, with the jobs after them that did not run;
    nothing else is touched."""
    store = store_for(config)
    rows = store.jobs(config.name)
    refresh(store, rows)
    rows = store.jobs(config.name)
    if failed:
        chosen = [row for row in rows if row["state"] in ENDED_BADLY]
    else:
        chosen = []
        for job_id in job_ids:
            row = store.job(job_id)
            if row is None or row["sweep"] != config.name:
                raise UserError(f"no job {job_id!r} in sweep {config.name!r}")
            if row["state"] in IN_FLIGHT:
                raise UserError(
                    f"job {row['id']} is still {row['state']} "
                    f"({row['launcher_job_id'] or 'no launcher id'}); cancel it first"
                )
            chosen.append(row)
        chosen = _with_dependants(rows, chosen)
    if not chosen:
        return {"final": {}, "store": store, "launched": []}
    for row in chosen:
        if row["state"] == "succeeded":
            # A finished job runs again from the start; a failed one resumes from its last
            # valid checkpoint. The old checkpoints stay, under the attempt's name.
            old = Path(row["job_dir"]) / "checkpoints"
            if old.is_dir():
                old.rename(old.with_name(f"checkpoints.attempt{row['attempt']}"))
        row["attempt"] += 1
    final = _launch(config, store, chosen, progress, wait, timeout)
    return {"final": final, "store": store, "launched": [row["id"] for row in chosen]}


def _with_dependants(rows: list[Row], chosen: list[Row]):
    """The chosen jobs and the jobs downstream of them that did not run (``downstream``),
    saying what was added, and which downstream jobs succeeded on the earlier result."""
    out, stale = downstream(rows, chosen)
    added = len(out) - len(chosen)
    if added:
        print(f"rerun: with {added} job(s) after them that had not run", file=sys.stderr)
    if stale:
        print(
            f"rerun: {len(stale)} job(s) after them succeeded on the earlier result; to run "
            f"them on the new one too: resnest-bench rerun {' '.join(stale)}",
            file=sys.stderr,
        )
    return out
