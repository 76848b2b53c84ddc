"""NVML, the GPU's side of the job's telemetry (``jobs.telemetry`` samples it): through
``nvidia-ml-py`` (``import pynvml``), device handles are looked up once; each sample reads
utilisation, memory, power, temperature, clocks, the clock-event (throttle) reasons and the
total-energy counter, and never the process lists (milliseconds each, under a driver lock).

XID errors (the driver's reports of a GPU fault: 79 fallen off the bus, 48 a double-bit ECC
error, ...) come from an NVML event set, drained at each sample: the epoch record lists them,
and a job that fails after one counts the failure as its host's (``xids_seen``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# The XIDs this process's NVML sources have seen, as (GPU index, XID, time): a failure of the
# job after one belongs to its host (``jobs.stage.guarded``).
_XIDS_SEEN: list[tuple[int, int, float]] = []


# The XIDs that say the GPU or its host is at fault (NVIDIA's XID catalogue): 48 a double-bit
# ECC error, 63 and 64 ECC page retirement or row remapping, 74 an NVLink error, 79 fallen off
# the bus, 92 a high single-bit ECC rate, 94 and 95 contained and uncontained ECC errors, 119
# and 120 GSP (firmware) errors. Others (13 and 31, a kernel's fault or bad address; 43, 45)
# are what a program's own bug makes the driver report: its failure stays the job's.
HOST_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120})


def xids_seen() -> list[tuple[int, int, float]]:
    """The XIDs seen by this process so far, as (GPU index, XID, time)."""
    return list(_XIDS_SEEN)


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
        self.events = self._register_xids()

    def _register_xids(self) -> Any:
        """An event set for the GPUs' XID errors, or None where NVML cannot give one (a GPU
        that does not support events keeps the others')."""
        nvml = self.nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except Exception:
            return None
        registered = 0
        for handle in self.handles:
            try:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, events)
                registered += 1
            except Exception:  # NotSupported: this GPU reports no XIDs through events
                continue
        if not registered:
            self._read(lambda: nvml.nvmlEventSetFree(events))
            return None
        return events

    def xids(self) -> dict[int, list[int]]:
        """The XIDs reported since the last call, by GPU index (the events waiting, not
        waited for: a timeout of 0 ms)."""
        if self.events is None:
            return {}
        nvml, found = self.nvml, {}
        wait = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait
        for _ in range(64):  # a storm of events waits for the next sample
            try:
                event = wait(self.events, 0)
            except Exception:  # NVMLError_Timeout: none waiting (or the set broke)
                break
            if int(event.eventType) != int(nvml.nvmlEventTypeXidCriticalError):
                continue
            index = self._read(lambda d=event.device: int(nvml.nvmlDeviceGetIndex(d)))
            index = -1 if index is None else index
            found.setdefault(index, []).append(int(event.eventData))
            _XIDS_SEEN.append((index, int(event.eventData), time.time()))
            log.warning("telemetry: GPU %s reported XID %s", index, int(event.eventData))
        return found

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
        nvml, out, xids = self.nvml, [], self.xids()
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
                    **({"xids": xids.pop(index)} if index in xids else {}),
                }
            )
        for numbers in xids.values():  # a GPU this source does not sample (-1: unknown)
            out[0].setdefault("xids", []).extend(numbers)
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
        if self.events is not None:
            self.xids()  # the last ones, which a failure that stops the job may follow
            self._read(lambda: self.nvml.nvmlEventSetFree(self.events))
        self._read(self.nvml.nvmlShutdown)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


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


def xid_text(samples: list[dict[str, Any]]) -> str | None:
    """The XIDs of ``samples`` as "79 (GPU 0), 48 (GPU 1)", in the order seen; None if none."""
    seen = [f"{xid} (GPU {s['gpu_index']})" for s in samples for xid in s.get("xids", ())]
    return ", ".join(dict.fromkeys(seen)) or None
