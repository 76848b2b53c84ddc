"""The records a job emits: the single description of the outbox format.

An outbox (``records.outbox``) is a file of JSON lines, one record each. Every record has the
envelope below; its ``kind`` names one of the structures that follow, which say which keys it
carries. The store (``records.store``) keeps each kind in its table; nothing else has to know
the format.
"""

from __future__ import annotations

from typing import Any, TypedDict

from records.errors import OutboxError


class Envelope(TypedDict):
    kind: str
    job_id: str
    attempt: int
    time: float  # Unix time the record was written
    uid: str  # unique per record: a replayed record is stored once


class Start(TypedDict, total=False):
    """The job began (or resumed): its spec, its world size, where it resumed from."""

    spec: dict[str, Any]  # the spec's to_dict; export and infer name the network they run
    world_size: int
    hosts: list[str]  # training: the host of each rank, in rank order
    rendezvous_s: float | None  # training: seconds to form the process group (None: no group
    # to form, or Ray Train formed it)
    resumed_from: list[int]  # [epoch, step]
    memory_format: str  # training: contiguous | channels_last, as trained
    memory_format_by: str  # recipe (as asked) | measured (the recipe said auto)
    memory_format_step_ms: dict[str, float]  # measured: one step's median ms in each format
    winner_of: list[dict[str, Any]]  # export of a sweep's winner: the ranking it chose from


class Epoch(TypedDict, total=False):
    """One epoch's figures (see ``records.schema.EPOCH_FIELDS`` for the measured ones)."""

    epoch: int
    images: int
    steps: int
    world_size: int
    warmup: bool  # the first epoch of an attempt: left out of medians
    telemetry_source: str  # nvml | cpu | off
    energy_method: str  # counter | power_integral | none


class Event(TypedDict, total=False):
    """Something worth keeping that is not a measurement: a checkpoint, a resume."""

    event: str  # checkpoint | checkpoint_refused | resumed
    path: str
    epoch: int
    step: int
    reason: str


class Telemetry(TypedDict):
    """An epoch's telemetry samples (one dict per sample and GPU)."""

    epoch: int
    samples: list[dict[str, Any]]


class Provenance(TypedDict, total=False):
    """Where and with what the attempt ran (see ``records.schema.provenance``)."""

    host: str
    gpu_name: str
    gpu_uuid: str
    torch: str
    code_version: str
    python: str  # the interpreter that ran the job (sys.executable)
    environment: dict[str, Any] | None  # setup lines, python asked for, variables' values
    code_commit: str | None  # git commit (+dirty) where the code is a checkout
    packages_sha256: str  # sha256 of the installed distributions' name==version list
    packages: str  # that list whole (``records.packages.pack``), kept once per digest
    forward_flops: int  # the network's FLOPs per image, one forward pass at the job's size
    math_mode: str  # fp32 | tf32 | bf16: what the GPU did them in (``jobs.flops``)


class Artifact(TypedDict):
    """A file an export job wrote."""

    artifact: str  # state_dict | onnx | onnx_opset11 | aoti | ...
    path: str
    bytes: int
    sha256: str


class Inference(TypedDict, total=False):
    """One runtime at one batch size; ``available`` False with a ``reason`` if it cannot run."""

    runtime: str
    batch_size: int
    available: bool
    reason: str


class Final(TypedDict, total=False):
    """How the attempt ended; a job's last record."""

    status: str  # succeeded | failed
    reason: str | None
    best_test_acc: float
    final_test_acc: float
    train_time: float
    time_to_target: float | None
    target_accuracy: float | None
    params_sha256: str


KINDS: dict[str, type] = {
    "start": Start,
    "epoch": Epoch,
    "event": Event,
    "telemetry": Telemetry,
    "provenance": Provenance,
    "artifact": Artifact,
    "inference": Inference,
    "final": Final,
}


def achieved_tflops(images_per_sec: float, forward_flops: int) -> float:
    """Training TFLOP/s: each image costs its forward FLOPs three times (the forward pass,
    and the backward pass's two products per layer), the usual count of model FLOPs."""
    return images_per_sec * 3 * forward_flops / 1e12


# Keys a record of each kind cannot do without (the store keys its rows on them).
REQUIRED = {
    "epoch": ("epoch",),
    "artifact": ("path",),
    "inference": ("runtime", "batch_size"),
    "telemetry": ("samples",),
    "final": ("status",),
}


def check(record: Any, where: str = "record") -> dict[str, Any]:
    """A record as the outbox format describes it, or an OutboxError naming ``where``."""
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        raise OutboxError(f"{where}: not an outbox record")
    kind = record["kind"]
    if kind not in KINDS:
        raise OutboxError(f"{where}: unknown record kind {kind!r}")
    missing = [key for key in REQUIRED.get(kind, ()) if key not in record]
    if missing:
        raise OutboxError(f"{where}: a {kind} record without {', '.join(missing)}")
    return record
