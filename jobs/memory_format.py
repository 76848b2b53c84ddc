"""The memory format a job trains in: the recipe's choice, or, for ``auto``, the one that runs
faster on this device, measured once when the job starts.

Channels-last is not a free win: it speeds up plain convolutions on tensor-core GPUs, but the
split-attention block's reshapes and grouped convolutions can run slower in it (published
timm figures: ResNeSt trained at 202 img/s in channels_last against 534 in NCHW on an
RTX 3090), and on a CPU it is often slower still. So ``auto`` times a few forward and backward
passes of the job's own network at its own per-rank batch in each format, in interleaved
rounds (each format once per round, the order alternating, so that a neighbour's load or the
machine's drift falls on both), and changes from the default (NCHW, ``contiguous``) only when
channels-last was faster in every round, its slowest round faster than NCHW's fastest by more
than a set margin (``MIN_MARGIN``) and by more than either format's own spread across its
rounds (which a busy machine widens). A choice made on a difference smaller than the
measurement's own spread would be a coin flip that changes what the user gets (and, with
float arithmetic in another order, the result), so a near-tie keeps the default. The rounds
and why the choice fell as it did are kept in the job's start record. The probe works on a
copy of the network, so the weights and BN statistics the job trains from are untouched; in
a DDP job rank 0 measures and every rank takes its answer.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from jobs.distributed import DistEnv
from jobs.timing import synchronize

FORMATS = ("contiguous", "channels_last")
DEFAULT = "contiguous"
WARMUP_STEPS = 1  # per format, before the rounds
ROUNDS = 5
TIMED_STEPS = 1  # per format and round; the round's figure is their median
# Channels-last must win every round, its slowest by more than this share of NCHW's fastest,
# and by more than either format's own spread (its slowest round over its fastest).
MIN_MARGIN = 0.03


@dataclass(frozen=True)
class Choice:
    memory_format: str  # contiguous | channels_last
    how: str  # "recipe" (as asked) or "measured" (auto)
    step_ms: dict[str, float] | None = None  # per format, when measured: the rounds' median
    rounds_ms: dict[str, list[float]] | None = None  # per format, each round's figure
    why: str | None = None  # why the measurement chose as it did
    # What the measuring cost, start to answer (every rank waits for it): time the job spends
    # before its first epoch, outside the epochs' training time and so outside time to target
    probe_s: float | None = None

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    def record(self) -> dict:
        measured = {
            "memory_format_step_ms": self.step_ms,
            "memory_format_probe_s": self.probe_s,
            "memory_format_rounds_ms": self.rounds_ms,
            "memory_format_why": self.why,
        }
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
    started, rounds = time.perf_counter(), None
    if env.is_main:
        rounds = time_rounds(model, sample, num_classes, device, autocast)
    if env.distributed:
        box = [rounds]
        dist.broadcast_object_list(box, src=0)
        rounds = box[0]
    assert rounds is not None
    chosen, why = decide(rounds)
    step_ms = {f: round(statistics.median(times), 3) for f, times in rounds.items()}
    probe_s = round(time.perf_counter() - started, 3)
    return Choice(chosen, "measured", step_ms, rounds_ms=rounds, why=why, probe_s=probe_s)


def decide(
    rounds: dict[str, list[float]], default: str = DEFAULT, min_margin: float = MIN_MARGIN
) -> tuple[str, str]:
    """The format to train in, from each format's round times (ms), and why: the other
    format only if its slowest round beat the default's fastest by more than the margin (the
    larger of ``min_margin`` and each format's spread, its slowest round over its fastest);
    otherwise the default, whatever the medians say."""
    (other,) = (f for f in rounds if f != default)
    if not all(times and min(times) > 0 for times in rounds.values()):
        return default, f"kept {default}: no usable timing ({rounds})"
    spread = max(max(times) / min(times) - 1 for times in rounds.values())
    margin = max(min_margin, spread)
    gain = 1 - max(rounds[other]) / min(rounds[default])
    if gain > margin:
        return other, (
            f"{other} faster in every round, its slowest by {100 * gain:.1f}% of {default}'s "
            f"fastest (margin {100 * margin:.1f}%)"
        )
    median_gain = 1 - statistics.median(rounds[other]) / statistics.median(rounds[default])
    said = "faster" if median_gain > 0 else "slower"
    return default, (
        f"kept {default}: {other} {said} by {abs(100 * median_gain):.1f}% at the median, not "
        f"faster in every round by over the margin ({100 * margin:.1f}%: the rounds' spread, "
        f"at least {100 * min_margin:.0f}%)"
    )


def time_rounds(
    model: nn.Module,
    sample: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    autocast=None,
) -> dict[str, list[float]]:
    """Each format's milliseconds per step, a figure per round (the median of its
    ``TIMED_STEPS``), the formats taking turns and the order alternating between rounds."""
    probes = {f: Probe(model, f, sample, num_classes, device, autocast) for f in FORMATS}
    for probe in probes.values():
        probe.steps(WARMUP_STEPS)
    rounds: dict[str, list[float]] = {f: [] for f in FORMATS}
    for index in range(ROUNDS):
        order = FORMATS if index % 2 == 0 else FORMATS[::-1]
        for name in order:
            rounds[name].append(round(statistics.median(probes[name].steps(TIMED_STEPS)), 3))
    return rounds


class Probe:
    """A copy of ``model`` in ``memory_format`` with random input of shape ``sample`` (time
    does not depend on pixels), to time its forward and backward passes."""

    def __init__(
        self,
        model: nn.Module,
        memory_format: str,
        sample: tuple[int, ...],
        num_classes: int,
        device: torch.device,
        autocast=None,
    ) -> None:
        fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
        self.net = copy.deepcopy(model).train().to(memory_format=fmt)
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.images = torch.randn(sample, generator=gen).to(device).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, num_classes, (sample[0],), generator=gen).to(device)
        self.device, self.autocast = device, autocast

    def steps(self, count: int) -> list[float]:
        """Milliseconds of each of ``count`` steps."""
        times = []
        for _ in range(count):
            synchronize(self.device)
            started = time.perf_counter()
            off = torch.autocast(self.device.type, enabled=False)
            with self.autocast if self.autocast is not None else off:
                loss = nn.functional.cross_entropy(self.net(self.images), self.labels)
            loss.backward()
            self.net.zero_grad(set_to_none=True)
            synchronize(self.device)
            times.append((time.perf_counter() - started) * 1e3)
        return times
