"""The command lines of the jobs, built from their specs' fields, and a spec from one.

Each option is a field of its stage's spec (``records.spec``), its flag, help and parser of
a value in the field's metadata (``records.fields``): the parsers here are generated from
those fields. No torch here: the harness builds the same parsers for ``resnest-bench train``
and its siblings. Only the training job's shortcuts into its recipe (``--set``, ``--epochs``,
``--batch-size``, ``--lr``) and ``--spec`` are not fields: they are declared here, once.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from records.errors import SpecError
from records.fields import Opt, options_of
from records.spec import SPECS, Spec, load, store_from_environment

# The training job's options that set its recipe's fields (``overrides``).
RECIPE_SHORTCUTS = {
    "epochs": (int, "override the recipe's epochs"),
    "batch_size": (int, "override the recipe's global batch size (all ranks)"),
    "lr": (float, "override the recipe's learning rate"),
}


def add_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """The options of a job of ``stage``, from its spec's fields."""
    training = stage in ("train", "transfer")
    if training:
        parser.add_argument(
            "--spec", help="read the whole spec from a JSON file (launchers use this)"
        )
    for name, (opt, field) in options_of(SPECS[stage]).items():
        _add_option(parser, name, opt, field)
    if training:
        for name, (kind, text) in RECIPE_SHORTCUTS.items():
            parser.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
        parser.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override any recipe field, e.g. --set milestones=[10,20] --set bf16=true",
        )  # fmt: skip


def _add_option(parser: argparse.ArgumentParser, name: str, opt: Opt, field: Any) -> None:
    flag = opt.flag or "--" + name.replace("_", "-")
    if opt.switch:
        parser.add_argument(flag, dest=name, action="store_true", help=opt.help)
        return
    default = field.default if field.default_factory is dataclasses.MISSING else (
        field.default_factory())  # fmt: skip
    choices = getattr(opt.parse, "choices", None)
    # argparse's own: the choices, or the flag's name (not the field's)
    metavar = opt.metavar or ("{" + ",".join(choices) + "}" if choices else None)
    metavar = metavar or flag.removeprefix("--").replace("-", "_").upper()
    parser.add_argument(
        flag, dest=name, type=opt.parse or str, default=default, nargs="+" if opt.many else None,
        required=opt.required, metavar=metavar, help=opt.help,
    )  # fmt: skip


def parser_for(stage: str, prog: str | None = None, description: str | None = None):
    """The command line of a job of ``stage`` (``python -m jobs.STAGE --help``)."""
    parser = argparse.ArgumentParser(prog=prog or f"python -m jobs.{stage}",
                                     description=description)  # fmt: skip
    add_arguments(parser, stage)
    return parser


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


def spec_from_args(args: argparse.Namespace, stage: str) -> Spec:
    """The spec of a job started by hand: its command line, or the file of ``--spec``."""
    if getattr(args, "spec", None):
        return load(args.spec)
    cls = SPECS[stage]
    values = {name: getattr(args, name) for name in options_of(cls) if hasattr(args, name)}
    if stage in ("export", "infer"):
        return cls(store=store_from_environment(), **values)
    missing = [flag for flag, name in (("--model", "model"), ("--dataset", "dataset"),
                                       ("--out", "out_dir")) if not values[name]]  # fmt: skip
    if missing:
        raise SpecError(f"missing {', '.join(missing)} (or give --spec FILE)")
    overrides = dict(parse_assignment(text) for text in args.overrides)
    for key in RECIPE_SHORTCUTS:
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    out_dir = str(Path(values["out_dir"]).resolve())
    # A job run by hand gets an id from its folder, so its records never mix with another's
    # in a store.
    job_id = hashlib.sha256(out_dir.encode()).hexdigest()[:12]
    return cls(job_id=job_id, overrides=overrides, store=store_from_environment(), **values)
