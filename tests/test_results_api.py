"""The pandas results API (harness/results.py) against the store it reads and the table the
command line prints from the same store."""

import json
import subprocess
import sys

import pytest

from harness import results
from records.store import Store

from .test_compare import run

JOB = {"model": "resnest_tiny_basic", "dataset": "cifar10", "stage": "train", "gpus": 1,
       "seed": 0, "repeat": 0, "spec": {}, "depends_on": []}  # fmt: skip


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    store.add_sweep("s", {})
    store.add_jobs("s", [
        {"id": "t-v100", **JOB, "gpu_type": "v100", "job_dir": "/x/a"},
        {"id": "t-k80", **JOB, "gpu_type": "k80", "job_dir": "/x/b"},
        {"id": "i-v100", **JOB, "stage": "infer", "gpu_type": "v100", "job_dir": "/x/c"},
    ])  # fmt: skip
    for job in ("t-v100", "t-k80", "i-v100"):
        store.set_state(job, "succeeded")
    records = []
    for job, seconds in (("t-v100", 2.0), ("t-k80", 8.0)):
        for n in (1, 2, 3):
            records.append({"kind": "epoch", "job_id": job, "attempt": 0, "epoch": n,
                            "epoch_time": seconds * (3 if n == 1 else 1), "warmup": n == 1,
                            "images_per_sec": 50000 / seconds, "test_acc": 0.3 * n,
                            "gpu_util_mean": 90.0, "energy_j": 100.0 * n})  # fmt: skip
        records.append({"kind": "final", "job_id": job, "attempt": 0, "status": "succeeded",
                        "final_test_acc": 0.9, "best_test_acc": 0.9, "train_time": 3 * seconds,
                        "time_to_target": None})  # fmt: skip
        records.append({"kind": "telemetry", "job_id": job, "attempt": 0, "epoch": 1,
                        "samples": [{"time": 1000.0 + t, "gpu_index": 0, "gpu_util": 80 + t,
                                     "power_w": 250.0} for t in range(3)]})  # fmt: skip
    records += [
        {"kind": "inference", "job_id": "i-v100", "attempt": 0, "runtime": "eager",
         "batch_size": b, "available": True, "latency_p50_ms": 2.0 * b, "images_per_sec": 500.0}
        for b in (1, 8)
    ] + [{"kind": "inference", "job_id": "i-v100", "attempt": 0, "runtime": "caffe2",
          "batch_size": 0, "available": False, "reason": "no interpreter"}]  # fmt: skip
    store.write_records(records)
    return url


def test_each_frame_is_tidy_numeric_and_holds_the_stores_rows(store):
    epochs = results.epochs(store, "s")
    assert len(epochs) == 6 and set(epochs.gpu_type) == {"v100", "k80"}
    assert str(epochs.epoch_time_s.dtype) == "float64" and epochs.warmup.dtype == bool
    steady = epochs[~epochs.warmup].groupby("gpu_type").epoch_time_s.median()
    assert steady.to_dict() == {"k80": 8.0, "v100": 2.0}
    runs = results.runs(store, "s")
    assert sorted(runs.train_time_s) == [6.0, 24.0] and list(runs.final_test_acc) == [0.9, 0.9]
    samples = results.telemetry(store, "s")
    assert len(samples) == 6 and sorted(samples.gpu_util_pct)[:2] == [80, 80]
    assert set(samples.columns) >= {"job_id", "gpu_index", "time_s", "power_w", "gpu_util_pct"}
    deployed = results.deployments(store, "s")
    assert len(deployed) == 3
    measured = deployed[deployed.available]
    assert measured.set_index("batch_size").latency_p50_ms.to_dict() == {1: 2.0, 8: 16.0}
    (reason,) = deployed[~deployed.available.astype(bool)].reason
    assert reason == "no interpreter"


def test_the_comparison_frame_holds_the_tables_figures(store):
    frame = results.comparison(store, "s")
    code, out, err = run("table", "s", "--store", store, "--format", "json")
    assert code == 0, err
    table = json.loads(out)
    assert len(frame) > 0
    for row in table:
        for key, value in row.items():
            model, _, figure = key.partition(" ")
            if model == "resnest_tiny_basic" and isinstance(value, (int, float)):
                (mine,) = frame[
                    (frame.gpu_type == row["gpu_type"]) & (frame.figure == figure)
                ].value
                assert mine == pytest.approx(value), (row["gpu_type"], figure)


def test_the_command_line_does_not_import_pandas():
    code = "import sys; import harness.cli, harness.results; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_the_readmes_five_lines_reproduce_the_studys_seconds_per_epoch(store):
    # As in the README:
    e = results.epochs(store, "s")
    e = e[~e.warmup & (e.stage == "train")]
    per_run = e.groupby(["model", "gpu_type", "job_id"]).epoch_time_s.median()
    table = per_run.groupby(["model", "gpu_type"]).median().unstack("gpu_type")
    code, out, err = run("table", "s", "--store", store, "--layout", "study", "--format", "json")
    assert code == 0, err
    (study,) = [r for r in json.loads(out) if r["table"] == "seconds per epoch"]
    for gpu in ("v100", "k80"):
        assert table.loc[study["variant"], gpu] == pytest.approx(study[gpu])
