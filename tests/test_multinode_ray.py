"""DDP across hosts through Ray: a Ray head on one node of the two-node set-up
(scripts/slurm-local.sh up --nodes 2) and a Ray worker node on the other.

Each node is a network, UTS, mount and process namespace of its own (with its own /tmp/ray);
the test starts one Ray daemon set inside each, with token authentication set explicitly and
a home of the test's own, and drives the harness from the first node, as a user on a cluster's
head node would. The GPU type v100 is a Ray custom resource, two units per node, so either
node has room for a whole two-worker job and only the placement strategy spreads it: a
stand-in for GPUs this machine does not have. The jobs run on the CPU, gloo across the bridge.
"""

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from .jobtools import (
    EXE,
    STATE,
    assert_same_weights_as_one_process,
    checkpointed,
    nodes_env,
    processes_on,
    records,
    store_of,
    wait_for,
    write_cluster,
)

pytestmark = pytest.mark.ray

RAY = EXE.parent / "ray"
HEAD = "10.231.7.2"  # node1, as scripts/slurm-nodes.sh numbers the nodes
PORT = 6380
TOKEN = secrets.token_hex(16)


def holder(node: int) -> str:
    return (STATE / "run" / f"holder-node{node}.pid").read_text().strip()


def on_node(node: int, *cmd: str, env: dict, cwd: Path | None = None, **kwargs):
    """``cmd`` run on a node: inside its network, host name, mounts and processes."""
    where = [f"--wd={cwd}"] if cwd else []
    return ["nsenter", "-t", holder(node), "-n", "-u", "-m", "-p", *where, "env", "-i",
            *(f"{k}={v}" for k, v in env.items()), *cmd]  # fmt: skip


@pytest.fixture(scope="module")
def ray_env():
    """The environment of every Ray process here, daemons and drivers alike."""
    if not (STATE / "run" / "holder-node2.pid").is_file():
        message = "no two-node set-up here: run scripts/slurm-local.sh up --nodes 2"
        if os.environ.get("RESNEST_BENCH_TEST_SLURM_NODES"):
            pytest.fail(message)
        pytest.skip(message)
    home = Path(tempfile.mkdtemp(prefix="resnest-bench-ray2-home-"))
    env = {
        **nodes_env(), "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN,
        "RAY_USAGE_STATS_ENABLED": "0",
    }  # fmt: skip
    yield env
    shutil.rmtree(home, ignore_errors=True)


def start_ray(node: int, env: dict) -> None:
    address = f"10.231.7.{node + 1}"
    role = (
        ["--head", f"--port={PORT}", "--include-dashboard=false"] if node == 1
        else [f"--address={HEAD}:{PORT}"]
    )  # fmt: skip
    cmd = on_node(
        node, str(RAY), "start", *role, f"--node-ip-address={address}", "--num-cpus=2",
        '--resources={"v100": 2}', "--disable-usage-stats", env=env,
    )  # fmt: skip
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr


def stop_ray(node: int, env: dict) -> None:
    """``ray stop`` finds Ray's processes by name: inside the node's process namespace it
    stops that node's Ray alone."""
    cmd = on_node(node, str(RAY), "stop", "--force", env=env)
    subprocess.run(cmd, capture_output=True, timeout=120)


def alive_nodes(env: dict) -> list[str]:
    """The addresses of the Ray nodes the head counts as alive."""
    script = (
        "import ray; ray.init(address='auto', log_to_driver=False); "
        "print(' '.join(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))"
    )
    out = subprocess.run(on_node(1, str(EXE.parent / "python"), "-c", script, env=env),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    return out.stdout.split() if out.returncode == 0 else []


@pytest.fixture(scope="module")
def ray_nodes(ray_env):
    try:
        start_ray(1, ray_env)
        start_ray(2, ray_env)
        nodes = wait_for(lambda: len(alive_nodes(ray_env)) == 2 and alive_nodes(ray_env), 60,
                         "two alive Ray nodes")  # fmt: skip
        assert nodes == [HEAD, "10.231.7.3"]
        yield ray_env
    finally:
        stop_ray(2, ray_env)
        stop_ray(1, ray_env)


def ray_sweep(tmp_path: Path, name: str, **sweep) -> Path:
    return write_cluster(
        tmp_path, name, {"kind": "ray", "ray": {"address": f"{HEAD}:{PORT}", "max_retries": 1}},
        {"v100": {"ray_resource": "v100", "cpus_per_gpu": 1}},
        {"models": ["resnest_tiny_basic"], "datasets": ["synthetic"], "gpu_types": ["v100"],
         "overrides": {"batch_size": 32}, "nodes": 2, "gpus_per_job": 1, **sweep},
    )  # fmt: skip


def submit(tmp_path: Path, path: Path, env: dict, **kwargs):
    """The harness on the first node, as a user on the head node runs it."""
    cmd = on_node(1, str(EXE), "submit", str(path), "-q", env=env, cwd=tmp_path)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # fmt: skip


def test_a_two_worker_torch_trainer_spreads_over_both_nodes_and_trains_as_one_process(
    ray_nodes, tmp_path
):
    path = ray_sweep(tmp_path, "ray-2n", epochs=2, max_steps=4)
    process = submit(tmp_path, path, ray_nodes)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    (job,) = store_of(tmp_path).jobs("ray-2n")
    assert job["state"] == "succeeded" and job["gpus"] == 2, job
    folder = Path(job["job_dir"])
    (start,) = records(folder, "start")
    # One worker on each node (Ray decides which holds rank 0).
    assert start["world_size"] == 2 and sorted(start["hosts"]) == ["node1", "node2"], start
    assert start["rendezvous_s"] is None  # Ray Train formed the group before the job began
    epochs = records(folder, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["world_size"] == 2 and e["images"] == 4 * 32 for e in epochs)
    assert records(folder, "final")[-1]["ranks_consistent"] is True
    assert_same_weights_as_one_process(folder, tmp_path, 2, 4)


def test_a_killed_ray_worker_is_restarted_and_resumes_from_its_checkpoint(ray_nodes, tmp_path):
    """The Ray Train worker on node 2 is killed after the first checkpoint: Ray Train restarts the
    worker group (``FailureConfig``), which resumes from the last checkpoint and ends with the
    weights of an uninterrupted run, each epoch recorded once."""
    epochs, steps = 8, 4
    path = ray_sweep(tmp_path, "ray-kill", epochs=epochs, max_steps=steps)
    process = submit(tmp_path, path, ray_nodes)
    try:
        store = wait_for(lambda: (tmp_path / "results" / "results.db").is_file()
                         and store_of(tmp_path), 120, "the store")  # fmt: skip
        job = wait_for(lambda: store.jobs("ray-kill"), 60, "the job's row")[0]
        folder = Path(job["job_dir"])
        wait_for(lambda: checkpointed(folder), 300, "the first epoch's checkpoint")
        (worker,) = processes_on("node2", "RayTrainWorker")
        os.kill(worker, signal.SIGKILL)
        _, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    row = store.job(job["id"])
    assert row["state"] == "succeeded", dict(row)
    starts = records(folder, "start")
    assert len(starts) == 2 and starts[1]["resumed_from"] != [0, 0], starts
    # One worker per node each time; the restarted group may give rank 0 to either node.
    assert all(sorted(s["hosts"]) == ["node1", "node2"] for s in starts), starts
    assert sorted(e["epoch"] for e in records(folder, "epoch")) == list(range(1, epochs + 1))
    assert records(folder, "final")[-1]["ranks_consistent"] is True
    assert_same_weights_as_one_process(folder, tmp_path, epochs, steps)
