"""Submitting a sweep and rerunning jobs: plan, record in the store, hand to a launcher."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig
from harness.errors import UserError
from harness.planner import JobPlan, plan, select
from harness.store import Store, open_store


def job_dir(config: ClusterConfig, job_id: str) -> Path:
    return Path(config.results_dir).resolve() / config.name / "jobs" / job_id


def store_for(config: ClusterConfig) -> Store:
    return open_store(config.store, config.results_dir)


def _row(config: ClusterConfig, job: JobPlan) -> dict[str, Any]:
    gpu = config.gpu_types[job.gpu_type]
    spec = {
        "stage": job.stage,
        "model": job.model,
        "dataset": job.dataset,
        "recipe": job.recipe,
        "overrides": job.overrides,
        "data_dir": str(Path(config.sweep.data_dir).resolve()),
        "download": config.sweep.download,
        "device": gpu.local or "auto",
        "seed": job.seed,
        "job_id": job.id,
        "max_steps": config.sweep.max_steps,
        "gpu_type": job.gpu_type,
        "expect_gpu": gpu.gpu_name or ("cpu" if gpu.local == "cpu" else job.gpu_type),
    }
    return {
        "id": job.id,
        "stage": job.stage,
        "model": job.model,
        "dataset": job.dataset,
        "gpu_type": job.gpu_type,
        "gpus": job.gpus_per_node * job.nodes,
        "seed": job.seed,
        "repeat": job.repeat,
        "spec": spec,
        "depends_on": list(job.depends_on),
        "job_dir": str(job_dir(config, job.id)),
    }


def spec_writer(store: Store):
    """Write a job's spec file for its current attempt (transfer: from its parent's folder)."""

    def write(job: dict[str, Any]) -> Path:
        spec = {**job["spec"], "out_dir": job["job_dir"], "attempt": job["attempt"]}
        if job["stage"] != "train":  # from its parent's folder: weights or artifacts
            parents = store.jobs_by_ids(job["depends_on"])
            folders = {row["id"]: row["job_dir"] for row in parents}
            spec["init_from"] = folders[job["depends_on"][0]]
            if len(job["depends_on"]) > 1:  # a winner's export: the candidates, in order
                spec["init_from"] = [folders[parent] for parent in job["depends_on"]]
        path = Path(job["job_dir"]) / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    return write


def max_parallel(config: ClusterConfig) -> int:
    from harness.launchers.local import visible_gpus

    return config.launcher.local.max_parallel or max(visible_gpus(), 1)


IN_FLIGHT = ("submitted", "running")


def _launch(
    config: ClusterConfig,
    store: Store,
    rows: list[dict[str, Any]],
    progress: bool,
    wait: bool,
    timeout: float | None,
) -> dict[str, str] | None:
    """Hand ``rows`` (already at their new attempt) to the configured launcher. The local
    launcher runs them to the end; SLURM returns once they are queued, unless ``wait``."""
    kind = config.launcher.kind
    if kind == "local":
        for row in rows:
            store.set_state(row["id"], "submitted", attempt=row["attempt"], reason=None)
        from harness.launchers import local

        return local.run(store, rows, max_parallel(config), spec_writer(store), progress)
    if kind == "slurm":
        from harness.launchers import slurm

        for row in rows:
            store.set_state(row["id"], "pending", attempt=row["attempt"], reason=None)
        slurm.submit(config, store, rows, spec_writer(store))
        if not wait:
            return None
        return slurm.wait(store, [row["id"] for row in rows], progress, timeout)
    from harness.launchers import ray_launcher

    ray_launcher.prepare(config, rows)
    for row in rows:
        store.set_state(row["id"], "submitted", attempt=row["attempt"], reason=None)
    return ray_launcher.run(config, store, rows, spec_writer(store), progress)


def refresh(store: Store, rows: list[dict[str, Any]]) -> None:
    """Bring the states of jobs in a cluster's queue up to date (one sacct call)."""
    queued = [
        row
        for row in rows
        if row["state"] in ("pending", *IN_FLIGHT)
        and (row["launcher_job_id"] or "").startswith("slurm:")
    ]
    if queued:
        from harness.launchers import slurm

        slurm.poll(store, queued)


def record_plan(config: ClusterConfig, store: Store, jobs: list[JobPlan] | None = None) -> set[str]:
    """Record the sweep and its planned jobs (all of them by default) in the store; jobs it
    already holds keep their state. Return the planned ids."""
    jobs = plan(config) if jobs is None else jobs
    store.add_sweep(config.name, config.model_dump(mode="json"))
    store.add_jobs(config.name, [_row(config, job) for job in jobs])
    return {job.id for job in jobs}


def submit(
    config: ClusterConfig,
    only: list[str],
    progress: bool = True,
    wait: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Plan, record and launch the sweep; jobs that already succeeded, and jobs still in a
    cluster's queue from an earlier submission, are skipped."""
    jobs = select(plan(config), only)
    store = store_for(config)
    record_plan(config, store, jobs)
    refresh(store, store.jobs(config.name))
    rows = {row["id"]: row for row in store.jobs(config.name)}
    in_flight = 0
    todo = []
    for job in jobs:
        row = rows[job.id]
        if row["state"] == "succeeded":
            continue
        if row["state"] in IN_FLIGHT and (row["launcher_job_id"] or "").startswith("slurm:"):
            in_flight += 1
            continue
        if row["state"] in ("failed", "cancelled"):
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
        chosen = [row for row in rows if row["state"] in ("failed", "cancelled")]
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


def _with_dependants(rows: list[dict[str, Any]], chosen: list[dict[str, Any]]):
    """The chosen jobs and every job downstream of them that has not succeeded (a transfer,
    export or inference that was not run because its training failed), in plan order.
    Downstream jobs that did succeed, on the old result, are named, not rerun."""
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
    added = len(ids) - len(chosen)
    if added:
        print(f"rerun: with {added} job(s) after them that had not run", file=sys.stderr)
    if stale:
        print(
            f"rerun: {len(stale)} job(s) after them succeeded on the earlier result; to run "
            f"them on the new one too: resnest-bench rerun {' '.join(stale)}",
            file=sys.stderr,
        )
    picked = {row["id"]: row for row in chosen}
    return [picked.get(row["id"], row) for row in rows if row["id"] in ids]
