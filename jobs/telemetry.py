"""Telemetry inside the job: a sampler thread over NVML (or, without it, over psutil).

NVML through ``nvidia-ml-py`` (``import pynvml``): device handles are looked up once; each
sample reads utilisation, memory, power, temperature, clocks and the total-energy counter,
and never the process lists (milliseconds each, under a driver lock). About 1 Hz by default.

Per epoch: mean and max GPU utilisation, peak memory, mean power and the energy in joules,
from the total-energy counter's delta where the GPU has one, otherwise the integral of power
over time (trapezoids between samples, with a sample taken at each epoch boundary).

Without NVML (no driver, no GPU) the job says why, and samples the CPU's utilisation and the
process's resident memory instead: never a crash, never a silent gap.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("jobs.telemetry")

DEFAULT_INTERVAL_S = 1.0


class NvmlSource:
    """NVML for the given GPUs: UUIDs as torch reports them (which survive
    CUDA_VISIBLE_DEVICES), or NVML indices; all GPUs if none are given."""

    kind = "nvml"

    def __init__(self, gpus: list[str | int], nvml: Any = None) -> None:
        if nvml is None:
            import pynvml as nvml
        self.nvml = nvml
        nvml.nvmlInit()
        if not gpus:
            gpus = list(range(nvml.nvmlDeviceGetCount()))
        self.handles = [
            nvml.nvmlDeviceGetHandleByIndex(g)
            if isinstance(g, int)
            else nvml.nvmlDeviceGetHandleByUUID(g if g.startswith("GPU-") else f"GPU-{g}")
            for g in gpus
        ]
        self.indices = [int(nvml.nvmlDeviceGetIndex(h)) for h in self.handles]
        self.has_energy = [self._energy(h) is not None for h in self.handles]

    def _energy(self, handle: Any) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0  # mJ -> J
        except Exception:  # NVMLError_NotSupported on older GPUs
            return None

    def _read(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception:  # one field a GPU does not support must not lose the sample
            return None

    def sample(self, boundary: bool = False) -> list[dict[str, Any]]:
        """One reading per GPU. The total-energy counter costs milliseconds a read (3.4 to
        3.8 ms on an H200, against 0.02 ms for all the rest), so it is read only at epoch
        boundaries (``boundary``), which is all its delta needs."""
        nvml, out = self.nvml, []
        for index, handle, energy in zip(self.indices, self.handles, self.has_energy, strict=True):
            util = self._read(lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h))
            memory = self._read(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h))
            power = self._read(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h))
            out.append(
                {
                    "gpu_index": index,
                    "gpu_util": None if util is None else float(util.gpu),
                    "mem_util": None if util is None else float(util.memory),
                    "mem_used": None if memory is None else int(memory.used),
                    "power_w": None if power is None else power / 1000.0,  # mW -> W
                    "temp_c": self._read(
                        lambda h=handle: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
                    ),
                    "sm_clock": self._read(
                        lambda h=handle: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)
                    ),
                    "mem_clock": self._read(
                        lambda h=handle: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)
                    ),
                    "energy_j": self._energy(handle) if energy and boundary else None,
                    "throttle": self._read(lambda h=handle: _clock_events(nvml, h)),
                }
            )
        return out

    def devices(self) -> list[dict[str, Any]]:
        nvml = self.nvml
        driver = self._read(nvml.nvmlSystemGetDriverVersion)
        gpus = zip(self.indices, self.handles, self.has_energy, strict=True)
        return [
            {
                "gpu_index": index,
                "name": _text(self._read(lambda h=handle: nvml.nvmlDeviceGetName(h))),
                "uuid": _text(self._read(lambda h=handle: nvml.nvmlDeviceGetUUID(h))),
                "memory_total": getattr(
                    self._read(lambda h=handle: nvml.nvmlDeviceGetMemoryInfo(h)), "total", None
                ),
                "driver": _text(driver),
                "energy_counter": energy,
                **self.settings(handle),
            }
            for index, handle, energy in gpus
        ]

    def settings(self, handle: Any) -> dict[str, Any]:
        """How the GPU is set up, as NVML reports it (None where it cannot say): the power
        limits in W, ECC, MIG and persistence modes, and the PCIe link now and at most."""
        nvml = self.nvml

        def read(name: str, *args: Any) -> Any:
            return self._read(lambda: getattr(nvml, name)(handle, *args))

        def current(pair: Any) -> bool | None:  # (current, pending) modes
            return None if pair is None else bool(pair[0] if isinstance(pair, tuple) else pair)

        def watts(milliwatts: Any) -> float | None:
            return None if milliwatts is None else milliwatts / 1000.0

        persistence = read("nvmlDeviceGetPersistenceMode")
        return {
            "power_limit_w": watts(read("nvmlDeviceGetEnforcedPowerLimit")),
            "default_power_limit_w": watts(read("nvmlDeviceGetPowerManagementDefaultLimit")),
            "ecc": current(read("nvmlDeviceGetEccMode")),
            "mig": current(read("nvmlDeviceGetMigMode")),
            "persistence": None if persistence is None else bool(persistence),
            "pcie_gen": read("nvmlDeviceGetCurrPcieLinkGeneration"),
            "pcie_gen_max": read("nvmlDeviceGetMaxPcieLinkGeneration"),
            "pcie_width": read("nvmlDeviceGetCurrPcieLinkWidth"),
            "pcie_width_max": read("nvmlDeviceGetMaxPcieLinkWidth"),
        }

    def close(self) -> None:
        self._read(self.nvml.nvmlShutdown)


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
    """The best source here, and why GPU telemetry is unavailable (None if it is not)."""
    reason = None
    if device_type == "cuda":
        try:
            return NvmlSource(gpus, nvml), None
        except Exception as exc:  # no library, no driver, no permission
            reason = f"NVML unavailable: {str(exc).strip() or type(exc).__name__}"
    else:
        reason = f"no GPU: the job ran on the {device_type.upper()}"
    try:
        return CpuSource(), reason
    except ImportError:
        return None, f"{reason}; no psutil for CPU telemetry either"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


class Sampler:
    """Samples ``source`` every ``interval`` seconds on a daemon thread."""

    def __init__(self, source: Any, interval: float = DEFAULT_INTERVAL_S, clock=time.time) -> None:
        self.source = source
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
            self.samples = []
        self.take(boundary=True)

    def end_epoch(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A sample at the boundary, then the epoch's aggregates and samples."""
        self.take(boundary=True)
        with self._lock:
            window, self.samples = self.samples, []
        return aggregate(window, self.source.kind), window

    def halt(self) -> None:
        """Stop the thread; the source stays open (another sampler may use it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval + 1)

    def stop(self) -> None:
        self.halt()
        self.source.close()


# NVML's clock-event (throttle) reasons that slow a busy GPU down (idle, an application
# clocks setting and the display clock are not counted)
THROTTLE_REASONS = {0x4: "power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost",
                    0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "power_brake"}  # fmt: skip


def _clock_events(nvml: Any, handle: Any) -> int:
    """The GPU's clock-event reasons now, a bit mask (the older name where NVML has only it)."""
    read = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    return int((read or nvml.nvmlDeviceGetCurrentClocksThrottleReasons)(handle))


