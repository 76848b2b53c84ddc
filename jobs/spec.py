"""A training or transfer job's spec, and its command-line form. No torch here: the harness
builds and prints specs on a login node."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Exit codes a launcher acts on.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_REQUEUE = 75  # EX_TEMPFAIL: preempted or out of time, checkpointed; requeue me


EXIT_ALREADY_RUNNING = 5  # another process holds the job folder: this one did nothing

STAGES = ("train", "transfer")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class SpecError(ValueError):
    """A job spec that cannot run; the message names the field."""


def check_device(device: str) -> str:
    """The one rule for the device a job may ask for; the harness checks it at plan time."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise SpecError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    return device


@dataclass
class TrainSpec:
    model: str
    dataset: str
    out_dir: str
    stage: str = "train"
    recipe: str = "study"
    overrides: dict[str, Any] = field(default_factory=dict)
    stem: str | None = None
    data_dir: str = "data"
    download: bool = False
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 1
    check_every: int = 20  # steps between checks for a stop signal or a non-finite loss
    keep_checkpoints: int = 3
    target_accuracy: float | None = None
    max_steps: int | None = None  # cap on steps per epoch, for smoke runs and benchmarks
    init_from: str | None = None  # transfer: a checkpoint file or a training job's folder
    freeze: str = "none"  # transfer: none | backbone | N (stem and the first N stages)
    job_id: str = ""
    attempt: int = 0
    gpu_type: str | None = None  # the sweep's name for the GPU type the job asked for
    expect_gpu: str | None = None  # a fragment of that GPU's name (e.g. v100), or cpu
    telemetry_interval: float = 1.0  # seconds between samples; 0 turns telemetry off

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise SpecError(f"stage: expected one of {', '.join(STAGES)}, got {self.stage!r}")
        check_device(self.device)
        if self.stage == "transfer" and not self.init_from:
            raise SpecError("a transfer job needs init_from: a training checkpoint or job folder")
        if self.freeze not in ("none", "backbone") and not str(self.freeze).isdigit():
            raise SpecError(
                f"freeze: expected none, backbone or a number of stages, got {self.freeze!r}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainSpec:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SpecError(f"{path}: no such spec file") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_dict(data)


def add_job_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    parser.add_argument("--spec", help="read the whole spec from a JSON file (launchers use this)")
    parser.add_argument("--model", help="a name from `resnest-bench models`")
    parser.add_argument(
        "--dataset", help="cifar10, cifar100, fashion-mnist or synthetic (a generated smoke set)"
    )
    parser.add_argument("--recipe", default="study", help="study (the default) or fast")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument(
        "--batch-size", type=int, help="override the recipe's global batch size (all ranks)"
    )
    parser.add_argument("--lr", type=float, help="override the recipe's learning rate")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field, e.g. --set milestones=[10,20] --set bf16=true",
    )
    parser.add_argument("--stem", choices=("deep", "classic", "cifar"), help="swap the stem")
    parser.add_argument(
        "--data-dir",
        default="data",
        help="dataset folder (default: ./data); for "
        "fashion-mnist, Debian's /usr/share/datasets/fashion-mnist works as it is",
    )
    parser.add_argument(
        "--download", action="store_true", help="download a missing CIFAR dataset into --data-dir"
    )
    parser.add_argument(
        "--out", dest="out_dir", help="job folder: checkpoints, outbox.jsonl, logs (required)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cuda or cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-every", type=int, default=1, help="epochs between checkpoints (default 1)"
    )
    parser.add_argument(
        "--check-every",
        type=int,
        default=20,
        help="steps between checks for SIGTERM/SIGUSR1 and a non-finite loss (default 20; "
        "each check waits for the device)",
    )
    parser.add_argument(
        "--target-accuracy",
        type=float,
        help="report the time to reach this test accuracy (a fraction, e.g. 0.9)",
    )
    parser.add_argument("--max-steps", type=int, help="cap the steps of each epoch (smoke runs)")
    parser.add_argument(
        "--telemetry-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between GPU telemetry samples (NVML; the CPU and process memory without "
        "it); 0 turns telemetry off (default 1)",
    )
    parser.add_argument(
        "--expect-gpu",
        metavar="NAME",
        help="flag the run if the GPU's name does not contain NAME (e.g. V100), or if NAME is "
        "cpu and it ran on a GPU",
    )
    if stage == "transfer":
        parser.add_argument(
            "--from",
            dest="init_from",
            help="training checkpoint, or a training job folder (its latest valid checkpoint)",
        )
        parser.add_argument(
            "--freeze",
            default="none",
            help="none (fine-tune all, the default), backbone, or N: stem and first N stages",
        )


def run_cli(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    job: Callable[[argparse.Namespace], object],
    argv: Sequence[str] | None,
    user_errors: tuple[type[Exception], ...],
) -> int:
    """The command line of an export or inference job: parse, run, and turn a user error
    into one line and exit 2."""
    from jobs.lock import take

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    lock, refused = take(args.out)
    if lock is None:
        return refused
    try:
        job(args)
    except user_errors as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        lock.release()
    return EXIT_OK


def spec_from_args(args: argparse.Namespace, stage: str) -> TrainSpec:
    from jobs.recipe import parse_assignment

    if args.spec:
        return TrainSpec.from_file(args.spec)
    missing = [
        flag
        for flag, value in (
            ("--model", args.model),
            ("--dataset", args.dataset),
            ("--out", args.out_dir),
        )
        if not value
    ]
    if missing:
        raise SpecError(f"missing {', '.join(missing)} (or give --spec FILE)")
    overrides = dict(parse_assignment(text) for text in args.overrides)
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    out_dir = str(Path(args.out_dir).resolve())
    return TrainSpec(
        # A job run by hand gets an id from its folder, so its records never mix with
        # another's in a store.
        job_id=hashlib.sha256(out_dir.encode()).hexdigest()[:12],
        model=args.model,
        dataset=args.dataset,
        out_dir=args.out_dir,
        stage=stage,
        recipe=args.recipe,
        overrides=overrides,
        stem=args.stem,
        data_dir=args.data_dir,
        download=args.download,
        device=args.device,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        check_every=args.check_every,
        target_accuracy=args.target_accuracy,
        max_steps=args.max_steps,
        telemetry_interval=args.telemetry_interval,
        expect_gpu=args.expect_gpu,
        init_from=getattr(args, "init_from", None),
        freeze=getattr(args, "freeze", "none"),
    )
