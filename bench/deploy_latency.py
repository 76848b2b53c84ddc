"""The study's CPU deployment comparison: PyTorch eager against ONNX Runtime, INT8 ONNX Runtime
and Caffe2, and eager in torch 1.10.2 (Caffe2's era), batch 1, both ResNeSt-50 variants,
threads fixed, timed in interleaved rounds.

Weights: each variant trained on Fashion-MNIST (Debian's dataset-fashion-mnist) here for
``--train-epochs`` epochs of ``--train-steps`` steps (cosine; its own ``--lr``,
``--warmup-steps``, ``--nesterov`` and ``--last-gamma`` by default: ``SCHEDULES``), or taken
from training job folders
(``--weights-bottleneck DIR --weights-basic DIR``). Then for each variant: ONNX export (opset
18; opset 11 for Caffe2), static INT8 quantization by each scheme asked for
(``jobs.runtimes.INT8_SCHEMES``: ``onnxruntime-int8`` and the others beside it, calibrated on
256 training images), and in each runtime the accuracy over the whole test set (with
``--eval-threads``, untimed), top-1 agreement with eager (and, for an INT8 scheme, with fp32
ONNX Runtime), the largest logit difference from eager and the size on disk; for an INT8
scheme also the ops of the graph ONNX Runtime runs after its optimizations (what stays in
float). Caffe2 runs in its own interpreter (``scripts/caffe2-env.sh up``;
``--caffe2-python``), timed inside it, and so does ``eager-torch1.10``: the same state dict in
that interpreter's PyTorch, the study's question (Caffe2 against the PyTorch of its release)
asked as it was; without the interpreter their rows say why.

Timing: ``--rounds`` rounds (default 5), each runtime once per round in a rotating order
(median batch-1 latency of ``--iters`` batches, warm-up excluded, ``--threads`` threads), so
that drift and a neighbour's load fall on all of them alike. Each runtime's figure is the
median over the rounds with its 95% interval, each speed-up (over eager, over ONNX Runtime,
over eager in torch 1.10.2)
the median of the rounds' paired ratios with its own (percentile bootstrap over the rounds,
``harness.stats.interval``); a speed-up whose interval holds 1.0 is printed as "same". The
conditions are recorded: the CPU and its AVX2/AVX-512/VNNI/AMX flags, the threads, the load
average before and after, the versions, and per round the cores the rest of the machine kept
busy. A round in which it used more than the cores the bench leaves free (plus
``--busy-cores``), or a runtime whose rounds differ by more than ``--max-spread`` %, is
flagged in the output and the result (``--out FILE``, JSON); ``--strict`` makes a flag exit 1.

    python bench/deploy_latency.py [--threads 2] [--rounds 5] [--iters 40] [--out FILE]
        [--strict] [--train-epochs 1] [--train-steps 938] [--lr 0.02] [--warmup-steps N]
        [--nesterov]
        [--weights-bottleneck DIR --weights-basic DIR]
        [--runtimes eager onnxruntime ...] [--data-dir DIR] [--caffe2-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_file import out_file
from harness import stats
from jobs import data
from jobs.data import normalise
from jobs.export import export_all, load_trained
from jobs.infer import logits_of, time_batches
from jobs.provenance import cpu_model
from jobs.runtimes import INT8_SCHEMES, OnnxRuntimeInt8, Runtime, Setting, Unavailable, create

VARIANTS = ("resnest50_bottleneck", "resnest50_basic")
FASHION = "/usr/share/datasets/fashion-mnist"


# Each variant's training by default: the schedule that took it past 85% here (one run each,
# 2026-12-07, one epoch at batch 64, cosine). The bottleneck network: without ``last_gamma``
# (each block's last BN scale starting at zero) no schedule tried reached it (lr 0.02 without
# warm-up 67.25%, with 100 warm-up steps 72.73%; lr 0.05 after 100 warm-up steps with Nesterov
# momentum 82.12%, two epochs so 79.44%); with it, lr 0.05 so gave 89.06% and lr 0.1 86.80%.
# The basic network (whose split-attention blocks end in no BN: ``last_gamma`` changes
# nothing there): lr 0.02 without warm-up 88.48%, two epochs at lr 0.05 82.91%. The study's lr
# of 0.1 without its warm-up epochs diverges this early.
SCHEDULES = {
    "bottleneck": {"lr": 0.05, "warmup_steps": 100, "nesterov": True, "last_gamma": True},
    "basic": {"lr": 0.02, "warmup_steps": 0, "nesterov": False, "last_gamma": False},
}


def schedule_of(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """The variant's schedule (``SCHEDULES``), with the options given on the command line."""
    given = {name: getattr(args, name) for name in SCHEDULES["basic"]}
    kind = "bottleneck" if "bottleneck" in model else "basic"
    return {**SCHEDULES[kind], **{k: v for k, v in given.items() if v is not None}}


