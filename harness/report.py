"""Status and the GPU comparison table, read from the results store."""

from __future__ import annotations

import statistics
from collections.abc import Collection
from typing import Any

from harness.figures import deployment_figures, figures, interval_names
from harness.headlines import headline_of
from harness.stats import half_width_pct, verdict
from records import queries
from records.schema import NOT_STARTED, STATES, JobRow, State
from records.store import Store


def status_rows(
    store: Store, sweep: str, human: bool = True, rows: list[JobRow] | None = None
) -> tuple[dict[State, int], list[dict[str, Any]], str]:
    """Counts by state, a row per job, and the sweep's ETA line (``harness.progress`` says
    how each figure is made). ``human``: durations as text and epoch as "k/N"; otherwise
    numbers in seconds, for csv and json. ``rows``: the sweep's job rows, where the caller
    has just read them."""
    from harness.progress import duration, job_progress, sweep_eta

    rows = store.jobs(sweep) if rows is None else rows
    counts = {state: 0 for state in STATES}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    progress = job_progress(rows, store)
    table = []
    for row in rows:
        mine = progress[row["id"]]
        started = row["state"] not in NOT_STARTED
        entry = {
            "id": row["id"],
            "stage": row["stage"],
            "model": row["model"],
            "dataset": row["dataset"],
            "gpu_type": row["gpu_type"],
            "seed": row["seed"],
            "state": row["state"],
            "attempt": row["attempt"],
        }
        if human:
            wait = duration(mine["queue_wait_s"])
            entry.update({
                "epoch": f"{mine['epoch']}/{mine['epochs']}" if mine["epochs"] and started
                else "",
                "s/epoch": f"{mine['epoch_s']:.1f}" if mine["epoch_s"] else "",
                "ETA": duration(mine["eta_s"]),
                "queue wait": f"{wait} so far" if wait and mine["queued_now"] else wait,
            })  # fmt: skip
        else:
            entry.update({
                "epoch": mine["epoch"] if started else None, "epochs": mine["epochs"],
                "epoch_s": mine["epoch_s"], "eta_s": mine["eta_s"],
                "queue_wait_s": mine["queue_wait_s"], "still_queued": mine["queued_now"],
            })  # fmt: skip
        entry["reason"] = row["reason"] or ""
        entry["log"] = f"{row['job_dir']}/stderr.log" if row["state"] == "failed" else ""
        table.append(entry)
    return counts, table, sweep_eta(rows, progress)


# The wide table's column for each tidy figure (``harness.figures``), in the tidy order;
# time to a target and the runs that reached it are named per target.
TABLE_COLUMNS = {
    "epoch_time_s": "s/epoch", "images_per_s": "img/s", "speedup": "speedup",
    "scaling_efficiency": "scaling", "final_acc_pct": "final acc %", "best_acc_pct": "best acc %",
    "target_rule": "target rule", "transfer_acc_pct": "transfer acc %", "runs": "runs",
    "cv_pct": "CV", "gpu_util_pct": "GPU util %", "gpu_mem_gb": "GPU mem GB",
    "power_w": "power W", "energy_per_epoch_j": "J/epoch", "energy_per_image_mj": "mJ/img",
    "cpu_util_pct": "CPU util %", "cpu_energy_per_epoch_j": "CPU J/epoch",
    "dram_energy_per_epoch_j": "DRAM J/epoch", "tflops": "TFLOP/s", "mfu_pct": "MFU %",
    "cost_per_run": "$/run", "gpu_mismatch_runs": "gpu mismatch",
    "throttled": "throttled",
    "queue_wait_s": "queue wait s", "hosts": "hosts",
}  # fmt: skip


# Tidy figures that are not columns of their own: the row's label, the CV's flag (a "!" in
# the CV column), the n of "reached k/n", the speedup's p and verdict (the verdict is a
# column of its own after the speedup's interval: "vs ref"), and the outlier hosts (named
# in the hosts column).
NOT_COLUMNS = (
    "row",
    "gpu_type",
    "nodes",
    "model",
    "cv_flag",
    "target_runs",
    "speedup_p",
    "speedup_verdict",
    "outlier_hosts",
)


