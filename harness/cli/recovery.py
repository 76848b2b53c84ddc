"""Commands that mend a sweep: cancel jobs, and ingest outboxes into a store (after a lost
store, or for jobs run by hand)."""

from __future__ import annotations

import argparse
import sys

from harness.cli.commands import open_store_of, store_and_sweep
from records.errors import UserError
from records.schema import ENDED, UNFINISHED, JobRow


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel the named jobs, or a whole sweep when asked for it by name (--sweep) or with
    --all; a target that matches no job is an error and nothing is cancelled."""
    if args.job_ids and (args.sweep or args.all):
        raise UserError("name jobs, or a whole sweep with --sweep NAME / --all, not both")
    if not args.job_ids and not (args.sweep or args.all):
        raise UserError(
            "name the jobs to cancel (JOB_ID ...), or cancel a whole sweep with --sweep NAME "
            "or --all (the sweep of -c)"
        )
    _, store, sweep_name = store_and_sweep(args)
    if args.job_ids:
        targets = []
        for job_id in args.job_ids:
            job = store.job(job_id)
            if job is None:
                raise UserError(f"no job {job_id!r} in the store: nothing cancelled")
            targets.append(job)
        what = f"{len(targets)} named job(s)"
    else:
        targets = store.jobs(sweep_name)
        what = f"sweep {sweep_name!r}"
    unfinished = [job for job in targets if job["state"] in UNFINISHED]
    for job in targets:
        if job["state"] not in UNFINISHED:
            print(f"  {job['id']}  already {job['state']}: left as it is", file=sys.stderr)
    if not unfinished:
        print(f"nothing to cancel in {what}: no job is pending, queued or running")
        return 0
    for job in unfinished:
        print(
            f"cancelling {job['id']}  {job['stage']} {job['model']} on {job['gpu_type']} "
            f"({job['state']})"
        )
    _cancel_jobs(store, unfinished)
    print(f"cancelled {len(unfinished)} job(s) of {what}")
    return 0


def _cancel_jobs(store, jobs: list[JobRow]) -> None:
    """Each job is cancelled by the launcher that holds it; a job no launcher holds yet
    (pending) is only recorded as cancelled."""
    from harness import launchers

    held: dict[str | None, list[JobRow]] = {}
    for job in jobs:
        held.setdefault(launchers.launcher_of(job), []).append(job)
    for name, group in held.items():
        if name is None:
            for job in group:
                store.set_state(job["id"], "cancelled", reason="cancelled by the user")
            if any(job["state"] == "waiting" for job in group):  # held by a feeder, maybe
                from harness.launchers import feeder

                feeder.withdraw([job for job in group if job["state"] == "waiting"])
        else:
            launchers.get(name, store).cancel(group)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Replay outboxes into the store (creating it if it is gone). With the sweep's
    cluster.yaml, the sweep is planned into the store again and every job takes the state its
    outbox ended in, so that tables after a lost store are the tables from before."""
    from pathlib import Path

    from records.outbox import read_outbox
    from records.store import redact

    path = Path(args.path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    config, store = open_store_of(args, create=True)
    outboxes = [path] if path.is_file() else sorted(path.rglob("outbox.jsonl"))
    planned: set[str] = set()
    sweep_name = args.sweep
    if config is not None and not args.sweep:
        from harness import sweep as sweeps

        planned = sweeps.record_plan(config, store)
        sweep_name = config.name
    total = outside = 0
    for outbox in outboxes:
        records = read_outbox(outbox)
        try:
            total += store.write_records(records)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{outbox}: not an outbox: a record lacks {exc}") from None
        job_id = next((r.get("job_id") for r in records if r.get("kind") == "start"), None)
        if job_id and job_id in planned:
            _restore_state(store, job_id, records)
        elif args.sweep:
            _adopt(store, args.sweep, outbox, records)
        elif config is not None:
            outside += 1
    into = f" (sweep {sweep_name!r})" if sweep_name else ""
    print(
        f"ingested {total} records from {len(outboxes)} outbox file(s) into "
        f"{redact(store.url)}{into}"
    )
    if outside:
        print(
            f"{outside} outbox(es) belong to no job of sweep {sweep_name!r}: their records are "
            "stored; to show them in a sweep's tables, ingest them with --sweep NAME",
            file=sys.stderr,
        )
    return 0


def cmd_thin(args: argparse.Namespace) -> int:
    from sqlalchemy import delete, func, select

    from records.schema import jobs, telemetry

    _, store, sweep_name = store_and_sweep(args)
    finished = select(jobs.c.id).where(jobs.c.sweep == sweep_name, jobs.c.state.in_(ENDED))
    chosen = telemetry.c.job_id.in_(finished)
    with store.begin() as conn:
        samples, held = conn.execute(
            select(func.count(), func.count(telemetry.c.job_id.distinct())).where(chosen)
        ).one()
        if not args.dry_run:
            conn.execute(delete(telemetry).where(chosen))
    verb = "would drop" if args.dry_run else "dropped"
    print(
        f"sweep {sweep_name}: {verb} {samples:,} telemetry sample(s) of {held:,} finished "
        "job(s); per-epoch figures kept"
    )
    return 0


def _restore_state(store, job_id: str, records: list[dict]) -> None:
    """A planned job's state from its outbox: how its last attempt ended. An attempt without
    a final record marks only a job the store knew nothing of (it may still be running)."""
    from records.outbox import final_state

    state, reason, attempt = final_state(records)
    final = any(r["kind"] == "final" and r.get("attempt", 0) == attempt for r in records)
    if final:
        store.set_state(job_id, state, attempt=attempt, reason=reason)
    elif store.job(job_id)["state"] == "pending":
        store.set_state(job_id, "failed", attempt=attempt,
                        reason="ended without a final record (found by ingest)")  # fmt: skip


def _adopt(store, sweep: str, outbox, records: list[dict]) -> None:
    """Record a job run outside any sweep (by hand, on another machine) as a job of ``sweep``,
    from its outbox's start record, so that tables and reports include it."""
    start = next((r for r in records if r["kind"] == "start"), None)
    if start is None:
        raise UserError(f"{outbox}: no start record, so no job to add to sweep {sweep!r}")
    spec = start["spec"]
    job_id = start["job_id"]
    if not job_id:
        raise UserError(f"{outbox}: the job has no id (run it again with a current version)")
    final = next((r for r in reversed(records) if r["kind"] == "final"), None)
    if sweep not in store.sweeps():
        store.add_sweep(sweep, {"adopted": True})
    store.add_jobs(
        sweep,
        [
            {
                "id": job_id,
                "stage": spec["stage"],
                "model": spec["model"],
                "dataset": spec["dataset"],
                "gpu_type": spec.get("gpu_type") or spec.get("expect_gpu") or "unknown",
                "gpus": start.get("world_size", 1),
                "seed": spec.get("seed", 0),
                "repeat": 0,
                "spec": spec,
                "depends_on": [],
                "job_dir": str(outbox.parent.resolve()),
            }
        ],
    )
    state = final["status"] if final else "running"
    store.set_state(job_id, state if state in ("succeeded", "failed") else "running",
                    attempt=start.get("attempt", 0))  # fmt: skip
