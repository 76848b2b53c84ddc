"""A job's spec: one dataclass per stage, and every exit code a job ends with.

The planner builds a spec, the store keeps its ``to_dict``, the launcher writes its
``to_json`` into the job folder as ``spec.json``, and the job reads it back with ``load``.
No torch here: the harness builds and checks specs on a login node.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field, fields, replace
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, ClassVar

from records.errors import SpecError, UserError
from records.fields import (
    check,
    matching,
    non_negative,
    number,
    one_of,
    option,
    per_class,
    positive,
    settable,
)

# -- exit codes: how a job ends, and what a launcher does about it ------------------------
EXIT_OK = 0
EXIT_FAILED = 1  # an error in the job itself: a traceback in its stderr
EXIT_USER_ERROR = 2  # bad input (spec, data, checkpoint): one line on stderr, not retried
EXIT_DIVERGED = 3  # a non-finite loss: not retried
EXIT_PARITY = 4  # export: ONNX Runtime and PyTorch disagree beyond the tolerance
EXIT_ALREADY_RUNNING = 5  # another process holds the job folder: this one did nothing
EXIT_REQUEUE = 75  # EX_TEMPFAIL: preempted or out of time, checkpointed; requeue me
# A failure of the host or its network, not of the job (a rendezvous or connection error, a
# collective timeout): the SLURM launcher retries it on another host (launcher.slurm.max_retries)
EXIT_HOST = 76

STAGES = ("train", "transfer", "export", "infer")
DATASETS = ("cifar10", "cifar100", "fashion-mnist", "synthetic")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE = matching(DEVICE_PATTERN, "auto, cpu, cuda or cuda:N")
FREEZE_PATTERN = re.compile(r"^(none|backbone|\d+)$")
# The results store named by the user's environment: the harness's default, and the store a
# job started by hand reports to (a launched job finds its store in its spec instead).
STORE_ENV = "RESNEST_BENCH_STORE"
# The store a launched job is given when it must not open the store itself: a SQLite store,
# which only processes of the harness's host may write (WAL needs one host; a network
# filesystem may not hold WAL at all). Its records reach the store through its outbox, which
# the harness collects (``harness.collect``).
OUTBOX_ONLY = "outbox"
SPEC_FILE = "spec.json"  # a job's spec, in its folder


def check_device(device: str) -> str:
    """The one rule for the device a job may ask for; the harness checks it at plan time."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise SpecError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    return device


def store_from_environment() -> str | None:
    """The store the user's environment names, if any (the only place it is read)."""
    return os.environ.get(STORE_ENV) or None


def reporting_store(store: str | None) -> str | None:
    """The store a job with this spec value writes to itself (None: its outbox alone)."""
    return None if store == OUTBOX_ONLY else store


@per_class
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


_SCALARS: dict[Any, str] = {None: "null", True: "true", False: "false"}


def _json(value: Any) -> str:
    """``json.dumps(value)``, without its call overhead for the strings and numbers that are
    most of a spec (thousands of spec files a sweep)."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return int.__repr__(value)
    if value is None or kind is bool:
        return _SCALARS[value]
    return json.dumps(value)


def _plain(value: Any) -> Any:
    """A copy of a spec's value (JSON data: lists, dicts, strings, numbers, None)."""
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


@dataclass
class _Spec:
    """What every job has: its folder, its identity and where it reports."""

    stage: ClassVar[str]
    out_dir: str = ""
    job_id: str = ""
    attempt: int = 0
    gpu_type: str | None = None  # the sweep's name for the GPU type the job asked for
    # The results store's URL (never with a password); OUTBOX_ONLY: the outbox alone, which
    # the harness collects; None (a spec written by hand): the store of the environment
    store: str | None = None
    # The GPU type's job environment (setup lines, python, env), as the launcher applied it
    environment: dict[str, Any] | None = None
    # When the launcher handed this attempt to its queue (Unix time): where the job's queue
    # wait begins, carried into its start record so that an ingest recovers it too
    submitted_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data, its lists and dicts copies (``dataclasses.asdict`` does
        the same, ten times slower: a sweep writes thousands of specs)."""
        return {"stage": self.stage, **{name: _plain(getattr(self, name))
                                        for name in _field_names(type(self))}}  # fmt: skip

    def to_json(self) -> str:
        """The spec file's text: one field per line, in name order."""
        data = {
            "stage": self.stage,
            **{name: getattr(self, name) for name in _field_names(type(self))},
        }
        lines = [f'  "{key}": {_json(data[key])}' for key in sorted(data)]  # names: [a-z_]
        return "{\n" + ",\n".join(lines) + "\n}\n"

    def with_(self, **changes: Any) -> Any:
        return replace(self, **changes)


