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
computed from the epoch rows, to the last bit (the CV to 1e-12: ``cv``;
``tests/test_summaries.py``).
"""

from __future__ import annotations

import bisect
import math
import sys
from array import array
from collections import defaultdict, namedtuple
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select

from records.batch import upsert_many
from records.schema import TELEMETRY, among, epochs, summaries

CHUNK = 500  # job ids per query (SQLite's bound-parameter limit is far above this)


def summarise(job_epochs: list[Any]) -> dict[str, Any]:
    """The summary of one job's epochs (in epoch order, newest attempt per epoch): counts,
    medians over the timed epochs (every epoch when all are warm-up ones), the epoch times'
    CV, and the accuracy steps: (elapsed seconds, test accuracy) at each epoch whose accuracy
    beats every earlier one, elapsed counting every epoch's time, packed (``pack``). The
    first epoch at or above a target is the first step at or above it, so the steps give the
    time to any target exactly (``time_to``)."""
    timed = [r for r in job_epochs if not r.warmup] or job_epochs
    times = [t for r in timed if (t := r.epoch_time) is not None]
    row: dict[str, Any] = {
        "epochs": len(job_epochs),
        "timed_epochs": len(timed),
        "epoch_time": median(times),
        "epoch_time_cv": cv(times),
        "images_per_sec": median([v for r in timed if (v := r.images_per_sec) is not None]),
    }
    for name in TELEMETRY:
        row[name] = median([v for r in timed if (v := getattr(r, name)) is not None])
    throttled = [v for r in timed if (v := r.throttled_pct) is not None]
    row["throttled_pct"] = math.fsum(throttled) / len(throttled) if throttled else None
    steps, energies, elapsed, energy, best = [], [], 0.0, 0.0, None
    for r in job_epochs:
        elapsed += r.epoch_time or 0.0
        energy = energy + r.energy_j if r.energy_j is not None else math.nan  # NaN stays NaN
        if r.test_acc is not None and (best is None or r.test_acc > best):
            best = r.test_acc
            steps += [elapsed, r.test_acc]
            energies.append(energy)
    row["accuracy_steps"] = pack(steps)
    measured = any(not math.isnan(e) for e in energies)
    row["energy_steps"] = pack(energies) if measured else None
    row["last_epoch"], row["last_epoch_s"] = last_epoch(job_epochs)
    return row


def median(values: list[float]) -> float | None:
    """``statistics.median``'s arithmetic (the middle value, or the mean of the middle two),
    without its checks, which cost a tenth of a second per 10,000 jobs summed up; None of
    nothing."""
    n = len(values)
    if n < 3:
        return None if n == 0 else values[0] if n == 1 else (values[0] + values[1]) / 2
    ordered = sorted(values)
    half = n // 2
    return ordered[half] if n % 2 else (ordered[half - 1] + ordered[half]) / 2


def last_epoch(job_epochs: list[Any]) -> tuple[int | None, float | None]:
    """The newest epoch number and its s/epoch, as status shows them: the wall time between
    the last two epochs' records where one attempt wrote both (evaluation, checkpoints and
    data loading included), otherwise the last epoch's training and evaluation seconds."""
    if not job_epochs:
        return None, None
    last = job_epochs[-1]
    before = job_epochs[-2] if len(job_epochs) > 1 else None
    one_attempt = before is not None and before.attempt == last.attempt  # wrote both
    if one_attempt and before is not None and last.recorded_at and before.recorded_at:
        return last.epoch, last.recorded_at - before.recorded_at
    return last.epoch, ((last.epoch_time or 0.0) + (last.eval_time or 0.0)) or None


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


def energy_to(steps: bytes | None, energy_steps: bytes | None, target: float) -> float | None:
    """Energy (J) spent by the end of the first epoch at or above ``target``: the sum of the
    epochs' energies up to it. None where the run never got there or an epoch up to it
    measured no energy (no NVML, or a summary written before version 8)."""
    values, energies = unpack(steps), unpack(energy_steps)
    index = bisect.bisect_left(values[1::2], target)
    if 2 * index >= len(values) or index >= len(energies) or math.isnan(energies[index]):
        return None
    return energies[index]


def cv(values: list[float]) -> float:
    """Population standard deviation over the mean, in floats with exact sums (``fsum``):
    within 1e-12 of ``statistics.pstdev`` and ``mean``, which work in exact fractions and
    cost a fifth of a second per 10,000 runs (a status that collects a whole sweep)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = math.fsum(values) / n
    if mean == 0:
        return 0.0
    return math.sqrt(math.fsum([(v - mean) ** 2 for v in values]) / n) / mean


MERGED = (epochs.c.job_id, epochs.c.epoch, epochs.c.attempt, epochs.c.epoch_time,
          epochs.c.images_per_sec, epochs.c.test_acc, epochs.c.warmup, epochs.c.eval_time,
          epochs.c.recorded_at, epochs.c.throttled_pct,
          *(epochs.c[name] for name in TELEMETRY))  # fmt: skip


def _named_tuple(name: str, fields: list[str]) -> Any:
    return namedtuple(name, fields)  # type: ignore[misc]  # (fields not a literal)


# A merged epoch as a named tuple: read by name tens of times per job, which costs a
# database row's name lookup ten times as much.
Merged = _named_tuple("Merged", [c.name for c in MERGED])


def merged_epochs(conn: Any, job_ids: Iterable[str] | None = None) -> dict[str, list[Any]]:
    """Job id -> its epochs in order, per epoch number the newest attempt's (every job with
    epochs when ``job_ids`` is None)."""
    wheres = [None] if job_ids is None else among(conn, epochs.c.job_id, job_ids, CHUNK)
    per_job: dict[str, dict[int, Any]] = defaultdict(dict)
    for where in wheres:
        query = select(*MERGED).order_by(epochs.c.attempt)
        if where is not None:
            query = query.where(where)
        for row in map(Merged._make, conn.execute(query)):
            per_job[row.job_id][row.epoch] = row
    return {job_id: [by_epoch[e] for e in sorted(by_epoch)] for job_id, by_epoch in per_job.items()}


def refresh(conn: Any, job_ids: Iterable[str] | None = None) -> int:
    """Recompute the summaries of ``job_ids`` (of every job: None) from their epoch rows, in
    the caller's transaction. Returns how many."""
    ids = None if job_ids is None else set(job_ids)
    if ids is None:
        conn.execute(delete(summaries))
    elif not ids:
        return 0
    merged = merged_epochs(conn, ids)
    rows = [{"job_id": job_id, **summarise(e)} for job_id, e in merged.items()]
    upsert_many(conn, summaries, rows, ("job_id",))
    return len(merged)
