"""A GPU type's job environment (setup lines, python, variables) reaching the job, here with
the local launcher (SLURM: tests/test_slurm.py; Ray's refusal for DDP jobs below)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import config as cluster_config
from harness.launchers.base import job_command
from harness.launchers.ray_launcher import check_environments
from harness.planner import plan
from records import packages
from records.errors import UserError
from records.store import provenance

from .jobtools import EXE, second_python, store_of, tiny_sweep, write_cluster

ROOT = Path(__file__).resolve().parents[1]


def environment_cluster(tmp_path, launcher: dict, **gpu) -> object:
    return write_cluster(
        tmp_path,
        "env",
        {**launcher, "setup": ["export RB_SITE=all-types"], "env": {"RB_WHO": "launcher"}},
        {"v100": {"local": "cpu", "cpus_per_gpu": 1, **gpu}},
        tiny_sweep(models=["resnest_tiny_basic"], gpu_types=["v100"], epochs=1),
    )


def test_setup_python_and_env_reach_a_local_job_and_its_provenance(tmp_path):
    python = second_python(tmp_path / "venv2")
    path = environment_cluster(
        tmp_path, {"kind": "local"},
        setup=["export RB_SETUP_MARK=from-setup", "export RB_WHO=setup"],
        python=str(python), env={"RB_WHO": "gpu-type"},
    )  # fmt: skip
    result = subprocess.run(
        [str(EXE), "submit", str(path), "-q"], capture_output=True, text=True, cwd=tmp_path,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with store_of(tmp_path).begin() as conn:
        (row,) = conn.execute(provenance.select()).mappings().all()
    assert row["python"] == str(python)
    # The code's commit and the package set, so that two runs can be told apart by them.
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert row["code_commit"].removesuffix("+dirty") == head
    # venv2 adds no package of its own: the digest is this environment's, as a process of it
    # sees it from outside the checkout (pytest puts the checkout, and its egg-info, on its
    # own sys.path).
    here = subprocess.run(
        [sys.executable, "-c", "from jobs.provenance import packages_digest as d; print(d())"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    ).stdout.strip()  # fmt: skip
    assert row["packages_sha256"] == here and len(here) == 64
    # and the list whole, once per package set, for history's diffs
    (listed,) = store_of(tmp_path).package_lists([here]).values()
    assert packages.digest(sorted(f"{n}=={v}" for n, v in listed.items())) == here
    assert "torch" in listed
    environment = row["environment"]
    assert environment["setup"] == [
        "export RB_SITE=all-types",
        "export RB_SETUP_MARK=from-setup",
        "export RB_WHO=setup",
    ]  # the launcher's lines, then the GPU type's
    assert environment["python"] == str(python)
    # Each variable as the job saw it: env is applied after the setup lines, and the GPU
    # type's env wins over the launcher's.
    assert environment["variables"] == {
        "RB_SITE": "all-types", "RB_SETUP_MARK": "from-setup", "RB_WHO": "gpu-type",
    }  # fmt: skip


def test_a_failing_setup_line_fails_the_job_with_its_message(tmp_path):
    path = environment_cluster(tmp_path, {"kind": "local"}, setup=["module load cuda/12.6"])
    result = subprocess.run(
        [str(EXE), "submit", str(path), "-q"], capture_output=True, text=True, cwd=tmp_path,
        timeout=600,
    )  # fmt: skip
    assert result.returncode != 0
    status = subprocess.run(
        [str(EXE), "status", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert "module: command not found" in status.stdout, status.stdout


def test_the_job_command_runs_setup_then_variables_then_the_python(tmp_path):
    environment = cluster_config.JobEnvironment(
        setup=("cd /", "export A='x y'"), python="python3", env=(("A", "it's"),)
    )
    command = job_command(environment, tmp_path / "spec.json")
    assert command[:2] == ["bash", "-c"]
    script = command[2]
    assert script.splitlines() == ["set -e", "cd /", "export A='x y'", "export A='it'\"'\"'s'",
                                   'exec "$@"']  # fmt: skip
    assert command[4:] == ["python3", "-m", "jobs.run", "--spec", str(tmp_path / "spec.json")]
    shown = subprocess.run(
        ["bash", "-c", script.replace('exec "$@"', 'echo "$A"')], capture_output=True, text=True
    )
    assert shown.stdout == "it's\n"
    plain = job_command(cluster_config.JobEnvironment(), "s.json")
    assert plain == [sys.executable, "-m", "jobs.run", "--spec", "s.json"]


def test_ray_refuses_setup_and_python_for_a_ddp_job_but_takes_env(tmp_path):
    path = environment_cluster(tmp_path, {"kind": "ray"}, python="/opt/other/python")
    raw = yaml.safe_load(path.read_text())
    raw["sweep"]["gpus_per_job"] = 2
    path.write_text(yaml.safe_dump(raw))
    config = cluster_config.load(path)
    rows = [j.row() for j in plan(config)]
    with pytest.raises(UserError, match=r"gpu_types\.v100: setup and python reach one-GPU Ray"):
        check_environments(config, rows)
    raw["launcher"].pop("setup")
    raw["gpu_types"]["v100"].pop("python")
    path.write_text(yaml.safe_dump(raw))
    config = cluster_config.load(path)
    check_environments(config, rows)  # env alone reaches Ray Train's workers


def test_a_dry_run_shows_what_each_gpu_type_will_get(tmp_path):
    path = environment_cluster(
        tmp_path, {"kind": "slurm"}, partition="gpu-p100", gres="gpu:p100", time="12:00:00",
        setup=["module load cuda/12.6"], python="/opt/envs/cu126/bin/python",
        env={"NCCL_DEBUG": "WARN"},
    )  # fmt: skip
    result = subprocess.run(
        [str(EXE), "submit", str(path), "--dry-run"], capture_output=True, text=True,
        cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[:5] == [
        "v100 (1 GPU): sbatch --nodes=1 --ntasks-per-node=1 --cpus-per-task=1 "
        "--partition=gpu-p100 --gres=gpu:p100:1 --time=720",
        "    export RB_SITE=all-types",
        "    module load cuda/12.6",
        "    export RB_WHO=launcher",
        "    export NCCL_DEBUG=WARN",
    ]
    assert lines[5] == "    python: /opt/envs/cu126/bin/python"
    assert not (tmp_path / "results").exists()  # a dry run writes nothing
    raw = yaml.safe_load(path.read_text())
    raw["launcher"] = {"kind": "ray"}
    raw["gpu_types"]["v100"] = {"ray_resource": "v100", "cpus_per_gpu": 2}
    raw["sweep"]["gpus_per_job"] = 2
    path.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [str(EXE), "submit", str(path), "--dry-run"], capture_output=True, text=True,
        cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "v100 (2 GPUs): 2 Ray Train workers, each {'CPU': 2, 'GPU': 1, 'v100': 1.0}, PACK" in (
        result.stderr
    )
