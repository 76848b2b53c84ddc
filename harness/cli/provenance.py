"""``resnest-bench provenance JOB_A JOB_B``: what differs between two attempts' provenance
(``records.schema.provenance``), the package sets compared name by name."""

from __future__ import annotations

import argparse
from typing import Any

from harness.cli.commands import open_store_of
from records.errors import UserError

# Columns that say which attempt a row is, or are shown through another (the package set's
# digest: by the packages that differ)
NOT_COMPARED = ("job_id", "attempt", "packages_sha256")


def cmd_provenance(args: argparse.Namespace) -> int:
    _, store = open_store_of(args)
    first, second = (_attempt(store, name) for name in (args.first, args.second))
    lines = differences(store, first, second)
    print(f"{_label(first)} -> {_label(second)}:")
    print("\n".join(f"  {line}" for line in lines) if lines else "  no difference")
    return 0


def differences(store: Any, first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """A line per provenance field whose values differ, then per package whose version does
    (``records.packages.changes``)."""
    from records import packages

    out = [
        f"{name}: {_shown(first[name])} -> {_shown(second[name])}"
        for name in first
        if name not in NOT_COMPARED and first[name] != second[name]
    ]
    digests = (first["packages_sha256"], second["packages_sha256"])
    if digests[0] != digests[1]:
        lists = store.package_lists([d for d in digests if d])
        if not all(d in lists for d in digests):
            out.append("packages: the sets differ (a list was not kept)")
        else:
            old, new = (lists[d] for d in digests)
            out.extend(f"package {change}" for change in packages.changes(old, new))
    return out


def _attempt(store: Any, name: str) -> dict[str, Any]:
    """The provenance row of JOB (its newest attempt with one) or JOB:ATTEMPT."""
    from records.store import StoreError, redact

    job_id, _, attempt = name.partition(":")
    if attempt and not attempt.isdigit():
        raise UserError(f"{name}: the attempt after ':' must be a number")
    try:
        job = store.job(job_id)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if job is None:
        raise UserError(f"no job {job_id!r} in the store {redact(store.url)}")
    rows = store.provenance_of(job["id"])
    if attempt:
        rows = [row for row in rows if row["attempt"] == int(attempt)]
    if not rows:
        which = f"attempt {attempt}" if attempt else "any attempt"
        raise UserError(f"job {job['id']}: no provenance recorded for {which}")
    return rows[-1]


def _label(row: dict[str, Any]) -> str:
    return f"{row['job_id']}:{row['attempt']}"


def _shown(value: Any) -> str:
    return "(none)" if value in (None, "") else str(value)
