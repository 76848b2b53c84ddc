"""Status and the GPU comparison table, read from the results store."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from harness.store import STATES, Store, epochs, jobs, provenance, results

# Telemetry columns of the epoch rows, read with the timing ones (see comparison).
TELEMETRY = ("gpu_util_mean", "gpu_mem_peak_bytes", "power_mean_w", "energy_j",
             "energy_per_image_j", "cpu_util_mean")  # fmt: skip


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
    """
    with store.begin() as conn:
        job_rows = {
            r.id: r
            for r in conn.execute(
                select(
                    jobs.c.id, jobs.c.stage, jobs.c.model, jobs.c.gpu_type, jobs.c.attempt,
                    jobs.c.gpus,
                ).where(jobs.c.sweep == sweep)
            )
        }  # fmt: skip
        mismatched = {
            r.job_id
            for r in conn.execute(
                select(provenance.c.job_id)
                .join(jobs, jobs.c.id == provenance.c.job_id)
                .where(jobs.c.sweep == sweep, provenance.c.gpu_mismatch.is_(True))
            )
        }
        # Plain tuples in attempt order: the table reads every epoch row, so it avoids
        # per-row objects and sorting in Python.
        epoch_rows = conn.execute(
            select(
                epochs.c.job_id,
                epochs.c.epoch,
                epochs.c.epoch_time,
                epochs.c.images_per_sec,
                epochs.c.warmup,
                *(epochs.c[name] for name in TELEMETRY),
            )
            .join(jobs, jobs.c.id == epochs.c.job_id)
            .where(jobs.c.sweep == sweep, jobs.c.stage == "train")
            .order_by(epochs.c.attempt)
        )
        # Per job: its epochs, the newest attempt's row winning for each epoch number.
        per_job: dict[str, dict[int, tuple]] = defaultdict(dict)
        for row in epoch_rows:
            per_job[row[0]][row[1]] = row
        result_rows = conn.execute(
            select(results)
            .join(jobs, jobs.c.id == results.c.job_id)
            .where(jobs.c.sweep == sweep, results.c.status == "succeeded")
        ).all()

    final = {}
    for row in sorted(result_rows, key=lambda r: r.attempt):
        final[row.job_id] = row

    groups: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for job_id, by_epoch in per_job.items():
        job = job_rows[job_id]
        if job.stage != "train":
            continue
        timed = [r for r in by_epoch.values() if not r[4]] or list(by_epoch.values())
        g = groups[(job.gpu_type, job.model)]
        g["gpus"].append(job.gpus or 1)
        times = [r[2] for r in timed]
        g["epoch_time"].append(statistics.median(times))
        g["epoch_times"].extend(times)
        g["images_per_sec"].append(statistics.median([r[3] for r in timed]))
        for offset, name in enumerate(TELEMETRY, start=5):
            values = [r[offset] for r in timed if r[offset] is not None]
            if values:
                g[name].append(statistics.median(values))
        if job_id in mismatched:
            g["mismatch"].append(job_id)
        if job_id in final:
            g["train_time"].append(final[job_id].train_time)
            g["final_acc"].append(final[job_id].final_test_acc)
            g["best_acc"].append(final[job_id].best_test_acc)
            if final[job_id].time_to_target is not None:
                g["time_to_target"].append(final[job_id].time_to_target)
    for job_id, row in final.items():
        job = job_rows[job_id]
        if job.stage == "transfer":
            groups[(job.gpu_type, job.model)]["transfer_acc"].append(row.final_test_acc)

    gpu_types = sorted({gpu for gpu, _ in groups}, key=lambda g: g)
    models = sorted({model for _, model in groups})
    reference = reference or (gpu_types[0] if gpu_types else None)

    def med(values: list[float]) -> float | None:
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 4) if values else None

    def pct(value: float | None) -> float | None:
        return None if value is None else round(100 * value, 2)

    def rnd(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    def scale(value: float | None, factor: float) -> float | None:
        return None if value is None else round(value * factor, 3)

    def cost(gpu: str, g: dict[str, list]) -> float | None:
        price = (prices or {}).get(gpu)
        runs = [t for t in g.get("train_time", []) if t is not None]
        if price is None or not runs:
            return None
        gpus = g.get("gpus", [1])[0]
        return round(statistics.median(runs) / 3600 * gpus * price, 4)

    rows = []
    for gpu in gpu_types:
        row: dict[str, Any] = {"gpu_type": gpu}
        for model in models:
            g = groups.get((gpu, model), {})
            ref = groups.get((reference, model), {})
            epoch_time = med(g.get("epoch_time", []))
            ref_time = med(ref.get("epoch_time", []))
            runs = len(g.get("epoch_time", []))
            cv = _cv(g.get("epoch_time", [])) if runs > 1 else _cv(g.get("epoch_times", []))
            row.update(
                {
                    f"{model} s/epoch": epoch_time,
                    f"{model} img/s": med(g.get("images_per_sec", [])),
                    f"{model} speedup": round(ref_time / epoch_time, 2)
                    if epoch_time and ref_time
                    else None,
                    f"{model} final acc %": pct(med(g.get("final_acc", []))),
                    f"{model} best acc %": pct(med(g.get("best_acc", []))),
                    f"{model} s to target": med(g.get("time_to_target", [])),
                    f"{model} transfer acc %": pct(med(g.get("transfer_acc", []))),
                    f"{model} runs": runs,
                    f"{model} CV": f"{100 * cv:.1f}%" + (" !" if cv > 0.05 else ""),
                    f"{model} GPU util %": rnd(med(g.get("gpu_util_mean", [])), 1),
                    f"{model} GPU mem GB": scale(med(g.get("gpu_mem_peak_bytes", [])), 1e-9),
                    f"{model} power W": rnd(med(g.get("power_mean_w", [])), 1),
                    f"{model} J/epoch": rnd(med(g.get("energy_j", [])), 1),
                    f"{model} mJ/img": scale(med(g.get("energy_per_image_j", [])), 1e3),
                    f"{model} CPU util %": rnd(med(g.get("cpu_util_mean", [])), 1),
                    f"{model} $/run": cost(gpu, g),
                    f"{model} gpu mismatch": len(g.get("mismatch", [])) or None,
                }
            )
        rows.append(row)
    return rows


def prices_of(store: Store, sweep: str) -> dict[str, float]:
    """Price per GPU-hour of each GPU type, from the sweep's cluster.yaml as submitted."""
    config = store.sweep_config(sweep) or {}
    return {
        name: gpu["price_per_gpu_hour"]
        for name, gpu in (config.get("gpu_types") or {}).items()
        if gpu.get("price_per_gpu_hour") is not None
    }


STUDY_TABLES = (
    ("test accuracy % (final)", "final acc %"),
    ("seconds per epoch", "s/epoch"),
    ("transfer accuracy % (final)", "transfer acc %"),
)


def study_tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The study's layout: a row per network variant, a column per GPU type and the average."""
    models = [model for model, _ in per_model_blocks(rows, keep_empty=True)]
    tables = []
    for title, column in STUDY_TABLES:
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
    from harness.store import inference

    with store.begin() as conn:
        measured = conn.execute(
            select(jobs.c.model, jobs.c.dataset, jobs.c.gpu_type, inference.c.attempt,
                   inference.c.runtime, inference.c.batch_size, inference.c.measurement)
            .join(inference, inference.c.job_id == jobs.c.id)
            .where(jobs.c.sweep == sweep)
            .order_by(inference.c.attempt)
        ).all()  # fmt: skip
    latest: dict[tuple, Any] = {}
    for row in measured:  # the newest attempt wins
        latest[(row.model, row.dataset, row.gpu_type, row.runtime, row.batch_size)] = row
    by_runtime: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for (model, dataset, gpu, runtime, _), row in latest.items():
        by_runtime[(model, dataset, gpu, runtime)].append(row.measurement)
    order = {name: i for i, name in enumerate(
        ("eager", "compile", "aoti", "onnxruntime", "onnxruntime-int8", "caffe2"))}  # fmt: skip
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
