"""Time from `resnest-bench submit` to every job of a sweep queued, on a real SLURM.

Needs a SLURM (scripts/slurm-local.sh up gives a single-node one with gres gpu:v100 and
gpu:a100). Three sweeps:

  arrays      2 models x 2 GPU types x 50 seeds, training only: one job array per GPU type
  pipeline    2 models x 2 GPU types x 25 seeds, train -> transfer: per GPU type a training
              array and a transfer array chained task by task (--dependency=aftercorr)
  lab         2 models x 2 GPU types x 250 seeds (1,000 training jobs), train -> transfer ->
              export -> infer, every network deployed (6,000 jobs): per GPU type six arrays,
              each chained to the one before it with aftercorr

While it measures, one job of its own holds the node whole (``--exclusive``), as a busy
cluster would: the sweeps' jobs wait in the queue instead of starting on the very cores that
run ``submit`` (on one machine, they would take its CPUs from it half-way through).

For each: the wall time of the submit command (Python start-up, config, plan, store writes,
sbatch calls), the time until `squeue -r` lists all its jobs (array tasks expanded), and the
wall time of `resnest-bench status` over the whole sweep then (one sacct call; Python
start-up included). The jobs are cancelled afterwards; nothing is left in the queue.

Then the lab sweep again, ``--repeats`` times, under ``launcher.slurm.max_queued: 1000`` (as
a site's QOS of 1,000 queued jobs per user would have it): the time until its first 1,000
jobs are queued (the rest wait in the store).

    python bench/slurm_submit.py [--seeds 50] [--lab-seeds 250] [--repeats 3] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

EXE = Path(sysconfig.get_path("scripts")) / "resnest-bench"


LAB_TARGET_S = 5.0
LIMIT = 1000  # queued jobs per user, as a site's QOS might allow
STAGES = {"arrays": ["train"], "pipeline": ["train", "transfer"],
          "lab": ["train", "transfer", "export", "infer"]}  # fmt: skip


def sweep_file(
    folder: Path, name: str, seeds: int, stages: list[str], max_queued: int | None = None
) -> Path:
    slurm = {"array_parallelism": 16, **({"max_queued": max_queued} if max_queued else {})}
    data = {
        "name": name,
        "results_dir": str(folder / "results"),
        "launcher": {"kind": "slurm", "slurm": slurm},
        "gpu_types": {
            "v100": {"partition": "gpu", "gres": "gpu:v100", "cpus_per_gpu": 1},
            "a100": {"partition": "gpu", "gres": "gpu:a100", "cpus_per_gpu": 1},
        },
        "sweep": {
            "models": ["resnest_tiny_bottleneck", "resnest_tiny_basic"],
            "datasets": ["synthetic"],
            "gpu_types": ["v100", "a100"],
            "seeds": list(range(seeds)),
            "epochs": 1,
            "max_steps": 1,
            "stages": stages,
            "deploy": "all",
            **({"transfer_to": ["synthetic"]} if "transfer" in stages else {}),
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def queued(name_prefix: str) -> int:
    """Jobs of the sweep SLURM lists, array tasks expanded: queued, or started (and ended:
    slurmctld lists an ended job for MinJobAge, 300 s by default) since."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%j"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return sum(1 for line in out.splitlines() if line.startswith(name_prefix))


def measure(
    folder: Path, name: str, seeds: int, stages: list[str], max_queued: int | None = None
) -> dict[str, float]:
    path = sweep_file(folder, name, seeds, stages, max_queued)
    trained = 2 if "transfer" in stages else 1  # networks per training job
    total = (
        2 * 2 * seeds * (trained + ("export" in stages) * trained + ("infer" in stages) * trained)
    )
    try:
        # Under a limit, the job holding the node counts as one of the user's queued jobs.
        expected = min(total, max_queued - 1) if max_queued else total
        return {"jobs": total, **timings(folder, name, path, expected)}
    finally:  # nothing left in the queue, whatever happened
        scripts = list((folder / "results" / name / "slurm").glob("*_submission.sh"))
        subprocess.run(["scancel", *(p.name.split("_")[0] for p in scripts)], check=False)


