"""Bringing jobs' outboxes into the store: how records travel from hosts that cannot write it.

Every job appends each record to ``outbox.jsonl`` in its folder before anything else. On a
cluster that folder is on the filesystem the login node and the compute nodes share, and a
job on another host never opens a SQLite store (SQLite's WAL needs every process on one host;
Lustre and GPFS cannot hold it at all): the harness reads the outboxes into the store
wherever it runs, on every ``status``, ``table``, ``report``, ``logs`` and ``rerun``, and
while ``submit --wait`` follows a sweep.

Collection is incremental. The store keeps, per job, the byte offset after the last whole
line it holds and the outbox's size and mtime when it was read; only outboxes whose size or
mtime changed are opened, and each is read from that offset. A torn last line (a write under
way) waits for the next collection. The records and the new offsets are written in one
transaction, and every record is stored idempotently: a collection killed at any point and run
again loses and duplicates nothing.

Which outboxes are looked at: those of jobs in a cluster's queue or running, and those of jobs
that ended until a collection has looked at them ``GRACE_S`` after their end (a network
filesystem may show a file's last size a little late: NFS caches attributes for up to a
minute). Jobs that never started are not looked at.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from records.outbox import NAME, read_from
from records.schema import ENDED, IN_FLIGHT, JobRow
from records.store import Store

GRACE_S = 60.0


def due(row: JobRow, cursor: dict[str, Any] | None, now: float) -> bool:
    """Whether the job's outbox may have records the store lacks."""
    if row["state"] in IN_FLIGHT:
        return True
    if row["state"] not in ENDED or not row.get("job_dir"):
        return False
    if cursor is None:
        return True
    ended = row.get("ended_at") or 0.0
    return (cursor["checked_at"] or 0.0) <= ended + GRACE_S


def collect(store: Store, rows: list[JobRow], force: bool = False, quiet: bool = False) -> int:
    """Read the new records of the outboxes of ``rows`` (store job rows) into the store;
    ``force``: look at each of them, due or not. Returns how many records were stored."""
    now = time.time()
    candidates = [row for row in rows if row.get("job_dir")]
    cursors = store.cursors([row["id"] for row in candidates])
    records: list[dict[str, Any]] = []
    moved: list[dict[str, Any]] = []
    problems: list[str] = []
    for row in candidates:
        cursor = cursors.get(row["id"])
        if not force and not due(row, cursor, now):
            continue
        path = os.path.join(row["job_dir"], NAME)  # (a Path each: a tenth of a second)
        try:
            stat = os.stat(path)
        except OSError:  # not started yet, or a job that never ran
            if cursor is None and row["state"] in ENDED:
                moved.append(_cursor(row["id"], 0, -1, 0, now))
            continue
        offset = cursor["offset"] if cursor else 0
        seen = (stat.st_size, stat.st_mtime_ns)
        if cursor is not None and (cursor["size"], cursor["mtime_ns"]) == seen:  # unchanged
            if row["state"] in ENDED:  # looked at again after its end: say when
                moved.append({**cursor, "checked_at": now})
            continue
        if stat.st_size < offset:  # a new file in the job's place: read it whole
            offset = 0
        found, offset, problem = read_from(path, offset)
        if problem:
            problems.append(problem)
        records.extend(found)
        moved.append(_cursor(row["id"], offset, stat.st_size, stat.st_mtime_ns, now))
    if records or moved:
        store.save_collected(records, moved)
    if problems and not quiet:
        for problem in problems[:3]:
            print(f"resnest-bench: outbox not read past a damaged line: {problem}", file=sys.stderr)
        if len(problems) > 3:
            print(
                f"resnest-bench: ... and {len(problems) - 3} more such outbox(es)", file=sys.stderr
            )
    return len(records)


def _cursor(job_id: str, offset: int, size: int, mtime_ns: int, now: float) -> dict[str, Any]:
    return {"job_id": job_id, "offset": offset, "size": size, "mtime_ns": mtime_ns,
            "checked_at": now}  # fmt: skip
