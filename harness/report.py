"""Status and the GPU comparison table, read from the results store."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from records import queries
from records.queries import TELEMETRY
from records.schema import STATES
from records.spec import RUNTIMES
from records.store import Store


def status_rows(store: Store, sweep: str) -> tuple[dict[str, int], list[dict[str, Any]]]:
    rows = store.jobs(sweep)
    counts = {state: 0 for state in STATES}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    table = [
        {
            "id": row["id"],
            "stage": row["stage"],
            "model": row["model"],
            "dataset": row["dataset"],
            "gpu_type": row["gpu_type"],
            "seed": row["seed"],
            "state": row["state"],
            "attempt": row["attempt"],
            "reason": row["reason"] or "",
            "log": f"{row['job_dir']}/stderr.log" if row["state"] == "failed" else "",
        }
        for row in rows
    ]
    return counts, table


def _cv(values: list[float]) -> float:
    if len(values) < 2 or statistics.mean(values) == 0:
        return 0.0
    return statistics.pstdev(values) / statistics.mean(values)


def comparison(
    store: Store,
    sweep: str,
    reference: str | None = None,
    prices: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Rows per GPU type, a group of columns per model: the study's comparison.

    Epoch time, images/s and the telemetry columns are medians over the epochs after the
    warm-up one, then medians over repeats and seeds; CV is across repeats (across epochs
    when there is one run). ``prices`` (GPU type -> price per GPU-hour) adds the cost of a
    run: its training time x its GPUs x the price. A run whose GPU was not the GPU type asked
    for is counted in ``gpu mismatch``.

    Time to each target accuracy (the sweep's ``target_accuracy``, else the targets the runs
    were given): a run's training time up to the end of its first epoch at or above the
    target. The figure is the headline of the runs (``headline``: MLPerf's rule from five
    runs on, the median below), with how many reached it and the rule used.
    """
    targets = targets_of(store, sweep)
    groups, shapes = _groups(store, sweep, targets)
    labels = sorted(shapes, key=lambda label: shapes[label])
    models = sorted({model for _, model in groups})
    if reference in {gpu for gpu, _ in shapes.values()}:  # a GPU type: its fewest nodes
        reference = next(label for label in labels if shapes[label][0] == reference)
    reference = reference or (labels[0] if labels else None)
    several = len({nodes for _, nodes in shapes.values()}) > 1
    rows = []
    for label in labels:
        row: dict[str, Any] = {"gpu_type": label}
        for model in models:
            g = groups.get((label, model), {})
            ref_time = _median(groups.get((reference, model), {}).get("epoch_time", []))
            price = (prices or {}).get(shapes[label][0])
            columns = _columns(g, ref_time, price, targets)
            if several:
                columns.insert(3, ("scaling", _scaling(groups, shapes, label, model)))
            row.update({f"{model} {name}": value for name, value in columns})
        rows.append(row)
    return rows


def _scaling(groups: dict, shapes: dict[str, tuple[str, int]], label: str, model: str):
    """Scaling efficiency on N nodes: images/s on N nodes over N/M times images/s on M, the
    fewest nodes the sweep ran this GPU type and model on (M = 1: over N times one node)."""
    gpu, nodes = shapes[label]
    measured = sorted(
        (shape[1], _median(groups[(name, model)]["images_per_sec"]))
        for name, shape in shapes.items()
        if shape[0] == gpu and groups.get((name, model), {}).get("images_per_sec")
    )
    ips = _median(groups.get((label, model), {}).get("images_per_sec", []))
    if not measured or ips is None or not measured[0][1]:
        return None
    base_nodes, base_ips = measured[0]
    return round(ips / (nodes / base_nodes * base_ips), 3)


def targets_of(store: Store, sweep: str) -> list[float]:
    """The target accuracies the table reports time to: the sweep's ``target_accuracy``, else
    those its runs were given (``--target-accuracy``)."""
    configured = ((store.sweep_config(sweep) or {}).get("sweep") or {}).get("target_accuracy")
    if configured is not None:
        return list(configured) if isinstance(configured, list) else [configured]
    given = {r.target_accuracy for r in queries.final_results(store, sweep).values()}
    return sorted(t for t in given if t is not None)


def times_to(job_epochs: list[Any], targets: list[float]) -> dict[float, float | None]:
    """Training time until the end of the first epoch at or above each target; None where
    the run never got there."""
    reached: dict[float, float | None] = dict.fromkeys(targets)
    elapsed = 0.0
    for r in job_epochs:
        elapsed += r.epoch_time or 0.0
        for target in targets:
            if reached[target] is None and r.test_acc is not None and r.test_acc >= target:
                reached[target] = elapsed
    return reached


