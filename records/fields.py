"""A job's options, each declared once: as a field of its stage's spec (``records.spec``),
with its help, its parser of a value, its choices and its flag in the field's metadata
(``option``). From those fields ``records.options`` builds the job's command line, and
``check`` checks a sweep's ``export_options`` / ``infer_options`` at plan time: both with
the same parser of each value, so that a plan and a job refuse a value in the same words,
and no value travels through a command line to be checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

from records.errors import OptionError

Parse = Callable[[str], Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Opt:
    """How a spec field appears on the job's command line, and whether a sweep may set it."""

    help: str | None = None
    parse: Parse | None = None  # text -> value; raises argparse.ArgumentTypeError (None: text)
    flag: str | None = None  # the flag when it is not --FIELD-NAME
    metavar: str | None = None
    many: bool = False  # one value or more (nargs="+")
    switch: bool = False  # a flag without a value (store_true)
    required: bool = False
    # Set by the launcher from the sweep itself (sources, folder, identity), never through a
    # sweep's export_options / infer_options
    by_harness: bool = False


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **opt: Any) -> Any:
    """A spec field that is a job option (``Opt``'s fields as keywords)."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={"option": Opt(**opt)}
    )


def per_class(compute: Callable[[type], T]) -> Callable[[type], T]:
    """``compute`` of a class, once per class (``functools.cache`` would do, but a type
    checker will not take a dataclass's class for a hashable key)."""
    found: dict[type, T] = {}

    def cached(cls: type) -> T:
        if cls not in found:
            found[cls] = compute(cls)
        return found[cls]

    return cached


@per_class
def options_of(cls: type) -> dict[str, tuple[Opt, dataclasses.Field]]:
    """The options of a spec class, in the order of its fields: name -> (Opt, field)."""
    return {
        f.name: (f.metadata["option"], f) for f in dataclasses.fields(cls) if "option" in f.metadata
    }


@per_class
def settable(cls: type) -> tuple[str, ...]:
    """The option names a sweep may set for a job of this spec class (as in cluster.yaml)."""
    return tuple(name for name, (opt, _) in options_of(cls).items() if not opt.by_harness)


# -- parsers of a value -------------------------------------------------------------------


def number(kind: type, low: float, inclusive: bool = True) -> Parse:
    """A whole number (``int``) or a number (``float``) at least (or above) ``low``."""
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


def one_of(choices: tuple[str, ...]) -> Parse:
    """One of ``choices`` (the message argparse gives, the same on every Python)."""

    def parse(text: str) -> str:
        if text not in choices:
            listed = ", ".join(map(repr, choices))
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {listed})")
        return text

    parse.__name__ = "one of " + ", ".join(choices)
    parse.choices = choices  # type: ignore[attr-defined]  # what --help lists
    return parse


def matching(pattern: Any, expected: str) -> Parse:
    """A string that ``pattern`` (a compiled regular expression) matches."""

    def parse(text: str) -> str:
        if not pattern.match(text):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return text

    parse.__name__ = expected
    return parse


positive = number(int, 1)
non_negative = number(int, 0)


# -- a sweep's options, checked at plan time ----------------------------------------------


def check(cls: type, options: dict[str, Any]) -> None:
    """Raise OptionError, naming the option, on anything in ``options`` (a sweep's, or a
    spec's own) that the job's command line would refuse, in the words it would use. (Every
    job of a sweep has the same options: each set is checked once, in name order.)"""
    key = (cls, json.dumps(options, sort_keys=True, default=repr))
    if key not in _CHECKED:
        _check(cls, json.loads(key[1]))
        _CHECKED.add(key)


_CHECKED: set[tuple[type, str]] = set()


def _check(cls: type, options: dict[str, Any]) -> None:
    known = settable(cls)
    declared = options_of(cls)
    for key, value in options.items():
        if key not in known:
            raise OptionError(f"unknown option {key!r}; expected one of {', '.join(known)}")
        if declared[key][0].switch and not isinstance(value, bool):
            raise OptionError(f"{key}: expected true or false, got {value!r}")
        if isinstance(value, dict) or value == []:
            raise OptionError(f"{key}: expected a value or a non-empty list, got {value!r}")
    extra: list[str] = []
    for key, value in options.items():
        opt = declared[key][0]
        if value is None or value is False or opt.switch:
            continue  # left out, as on a command line
        if value is True:
            raise OptionError(f"{key}: expected a value" + (" or a list" if opt.many else ""))
        items = value if isinstance(value, list) else [value]
        if not opt.many:
            items, rest = items[:1], items[1:]
            extra += [str(item) for item in rest]
        for item in items:
            _parse(opt, key, str(item))
    if extra:
        raise OptionError(f"unrecognized arguments: {' '.join(extra)}")


def _parse(opt: Opt, key: str, text: str) -> Any:
    if opt.parse is None:
        return text
    try:
        return opt.parse(text)
    except argparse.ArgumentTypeError as exc:
        raise OptionError(f"{key}: {exc}") from None