@dataclass
class TrainSpec(_Spec):
    stage: ClassVar[str] = "train"
    out_dir: str = option(
        "", flag="--out", help="job folder: checkpoints, outbox.jsonl, logs (required)"
    )
    model: str = option("", help="a name from `resnest-bench models`")
    dataset: str = option(
        "", help="cifar10, cifar100, fashion-mnist or synthetic (a generated smoke set)"
    )
    recipe: str = option("study", help="study (the default) or fast")
    # The recipe's fields set by --set KEY=VALUE, --epochs, --batch-size and --lr
    overrides: dict[str, Any] = field(default_factory=dict)
    stem: str | None = option(
        None, parse=one_of(("deep", "classic", "cifar")), help="swap the stem"
    )
    data_dir: str = option(
        "data",
        help="dataset folder (default: ./data); for fashion-mnist, Debian's "
        "/usr/share/datasets/fashion-mnist works as it is",
    )
    download: bool = option(
        False, switch=True, help="download a missing CIFAR dataset into --data-dir"
    )
    device: str = option("auto", help="auto (CUDA if present), cuda or cpu")
    seed: int = option(0, parse=int)
    checkpoint_every: int = option(1, parse=int, help="epochs between checkpoints (default 1)")
    check_every: int = option(
        20,
        parse=int,
        help="steps between checks for SIGTERM/SIGUSR1 and a non-finite loss (default 20; "
        "each check waits for the device)",
    )
    keep_checkpoints: int = 3
    target_accuracy: float | None = option(
        None, parse=float, help="report the time to reach this test accuracy (a fraction, e.g. 0.9)"
    )
    max_steps: int | None = option(None, parse=int, help="cap the steps of each epoch (smoke runs)")
    expect_gpu: str | None = option(
        None,
        metavar="NAME",
        help="flag the run if the GPU's name does not contain NAME (e.g. V100), or if NAME is "
        "cpu and it ran on a GPU",
    )
    telemetry_interval: float = option(
        1.0,
        parse=float,
        metavar="S",
        help="seconds between GPU telemetry samples (NVML; the CPU and process memory without "
        "it); 0 turns telemetry off (default 1)",
    )

    def __post_init__(self) -> None:
        for name in ("model", "dataset"):
            if not getattr(self, name):
                raise SpecError(f"{name}: required")
        check_device(self.device)


