"""The central results store: SQLAlchemy over SQLite (embedded default) or PostgreSQL.

Writes are idempotent: epochs are keyed by (job, attempt, epoch), final results by (job,
attempt), the events log (each record but epochs and telemetry) by the record's uid.
Replaying an outbox, or a requeued job reporting again, never duplicates a row.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable

from records import summaries
from records.batch import ROW_KEY, update_many, upsert, upsert_many, write_attempts
from records.errors import StoreError, StoreMissing
from records.rows import write_records
from records.schema import (
    EPOCH_FIELDS,
    SCHEMA_VERSION,
    STATES,
    JobRow,
    PlannedJob,
    among,
    artifacts,
    attempts,
    events,
    inference,
    jobs,
    metadata,
    outboxes,
    package_lists,
    provenance,
    results,
    schema_version,
    sweeps,
    telemetry,
)
from records.spec import store_from_environment
from records.sqlite_file import DAMAGED, _check_sqlite_file, _sqlite_pragmas, journal_mode_for


def _job_row(row: Any) -> JobRow:
    """A row of the jobs table, as the harness's type says it is (the columns are held to
    ``JobRow`` by ``tests/test_layers.py``)."""
    return cast(JobRow, dict(row._mapping))


def _dicts(result: Any) -> Iterator[dict[str, Any]]:
    """A query's rows as dicts (a row's ``_mapping`` costs ten times as much per row)."""
    names = list(result.keys())
    return (dict(zip(names, row, strict=True)) for row in result)


def default_url(results_dir: str | Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'results.db'}"


def redact(url: str) -> str:
    """A URL fit for messages and logs: no password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable store URL>"


