"""Launchers: where a sweep's jobs run (local processes, SLURM, Ray), each a class registered
by name (``harness.launchers.base.register``) in its own module, imported the first time the
launcher is asked for: a sweep on the local launcher never imports Ray or submitit.

This package holds the only table of the launchers' modules; the launchers import
``harness.launchers.base``, never this package's ``get``, so that no import runs in a circle.
"""

from __future__ import annotations

import importlib
from typing import Any

from harness.launchers.base import Launcher, launcher_of, registered
from records.errors import UserError
from records.store import Store

__all__ = ["MODULES", "Launcher", "class_of", "get", "launcher_of"]

# launcher.kind -> the module that registers it
MODULES = {
    "local": "harness.launchers.local",
    "slurm": "harness.launchers.slurm",
    "ray": "harness.launchers.ray_launcher",
}


def class_of(name: str) -> type[Launcher]:
    """The launcher class called ``name`` (its module imported on first use)."""
    if name not in MODULES:
        raise UserError(f"unknown launcher {name!r}; expected one of {', '.join(MODULES)}")
    importlib.import_module(MODULES[name])
    return registered(name)


def get(name: str, store: Store, config: Any = None) -> Launcher:
    """The launcher called ``name``; without the sweep's config it can poll, cancel and show
    logs, but not check or submit."""
    return class_of(name)(store, config)
