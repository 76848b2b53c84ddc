"""Upserts in as few statements as their shapes allow, each handed to the driver's
executemany: how the store writes many rows at once (``records.rows`` for records,
``records.summaries`` for summaries, the store for cursors and attempts). Every write is an
upsert on the row's key, so a row written again is stored once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from sqlalchemy import Column, MetaData, Table, bindparam, func, select, update

from records.schema import attempts


class Batch:
    """Upserts gathered by table and shape, each group then sent as one executemany (the
    records of 10,000 outboxes are tens of thousands of rows: one statement each costs
    seconds). Of rows with one key and shape, the one that would win one by one is sent: the
    last where a row updates (its ``fill_only`` columns as the first gave them), the first
    where it does nothing on conflict. Rows of one key in different shapes (an attempt's
    columns left out where None) go in separate statements, in the order the shapes came."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        # shape -> (table, the columns a conflict sets, key -> row)
        self.groups: dict[tuple, tuple[Table, tuple[str, ...], dict[tuple, dict[str, Any]]]] = {}

    def add(
        self,
        table: Table,
        row: dict[str, Any],
        keys: tuple[str, ...],
        update_columns: tuple[str, ...] | None = None,
        fill_only: tuple[str, ...] = (),
    ) -> None:
        """``update_columns``: those a conflict sets (None: all but the keys; (): none);
        of them, those in ``fill_only`` only where nothing is stored yet."""
        shape = (table.name, tuple(row), keys, update_columns, fill_only)
        group = self.groups.get(shape)
        if group is None:  # a new shape: the columns it sets, worked out once
            if update_columns is None:
                update_columns = tuple(c for c in row if c not in keys)
            group = self.groups[shape] = (table, update_columns, {})
        _, columns, rows = group
        key = tuple([row[k] for k in keys])
        if key in rows and not columns:  # nothing set on conflict: the first one stays
            return
        if key in rows and fill_only:  # those only filled keep the first value given
            row = {**row, **{c: rows[key][c] for c in fill_only if rows[key].get(c) is not None}}
        rows[key] = row  # one row per key in a statement: the one that wins

    def attempt(self, row: dict[str, Any], fill_only: tuple[str, ...] = ()) -> None:
        """An attempt's row, or the columns given set (None: keep what is stored)."""
        values = {k: v for k, v in row.items() if v is not None}
        self.add(attempts, values, ("job_id", "attempt"), fill_only=fill_only)

    def flush(self) -> None:
        for (_, names, keys, _, fill_only), (table, columns, rows) in self.groups.items():
            upsert = _Upsert(self.conn, table, keys, columns, fill_only)
            if not columns:  # rows that any writer may hold (a package list), in key order:
                rows = dict(sorted(rows.items()))  # writers side by side wait, not deadlock
            _executemany(self.conn, table, upsert, names, rows.values())
        self.groups.clear()


class _Upsert:
    """The upsert of a group of rows: an INSERT of the given columns whose conflict on
    ``keys`` sets ``columns`` from the row that conflicted (those in ``fill_only`` only
    where nothing is stored), or does nothing (no ``columns``)."""

    def __init__(
        self,
        conn: Any,
        table: Table,
        keys: tuple[str, ...],
        columns: tuple[str, ...],
        fill_only: tuple[str, ...],
    ) -> None:
        self.conn, self.table, self.keys, self.columns = conn, table, keys, columns
        self.fill_only = fill_only

    def statement(self, names: tuple[str, ...] = (), source: Any = None) -> Any:
        """The INSERT of bound values, or (``source``: a SELECT of ``names``) from it."""
        statement = _dialect_insert(self.conn)(self.table)
        if source is not None:
            statement = statement.from_select(list(names), source)
        if not self.columns:
            return statement.on_conflict_do_nothing(index_elements=list(self.keys))
        table = self.table
        changes = {
            c: func.coalesce(table.c[c], statement.excluded[c])
            if c in self.fill_only
            else statement.excluded[c]
            for c in self.columns
        }
        return statement.on_conflict_do_update(index_elements=list(self.keys), set_=changes)


