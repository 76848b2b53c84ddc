"""The memory format a job trains in: the recipe's choice, or, for ``auto``, the one that runs
faster on this device, measured once when the job starts.

Channels-last is not a free win: it speeds up plain convolutions on tensor-core GPUs, but the
split-attention block's reshapes and grouped convolutions can run slower in it (published
timm figures: ResNeSt trained at 202 img/s in channels_last against 534 in NCHW on an
RTX 3090), and on a CPU it is often slower still. So ``auto`` times a few forward and backward
passes of the job's own network at its own per-rank batch in each format and keeps the faster.
The probe works on a copy of the network, so the weights and BN statistics the job trains
from are untouched; in a DDP job rank 0 measures and every rank takes its answer.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from jobs.distributed import DistEnv
from jobs.timing import synchronize

FORMATS = ("contiguous", "channels_last")
WARMUP_STEPS = 1
TIMED_STEPS = 3


@dataclass(frozen=True)
class Choice:
    memory_format: str  # contiguous | channels_last
    how: str  # "recipe" (as asked) or "measured" (auto)
    step_ms: dict[str, float] | None = None  # per format, when measured
    # What the measuring cost, start to answer (every rank waits for it): time the job spends
    # before its first epoch, outside the epochs' training time and so outside time to target
    probe_s: float | None = None

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    def record(self) -> dict:
        measured = {"memory_format_step_ms": self.step_ms, "memory_format_probe_s": self.probe_s}
        return {"memory_format": self.memory_format, "memory_format_by": self.how} | (
            measured if self.step_ms else {}
        )


def choose(
    requested: str,
    model: nn.Module,
    sample: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    env: DistEnv,
    autocast=None,
) -> Choice:
    """``requested`` is the recipe's ``memory_format``; ``sample`` the per-rank input shape."""
    if requested != "auto":
        return Choice(requested, "recipe")
    started, step_ms = time.perf_counter(), None
    if env.is_main:
        step_ms = {f: time_steps(model, f, sample, num_classes, device, autocast) for f in FORMATS}
    if env.distributed:
        box = [step_ms]
        dist.broadcast_object_list(box, src=0)
        step_ms = box[0]
    best = min(FORMATS, key=lambda f: step_ms[f])
    return Choice(best, "measured", step_ms, round(time.perf_counter() - started, 3))


def time_steps(
    model: nn.Module,
    memory_format: str,
    sample: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    autocast=None,
) -> float:
    """Median milliseconds of one forward and backward pass of a copy of ``model`` in
    ``memory_format``, on random input of shape ``sample`` (time does not depend on pixels)."""
    probe = copy.deepcopy(model).train()
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    probe = probe.to(memory_format=fmt)
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(sample, generator=gen).to(device).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (sample[0],), generator=gen).to(device)
    times = []
    for step in range(WARMUP_STEPS + TIMED_STEPS):
        synchronize(device)
        started = time.perf_counter()
        with autocast if autocast is not None else torch.autocast(device.type, enabled=False):
            loss = nn.functional.cross_entropy(probe(images), labels)
        loss.backward()
        probe.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= WARMUP_STEPS:
            times.append((time.perf_counter() - started) * 1e3)
    return round(sorted(times)[len(times) // 2], 3)
