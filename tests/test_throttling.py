"""Throttling per epoch: the sampler reads NVML's clock-event reasons (through the telemetry
tests' pynvml stand-in: there is no GPU here), each epoch gets the share of its samples in
which the GPU was slowed, by reason; the table counts the runs throttled in more than 5% of
their samples, and ``status --job`` names the reasons; XID events drained from NVML."""

import json
import statistics
from types import SimpleNamespace

from jobs.nvml import NvmlSource, xids_seen
from jobs.telemetry import Sampler
from records.store import Store

from .jobtools import cli
from .test_telemetry import Clock, NvmlStandIn


class ThrottlingStandIn(NvmlStandIn):
    """The stand-in (not NVIDIA's library) whose GPU reports, reading by reading, the clock
    event reasons of a script: a power cap, an idle GPU (not a slowdown), thermal ones."""

    def __init__(self, clock, script: list[int]) -> None:
        super().__init__(clock, watts=[200.0], energy_counter=[True])
        self.script = script
        self.reads = 0

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        mask = self.script[min(self.reads, len(self.script) - 1)]
        self.reads += 1
        return mask


def test_an_epochs_throttled_share_and_its_reasons_from_the_clock_event_reasons():
    clock = Clock()
    # 10 readings: 4 power-capped (0x4), 1 idle (0x1, not a slowdown), 1 power cap together
    # with software thermal slowdown (0x4 | 0x20), 4 clean
    script = [0x4, 0x4, 0x4, 0x4, 0x1, 0x24, 0, 0, 0, 0]
    sampler = Sampler(NvmlSource([0], ThrottlingStandIn(clock, script)), clock=clock)
    sampler.begin_epoch()
    for _ in range(8):
        clock.now += 1.0
        sampler.take()
    figures, samples = sampler.end_epoch()
    assert [s["throttle"] for s in samples] == script
    assert figures["throttled_pct"] == 50.0
    assert figures["throttle_reasons"] == "power_cap 50%, sw_thermal 10%"


class XidStandIn(NvmlStandIn):
    """The stand-in (not NVIDIA's library) with an XID event set: two GPUs, the second of
    which supports no events; ``pending`` holds the events the driver has yet to give."""

    nvmlEventTypeXidCriticalError = 0x8

    class Timeout(Exception):
        pass

    def __init__(self, clock) -> None:
        super().__init__(clock, watts=[200.0, 200.0], energy_counter=[True, True])
        self.pending: list[tuple[int, int]] = []
        self.registered: list[int] = []

    def nvmlEventSetCreate(self):
        return "set"

    def nvmlDeviceRegisterEvents(self, h, types, event_set):
        if h == 1:
            raise self.NotSupported("events not supported")
        self.registered.append(h)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        assert timeout_ms == 0  # the sampler never blocks on the driver
        if not self.pending:
            raise self.Timeout("Timeout")
        gpu, xid = self.pending.pop(0)
        return SimpleNamespace(device=gpu, eventType=self.nvmlEventTypeXidCriticalError,
                               eventData=xid)  # fmt: skip

    def nvmlEventSetFree(self, event_set):
        self._log("free")


def test_xids_are_drained_at_each_sample_and_named_by_gpu_in_the_epoch():
    clock = Clock()
    nvml = XidStandIn(clock)
    seen_before = len(xids_seen())
    source = NvmlSource([0, 1], nvml)
    assert nvml.registered == [0]  # the GPU without events keeps the others'
    sampler = Sampler(source, clock=clock)
    sampler.begin_epoch()
    nvml.pending += [(0, 79), (0, 79), (0, 48)]
    clock.now += 1.0
    sampler.take()
    figures, samples = sampler.end_epoch()
    assert [s.get("xids") for s in samples if s["gpu_index"] == 0] == [None, [79, 79, 48], None]
    assert figures["xids"] == "79 (GPU 0), 48 (GPU 0)"
    sampler.begin_epoch()
    figures, _ = sampler.end_epoch()
    assert figures["xids"] is None  # an epoch without one says nothing
    nvml.pending.append((0, 94))
    sampler.take()  # between two epochs (the evaluation): carried into the next
    sampler.begin_epoch()
    figures, _ = sampler.end_epoch()
    assert figures["xids"] == "94 (GPU 0)"
    nvml.pending.append((0, 13))  # given after the last sample: still seen, at close
    sampler.stop()
    assert [x for _, x, _ in xids_seen()[seen_before:]] == [79, 79, 48, 94, 13]
    assert "free" in nvml.calls


def test_a_gpu_that_gives_no_reasons_leaves_the_figure_unknown():
    clock = Clock()
    sampler = Sampler(NvmlSource([0], NvmlStandIn(clock, [100.0], [True])), clock=clock)
    sampler.begin_epoch()
    figures, _ = sampler.end_epoch()
    assert figures["throttled_pct"] is None and figures["throttle_reasons"] is None


def test_the_table_counts_throttled_runs_and_status_names_the_reasons(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    store.add_sweep("th", {"name": "th", "gpu_types": {"v100": {}}})
    # a run throttled in 30% of its samples (a power cap), one in 2%, one with no reasons
    shares = {"run0": [0.0, 30.0, 30.0], "run1": [0.0, 2.0, 2.0], "run2": [None, None, None]}
    store.add_jobs("th", [{"id": job, "stage": "train", "model": "resnest_tiny_basic",
                           "dataset": "synthetic", "gpu_type": "v100", "gpus": 1, "seed": i,
                           "repeat": 0, "spec": {}, "depends_on": [], "job_dir": ""}
                          for i, job in enumerate(shares)])  # fmt: skip
    store.write_records(
        [
            {
                "kind": "start",
                "job_id": job,
                "attempt": 0,
                "time": 1000.0,
                "hosts": ["gpu7"],
                "uid": f"start-{job}",
            }
            for job in shares
        ]
    )
    store.write_records([
        {"kind": "epoch", "job_id": job, "attempt": 0, "epoch": n, "epoch_time": 10.0,
         "images_per_sec": 100.0, "warmup": n == 1, "test_acc": 0.5, "throttled_pct": share,
         "throttle_reasons": f"power_cap {share:.0f}%" if share else None}
        for job, values in shares.items() for n, share in enumerate(values, start=1)
    ])  # fmt: skip
    for job in shares:
        store.set_state(job, "succeeded")
    result = cli("table", "th", "--store", url, "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["throttled"] == 1  # 30% > 5%; 2% is not; a run without reasons is not counted
    assert statistics.mean(shares["run0"][1:]) == 30.0  # what the summary keeps: timed epochs
    text = cli("table", "th", "--store", url, cwd=tmp_path).stdout
    assert "throttled" in text
    status = cli("status", "th", "--store", url, "--job", "run0", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "attempt 0 throttled: epoch 2 30% (power_cap 30%); epoch 3 30% (power_cap 30%)" in (
        status.stdout
    )
    quiet = cli("status", "th", "--store", url, "--job", "run2", cwd=tmp_path)
    assert "throttled" not in quiet.stdout