def headline(values: list[float | None]) -> tuple[float | None, str]:
    """The headline figure of several runs' times, and the rule that made it. From five runs
    on, MLPerf's: drop the fastest and the slowest, the mean of the rest; a run that never
    got there counts as the slowest, and a second one leaves no figure. Below five, the median
    of those that got there."""
    n = len(values)
    if n >= 5:
        ordered = sorted(values, key=lambda v: (v is None, v))[1:-1]
        if any(v is None for v in ordered):
            return None, f"MLPerf (mean of {n - 2} of {n})"
        return round(statistics.fmean(ordered), 4), f"MLPerf (mean of {n - 2} of {n})"
    return _median([v for v in values if v is not None]), "median"


def _target_label(target: float) -> str:
    return f"{round(100 * target, 2):g}%"


def _groups(store: Store, sweep: str, targets: list[float] | None = None):
    """(row label, model) -> lists of per-run figures: each training run's median over its
    timed epochs, its final result; each transfer run's final accuracy. Also row label ->
    (GPU type, nodes): the label is the GPU type, with the node count where the sweep ran
    several (``v100 (2 nodes)``)."""
    job_rows = queries.sweep_jobs(store, sweep)
    mismatched = queries.mismatched_jobs(store, sweep)
    final = queries.final_results(store, sweep)
    per_node = ((store.sweep_config(sweep) or {}).get("sweep") or {}).get("gpus_per_job") or 1
    nodes_of = {job_id: max(1, (job.gpus or 1) // per_node) for job_id, job in job_rows.items()}
    several = len({nodes_of[i] for i, job in job_rows.items()
                   if job.stage in ("train", "transfer")}) > 1  # fmt: skip
    shapes: dict[str, tuple[str, int]] = {}

    def label(job_id: str) -> str:
        job, nodes = job_rows[job_id], nodes_of[job_id]
        text = f"{job.gpu_type} ({nodes} node{'s' if nodes > 1 else ''})"
        text = text if several else job.gpu_type
        shapes[text] = (job.gpu_type, nodes)
        return text

    groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for job_id, job_epochs in queries.train_epochs(store, sweep).items():
        job = job_rows[job_id]
        timed = [r for r in job_epochs if not r.warmup] or job_epochs
        g = groups[(label(job_id), job.model)]
        g["gpus"].append(job.gpus or 1)
        times = [r.epoch_time for r in timed]
        g["epoch_time"].append(statistics.median(times))
        for target, seconds in times_to(job_epochs, targets or []).items():
            g[f"to {target}"].append(seconds)
        g["epoch_times"].extend(times)
        g["images_per_sec"].append(statistics.median([r.images_per_sec for r in timed]))
        for name in TELEMETRY:
            values = [getattr(r, name) for r in timed if getattr(r, name) is not None]
            if values:
                g[name].append(statistics.median(values))
        if job_id in mismatched:
            g["mismatch"].append(job_id)
        if job_id in final:
            result = final[job_id]
            g["train_time"].append(result.train_time)
            g["final_acc"].append(result.final_test_acc)
            g["best_acc"].append(result.best_test_acc)
    for job_id, result in final.items():
        job = job_rows[job_id]
        if job.stage == "transfer":
            groups[(label(job_id), job.model)]["transfer_acc"].append(result.final_test_acc)
    return groups, shapes


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _rounded(value: float | None, digits: int, factor: float = 1.0) -> float | None:
    return None if value is None else round(value * factor, digits)


def _columns(
    g: dict[str, list], ref_time: float | None, price: float | None, targets: list[float] = ()
):
    """The columns of one model on one GPU type, from its group of runs."""
    epoch_time = _median(g.get("epoch_time", []))
    runs = len(g.get("epoch_time", []))
    cv = _cv(g.get("epoch_time", [])) if runs > 1 else _cv(g.get("epoch_times", []))
    train_times = [t for t in g.get("train_time", []) if t is not None]
    cost = None
    if price is not None and train_times:
        cost = round(statistics.median(train_times) / 3600 * g.get("gpus", [1])[0] * price, 4)
    med = {name: _median(g.get(name, [])) for name in (*TELEMETRY, "images_per_sec")}
    return [
        ("s/epoch", epoch_time),
        ("img/s", med["images_per_sec"]),
        ("speedup", round(ref_time / epoch_time, 2) if epoch_time and ref_time else None),
        ("final acc %", _pct(_median(g.get("final_acc", [])))),
        ("best acc %", _pct(_median(g.get("best_acc", [])))),
        *_target_columns(g, targets),
        ("transfer acc %", _pct(_median(g.get("transfer_acc", [])))),
        ("runs", runs),
        ("CV", f"{100 * cv:.1f}%" + (" !" if cv > 0.05 else "")),
        ("GPU util %", _rounded(med["gpu_util_mean"], 1)),
        ("GPU mem GB", _rounded(med["gpu_mem_peak_bytes"], 3, 1e-9)),
        ("power W", _rounded(med["power_mean_w"], 1)),
        ("J/epoch", _rounded(med["energy_j"], 1)),
        ("mJ/img", _rounded(med["energy_per_image_j"], 3, 1e3)),
        ("CPU util %", _rounded(med["cpu_util_mean"], 1)),
        ("$/run", cost),
        ("gpu mismatch", len(g.get("mismatch", [])) or None),
    ]


def _target_columns(g: dict[str, list], targets: list[float]) -> list[tuple[str, Any]]:
    """Per target: the headline time to it and how many runs reached it ("2/3"; "0/3" says
    plainly that none did); then the rule behind the headlines (every target has the same
    runs)."""
    columns: list[tuple[str, Any]] = []
    rule = None
    for target in targets:
        times = g.get(f"to {target}", [])
        figure, rule = headline(times)
        reached = f"{sum(t is not None for t in times)}/{len(times)}" if times else None
        label = _target_label(target)
        columns += [(f"s to {label}", figure), (f"reached {label}", reached)]
    if targets:
        columns.append(("target rule", rule if g.get(f"to {targets[0]}") else None))
    return columns


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
        key.split(" s to ", 1)[1] for row in rows for key in row if " s to " in key
    )
    tables = []
    for title, column in (*STUDY_TABLES, *((f"seconds to {t} test accuracy", f"s to {t}")
                                            for t in targets)):  # fmt: skip
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


AGREEMENT_FLAG = 0.999  # top-1 agreement with PyTorch eager below this is flagged
# Every row of the deployment table has these columns: an unavailable runtime has them empty
# and says why in its note.
DEPLOY_COLUMNS = ("test acc %", "ms/image @1", "p99 ms @1", "best img/s", "@batch", "size MB",
                  "agreement %", "flag", "provider", "threads", "note")  # fmt: skip


def _scaled(value: Any, factor: float, digits: int) -> float | None:
    return None if value is None else round(float(value) * factor, digits)


def deployment(store: Store, sweep: str) -> list[dict[str, Any]]:
    """The study's deployment comparison: a row per network and runtime, from the inference
    jobs. Time per image at batch 1 is the median latency; throughput is the best over the
    batch sizes measured; size is the runtime's artifact on disk. Top-1 agreement with
    PyTorch eager over the whole test set is flagged (!) below 99.9%."""
    by_runtime = queries.inference_measurements(store, sweep)
    order = {name: i for i, name in enumerate(RUNTIMES)}
    rows = []
    for (model, dataset, gpu, runtime), items in sorted(
        by_runtime.items(), key=lambda kv: (*kv[0][:3], order.get(kv[0][3], 99))
    ):
        row: dict[str, Any] = {"model": model, "dataset": dataset, "gpu_type": gpu,
                               "runtime": runtime, **dict.fromkeys(DEPLOY_COLUMNS)}  # fmt: skip
        rows.append(row)
        timed = [m for m in items if m.get("available", True)]
        if not timed:
            row["note"] = "unavailable: " + str(items[0].get("reason") or "no reason given")
            continue
        first = timed[0]
        one = next((m for m in timed if m.get("batch_size") == 1), None)
        rated = [m for m in timed if m.get("images_per_sec") is not None]
        best = max(rated, key=lambda m: m["images_per_sec"]) if rated else None
        agreement = first.get("top1_agreement_with_eager")
        row.update(
            {
                "test acc %": _scaled(first.get("test_accuracy"), 100, 2),
                "ms/image @1": _scaled(one and one.get("latency_p50_ms"), 1, 3),
                "p99 ms @1": _scaled(one and one.get("latency_p99_ms"), 1, 3),
                "best img/s": _scaled(best and best["images_per_sec"], 1, 1),
                "@batch": best and best.get("batch_size"),
                "size MB": _scaled(first.get("bytes"), 1e-6, 3),
                "agreement %": _scaled(agreement, 100, 2),
                "flag": "!" if agreement is not None and agreement < AGREEMENT_FLAG else "",
                "provider": first.get("provider"),
                "threads": first.get("threads"),
                "note": "",
            }
        )
    return rows


def side_by_side(
    rows: list[dict[str, Any]], other: list[dict[str, Any]], name: str, other_name: str
) -> list[dict[str, Any]]:
    """Two sweeps' comparison rows joined on the GPU type: a row per GPU type and numeric
    figure measured in both, with both values, ``name`` / ``other_name`` and the change in
    percent from the other sweep to this one."""
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
            table.append({
                "gpu_type": row["gpu_type"], "figure": figure, name: value, other_name: then,
                "ratio": None if ratio is None else round(ratio, 3),
                "change %": None if ratio is None else round(100 * (ratio - 1), 1),
            })  # fmt: skip
    return table
