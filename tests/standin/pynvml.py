"""A stand-in for NVIDIA's ``pynvml`` (NOT the real library): there is no GPU on the machines
that run these tests. A test that runs a real training job on the CPU puts this folder first
on the job's ``PYTHONPATH`` and sets ``RESNEST_BENCH_TELEMETRY_SOURCE=nvml``; the job's
sampler then makes the calls it makes on a GPU, against the GPUs this module pretends to have.

What it pretends is set by ``NVML_STANDIN``, a JSON object:

- ``gpus`` (1), ``name``, ``watts`` (constant power draw, W);
- ``throttle``: clock-event reason masks, one per reading, the last one kept;
- ``xid``: ``{"number": 79, "after_reads": N}``, an XID critical error event that the event
  set gives once, after N readings of the utilisation (one per sample and GPU); with
  ``"rank": R``, only in the process whose ``RANK`` is R (one GPU of a DDP job);
- ``power_limit_w``, ``default_power_limit_w``, ``ecc``, ``mig``, ``persistence`` (0 or 1),
  ``pcie``: ``[gen, gen_max, width, width_max]``;
- ``unsupported``: names of calls that raise ``NVMLError_NotSupported``, as an older GPU's do.
"""

import json
import os
import time
from types import SimpleNamespace

_SETTINGS = json.loads(os.environ.get("NVML_STANDIN", "{}"))
_STATE = {"reads": 0, "xid_given": False, "started": time.time()}

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
nvmlEventTypeXidCriticalError = 0x8


class NVMLError(Exception):
    pass


class NVMLError_Timeout(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


def _supported(name):
    if name in _SETTINGS.get("unsupported", ()):
        raise NVMLError_NotSupported("Not Supported")


def _get(name, default):
    return _SETTINGS.get(name, default)


def nvmlInit():
    pass


def nvmlShutdown():
    pass


def nvmlSystemGetDriverVersion():
    return "550.54.15"


def nvmlDeviceGetCount():
    return int(_get("gpus", 1))


def nvmlDeviceGetHandleByIndex(index):
    return index


def nvmlDeviceGetHandleByUUID(uuid):
    return int(uuid.rsplit("-", 1)[-1])


def nvmlDeviceGetIndex(handle):
    return handle


def nvmlDeviceGetName(handle):
    return _get("name", "Tesla V100-SXM2-32GB").encode()


def nvmlDeviceGetUUID(handle):
    return f"GPU-standin-{handle}"


def nvmlDeviceGetUtilizationRates(handle):
    _STATE["reads"] += 1
    return SimpleNamespace(gpu=90, memory=40)


def nvmlDeviceGetMemoryInfo(handle):
    return SimpleNamespace(used=3 * 2**30, total=32 * 2**30)


def nvmlDeviceGetPowerUsage(handle):
    return int(_get("watts", 200) * 1000)


def nvmlDeviceGetTemperature(handle, sensor):
    return 70


def nvmlDeviceGetClockInfo(handle, clock):
    return 1380 if clock == NVML_CLOCK_SM else 877


def nvmlDeviceGetTotalEnergyConsumption(handle):
    return int((time.time() - _STATE["started"]) * _get("watts", 200) * 1000)  # mJ


def nvmlDeviceGetCurrentClocksEventReasons(handle):
    script = _get("throttle", [0])
    return script[min(_STATE["reads"], len(script)) - 1] if _STATE["reads"] else script[0]


def nvmlDeviceGetEnforcedPowerLimit(handle):
    _supported("nvmlDeviceGetEnforcedPowerLimit")
    return int(_get("power_limit_w", 300) * 1000)


def nvmlDeviceGetPowerManagementDefaultLimit(handle):
    return int(_get("default_power_limit_w", 300) * 1000)


def nvmlDeviceGetEccMode(handle):
    return (_get("ecc", 1), _get("ecc", 1))


def nvmlDeviceGetMigMode(handle):
    return (_get("mig", 0), _get("mig", 0))


def nvmlDeviceGetPersistenceMode(handle):
    return _get("persistence", 1)


def _pcie(position):
    return _get("pcie", [3, 3, 16, 16])[position]


def nvmlDeviceGetCurrPcieLinkGeneration(handle):
    return _pcie(0)


def nvmlDeviceGetMaxPcieLinkGeneration(handle):
    return _pcie(1)


def nvmlDeviceGetCurrPcieLinkWidth(handle):
    return _pcie(2)


def nvmlDeviceGetMaxPcieLinkWidth(handle):
    return _pcie(3)


def nvmlEventSetCreate():
    return "event-set"


def nvmlDeviceRegisterEvents(handle, types, event_set):
    pass


def nvmlEventSetWait_v2(event_set, timeout_ms):
    xid = _get("xid", None)
    mine = xid and str(xid.get("rank", os.environ.get("RANK", "0"))) == os.environ.get("RANK", "0")
    if mine and not _STATE["xid_given"] and _STATE["reads"] >= xid.get("after_reads", 0):
        _STATE["xid_given"] = True
        return SimpleNamespace(
            device=0, eventType=nvmlEventTypeXidCriticalError, eventData=xid["number"]
        )
    raise NVMLError_Timeout("Timeout")


def nvmlEventSetFree(event_set):
    pass
