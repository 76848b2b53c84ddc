"""The study's CPU deployment comparison: PyTorch eager against ONNX Runtime, INT8 ONNX Runtime
and Caffe2, batch 1, both ResNeSt-50 variants, threads fixed, in one run.

Weights: each variant trained on Fashion-MNIST (Debian's dataset-fashion-mnist) for
``--train-steps`` steps here (``--lr``, cosine), or taken from training job folders
(``--weights-bottleneck DIR --weights-basic DIR``). Then for each variant: ONNX export (opset
18; opset 11 for Caffe2), static INT8 quantization (QDQ, per-channel, calibrated on 256
training images), batch-1 latency with ``--threads`` threads (warm-up excluded, median of
``--iters``) and accuracy over the whole test set in each runtime (with ``--eval-threads``:
only the latency is timed), top-1 agreement with eager, the largest logit difference from
eager, and the size on disk. Caffe2 runs in its own interpreter (``scripts/caffe2-env.sh up``;
``--caffe2-python``), timed inside it; without one its rows say why.

Targets: ONNX Runtime at least 2x faster than eager at batch 1 with 100% top-1 agreement;
INT8 at least 3x smaller than the fp32 ONNX file with at most 0.5 points of accuracy lost;
Caffe2 with 100% top-1 agreement (its opset-11 file within 1e-4 of eager).

    python bench/deploy_latency.py [--threads 2] [--train-steps 200] [--iters 50]
        [--weights-bottleneck DIR --weights-basic DIR] [--data-dir DIR] [--caffe2-python PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs import data
from jobs.data import normalise
from jobs.export import export_all, load_trained
from jobs.infer import logits_of, time_batches
from jobs.runtimes import Runtime, Setting, Unavailable, create

VARIANTS = ("resnest50_bottleneck", "resnest50_basic")
FASHION = "/usr/share/datasets/fashion-mnist"


def train(model: str, folder: Path, steps: int, data_dir: str, lr: float) -> Path:
    """A few hundred steps, enough for weights whose logits mean something: the study's
    lr of 0.1 without its warm-up epochs diverges this early, so a lower lr, cosine."""
    cmd = [
        sys.executable, "-m", "jobs.train", "--model", model, "--dataset", "fashion-mnist",
        "--data-dir", data_dir, "--epochs", "1", "--max-steps", str(steps), "--batch-size", "64",
        "--lr", str(lr), "--set", "schedule=cosine", "--set", "augment=false",
        "--telemetry-interval", "0", "--out", str(folder),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return folder


def prepared(name: str, setting: Setting) -> tuple[Runtime, dict[str, Any]]:
    """The runtime ``name``, prepared, and its record."""
    runtime = create(name, setting)
    return runtime, runtime.prepare()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.02, help="for the training steps")
    parser.add_argument("--eval-threads", type=int, default=os.cpu_count())
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--data-dir", default=FASHION, help="Fashion-MNIST IDX files")
    parser.add_argument("--models", nargs=2, default=VARIANTS, metavar=("BOTTLENECK", "BASIC"))
    parser.add_argument("--weights-bottleneck")
    parser.add_argument("--weights-basic")
    parser.add_argument("--caffe2-python", type=Path, help="default: scripts/caffe2-env.sh's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    test = data.load("fashion-mnist", args.data_dir, train=False)
    train_set = data.load("fashion-mnist", args.data_dir, train=True)
    images = normalise(test.images, test).numpy()
    labels = test.labels.numpy()
    calibration = normalise(train_set.images[:256], train_set).numpy()
    import onnxruntime

    print(f"threads {args.threads} (accuracy passes: {args.eval_threads}); test set: "
          f"Fashion-MNIST, {len(labels)} images; torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}")  # fmt: skip
    w = max(len(name) for name in args.models) + 2
    header = f"{'model':<{w}}{'runtime':<18}{'ms @1':>8}{'speedup':>9}{'acc %':>8}"
    header += f"{'agree %':>9}{'max diff':>10}{'MB':>8}"
    print(header)
    for variant in args.models:
        given = args.weights_bottleneck if "bottleneck" in variant else args.weights_basic
        if given:
            source = Path(given)
        else:
            source = train(variant, work / variant, args.train_steps, args.data_dir, args.lr)
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
        reference = None
        base_ms = None
        accuracies = {}
        info: dict[str, dict] = {}
        for name in ("eager", "onnxruntime", "onnxruntime-int8", "caffe2"):
            one = np.ascontiguousarray(images[:1])
            try:
                timed, info[name] = prepared(name, setting)
            except Unavailable as exc:
                print(f"{variant:<{w}}{name:<18}unavailable: {exc}", flush=True)
                continue
            try:
                evaluated, _ = prepared(name, replace(setting, threads=args.eval_threads))
            except Unavailable as exc:
                timed.close()
                print(f"{variant:<{w}}{name:<18}unavailable: {exc}", flush=True)
                continue
            torch.set_num_threads(args.threads)  # eager's threads are the process's
            timing = time_batches(timed, one, warmup=5, iters=args.iters)
            torch.set_num_threads(args.eval_threads)
            logits = logits_of(evaluated, images, 256)
            for made in (timed, evaluated):
                made.close()
            if reference is None:
                reference, base_ms = logits, timing["latency_p50_ms"]
            predicted = logits.argmax(1)
            accuracy = 100 * float((predicted == labels).mean())
            agreement = 100 * float((predicted == reference.argmax(1)).mean())
            diff = float(np.abs(logits - reference).max())
            accuracies[name] = accuracy
            print(
                f"{variant:<{w}}{name:<18}{timing['latency_p50_ms']:8.2f}"
                f"{base_ms / timing['latency_p50_ms']:8.2f}x{accuracy:8.2f}{agreement:9.2f}"
                f"{diff:10.1e}{info[name]['bytes'] / 1e6:8.2f}",
                flush=True,
            )
            if name == "caffe2":
                print(f"{'':<{w}}Caffe2: {info[name]['versions']}", flush=True)
        ratio = info["onnxruntime"]["bytes"] / info["onnxruntime-int8"]["bytes"]
        change = accuracies["onnxruntime-int8"] - accuracies["onnxruntime"]
        print(f"{'':<{w}}INT8 / fp32 ONNX size: 1/{ratio:.2f}; INT8 accuracy {change:+.2f} pt")


if __name__ == "__main__":
    main()
