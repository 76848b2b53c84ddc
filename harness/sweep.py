"""Submitting a sweep and rerunning jobs: plan, record in the store, hand to a launcher."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig
from harness.errors import UserError
from harness.planner import JobPlan, plan, select
from harness.store import Store, open_store

RUNNABLE_STAGES = ("train", "transfer")


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
        if job["stage"] == "transfer":
            parent = store.job(job["depends_on"][0])
            spec["init_from"] = parent["job_dir"]
        path = Path(job["job_dir"]) / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    return write


def max_parallel(config: ClusterConfig) -> int:
    from harness.launchers.local import visible_gpus

    return config.launcher.local.max_parallel or max(visible_gpus(), 1)


def submit(config: ClusterConfig, only: list[str], progress: bool = True) -> dict[str, Any]:
    """Plan, record and run the sweep; jobs that already succeeded are skipped."""
    jobs = select(plan(config), only)
    unavailable = sorted({j.stage for j in jobs} - set(RUNNABLE_STAGES))
    if unavailable:
        raise UserError(
            f"sweep.stages: {', '.join(unavailable)} cannot run yet; "
            f"plan them with --dry-run, or keep sweep.stages to {', '.join(RUNNABLE_STAGES)}"
        )
    if config.launcher.kind != "local":
        raise UserError(
            f"launcher.kind: the {config.launcher.kind} launcher is not built yet; use local"
        )
    store = store_for(config)
    store.add_sweep(config.name, config.model_dump(mode="json"))
    store.add_jobs(config.name, [_row(config, job) for job in jobs])
    rows = {row["id"]: row for row in store.jobs(config.name)}
    todo = [rows[job.id] for job in jobs if rows[job.id]["state"] != "succeeded"]
    skipped = len(jobs) - len(todo)
    for row in todo:
        if row["state"] in ("failed", "cancelled"):
            row["attempt"] += 1
        store.set_state(row["id"], "submitted", attempt=row["attempt"], reason=None)
    from harness.launchers import local

    final = local.run(store, todo, max_parallel(config), spec_writer(store), progress)
    return {"planned": len(jobs), "skipped": skipped, "final": final, "store": store}


def rerun(
    config: ClusterConfig, job_ids: list[str], failed: bool, progress: bool = True
) -> dict[str, Any]:
    """Run exactly the chosen jobs again, as new attempts; nothing else is touched."""
    store = store_for(config)
    rows = store.jobs(config.name)
    if failed:
        chosen = [row for row in rows if row["state"] in ("failed", "cancelled")]
    else:
        chosen = []
        for job_id in job_ids:
            row = store.job(job_id)
            if row is None or row["sweep"] != config.name:
                raise UserError(f"no job {job_id!r} in sweep {config.name!r}")
            chosen.append(row)
    for row in chosen:
        if row["state"] == "succeeded":
            # A finished job runs again from the start; a failed one resumes from its last
            # valid checkpoint. The old checkpoints stay, under the attempt's name.
            old = Path(row["job_dir"]) / "checkpoints"
            if old.is_dir():
                old.rename(old.with_name(f"checkpoints.attempt{row['attempt']}"))
        row["attempt"] += 1
        store.set_state(row["id"], "submitted", attempt=row["attempt"], reason=None)
    from harness.launchers import local

    final = local.run(store, chosen, max_parallel(config), spec_writer(store), progress)
    return {"final": final, "store": store}