def train(model: str, folder: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Weights to judge the runtimes on, INT8 above all (whose accuracy loss says little on
    a network that has barely learnt), trained on the variant's schedule (``schedule_of``):
    their folder and that schedule."""
    how = schedule_of(model, args)
    settings = [f"{k}={str(how[k]).lower()}" for k in ("nesterov", "last_gamma", "warmup_steps")]
    cmd = [
        sys.executable, "-m", "jobs.train", "--model", model, "--dataset", "fashion-mnist",
        "--data-dir", args.data_dir, "--epochs", str(args.train_epochs),
        "--max-steps", str(args.train_steps), "--batch-size", "64", "--lr", str(how["lr"]),
        "--set", "schedule=cosine", "--set", "augment=false",
        *(part for setting in settings for part in ("--set", setting)),
        "--telemetry-interval", "0", "--out", str(folder),
    ]  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])  # the job's modules, from any folder
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        sys.exit(f"deploy_latency: training {model} failed: {last}")
    return folder, how


def prepared(name: str, setting: Setting) -> tuple[Runtime, dict[str, Any]]:
    """The runtime ``name``, prepared, and its record."""
    runtime = create(name, setting)
    return runtime, runtime.prepare()


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def conditions(threads: int) -> dict[str, Any]:
    """What the figures were measured on: the CPU and the flags that matter to these
    kernels, the threads, the load average and the versions."""
    import onnxruntime

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(), "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cores": os.cpu_count(), "threads": threads, "load_before": os.getloadavg(),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__, "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip


class OthersWatch:
    """How many cores the rest of the machine kept busy over a window: the system's busy CPU
    time less this process's and its children's (Caffe2's interpreter), over the wall time."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()

    def _own(self) -> float:
        total = sum(self.me.cpu_times()[:2])
        for child in self.me.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except self.psutil.Error:  # ended meanwhile
                continue
        return total

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def start(self) -> None:
        self.began, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    def cores(self) -> float:
        wall = time.perf_counter() - self.began
        others = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, others / wall)


def compare(rounds: dict[str, list[float]], name: str, base: str) -> dict[str, Any]:
    """``base``'s time over ``name``'s, round by round (a speedup of ``name``): the median of
    the paired ratios, its 95% percentile-bootstrap interval over the rounds, and the verdict:
    "same" where the interval holds 1."""
    if name == base or base not in rounds:
        return {}
    ratios = [b / x for b, x in zip(rounds[base], rounds[name], strict=True)]
    low, high = stats.interval(ratios)
    said = "same"
    if low is not None and high is not None:
        said = "faster" if low > 1 else "slower" if high < 1 else "same"
    key = f"vs_{base.replace('-', '_').replace('.', '_')}"
    return {key: statistics.median(ratios), f"{key}_ci95_low": low, f"{key}_ci95_high": high,
            f"{key}_verdict": said}  # fmt: skip


def timed_rounds(
    runtimes: dict[str, Runtime], one: np.ndarray, args: argparse.Namespace, variant: str
) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """Each runtime's median batch-1 latency per round (ms), every runtime once a round in a
    rotating order; and each round's conditions: the load before it and the cores the rest
    of the machine used during it (busy: more than the cores the bench leaves free)."""
    names = list(runtimes)
    rounds: dict[str, list[float]] = {name: [] for name in names}
    log, watch = [], OthersWatch()
    free = max(0, (os.cpu_count() or 1) - args.threads)
    for index in range(args.rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        load = os.getloadavg()[0]
        print(f"{variant}: round {index + 1} of {args.rounds}: {', '.join(order)}", flush=True)
        watch.start()
        for name in order:
            torch.set_num_threads(args.threads)  # eager's threads are the process's
            timing = time_batches(runtimes[name], one, warmup=3, iters=args.iters)
            rounds[name].append(timing["latency_p50_ms"])
        others = watch.cores()
        busy = others > free + args.busy_cores
        log.append({"model": variant, "round": index + 1, "order": order, "load_before": load,
                    "others_cores": round(others, 3), "busy": busy})  # fmt: skip
        if busy:
            print(f"{variant}: round {index + 1} BUSY: the rest of the machine used "
                  f"{others:.2f} cores, {free} left free", flush=True)  # fmt: skip
    return rounds, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs of training")
    one_epoch = "steps at batch 64 an epoch (default 938: the whole of Fashion-MNIST)"
    parser.add_argument("--train-steps", type=int, default=938, help=one_epoch)
    each = " (default: the variant's, SCHEDULES)"
    parser.add_argument("--lr", type=float, help="of the training steps" + each)
    parser.add_argument("--warmup-steps", type=int, help="of the lr's warm-up" + each)
    on = argparse.BooleanOptionalAction
    parser.add_argument("--nesterov", action=on, help="Nesterov momentum" + each)
    parser.add_argument("--last-gamma", action=on,
                        help="each block's last BN scale starts at zero" + each)  # fmt: skip
    parser.add_argument("--eval-threads", type=int, default=os.cpu_count())
    parser.add_argument("--iters", type=int, default=40, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--max-spread",
        type=float,
        default=10.0,
        help="rounds of one runtime that differ by more (%%) are flagged",
    )
    parser.add_argument(
        "--busy-cores",
        type=float,
        default=0.25,
        help="a round in which the rest of the machine used more than this "
        "many cores beyond those the bench leaves free is flagged busy",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when anything is flagged")
    parser.add_argument("--out", type=out_file, help="the full result as JSON")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES))
    parser.add_argument("--data-dir", default=FASHION, help="Fashion-MNIST IDX files")
    parser.add_argument("--models", nargs=2, default=VARIANTS, metavar=("BOTTLENECK", "BASIC"))
    parser.add_argument("--weights-bottleneck")
    parser.add_argument("--weights-basic")
    parser.add_argument("--caffe2-python", type=Path, help="default: scripts/caffe2-env.sh's")
    args = parser.parse_args()
    counts = (args.iters, args.threads, args.train_epochs, args.train_steps)
    if args.rounds < 5 or min(counts) < 1 or (args.warmup_steps or 0) < 0:
        # of fewer rounds, the percentile bootstrap's interval of the median is the range of
        # the rounds, which holds the true median less often than 95% (75% of the time at 3)
        parser.error(
            "--rounds must be at least 5; --iters, --threads, --train-epochs and "
            "--train-steps at least 1; --warmup-steps 0 or more"
        )
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    try:
        return measure_all(args, work)
    finally:  # the trained networks and their exports: a GB and more for the ResNeSt-50s
        shutil.rmtree(work, ignore_errors=True)


def measure_all(args: argparse.Namespace, work: Path) -> int:
    """Train or load each variant, export it, measure every runtime; print, write ``--out``;
    the exit code (1: flagged under ``--strict``)."""
    started = time.perf_counter()
    test = data.load("fashion-mnist", args.data_dir, train=False)
    train_set = data.load("fashion-mnist", args.data_dir, train=True)
    images = normalise(test.images, test).numpy()
    labels = test.labels.numpy()
    calibration = normalise(train_set.images[:256], train_set).numpy()
    result: dict[str, Any] = {"conditions": conditions(args.threads), "rows": [],
                              "rounds": [], "flags": [], "unavailable": [],
                              "training": {}}  # fmt: skip
    said = result["conditions"]
    print(f"{said['cpu_model']} ({', '.join(said['cpu_flags'])}), {said['cores']} cores; "
          f"threads {args.threads} (accuracy passes: {args.eval_threads}); {args.rounds} "
          f"rounds of {args.iters}; torch {said['torch']}, onnxruntime {said['onnxruntime']}; "
          f"load {said['load_before'][0]:.2f}", flush=True)  # fmt: skip
    for variant in args.models:
        given = args.weights_bottleneck if "bottleneck" in variant else args.weights_basic
        began = time.perf_counter()
        if given:
            source = Path(given)
            result["training"][variant] = {"weights": str(source)}
        else:
            source, how = train(variant, work / variant, args)
            took = time.perf_counter() - began
            print(f"{variant}: trained {args.train_epochs} x {args.train_steps} steps "
                  f"({how}) in {took:.0f} s", flush=True)  # fmt: skip
            result["training"][variant] = {
                "epochs": args.train_epochs, "steps": args.train_steps, "batch": 64, **how,
                "seconds": round(took, 1),
            }  # fmt: skip
        model, state = load_trained(source)
        folder = work / f"{variant}-export"
        export_all(model, torch.from_numpy(images[:2]), folder, aoti=None)
        artifacts = {
            "folder": folder,
            "model_name": state["model_name"],
            "num_classes": state["num_classes"],
            "stem": state.get("stem") or "",
        }
        caffe2 = str(args.caffe2_python or "")
        setting = Setting(artifacts, torch.device("cpu"), args.threads, calibration, caffe2,
                          work / f"{variant}-caffe2.log")  # fmt: skip
        measured = accuracy_passes(variant, setting, args, images, labels, result)
        runtimes = {}
        for name in measured:
            runtimes[name], _ = prepared(name, setting)
        try:
            rounds, log = timed_rounds(runtimes, np.ascontiguousarray(images[:1]), args, variant)
        finally:
            for runtime in runtimes.values():
                runtime.close()
        result["rounds"] += log
        for name, row in measured.items():
            row.update(model=variant, runtime=name, rounds_ms=rounds[name])
            row["latency_p50_ms"] = statistics.median(rounds[name])
            row["latency_ci95_low_ms"], row["latency_ci95_high_ms"] = stats.interval(rounds[name])
            spread = 100 * (max(rounds[name]) - min(rounds[name])) / row["latency_p50_ms"]
            row["rounds_spread_pct"] = spread
            for base in ("eager", "onnxruntime", "eager-torch1.10"):
                row.update(compare(rounds, name, base))
            result["rows"].append(row)
            if spread > args.max_spread:
                result["flags"].append(f"{variant} {name}: rounds differ by {spread:.1f}% "
                                       f"(over {args.max_spread:g}%)")  # fmt: skip
        result["flags"] += [f"{variant} round {r['round']}: busy, the rest of the machine used "
                            f"{r['others_cores']:.2f} cores" for r in log if r["busy"]]  # fmt: skip
    result["conditions"]["load_after"] = os.getloadavg()
    result["conditions"]["duration_s"] = round(time.perf_counter() - started, 1)
    result["conditions"]["command"] = "python " + shlex.join(
        [os.path.relpath(sys.argv[0], Path(__file__).resolve().parents[1]), *sys.argv[1:]]
    )
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    for flag in result["flags"]:
        print(f"FLAG: {flag}")
    return 1 if args.strict and result["flags"] else 0


RUNTIMES = (
    "eager",
    "onnxruntime",
    "onnxruntime-int8",
    "caffe2",
    "eager-torch1.10",
    "onnxruntime-int8-all",
    "onnxruntime-int8-nogemm",
    "onnxruntime-int8-s8",
)


def accuracy_passes(variant, setting, args, images, labels, result) -> dict[str, dict[str, Any]]:
    """Each available runtime's accuracy over the test set (``--eval-threads``, untimed), its
    top-1 agreement with eager and largest logit difference, and its size on disk."""
    measured: dict[str, dict[str, Any]] = {}
    predictions: dict[str, np.ndarray] = {}
    reference = None
    for name in args.runtimes:
        try:
            evaluated, info = prepared(name, replace(setting, threads=args.eval_threads))
        except Unavailable as exc:
            print(f"{variant}: {name} unavailable: {exc}", flush=True)
            result["unavailable"].append({"model": variant, "runtime": name, "why": str(exc)})
            continue
        torch.set_num_threads(args.eval_threads)
        logits = logits_of(evaluated, images, 256)
        graph = evaluated.graph_ops() if isinstance(evaluated, OnnxRuntimeInt8) else None
        evaluated.close()
        reference = logits if reference is None else reference
        predicted = logits.argmax(1)
        predictions[name] = predicted
        measured[name] = {
            "accuracy_pct": 100 * float((predicted == labels).mean()),
            "agreement_pct": 100 * float((predicted == reference.argmax(1)).mean()),
            "max_logit_diff": float(np.abs(logits - reference).max()),
            "size_mb": info["bytes"] / 1e6,
            "versions": info.get("versions"),
            **({"graph_ops": graph} if graph else {}),
        }
    for name, row in measured.items():  # an INT8 scheme against the fp32 network it quantized
        if name in INT8_SCHEMES and "onnxruntime" in predictions:
            same = predictions[name] == predictions["onnxruntime"]
            row["agreement_with_onnxruntime_pct"] = 100 * float(same.mean())
    return measured


def print_table(result: dict[str, Any]) -> None:
    """The rows: the median over rounds with its 95% interval; each speed-up over eager and
    over ONNX Runtime with its own, "same" where it holds 1."""

    def ratio(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return ""
        low, high = row[f"{key}_ci95_low"], row[f"{key}_ci95_high"]
        if row[f"{key}_verdict"] == "same":
            return f"same [{low:.2f}-{high:.2f}]"
        return f"{row[key]:.2f}x [{low:.2f}-{high:.2f}]"

    w = max([len(row["model"]) for row in result["rows"]] + [5]) + 2
    print(f"{'model':<{w}}{'runtime':<18}{'ms @1 [95%]':>22}{'vs eager':>22}{'vs ORT':>22}"
          f"{'vs torch 1.10':>22}"
          f"{'acc %':>8}{'agree %':>9}{'max diff':>10}{'MB':>8}")  # fmt: skip
    for row in result["rows"]:
        low, high = row["latency_ci95_low_ms"], row["latency_ci95_high_ms"]
        print(f"{row['model']:<{w}}{row['runtime']:<18}"
              f"{row['latency_p50_ms']:>8.2f} [{low:.2f}-{high:.2f}]".ljust(w + 18 + 22)
              + f"{ratio(row, 'vs_eager'):>22}{ratio(row, 'vs_onnxruntime'):>22}"
              f"{ratio(row, 'vs_eager_torch1_10'):>22}"
              f"{row['accuracy_pct']:8.2f}{row['agreement_pct']:9.2f}"
              f"{row['max_logit_diff']:10.1e}{row['size_mb']:8.2f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
