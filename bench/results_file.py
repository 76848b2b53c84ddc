"""What a bench writes with ``--out FILE``: its figures as JSON, beside the conditions they
were measured in, for ``bench/render_readme.py`` to render into the README.

    result = Result("profile_overhead")   # the conditions before: when, commit, CPU, load
    result.figures["paired_pct"] = {...}
    result.write(args.out)                # the load after, the duration; written atomically

The file is replaced whole or not at all, so a bench killed half-way leaves the stored
result it had.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    """The checkout's commit, with ``+changes`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def out_file(value: str) -> Path:
    """``--out``'s type: a file in a folder that exists, checked before a long bench starts."""
    path = Path(value)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {path.parent} for the result {path}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file")
    return path


def spread(values: list[float]) -> dict[str, float | int]:
    """The median of ``values`` with their range and count: how every repeated figure is kept."""
    return {"median": statistics.median(values), "low": min(values), "high": max(values),
            "n": len(values), "values": list(values)}  # fmt: skip


class Result:
    """A bench's figures and the conditions they were measured in."""

    def __init__(self, bench: str) -> None:
        self.started = time.monotonic()
        self.conditions: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": _commit(),
            "cpu_model": _cpu_model(),
            "cores": os.cpu_count(),
            "load_before": list(os.getloadavg()),
            "python": sys.version.split()[0],
            "torch": _version("torch"),
            "command": "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        }
        self.bench = bench
        self.figures: dict[str, Any] = {}

    def write(self, path: str | Path | None) -> None:
        """The result as JSON at ``path`` (nothing when None), replacing it whole."""
        if path is None:
            return
        self.conditions["load_after"] = list(os.getloadavg())
        self.conditions["duration_s"] = round(time.monotonic() - self.started, 1)
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text(json.dumps({"bench": self.bench, "conditions": self.conditions,
                                       "figures": self.figures}, indent=1) + "\n")  # fmt: skip
        os.replace(partial, target)
        print(f"result written to {target}")
