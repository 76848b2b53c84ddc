"""The central results store: SQLAlchemy over SQLite (embedded default) or PostgreSQL.

Writes are idempotent: epochs are keyed by (job, attempt, epoch), events by the record's
uid, final results by (job, attempt). Replaying an outbox, or a requeued job reporting
again, never duplicates a row.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Table,
    bindparam,
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
from records.errors import StoreError, StoreMissing
from records.schema import (
    EPOCH_FIELDS,
    SCHEMA_VERSION,
    STATES,
    artifacts,
    epochs,
    events,
    inference,
    jobs,
    metadata,
    provenance,
    results,
    schema_version,
    sweeps,
    telemetry,
)
from records.spec import store_from_environment


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
    makes one: a missing SQLite file or an empty database is an error, not a new store."""

    def __init__(self, url: str, timeout: float = 30.0, create: bool = True) -> None:
        self.url = url
        self.create = create
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                if Path(path).is_dir():
                    raise StoreError(f"results store {path}: is a folder, not a SQLite file")
                if not create and not Path(path).is_file():
                    raise StoreMissing(f"no results store at {path}")
                if Path(path).is_file():
                    _check_sqlite_file(Path(path), create)
                if create:
                    try:
                        Path(path).parent.mkdir(parents=True, exist_ok=True)
                    except OSError as exc:
                        raise StoreError(
                            f"results store {path}: cannot make its folder: {exc.strerror}"
                        ) from None
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
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

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
                    if current < 4:  # the job summaries came with version 4
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

    def add_jobs(self, sweep: str, rows: Iterable[dict[str, Any]]) -> list[str]:
        """Insert planned jobs that the store does not hold yet; return their ids."""
        rows = list(rows)
        with self.begin() as conn:
            known = set(conn.execute(select(jobs.c.id).where(jobs.c.sweep == sweep)).scalars())
            new = [
                {**row, "sweep": sweep, "state": "pending", "attempt": 0}
                for row in rows
                if row["id"] not in known
            ]
            if new:
                conn.execute(insert(jobs), new)
        return [row["id"] for row in new]

    def jobs(self, sweep: str | None = None) -> list[dict[str, Any]]:
        query = select(jobs)
        if sweep is not None:
            query = query.where(jobs.c.sweep == sweep)
        with self.begin() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.begin() as conn:
            matches = conn.execute(select(jobs).where(jobs.c.id.startswith(job_id))).all()
        if len(matches) > 1:
            raise StoreError(f"job id {job_id!r} is ambiguous: {len(matches)} jobs start with it")
        return dict(matches[0]._mapping) if matches else None

    def jobs_by_ids(self, job_ids: list[str]) -> list[dict[str, Any]]:
        with self.begin() as conn:
            query = select(jobs).where(jobs.c.id.in_(job_ids))
            return [dict(row._mapping) for row in conn.execute(query)]

    def latest_attempts(self, job_ids: list[str]) -> dict[str, int]:
        """The newest attempt each job has reported records for."""
        if not job_ids:
            return {}
        with self.begin() as conn:
            query = (
                select(events.c.job_id, func.max(events.c.attempt))
                .where(events.c.job_id.in_(job_ids))
                .group_by(events.c.job_id)
            )
            return {job_id: attempt for job_id, attempt in conn.execute(query)}

    def final_accuracies(self, job_ids: list[str]) -> dict[str, float]:
        """Final test accuracy of each job's newest succeeded attempt (jobs without one are
        left out)."""
        if not job_ids:
            return {}
        with self.begin() as conn:
            query = (
                select(results.c.job_id, results.c.final_test_acc)
                .where(results.c.job_id.in_(job_ids), results.c.status == "succeeded")
                .order_by(results.c.attempt)
            )
            found = {job_id: acc for job_id, acc in conn.execute(query) if acc is not None}
        return found

    def set_state(self, job_id: str, state: str, **fields: Any) -> None:
        self.set_states([(job_id, state, fields)])

    def set_states(self, changes: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """(job id, state, other fields) for many jobs, in one transaction (the states of a
        10,000-job sweep from one sacct call)."""
        now = time.time()
        stamps = {"submitted": "submitted_at", "running": "started_at"}
        alike: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # one statement per shape
        for job_id, state, fields in changes:
            if state not in STATES:
                raise ValueError(f"unknown state {state!r}")
            values: dict[str, Any] = {"state": state, **fields}
            if state != "pending":
                values[stamps.get(state, "ended_at")] = now
            alike.setdefault(tuple(values), []).append({"job": job_id, **values})
        with self.begin() as conn:
            for names, rows in alike.items():
                statement = (
                    update(jobs)
                    .where(jobs.c.id == bindparam("job"))
                    .values({name: bindparam(name) for name in names})
                )
                conn.execute(statement, rows)

    def sweep_config(self, name: str) -> dict[str, Any] | None:
        with self.begin() as conn:
            return conn.execute(select(sweeps.c.config).where(sweeps.c.name == name)).scalar()

    def sweeps(self) -> list[str]:
        with self.begin() as conn:
            return list(conn.execute(select(sweeps.c.name).order_by(sweeps.c.created_at)).scalars())

    # -- records from jobs ------------------------------------------------------------------

    def write_records(self, records: Iterable[dict[str, Any]]) -> int:
        """Store records as ``records.kinds`` describes them; idempotent. Returns how many."""
        count, epochs_of = 0, set()
        with self.begin() as conn:
            for record in records:
                _write_record(conn, record)
                count += 1
                if record["kind"] == "epoch":
                    epochs_of.add(record.get("job_id", ""))
            summaries.refresh(conn, epochs_of)  # in the same transaction as the epochs
        return count

    def rebuild_summaries(self) -> int:
        """Recompute every job's summary from its epoch rows; returns how many jobs."""
        with self.begin() as conn:
            return summaries.refresh(conn)


_ONE_PER_ATTEMPT = {"final": results, "provenance": provenance}


def _write_record(conn: Any, record: dict[str, Any]) -> None:
    kind, job_id, attempt = record["kind"], record.get("job_id", ""), record.get("attempt", 0)
    if kind == "epoch":
        row = {"job_id": job_id, "attempt": attempt, "epoch": record["epoch"]}
        extra = ("images", "steps", "world_size", "warmup", "telemetry_source", "energy_method")
        row.update({k: record.get(k) for k in (*EPOCH_FIELDS, *extra)})
        upsert(conn, epochs, row, ("job_id", "attempt", "epoch"))
    elif kind == "artifact":
        row = {k: record.get(k) for k in ("path", "bytes", "sha256")}
        row["kind"] = record.get("artifact")
        upsert(conn, artifacts, {"job_id": job_id, **row}, ("job_id", "path"))
    elif kind == "inference":
        row = {
            "job_id": job_id,
            "attempt": attempt,
            "runtime": record["runtime"],
            "batch_size": record["batch_size"],
            "measurement": {k: v for k, v in record.items() if k not in ("uid", "kind")},
        }
        upsert(conn, inference, row, ("job_id", "attempt", "runtime", "batch_size"))
    elif kind == "telemetry":
        for sample in record.get("samples", []):
            row = {
                "job_id": job_id,
                "attempt": attempt,
                "time": sample["time"],
                "gpu_index": sample.get("gpu_index", -1),
                "sample": sample,
            }
            upsert(conn, telemetry, row, ("job_id", "attempt", "time", "gpu_index"))
    elif kind == "start":
        spec = record.get("spec") or {}
        if spec.get("stage") in ("export", "infer") and spec.get("model"):
            # A sweep that deploys only the winner plans these jobs before it is known; the
            # job names the network it exported (or runs) when it starts.
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.model != spec["model"])
                .values(model=spec["model"])
            )
    elif kind in _ONE_PER_ATTEMPT:
        table = _ONE_PER_ATTEMPT[kind]
        row = {"job_id": job_id, "attempt": attempt}
        row.update({c.name: record.get(c.name) for c in table.columns if c.name not in row})
        upsert(conn, table, row, ("job_id", "attempt"))
    uid = record.get("uid")
    if uid:
        upsert(
            conn,
            events,
            {
                "uid": uid,
                "job_id": job_id,
                "attempt": attempt,
                "kind": kind,
                "time": record.get("time"),
                "record": record,
            },
            ("uid",),
            update_columns=(),
        )


def _add_missing_columns(conn: Any) -> None:
    """Upgrade an older store: later versions only add nullable columns."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def upsert(
    conn: Any,
    table: Table,
    row: dict[str, Any],
    keys: tuple[str, ...],
    update_columns: tuple[str, ...] | None = None,
) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(table).values(**row)
    columns = [c for c in row if c not in keys] if update_columns is None else update_columns
    if columns:
        statement = statement.on_conflict_do_update(
            index_elements=list(keys), set_={c: statement.excluded[c] for c in columns}
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    conn.execute(statement)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


DAMAGED = (
    " (the file is damaged: restore it, or move it away and rebuild it with "
    "`resnest-bench ingest RESULTS_DIR -c CLUSTER_YAML`)"
)


def _check_sqlite_file(path: Path, create: bool) -> None:
    """Look into an existing SQLite file, reading only, before SQLAlchemy opens it (which
    would switch it to WAL mode): a damaged file, or another program's database, is refused
    without a byte of it changed."""
    import sqlite3

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


def store_problem(exc: SQLAlchemyError) -> str:
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


__all__ = [
    "STATES", "SQLAlchemyError", "Store", "StoreMissing", "default_url", "open_store", "redact",
    "store_problem",
]  # fmt: skip