def comparison(
    store: Store,
    sweep: str,
    reference: str | None = None,
    prices: dict[str, float] | None = None,
    exclude_hosts: Collection[str] = (),
) -> list[dict[str, Any]]:
    """The study's comparison as the terminal shows it: a row per GPU type (with its node
    count where the sweep ran several), a group of columns per model, from the tidy figures
    of ``harness.figures.figures`` (which says how each is made). Formatted here: the CV as
    text with ``!`` above 5%, the runs that reached a target as "2/3", the hosts as "4 ! h3"
    where h3's runs are outliers."""
    wide: dict[str, dict[str, Any]] = {}
    for tidy in figures(store, sweep, reference, prices, True, exclude_hosts):
        row = wide.setdefault(tidy["row"], {"gpu_type": tidy["row"]})
        model = tidy["model"]
        columns = [(name, value) for name, value in tidy.items()
                   if name not in NOT_COLUMNS and not name.endswith(BOUNDS)]  # fmt: skip
        if "scaling_efficiency" in tidy:  # the scaling column after the speedup
            columns.insert(3, columns.pop())
        for name, value in columns:
            row[f"{model} {_column(name)}"] = _cell(name, value, tidy)
            low, high = interval_names(name)
            if low in tidy:  # its interval, as one number, in a column after it
                spread = half_width_pct(value, tidy[low], tidy[high])
                row[f"{model} {_column(name)} {SPREAD}"] = (
                    None if spread is None else f"±{spread:g}%"
                )
            if name == "speedup" and "speedup_verdict" in tidy:  # against the reference's runs
                row[f"{model} {AGAINST}"] = tidy["speedup_verdict"]
    return list(wide.values())


SPREAD = "±"  # the name's end of a figure's interval column in the wide table
AGAINST = "vs ref"  # the speedup's verdict against the reference GPU type's runs
BOUNDS = ("_ci95_low", "_ci95_high")


