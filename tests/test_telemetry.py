"""Telemetry: the sampler's logic, energy, the CPU fallback, provenance and the mismatch flag.

This machine has no GPU and no NVIDIA driver. The NVML logic runs against ``NvmlStandIn``, a
small stand-in for the ``pynvml`` module that these tests define and name as such; the real
``pynvml`` is used where it can be: its failure to load here is the path a GPU-less node takes.
The CPU fallback runs for real (psutil).
"""

import sqlite3
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from jobs.nvml import NvmlSource
from jobs.provenance import HARDWARE
from jobs.telemetry import (
    CpuSource,
    Sampler,
    aggregate,
    gpu_matches,
    open_source,
)
from records.schema import epochs, provenance, telemetry
from records.store import SCHEMA_VERSION, Store

from .jobtools import TINY, records, run_job


class NvmlStandIn:
    """A stand-in for pynvml (not NVIDIA's library): GPUs whose power follows a script and
    whose energy counter (if they have one) integrates it exactly."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    class NotSupported(Exception):
        pass

    def __init__(self, clock, watts: list[float], energy_counter: list[bool]) -> None:
        self.clock = clock
        self.watts = watts  # per GPU, constant
        self.counter = energy_counter
        self.calls: list[str] = []
        self.start = clock()

    def _log(self, name):
        self.calls.append(name)

    def nvmlInit(self):
        self._log("init")

    def nvmlShutdown(self):
        self._log("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.watts)

    def nvmlDeviceGetHandleByIndex(self, i):
        self._log("handle")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self._log("handle")
        return int(uuid.removeprefix("GPU-uuid-"))

    def nvmlDeviceGetIndex(self, h):
        return h

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=50 + 10 * h, memory=20)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=(h + 1) * 2**30, total=16 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        return self.watts[h] * 1000  # mW

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 60

    def nvmlDeviceGetClockInfo(self, h, clock):
        return 1500 if clock == self.NVML_CLOCK_SM else 877

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._log("energy")
        if not self.counter[h]:
            raise self.NotSupported("energy counter not supported")
        return 1_000_000 + (self.clock() - self.start) * self.watts[h] * 1000  # mJ

    def nvmlDeviceGetName(self, h):
        return b"Tesla V100-SXM2-32GB"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-uuid-{h}"

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlDeviceGetComputeRunningProcesses(self, h):  # slow and locking: must not be used
        self._log("processes")
        return []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_energy_comes_from_the_counter_delta_where_the_gpu_has_one():
    clock = Clock()
    nvml = NvmlStandIn(clock, watts=[250.0, 100.0], energy_counter=[True, True])
    sampler = Sampler(NvmlSource([0, 1], nvml), interval=1.0, clock=clock)
    sampler.begin_epoch()
    for _ in range(10):
        clock.now += 1.5
        sampler.take()
    figures, samples = sampler.end_epoch()
    assert figures["energy_method"] == "counter"
    assert figures["energy_j"] == pytest.approx((250 + 100) * 15.0)
    assert figures["power_mean_w"] == pytest.approx(350.0)  # both GPUs together
    assert figures["gpu_util_mean"] == pytest.approx(55.0)
    assert figures["gpu_util_max"] == 60.0
    assert figures["gpu_mem_peak_bytes"] == 2 * 2**30
    assert len(samples) == 2 * 12 and {s["gpu_index"] for s in samples} == {0, 1}
    assert samples[0]["sm_clock"] == 1500 and samples[0]["temp_c"] == 60
    assert "processes" not in nvml.calls
    assert nvml.calls.count("handle") == 2  # handles looked up once
    # The energy counter (milliseconds a read on real GPUs) is read at the boundaries only:
    # once per GPU to find whether it exists, then at the epoch's start and end.
    assert nvml.calls.count("energy") == 2 * 3
    assert [s["energy_j"] is not None for s in samples if s["gpu_index"] == 0] == (
        [True] + [False] * 10 + [True]
    )


def test_energy_is_the_power_integral_without_a_counter():
    clock = Clock()
    nvml = NvmlStandIn(clock, watts=[300.0], energy_counter=[False])
    sampler = Sampler(NvmlSource([0], nvml), clock=clock)
    sampler.begin_epoch()
    for step in (0.5, 2.0, 0.5):  # uneven intervals
        clock.now += step
        sampler.take()
    figures, _ = sampler.end_epoch()
    assert figures["energy_method"] == "power_integral"
    assert figures["energy_j"] == pytest.approx(300.0 * 3.0)


def test_varying_power_integrates_as_trapezoids():
    samples = [
        {"time": 0.0, "gpu_index": 0, "power_w": 100.0},
        {"time": 1.0, "gpu_index": 0, "power_w": 200.0},
        {"time": 3.0, "gpu_index": 0, "power_w": 200.0},
    ]
    figures = aggregate(samples, "nvml")
    assert figures["energy_j"] == pytest.approx(150.0 + 400.0)
    assert figures["power_mean_w"] == pytest.approx(500 / 3)


def test_gpus_are_found_by_uuid_as_torch_reports_them():
    clock = Clock()
    nvml = NvmlStandIn(clock, watts=[1.0, 2.0, 3.0], energy_counter=[True] * 3)
    source = NvmlSource(["uuid-2"], nvml)  # torch's uuid has no GPU- prefix
    assert source.indices == [2]
    assert source.devices()[0] == {
        "gpu_index": 2,
        "name": "Tesla V100-SXM2-32GB",
        "uuid": "GPU-uuid-2",
        "memory_total": 16 * 2**30,
        "driver": "550.54.15",
        "energy_counter": True,
        **dict.fromkeys(HARDWARE),  # this stand-in has no settings to report: unknown
    }


def test_without_nvml_the_job_says_why_and_samples_the_cpu():
    # The real pynvml: there is no NVIDIA driver on this machine.
    source, reason = open_source("cuda", [])
    assert isinstance(source, CpuSource)
    assert reason.startswith("NVML unavailable: ")
    source, reason = open_source("cpu", [])
    assert isinstance(source, CpuSource) and reason == "no GPU: the job ran on the CPU"
    sampler = Sampler(source, interval=0.05).start()
    sampler.begin_epoch()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # some CPU work to measure
        sum(i * i for i in range(10_000))
    figures, samples = sampler.end_epoch()
    sampler.stop()
    assert figures["telemetry_source"] == "cpu"
    assert len(samples) >= 5  # the thread sampled at about 20 Hz
    assert 0 < figures["cpu_util_mean"] <= 100
    assert figures["rss_peak_bytes"] > 10 * 2**20
    assert sampler._thread is not None and not sampler._thread.is_alive()


@pytest.mark.parametrize(
    ("expected", "name", "device", "match"),
    [
        ("v100", "Tesla V100-SXM2-32GB", "cuda", True),
        ("V100", "NVIDIA A100-SXM4-80GB", "cuda", False),
        ("a100", "NVIDIA A100-SXM4-80GB", "cuda", True),
        ("k80", "", "cpu", False),  # asked for a GPU, ran on the CPU
        ("cpu", "", "cpu", True),
        (None, "anything", "cuda", None),
    ],
)
def test_gpu_type_match(expected, name, device, match):
    assert gpu_matches(expected, name, device) is match


def test_a_job_records_telemetry_and_flags_a_gpu_mismatch(tmp_path):
    out = tmp_path / "job"
    url = f"sqlite:///{tmp_path / 'store.db'}"
    result = run_job(
        out, *TINY, "--epochs", "2", "--max-steps", "3", "--telemetry-interval", "0.1",
        "--expect-gpu", "v100",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (prov,) = records(out, "provenance")
    assert prov["telemetry"] == "no GPU: the job ran on the CPU"
    assert prov["expected_gpu"] == "v100" and prov["gpu_mismatch"] is True
    assert prov["torch"] and prov["host"]
    rows = records(out, "epoch")
    assert all(r["telemetry_source"] == "cpu" for r in rows)
    assert all(0 < r["cpu_util_mean"] <= 100 and r["rss_peak_bytes"] > 0 for r in rows)
    assert all(r.get("energy_j") is None for r in rows)
    batches = records(out, "telemetry")
    assert [b["epoch"] for b in batches] == [1, 2]
    assert all(len(b["samples"]) >= 2 for b in batches)  # the two boundary samples at least

    store = Store(url)
    store.write_records(records(out))
    with store.begin() as conn:
        assert conn.execute(select(provenance.c.gpu_mismatch)).scalar() is True
        stored = conn.execute(select(telemetry)).all()
        cpu = conn.execute(select(epochs.c.cpu_util_mean)).scalars().all()
    assert len(stored) == sum(len(b["samples"]) for b in batches)
    assert len(cpu) == 2 and all(v > 0 for v in cpu)


def test_telemetry_off(tmp_path):
    out = tmp_path / "job"
    result = run_job(out, *TINY, "--epochs", "1", "--max-steps", "2", "--telemetry-interval", "0")
    assert result.returncode == 0, result.stderr
    (row,) = records(out, "epoch")
    assert row["telemetry_source"] == "off" and "cpu_util_mean" not in row
    assert records(out, "provenance")[0]["telemetry"] == "off"
    assert records(out, "telemetry") == []


def test_a_version_1_store_gains_the_telemetry_columns(tmp_path):
    path = tmp_path / "old.db"
    Store(f"sqlite:///{path}").engine.dispose()
    db = sqlite3.connect(path)  # make it look like a store written by version 1
    db.execute("ALTER TABLE epochs DROP COLUMN energy_j")
    db.execute("ALTER TABLE provenance DROP COLUMN gpu_mismatch")
    db.execute("ALTER TABLE provenance DROP COLUMN environment")  # and of version 2
    db.execute("UPDATE schema_version SET version = 1")
    db.commit()
    db.close()
    store = Store(f"sqlite:///{path}")
    store.write_records(
        [{"kind": "epoch", "job_id": "j", "attempt": 0, "epoch": 1, "energy_j": 5.0},
         {"kind": "provenance", "job_id": "j", "attempt": 0, "environment": {"setup": ["x"]}}]
    )  # fmt: skip
    with store.begin() as conn:
        assert conn.execute(select(epochs.c.energy_j)).scalar() == 5.0
        assert conn.execute(select(provenance.c.environment)).scalar() == {"setup": ["x"]}
    assert sqlite3.connect(path).execute("SELECT version FROM schema_version").fetchone() == (
        SCHEMA_VERSION,
    )
