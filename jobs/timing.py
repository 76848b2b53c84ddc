"""Timing a run without stalling the device (step timers, epoch totals, the run's history),
and showing it: the step progress bar and the line printed per epoch."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_rss"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Data and compute time of each step without stalling the device.

    On CUDA, events around the data and compute work of each step are read once, when the
    totals are collected; data time there is the GPU time of the data ops plus the host time
    spent waiting for the next batch (DataLoader workers). On the CPU, where the work is
    synchronous, host clocks measure both.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[Any, Any, Any]] = []
        self.data = 0.0
        self.compute = 0.0

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, start: Any, mid: Any, end: Any, host_wait: float) -> None:
        if self.cuda:
            self.marks.append((start, mid, end))
            self.data += host_wait
        else:
            self.data += mid - start
            self.compute += end - mid

    def collect(self) -> tuple[float, float]:
        if self.marks:
            self.marks[-1][2].synchronize()
            for start, mid, end in self.marks:
                self.data += start.elapsed_time(mid) / 1000
                self.compute += mid.elapsed_time(end) / 1000
            self.marks.clear()
        data, compute = self.data, self.compute
        self.data = self.compute = 0.0
        return data, compute


@dataclass
class EpochTotals:
    """Running sums of one epoch; part of a mid-epoch checkpoint."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    data_time: float = 0.0
    compute_time: float = 0.0
    elapsed: float = 0.0  # wall time of the epoch before an interruption
    steps: int = 0

    def fold(self, sums: torch.Tensor, timer: StepTimer) -> None:
        """Move the device-side sums and the timer's readings into these totals."""
        loss_sum, correct = sums.tolist()
        sums.zero_()
        self.loss_sum += loss_sum
        self.correct += correct
        data_time, compute_time = timer.collect()
        self.data_time += data_time
        self.compute_time += compute_time


@dataclass
class History:
    """What a run carries from epoch to epoch (part of every checkpoint)."""

    best_acc: float = 0.0
    train_time: float = 0.0
    time_to_target: float | None = None
    last: dict[str, Any] = field(default_factory=dict)

    def add(self, record: dict[str, Any], target_accuracy: float | None) -> None:
        """Fold an epoch's record in: training time so far, best accuracy, time to target."""
        self.train_time += record["epoch_time"]
        self.best_acc = max(self.best_acc, record["test_acc"])
        if (
            target_accuracy is not None
            and self.time_to_target is None
            and record["test_acc"] >= target_accuracy
        ):
            self.time_to_target = self.train_time
        self.last = record


def progress_bar(env: Any, total: int, initial: int, desc: str):
    from tqdm import tqdm

    # Only on a terminal and only on rank 0; logs get the per-epoch line instead.
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        leave=False,
        unit="step",
        disable=None if env.is_main else True,
        file=sys.stderr,
    )


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}  "
        f"train {100 * r['train_acc']:5.2f}%  test {100 * r['test_acc']:5.2f}%  "
        f"lr {r['lr']:.4g}  {r['epoch_time']:.1f} s  {r['images_per_sec']:,.0f} img/s"
        + ("  (warm-up)" if r["warmup"] else "")
    )
