"""What the harness adds to a job, on one node and on two: submission to first step, and the
rendezvous, on the two-node SLURM of `scripts/slurm-local.sh up --nodes 2`.

For each node count, ``--repeats`` sweeps of one job each (resnest_tiny_basic, synthetic data,
one epoch of two steps, one task per node, gloo on the CPU), submitted one after the other
with `resnest-bench submit` as a user runs it. Per job:

  submit       wall time of the `submit` command (Python start-up, config, plan, store, sbatch)
  to start     from the submit command's start to the job's ``start`` record, written on rank 0
               just before the first step: queueing, node start-up, Python and torch imports,
               data, model, and the rendezvous
  rendezvous   ``init_process_group``, as rank 0 timed it (two nodes only)
  status       wall time of one `resnest-bench status` (one sacct call for the sweep)

Medians (and the spread) over the repeats. The cluster schedules every 2 s
(``sched_interval=2``), so queueing adds up to that much.

    python bench/multinode_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import Result, out_file, spread  # noqa: E402
from records.outbox import read_outbox  # noqa: E402
from records.store import Store  # noqa: E402

EXE = Path(sysconfig.get_path("scripts")) / "resnest-bench"
CONF = "/etc/slurm-nodes/slurm.conf"


def environment() -> dict[str, str]:
    loopback_only = ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")
    env = {k: v for k, v in os.environ.items() if k not in loopback_only}
    return {**env, "SLURM_CONF": CONF, "OMP_NUM_THREADS": "1"}


def sweep_file(folder: Path, name: str, nodes: int) -> Path:
    data = {
        "name": name,
        "results_dir": str(folder / "results"),
        "launcher": {"kind": "slurm"},
        "gpu_types": {"v100": {"partition": "gpu", "gres": "gpu:v100", "cpus_per_gpu": 1}},
        "sweep": {
            "models": ["resnest_tiny_basic"], "datasets": ["synthetic"], "gpu_types": ["v100"],
            "epochs": 1, "max_steps": 2, "overrides": {"batch_size": 32}, "nodes": nodes,
            "gpus_per_job": 1,
        },
    }  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_job(folder: Path, name: str, nodes: int, env: dict[str, str]) -> dict[str, float]:
    path = sweep_file(folder, name, nodes)
    began = time.time()
    submitted = subprocess.run([str(EXE), "submit", str(path), "-q"], env=env, cwd=folder,
                               capture_output=True, text=True)  # fmt: skip
    submit_s = time.time() - began
    if submitted.returncode != 0:
        sys.exit(f"multinode_overhead: submit failed: {submitted.stderr.strip()}")
    store = Store(f"sqlite:///{folder / 'results' / 'results.db'}")
    status_s: list[float] = []
    deadline = time.monotonic() + 600
    while True:
        t = time.time()
        subprocess.run([str(EXE), "status", "-c", str(path)], env=env, cwd=folder,
                       capture_output=True)  # fmt: skip
        status_s.append(time.time() - t)
        (job,) = store.jobs(name)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            sys.exit(f"multinode_overhead: {name} did not end within 600 s")
        time.sleep(0.5)
    if job["state"] != "succeeded":
        sys.exit(f"multinode_overhead: {name} {job['state']}: {job['reason']}")
    (start,) = [r for r in read_outbox(Path(job["job_dir"]) / "outbox.jsonl")
                if r["kind"] == "start"]  # fmt: skip
    if len(set(start["hosts"])) != nodes:
        sys.exit(f"multinode_overhead: {name} ran on {start['hosts']}, not {nodes} nodes")
    return {
        "submit": submit_s,
        "to start": start["time"] - began,
        "rendezvous": start["rendezvous_s"] if nodes > 1 else float("nan"),
        "status": statistics.median(status_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=out_file, help="also write the figures as JSON here")
    args = parser.parse_args()
    env = environment()
    nodes_up = subprocess.run(["sinfo", "-h", "-N", "-o", "%n"], env=env, capture_output=True,
                              text=True)  # fmt: skip
    if nodes_up.returncode != 0 or len(set(nodes_up.stdout.split())) < 2:
        sys.exit("multinode_overhead: no two-node SLURM: run scripts/slurm-local.sh up --nodes 2")
    result = Result("multinode_overhead")
    figures: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="resnest-bench-multinode-") as tmp:
        for i in range(args.repeats):
            for nodes in (1, 2):  # interleaved: one of each a round
                folder = Path(tmp) / f"n{nodes}-{i}"
                folder.mkdir()
                figures[nodes].append(one_job(folder, f"overhead-{nodes}n-{i}", nodes, env))
                said = ", ".join(f"{k} {v:.2f} s" for k, v in figures[nodes][-1].items())
                print(f"  {nodes} node(s), run {i + 1}: {said}", flush=True)
    print(f"\nmedian (min-max) over {args.repeats} jobs each, seconds")
    print(f"{'':10}" + "".join(f"{k:>22}" for k in figures[1][0]))
    for nodes, runs in figures.items():
        cells, kept = [], {}
        for key in runs[0]:
            values = [r[key] for r in runs]
            if all(v != v for v in values):  # NaN: not measured
                cells.append(f"{'-':>22}")
                continue
            kept[key] = spread(values)
            cells.append(f"{statistics.median(values):>8.2f} ({min(values):.2f}-{max(values):.2f})"
                         .rjust(22))  # fmt: skip
        print(f"{nodes} node(s) " + "".join(cells))
        result.figures[str(nodes)] = kept
    result.conditions["repeats"] = args.repeats
    result.write(args.out)


if __name__ == "__main__":
    main()
