"""Time to accuracy: the study's recipe against the fast one, on real data (Fashion-MNIST).

    python bench/time_to_accuracy.py [--models resnest50_bottleneck resnest50_basic]
        [--data-dir /usr/share/datasets/fashion-mnist] [--study-epochs 8] [--fast-epochs 15]
        [--targets 0.9 0.93] [--max-steps N] [--repeats 1] [--jobs-dir DIR]
        [--out RESULT.json]

Trains each model with each recipe, one after the other, as ``resnest-bench train`` runs it
(``python -m jobs.train``, the job's own loader, telemetry at 1 Hz), then prints per run: the
final and best test accuracy, the training time to each target (the end of the first epoch
at or above it, as the table computes it), the median seconds per epoch and images/s over
the timed epochs, the median energy per image (where NVML measures it) and the whole
training time. With ``--jobs-dir DIR`` the job folders stay there for ``resnest-bench
ingest``; without it they go to a temporary folder, removed at the end.
With ``--repeats N`` every run is repeated N times in rounds (each round trains every model
with every recipe once), and the timings are given as their median and range over the rounds;
``--out FILE`` writes every run's figures and the conditions as JSON.

Sized for one GPU session: on an H200 both ResNeSt-50 variants, 8 study and 15 fast epochs,
take about 7 minutes. On a CPU, the README's figures: ``--models resnest_tiny_basic
resnest_tiny_bottleneck --study-epochs 3 --max-steps 90 --batch-size 128 --fast-epochs 3
--fast-max-steps 60 --fast-batch-size 128 --targets 0.6 0.7 --repeats 3`` (the fast recipe's
batch of 1,024 is a GPU's; at 128 its lr scales to 0.05).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_file import Result, out_file, spread
from records.summaries import Merged, summarise, time_to

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def train(out: Path, model: str, recipe: str, epochs: int, args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "jobs.train", "--model", model, "--dataset", "fashion-mnist",
           "--data-dir", args.data_dir, "--recipe", recipe, "--epochs", str(epochs),
           "--target-accuracy", str(min(args.targets)), "--out", str(out)]  # fmt: skip
    steps = (args.fast_max_steps if recipe == "fast" else None) or args.max_steps
    batch = (args.fast_batch_size if recipe == "fast" else None) or args.batch_size
    if steps:
        cmd += ["--max-steps", str(steps)]
    if batch:
        cmd += ["--batch-size", str(batch)]
    print(f"training {model} with the {recipe} recipe, {epochs} epochs ...", flush=True)
    root = str(Path(__file__).resolve().parents[1])  # the job's modules, from any folder
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path}
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        sys.exit(f"{model} ({recipe}) failed: {last}")


def outcome(out: Path, targets: list[float]) -> dict:
    records = [json.loads(line) for line in (out / "outbox.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    final = [r for r in records if r["kind"] == "final"][-1]
    start = [r for r in records if r["kind"] == "start"][-1]
    # the epochs as the store's summaries read them (``records.summaries.Merged``)
    rows = [Merged(**{k: r.get("time" if k == "recorded_at" else k) for k in Merged._fields})
            for r in epochs]  # fmt: skip
    summary = summarise(rows)
    energy = [r["energy_per_image_j"] for r in epochs[1:] if r.get("energy_per_image_j")]
    return {
        "final acc %": round(100 * final["final_test_acc"], 2),
        "best acc %": round(100 * final["best_test_acc"], 2),
        **{f"s to {100 * t:g}%": _seconds(time_to(summary["accuracy_steps"], t)) for t in targets},
        "s/epoch": round(summary["epoch_time"], 2),
        "img/s": round(summary["images_per_sec"]),
        "mJ/img": round(1000 * statistics.median(energy), 3) if energy else "-",
        "train s": round(final["train_time"], 1),
        # memory_format=auto's probe: before the first epoch, outside the training time
        "probe s": start.get("memory_format_probe_s") or "-",
        "epochs": len(epochs),
        "images": sum(r["images"] for r in epochs),
        "batch": start["recipe"]["batch_size"],
        "memory format": start.get("memory_format", "-"),
    }


def _seconds(value: float | None) -> float | str:
    return "not reached" if value is None else round(value, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnest50_bottleneck", "resnest50_basic"])
    parser.add_argument("--data-dir", default=FASHION_MNIST)
    parser.add_argument("--study-epochs", type=int, default=8)
    parser.add_argument("--fast-epochs", type=int, default=15)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.93])
    parser.add_argument("--max-steps", type=int, help="steps per epoch (a shorter smoke run)")
    parser.add_argument("--batch-size", type=int, help="one for both recipes (default: their own)")
    parser.add_argument("--fast-max-steps", type=int, help="the fast one's, if not --max-steps")
    parser.add_argument("--fast-batch-size", type=int, help="the fast one's, if not --batch-size")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every run (default 1)")
    parser.add_argument("--jobs-dir", help="keep the job folders here (default: removed)")
    parser.add_argument("--out", type=out_file, help="also write the runs as JSON here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    result = Result("time_to_accuracy")
    result.conditions.update(targets=args.targets, repeats=args.repeats)
    with tempfile.TemporaryDirectory(prefix="resnest-bench-tta-") as tmp:
        runs = train_all(Path(args.jobs_dir or tmp), args)
    print_table(runs)
    result.figures["runs"] = [
        {"model": model, "recipe": recipe, "runs": done,
         **{key: spread(values) for key, values in _timings(done).items()}}
        for (model, recipe), done in runs.items()
    ]  # fmt: skip
    result.write(args.out)


def train_all(jobs_dir: Path, args: argparse.Namespace) -> dict[tuple[str, str], list[dict]]:
    """Every model with every recipe, once a round; each run's outcome."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for round_ in range(args.repeats):
        for model in args.models:
            for recipe, epochs in (("study", args.study_epochs), ("fast", args.fast_epochs)):
                out = jobs_dir / f"{model}-{recipe}" / f"round-{round_ + 1}"
                train(out, model, recipe, epochs, args)
                runs.setdefault((model, recipe), []).append(outcome(out, args.targets))
    return runs


def print_table(runs: dict[tuple[str, str], list[dict]]) -> None:
    table = [summary_row(model, recipe, done) for (model, recipe), done in runs.items()]
    columns = list(table[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in table:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


def _timings(done: list[dict]) -> dict[str, list[float]]:
    """Each timing over the rounds, where every round has one."""
    keys = [k for k in done[0] if k.startswith("s to") or k in ("s/epoch", "img/s", "train s",
                                                                  "probe s")]  # fmt: skip
    return {k: [r[k] for r in done] for k in keys
            if all(isinstance(r[k], (int, float)) for r in done)}  # fmt: skip


def summary_row(model: str, recipe: str, done: list[dict]) -> dict:
    """One printed row per model and recipe: the accuracies (the same every round where the
    training is deterministic, else their range) and each timing's median (range)."""
    row: dict = {"model": model, "recipe": recipe}
    for key in done[0]:
        values = [r[key] for r in done]
        numbers = all(isinstance(v, (int, float)) for v in values)
        if not numbers or len(set(values)) == 1:
            row[key] = values[0] if len(set(map(str, values))) == 1 else "/".join(map(str, values))
        else:
            row[key] = f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"
    return row


if __name__ == "__main__":
    main()
