"""Harness scale: planning a large sweep, and the comparison table over a large store.

    python bench/harness_scale.py [--jobs 10000] [--table-jobs 1000] [--epochs 250]

Prints medians over the repeats (the first, warm-up, run excluded) and their CV.
Targets: planning 10,000 jobs under 2 s; the table over 1,000 jobs x 250 epochs under 3 s.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from harness import config as cluster_config
from harness.planner import plan
from harness.report import comparison
from records.store import Store, epochs, insert, results

GPU_TYPES = ["k80", "p100", "v100", "a100", "h100"]
JOBS_PER_TRAIN = 6  # train, transfer, 2 exports, 2 inferences


def sweep_file(folder: Path, jobs: int) -> Path:
    seeds = math.ceil(jobs / (2 * len(GPU_TYPES) * JOBS_PER_TRAIN))
    data = {
        "name": "scale",
        "gpu_types": {g: {"partition": f"gpu-{g}", "gres": f"gpu:{g}"} for g in GPU_TYPES},
        "sweep": {
            "models": ["resnest50_bottleneck", "resnest50_basic"],
            "datasets": ["synthetic"],
            "transfer_to": ["synthetic"],
            "gpu_types": GPU_TYPES,
            "seeds": list(range(seeds)),
            "stages": ["train", "transfer", "export", "infer"],
        },
    }
    path = folder / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def timed(fn, repeats: int) -> tuple[float, float, object]:
    times, value = [], None
    for i in range(repeats + 1):
        start = time.perf_counter()
        value = fn()
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times), statistics.pstdev(times) / statistics.mean(times), value


def filled_store(folder: Path, jobs: int, n_epochs: int) -> Store:
    """A SQLite store holding ``jobs`` finished training jobs of ``n_epochs`` epochs each."""
    store = Store(f"sqlite:///{folder / 'results.db'}")
    store.add_sweep("scale", {})
    rows = [
        {
            "id": f"job{i:06d}",
            "stage": "train",
            "model": ["resnest50_bottleneck", "resnest50_basic"][i % 2],
            "dataset": "cifar10",
            "gpu_type": GPU_TYPES[i // 2 % 5],
            "gpus": 1,
            "seed": i // 10,
            "repeat": 0,
            "spec": {},
            "depends_on": [],
            "job_dir": "",
        }
        for i in range(jobs)
    ]
    store.add_jobs("scale", rows)
    with store.begin() as conn:
        conn.execute(
            insert(epochs),
            [
                {
                    "job_id": row["id"],
                    "attempt": 0,
                    "epoch": e,
                    "epoch_time": 10.0 + (e % 7) / 10,
                    "images_per_sec": 5000.0,
                    "test_acc": 0.5 + e / (4 * n_epochs),
                    "warmup": e == 1,
                    "images": 50000,
                }
                for row in rows
                for e in range(1, n_epochs + 1)
            ],
        )
        conn.execute(
            insert(results),
            [
                {
                    "job_id": row["id"],
                    "attempt": 0,
                    "status": "succeeded",
                    "final_test_acc": 0.75,
                    "best_test_acc": 0.76,
                    "time_to_target": 1000.0,
                }
                for row in rows
            ],
        )
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--table-jobs", type=int, default=1_000)
    parser.add_argument("--epochs", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = sweep_file(Path(tmp), args.jobs)
        median, cv, jobs = timed(lambda: plan(cluster_config.load(path)), args.repeats)
        print(
            f"plan:  {len(jobs):,} jobs (validate cluster.yaml + expand) in {median:.3f} s "
            f"(median of {args.repeats}, CV {100 * cv:.1f}%); target < 2 s",
            flush=True,
        )
        start = time.perf_counter()
        store = filled_store(Path(tmp), args.table_jobs, args.epochs)
        fill = time.perf_counter() - start
        median, cv, rows = timed(lambda: comparison(store, "scale"), args.repeats)
        print(
            f"table: {args.table_jobs:,} jobs x {args.epochs} epochs "
            f"({args.table_jobs * args.epochs:,} epoch rows, SQLite, filled in {fill:.1f} s) "
            f"in {median:.3f} s (median of {args.repeats}, CV {100 * cv:.1f}%); target < 3 s"
        )
        assert len(rows) == len(GPU_TYPES)


if __name__ == "__main__":
    main()
