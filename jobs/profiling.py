"""A profiler on demand, and NVTX ranges on CUDA.

``--set profile=FIRST:LAST`` (a recipe field; a sweep sets it with ``overrides: {profile:
...}``) records a ``torch.profiler`` trace of the training steps FIRST to LAST - 1 of the
attempt (counted from its first step, across epochs) on rank 0, as a Chrome trace in the
job's folder (``profile/trace-steps-FIRST-LAST.json``), reported as an artifact of the job
with its bytes and sha256. Off (the default, ``""``), a step pays two comparisons.

On CUDA, NVTX ranges mark each step's data, forward, backward and optimizer parts, for Nsight
Systems; elsewhere they are nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from jobs.recipe import profile_window


@contextlib.contextmanager
def nvtx(name: str, device: torch.device) -> Iterator[None]:
    """An NVTX range on CUDA (Nsight Systems shows it on the timeline); nothing elsewhere."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


class StepProfiler:
    """Traces steps ``first`` to ``last - 1`` of an attempt (``window``), where ``enabled``
    (rank 0); ``report`` is called with the artifact record once the trace is written."""

    def __init__(
        self,
        text: str,
        out_dir: Path,
        device: torch.device,
        enabled: bool,
        report: Callable[[dict[str, Any]], None],
    ) -> None:
        span = profile_window(text) if enabled else None
        self.first, self.last = span if span else (-1, -1)
        self.out_dir, self.device, self.report = out_dir, device, report
        self.step = 0
        self.active: Any = None

    def before_step(self) -> None:
        if self.step == self.first:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self.active = profile(activities=activities)
            self.active.__enter__()

    def after_step(self) -> None:
        self.step += 1
        if self.active is not None and self.step >= self.last:
            self.close()

    def close(self) -> None:
        """Stop and write the trace (of the steps run, where training ended inside the window)."""
        if self.active is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        active, self.active = self.active, None
        active.__exit__(None, None, None)
        path = self.out_dir / "profile" / f"trace-steps-{self.first}-{self.last}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        active.export_chrome_trace(str(path))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.report({"artifact": "profile", "path": str(path.resolve()),
                     "bytes": path.stat().st_size, "sha256": digest})  # fmt: skip
