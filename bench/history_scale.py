"""History at scale: `resnest-bench history` over a store of many sweeps.

    python bench/history_scale.py [--sweeps 50] [--jobs 1000] [--epochs 5] [--repeats 3]

A SQLite store (in a temporary folder) is filled with ``--sweeps`` sweeps of ``--jobs``
finished training jobs each (5 GPU types x 2 models, ``--epochs`` epochs, a final result
and a provenance per job; from the middle sweep on the epochs are 8% slower and torch and
one package have a new version). Then, timed: ``resnest-bench history --out DIR`` (every
figure's series with its intervals, the steps, what changed at each, a PNG per figure and
the page), in this process as the command line runs it; target < 10 s for 50 sweeps of
1,000 jobs. Timings are medians over ``--repeats`` runs after one warm-up run, with their
range; the steps found are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert

from bench.harness_scale import GPU_TYPES, MODELS, line, quiet, timed
from harness.cli import main as cli
from records import packages
from records.schema import epochs, jobs, package_lists, provenance, results
from records.store import Store


def fill(store: Store, n_sweeps: int, n_jobs: int, n_epochs: int) -> None:
    rng = random.Random(0)
    step = n_sweeps // 2
    lists = {}
    for torch in ("2.10.0", "2.11.0"):
        names = sorted([f"torch=={torch}", "numpy==2.2.1", f"pillow=={torch[2:]}"])
        lists[torch] = (packages.digest(names), packages.pack(names))
    with store.begin() as conn:
        conn.execute(insert(package_lists),
                     [{"sha256": d, "packages": p} for d, p in lists.values()])  # fmt: skip
    for k in range(n_sweeps):
        name = f"nightly-{k:03d}"
        store.add_sweep(name, {"sweep": {"target_accuracy": [0.6, 0.7]}})
        slow = 1.08 if k >= step else 1.0
        torch = "2.11.0" if k >= step else "2.10.0"
        rows = [
            {"id": f"{name}-{i:05d}", "sweep": name, "stage": "train", "model": MODELS[i % 2],
             "dataset": "cifar10", "gpu_type": GPU_TYPES[i // 2 % 5], "gpus": 1, "seed": i // 10,
             "repeat": 0, "spec": {}, "depends_on": [], "state": "succeeded", "attempt": 0,
             "job_dir": ""}
            for i in range(n_jobs)
        ]  # fmt: skip
        with store.begin() as conn:
            conn.execute(insert(jobs), rows)
            conn.execute(insert(epochs), [
                {"job_id": row["id"], "attempt": 0, "epoch": e,
                 "epoch_time": rng.gauss(10.0, 0.2) * slow * (1 + GPU_TYPES.index(row["gpu_type"])),
                 "images_per_sec": 5000.0 / slow, "test_acc": 0.5 + e / (4 * n_epochs),
                 "warmup": e == 1, "images": 50000, "energy_j": 2500.0 * slow}
                for row in rows for e in range(1, n_epochs + 1)
            ])  # fmt: skip
            conn.execute(insert(results), [
                {"job_id": row["id"], "attempt": 0, "status": "succeeded",
                 "final_test_acc": 0.75, "best_test_acc": 0.76, "train_time": 2600.0}
                for row in rows
            ])  # fmt: skip
            conn.execute(insert(provenance), [
                {"job_id": row["id"], "attempt": 0, "host": f"node{i % 40:02d}",
                 "torch": torch, "driver": "550.54", "cuda": "12.4", "code_commit": "abc",
                 "gpu_name": row["gpu_type"], "packages_sha256": lists[torch][0]}
                for i, row in enumerate(rows)
            ])  # fmt: skip
    store.rebuild_summaries()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/results.db"
        store = Store(url)
        fill(store, args.sweeps, args.jobs, args.epochs)
        size = os.path.getsize(f"{folder}/results.db") / 1e6
        print(f"store: {args.sweeps} sweeps x {args.jobs:,} jobs x {args.epochs} epochs, "
              f"{size:.0f} MB", flush=True)  # fmt: skip
        out = Path(folder) / "history"
        result = timed(lambda: quiet("history", "--store", url, "--out", str(out)), args.repeats)
        pngs = len(list(out.glob("*.png")))
        line(f"history of {args.sweeps} sweeps", result, 10.0, f"{pngs} plots")
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
            cli(["history", "--store", url, "--format", "json"])
        steps = json.loads(buffer.getvalue())
        print(f"  steps found: {len(steps)} (series x step), by where and why:")
        seen: dict[tuple, int] = {}
        for step in steps:
            key = (step["before"], step["after"], step["differences"])
            seen[key] = seen.get(key, 0) + 1
        for (before, after, why), count in seen.items():
            print(f"    {before} -> {after}: {count} series; {why}")


if __name__ == "__main__":
    main()