class Store:
    """The results store at ``url``. ``create=False`` (what every read command uses) never
    makes one: a missing SQLite file or an empty database is an error, not a new store.

    A SQLite store runs in WAL mode where its folder's filesystem can hold WAL's shared-memory
    index (a shared ``mmap``), and with the rollback journal where it cannot (Lustre, GPFS,
    FUSE mounts with ``direct_io``): ``journal`` says which; a WAL file on such a filesystem
    is switched back when it is opened."""

    def __init__(self, url: str, timeout: float = 30.0, create: bool = True) -> None:
        self.url = url
        self.create = create
        self.journal: str | None = None  # SQLite files: "wal" or "delete"
        self._held: list[tuple[Any, list]] | None = None  # writes held back (``held``)
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                if Path(path).is_dir():
                    raise StoreError(f"results store {path}: is a folder, not a SQLite file")
                if not create and not Path(path).is_file():
                    raise StoreMissing(f"no results store at {path}")
                if create:
                    try:
                        Path(path).parent.mkdir(parents=True, exist_ok=True)
                    except OSError as exc:
                        raise StoreError(
                            f"results store {path}: cannot make its folder: {exc.strerror}"
                        ) from None
                self.journal = journal_mode_for(str(Path(path).parent.resolve()))
                if Path(path).is_file():
                    _check_sqlite_file(Path(path), create, self.journal)
            kwargs["connect_args"] = {"timeout": timeout}
        else:
            # The password comes from the environment (PGPASSWORD), never from the URL.
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"connect_timeout": int(timeout)}
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except Exception as exc:
            raise StoreError(f"results store {redact(url)}: cannot open: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", functools.partial(_sqlite_pragmas, self.journal))
        self._migrate()

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def describe(self) -> str:
        """Where the store is and how it is written, in a line for ``status``."""
        if not self.is_sqlite:
            return f"store: {redact(self.url)} (jobs on every host write to it directly)"
        if self.journal == "delete":
            how = (
                "rollback journal: this filesystem cannot hold SQLite's WAL; only the harness "
                "writes it, and jobs on other hosts report through their outboxes"
            )
        else:
            how = "WAL; jobs on other hosts report through their outboxes"
        return f"store: {redact(self.url)} ({how})"

    # -- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Create or upgrade the schema once, even when many jobs open the store at once."""
        try:
            with self.engine.begin() as conn:
                if not self.create and not inspect(conn).has_table("schema_version"):
                    raise StoreError(
                        f"results store {redact(self.url)} holds no resnest-bench results "
                        "(no schema_version table)"
                    )
                if self.engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
                # IF NOT EXISTS: jobs starting together may both find a table missing.
                for table in metadata.sorted_tables:
                    conn.execute(CreateTable(table, if_not_exists=True))
                    for index in table.indexes:
                        conn.execute(CreateIndex(index, if_not_exists=True))
                current = conn.execute(select(schema_version.c.version)).scalar()
                if current is not None and current < SCHEMA_VERSION:
                    _add_missing_columns(conn)
                    # The summaries came with version 4; version 6 added the last epoch and
                    # 8 the energy to each accuracy step: an older store's are rebuilt once.
                    if current < 8:
                        summaries.refresh(conn)
                    conn.execute(update(schema_version).values(version=SCHEMA_VERSION))
                if current is None:
                    # SQLite has no advisory lock: two new stores may both get here.
                    upsert(conn, schema_version, {"version": SCHEMA_VERSION}, ("version",))
                elif current > SCHEMA_VERSION:
                    raise StoreError(
                        f"results store {redact(self.url)} has schema version {current}, newer "
                        f"than this resnest-bench ({SCHEMA_VERSION}): upgrade resnest-bench"
                    )
        except SQLAlchemyError as exc:
            raise StoreError(
                f"results store {redact(self.url)}: cannot open: {store_problem(exc)}"
            ) from None

    @contextmanager
    def held(self) -> Iterator[None]:
        """States and attempts written inside the block are written as it ends (unless it
        fails): a poll's, after a collection's workers (PostgreSQL: no deadlock over rows)."""
        self._held = []
        try:
            yield
            held, self._held = self._held, None
            for write, rows in held:
                write(rows)
        finally:
            self._held = None

    @contextmanager
    def begin(self) -> Iterator[Any]:
        with self.engine.begin() as conn:
            yield conn

    # -- sweeps and jobs --------------------------------------------------------------------

    def add_sweep(self, name: str, config: dict[str, Any]) -> None:
        with self.begin() as conn:
            upsert(
                conn,
                sweeps,
                {"name": name, "config": config, "created_at": time.time()},
                ("name",),
                update_columns=("config",),
            )

    def add_jobs(self, sweep: str, rows: Iterable[PlannedJob]) -> list[str]:
        """Insert planned jobs that the store does not hold yet; return their ids."""
        rows = list(rows)
        with self.begin() as conn:
            known = set(conn.execute(select(jobs.c.id).where(jobs.c.sweep == sweep)).scalars())
            new: list[dict[str, Any]] = [
                {**row, "sweep": sweep, "state": "pending", "attempt": 0}
                for row in rows
                if row["id"] not in known
            ]
            if new:
                conn.execute(insert(jobs), new)
        return [row["id"] for row in new]

    def jobs(self, sweep: str | None = None) -> list[JobRow]:
        query = select(jobs)
        if sweep is not None:
            query = query.where(jobs.c.sweep == sweep)
        with self.begin() as conn:
            return [cast(JobRow, row) for row in _dicts(conn.execute(query))]

    def reread(self, rows: list[JobRow]) -> list[JobRow]:
        """``rows`` as the store holds them now, in their order (those gone left out). The
        plan's columns (spec, depends_on: JSON, fixed when the job is planned) are kept as
        given: decoding them again is most of the cost of reading a large sweep twice."""
        columns = [c for c in jobs.c if c.name not in ("spec", "depends_on")]
        fresh: dict[str, dict[str, Any]] = {}
        with self.begin() as conn:
            for where in among(conn, jobs.c.id, [row["id"] for row in rows]):
                query = select(*columns).where(where)
                fresh.update((row["id"], row) for row in _dicts(conn.execute(query)))
        return [cast(JobRow, {**row, **fresh[row["id"]]}) for row in rows if row["id"] in fresh]

    def job(self, job_id: str) -> JobRow | None:
        with self.begin() as conn:
            matches = conn.execute(select(jobs).where(jobs.c.id.startswith(job_id))).all()
        if len(matches) > 1:
            raise StoreError(f"job id {job_id!r} is ambiguous: {len(matches)} jobs start with it")
        return _job_row(matches[0]) if matches else None

    def jobs_by_ids(self, job_ids: list[str]) -> list[JobRow]:
        with self.begin() as conn:
            return [
                _job_row(row)
                for where in among(conn, jobs.c.id, job_ids)
                for row in conn.execute(select(jobs).where(where))
            ]

    def latest_attempts(self, job_ids: list[str]) -> dict[str, int]:
        """The newest attempt each job has reported records for."""
        if not job_ids:
            return {}
        with self.begin() as conn:
            query = select(events.c.job_id, func.max(events.c.attempt)).group_by(events.c.job_id)
            return {
                job_id: attempt
                for where in among(conn, events.c.job_id, job_ids)
                for job_id, attempt in conn.execute(query.where(where))
            }

    def final_accuracies(self, job_ids: list[str]) -> dict[str, float]:
        """Final test accuracy of each job's newest succeeded attempt (jobs without one are
        left out)."""
        if not job_ids:
            return {}
        query = (
            select(results.c.job_id, results.c.final_test_acc)
            .where(results.c.status == "succeeded")
            .order_by(results.c.attempt)
        )
        with self.begin() as conn:
            return {
                job_id: acc
                for where in among(conn, results.c.job_id, job_ids)
                for job_id, acc in conn.execute(query.where(where))
                if acc is not None
            }

    def set_state(self, job_id: str, state: str, **fields: Any) -> None:
        self.set_states([(job_id, state, fields)])

    def set_states(self, changes: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """(job id, state, other fields) for many jobs, in one transaction (the states of a
        10,000-job sweep from one sacct call)."""
        if self._held is not None:
            return self._held.append((self.set_states, list(changes)))
        now = time.time()
        stamps = {"submitted": "submitted_at", "running": "started_at"}
        alike: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # one statement per shape
        for job_id, state, fields in changes:
            if state not in STATES:
                raise ValueError(f"unknown state {state!r}")
            values: dict[str, Any] = {"state": state, **fields}
            if state != "pending":
                values[stamps.get(state, "ended_at")] = now
            alike.setdefault(tuple(values), []).append({ROW_KEY: job_id, **values})
        with self.begin() as conn:
            for rows in alike.values():
                update_many(conn, jobs, "id", rows)

    def sweep_config(self, name: str) -> dict[str, Any] | None:
        with self.begin() as conn:
            return conn.execute(select(sweeps.c.config).where(sweeps.c.name == name)).scalar()

    def sweeps(self) -> list[str]:
        with self.begin() as conn:
            return list(conn.execute(select(sweeps.c.name).order_by(sweeps.c.created_at)).scalars())

    # -- records from jobs ------------------------------------------------------------------

    def write_records(self, records: Iterable[dict[str, Any]]) -> int:
        """Store records as ``records.kinds`` describes them; idempotent. Returns how many."""
        with self.begin() as conn:
            return write_records(conn, records)

    # -- outboxes collected by the harness (``harness.collect``) ---------------------------

    def cursors(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """How far each job's outbox has been read into the store (jobs never read: left
        out)."""
        found: dict[str, dict[str, Any]] = {}
        with self.begin() as conn:
            for where in among(conn, outboxes.c.job_id, job_ids):
                query = select(outboxes).where(where)
                found.update({row["job_id"]: row for row in _dicts(conn.execute(query))})
        return found

    def save_collected(self, records: list[dict[str, Any]], cursors: list[dict[str, Any]]) -> int:
        """The records read from outboxes and how far each was read, in one transaction: a
        collection cut short anywhere stores all of this or none of it."""
        with self.begin() as conn:
            count = write_records(conn, records)
            upsert_many(conn, outboxes, cursors, ("job_id",))
        return count

    def package_lists(self, digests: list[str]) -> dict[str, dict[str, str]]:
        """packages_sha256 -> the package set's name -> version (``records.packages``), for
        those of ``digests`` the store keeps."""
        from records.packages import unpack

        found: dict[str, dict[str, str]] = {}
        with self.begin() as conn:
            for where in among(conn, package_lists.c.sha256, digests):
                query = select(package_lists.c.sha256, package_lists.c.packages).where(where)
                found.update({digest: unpack(text) for digest, text in conn.execute(query)})
        return found

    def attempts_of(self, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The attempts of many jobs, each job's in order (``attempts`` for one)."""
        found: dict[str, list[dict[str, Any]]] = {}
        with self.begin() as conn:
            for where in among(conn, attempts.c.job_id, job_ids):
                query = select(attempts).where(where).order_by(attempts.c.attempt)
                for row in _dicts(conn.execute(query)):
                    found.setdefault(row["job_id"], []).append(row)
        return found

    def provenance_of(self, job_id: str) -> list[dict[str, Any]]:
        """The job's provenance rows (``records.schema.provenance``), oldest attempt first."""
        query = select(provenance).where(provenance.c.job_id == job_id)
        with self.begin() as conn:
            return list(_dicts(conn.execute(query.order_by(provenance.c.attempt))))

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        with self.begin() as conn:
            query = select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.attempt)
            return list(_dicts(conn.execute(query)))

    def record_attempts(self, rows: list[dict[str, Any]]) -> None:
        """What a launcher saw of attempts (job_id, attempt and any other columns); a value
        left out, or None, keeps the one stored."""
        if self._held is not None:
            return self._held.append((self.record_attempts, rows))
        with self.begin() as conn:
            write_attempts(conn, rows)

    def rebuild_summaries(self) -> int:
        """Recompute every job's summary from its epoch rows; returns how many jobs."""
        with self.begin() as conn:
            return summaries.refresh(conn)


def _add_missing_columns(conn: Any) -> None:
    """Upgrade an older store: later versions only add nullable columns."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def store_problem(exc: Exception) -> str:
    """The database's own first line about what went wrong (no SQL, no traceback)."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip()
    line = text_.splitlines()[0] if text_ else type(exc).__name__
    if "file is not a database" in line or "malformed" in line:
        line += DAMAGED
    return line


def url_for_jobs(url: str) -> str:
    """The store's URL as a job's spec carries it: spec files are written to disk, so a URL
    with a password in it is refused (the password belongs in PGPASSWORD)."""
    from sqlalchemy.engine import make_url

    if make_url(url).password:
        raise StoreError(
            f"results store {redact(url)}: the URL carries a password, which would be written "
            "into every job's spec file: give it in PGPASSWORD instead"
        )
    return url


def open_store(url: str | None, results_dir: str | Path, create: bool = True) -> Store:
    return Store(url or store_from_environment() or default_url(results_dir), create=create)


# the tables, for readers that take them from here
__all__ = ["EPOCH_FIELDS", "STATES", "SQLAlchemyError", "Store", "StoreMissing", "artifacts",
           "default_url", "inference", "open_store", "provenance", "redact", "store_problem",
           "telemetry", "upsert", "write_records"]  # fmt: skip
