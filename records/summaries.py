"""A row per job that sums up its epochs: what the comparison table needs of a run.

The table's figures of a run are medians over its timed epochs (the warm-up epoch left out)
and the training time to each target accuracy. Computed from every epoch row each time
``table``, ``status`` or ``report`` runs, they cost time in proportion to the epochs in the
store; kept here, a row per job, they cost a row per job. The store refreshes a job's
summary in the same transaction as each write of its epochs (so it is never behind them),
and rebuilds every summary when ``ingest`` replays outboxes or an older store is upgraded.

A job's epochs are, per epoch number, the newest attempt's (a requeued job resumes where its
last checkpoint was, and a rerun writes its epochs again), and the same arithmetic as the
table had on those rows when it read them all, so a summary's figures equal the figures
computed from the epoch rows, to the last bit (``tests/test_summaries.py``).
"""

from __future__ import annotations

import bisect
import statistics
import sys
from array import array
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select

from records.schema import TELEMETRY, epochs, summaries

CHUNK = 500  # job ids per query (SQLite's bound-parameter limit is far above this)


def summarise(job_epochs: list[Any]) -> dict[str, Any]:
    """The summary of one job's epochs (in epoch order, newest attempt per epoch): counts,
    medians over the timed epochs (every epoch when all are warm-up ones), the epoch times'
    CV, and the accuracy steps: (elapsed seconds, test accuracy) at each epoch whose accuracy
    beats every earlier one, elapsed counting every epoch's time, packed (``pack``). The
    first epoch at or above a target is the first step at or above it, so the steps give the
    time to any target exactly (``time_to``)."""
    timed = [r for r in job_epochs if not r.warmup] or job_epochs
    times = [r.epoch_time for r in timed if r.epoch_time is not None]
    speeds = [r.images_per_sec for r in timed if r.images_per_sec is not None]
    row: dict[str, Any] = {
        "epochs": len(job_epochs),
        "timed_epochs": len(timed),
        "epoch_time": statistics.median(times) if times else None,
        "epoch_time_cv": cv(times),
        "images_per_sec": statistics.median(speeds) if speeds else None,
    }
    for name in TELEMETRY:
        values = [getattr(r, name) for r in timed if getattr(r, name) is not None]
        row[name] = statistics.median(values) if values else None
    steps, elapsed, best = [], 0.0, None
    for r in job_epochs:
        elapsed += r.epoch_time or 0.0
        if r.test_acc is not None and (best is None or r.test_acc > best):
            best = r.test_acc
            steps += [elapsed, r.test_acc]
    row["accuracy_steps"] = pack(steps)
    return row


def pack(steps: list[float]) -> bytes:
    """Flat (elapsed, accuracy) pairs as float64 bytes (little-endian, exact)."""
    values = array("d", steps)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def unpack(blob: bytes | None) -> array:
    values = array("d", blob or b"")
    if sys.byteorder == "big":
        values.byteswap()
    return values


def time_to(steps: bytes | None, target: float) -> float | None:
    """Training time until the end of the first epoch at or above ``target``; None where the
    run never got there. The accuracies of the steps rise, so a bisection finds it."""
    values = unpack(steps)
    index = bisect.bisect_left(values[1::2], target)
    return values[2 * index] if 2 * index < len(values) else None


def cv(values: list[float]) -> float:
    if len(values) < 2 or statistics.mean(values) == 0:
        return 0.0
    return statistics.pstdev(values) / statistics.mean(values)


MERGED = (epochs.c.job_id, epochs.c.epoch, epochs.c.attempt, epochs.c.epoch_time,
          epochs.c.images_per_sec, epochs.c.test_acc, epochs.c.warmup,
          *(epochs.c[name] for name in TELEMETRY))  # fmt: skip


def merged_epochs(conn: Any, job_ids: Iterable[str] | None = None) -> dict[str, list[Any]]:
    """Job id -> its epochs in order, per epoch number the newest attempt's (every job with
    epochs when ``job_ids`` is None)."""
    chunks: list[list[str] | None] = [None]
    if job_ids is not None:
        ids = sorted(set(job_ids))
        chunks = [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]
    per_job: dict[str, dict[int, Any]] = defaultdict(dict)
    for chunk in chunks:
        query = select(*MERGED).order_by(epochs.c.attempt)
        if chunk is not None:
            query = query.where(epochs.c.job_id.in_(chunk))
        for row in conn.execute(query):
            per_job[row.job_id][row.epoch] = row
    return {job_id: [by_epoch[e] for e in sorted(by_epoch)] for job_id, by_epoch in per_job.items()}


def refresh(conn: Any, job_ids: Iterable[str] | None = None) -> int:
    """Recompute the summaries of ``job_ids`` (of every job: None) from their epoch rows, in
    the caller's transaction. Returns how many."""
    from records.rows import upsert_many  # which calls this module: import at use

    ids = None if job_ids is None else set(job_ids)
    if ids is None:
        conn.execute(delete(summaries))
    elif not ids:
        return 0
    merged = merged_epochs(conn, ids)
    rows = [{"job_id": job_id, **summarise(e)} for job_id, e in merged.items()]
    upsert_many(conn, summaries, rows, ("job_id",))
    return len(merged)
