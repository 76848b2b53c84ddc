"""The outbox: a job folder's ``outbox.jsonl``, where a job appends every record it emits.

Each line is one record (``records.kinds``), written whole, flushed and fsynced before the
job goes on, so nothing a job reported is lost when the store is unreachable or the job is
killed. The store replays outboxes (``resnest-bench ingest``); the launchers read the final
record of a job another runner ran.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from records import kinds
from records.errors import OutboxError

NAME = "outbox.jsonl"


class OutboxWriter:
    """Appends records to a job folder's outbox; ``report`` returns the line it wrote."""

    def __init__(self, job_dir: Path, job_id: str = "", attempt: int = 0) -> None:
        self.path = Path(job_dir) / NAME
        self.job_id = job_id
        self.attempt = attempt

    def report(self, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        if kind not in kinds.KINDS:
            raise ValueError(f"unknown record kind {kind!r}; see records.kinds")
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
                records.append(kinds.check(record, f"{path}:{number}"))
    except UnicodeDecodeError:
        raise OutboxError(f"{path}: not an outbox (not UTF-8 text)") from None
    except OSError as exc:
        raise OutboxError(f"{path}: cannot read: {exc.strerror}") from None
    return records


def read_from(path: str | Path, offset: int) -> tuple[list[dict[str, Any]], int, str | None]:
    """The whole records of an outbox from byte ``offset`` on, the offset after the last of
    them, and what stopped the reading short, if anything: a torn last line (a write still
    under way, or cut by a kill) is left for the next reading; a damaged line stops it there,
    the records before it kept."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError as exc:
        return [], offset, f"{path}: cannot read: {exc.strerror}"
    whole = data[: data.rfind(b"\n") + 1]  # a torn last line waits
    try:  # the whole lines as one JSON array: a fifth of the cost of a parse per line
        found = json.loads(b"[" + whole[:-1].replace(b"\n", b",") + b"]") if whole else []
        if len(found) == whole.count(b"\n"):  # one record a line
            return [kinds.check(record) for record in found], offset + len(whole), None
    except (ValueError, OutboxError):
        pass  # a damaged line: read line by line, to keep the records before it
    records: list[dict[str, Any]] = []
    position = offset
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn: read again when it is whole
        try:
            record = json.loads(line.decode("utf-8"))  # UnicodeDecodeError is a ValueError
        except ValueError:
            return records, position, f"{path} (byte {position}): not a record (damaged)"
        try:
            records.append(kinds.check(record, f"{path} (byte {position})"))
        except OutboxError as exc:
            return records, position, str(exc)
        position += len(line)
    return records, position, None


def final_state(records: list[dict[str, Any]]) -> tuple[str, str | None, int]:
    """How the newest attempt of an outbox ended: (state, reason, attempt). An attempt that
    wrote no final record failed (it was killed, or is still running)."""
    if not records:
        return "failed", "ended without writing any record", 0
    attempt = max(r.get("attempt", 0) for r in records)
    final = next(
        (r for r in reversed(records) if r["kind"] == "final" and r.get("attempt", 0) == attempt),
        None,
    )
    if final is None:
        return "failed", "ended without a final record (killed?)", attempt
    if final.get("status") == "succeeded":
        return "succeeded", None, attempt
    return "failed", str(final.get("reason") or final.get("status")), attempt
