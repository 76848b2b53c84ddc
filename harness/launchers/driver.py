"""The Driver: how the local and Ray launchers run a sweep from the submitting process.

Both hand their jobs to one ``Driver``, which starts each job once its parents have
succeeded, marks it not run when one of them did not, retries what the backend says to
retry, and keeps the progress bar. A backend (``Backend``) says how one job runs there.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter

from harness.launchers.base import Row, judge_exit, not_run, progress_bar
from records.schema import ENDED_BADLY
from records.spec import EXIT_ALREADY_RUNNING, EXIT_OK
from records.store import Store


class Backend(ABC):
    """How the Driver runs one job: start it, and hear when jobs end. A backend that can
    follow a job another runner holds (exit ``EXIT_ALREADY_RUNNING``) to its end sets
    ``follows`` and implements ``following`` and ``follow``; the Driver marks such a job not
    run where the backend cannot."""

    follows = False

    @abstractmethod
    def room(self) -> bool:
        """Whether another job may start now."""

    @abstractmethod
    def start(self, job: Row) -> None:
        """Start the job (its attempt set); record it as running with its launcher id."""

    @abstractmethod
    def ended(self) -> list[tuple[Row, int, str]]:
        """Jobs that ended since the last call: (job, exit code, last line on stderr); may
        wait a little for one."""

    @abstractmethod
    def retry(self, job: Row, code: int) -> bool:
        """Whether a job that ended with ``code`` runs again, as its next attempt."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every job still running (the user pressed Ctrl-C)."""

    def following(self, job: Row) -> None:
        """Record that the job is followed (and who runs it)."""
        raise NotImplementedError

    def follow(self, job: Row) -> tuple[str, str | None] | None:
        """The job's end, (state, reason), once its runner has let go; None until then."""
        raise NotImplementedError


class Driver:
    """Runs store rows in dependency order through a backend, to the end of every one.

    One failed job never stops the others; the jobs after it are marked as not run. A job
    whose process ended with ``EXIT_ALREADY_RUNNING`` is followed to its end where the
    backend can follow (``Backend.follows``), and marked not run where it cannot.
    """

    POLL_S = 0.2

    def __init__(
        self,
        store: Store,
        jobs: list[Row],
        backend: Backend,
        progress: bool = True,
    ) -> None:
        self.store = store
        self.backend = backend
        self.follows = backend.follows
        self.waiting = {job["id"]: job for job in jobs}
        self.running: dict[str, Row] = {}
        self.followed: dict[str, Row] = {}
        self.final: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.outside: dict[str, str | None] = {}  # jobs outside this run: they stay put
        self.bar = progress_bar(len(jobs), progress)

    def run(self) -> dict[str, str]:
        """Drive every job to its end; return id -> final state."""
        try:
            while self.waiting or self.running or self.followed:
                self._check_followed()
                self._start_ready()
                for job, code, last in self.backend.ended():
                    self._judge(job, code, last)
                if not self.running and (self.waiting or self.followed):
                    time.sleep(self.POLL_S)  # waiting on jobs outside this run
        except KeyboardInterrupt:
            self.backend.stop()
            for job_id in [*self.running, *self.waiting, *self.followed]:
                self.store.set_state(job_id, "cancelled", reason="interrupted by the user")
            raise
        finally:
            self.bar.close()
        return self.final

    def state_of(self, job_id: str) -> str | None:
        if job_id in self.final:
            return self.final[job_id]
        if job_id in self.waiting or job_id in self.running or job_id in self.followed:
            return "pending"
        if job_id not in self.outside:
            row = self.store.job(job_id)
            self.outside[job_id] = row["state"] if row else None
        return self.outside[job_id]

    def finish(self, job_id: str, state: str, reason: str | None = None, record: bool = True):
        if record:
            self.store.set_state(job_id, state, reason=reason)
        self.final[job_id] = state
        self.counts[state] += 1
        self.bar.update(1)
        self.bar.set_postfix(running=len(self.running), **self.counts)

    def _start_ready(self) -> None:
        for job_id, job in list(self.waiting.items()):
            parents = job["depends_on"] or []
            states = [self.state_of(parent) for parent in parents]
            blocked = [p for p, s in zip(parents, states, strict=True) if s in ENDED_BADLY]
            if blocked:
                del self.waiting[job_id]
                self.finish(job_id, "cancelled", not_run(blocked[0], self.state_of(blocked[0])))
            elif all(s == "succeeded" for s in states) and self.backend.room():
                del self.waiting[job_id]
                self.running[job_id] = job
                self.backend.start(job)

    def _judge(self, job: Row, code: int, last: str) -> None:
        job_id = job["id"]
        del self.running[job_id]
        stored = self.store.job(job_id)
        if stored is not None and stored["state"] == "cancelled":
            self.finish(job_id, "cancelled", record=False)  # by `cancel`: keep its reason
        elif code == EXIT_ALREADY_RUNNING and self.follows:
            self.backend.following(job)
            self.followed[job_id] = job
        elif code not in (EXIT_OK, EXIT_ALREADY_RUNNING) and self.backend.retry(job, code):
            job["attempt"] += 1
            self.running[job_id] = job
            self.backend.start(job)
        else:
            self.finish(job_id, *judge_exit(code, last))

    def _check_followed(self) -> None:
        for job_id, job in list(self.followed.items()):
            ended = self.backend.follow(job)
            if ended is not None:
                del self.followed[job_id]
                self.finish(job_id, *ended)
