"""The results store's schema: one table per kind of result, keyed so that a replayed
record updates its row instead of adding one (see ``records.store``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, Literal, TypedDict, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    any_,
    bindparam,
    func,
    select,
)

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pydantic's dependency
    from typing_extensions import NotRequired

SCHEMA_VERSION = 9
# A job's states: planned (pending); kept back by the harness until the cluster has room for
# it under the site's limits (waiting); handed to the cluster (submitted: in its queue);
# running; and the three ends.
State = Literal["pending", "waiting", "submitted", "running", "succeeded", "failed", "cancelled"]
STATES: tuple[State, ...] = get_args(State)
ENDED = ("succeeded", "failed", "cancelled")
UNFINISHED = ("pending", "waiting", "submitted", "running")
IN_FLIGHT = ("submitted", "running")  # held by a cluster's queue
NOT_STARTED = ("pending", "waiting", "submitted")  # no attempt of it has begun to run
HELD_BACK = ("pending", "waiting")  # not (yet) handed to a cluster
ENDED_BADLY = ("failed", "cancelled")  # the ends after which the jobs that depend on it do not run

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, primary_key=True))
sweeps = Table(
    "sweeps",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("config", JSON),
    Column("created_at", Float),
)
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("sweep", String(200), index=True),
    Column("stage", String(20)),
    Column("model", String(100)),
    Column("dataset", String(50)),
    Column("gpu_type", String(50)),
    Column("gpus", Integer),
    Column("seed", Integer),
    Column("repeat", Integer),
    Column("spec", JSON),
    Column("depends_on", JSON),
    Column("state", String(20), index=True),
    Column("attempt", Integer, default=0),
    Column("reason", Text),
    Column("launcher_job_id", String(100)),
    Column("job_dir", Text),
    Column("submitted_at", Float),
    Column("started_at", Float),
    Column("ended_at", Float),
)


class PlannedJob(TypedDict):
    """What the plan gives a job's row (``Store.add_jobs``); the store adds the rest."""

    id: str
    stage: str
    model: str
    dataset: str
    gpu_type: str
    gpus: int
    seed: int
    repeat: int
    spec: dict[str, Any]
    depends_on: list[str] | None
    job_dir: str  # always planned: the folder the job writes its outbox in


class JobRow(PlannedJob):
    """A row of ``jobs`` as the store gives it (``Store.jobs``): what the harness passes
    between its commands, its launchers and the store (``tests/test_layers.py`` holds its
    required keys to the table's columns). Two keys are the harness's own, never stored: a
    retry's ``exclude`` and a feeder's ``spec_text``."""

    sweep: str
    state: State
    attempt: int
    reason: str | None
    launcher_job_id: str | None
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    exclude: NotRequired[str]  # a retry after a host failure: hosts it must not land on
    spec_text: NotRequired[str]  # a job in a feeder's feed: its spec file's text


EPOCH_FIELDS = (
    "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time", "data_time",
    "compute_time", "eval_time", "images_per_sec", "peak_mem_bytes",
    # telemetry (version 2): all the job's GPUs together; the CPU ones without NVML
    "gpu_util_mean", "gpu_util_max", "gpu_mem_peak_bytes", "power_mean_w", "energy_j",
    "energy_per_image_j", "cpu_util_mean", "rss_peak_bytes",
    # version 8: achieved TFLOP/s (images/s x 3 x the forward FLOPs per image), and the share
    # of the telemetry samples in which a GPU was throttled (the most of the job's GPUs)
    "tflops", "throttled_pct",
    # version 9: the CPU packages' and DRAM's energy (J) from RAPL, each host's once
    "cpu_energy_j", "dram_energy_j",
)  # fmt: skip
epochs = Table(
    "epochs",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("epoch", Integer, primary_key=True),
    *(Column(name, Float) for name in EPOCH_FIELDS),
    Column("images", Integer),
    Column("steps", Integer),
    Column("world_size", Integer),
    Column("warmup", Boolean),
    Column("telemetry_source", String(20)),  # nvml | cpu | off
    Column("energy_method", String(40)),  # counter | power_integral | none
    Column("recorded_at", Float),  # version 5: when the job wrote it (status's s/epoch, ETA)
    Column("throttle_reasons", String(200)),  # version 8: "power_cap 40%, sw_thermal 5%"
    Column("xids", String(400)),  # version 9: the GPUs' XID errors, "79 (GPU 0), 48 (GPU 1)"
)
# Telemetry columns of the epoch rows, read with the timing ones.
TELEMETRY = ("gpu_util_mean", "gpu_mem_peak_bytes", "power_mean_w", "energy_j",
             "energy_per_image_j", "cpu_util_mean", "cpu_energy_j", "dram_energy_j")  # fmt: skip
