"""The command lines of the jobs, and a spec from one.

The export and inference options carry their types and ranges. No torch here: the harness
builds the same parsers when it plans a sweep, and parses the sweep's ``export_options`` and
``infer_options`` with them, so that a value the job would refuse stops the plan, not the
job hours later in a queue. The same options reach a launched job as fields of its spec
(``records.spec``), checked by these parsers again.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from records.errors import OptionError, SpecError
from records.spec import (
    DEFAULT_BATCHES,
    DEVICE_PATTERN,
    RUNTIMES,
    SPECS,
    Spec,
    store_from_environment,
)

# Options the launcher sets from the sweep itself (sources, folder, data, identity); every
# other option of a job is the sweep's to set through export_options / infer_options.
SET_BY_THE_HARNESS = ("sources", "source", "out", "dataset", "data_dir", "device", "job_id",
                      "attempt", "gpu_type")  # fmt: skip


def _number(kind: type, low: float, inclusive: bool = True) -> Callable[[str], Any]:
    what = "a whole number" if kind is int else "a number"
    bound = f"at least {low:g}" if inclusive else f"more than {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text}")
        return value

    parse.__name__ = f"{what} {bound}"
    return parse


def _device(text: str) -> str:
    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


positive = _number(int, 1)
non_negative = _number(int, 0)


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """Who a launched export or infer job is: the launcher passes these (jobs.run)."""
    parser.add_argument("--job-id", default="", help="the sweep's id of this job")
    parser.add_argument("--attempt", type=non_negative, default=0, help="the attempt number")
    parser.add_argument("--gpu-type", help="the sweep's name for the GPU type asked for")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="sources", required=True, nargs="+", metavar="SOURCE",
        help="a training or transfer job folder (its latest valid checkpoint) or a checkpoint; "
        "several job folders: export the one with the best final test accuracy",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="job folder: artifacts/, outbox.jsonl")
    parser.add_argument("--dataset", help="test images for the parity check (default: the "
                        "checkpoint's dataset)")  # fmt: skip
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--parity-images", type=positive, default=256)
    parser.add_argument(
        "--tolerance", type=_number(float, 0), default=1e-4, help="max |logit diff|"
    )
    parser.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor package")
    parser.add_argument(
        "--aoti-device", default="auto", type=_device,
        help="device the AOTInductor package is compiled for: cpu, cuda (default: cuda if "
        "there is one)",
    )  # fmt: skip
    add_identity_arguments(parser)


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, help="an export job's folder")
    parser.add_argument("--out", required=True, help="job folder (outbox.jsonl)")
    parser.add_argument("--dataset", help="default: the exported network's dataset")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--batches", nargs="+", type=positive, default=list(DEFAULT_BATCHES))
    parser.add_argument("--warmup", type=non_negative, default=3)
    parser.add_argument("--iters", type=positive, default=20)
    parser.add_argument("--threads", type=positive, help="default: torch's own thread count")
    parser.add_argument("--test-images", type=non_negative, default=0, help="0: the whole test set")
    parser.add_argument("--calibration-images", type=positive, default=256)
    parser.add_argument("--device", default="auto", type=_device)
    parser.add_argument(
        "--caffe2-python", default="",
        help="the Caffe2 runtime's interpreter (default: $RESNEST_BENCH_CAFFE2_PYTHON, else "
        "where scripts/caffe2-env.sh up puts it)",
    )  # fmt: skip
    add_identity_arguments(parser)


ADD_ARGUMENTS = {"export": add_export_arguments, "infer": add_infer_arguments}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise OptionError(message)


@functools.lru_cache(maxsize=8)
def _settable_actions(stage: str) -> dict[str, argparse.Action]:
    """The actions of the options a sweep may set (built once per stage: every export and
    infer spec is checked against them)."""
    parser = _Parser(add_help=False)
    ADD_ARGUMENTS[stage](parser)
    return {a.dest: a for a in parser._actions if a.dest not in SET_BY_THE_HARNESS}


def settable(stage: str) -> list[str]:
    """The option names a sweep may set for a job of ``stage`` (as in cluster.yaml)."""
    return list(_settable_actions(stage))


def to_argv(options: dict[str, Any]) -> list[str]:
    """A sweep's export_options / infer_options as command-line options of the job."""
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        elif value not in (None, False):
            args += [flag, str(value)]
    return args


def check(stage: str, options: dict[str, Any]) -> None:
    """Parse a sweep's options for a job of ``stage`` exactly as the job will; raise
    OptionError naming the option on anything the job would refuse. (Every job of a sweep has
    the same options: each set is parsed once.)"""
    _check_once(stage, json.dumps(options, sort_keys=True, default=repr))


@functools.lru_cache(maxsize=256)
def _check_once(stage: str, text: str) -> None:
    options = json.loads(text)
    known = _settable_actions(stage)
    for key, value in options.items():
        if key not in known:
            raise OptionError(f"unknown option {key!r}; expected one of {', '.join(known)}")
        if known[key].nargs == 0 and not isinstance(value, bool):
            raise OptionError(f"{key}: expected true or false, got {value!r}")
        if isinstance(value, dict) or value == []:
            raise OptionError(f"{key}: expected a value or a non-empty list, got {value!r}")
    parser = _Parser(prog=f"jobs.{stage}", add_help=False)
    ADD_ARGUMENTS[stage](parser)
    try:
        parser.parse_args(["--from", "SOURCE", "--out", "OUT", *to_argv(options)])
    except OptionError as exc:
        # "argument --batches: expected ..." -> "batches: expected ..."
        text = re.sub(r"argument --([\w-]+)(/-\w+)?:", lambda m: m[1].replace("-", "_") + ":",
                      str(exc))  # fmt: skip
        text = text.replace("expected one argument", "expected a value")
        text = text.replace("expected at least one argument", "expected a value or a list")
        raise OptionError(text) from None


# -- training and transfer jobs -------------------------------------------------------------
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


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is a Python literal or a bare string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SpecError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = {"true": True, "false": False}.get(raw.lower(), raw)
    return key.strip(), value


ADD_ARGUMENTS["train"] = lambda parser: add_job_arguments(parser, "train")
ADD_ARGUMENTS["transfer"] = lambda parser: add_job_arguments(parser, "transfer")


def parser_for(stage: str, prog: str | None = None, description: str | None = None):
    """The command line of a job of ``stage`` (``python -m jobs.STAGE --help``)."""
    parser = argparse.ArgumentParser(prog=prog or f"python -m jobs.{stage}",
                                     description=description)  # fmt: skip
    ADD_ARGUMENTS[stage](parser)
    return parser


def spec_from_args(args: argparse.Namespace, stage: str) -> Spec:
    """The spec of a job started by hand: its command line, or the file of ``--spec``."""
    if getattr(args, "spec", None):
        from records.spec import load

        return load(args.spec)
    if stage in ("export", "infer"):
        values = {k: v for k, v in vars(args).items() if k not in ("out", "func", "command")}
        return SPECS[stage](out_dir=args.out, store=store_from_environment(), **values)
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
    transfer = {"init_from": getattr(args, "init_from", None) or "",
                "freeze": getattr(args, "freeze", "none")}  # fmt: skip
    return SPECS[stage](
        # A job run by hand gets an id from its folder, so its records never mix with
        # another's in a store.
        job_id=hashlib.sha256(out_dir.encode()).hexdigest()[:12],
        model=args.model,
        dataset=args.dataset,
        out_dir=args.out_dir,
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
        store=store_from_environment(),
        **(transfer if stage == "transfer" else {}),
    )
