"""One runner per job folder: an exclusive ``flock`` held for the whole run.

The kernel releases the lock when the holding process ends, however it ends (SIGKILL, a
crash, a lost node's reboot), so a lock is never stale. A second runner of the same job (a
submission repeated while the first one's job still runs, a rerun racing a SLURM requeue)
finds it held and exits at once with ``EXIT_ALREADY_RUNNING``, naming the holder, having
written nothing. Each rank of a DDP job holds its own lock (``lock.rank<N>``), so a second
copy of a whole multi-process job is refused on every rank, not left waiting for peers.

Where the job folder's filesystem refuses ``flock`` (Lustre mounted without ``-o flock``
answers ENOSYS; some NFS set-ups ENOLCK or EOPNOTSUPP), the job says so in one line and holds
a lock file instead: ``lock.held`` (``lock.rank<N>.held``), made with ``O_EXCL`` (atomic on
NFS v3 and later, Lustre and GPFS), naming its host and pid, and touched every
``HEARTBEAT_S`` seconds while the job runs. Another runner finds it and exits as above. A
lock file nobody has touched for ``STALE_S`` seconds belongs to a runner that is gone (a
killed job, a failed node) and is taken over, so a requeued job is never locked out for good.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

# What a filesystem without flock answers.
NO_FLOCK = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)
HEARTBEAT_S = 10.0
STALE_S = 60.0


class AlreadyRunning(Exception):
    """Another process holds this job's folder; the message names its host and pid."""


class FolderError(Exception):
    """The job folder cannot be made or written (a file in its place, no permission)."""


class JobLock:
    def __init__(self, job_dir: str | Path, rank: int = 0) -> None:
        name = "lock" if rank == 0 else f"lock.rank{rank}"
        self.path = Path(job_dir) / name
        self._fd: int | None = None
        self._file_lock: FileLock | None = None
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
            raise AlreadyRunning(_held_by(self.path)) from None
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                raise
            os.close(fd)
            self._file_lock = FileLock(self.path.with_name(self.path.name + ".held"))
            print(
                f"resnest-bench: {self.path.parent}: the filesystem refuses flock "
                f"({errno.errorcode.get(exc.errno, exc.errno)}); holding the job with "
                f"{self._file_lock.path.name} instead (see records/lock.py)",
                file=sys.stderr,
                flush=True,
            )
            self._file_lock.acquire()
            return self
        os.ftruncate(fd, 0)
        os.write(fd, _me())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock. A folder the lock itself made, in which the job then wrote nothing
        (a job refused at its start), is removed: a refused job leaves nothing behind."""
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None
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


class FileLock:
    """The lock of a folder whose filesystem refuses ``flock``: a file made with ``O_EXCL``
    and kept fresh by a heartbeat thread (see the module's note)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not self._take_over_stale():
                    raise AlreadyRunning(_held_by(self.path)) from None
                continue
            try:
                os.write(fd, _me())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return
        raise AlreadyRunning(_held_by(self.path))

    def _take_over_stale(self) -> bool:
        """Move a lock file nobody touched for STALE_S aside; whether it was one. The move
        is a rename, which only one of two runners taking it over at once can make."""
        try:
            if time.time() - self.path.stat().st_mtime < STALE_S:
                return False
            aside = self.path.with_name(
                f"{self.path.name}.stale-{socket.gethostname()}-{os.getpid()}"
            )
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # gone meanwhile: try to make it again
        if time.time() - aside.stat().st_mtime < STALE_S:  # another runner's fresh one: back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.path.unlink(missing_ok=True)

    def fresh(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime < STALE_S
        except OSError:
            return False


def _me() -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()


def _held_by(path: Path) -> str:
    holder = holder_of(path)
    where = f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}" if holder else "unknown"
    return f"already running ({where}): {path.parent}"


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
    if FileLock(path.with_name("lock.held")).fresh():
        return True
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as exc:
        if exc.errno not in NO_FLOCK:
            raise
        return False  # no flock here, and no fresh lock file: nobody holds it
    finally:
        os.close(fd)  # also drops the shared lock if it was taken
    return False