# Version 4: a row per job summing up its epochs (``records.summaries``), kept by the store.
summaries = Table(
    "summaries",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("epochs", Integer),
    Column("timed_epochs", Integer),
    Column("epoch_time", Float),  # median over the timed epochs
    Column("epoch_time_cv", Float),  # across the timed epochs
    Column("images_per_sec", Float),
    *(Column(name, Float) for name in TELEMETRY),
    # (elapsed s, test accuracy) at each new best accuracy, as packed float64 pairs: a table
    # over 10,000 jobs reads them in microseconds where JSON took seconds
    Column("accuracy_steps", LargeBinary),
    # version 6: what status shows of an ended job (its progress read from one row, not from
    # every epoch row: 2.5 million of them in a finished 10,000-job sweep of 250 epochs)
    Column("last_epoch", Integer),  # the newest epoch number
    Column("last_epoch_s", Float),  # its s/epoch (``records.summaries.summarise``)
    # version 8: the energy (J) spent by the end of each accuracy step, packed float64 (NaN
    # where an epoch up to it measured none): the energy to any target
    Column("energy_steps", LargeBinary),
    Column("throttled_pct", Float),  # the mean over the timed epochs of their throttled_pct
)
results = Table(
    "results",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("status", String(20)),
    Column("reason", Text),
    Column("best_test_acc", Float),
    Column("final_test_acc", Float),
    Column("train_time", Float),
    Column("time_to_target", Float),
    Column("target_accuracy", Float),
    Column("params_sha256", String(64)),
)
events = Table(
    "events",
    metadata,
    Column("uid", String(32), primary_key=True),
    Column("job_id", String(32), index=True),
    Column("attempt", Integer),
    Column("kind", String(20)),
    Column("time", Float),
    Column("record", JSON),
)
telemetry = Table(
    "telemetry",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("time", Float, primary_key=True),
    Column("gpu_index", Integer, primary_key=True),
    Column("sample", JSON),
)
artifacts = Table(
    "artifacts",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("path", Text, primary_key=True),
    Column("kind", String(50)),
    Column("bytes", Integer),
    Column("sha256", String(64)),
)
inference = Table(
    "inference",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("runtime", String(50), primary_key=True),
    Column("batch_size", Integer, primary_key=True),
    Column("measurement", JSON),
)
provenance = Table(
    "provenance",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("host", String(200)),
    Column("gpu_name", String(200)),
    Column("gpu_uuid", String(100)),
    Column("driver", String(50)),
    Column("cuda", String(50)),
    Column("torch", String(50)),
    Column("code_version", String(100)),
    # version 2
    Column("cudnn", String(50)),
    Column("gpu_memory_total", Float),
    Column("telemetry", Text),  # nvml, or why GPU telemetry was unavailable
    Column("gpu_type", String(50)),
    Column("expected_gpu", String(100)),
    Column("gpu_mismatch", Boolean),
    # version 3
    Column("python", Text),  # the interpreter that ran the job
    Column("environment", JSON),  # the GPU type's setup, python and variables as the job saw them
    Column("code_commit", String(60)),  # git commit of the code (+dirty), where a checkout
    Column("packages_sha256", String(64)),  # of the installed name==version list
    # version 8: the network's forward FLOPs per image at the job's input size, and the math
    # its GPU did them in (fp32, tf32, bf16: ``jobs.flops``), for achieved TFLOP/s and MFU
    Column("forward_flops", BigInteger),
    Column("math_mode", String(8)),
    # version 8: the hardware's settings (NVML, rank 0's first GPU) and the host's CPU
    Column("power_limit_w", Float),  # enforced
    Column("default_power_limit_w", Float),
    Column("ecc", Boolean),
    Column("mig", Boolean),
    Column("persistence", Boolean),
    Column("pcie_gen", Integer),
    Column("pcie_gen_max", Integer),
    Column("pcie_width", Integer),
    Column("pcie_width_max", Integer),
    Column("nccl", String(20)),
    Column("cpu_model", String(200)),
    Column("cpu_cores", Integer),
    # version 9: how the epochs measure the CPU's energy ("rapl: package-0, package-0/dram"),
    # or why they do not ("none: RAPL unreadable (permission denied: ...)")
    Column("cpu_energy", String(300)),
)
# Version 7: each environment's installed packages whole (``records.packages``), once per
# packages_sha256 of the provenance.
package_lists = Table(
    "package_lists",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("packages", Text),
)
# Version 5: how far the harness has read each job's outbox (``harness.collect``): the byte
# offset after the last whole line stored, and the file's size and mtime when it was read.
outboxes = Table(
    "outboxes",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("offset", BigInteger),
    Column("size", BigInteger),  # -1: no outbox was there
    Column("mtime_ns", BigInteger),
    Column("checked_at", Float),
)
# Version 5: each attempt of a job as its launcher saw it: where and when it ran, how it ended,
# and whether its failure belonged to its host (which a retry then excludes).
attempts = Table(
    "attempts",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("launcher_job_id", String(100)),
    Column("hosts", Text),  # comma-separated
    Column("submitted_at", Float),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("state", String(20)),
    Column("reason", Text),
    Column("host_failure", Boolean),
)


def among(conn: Any, column: Column, values: Iterable[Any], chunk: int = 10_000) -> list[Any]:
    """``column IN values`` as the conditions to run one query per (each a part of the
    values), the values sent as one parameter: on PostgreSQL ``= ANY`` of an array (10,000
    ids in an IN list cost psycopg a third of a second to convert), on SQLite ``IN`` the
    elements of a JSON array, ``chunk`` values each (an IN list of 10,000 bound values costs
    SQLAlchemy a tenth of a second to compile)."""
    values = list(dict.fromkeys(values))
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return [column == any_(bindparam(None, values, type_=ARRAY(column.type)))]
    parts = [values[i : i + chunk] for i in range(0, len(values), chunk)] or [[]]
    return [column.in_(select(_elements(json.dumps(part)).c.value)) for part in parts]


def _elements(array: str) -> Any:
    """SQLite's ``json_each``: a table of the elements of a JSON array (column ``value``)."""
    return func.json_each(bindparam(None, array, type_=Text)).table_valued("value")
