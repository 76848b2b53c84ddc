"""The command-line options of the export and inference jobs, with their types and ranges.

No torch here: the harness builds the same parsers when it plans a sweep, and parses the
sweep's ``export_options`` and ``infer_options`` with them, so that a value the job would
refuse stops the plan, not the job hours later in a queue.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, NoReturn

from jobs.spec import DEVICE_PATTERN

RUNTIMES = ("eager", "compile", "aoti", "onnxruntime", "onnxruntime-int8", "caffe2")
DEFAULT_BATCHES = (1, 8, 64, 256)
# Options the launcher sets from the sweep itself (sources, folder, data, identity); every
# other option of a job is the sweep's to set through export_options / infer_options.
SET_BY_THE_HARNESS = ("source", "out", "dataset", "data_dir", "device", "job_id", "attempt",
                      "gpu_type")  # fmt: skip


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
        "--from", dest="source", required=True, nargs="+", metavar="SOURCE",
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
    add_identity_arguments(parser)


ADD_ARGUMENTS = {"export": add_export_arguments, "infer": add_infer_arguments}


class OptionError(ValueError):
    """An option a job's parser refuses; the message names the option."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise OptionError(message)


def _settable_actions(stage: str) -> dict[str, argparse.Action]:
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
    OptionError naming the option on anything the job would refuse."""
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
