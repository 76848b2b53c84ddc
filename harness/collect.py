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
way) waits for the next collection. An outbox's records and its new offset are written in one
transaction, and every record is stored idempotently: a collection killed at any point and run
again loses and duplicates nothing.

Many outboxes (a whole sweep's, the first time: tens of thousands of records) are shared among
worker processes, one per core up to ``WORKERS`` and at least ``SHARE`` outboxes each: each
reads, parses and writes its share in a transaction of its own, so the parsing runs on every
core (on SQLite, where writes take turns, the harness's own share is half a worker's: it writes
it while the workers parse). A worker forked from the harness opens connections of
its own and dies with it; a worker that fails has its share collected again by the harness.
Where forking is not safe (another thread runs) or the store takes one writer at a time (a
SQLite file on the rollback journal), one process collects everything.

Which outboxes are looked at: those of jobs in a cluster's queue or running, and those of jobs
that ended until a collection has looked at them ``GRACE_S`` after their end (a network
filesystem may show a file's last size a little late: NFS caches attributes for up to a
minute). Jobs that never started are not looked at.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any

from records.outbox import NAME, read_from
from records.schema import ENDED, IN_FLIGHT, JobRow
from records.store import Store

GRACE_S = 60.0
# A collection of at least two shares of this many outboxes is shared among worker processes.
SHARE = 2000
WORKERS = 4

Share = list[tuple[str, str, int, os.stat_result]]  # outboxes to read: (job id, path, offset, stat)


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
    return Collection(store, rows, force).finish(quiet)


class Collection:
    """A collection begun: the outboxes to read found, and for many of them worker processes
    already at work on their shares; ``finish`` collects the harness's own share and waits
    for the workers (``harness.sweep.refresh`` polls the cluster in between)."""

    def __init__(self, store: Store, rows: list[JobRow], force: bool = False) -> None:
        self.store, self.now = store, time.time()
        candidates = [row for row in rows if row.get("job_dir")]
        cursors = store.cursors([row["id"] for row in candidates])
        todo: Share = []
        self.moved: list[dict[str, Any]] = []  # cursors of outboxes not read (looked at)
        for row in candidates:
            cursor = cursors.get(row["id"])
            if not force and not due(row, cursor, self.now):
                continue
            path = os.path.join(row["job_dir"], NAME)  # (a Path each: a tenth of a second)
            try:
                stat = os.stat(path)
            except OSError:  # not started yet, or a job that never ran
                if cursor is None and row["state"] in ENDED:
                    self.moved.append(_cursor(row["id"], 0, -1, 0, self.now))
                continue
            offset = cursor["offset"] if cursor else 0
            seen = (stat.st_size, stat.st_mtime_ns)
            if cursor is not None and (cursor["size"], cursor["mtime_ns"]) == seen:  # unchanged
                if row["state"] in ENDED:  # looked at again after its end: say when
                    self.moved.append({**cursor, "checked_at": self.now})
                continue
            if stat.st_size < offset:  # a new file in the job's place: read it whole
                offset = 0
            todo.append((row["id"], path, offset, stat))
        # Shares of many outboxes go to workers at once; the harness's waits for ``finish``.
        self.shares = _shares(store, todo)
        self.workers = [_fork(store, share, self.now) for share in self.shares[1:]]

    def finish(self, quiet: bool = False) -> int:
        """Collect the harness's share, wait for the workers' (collecting again any share
        whose worker failed); say what stopped a reading. Returns how many records."""
        store, now = self.store, self.now
        waiting = list(zip(self.workers, self.shares[1:], strict=True))
        try:
            count, problems = _collect_share(store, self.shares[0], self.moved, now)
            while waiting:
                more, said = _join(store, *waiting.pop(0), now)
                count += more
                problems += said
        except BaseException:  # (Ctrl-C too) the workers go with it; a later one collects all
            for (pid, readable), _ in waiting:
                os.close(readable)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise
        if problems and not quiet:
            for problem in problems[:3]:
                print(
                    f"resnest-bench: outbox not read past a damaged line: {problem}",
                    file=sys.stderr,
                )
            if len(problems) > 3:
                print(
                    f"resnest-bench: ... and {len(problems) - 3} more such outbox(es)",
                    file=sys.stderr,
                )
        return count


def _collect_share(
    store: Store, share: Share, moved: list[dict[str, Any]], now: float
) -> tuple[int, list[str]]:
    """Read the outboxes of ``share`` from their offsets and store their records with the new
    cursors (and ``moved``) in one transaction: (records stored, what stopped a reading)."""
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    for job_id, path, offset, stat in share:
        found, offset, problem = read_from(path, offset)
        if problem:
            problems.append(problem)
        records.extend(found)
        moved.append(_cursor(job_id, offset, stat.st_size, stat.st_mtime_ns, now))
    if records or moved:
        store.save_collected(records, moved)
    return len(records), problems


def _shares(store: Store, todo: Share) -> list[Share]:
    """``todo`` cut into one share per worker process (see the module's note): one share
    where there are too few outboxes, forking is unsafe or the store takes one writer."""
    workers = min(len(todo) // SHARE, WORKERS, len(os.sched_getaffinity(0)))
    one_writer = store.is_sqlite and store.journal != "wal"
    if workers < 2 or one_writer or threading.active_count() > 1 or not hasattr(os, "fork"):
        return [todo]
    # SQLite's writes take turns: the harness's own share is half a worker's, written while
    # the workers still parse theirs. PostgreSQL's run side by side: shares alike.
    own = len(todo) // (2 * workers - 1) if store.is_sqlite else len(todo) // workers
    return [todo[:own]] + [todo[own + i :: workers - 1] for i in range(workers - 1)]


def _fork(store: Store, share: Share, now: float) -> tuple[int, int]:
    """A worker process that collects ``share``: (its pid, the pipe it answers on)."""
    readable, writable = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        os.close(writable)
        return pid, readable
    code = 1  # the worker: whatever happens, it ends here, with nothing of the parent's run
    try:
        os.close(readable)
        _die_with(parent)
        store.engine.dispose(close=False)  # connections of its own; the parent's stay open
        count, problems = _collect_share(store, share, [], now)
        with os.fdopen(writable, "w") as answer:
            json.dump({"count": count, "problems": problems}, answer)
        code = 0
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    """Have the kernel end this worker when the harness that forked it ends (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it ended before that took hold
        os._exit(1)


def _join(store: Store, worker: tuple[int, int], share: Share, now: float) -> tuple[int, list]:
    """The worker's answer; a worker that failed has its share collected here instead."""
    pid, readable = worker
    with os.fdopen(readable) as answer:
        said = answer.read()
    _, status = os.waitpid(pid, 0)
    if status == 0 and said:
        answer_of = json.loads(said)
        return answer_of["count"], answer_of["problems"]
    return _collect_share(store, share, [], now)


def _cursor(job_id: str, offset: int, size: int, mtime_ns: int, now: float) -> dict[str, Any]:
    return {"job_id": job_id, "offset": offset, "size": size, "mtime_ns": mtime_ns,
            "checked_at": now}  # fmt: skip