# Rows from which an upsert on PostgreSQL goes by COPY (fewer go as an executemany).
COPY_FROM = 1000


def _executemany(
    conn: Any, table: Table, upsert: _Upsert, names: tuple[str, ...], rows: Iterable[dict]
) -> None:
    """``conn.execute(upsert.statement(), rows)``. On PostgreSQL, ``COPY_FROM`` rows or more
    are copied into a temporary table and upserted from it in one statement (``_copy``).
    On SQLite, a row's plain columns that are None are left out of its INSERT rather than
    bound (they are NULL all the same, and a conflict sets each column from ``excluded``,
    NULL for those left out): Python's sqlite3 binds a None through its adapter lookup, at
    three times the cost of a float, and an epoch row is mostly None where there is no GPU
    (30,000 epoch rows: 0.22 s against 0.05 s)."""
    if conn.dialect.name != "sqlite":
        rows = list(rows)
        if _copies(conn, rows):
            _copy(conn, upsert, names, rows)
        else:
            _driver_executemany(conn, upsert.statement(), names, rows)
        return
    dialect = conn.dialect
    optional = [n for n in names if _null_alike(table.c[n], dialect)]
    shapes: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:
        shapes.setdefault(tuple([n for n in optional if row[n] is None]), []).append(row)
    for absent, part in shapes.items():
        present = tuple(n for n in names if n not in absent) if absent else names
        _driver_executemany(conn, upsert.statement(), present, part)


def _copies(conn: Any, rows: list[dict]) -> bool:
    """Whether the rows go by COPY: ``COPY_FROM`` or more, on PostgreSQL through psycopg."""
    dialect = conn.dialect
    return len(rows) >= COPY_FROM and (dialect.name, dialect.driver) == ("postgresql", "psycopg")


def _copy(conn: Any, upsert: _Upsert, names: tuple[str, ...], rows: list[dict]) -> None:
    """PostgreSQL: the rows COPYed into a temporary table of their columns, then upserted from
    it by one INSERT ... SELECT with the upsert's ON CONFLICT. psycopg's pipelined
    executemany costs about 35 us a row (the 50,000 records of 10,000 outboxes: 3.9 s of a
    9 s status); COPY a few."""
    with _scratch(conn, upsert.table, names, names, rows) as scratch:
        conn.execute(upsert.statement(names, select(*scratch.c)))


@contextmanager
def _scratch(
    conn: Any, table: Table, names: tuple[str, ...], keys: Sequence[str], rows: list[dict]
) -> Iterator[Table]:
    """A temporary table of ``table``'s columns ``names``, filled by COPY with the values of
    ``rows`` under ``keys`` (in the order of ``names``); dropped after."""
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    scratch = Table(f"copy_{table.name}", MetaData(), *(Column(n, table.c[n].type) for n in names))
    columns = ", ".join(quote(n) for n in names)
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {quote(scratch.name)} AS SELECT {columns} "
        f"FROM {quote(table.name)} WITH NO DATA"
    )
    values = _bound(dialect, [table.c[n].type for n in names], keys, rows)
    copying = f"COPY {quote(scratch.name)} ({columns}) FROM STDIN"
    cursor = conn.connection.driver_connection.cursor()  # the same connection and transaction
    with cursor, cursor.copy(copying) as copy:
        for row in values:
            copy.write_row(row)
    yield scratch
    conn.exec_driver_sql(f"DROP TABLE {quote(scratch.name)}")


def _null_alike(column: Any, dialect: Any) -> bool:
    """Whether the column, left out of an INSERT, holds what a bound None would: no default,
    and a None its type sends as NULL (a JSON column sends the text 'null')."""
    if column.primary_key or column.default is not None or column.server_default is not None:
        return False
    convert = column.type.dialect_impl(dialect).bind_processor(dialect)
    return convert is None or convert(None) is None


# The key of each row given to ``update_many``.
ROW_KEY = "row_key"


