"""Telemetry inside the job: a sampler thread over NVML (``jobs.nvml``; without it, over
psutil), and the CPU's energy from RAPL (``jobs.rapl``) where the host lets a job read it.
About 1 Hz by default.

Per epoch: mean and max GPU utilisation, peak memory, mean power and the energy in joules,
from the total-energy counter's delta where the GPU has one, otherwise the integral of power
over time (trapezoids between samples, with a sample taken at each epoch boundary); the
share of the samples throttled, by reason; the XIDs; the CPU packages' and DRAM's energy.

Without NVML (no driver, no GPU) the job says why, and samples the CPU's utilisation and the
process's resident memory instead: never a crash, never a silent gap.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any

from jobs.nvml import NvmlSource, throttling, xid_text
from jobs.rapl import ROOT, Rapl, as_record

log = logging.getLogger("jobs.telemetry")

DEFAULT_INTERVAL_S = 1.0
# Which source samples: unset (or "auto") picks NVML for a job on CUDA, psutil otherwise;
# "nvml" watches every GPU of the node whatever the job runs on (a job on the CPU beside
# GPUs, and the tests, which put a stand-in pynvml first on the path); "cpu" never NVML.
SOURCE_ENV = "RESNEST_BENCH_TELEMETRY_SOURCE"
# Where RAPL's powercap tree is: Linux's, unless this names another (a copy, or the tests').
RAPL_ENV = "RESNEST_BENCH_POWERCAP"
XIDS_MAX = 400  # records.schema's epochs.xids holds this many characters


class CpuSource:
    """The fallback: the machine's CPU utilisation and this process's resident memory."""

    kind = "cpu"

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.process = psutil.Process(os.getpid())
        psutil.cpu_percent(None)  # the first call only starts the measurement

    def sample(self, boundary: bool = False) -> list[dict[str, Any]]:
        return [
            {
                "gpu_index": -1,
                "cpu_util": float(self.psutil.cpu_percent(None)),
                "rss": int(self.process.memory_info().rss),
            }
        ]

    def devices(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


def open_source(
    device_type: str, gpus: list[str | int], nvml: Any = None
) -> tuple[Any, str | None]:
    """The best source here (or the one ``SOURCE_ENV`` names), and why GPU telemetry is
    unavailable (None if it is not)."""
    reason = None
    wanted = os.environ.get(SOURCE_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "nvml", "cpu"):
        reason = f"{SOURCE_ENV}={wanted!r} is not one of auto, nvml, cpu"
    elif wanted == "cpu":
        reason = f"GPU telemetry turned off by {SOURCE_ENV}=cpu"
    elif device_type == "cuda" or wanted == "nvml":
        try:
            return NvmlSource(gpus, nvml), None
        except Exception as exc:  # no library, no driver, no permission
            reason = f"NVML unavailable: {str(exc).strip() or type(exc).__name__}"
    if reason is None:
        reason = f"no GPU: the job ran on the {device_type.upper()}"
    try:
        return CpuSource(), reason
    except ImportError:
        return None, f"{reason}; no psutil for CPU telemetry either"


class Sampler:
    """Samples ``source`` every ``interval`` seconds on a daemon thread; with ``rapl``, reads
    its counters at each sample and sums their deltas over the epoch (``rapl_share``: whether
    this process's epochs count the CPUs' energy: one process per host does, the others count
    0 J, so that the ranks' sum is the hosts'). XIDs drained between two epochs (during
    evaluation) are carried into the next one's record."""

    def __init__(
        self,
        source: Any,
        interval: float = DEFAULT_INTERVAL_S,
        clock=time.time,
        rapl: Rapl | None = None,
        rapl_share: bool = True,
    ) -> None:
        self.source = source
        self.rapl = rapl if rapl is not None and rapl.zones else None
        self.rapl_method = rapl.method if rapl is not None else "none: not measured"
        self.rapl_share = rapl_share
        self._rapl_last: dict[str, int] | None = None
        self._rapl_sum: dict[str, float] | None = None  # None: unknown this epoch
        self._carried: list[dict[str, Any]] = []  # XIDs seen between epochs
        self.interval = interval
        self.clock = clock
        self.samples: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def take(self, boundary: bool = False) -> None:
        now = self.clock()
        try:
            rows = self.source.sample(boundary)
        except Exception:  # a failed read is counted, not fatal
            self.errors += 1
            return
        with self._lock:
            self.samples.extend({"time": now, **row} for row in rows)
            if self.rapl is not None:  # read under the lock: readings stay in order
                reading = self.rapl.read()
                if self._rapl_last is not None and self._rapl_sum is not None:
                    change = self.rapl.delta(self._rapl_last, reading)
                    if change is None:
                        self._rapl_sum = None
                    else:
                        for kind, joules in change.items():
                            self._rapl_sum[kind] = self._rapl_sum.get(kind, 0.0) + joules
                self._rapl_last = reading

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.take()

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)
        self._thread.start()
        return self

    def begin_epoch(self) -> None:
        """A sample at the boundary; the epoch's window starts with it."""
        with self._lock:
            self._carried += [{"gpu_index": s["gpu_index"], "xids": s["xids"]}
                              for s in self.samples if s.get("xids")]  # fmt: skip
            self.samples = []
            self._rapl_last, self._rapl_sum = None, {}
        self.take(boundary=True)

    def end_epoch(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A sample at the boundary, then the epoch's aggregates and samples."""
        self.take(boundary=True)
        with self._lock:
            window, self.samples = self.samples, []
            carried, self._carried = self._carried, []
            cpu = as_record(self._rapl_sum)
        figures = aggregate(window, self.source.kind)
        if carried and "xids" in figures:
            figures["xids"] = xid_text(carried + window)
        if self.rapl is not None:
            figures.update({k: (v if self.rapl_share or v is None else 0.0)
                            for k, v in cpu.items()})  # fmt: skip
        return figures, window

    def halt(self) -> None:
        """Stop the thread; the source stays open (another sampler may use it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval + 1)

    def stop(self) -> None:
        self.halt()
        self.source.close()


def _energy(rows: list[dict[str, Any]]) -> tuple[float | None, str]:
    """Joules over ``rows`` of one GPU (in time order): the energy counter's delta between the
    first and the last row (the epoch's boundary samples), else ∫ power dt."""
    if len(rows) >= 2 and None not in (rows[0].get("energy_j"), rows[-1].get("energy_j")):
        return rows[-1]["energy_j"] - rows[0]["energy_j"], "counter"
    powered = [r for r in rows if r.get("power_w") is not None]
    if len(powered) < 2:
        return None, "none"
    joules = sum(
        (b["time"] - a["time"]) * (a["power_w"] + b["power_w"]) / 2
        for a, b in itertools.pairwise(powered)
    )
    return joules, "power_integral"


def aggregate(samples: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Per-epoch figures from the samples of one epoch (all GPUs of the process)."""
    out: dict[str, Any] = {"telemetry_source": kind, "telemetry_samples": len(samples)}
    if kind == "cpu":
        util = [s["cpu_util"] for s in samples if s.get("cpu_util") is not None]
        rss = [s["rss"] for s in samples if s.get("rss") is not None]
        out["cpu_util_mean"] = sum(util) / len(util) if util else None
        out["rss_peak_bytes"] = max(rss) if rss else None
        return out
    by_gpu: dict[int, list[dict[str, Any]]] = {}
    for s in samples:
        by_gpu.setdefault(s["gpu_index"], []).append(s)
    util = [s["gpu_util"] for s in samples if s.get("gpu_util") is not None]
    out["gpu_util_mean"] = sum(util) / len(util) if util else None
    out["gpu_util_max"] = max(util) if util else None
    mem = [s["mem_used"] for s in samples if s.get("mem_used") is not None]
    out["gpu_mem_peak_bytes"] = max(mem) if mem else None
    power_means, energies, methods = [], [], set()
    for rows in by_gpu.values():
        rows.sort(key=lambda r: r["time"])
        watts = [r["power_w"] for r in rows if r.get("power_w") is not None]
        if watts:
            power_means.append(sum(watts) / len(watts))
        joules, method = _energy(rows)
        if joules is not None:
            energies.append(joules)
            methods.add(method)
    out["power_mean_w"] = sum(power_means) if power_means else None  # all GPUs together
    out["energy_j"] = sum(energies) if energies and len(energies) == len(by_gpu) else None
    out["energy_method"] = "+".join(sorted(methods)) or "none"
    out["throttled_pct"], out["throttle_reasons"] = throttling(samples)
    out["xids"] = xid_text(samples)
    return out


def gpu_matches(expected: str | None, gpu_name: str, device_type: str) -> bool | None:
    """Whether the GPU that ran the job is the GPU type the sweep asked for (None: not asked).
    ``expected`` is a name fragment (``v100``) matched case-insensitively, or ``cpu``."""
    if not expected:
        return None
    if expected.lower() == "cpu":
        return device_type == "cpu"
    if device_type != "cuda":
        return False
    squash = lambda text: "".join(c for c in text.lower() if c.isalnum())  # noqa: E731
    return squash(expected) in squash(gpu_name)


def fold_into(record: dict[str, Any], window: Any, env: Any, device: Any) -> list[dict[str, Any]]:
    """Add the epoch's telemetry (``Sampler.end_epoch()``) to its record, all ranks' GPUs
    together; return this rank's samples."""
    import math

    import torch
    import torch.distributed as dist

    if window is None:
        record["telemetry_source"] = "off"
        return []
    figures, samples = window
    keys_sum = ("energy_j", "cpu_energy_j", "dram_energy_j", "power_mean_w", "gpu_util_mean",
                "cpu_util_mean")  # fmt: skip
    keys_max = ("gpu_util_max", "gpu_mem_peak_bytes", "rss_peak_bytes", "throttled_pct")
    nan = float("nan")
    figures = {**figures, "xid_seen": 1.0 if figures.get("xids") else 0.0}
    keys_max += ("xid_seen",)
    sums = torch.tensor([nan if figures.get(k) is None else figures[k] for k in keys_sum],
                        dtype=torch.float64, device=device)  # fmt: skip
    maxes = torch.tensor([nan if figures.get(k) is None else figures[k] for k in keys_max],
                         dtype=torch.float64, device=device)  # fmt: skip
    if env.distributed:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
        sums[4:] /= env.world_size  # utilisations: the mean over the ranks' GPUs
    combined = dict(zip(keys_sum + keys_max, sums.tolist() + maxes.tolist(), strict=True))
    for key, value in combined.items():
        if key in figures and key != "xid_seen":  # the GPU figures from NVML, or psutil's
            record[key] = None if math.isnan(value) else value
    record["telemetry_source"] = figures["telemetry_source"]
    record["energy_method"] = figures.get("energy_method")
    record["throttle_reasons"] = figures.get("throttle_reasons")  # rank 0's GPU's
    if combined["xid_seen"]:  # some rank's GPU reported an XID: all of them, named
        record["xids"] = _all_xids(figures.get("xids"), env)
    energy = record.get("energy_j")
    record["energy_per_image_j"] = energy / record["images"] if energy else None
    return samples


def _all_xids(mine: str | None, env: Any) -> str | None:
    """Every rank's XIDs of the epoch, each after its rank ("rank 1: 79 (GPU 0)"), cut to
    what the store's column holds (a collective that only an epoch in which some rank saw one
    pays)."""
    joined = mine or ""
    if env.distributed:
        import torch.distributed as dist

        texts: list[str | None] = [None] * env.world_size
        dist.all_gather_object(texts, mine)
        joined = "; ".join(f"rank {rank}: {text}" for rank, text in enumerate(texts) if text)
    if len(joined) > XIDS_MAX:  # what the store's column holds
        joined = joined[: XIDS_MAX - 4] + " ..."
    return joined or None


def sampler_for(
    device: Any, interval: float, counts_cpu_energy: bool = True
) -> tuple[Sampler | None, str | None]:
    """This rank's running sampler (its own GPU, and RAPL, whose energy only one rank per
    host counts: ``counts_cpu_energy``, its local rank 0) and a note on its source, or None
    when the interval is 0 (telemetry off) or no source can be opened (the note says why)."""
    import torch

    if not interval:
        return None, "off"
    uuids = []
    if device.type == "cuda":
        uuid = str(getattr(torch.cuda.get_device_properties(device), "uuid", ""))
        uuids = [uuid] if uuid else []
    source, note = open_source(device.type, uuids)
    if source is None:
        log.warning("telemetry: %s", note)
        return None, note
    if note:
        log.info("telemetry: %s", note)
    rapl = Rapl(os.environ.get(RAPL_ENV) or ROOT)
    return Sampler(source, interval, rapl=rapl, rapl_share=counts_cpu_energy).start(), note


def cpu_energy_method(sampler: Sampler | None) -> str:
    """How the job's epochs measure the CPU's energy, for its provenance."""
    if sampler is None:
        return "none: telemetry off"
    return sampler.rapl_method
