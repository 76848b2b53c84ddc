"""The inference job: the exported network in each runtime, side by side.

Runtimes: PyTorch eager, ``torch.compile``, the AOTInductor package, ONNX Runtime (CPU
execution provider; CUDA and TensorRT providers when present), ONNX Runtime with static INT8
quantization (QDQ, per-channel weights, calibrated on training images), and Caffe2 through
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
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import resnest
from jobs import data, gpu_arch
from jobs.checkpoint import CheckpointError
from jobs.data import normalise
from jobs.reporter import reporter_for
from jobs.runtimes import onnx_session
from jobs.stage import guarded, main_for
from records.spec import InferSpec


class Unavailable(Exception):
    """A runtime that cannot run here; the message says why."""


def load_artifacts(folder: Path) -> dict[str, Any]:
    meta_path = folder / "artifacts" / "model.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: no export here ({meta_path} is missing)")
    meta = json.loads(meta_path.read_text())
    meta["folder"] = folder / "artifacts"
    return meta


def eager_model(meta: dict[str, Any]) -> torch.nn.Module:
    model = resnest.create(
        meta["model_name"], num_classes=meta["num_classes"], stem=meta.get("stem") or None
    )
    state = torch.load(meta["folder"] / "model.state_dict.pt", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


class CalibrationImages:
    """ONNX Runtime's calibration reader over a few training images."""

    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self.batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"images": batch}


def quantize_int8(onnx_path: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = onnx_path.with_name("model.prep.onnx")
    quant_pre_process(str(onnx_path), str(prepared))
    out = onnx_path.with_name("model.int8.onnx")
    quantize_static(
        str(prepared),
        str(out),
        CalibrationImages(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink(missing_ok=True)
    return out


def isolated(code: str, what: str, timeout: float = 600) -> None:
    """Run ``code`` in a child Python first, so that native code that crashes (AOTInductor
    packages have died of SIGSEGV on some torch builds) costs its runtime's row, not the job."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{what} did not run one batch within {timeout:.0f} s") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise Unavailable(f"{what} crashed the process that ran it ({name})")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise Unavailable(f"{what} failed to run: {lines[-1] if lines else done.returncode}")


Runtime = tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]


def build_runtime(
    name: str,
    meta: dict[str, Any],
    device: torch.device,
    threads: int,
    calibration: np.ndarray,
    caffe2_python: str = "",
    log: Path | None = None,
) -> Runtime:
    """A function from an fp32 NCHW batch to logits, and what to record about the runtime.
    The function may have a ``times(x, warmup, iters)`` of its own that measures where the
    work happens (Caffe2, in its child process, whose messages go to ``log``), and a
    ``close()``."""
    if name in ("eager", "compile", "aoti"):
        return torch_runtime(name, meta, device, threads, calibration)
    if name in ("onnxruntime", "onnxruntime-int8"):
        return onnx_runtime(name, meta, device, threads, calibration)
    if name == "caffe2":
        from jobs.caffe2_runtime import Caffe2Error, Caffe2Runtime

        path = meta["folder"] / "model.caffe2.onnx"
        try:
            runtime = Caffe2Runtime(
                path, log or Path("caffe2.stderr.log"),
                Path(caffe2_python) if caffe2_python else None, threads,
            )  # fmt: skip
        except Caffe2Error as exc:
            raise Unavailable(str(exc)) from None
        return runtime, {"provider": "caffe2 CPU", "threads": threads, "device": "cpu",
                         "bytes": path.stat().st_size, "versions": runtime.versions,
                         "prepare_s": runtime.prepare_s}  # fmt: skip
    raise ValueError(f"unknown runtime {name!r}")


def torch_runtime(
    name: str, meta: dict[str, Any], device: torch.device, threads: int, calibration: np.ndarray
) -> Runtime:
    folder = meta["folder"]
    if name == "aoti":
        from torch._inductor import aoti_load_package

        path = folder / "model.aoti.pt2"
        if not path.is_file():
            raise Unavailable(f"no AOTInductor package in {folder} (exported with --no-aoti)")
        compiled_for = meta.get("aoti_device") or "cpu"
        if torch.device(compiled_for).type != device.type:
            raise Unavailable(
                f"the AOTInductor package was compiled for {compiled_for}; this job runs "
                f"on {device.type} (export with --aoti-device {device.type})"
            )
        isolated(
            f"import torch\nfrom torch._inductor import aoti_load_package\n"
            f"model = aoti_load_package({str(path)!r})\n"
            f"x = torch.zeros{(2, *calibration.shape[1:])!r}.to({str(device)!r})\n"
            f"model(x)\ntorch.cuda.synchronize() if x.is_cuda else None\n",
            what="the AOTInductor package",
        )
        model = aoti_load_package(str(path))
        size = path.stat().st_size
    else:
        model = eager_model(meta).to(device)
        size = (folder / "model.state_dict.pt").stat().st_size
        if name == "compile":
            model = torch.compile(model)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(x).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out.cpu().numpy()

    return run, {"provider": f"torch {device.type}", "threads": threads, "bytes": size}


def onnx_runtime(
    name: str, meta: dict[str, Any], device: torch.device, threads: int, calibration: np.ndarray
) -> Runtime:
    import onnxruntime as ort

    path = meta["folder"] / "model.onnx"
    if name == "onnxruntime-int8":
        path = quantize_int8(path, calibration)
    available = ort.get_available_providers()
    providers = [
        p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available
    ]
    providers = (providers if device.type == "cuda" else []) + ["CPUExecutionProvider"]
    session = onnx_session(path, providers, threads)
    used = session.get_providers()[0]

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"images": x})[0]

    return run, {"provider": used, "threads": threads, "bytes": path.stat().st_size}


def time_batches(run, x: np.ndarray, warmup: int, iters: int) -> dict[str, float]:
    if hasattr(run, "times"):
        times = list(run.times(x, warmup, iters))
    else:
        for _ in range(warmup):
            run(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
    times.sort()

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


def logits_of(run, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([run(images[i : i + batch]) for i in range(0, len(images), batch)])


def measure(
    spec: InferSpec, name: str, run, info: dict[str, Any], images: np.ndarray,
    labels: np.ndarray, reference: np.ndarray | None, device: torch.device, reporter,
) -> tuple[list[dict[str, Any]], np.ndarray]:  # fmt: skip
    """One runtime's rows (accuracy and agreement over the test images, then the latency at
    each batch size) and its logits on the test images."""
    logits = logits_of(run, images, max(spec.batches))
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
        timing = time_batches(run, x, spec.warmup, spec.iters)
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
    device = torch.device(spec.device if spec.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))  # fmt: skip
    gpu_arch.check(device)  # first: a GPU this torch cannot run on is one line, at once
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
    for name in spec.runtimes:
        try:
            run, info = build_runtime(
                name, meta, device, threads, calibration, spec.caffe2_python,
                out / "caffe2.stderr.log",
            )  # fmt: skip
        except Unavailable as exc:
            row = {"runtime": name, "batch_size": 0, "available": False, "reason": str(exc)}
            reporter.report("inference", row)
            rows.append(row)
            print(f"{name:<18} unavailable: {exc}", flush=True)
            continue
        try:
            measured, logits = measure(
                spec, name, run, info, images, labels, reference, device, reporter
            )
        finally:
            getattr(run, "close", lambda: None)()
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
