"""A login node: `pip install resnest-bench` without the [jobs], [deploy] and [parquet] extras.

The commands run in a fresh interpreter whose imports of torch, torchvision, ONNX, ONNX
Runtime and Ray fail as they do where those are not installed (a finder first on
``sys.meta_path`` refuses them: this suite's environment has them, and the stand-in is the
only way to take them away from one process).
"""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from records.store import Store

from .jobtools import tiny_sweep, write_cluster

ABSENT = ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "ray", "pyarrow")
WITHOUT_JOB_PACKAGES = f"""
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
from harness.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {ABSENT!r})
assert not loaded, loaded
sys.exit(code)
"""


def login_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_JOB_PACKAGES, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def cluster(tmp_path: Path, kind: str, stages: list[str]) -> Path:
    launcher = {"kind": kind} | ({"slurm": {"array_parallelism": 2}} if kind == "slurm" else {})
    return write_cluster(
        tmp_path,
        f"login-{kind}",
        launcher,
        {"v100": {"partition": "gpu", "gres": "gpu:v100", "cpus_per_gpu": 1}},
        tiny_sweep(stages=stages, gpu_types=["v100"]),
    )


def test_plan_status_and_tables_run_without_torch(tmp_path):
    path = cluster(tmp_path, "slurm", ["train", "export", "infer"])
    plan = login_cli("submit", str(path), "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "train" in plan.stdout and "infer" in plan.stdout
    # Results as the jobs would have left them, read on the login node.
    config = yaml.safe_load(path.read_text())
    url = f"sqlite:///{tmp_path / 'login.db'}"
    store = Store(url)
    store.add_sweep(config["name"], {})
    store.add_jobs(
        config["name"],
        [{"id": "t1", "stage": "train", "model": "resnest_tiny_basic", "dataset": "cifar10",
          "gpu_type": "v100", "gpus": 1, "seed": 0, "repeat": 0, "spec": {}, "depends_on": [],
          "job_dir": str(tmp_path / "t1")}],
    )  # fmt: skip
    store.set_state("t1", "succeeded")
    store.write_records(
        [{"kind": "epoch", "job_id": "t1", "attempt": 0, "epoch": n, "epoch_time": 2.0,
          "images_per_sec": 500.0, "warmup": n == 1, "test_acc": 0.5 + n / 10}
         for n in (1, 2, 3)]
    )  # fmt: skip
    status = login_cli("status", config["name"], "--store", url, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "t1" in status.stdout and "succeeded" in status.stdout
    table = login_cli("table", config["name"], "--store", url, "--format", "json", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    (row,) = json.loads(table.stdout)
    assert (row["gpu_type"], row["model"]) == ("v100", "resnest_tiny_basic")
    assert row["epoch_time_s"] > 0, row
    parquet = login_cli("table", config["name"], "--store", url, "--format", "parquet", "--out",
                  str(tmp_path / "t.parquet"), cwd=tmp_path)  # fmt: skip
    assert parquet.returncode == 2 and not (tmp_path / "t.parquet").exists()
    assert parquet.stderr.strip() == (
        "resnest-bench: error: --format parquet needs pyarrow: pip install 'resnest-bench[parquet]'"
    )


def test_the_local_launcher_without_torch_is_one_line_naming_the_extras(tmp_path):
    path = cluster(tmp_path, "local", ["train", "export", "infer"])
    result = login_cli("submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        "resnest-bench: error: the local launcher runs the jobs on this machine, which lacks "
        "torch, torchvision, onnx, onnxscript, onnxruntime: "
        "pip install 'resnest-bench[jobs,deploy]'"
    )
    assert not list(tmp_path.rglob("spec.json"))  # no job was started
