"""One runner per job folder: an exclusive ``flock`` held for the whole run.

The kernel releases the lock when the holding process ends, however it ends (SIGKILL, a
crash, a lost node's reboot), so a lock is never stale. A second runner of the same job (a
submission repeated while the first one's job still runs, a rerun racing a SLURM requeue)
finds it held and exits at once with ``EXIT_ALREADY_RUNNING``, naming the holder, having
written nothing. Each rank of a DDP job holds its own lock (``lock.rank<N>``), so a second
copy of a whole multi-process job is refused on every rank, not left waiting for peers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any


class AlreadyRunning(Exception):
    """Another process holds this job's folder; the message names its host and pid."""


class FolderError(Exception):
    """The job folder cannot be made or written (a file in its place, no permission)."""


class JobLock:
    def __init__(self, job_dir: str | Path, rank: int = 0) -> None:
        name = "lock" if rank == 0 else f"lock.rank{rank}"
        self.path = Path(job_dir) / name
        self._fd: int | None = None
        self._made_folder = False

    def acquire(self) -> JobLock:
        self._made_folder = not self.path.parent.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FolderError(
                f"{self.path.parent}: cannot be the job's folder: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = holder_of(self.path)
            where = (
                f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}" if holder else "unknown"
            )
            raise AlreadyRunning(f"already running ({where}): {self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock. A folder the lock itself made, in which the job then wrote nothing
        (a job refused at its start), is removed: a refused job leaves nothing behind."""
        if self._fd is None:
            return
        folder = self.path.parent
        if self._made_folder and {p.name for p in folder.iterdir()} <= {self.path.name}:
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def take(job_dir: str | Path, rank: int = 0) -> tuple[JobLock | None, int]:
    """The job folder's lock, held; or None and the exit code, having said in one line why
    the job cannot run here (another runner holds it, or the folder cannot be made)."""
    from records.spec import EXIT_ALREADY_RUNNING, EXIT_OK, EXIT_USER_ERROR

    try:
        return JobLock(job_dir, rank).acquire(), EXIT_OK
    except AlreadyRunning as exc:
        print(f"resnest-bench: {exc}", file=sys.stderr)
        return None, EXIT_ALREADY_RUNNING
    except FolderError as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return None, EXIT_USER_ERROR


def holder_of(path: str | Path) -> dict[str, Any]:
    """Host and pid written by the lock's holder ({} if none can be read)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_held(job_dir: str | Path) -> bool:
    """Whether a runner holds the job folder now (probed without taking it for long)."""
    path = Path(job_dir) / "lock"
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock if it was taken
    return False
