"""The ``resnest-bench`` command line: the parser (``parser``), the commands that plan, run
and read sweeps (``commands``) and the ones that mend them (``recovery``).

Errors the user can fix (a config, a path, a store) are one line and exit 2, never a
traceback. Start-up stays light: commands import torch and the model zoo only when they run.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from harness.cli.parser import build_parser
from records.errors import UserError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module, _, name = args.func.partition(":")
    command = getattr(importlib.import_module(module), name)
    try:
        with _fewer_collections():
            code = command(args)
    except UserError as exc:
        print(f"resnest-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnest-bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except OSError as exc:  # a file or folder the user named or made: say which and why
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"resnest-bench: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not any(c.__module__.startswith("sqlalchemy") for c in type(exc).__mro__):
            raise
        from records.store import store_problem

        print(f"resnest-bench: error: results store: {store_problem(exc)}", file=sys.stderr)
        return 2
    return code or 0


# New container objects between two runs of the cyclic garbage collector's youngest
# generation (Python's default: 700).
GC_YOUNG = 20_000


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The command with the cyclic collector run less often. A command over a large sweep
    makes millions of short-lived dicts and tuples (the records of 10,000 outboxes, the rows
    of the status table), and at the default threshold the collector walks the young ones
    every 700 allocations: 10-20% of the first ``status`` of a 10,000-job sweep
    (``bench/harness_scale.py``). The memory held back is at most that many objects."""
    old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


if __name__ == "__main__":
    sys.exit(main())
