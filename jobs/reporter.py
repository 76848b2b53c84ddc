"""A job's only way out: the reporter.

Every record is a JSON object with a ``kind`` (``start``, ``epoch``, ``event``, ``final``).
``OutboxReporter`` appends each one, flushed and fsynced, to ``outbox.jsonl`` in the job
folder; the results store reads (and replays) these outboxes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol


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

    def report(self, kind: str, record: dict[str, Any]) -> None:
        line = {"kind": kind, "job_id": self.job_id, "attempt": self.attempt, "time": time.time()}
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


def read_outbox(path: Path) -> list[dict[str, Any]]:
    """Records of an outbox; a torn last line (a write cut short by a kill) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                records.append(json.loads(line))
    return records