def update_many(conn: Any, table: Table, key: str, rows: list[dict[str, Any]]) -> None:
    """UPDATE ``table`` SET each row's other values WHERE ``key`` is its ``ROW_KEY``, for rows
    of one shape: by way of ``_driver_executemany`` (the states of a 10,000-job sweep cost a
    third of a second through SQLAlchemy's own), or on PostgreSQL, ``COPY_FROM`` rows or more,
    by COPY into a temporary table and one UPDATE ... FROM it."""
    if not rows:
        return
    names = tuple(n for n in rows[0] if n != ROW_KEY)
    if _copies(conn, rows):  # (of a key given twice, the last: as one UPDATE after another)
        rows = list({row[ROW_KEY]: row for row in rows}.values())
        with _scratch(conn, table, (key, *names), (ROW_KEY, *names), rows) as scratch:
            changes = {n: scratch.c[n] for n in names}
            conn.execute(update(table).where(table.c[key] == scratch.c[key]).values(changes))
        return
    bound: dict[str, Any] = {n: bindparam(n) for n in names}
    statement = update(table).where(table.c[key] == bindparam(ROW_KEY)).values(bound)
    _driver_executemany(conn, statement, (ROW_KEY, *names), rows)


def _driver_executemany(
    conn: Any, statement: Any, names: tuple[str, ...], rows: list[dict[str, Any]]
) -> None:
    """``conn.execute(statement, rows)``, compiled once and handed to the driver's
    executemany with each value converted by its type's own bind processor (what SQLAlchemy
    does per row, at about 20 us a row: 50,000 records of a collection cost a second there)."""
    dialect = conn.dialect
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    binds = compiled.positiontup if dialect.positional else list(compiled.binds)
    if sorted(binds) != sorted(names):  # binds of another kind (a column default's value,
        conn.execute(statement, rows)  # a literal in the update): SQLAlchemy's to fill
        return
    order = binds if dialect.positional else list(names)
    params: list[Any] = _bound(dialect, [compiled.binds[n].type for n in order], order, rows)
    if not params:
        return
    if not dialect.positional:
        params = [dict(zip(order, row, strict=True)) for row in params]
    conn.exec_driver_sql(compiled.string, params)


def _bound(dialect: Any, types: list[Any], order: Any, rows: list[dict[str, Any]]) -> list:
    """The rows' values as tuples in ``order``, each converted by its type's bind processor
    (only the columns whose type converts, JSON and on SQLite Boolean, per row)."""
    convert = [
        (i, f)
        for i, t in enumerate(types)
        if (f := t.dialect_impl(dialect).bind_processor(dialect))
    ]
    values = itemgetter(*order) if len(order) > 1 else lambda row: (row[order[0]],)
    params: list[Any] = [values(row) for row in rows]
    if convert:
        for number, row in enumerate(params):
            row = list(row)
            for i, f in convert:
                row[i] = f(row[i])
            params[number] = tuple(row)
    return params


def upsert_many(
    conn: Any, table: Table, rows: Iterable[dict[str, Any]], keys: tuple[str, ...]
) -> None:
    """``upsert`` of many rows, in as few statements as their shapes allow."""
    batch = Batch(conn)
    for row in rows:
        batch.add(table, row, keys)
    batch.flush()


def write_attempts(conn: Any, rows: Iterable[dict[str, Any]]) -> None:
    """Attempts' rows (job_id, attempt and any other columns; None keeps what is stored)."""
    batch = Batch(conn)
    for row in rows:
        batch.attempt(row)
    batch.flush()


def upsert(
    conn: Any,
    table: Table,
    row: dict[str, Any],
    keys: tuple[str, ...],
    update_columns: tuple[str, ...] | None = None,
) -> None:
    statement = _dialect_insert(conn)(table).values(**row)
    columns = [c for c in row if c not in keys] if update_columns is None else update_columns
    if columns:
        statement = statement.on_conflict_do_update(
            index_elements=list(keys), set_={c: statement.excluded[c] for c in columns}
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    conn.execute(statement)


def _dialect_insert(conn: Any) -> Any:
    """The INSERT of the connection's dialect (both have ON CONFLICT)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert
