"""Harness scale: time to validate and plan a sweep of about 10,000 jobs.

    python bench/harness_scale.py [--jobs 10000] [--repeats 5]

Prints the median over the repeats (the first, warm-up, run excluded) and the CV.
Target: planning 10,000 jobs under 2 s.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = sweep_file(Path(tmp), args.jobs)
        times = []
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            jobs = plan(cluster_config.load(path))
            elapsed = time.perf_counter() - start
            if i > 0:
                times.append(elapsed)
    median = statistics.median(times)
    cv = statistics.pstdev(times) / statistics.mean(times)
    print(
        f"plan: {len(jobs):,} jobs (validate cluster.yaml + expand) in {median:.3f} s "
        f"median of {args.repeats} (CV {100 * cv:.1f}%, warm-up run excluded); target < 2 s"
    )


if __name__ == "__main__":
    main()
