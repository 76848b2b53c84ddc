"""A sweep's results as pandas DataFrames, for analysis in a notebook or a script.

Each function takes a store (a URL such as ``sqlite:///results/results.db``, or an open
``Store``) and a sweep name, and returns a tidy frame: one row per observation, numeric
columns as numbers, units in the column names (``_s``, ``_j``, ``_w``, ``_pct``, ``_bytes``,
``_ms``). The frames are read with ``pandas.read_sql_query`` on the store's engine; pandas is
imported here only, so the command line does not pay for it at start-up.

    from harness import results
    epochs = results.epochs("sqlite:///results/resnest-study/results.db", "resnest-study")
    steady = epochs[~epochs.warmup]
    steady.groupby(["model", "gpu_type"]).epoch_time_s.median().unstack()
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from records.schema import epochs as epochs_table
from records.schema import inference, jobs, results
from records.schema import telemetry as telemetry_table
from records.store import Store

JOB_COLUMNS = ("model", "dataset", "gpu_type", "stage", "gpus", "seed", "repeat")
# Store column -> the frame's name, with its unit.
UNITS = {
    "epoch_time": "epoch_time_s", "data_time": "data_time_s", "compute_time": "compute_time_s",
    "eval_time": "eval_time_s", "gpu_util_mean": "gpu_util_mean_pct",
    "gpu_util_max": "gpu_util_max_pct", "cpu_util_mean": "cpu_util_mean_pct",
    "energy_per_image_j": "energy_per_image_j", "train_time": "train_time_s",
    "time_to_target": "time_to_target_s", "gpu_util": "gpu_util_pct", "mem_util": "mem_util_pct",
    "cpu_util": "cpu_util_pct", "power_w": "power_w", "time": "time_s",
}  # fmt: skip


def _store(store: str | Store) -> Store:
    return store if isinstance(store, Store) else Store(store)


def _read(store: str | Store, query: Any) -> Any:
    import pandas as pd

    with _store(store).engine.connect() as conn:
        return pd.read_sql_query(query, conn)


def _job_columns(table: Any) -> list[Any]:
    return [table.c.job_id, table.c.attempt, *(jobs.c[name] for name in JOB_COLUMNS)]


def epochs(store: str | Store, sweep: str) -> Any:
    """A row per epoch of every training and transfer attempt, with the job's axes."""
    query = (
        select(*_job_columns(epochs_table), *(c for c in epochs_table.c
                                             if c.name not in ("job_id", "attempt")))
        .join(jobs, jobs.c.id == epochs_table.c.job_id)
        .where(jobs.c.sweep == sweep)
        .order_by(epochs_table.c.job_id, epochs_table.c.attempt, epochs_table.c.epoch)
    )  # fmt: skip
    frame = _read(store, query).rename(columns=UNITS)
    frame["warmup"] = frame["warmup"].fillna(False).astype(bool)
    return frame


def runs(store: str | Store, sweep: str) -> Any:
    """A row per finished training or transfer attempt: accuracy, training time, time to
    the job's target."""
    query = (
        select(*_job_columns(results), *(c for c in results.c
                                        if c.name not in ("job_id", "attempt")))
        .join(jobs, jobs.c.id == results.c.job_id)
        .where(jobs.c.sweep == sweep)
        .order_by(results.c.job_id, results.c.attempt)
    )  # fmt: skip
    return _read(store, query).rename(columns=UNITS)


def _expanded(frame: Any, column: str) -> Any:
    """``frame`` with the JSON objects of ``column`` as columns of their own."""
    import json

    import pandas as pd

    values = [json.loads(v) if isinstance(v, str) else (v or {}) for v in frame.pop(column)]
    return pd.concat([frame, pd.json_normalize(values)], axis=1).rename(columns=UNITS)


def telemetry(store: str | Store, sweep: str) -> Any:
    """A row per telemetry sample (per GPU of a job, about one a second), its readings as
    columns; ``time_s`` is Unix time."""
    query = (
        select(*_job_columns(telemetry_table), telemetry_table.c.gpu_index,
               telemetry_table.c.time, telemetry_table.c.sample)
        .join(jobs, jobs.c.id == telemetry_table.c.job_id)
        .where(jobs.c.sweep == sweep)
        .order_by(telemetry_table.c.time)
    )  # fmt: skip
    return _expanded(_read(store, query), "sample")


def deployments(store: str | Store, sweep: str) -> Any:
    """A row per runtime and batch size of every inference attempt (an unavailable runtime:
    one row, ``available`` False, with its ``reason``)."""
    query = (
        select(*_job_columns(inference), inference.c.runtime, inference.c.batch_size,
               inference.c.measurement)
        .join(jobs, jobs.c.id == inference.c.job_id)
        .where(jobs.c.sweep == sweep)
        .order_by(inference.c.job_id, inference.c.attempt, inference.c.runtime,
                  inference.c.batch_size)
    )  # fmt: skip
    frame = _expanded(_read(store, query), "measurement")
    return frame.loc[:, ~frame.columns.duplicated()]


def comparison(store: str | Store, sweep: str, reference: str | None = None) -> Any:
    """The figures of ``resnest-bench table``, as ``table --format csv|json|parquet`` writes
    them: a row per GPU type (``nodes``; ``row`` is the table's row label) and model, every
    figure a number with its unit in its name, ``cv_flag`` the CV's flag
    (``harness.figures.figures`` says how each is made)."""
    from harness.figures import figures
    from harness.report import prices_of

    opened = _store(store)
    return frame(figures(opened, sweep, reference, prices_of(opened, sweep)))


def deployment_comparison(store: str | Store, sweep: str) -> Any:
    """The figures of ``resnest-bench table --deploy`` as its machine formats write them: a
    row per network, GPU type and runtime (``harness.figures.deployment_figures``)."""
    from harness.figures import deployment_figures

    return frame(deployment_figures(_store(store), sweep))


TEXT = {
    "row",
    "gpu_type",
    "model",
    "dataset",
    "runtime",
    "target_rule",
    "provider",
    "reason",
    "speedup_verdict",
    "verdict",
}


def frame(rows: list[dict[str, Any]]) -> Any:
    """Tidy rows as a DataFrame: a figure no row measured is still a float column (of NaN),
    not one of Python objects."""
    import pandas as pd

    from harness.render import columns_of

    data = pd.DataFrame(rows, columns=columns_of(rows))
    for name in data.columns:
        if name not in TEXT and data[name].isna().all():
            data[name] = data[name].astype("float64")
    return data
