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

Then the lab sweep again under ``launcher.slurm.max_queued: 1000`` (as
a site's QOS of 1,000 queued jobs per user would have it): the time until its first 1,000
jobs are queued (the rest wait in the store). All four are measured once a round, for
``--repeats`` rounds; each figure is the median over the rounds with its range.

    python bench/slurm_submit.py [--seeds 50] [--lab-seeds 250] [--repeats 3] [--keep]
        [--out RESULT.json]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_file import Result, out_file, spread

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
                        help="rounds: every sweep once a round (default: 3)")  # fmt: skip
    parser.add_argument("--out", type=out_file, help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if shutil.which("sbatch") is None:
        sys.exit("no SLURM here: run scripts/slurm-local.sh up")
    result = Result("slurm_submit")
    folder = Path(tempfile.mkdtemp(prefix="slurm-bench-"))
    runs: dict[str, list[dict]] = {"arrays": [], "pipeline": [], "lab": [], "limited": []}
    with node_held():
        for i in range(args.repeats):  # interleaved: each sweep once a round
            runs["arrays"].append(measure(folder, f"bench-arrays{i}", args.seeds,
                                          STAGES["arrays"]))  # fmt: skip
            runs["pipeline"].append(measure(folder, f"bench-pipeline{i}", args.seeds // 2,
                                            STAGES["pipeline"]))  # fmt: skip
            runs["lab"].append(measure(folder, f"bench-lab{i}", args.lab_seeds, STAGES["lab"]))
            # The lab sweep under a limit of 1,000 queued jobs: its first 1,000 go out, the
            # rest wait in the store.
            runs["limited"].append(measure(folder, f"bench-limited{i}", args.lab_seeds,
                                           STAGES["lab"], LIMIT))  # fmt: skip
            print(f"round {i + 1} of {args.repeats} done", flush=True)
    print(f"{'sweep':<10} {'jobs':>5} {'sbatch calls':>12} {'submit (s)':>17} "
          f"{'all queued (s)':>17} {'status (s)':>17}  target")  # fmt: skip
    for label, done in runs.items():
        figures = {key: spread([r[key] for r in done]) for key in ("submit_s", "queued_s",
                                                                   "status_s")}  # fmt: skip
        result.figures[label] = {"jobs": done[0]["jobs"], "sbatch": done[0]["sbatch"],
                                 "queued": min(done[0]["jobs"], LIMIT if label == "limited"
                                               else done[0]["jobs"]), **figures}  # fmt: skip
        # The lab sweep's target: every job (or, under the limit, the first 1,000) queued
        # within 5 s, with a handful of sbatch calls
        queued_s = figures["queued_s"]["median"]
        verdict = f"< {LAB_TARGET_S:g} s " + ("ok" if queued_s < LAB_TARGET_S else "MISSED")
        cells = " ".join(f"{figures[k]['median']:>5.2f} ({figures[k]['low']:.2f}-"
                         f"{figures[k]['high']:.2f})" for k in figures)  # fmt: skip
        print(f"{label:<10} {done[0]['jobs']:>5} {done[0]['sbatch']:>12} {cells}  "
              f"{verdict if label in ('lab', 'limited') else ''}")  # fmt: skip
    print(
        f"limited: the lab sweep under a limit of {LIMIT:,} queued jobs per user; its "
        f"'all queued' is its first {LIMIT - 1:,} (the job holding the node counts as one)"
    )
    result.conditions.update(repeats=args.repeats, limit=LIMIT, target_s=LAB_TARGET_S)
    result.write(args.out)
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"results kept in {folder}")


if __name__ == "__main__":
    main()
