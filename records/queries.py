"""The reads behind status, the tables, the plots and the report.

Each function takes a store and a sweep name (or job ids) and returns rows with named fields
(SQLAlchemy rows: ``row.epoch_time``, never ``row[2]``). Where a job ran several attempts,
the newest attempt's figures win: for an epoch, the newest attempt that reported it; for a
result, the newest succeeded attempt. Aggregation (medians, CV, rounding) is the caller's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, or_, select

from records.schema import (
    among,
    attempts,
    epochs,
    inference,
    jobs,
    provenance,
    results,
    summaries,
    telemetry,
)
from records.store import Store


def sweep_jobs(store: Store, sweep: str) -> dict[str, Any]:
    """Job id -> (id, stage, model, gpu_type, attempt, gpus, state, reason) of every job of
    the sweep."""
    with store.begin() as conn:
        query = select(
            jobs.c.id,
            jobs.c.stage,
            jobs.c.model,
            jobs.c.gpu_type,
            jobs.c.attempt,
            jobs.c.gpus,
            jobs.c.state,
            jobs.c.reason,
        ).where(jobs.c.sweep == sweep)
        return {row.id: row for row in conn.execute(query)}


def mismatched_jobs(store: Store, sweep: str) -> set[str]:
    """Jobs that ran on a GPU other than the GPU type they asked for."""
    with store.begin() as conn:
        query = (
            select(provenance.c.job_id)
            .join(jobs, jobs.c.id == provenance.c.job_id)
            .where(jobs.c.sweep == sweep, provenance.c.gpu_mismatch.is_(True))
        )
        return set(conn.execute(query).scalars())


def train_summaries(store: Store, sweep: str) -> dict[str, Any]:
    """Job id -> its summary row (``records.summaries``: medians over its timed epochs, the
    accuracy steps), for the training jobs of the sweep that reported epochs."""
    with store.begin() as conn:
        rows = conn.execute(
            select(summaries)
            .join(jobs, jobs.c.id == summaries.c.job_id)
            .where(jobs.c.sweep == sweep, jobs.c.stage == "train")
            .order_by(summaries.c.job_id)
        )
        return {row.job_id: row for row in rows}


def final_results(store: Store, sweep: str) -> dict[str, Any]:
    """Job id -> the result row (``records.schema.results``) of its newest succeeded attempt."""
    with store.begin() as conn:
        rows = conn.execute(
            select(results)
            .join(jobs, jobs.c.id == results.c.job_id)
            .where(jobs.c.sweep == sweep, results.c.status == "succeeded")
            .order_by(results.c.attempt)
        )
        return {row.job_id: row for row in rows}


def prices(store: Store, sweep: str) -> dict[str, float]:
    """Price per GPU-hour of each GPU type, from the sweep's cluster.yaml as submitted."""
    config = store.sweep_config(sweep) or {}
    return {
        name: gpu["price_per_gpu_hour"]
        for name, gpu in (config.get("gpu_types") or {}).items()
        if gpu.get("price_per_gpu_hour") is not None
    }


def inference_measurements(store: Store, sweep: str) -> dict[tuple, list[dict[str, Any]]]:
    """(model, dataset, gpu_type, runtime) -> the measurements of its newest attempt, one per
    batch size (an unavailable runtime: one with ``available`` false and its ``reason``)."""
    with store.begin() as conn:
        measured = conn.execute(
            select(jobs.c.model, jobs.c.dataset, jobs.c.gpu_type, inference.c.runtime,
                   inference.c.batch_size, inference.c.measurement)
            .join(inference, inference.c.job_id == jobs.c.id)
            .where(jobs.c.sweep == sweep)
            .order_by(inference.c.attempt)
        ).all()  # fmt: skip
    latest: dict[tuple, Any] = {}
    for row in measured:
        latest[(row.model, row.dataset, row.gpu_type, row.runtime, row.batch_size)] = row
    by_runtime: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for (model, dataset, gpu, runtime, _), row in latest.items():
        by_runtime[(model, dataset, gpu, runtime)].append(row.measurement)
    return dict(by_runtime)


