"""A SQLite store's file: which journal its folder's filesystem can hold, switching a WAL
file to the rollback journal where WAL cannot work, and looking into a file before SQLAlchemy
opens it."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

from records.errors import StoreError
from records.schema import metadata


def _sqlite_pragmas(journal: str | None, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    # A page cache of up to 64 MiB (the default is 2 MiB): a collection of a whole sweep's
    # outboxes writes tens of thousands of rows into several indexes in one transaction,
    # which spills a small cache to the file (0.4 s of a 10,000-job status's 3 s).
    cursor.execute("PRAGMA cache_size=-65536")
    if journal is not None:  # None: a folder this process cannot probe; as the file says
        cursor.execute(f"PRAGMA journal_mode={journal.upper()}")
    # NORMAL is durable in WAL mode; the rollback journal needs FULL to survive a power loss.
    cursor.execute(f"PRAGMA synchronous={'NORMAL' if journal == 'wal' else 'FULL'}")
    cursor.close()


@functools.cache
def journal_mode_for(folder: str) -> str | None:
    """``wal`` where SQLite's WAL works in ``folder``, ``delete`` (the rollback journal)
    where it does not, None where the folder cannot be probed (not writable here).

    WAL keeps its index in a ``-shm`` file mapped shared into every process; Lustre, GPFS
    and FUSE mounts with ``direct_io`` refuse such a map (ENODEV), and SQLite then fails
    every read with "disk I/O error". A small database of this process's own tells, once per
    folder and process."""
    probe = Path(folder) / f".wal-probe-{socket.gethostname()}-{os.getpid()}.db"
    try:
        with contextlib.closing(sqlite3.connect(probe, timeout=5)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE probe (x INTEGER)")
            conn.execute("INSERT INTO probe VALUES (1)")
            conn.commit()
            works = conn.execute("SELECT x FROM probe").fetchall() == [(1,)]
    except sqlite3.OperationalError as exc:
        if "unable to open" in str(exc) or not Path(folder).is_dir():
            return None
        works = False
    except sqlite3.Error:
        works = False
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(f"{probe}{suffix}")
    return "wal" if works else "delete"


def _leave_wal(path: Path) -> None:
    """Switch a store written in WAL mode to the rollback journal, on a filesystem where WAL
    cannot be read: an exclusive connection keeps WAL's index in its own memory, so it can
    open the file and change its mode (checkpointing whatever the WAL file holds)."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=DELETE")
    with contextlib.suppress(OSError):
        os.unlink(f"{path}-shm")


def _in_wal_mode(path: Path) -> bool:
    """Whether a SQLite file's header says WAL (bytes 18 and 19 are 2)."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


DAMAGED = (
    " (the file is damaged: restore it, or move it away and rebuild it with "
    "`resnest-bench ingest RESULTS_DIR -c CLUSTER_YAML`)"
)


def _check_sqlite_file(path: Path, create: bool, journal: str | None = None) -> None:
    """Look into an existing SQLite file, reading only, before SQLAlchemy opens it (which
    would switch it to WAL mode): a damaged file, or another program's database, is refused
    without a byte of it changed. A file in WAL mode in a folder where WAL cannot work is
    first switched to the rollback journal."""
    if journal == "delete" and _in_wal_mode(path):
        try:
            _leave_wal(path)
        except sqlite3.Error as exc:
            raise StoreError(f"results store {path}: cannot open: {exc}{DAMAGED}") from None
    # A plain connection that only reads: read-only mode cannot open a WAL database whose
    # shared-memory file is not there yet, as when many jobs open a new store at once.
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {name for (name,) in found}
    except sqlite3.Error as exc:
        raise StoreError(f"results store {path}: cannot open: {exc}{DAMAGED}") from None
    # Some of our tables and not yet the others: another job is creating the store now.
    if tables and not tables & set(metadata.tables):
        raise StoreError(
            f"results store {path} holds no resnest-bench results (it has tables "
            f"{', '.join(sorted(tables)[:5])}): name another file"
        )
    if not tables and not create:
        raise StoreError(f"results store {path} holds no resnest-bench results (empty database)")
