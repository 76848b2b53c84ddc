"""The runtimes an exported network is deployed in, each a class registered by name.

A runtime is made from a ``Setting`` (what the export wrote, the device, the threads), then:

- ``prepare()`` loads the model and returns what to record about the runtime (provider,
  threads, bytes on disk, ...); it raises ``Unavailable``, with the reason and how to get it,
  where the runtime cannot run here, and leaves nothing running when it does;
- ``run(x)`` maps an fp32 NCHW batch to logits, the device synchronised;
- ``times(x, warmup, iters)`` gives seconds per ``run`` after the warm-up; a runtime that
  runs elsewhere (Caffe2, in its child process) measures where the work happens;
- ``close()`` frees what ``prepare`` took, and may be called more than once.

The names are ``records.spec.RUNTIMES``, the infer job's choices; ``tests/test_layers.py``
checks that the two agree.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from jobs.checkpoint import CheckpointError, model_from


class Unavailable(Exception):
    """A runtime that cannot run here; the message says why."""


@dataclass
class Setting:
    """What a runtime runs and where: an export's ``model.json`` (``artifacts``, with its
    ``folder``), the device and threads, training images to calibrate INT8 on, and for Caffe2
    its interpreter and a log for its messages."""

    artifacts: dict[str, Any]
    device: torch.device
    threads: int
    calibration: np.ndarray
    caffe2_python: str = ""
    log: Path | None = None

    @property
    def folder(self) -> Path:
        return Path(self.artifacts["folder"])


class Runtime(ABC):
    """One way to run the exported network (see the module's docstring for the verbs)."""

    name: ClassVar[str]

    def __init__(self, setting: Setting) -> None:
        self.setting = setting

    @abstractmethod
    def prepare(self) -> dict[str, Any]:
        """Load the model; return what to record about the runtime. ``Unavailable`` if it
        cannot run here."""

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits of an fp32 NCHW batch, once the work is done."""

    def times(self, x: np.ndarray, warmup: int, iters: int) -> list[float]:
        """Seconds per ``run`` of ``x``, after ``warmup`` untimed ones."""
        for _ in range(warmup):
            self.run(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            self.run(x)
            times.append(time.perf_counter() - start)
        return times

    def close(self) -> None:  # noqa: B027 (most runtimes hold nothing to free)
        """Free what ``prepare`` took."""


R = TypeVar("R", bound=type[Runtime])
RUNTIMES: dict[str, type[Runtime]] = {}


def register(name: str) -> Callable[[R], R]:
    def add(cls: R) -> R:
        cls.name = name
        RUNTIMES[name] = cls
        return cls

    return add


def create(name: str, setting: Setting) -> Runtime:
    """The runtime called ``name``, not yet prepared."""
    try:
        return RUNTIMES[name](setting)
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None


def onnx_session(path: Path, providers: list[str] | None = None, threads: int | None = None):
    """An ONNX Runtime session; a file that is not a valid ONNX model is a one-line error."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise CheckpointError(f"{path}: not a valid ONNX model: {str(e).splitlines()[0]}") from None
    except Exception as exc:  # unreadable protobuf and the like
        raise CheckpointError(f"{path}: not a valid ONNX model: {exc}") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


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


# -- PyTorch ---------------------------------------------------------------------------------


@register("eager")
class Eager(Runtime):
    """PyTorch eager on the export's state dict."""

    model: Callable[[torch.Tensor], torch.Tensor]

    def prepare(self) -> dict[str, Any]:
        self.model = self.load()
        return {"provider": f"torch {self.setting.device.type}",
                "threads": self.setting.threads, "bytes": self.size()}  # fmt: skip

    def load(self) -> Callable[[torch.Tensor], torch.Tensor]:
        weights = torch.load(self.setting.folder / "model.state_dict.pt", weights_only=True)
        return model_from(self.setting.artifacts, weights).to(self.setting.device)

    def size(self) -> int:
        return (self.setting.folder / "model.state_dict.pt").stat().st_size

    def run(self, x: np.ndarray) -> np.ndarray:
        device = self.setting.device
        with torch.no_grad():
            out = self.model(torch.from_numpy(x).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out.cpu().numpy()


@register("compile")
class Compiled(Eager):
    """``torch.compile`` of the eager network."""

    def load(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return torch.compile(super().load())


@register("aoti")
class AOTInductor(Eager):
    """The export's AOTInductor package, compiled ahead of time for one device type."""

    def path(self) -> Path:
        return self.setting.folder / "model.aoti.pt2"

    def size(self) -> int:
        return self.path().stat().st_size

    def load(self) -> Callable[[torch.Tensor], torch.Tensor]:
        from torch._inductor import aoti_load_package

        path, device = self.path(), self.setting.device
        if not path.is_file():
            raise Unavailable(
                f"no AOTInductor package in {self.setting.folder} (exported with --no-aoti)"
            )
        compiled_for = self.setting.artifacts.get("aoti_device") or "cpu"
        if torch.device(compiled_for).type != device.type:
            raise Unavailable(
                f"the AOTInductor package was compiled for {compiled_for}; this job runs "
                f"on {device.type} (export with --aoti-device {device.type})"
            )
        shape = (2, *self.setting.calibration.shape[1:])
        isolated(
            f"import torch\nfrom torch._inductor import aoti_load_package\n"
            f"model = aoti_load_package({str(path)!r})\n"
            f"x = torch.zeros{shape!r}.to({str(device)!r})\n"
            f"model(x)\ntorch.cuda.synchronize() if x.is_cuda else None\n",
            what="the AOTInductor package",
        )
        return aoti_load_package(str(path))


# -- ONNX Runtime ----------------------------------------------------------------------------


@register("onnxruntime")
class OnnxRuntime(Runtime):
    """ONNX Runtime on the export's ONNX file: TensorRT and CUDA providers on a GPU where
    this onnxruntime has them, else the CPU provider."""

    def model_path(self) -> Path:
        return self.setting.folder / "model.onnx"

    def prepare(self) -> dict[str, Any]:
        import onnxruntime as ort

        path = self.model_path()
        available = ort.get_available_providers()
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        providers = (gpu if self.setting.device.type == "cuda" else []) + ["CPUExecutionProvider"]
        self.session = onnx_session(path, providers, self.setting.threads)
        return {"provider": self.session.get_providers()[0], "threads": self.setting.threads,
                "bytes": path.stat().st_size}  # fmt: skip

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": x})[0]


class CalibrationImages:
    """ONNX Runtime's calibration reader over a few training images."""

    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self.batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"images": batch}


# How each INT8 runtime quantizes: which ops, how activation ranges are found, and the
# activations' type. Weights are s8 per output channel in all of them. Measured on the
# ResNeSt-50s (``bench/deploy_latency.py``; the README's INT8 section): the first scheme,
# every op ORT can quantize with min-max ranges, lost most of the bottleneck network's
# accuracy (its classifier's logits and split attention's products outrun an 8-bit range);
# convolutions alone, with ranges at the 99.99th percentile, keep it. u8 activations with s8
# weights are the pair ONNX Runtime's CPU kernels run on VNNI/AMX; s8 activations are kept as
# a scheme to show what leaving that pair costs.
INT8_SCHEMES: dict[str, dict[str, Any]] = {
    "onnxruntime-int8": {"ops": ["Conv"], "calibration": "Percentile", "activations": "u8"},
    "onnxruntime-int8-all": {"ops": None, "calibration": "MinMax", "activations": "u8"},
    "onnxruntime-int8-nogemm": {
        "ops": None,
        "calibration": "Percentile",
        "activations": "u8",
        "float": ["Gemm"],
    },
    "onnxruntime-int8-s8": {"ops": ["Conv"], "calibration": "Percentile", "activations": "s8"},
}
PERCENTILE = 99.99


def quantize_int8(
    onnx_path: Path, calibration: np.ndarray, scheme: str = "onnxruntime-int8"
) -> Path:
    """Static INT8 (QDQ) of an ONNX file by ``INT8_SCHEMES[scheme]``, calibrated on
    ``calibration``; written beside it as ``model.SCHEME.onnx``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    key = (str(onnx_path), onnx_path.stat().st_mtime_ns, scheme, hash(calibration.tobytes()))
    done = _QUANTIZED.get(key)
    if done is not None and done.exists():  # the same file, scheme and images: made already
        return done
    how = INT8_SCHEMES[scheme]
    prepared = onnx_path.with_name(f"model.{scheme}.prep.onnx")
    quant_pre_process(str(onnx_path), str(prepared))
    kept = set(how.get("float", []))
    graph = onnx.load(str(prepared), load_external_data=False).graph
    out = onnx_path.with_name(f"model.{scheme}.onnx")
    method = getattr(CalibrationMethod, how["calibration"])
    quantize_static(
        str(prepared),
        str(out),
        CalibrationImages(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=how["ops"],
        nodes_to_exclude=[n.name for n in graph.node if n.op_type in kept],
        per_channel=True,
        activation_type=QuantType.QUInt8 if how["activations"] == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        extra_options={"CalibPercentile": PERCENTILE} if how["calibration"] == "Percentile" else {},
    )
    prepared.unlink(missing_ok=True)
    _QUANTIZED[key] = out
    return out


_QUANTIZED: dict[tuple, Path] = {}  # what quantize_int8 made in this process


class OnnxRuntimeInt8(OnnxRuntime):
    """ONNX Runtime on the ONNX file quantized to INT8 here by its scheme (``INT8_SCHEMES``),
    calibrated on training images."""

    quantized: Path | None = None

    def model_path(self) -> Path:
        if self.quantized is None:  # once per runtime: calibration is the slow part
            self.quantized = quantize_int8(super().model_path(), self.setting.calibration,
                                           self.name)  # fmt: skip
        return self.quantized

    def graph_ops(self) -> dict[str, int]:
        """How many ops of each type the graph ONNX Runtime runs has, after its own
        optimizations (QDQ pairs fused into QLinear kernels, layout changes): what stays in
        float shows here."""
        import collections
        import tempfile

        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            ort.InferenceSession(str(self.model_path()), options,
                                 providers=["CPUExecutionProvider"])  # fmt: skip
            graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
            return dict(collections.Counter(node.op_type for node in graph.node))


for _scheme in INT8_SCHEMES:
    register(_scheme)(type(f"OnnxRuntimeInt8_{_scheme.replace('-', '_')}", (OnnxRuntimeInt8,),
                           {"__doc__": OnnxRuntimeInt8.__doc__}))  # fmt: skip


# -- Caffe2 ----------------------------------------------------------------------------------


@register("caffe2")
class Caffe2(Runtime):
    """Caffe2's ONNX backend on the export's opset-11 file, in an interpreter of its own
    (``jobs.caffe2_runtime``); latencies are measured inside that process."""

    process: Any = None

    def prepare(self) -> dict[str, Any]:
        from jobs.caffe2_runtime import Caffe2Error, Caffe2Process

        setting = self.setting
        path = setting.folder / "model.caffe2.onnx"
        python = Path(setting.caffe2_python) if setting.caffe2_python else None
        try:
            self.process = Caffe2Process(
                path, setting.log or Path("caffe2.stderr.log"), python, setting.threads
            )
        except Caffe2Error as exc:
            raise Unavailable(str(exc)) from None
        return {"provider": "caffe2 CPU", "threads": setting.threads, "device": "cpu",
                "bytes": path.stat().st_size, "versions": self.process.versions,
                "prepare_s": self.process.prepare_s}  # fmt: skip

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.process(x)

    def times(self, x: np.ndarray, warmup: int, iters: int) -> list[float]:
        return self.process.times(x, warmup, iters)

    def close(self) -> None:
        if self.process is not None:
            self.process.close()


@register("eager-torch1.10")
class EagerOfCaffe2sEra(Caffe2):
    """PyTorch eager as it was when Caffe2 was current: the export's state dict in torch 1.10.2,
    in the Caffe2 interpreter (``jobs.caffe2_runtime``), timed there. Not among the infer
    job's default runtimes (``--runtimes eager-torch1.10`` asks for it): it answers the
    study's own question, Caffe2 against the PyTorch of its release."""

    def prepare(self) -> dict[str, Any]:
        import json
        import tempfile

        from jobs.caffe2_runtime import Caffe2Error, Caffe2Process

        setting = self.setting
        weights = setting.folder / "model.state_dict.pt"
        network = {k: setting.artifacts.get(k) for k in ("model_name", "num_classes", "stem")}
        project = str(Path(__file__).resolve().parents[1])
        spec = {"project": project, "weights": str(weights), **network}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        self.spec = Path(f.name)
        python = Path(setting.caffe2_python) if setting.caffe2_python else None
        log = setting.log or Path("caffe2.stderr.log")
        try:
            self.process = Caffe2Process(self.spec, log, python, setting.threads, eager=True)
        except Caffe2Error as exc:
            self.spec.unlink(missing_ok=True)
            raise Unavailable(str(exc).replace("Caffe2 could not prepare", "torch 1.10.2 "
                                               "could not load")) from None  # fmt: skip
        return {"provider": "torch 1.10.2 cpu", "threads": setting.threads, "device": "cpu",
                "bytes": weights.stat().st_size, "versions": self.process.versions,
                "prepare_s": self.process.prepare_s}  # fmt: skip

    def close(self) -> None:
        super().close()
        if getattr(self, "spec", None) is not None:
            self.spec.unlink(missing_ok=True)