@dataclass
class TransferSpec(TrainSpec):
    stage: ClassVar[str] = "transfer"
    init_from: str = option(
        "",
        flag="--from",
        help="training checkpoint, or a training job folder (its latest valid checkpoint)",
    )
    freeze: str = option(
        "none", help="none (fine-tune all, the default), backbone, or N: stem and first N stages"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.init_from:
            raise SpecError("a transfer job needs init_from: a training checkpoint or job folder")
        if not FREEZE_PATTERN.match(str(self.freeze)):
            raise SpecError(
                f"freeze: expected none, backbone or a number of stages, got {self.freeze!r}"
            )


@dataclass
class _DeploySpec(_Spec):
    """An export or inference job. Its options (``options()``) are the ones a sweep sets
    through ``export_options`` / ``infer_options``; they are checked by the same parser of
    each value as the job's command line (``records.fields``), so a plan and a job refuse a
    value in the same words."""

    out_dir: str = option("", flag="--out", required=True, by_harness=True,
                          help="job folder (artifacts/, outbox.jsonl)")  # fmt: skip
    job_id: str = option("", by_harness=True, help="the sweep's id of this job")
    attempt: int = option(0, parse=non_negative, by_harness=True, help="the attempt number")
    gpu_type: str | None = option(
        None, by_harness=True, help="the sweep's name for the GPU type asked for"
    )
    dataset: str | None = option(  # default: the trained network's dataset
        None, by_harness=True, help="test images (default: the network's dataset)"
    )
    data_dir: str = option("data", by_harness=True)

    def __post_init__(self) -> None:
        check(type(self), self.options())

    def options(self) -> dict[str, Any]:
        """The options a sweep may set, as the job's parser names them."""
        return {name: getattr(self, name) for name in settable_options(self.stage)}


@dataclass
class ExportSpec(_DeploySpec):
    stage: ClassVar[str] = "export"
    sources: list[str] = option(
        default_factory=list, flag="--from", many=True, required=True, metavar="SOURCE",
        by_harness=True,
        help="a training or transfer job folder (its latest valid checkpoint) or a checkpoint; "
        "several job folders: export the one with the best final test accuracy",
    )  # fmt: skip
    parity_images: int = option(256, parse=positive)
    tolerance: float = option(1e-4, parse=number(float, 0), help="max |logit diff|")
    no_aoti: bool = option(False, switch=True, help="skip the AOTInductor package")
    aoti_device: str = option(
        "auto",
        parse=DEVICE,
        help="device the AOTInductor package is compiled for: cpu, cuda (default: cuda if "
        "there is one)",
    )


RUNTIMES = ("eager", "compile", "aoti", "onnxruntime", "onnxruntime-int8", "onnxruntime-int8-all",
            "onnxruntime-int8-nogemm", "onnxruntime-int8-s8", "caffe2",
            "eager-torch1.10")  # fmt: skip
# What an infer job runs unless told: one INT8 scheme, and not PyTorch eager of the study's
# era; the deployment bench asks for those (the other INT8 schemes show what stands in the
# way of INT8; eager in torch 1.10.2 needs the Caffe2 interpreter and answers a historical
# question)
DEFAULT_RUNTIMES = ("eager", "compile", "aoti", "onnxruntime", "onnxruntime-int8", "caffe2")
DEFAULT_BATCHES = (1, 8, 64, 256)


@dataclass
class InferSpec(_DeploySpec):
    stage: ClassVar[str] = "infer"
    source: str = option("", flag="--from", required=True, by_harness=True,
                         help="an export job's folder")  # fmt: skip
    device: str = option("auto", parse=DEVICE, by_harness=True)
    runtimes: list[str] = option(
        default_factory=lambda: list(DEFAULT_RUNTIMES), many=True, parse=one_of(RUNTIMES)
    )
    batches: list[int] = option(
        default_factory=lambda: list(DEFAULT_BATCHES), many=True, parse=positive
    )
    warmup: int = option(3, parse=non_negative)
    iters: int = option(20, parse=positive)
    threads: int | None = option(None, parse=positive, help="default: torch's own thread count")
    test_images: int = option(0, parse=non_negative, help="0: the whole test set")
    calibration_images: int = option(256, parse=positive)
    caffe2_python: str = option(
        "",
        help="the Caffe2 runtime's interpreter (default: $RESNEST_BENCH_CAFFE2_PYTHON, else "
        "where scripts/caffe2-env.sh up puts it)",
    )


Spec = TrainSpec | TransferSpec | ExportSpec | InferSpec
SPECS: dict[str, type[Any]] = {
    cls.stage: cls for cls in (TrainSpec, TransferSpec, ExportSpec, InferSpec)
}


def settable_options(stage: str) -> tuple[str, ...]:
    """The option names a sweep may set for a job of ``stage`` (as in cluster.yaml)."""
    return settable(SPECS[stage])


def check_options(stage: str, options: dict[str, Any]) -> None:
    """A sweep's ``export_options`` / ``infer_options`` checked for a job of ``stage`` as
    its command line would check them: OptionError naming the option otherwise."""
    check(SPECS[stage], options)


# The field of a job's spec naming the job folders it reads (its parents'), by stage
INPUT_FIELDS = {"transfer": "init_from", "export": "sources", "infer": "source"}


def inputs_of(stage: str, folders: list[str]) -> dict[str, Any]:
    """The spec field of a ``stage`` job that names the job folders it reads (its parents'),
    set to ``folders``."""
    name = INPUT_FIELDS.get(stage)
    if name is None:
        raise SpecError(f"a {stage} job reads from no other job")
    return {name: list(folders) if name == "sources" else folders[0]}


def from_dict(data: dict[str, Any]) -> Spec:
    """The spec a dict describes (as ``to_dict`` wrote it); its ``stage`` picks the class."""
    data = dict(data)
    stage = data.pop("stage", "train")
    if stage not in SPECS:
        raise SpecError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    cls = SPECS[stage]
    unknown = sorted(set(data).difference(_field_names(cls)))
    if unknown:
        raise SpecError(f"unknown {stage} spec fields: {', '.join(unknown)}")
    return cls(**data)


def save(path: str | Path, text: str) -> Path:
    """Write a spec file's text (``to_json``) whole: into a file of this process's own next
    to it, then renamed over it (the ranks of a job on several nodes may write the same one
    at once). The job's folder is made if need be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> Spec:
    """The spec of a ``spec.json``; a missing or unreadable file is a SpecError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: not a spec (a JSON object)")
    try:
        return from_dict(data)
    except (UserError, TypeError) as exc:  # TypeError: a field of the wrong shape
        raise SpecError(f"{path}: {exc}") from None
