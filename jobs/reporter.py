"""A job's only way out: the reporter.

Every record is a JSON object of one of the kinds ``records.kinds`` describes. The outbox
writer (``records.outbox``) appends each one, flushed and fsynced, to ``outbox.jsonl`` in
the job folder; ``StoreReporter`` also writes it to the results store named in the job's
spec. The store reads (and replays) the outboxes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from records.outbox import OutboxWriter

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def report(self, kind: str, record: dict[str, Any]) -> None: ...


class NullReporter:
    """For ranks other than 0: they compute, rank 0 reports."""

    def report(self, kind: str, record: dict[str, Any]) -> None:
        pass


class StoreReporter(OutboxWriter):
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
                    from records.store import Store

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


def reporter_for(job_dir: Path, job_id: str, attempt: int, store: str | None) -> OutboxWriter:
    """The store reporter when the job's spec names a store it may write, else the outbox
    alone (which the harness collects)."""
    from records.spec import reporting_store

    store = reporting_store(store)
    if store:
        return StoreReporter(job_dir, store, job_id, attempt)
    return OutboxWriter(job_dir, job_id, attempt)