def without_spreads(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wide table without its interval and verdict columns: the terminal's default
    (``--wide`` keeps them)."""
    wide_only = (" " + SPREAD, " " + AGAINST)
    return [{k: v for k, v in row.items() if not k.endswith(wide_only)} for row in rows]


def _column(name: str) -> str:
    if name.startswith("time_to_trained_"):  # queue wait + time to the target
        return "s queued+to " + name.removeprefix("time_to_trained_").removesuffix("pct_s") + "%"
    if name.startswith("energy_to_"):  # energy_to_93pct_kj: "kJ to 93%"
        return "kJ to " + name.removeprefix("energy_to_").removesuffix("pct_kj") + "%"
    if name.startswith("cost_to_"):  # cost_to_93pct: "$ to 93%"
        return "$ to " + name.removeprefix("cost_to_").removesuffix("pct") + "%"
    if name.startswith("time_to_"):  # time_to_92.5pct_s: "s to 92.5%"
        return "s to " + name.removeprefix("time_to_").removesuffix("pct_s") + "%"
    if name.startswith("reached_"):
        return "reached " + name.removeprefix("reached_").removesuffix("pct") + "%"
    return TABLE_COLUMNS[name]


def _cell(name: str, value: Any, tidy: dict[str, Any]) -> Any:
    if name == "cv_pct":
        return f"{value:.1f}%" + (" !" if tidy["cv_flag"] else "")
    if name.startswith("reached_"):
        return None if value is None else f"{value}/{tidy.get('target_runs') or tidy['runs']}"
    if name in ("gpu_mismatch_runs", "throttled"):
        return value or None
    if name == "hosts" and tidy.get("outlier_hosts"):
        return f"{value} ! {tidy['outlier_hosts']}"
    return value


def prices_of(store: Store, sweep: str) -> dict[str, float]:
    """Price per GPU-hour of each GPU type, from the sweep's cluster.yaml as submitted."""
    return queries.prices(store, sweep)


STUDY_TABLES = (
    ("test accuracy % (final)", "final acc %"),
    ("seconds per epoch", "s/epoch"),
    ("transfer accuracy % (final)", "transfer acc %"),
)


def study_tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The study's layout: a row per network variant, a column per GPU type and the average."""
    models = [model for model, _ in per_model_blocks(rows, keep_empty=True)]
    targets = dict.fromkeys(
        key.split(" s to ", 1)[1]
        for row in rows
        for key in row
        if " s to " in key and not key.endswith(" " + SPREAD)
    )
    tables = []
    per_target = [
        (f"{what} to {t} test accuracy", f"{unit} to {t}")
        for t in targets
        for what, unit in (("seconds", "s"), ("energy (kJ)", "kJ"), ("cost", "$"))
    ]
    for title, column in (*STUDY_TABLES, *per_target):  # fmt: skip
        table = []
        for model in models:
            values = {row["gpu_type"]: row.get(f"{model} {column}") for row in rows}
            present = [v for v in values.values() if v is not None]
            if not present:
                continue
            table.append(
                {
                    "variant": model,
                    **values,
                    "average": round(statistics.mean(present), 3),
                }
            )
        if table:
            tables.append((title, table))
    return tables


def per_model_blocks(
    rows: list[dict[str, Any]], keep_empty: bool = False
) -> list[tuple[str, list[dict[str, Any]]]]:
    """The wide table cut into one narrow table per model, for terminals; columns with no
    value in any row (telemetry a run did not have) are left out unless ``keep_empty``."""
    models: list[str] = []
    for key in rows[0] if rows else []:
        if key != "gpu_type":
            model = key.split(" ", 1)[0]
            if model not in models:
                models.append(model)
    blocks = []
    for model in models:
        block = [
            {
                "gpu_type": row["gpu_type"],
                **{k.split(" ", 1)[1]: v for k, v in row.items() if k.startswith(model + " ")},
            }
            for row in rows
        ]
        if not keep_empty:
            empty = {k for k in block[0] if all(r[k] is None for r in block)}
            block = [{k: v for k, v in r.items() if k not in empty} for r in block]
        blocks.append((model, block))
    return blocks


# The deployment table's column for each tidy figure; every row has them all (an
# unavailable runtime has them empty and says why in its note).
DEPLOY_NAMES = {
    "test_acc_pct": "test acc %", "latency_p50_ms_batch1": "ms/image @1",
    "latency_p99_ms_batch1": "p99 ms @1", "best_images_per_s": "best img/s",
    "best_batch_size": "@batch", "size_mb": "size MB", "agreement_pct": "agreement %",
    "agreement_flag": "flag", "provider": "provider", "threads": "threads",
}  # fmt: skip


def deployment(store: Store, sweep: str) -> list[dict[str, Any]]:
    """The study's deployment comparison as the terminal shows it: a row per network and
    runtime, the figures of ``harness.figures.deployment_figures``; agreement below 99.9% is
    flagged ``!``, an unavailable runtime says why in its note."""
    rows = []
    for tidy in deployment_figures(store, sweep):
        row = {key: tidy[key] for key in ("model", "dataset", "gpu_type", "runtime")}
        row.update({DEPLOY_NAMES[name]: tidy[name] for name in DEPLOY_NAMES})
        row["flag"] = "!" if tidy["agreement_flag"] else ""
        row["note"] = "" if tidy["available"] else f"unavailable: {tidy['reason']}"
        if not tidy["available"]:
            row["flag"] = None
        rows.append(row)
    return rows


def side_by_side(
    rows: list[dict[str, Any]], other: list[dict[str, Any]], name: str, other_name: str,
    runs: dict | None = None, other_runs: dict | None = None, min_change: float = 1.0,
) -> list[dict[str, Any]]:  # fmt: skip
    """Two sweeps' comparison rows joined on the GPU type: a row per GPU type and numeric
    figure measured in both, with both values, ``name`` / ``other_name`` and the change in
    percent from the other sweep to this one. For a figure with per-run values in both
    (``harness.figures.run_values``): the two-sided Mann-Whitney U p-value over those runs and
    a verdict (``harness.stats.verdict``; a change below ``min_change`` percent is ``same``);
    time to a target where a run did not get there is not tested."""
    tested = {
        (label, f"{model} {_column(figure)}"): (
            figure,
            values,
            ((other_runs or {}).get((label, model)) or {}).get(figure),
        )
        for (label, model), figures in (runs or {}).items()
        for figure, values in figures.items()
    }
    theirs = {row["gpu_type"]: row for row in other}
    table = []
    for row in rows:
        match = theirs.get(row["gpu_type"])
        if match is None:
            continue
        for figure, value in row.items():
            then = match.get(figure)
            numbers = all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, then)
            )
            if figure == "gpu_type" or not numbers:
                continue
            ratio = value / then if then else None
            p, said = _tested(tested.get((row["gpu_type"], figure)), min_change)
            table.append({
                "gpu_type": row["gpu_type"], "figure": figure, name: value, other_name: then,
                "ratio": None if ratio is None else round(ratio, 3),
                "change %": None if ratio is None else round(100 * (ratio - 1), 1),
                "p": None if p is None else round(p, 4), "verdict": said,
            })  # fmt: skip
    return table


def tested_columns(runs: dict) -> dict[str, tuple[str, str]]:
    """The figure column of ``side_by_side`` -> (model, tidy figure) for the figures it tests
    (``runs``: ``harness.figures.run_values``)."""
    return {
        f"{model} {_column(figure)}": (model, figure)
        for (_, model), figures in runs.items()
        for figure in figures
    }


def _tested(found: tuple | None, min_change: float) -> tuple[float | None, str | None]:
    """The p-value and verdict of one figure's runs in two sweeps (None, None: not tested)."""
    if found is None:
        return None, None
    figure, mine, theirs = found
    if not mine or not theirs or None in mine or None in theirs:
        return None, None
    return verdict(mine, theirs, headline_of(figure).lower_is_better, min_change)
