"""The study's CPU deployment comparison: PyTorch eager against ONNX Runtime and INT8 ONNX
Runtime, batch 1, both ResNeSt-50 variants, threads fixed, in one run.

Weights: each variant trained on Fashion-MNIST (Debian's dataset-fashion-mnist) for
``--train-steps`` steps of the study's recipe here, or taken from training job folders
(``--weights-bottleneck DIR --weights-basic DIR``). Then for each variant: ONNX export (opset
18), static INT8 quantization (QDQ, per-channel, calibrated on 256 training images), batch-1
latency with ``--threads`` threads (warm-up excluded, median of ``--iters``) and accuracy over
the whole test set in each runtime (with ``--eval-threads``: only the latency is timed), top-1
agreement with eager, and the size on disk.

Targets: ONNX Runtime at least 2x faster than eager at batch 1 with 100% top-1 agreement;
INT8 at least 3x smaller than the fp32 ONNX file with at most 0.5 points of accuracy lost.

    python bench/deploy_latency.py [--threads 2] [--train-steps 200] [--iters 50]
        [--weights-bottleneck DIR --weights-basic DIR] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from jobs import data
from jobs.data import normalise
from jobs.export import export_all, load_trained
from jobs.infer import predictions, quantize_int8, time_batches
from jobs.runtimes import onnx_session

VARIANTS = ("resnest50_bottleneck", "resnest50_basic")
FASHION = "/usr/share/datasets/fashion-mnist"


def train(model: str, folder: Path, steps: int, data_dir: str) -> Path:
    cmd = [
        sys.executable, "-m", "jobs.train", "--model", model, "--dataset", "fashion-mnist",
        "--data-dir", data_dir, "--epochs", "1", "--max-steps", str(steps), "--batch-size", "64",
        "--telemetry-interval", "0", "--out", str(folder),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--eval-threads", type=int, default=os.cpu_count())
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--data-dir", default=FASHION, help="Fashion-MNIST IDX files")
    parser.add_argument("--models", nargs=2, default=VARIANTS, metavar=("BOTTLENECK", "BASIC"))
    parser.add_argument("--weights-bottleneck")
    parser.add_argument("--weights-basic")
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
    header += f"{'agree %':>9}{'MB':>8}"
    print(header)
    for variant in args.models:
        given = args.weights_bottleneck if "bottleneck" in variant else args.weights_basic
        if given:
            source = Path(given)
        else:
            source = train(variant, work / variant, args.train_steps, args.data_dir)
        model, _ = load_trained(source)
        paths = export_all(model, torch.from_numpy(images[:2]), work / f"{variant}-export",
                           aoti=None)  # fmt: skip
        int8 = quantize_int8(paths["onnx"], calibration)
        files = {"onnxruntime": paths["onnx"], "onnxruntime-int8": int8}

        def runner(name: str, threads: int, model=model, files=files):
            """The runtime with ``threads`` threads: an fp32 NCHW batch -> logits."""
            if name == "eager":
                torch.set_num_threads(threads)

                def eager(x: np.ndarray) -> np.ndarray:
                    with torch.no_grad():
                        return model(torch.from_numpy(x)).numpy()

                return eager
            session = onnx_session(files[name], threads=threads)
            return lambda x: session.run(None, {"images": x})[0]

        sizes = {
            "eager": paths["state_dict"].stat().st_size,
            "onnxruntime": paths["onnx"].stat().st_size,
            "onnxruntime-int8": int8.stat().st_size,
        }
        reference = None
        base_ms = None
        accuracies = {}
        for name in ("eager", "onnxruntime", "onnxruntime-int8"):
            one = np.ascontiguousarray(images[:1])
            timing = time_batches(runner(name, args.threads), one, warmup=5, iters=args.iters)
            predicted = predictions(runner(name, args.eval_threads), images, 256)
            if reference is None:
                reference, base_ms = predicted, timing["latency_p50_ms"]
            accuracy = 100 * float((predicted == labels).mean())
            agreement = 100 * float((predicted == reference).mean())
            accuracies[name] = accuracy
            print(
                f"{variant:<{w}}{name:<18}{timing['latency_p50_ms']:8.2f}"
                f"{base_ms / timing['latency_p50_ms']:8.2f}x{accuracy:8.2f}{agreement:9.2f}"
                f"{sizes[name] / 1e6:8.2f}",
                flush=True,
            )
        ratio = sizes["onnxruntime"] / sizes["onnxruntime-int8"]
        change = accuracies["onnxruntime-int8"] - accuracies["onnxruntime"]
        print(f"{'':<{w}}INT8 / fp32 ONNX size: 1/{ratio:.2f}; INT8 accuracy {change:+.2f} pt")


if __name__ == "__main__":
    main()