def timings(folder: Path, name: str, path: Path, total: int) -> dict[str, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [str(EXE), "submit", str(path), "-q"], capture_output=True, text=True, cwd=folder
    )
    submitted = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"submit failed: {result.stderr.strip()}")
    while queued(name) < total:
        if time.perf_counter() - start > 600:
            sys.exit(f"only {queued(name)} of {total} jobs queued after 600 s")
        time.sleep(0.05)
    listed = time.perf_counter() - start
    # `status` of the whole sweep as a user runs it: one sacct call, every job's state.
    start = time.perf_counter()
    status = subprocess.run(
        [str(EXE), "status", "-c", str(path), "--format", "csv"], capture_output=True,
        text=True, cwd=folder,
    )  # fmt: skip
    status_s = time.perf_counter() - start
    if status.returncode != 0:
        sys.exit(f"status failed: {status.stderr.strip()}")
    sbatch_calls = len(list((folder / "results" / name / "slurm").glob("*_submission.sh")))
    return {"submit_s": submitted, "queued_s": listed, "sbatch": sbatch_calls,
            "status_s": status_s}  # fmt: skip


@contextlib.contextmanager
def node_held(partition: str = "gpu"):
    """A job that holds the whole node of ``partition`` while the sweeps are submitted."""
    out = subprocess.run(
        ["sbatch", "--parsable", "-p", partition, "--exclusive", "-J", "bench-hold",
         "-o", "/dev/null", "--wrap", "sleep 3600"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    job = out.strip().split(";")[0]
    try:
        deadline = time.perf_counter() + 60
        while subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                             text=True).stdout.strip() != "RUNNING":  # fmt: skip
            if time.perf_counter() > deadline:
                sys.exit(f"the job holding the node ({job}) did not start within 60 s")
            time.sleep(0.2)
        yield
    finally:
        subprocess.run(["scancel", job], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50, help="seeds per model and GPU type")
    parser.add_argument("--lab-seeds", type=int, default=250,
                        help="seeds per model and GPU type of the lab sweep")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the results folder")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the lab sweep under a limit (default: 3)")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("sbatch") is None:
        sys.exit("no SLURM here: run scripts/slurm-local.sh up")
    folder = Path(tempfile.mkdtemp(prefix="slurm-bench-"))
    with node_held():
        rows = [
            ("arrays", measure(folder, "bench-arrays", args.seeds, STAGES["arrays"])),
            ("pipeline", measure(folder, "bench-pipeline", args.seeds // 2, STAGES["pipeline"])),
            ("lab", measure(folder, "bench-lab", args.lab_seeds, STAGES["lab"])),
        ]
        # The lab sweep under a limit of 1,000 queued jobs: its first 1,000 go out, the rest
        # wait in the store. Repeated, with its spread.
        limited = [
            measure(folder, f"bench-lab{i}", args.lab_seeds, STAGES["lab"], LIMIT)
            for i in range(args.repeats)
        ]
    print(f"{'sweep':<10} {'jobs':>5} {'sbatch calls':>12} {'submit (s)':>11} "
          f"{'all queued (s)':>15} {'status (s)':>11}  target")  # fmt: skip
    for label, r in rows:
        # The lab sweep's target: every job queued within 5 s, with a handful of sbatch calls
        verdict = f"< {LAB_TARGET_S:g} s " + ("ok" if r["queued_s"] < LAB_TARGET_S else "MISSED")
        print(
            f"{label:<10} {r['jobs']:>5} {r['sbatch']:>12} {r['submit_s']:>11.2f} "
            f"{r['queued_s']:>15.2f} {r['status_s']:>11.2f}  {verdict if label == 'lab' else ''}"
        )
    times = sorted(r["queued_s"] for r in limited)
    median = statistics.median(times)
    submit_s = statistics.median(r["submit_s"] for r in limited)
    print(
        f"lab sweep ({limited[0]['jobs']:,} jobs) under a limit of {LIMIT:,} queued jobs: its "
        f"first {LIMIT:,} queued in {median:.2f} s (median of {len(times)}; "
        f"{times[0]:.2f}-{times[-1]:.2f}; submit {submit_s:.2f} s, "
        f"{limited[0]['sbatch']} sbatch calls)  target < {LAB_TARGET_S:g} s "
        + ("ok" if median < LAB_TARGET_S else "MISSED")
    )
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"results kept in {folder}")


if __name__ == "__main__":
    main()
