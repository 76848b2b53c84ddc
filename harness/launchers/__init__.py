"""Launchers: where a sweep's jobs run (local processes, SLURM, Ray), behind one protocol
(``harness.launchers.base``)."""

from harness.launchers.base import Launcher, get, launcher_of

__all__ = ["Launcher", "get", "launcher_of"]
