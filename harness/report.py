"""Status and the GPU comparison table, read from the results store."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from harness.store import STATES, Store, epochs, jobs, results


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


def comparison(store: Store, sweep: str, reference: str | None = None) -> list[dict[str, Any]]:
    """Rows per GPU type, a group of columns per model: the study's comparison.

    Epoch time and images/s are medians over the epochs after the warm-up one, then medians
    over repeats and seeds; CV is across repeats (across epochs when there is one run).
    """
    with store.begin() as conn:
        job_rows = {
            r.id: r
            for r in conn.execute(
                select(
                    jobs.c.id, jobs.c.stage, jobs.c.model, jobs.c.gpu_type, jobs.c.attempt
                ).where(jobs.c.sweep == sweep)
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
            )
            .join(jobs, jobs.c.id == epochs.c.job_id)
            .where(jobs.c.sweep == sweep, jobs.c.stage == "train")
            .order_by(epochs.c.attempt)
        ).tuples()
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
        times = [r[2] for r in timed]
        g["epoch_time"].append(statistics.median(times))
        g["epoch_times"].extend(times)
        g["images_per_sec"].append(statistics.median([r[3] for r in timed]))
        if job_id in final:
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
                }
            )
        rows.append(row)
    return rows


def per_model_blocks(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The wide table cut into one narrow table per model, for terminals."""
    models: list[str] = []
    for key in rows[0] if rows else []:
        if key != "gpu_type":
            model = key.split(" ", 1)[0]
            if model not in models:
                models.append(model)
    return [
        (
            model,
            [
                {
                    "gpu_type": row["gpu_type"],
                    **{k.split(" ", 1)[1]: v for k, v in row.items() if k.startswith(model + " ")},
                }
                for row in rows
            ],
        )
        for model in models
    ]
