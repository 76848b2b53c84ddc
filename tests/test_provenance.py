"""Each attempt's provenance holds the hardware's settings (NVML, through a stand-in here:
there is no GPU) and the host's CPU; ``resnest-bench provenance JOB_A JOB_B`` prints what
differs between two attempts, packages included."""

import os

import pytest

from jobs.nvml import NvmlSource
from records import packages
from records.store import Store

from .jobtools import TINY, cli, records, run_job
from .test_telemetry import Clock, NvmlStandIn


class SettingsStandIn(NvmlStandIn):
    """The telemetry tests' pynvml stand-in (not NVIDIA's library), with a GPU's settings:
    GPU 0 power-capped at 250 of 300 W, ECC on, MIG off, on a PCIe 3 x8 link of a 4 x16
    slot; GPU 1 answers none of them, as a GPU without the feature does."""

    def _setting(self, h, value):
        if h == 1:
            raise self.NotSupported("not supported")
        return value

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._setting(h, 250_000)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h):
        return self._setting(h, 300_000)

    def nvmlDeviceGetEccMode(self, h):
        return self._setting(h, (1, 1))

    def nvmlDeviceGetMigMode(self, h):
        return self._setting(h, (0, 0))

    def nvmlDeviceGetPersistenceMode(self, h):
        return self._setting(h, 1)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return self._setting(h, 3)

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h):
        return self._setting(h, 4)

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return self._setting(h, 8)

    def nvmlDeviceGetMaxPcieLinkWidth(self, h):
        return self._setting(h, 16)


def test_the_gpus_settings_as_nvml_reports_them():
    nvml = SettingsStandIn(Clock(), watts=[250.0, 100.0], energy_counter=[True, False])
    first, second = NvmlSource([0, 1], nvml).devices()
    assert {k: first[k] for k in ("power_limit_w", "default_power_limit_w", "ecc", "mig",
                                  "persistence", "pcie_gen", "pcie_gen_max", "pcie_width",
                                  "pcie_width_max")} == {
        "power_limit_w": 250.0, "default_power_limit_w": 300.0, "ecc": True, "mig": False,
        "persistence": True, "pcie_gen": 3, "pcie_gen_max": 4, "pcie_width": 8,
        "pcie_width_max": 16,
    }  # fmt: skip
    assert second["power_limit_w"] is None and second["mig"] is None  # not supported: unknown


@pytest.fixture(scope="module")
def attempt(tmp_path_factory):
    """A real training attempt's provenance record (on this CPU), and a store holding it and
    a second attempt's as another host would report it: capped power, another torch."""
    out = tmp_path_factory.mktemp("prov") / "job"
    result = run_job(out, *TINY, "--epochs", "1", "--max-steps", "2")
    assert result.returncode == 0, result.stderr
    (record,) = records(out, "provenance")
    return out, record


def test_a_real_attempt_records_the_cpu_and_no_gpu_settings(attempt):
    _, record = attempt
    assert record["cpu_cores"] == os.cpu_count()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    assert record["cpu_model"] == model
    assert record["nccl"] is None and record["power_limit_w"] is None  # no GPU here
    assert record["math_mode"] == "fp32" and record["forward_flops"] > 0


def _cli(*args):
    return cli(*args, cwd=os.getcwd())


def test_provenance_prints_what_differs_between_two_attempts(attempt, tmp_path):
    _, record = attempt
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    store.add_sweep("p", {})
    store.add_jobs("p", [{"id": job, "stage": "train", "model": "resnest_tiny_basic",
                          "dataset": "synthetic", "gpu_type": "v100", "gpus": 1, "seed": 0,
                          "repeat": 0, "spec": {}, "depends_on": [], "job_dir": ""}
                         for job in ("aaaa1111", "bbbb2222")])  # fmt: skip
    names = packages.unpack(record["packages"])
    names["torch"] = "9.9.9"
    listed = sorted(f"{name}=={version}" for name, version in names.items())
    other = {**record, "job_id": "bbbb2222", "attempt": 1, "uid": "other", "host": "node7",
             "power_limit_w": 150.0, "torch": "9.9.9", "packages": packages.pack(listed),
             "packages_sha256": packages.digest(listed)}  # fmt: skip
    store.write_records([{**record, "job_id": "aaaa1111", "attempt": 0}, other])
    result = _cli("provenance", "aaaa", "bbbb", "--store", url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "aaaa1111:0 -> bbbb2222:1:"
    old_torch = record["torch"]
    assert sorted(line.strip() for line in lines[1:]) == sorted([
        f"host: {record['host']} -> node7", "power_limit_w: (none) -> 150.0",
        f"torch: {old_torch} -> 9.9.9",
        f"package torch {packages.unpack(record['packages'])['torch']} -> 9.9.9",
    ])  # fmt: skip
    same = _cli("provenance", "aaaa1111:0", "aaaa1111", "--store", url)
    assert same.returncode == 0 and same.stdout.splitlines()[1].strip() == "no difference"


@pytest.mark.parametrize(
    ("first", "says"),
    [
        ("nosuchjob", "no job 'nosuchjob' in the store"),
        ("aaaa1111:x", "aaaa1111:x: the attempt after ':' must be a number"),
        ("aaaa1111:5", "job aaaa1111: no provenance recorded for attempt 5"),
    ],
)
def test_a_job_or_attempt_that_is_not_there_is_one_line(tmp_path, first, says):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    store.add_sweep("p", {})
    store.add_jobs("p", [{"id": "aaaa1111", "stage": "train", "model": "m", "dataset": "d",
                          "gpu_type": "v100", "gpus": 1, "seed": 0, "repeat": 0, "spec": {},
                          "depends_on": [], "job_dir": ""}])  # fmt: skip
    result = _cli("provenance", first, "aaaa1111", "--store", url)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert says in result.stderr and result.stderr.count("\n") == 1
    assert result.stdout == ""