def epoch_curves(store: Store, sweep: str) -> list[Any]:
    """Every epoch of every job of the sweep with the job's axes (id, stage, model, gpu_type,
    seed, repeat, attempt, epoch, test_acc, epoch_time, images_per_sec, energy_per_image_j,
    warmup); per epoch number the newest attempt's, in job and epoch order."""
    with store.begin() as conn:
        rows = conn.execute(
            select(
                jobs.c.id, jobs.c.stage, jobs.c.model, jobs.c.gpu_type, jobs.c.seed,
                jobs.c.repeat, epochs.c.attempt, epochs.c.epoch, epochs.c.test_acc,
                epochs.c.epoch_time, epochs.c.images_per_sec, epochs.c.energy_per_image_j,
                epochs.c.warmup,
            )
            .join(epochs, epochs.c.job_id == jobs.c.id)
            .where(jobs.c.sweep == sweep)
            .order_by(epochs.c.attempt)
        ).all()  # fmt: skip
    latest: dict[tuple[str, int], Any] = {}
    for row in rows:
        latest[(row.id, row.epoch)] = row
    return sorted(latest.values(), key=lambda r: (r.id, r.epoch))


def telemetry_samples(store: Store, sweep: str) -> list[Any]:
    """The telemetry samples of the sweep's training jobs (model, gpu_type, job_id, attempt,
    gpu_index, time, sample), in time order."""
    with store.begin() as conn:
        return conn.execute(
            select(
                jobs.c.model,
                jobs.c.gpu_type,
                telemetry.c.job_id,
                telemetry.c.attempt,
                telemetry.c.gpu_index,
                telemetry.c.time,
                telemetry.c.sample,
            )
            .join(telemetry, telemetry.c.job_id == jobs.c.id)
            .where(jobs.c.sweep == sweep, jobs.c.stage == "train")
            .order_by(telemetry.c.time)
        ).all()


def latencies(store: Store, sweep: str) -> dict[str, dict[int, float]]:
    """ "model, runtime" -> batch size -> median latency (ms), newest attempt winning."""
    with store.begin() as conn:
        rows = conn.execute(
            select(jobs.c.model, inference.c.runtime, inference.c.batch_size,
                   inference.c.measurement)
            .join(inference, inference.c.job_id == jobs.c.id)
            .where(jobs.c.sweep == sweep, inference.c.batch_size > 0)
            .order_by(inference.c.attempt)
        ).all()  # fmt: skip
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        latency = r.measurement.get("latency_p50_ms")
        if latency is not None:
            series[f"{r.model}, {r.runtime}"][r.batch_size] = latency
    return dict(series)


def provenance_rows(store: Store, sweep: str) -> list[Any]:
    """Every attempt's provenance (``records.schema.provenance``), in job and attempt order."""
    with store.begin() as conn:
        return conn.execute(
            select(provenance)
            .join(jobs, jobs.c.id == provenance.c.job_id)
            .where(jobs.c.sweep == sweep)
            .order_by(provenance.c.job_id, provenance.c.attempt)
        ).all()


def hosts(store: Store, sweep: str) -> dict[str, str]:
    """Job id -> the host its newest attempt with a provenance ran on (rank 0's)."""
    with store.begin() as conn:
        rows = conn.execute(
            select(provenance.c.job_id, provenance.c.host)
            .join(jobs, jobs.c.id == provenance.c.job_id)
            .where(jobs.c.sweep == sweep, provenance.c.host.is_not(None))
            .order_by(provenance.c.attempt)
        )
        return {job_id: host for job_id, host in rows}


def flops_basis(store: Store, sweep: str) -> dict[str, tuple[int, str | None, str | None]]:
    """Job id -> (forward FLOPs per image, math mode, GPU name) of its newest attempt that
    recorded its FLOPs: what its achieved TFLOP/s and fraction of peak are made from."""
    query = (
        select(
            provenance.c.job_id,
            provenance.c.forward_flops,
            provenance.c.math_mode,
            provenance.c.gpu_name,
        )
        .join(jobs, jobs.c.id == provenance.c.job_id)
        .where(jobs.c.sweep == sweep, provenance.c.forward_flops.is_not(None))
        .order_by(provenance.c.attempt)
    )
    with store.begin() as conn:
        return {job_id: (flops, mode, gpu) for job_id, flops, mode, gpu in conn.execute(query)}


