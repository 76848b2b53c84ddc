"""How each record kind (``records.kinds``) becomes rows of the store's tables, inside a
transaction of the caller's: the store's ``write_records``, the collector's ``save_collected``.
Every write is an upsert on the row's key, so a record replayed is stored once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update

from records import summaries
from records.batch import Batch
from records.schema import (
    EPOCH_FIELDS,
    artifacts,
    epochs,
    events,
    inference,
    jobs,
    package_lists,
    provenance,
    results,
    telemetry,
)


def write_records(conn: Any, records: Iterable[dict[str, Any]]) -> int:
    """``Store.write_records`` inside a transaction of the caller's (the collector writes an
    outbox's records and how far it has read it in one)."""
    count, epochs_of = 0, set()
    batch = Batch(conn)
    for record in records:
        _write_record(conn, record, batch)
        count += 1
        if record["kind"] == "epoch":
            epochs_of.add(record.get("job_id", ""))
    batch.flush()
    summaries.refresh(conn, epochs_of)  # in the same transaction as the epochs
    return count


_ONE_PER_ATTEMPT = {"final": results, "provenance": provenance}
# Records whose rows hold all of them, keyed by what they measure (an epoch's figures, a
# telemetry sample): the events log leaves them out (a copy of each would double what a
# collection writes, and a replay is already stored once by those keys).
_MEASUREMENTS = ("epoch", "telemetry")


def _write_record(conn: Any, record: dict[str, Any], batch: Batch) -> None:
    """One record's rows: into ``batch`` those written by key; the job's model at once."""
    kind, job_id, attempt = record["kind"], record.get("job_id", ""), record.get("attempt", 0)
    if kind == "epoch":
        row = {"job_id": job_id, "attempt": attempt, "epoch": record["epoch"]}
        extra = ("images", "steps", "world_size", "warmup", "telemetry_source", "energy_method",
                 "throttle_reasons", "xids")  # fmt: skip
        row.update({k: record.get(k) for k in (*EPOCH_FIELDS, *extra)})
        row["recorded_at"] = record.get("time")
        batch.add(epochs, row, ("job_id", "attempt", "epoch"))
    elif kind == "artifact":
        row = {k: record.get(k) for k in ("path", "bytes", "sha256")}
        row["kind"] = record.get("artifact")
        batch.add(artifacts, {"job_id": job_id, **row}, ("job_id", "path"))
    elif kind == "inference":
        row = {
            "job_id": job_id,
            "attempt": attempt,
            "runtime": record["runtime"],
            "batch_size": record["batch_size"],
            "measurement": {k: v for k, v in record.items() if k not in ("uid", "kind")},
        }
        batch.add(inference, row, ("job_id", "attempt", "runtime", "batch_size"))
    elif kind == "telemetry":
        for sample in record.get("samples", []):
            row = {
                "job_id": job_id,
                "attempt": attempt,
                "time": sample["time"],
                "gpu_index": sample.get("gpu_index", -1),
                "sample": sample,
            }
            batch.add(telemetry, row, ("job_id", "attempt", "time", "gpu_index"))
    elif kind == "start":
        # Where the attempt ran, and when it began if its launcher has not said (sacct's
        # Start, the allocation's, comes before the job's first record and wins).
        hosts = record.get("hosts")
        spec = record.get("spec") or {}
        batch.attempt({"job_id": job_id, "attempt": attempt, "started_at": record.get("time"),
                        "submitted_at": spec.get("submitted_at"),
                        "hosts": ",".join(hosts) if hosts else None},
                 fill_only=("started_at", "submitted_at"))  # fmt: skip
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
        batch.add(table, row, ("job_id", "attempt"))
        if kind == "provenance" and record.get("packages") and record.get("packages_sha256"):
            listed = {"sha256": record["packages_sha256"], "packages": record["packages"]}
            batch.add(package_lists, listed, ("sha256",), update_columns=())
            record = {k: v for k, v in record.items() if k != "packages"}  # kept once, above
    uid = record.get("uid")
    if uid and kind not in _MEASUREMENTS:
        batch.add(
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