def throttling(samples: list[dict[str, Any]]) -> tuple[float | None, str | None]:
    """The share of the samples (in %) in which the GPU was throttled, and by reason ("power_cap
    40%, sw_thermal 5%"); None where NVML gave no reasons."""
    masks = [s["throttle"] for s in samples if s.get("throttle") is not None]
    if not masks:
        return None, None
    slowed = [m for m in masks if m & sum(THROTTLE_REASONS)]
    shares = {name: 100 * sum(1 for m in masks if m & bit) / len(masks)
              for bit, name in THROTTLE_REASONS.items()}  # fmt: skip
    said = ", ".join(f"{name} {share:.0f}%" for name, share in shares.items() if share)
    return 100 * len(slowed) / len(masks), said or None


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
    keys_sum = ("energy_j", "power_mean_w", "gpu_util_mean", "cpu_util_mean")
    keys_max = ("gpu_util_max", "gpu_mem_peak_bytes", "rss_peak_bytes", "throttled_pct")
    nan = float("nan")
    sums = torch.tensor([nan if figures.get(k) is None else figures[k] for k in keys_sum],
                        dtype=torch.float64, device=device)  # fmt: skip
    maxes = torch.tensor([nan if figures.get(k) is None else figures[k] for k in keys_max],
                         dtype=torch.float64, device=device)  # fmt: skip
    if env.distributed:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
        sums[2:] /= env.world_size  # utilisations: the mean over the ranks' GPUs
    combined = dict(zip(keys_sum + keys_max, sums.tolist() + maxes.tolist(), strict=True))
    for key, value in combined.items():
        if key in figures:  # the GPU figures from NVML, or the CPU ones from psutil
            record[key] = None if math.isnan(value) else value
    record["telemetry_source"] = figures["telemetry_source"]
    record["energy_method"] = figures.get("energy_method")
    record["throttle_reasons"] = figures.get("throttle_reasons")  # rank 0's GPU's
    energy = record.get("energy_j")
    record["energy_per_image_j"] = energy / record["images"] if energy else None
    return samples


def sampler_for(device: Any, interval: float) -> tuple[Sampler | None, str | None]:
    """This rank's running sampler (its own GPU) and a note on its source, or None when the
    interval is 0 (telemetry off) or no source can be opened (the note says why)."""
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
    return Sampler(source, interval).start(), note