def queue_waits(store: Store, sweep: str) -> dict[str, float]:
    """Job id -> seconds it waited in a queue, submission to start, over all its attempts:
    the attempts' own times where the launcher recorded them (SLURM: sacct's Submit and
    Start), else the job's submission and start as the harness saw them. Jobs with no such
    times (run by hand and ingested) are left out."""
    with store.begin() as conn:
        query = (
            select(attempts.c.job_id, attempts.c.submitted_at, attempts.c.started_at)
            .join(jobs, jobs.c.id == attempts.c.job_id)
            .where(jobs.c.sweep == sweep)
        )
        waits: dict[str, float] = {}
        for job_id, submitted, started in conn.execute(query):
            if submitted is not None and started is not None:
                waits[job_id] = waits.get(job_id, 0.0) + max(0.0, started - submitted)
        query = select(jobs.c.id, jobs.c.submitted_at, jobs.c.started_at).where(
            jobs.c.sweep == sweep
        )
        for job_id, submitted, started in conn.execute(query):
            if job_id not in waits and submitted is not None and started is not None:
                waits[job_id] = max(0.0, started - submitted)
    return waits


def progress_of(store: Store, job_ids: list[str]) -> dict[str, list[tuple]]:
    """Each job's epochs as (attempt, epoch, recorded_at, epoch_time + eval_time), in
    order: what status makes its epoch k of N, s/epoch and ETA from."""
    found: dict[str, list[tuple]] = {}
    query = select(
        epochs.c.job_id,
        epochs.c.attempt,
        epochs.c.epoch,
        epochs.c.recorded_at,
        func.coalesce(epochs.c.epoch_time, 0) + func.coalesce(epochs.c.eval_time, 0),
    )
    with store.begin() as conn:
        for where in among(conn, epochs.c.job_id, job_ids):
            chunk = query.where(where)
            for job_id, *rest in conn.execute(chunk.order_by(epochs.c.attempt, epochs.c.epoch)):
                found.setdefault(job_id, []).append(tuple(rest))
    return found


def queue_times(store: Store, job_ids: list[str]) -> dict[tuple[str, int], tuple]:
    """(job id, attempt) -> (submitted_at, started_at) of the jobs' attempts: what status
    makes each job's queue wait from."""
    query = select(attempts.c.job_id, attempts.c.attempt, attempts.c.submitted_at,
                   attempts.c.started_at)  # fmt: skip
    with store.begin() as conn:
        return {
            (job_id, attempt): times
            for where in among(conn, attempts.c.job_id, job_ids)
            for job_id, attempt, *times in conn.execute(query.where(where))
        }


def last_epochs(store: Store, job_ids: list[str]) -> dict[str, tuple[int | None, float | None]]:
    """Each job's newest epoch number and s/epoch, from its summary
    (``records.summaries.last_epoch``): what status shows of an ended job."""
    found: dict[str, tuple[int | None, float | None]] = {}
    table = summaries
    query = select(table.c.job_id, table.c.last_epoch, table.c.last_epoch_s)
    with store.begin() as conn:
        for where in among(conn, table.c.job_id, job_ids):
            found.update({job_id: (k, s) for job_id, k, s in conn.execute(query.where(where))})
    return found


def troubled_epochs(store: Store, job_id: str) -> list[tuple[Any, ...]]:
    """(attempt, epoch, throttled %, reasons, XIDs) of the job's epochs whose GPUs were
    throttled or reported an XID."""
    columns = ("attempt", "epoch", "throttled_pct", "throttle_reasons", "xids")
    query = (
        select(*(epochs.c[name] for name in columns))
        .where(
            epochs.c.job_id == job_id, or_(epochs.c.throttled_pct > 0, epochs.c.xids.is_not(None))
        )
        .order_by(epochs.c.attempt, epochs.c.epoch)
    )
    with store.begin() as conn:
        return [tuple(row) for row in conn.execute(query)]
