"""The inference job: the exported network in each runtime, side by side.

Runtimes: PyTorch eager, ``torch.compile``, the AOTInductor package, ONNX Runtime (CPU
execution provider; CUDA and TensorRT providers when present), ONNX Runtime with static INT8
quantization (``jobs.runtimes.INT8_SCHEMES``: by default the convolutions, QDQ, per-channel
weights, ranges from training images), and Caffe2 through
its ONNX backend on the export's opset-11 file, in an interpreter of its own
(``jobs.caffe2_runtime``: current PyTorch no longer ships Caffe2). A runtime that cannot run
here is reported as unavailable with the reason (and how to get it), as a row, never skipped
in silence.

For each runtime and batch size: warm-up iterations, then timed iterations with the device
synchronised; latency p50, p95, p99 and throughput. For each runtime: accuracy over the whole
test set, top-1 agreement with PyTorch eager on it and the largest logit difference from eager;
threads, execution provider and, for Caffe2, the versions it ran with.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs import data, runtimes
from jobs.checkpoint import CheckpointError
from jobs.data import normalise
from jobs.device import resolve
from jobs.reporter import reporter_for
from jobs.runtimes import Runtime
from jobs.stage import guarded, main_for
from records.spec import InferSpec


def load_artifacts(folder: Path) -> dict[str, Any]:
    """An export job's ``model.json``, with the folder its artifacts are in."""
    meta_path = folder / "artifacts" / "model.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: no export here ({meta_path} is missing)")
    meta = json.loads(meta_path.read_text())
    meta["folder"] = folder / "artifacts"
    return meta


def time_batches(runtime: Runtime, x: np.ndarray, warmup: int, iters: int) -> dict[str, float]:
    """Latency percentiles and throughput of ``runtime`` on the batch ``x``."""
    times = sorted(runtime.times(x, warmup, iters))

    def pct(q: float) -> float:
        return times[min(len(times) - 1, round(q * (len(times) - 1)))]

    mean = statistics.fmean(times)
    return {
        "latency_p50_ms": 1e3 * pct(0.50),
        "latency_p95_ms": 1e3 * pct(0.95),
        "latency_p99_ms": 1e3 * pct(0.99),
        "latency_mean_ms": 1e3 * mean,
        "images_per_sec": x.shape[0] / mean,
        "iterations": iters,
    }


def logits_of(runtime: Runtime, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate(
        [runtime.run(images[i : i + batch]) for i in range(0, len(images), batch)]
    )


def measure(
    spec: InferSpec, runtime: Runtime, info: dict[str, Any], images: np.ndarray,
    labels: np.ndarray, reference: np.ndarray | None, device: torch.device, reporter,
) -> tuple[list[dict[str, Any]], np.ndarray]:  # fmt: skip
    """One runtime's rows (accuracy and agreement over the test images, then the latency at
    each batch size) and its logits on the test images."""
    name = runtime.name
    logits = logits_of(runtime, images, max(spec.batches))
    if name == "eager":  # the reference: agreement 1, difference 0
        reference = logits
    predicted = logits.argmax(1)
    accuracy = float((predicted == labels).mean())
    agreement = diff = None
    if reference is not None:
        agreement = float((predicted == reference.argmax(1)).mean())
        diff = float(np.abs(logits - reference).max())
    rows = []
    for batch in spec.batches:
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        timing = time_batches(runtime, x, spec.warmup, spec.iters)
        row = {
            "runtime": name, "batch_size": batch, "available": True, "device": str(device),
            **info, **timing, "test_accuracy": accuracy, "test_images": len(labels),
            "top1_agreement_with_eager": agreement, "max_abs_diff_vs_eager": diff,
        }  # fmt: skip
        reporter.report("inference", row)
        rows.append(row)
        print(
            f"{name:<18} batch {batch:>4}: p50 {timing['latency_p50_ms']:8.2f} ms  "
            f"{timing['images_per_sec']:10,.0f} img/s  acc {100 * accuracy:6.2f}%"
            + ("" if agreement is None else f"  agreement {100 * agreement:6.2f}%"),
            flush=True,
        )
    return rows, logits


def run_job(spec: InferSpec) -> list[dict[str, Any]]:
    """Measure every runtime of the spec at every batch size; return the rows reported."""
    out = Path(spec.out_dir)
    device = resolve(spec.device)  # first: a GPU this torch cannot run on is one line
    meta = load_artifacts(Path(spec.source))
    dataset = spec.dataset or meta["dataset"]
    test = data.load(dataset, spec.data_dir, train=False)
    train = data.load(dataset, spec.data_dir, train=True)
    images = normalise(test.images[: spec.test_images or None], test).numpy()
    labels = test.labels[: spec.test_images or None].numpy()
    calibration = normalise(train.images[: spec.calibration_images], train).numpy()
    threads = spec.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    reporter = reporter_for(out, spec.job_id, spec.attempt, spec.store)
    reporter.report(
        "start",
        {"spec": {"stage": "infer", "model": meta["model_name"], "dataset": dataset,
                  "gpu_type": spec.gpu_type}, "world_size": 1, "resumed_from": [0, 0]},
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    setting = runtimes.Setting(
        meta, device, threads, calibration, spec.caffe2_python, out / "caffe2.stderr.log"
    )
    for name in spec.runtimes:
        runtime = runtimes.create(name, setting)
        try:
            info = runtime.prepare()
        except BaseException as exc:
            runtime.close()  # whatever prepare had started
            if not isinstance(exc, runtimes.Unavailable):
                raise
            row = {"runtime": name, "batch_size": 0, "available": False, "reason": str(exc)}
            reporter.report("inference", row)
            rows.append(row)
            print(f"{name:<18} unavailable: {exc}", flush=True)
            continue
        try:
            measured, logits = measure(
                spec, runtime, info, images, labels, reference, device, reporter
            )
        finally:
            runtime.close()
        rows += measured
        if name == "eager":
            reference = logits
    reporter.report("final", {"status": "succeeded"})
    return rows


def execute(spec: InferSpec) -> tuple[int, int | None]:
    return guarded(spec, run_job, user_errors=(CheckpointError, data.DataError))


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("infer", __doc__.splitlines()[0], execute, argv)


if __name__ == "__main__":
    sys.exit(main())
