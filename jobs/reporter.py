"""A job's only way out: the reporter.

Every record is a JSON object with a ``kind`` (``start``, ``epoch``, ``event``, ``final``).
``OutboxReporter`` appends each one, flushed and fsynced, to ``outbox.jsonl`` in the job
folder; the results store reads (and replays) these outboxes.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def report(self, kind: str, record: dict[str, Any]) -> None: ...


class NullReporter:
    """For ranks other than 0: they compute, rank 0 reports."""

    def report(self, kind: str, record: dict[str, Any]) -> None:
        pass


class OutboxReporter:
    def __init__(self, job_dir: Path, job_id: str = "", attempt: int = 0) -> None:
        self.path = Path(job_dir) / "outbox.jsonl"
        self.job_id = job_id
        self.attempt = attempt

    def report(self, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        line = {
            "kind": kind,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "time": time.time(),
            "uid": uuid.uuid4().hex,  # makes replays of this record idempotent in the store
        }
        line.update(record)
        data = (json.dumps(line, allow_nan=True) + "\n").encode()
        # The folder appears with the first record: a job refused at its start leaves nothing.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return line


class OutboxError(ValueError):
    """An outbox that cannot be read; the message names the file and the line."""


def read_outbox(path: Path) -> list[dict[str, Any]]:
    """Records of an outbox; a torn last line (a write cut short by a kill) is skipped. Any
    other line that is not a record is an error naming the file and line: an outbox is only
    ever appended to, so damage inside it means the file is not what it should be."""
    records = []
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            for number, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    break  # torn last line
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
                    raise OutboxError(f"{path}:{number}: not an outbox record")
                records.append(record)
    except UnicodeDecodeError:
        raise OutboxError(f"{path}: not an outbox (not UTF-8 text)") from None
    except OSError as exc:
        raise OutboxError(f"{path}: cannot read: {exc.strerror}") from None
    return records


class StoreReporter(OutboxReporter):
    """Outbox first (nothing is lost), then the results store, with retries and backoff.

    If the store stays unreachable, the job goes on: writes pause for ``cooldown`` seconds
    and the outbox keeps every record for ``resnest-bench ingest``.
    """

    def __init__(
        self,
        job_dir: Path,
        url: str,
        job_id: str = "",
        attempt: int = 0,
        retries: int = 3,
        backoff: float = 0.5,
        cooldown: float = 30.0,
    ) -> None:
        super().__init__(job_dir, job_id, attempt)
        self.url = url
        self.retries = retries
        self.backoff = backoff
        self.cooldown = cooldown
        self._store = None
        self._paused_until = 0.0
        self.failed_writes = 0

    def report(self, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        line = super().report(kind, record)
        if time.monotonic() < self._paused_until:
            self.failed_writes += 1
            return line
        for attempt in range(self.retries):
            try:
                if self._store is None:
                    from harness.store import Store

                    self._store = Store(self.url, timeout=5)
                self._store.write_records([line])
                return line
            except Exception as exc:  # any store failure: the outbox has the record
                self._store = None
                if attempt + 1 == self.retries:
                    log.warning(
                        "results store unreachable (%s); records stay in %s",
                        str(exc).splitlines()[0],
                        self.path,
                    )
                    self._paused_until = time.monotonic() + self.cooldown
                    self.failed_writes += 1
                else:
                    time.sleep(self.backoff * 2**attempt)
        return line


def reporter_for(job_dir: Path, job_id: str, attempt: int) -> OutboxReporter:
    """The store reporter when the launcher named a store (RESNEST_BENCH_STORE), else the
    outbox alone."""
    url = os.environ.get("RESNEST_BENCH_STORE")
    if url:
        return StoreReporter(job_dir, url, job_id, attempt)
    return OutboxReporter(job_dir, job_id, attempt)
