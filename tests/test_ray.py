"""The Ray launcher against a real local Ray, inside a network namespace of the test's own.

Ray binds to the machine's network address whatever its options say. The namespace has only
loopback up, so there Ray uses 127.0.0.1; the test checks that every socket it listens on is
a loopback one. The GPU types v100 and a100 are Ray custom resources: a stand-in for GPUs this
machine does not have. The jobs run on the CPU.
"""

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from harness import config as cluster_config
from harness.planner import plan
from records.schema import epochs, events

from .jobtools import EXE, store_of, tiny_sweep, write_cluster

pytestmark = pytest.mark.ray

RAY = EXE.parent / "ray"
PORT = 6379
# Every Ray here runs with token authentication set explicitly, and with a home of the test's
# own: whatever ~/.ray holds on this machine (Ray writes ~/.ray/auth_token on any earlier
# `ray start`, and then turns authentication on) plays no part.
TOKEN = secrets.token_hex(16)
HOME = Path(tempfile.mkdtemp(prefix="resnest-bench-ray-home-"))
AUTH = {"HOME": str(HOME), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


def _netns_possible() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2)"
    return None


def in_ns(ns: str, *cmd: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **AUTH, **kwargs.pop("env", {})}
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def listening(ns: str) -> list[str]:
    out = in_ns(ns, "ss", "-H", "-ltn").stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1", "::ffff:127.0.0.1") or host.startswith("127.")


@pytest.fixture(scope="module")
def ray_ns():
    why = _netns_possible()
    if why:
        if os.environ.get("RESNEST_BENCH_TEST_RAY"):
            pytest.fail(why)
        pytest.skip(why)
    ns = f"rb-ray-{os.getpid()}"
    # A token left in the home by another Ray: the explicit settings must win over it.
    (HOME / ".ray").mkdir(exist_ok=True)
    (HOME / ".ray" / "auth_token").write_text(secrets.token_hex(16))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        started = in_ns(
            ns, str(RAY), "start", "--head", f"--port={PORT}", "--num-cpus=2",
            '--resources={"v100": 2, "a100": 1}', "--include-dashboard=false",
            "--disable-usage-stats",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        yield ns
    finally:
        in_ns(ns, str(RAY), "stop", "--force", timeout=120)
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(HOME, ignore_errors=True)


def cli_in(
    ns: str, *args: str, cwd: Path, timeout: int = 600, **kwargs
) -> subprocess.CompletedProcess:
    return in_ns(ns, str(EXE), *args, cwd=cwd, timeout=timeout, **kwargs)


def ray_yaml(tmp_path: Path, name: str, address: str = f"127.0.0.1:{PORT}", **sweep) -> Path:
    return write_cluster(
        tmp_path,
        name,
        {"kind": "ray", "ray": {"address": address, "max_retries": 1}},
        {
            "v100": {"ray_resource": "v100", "cpus_per_gpu": 1},
            "a100": {"ray_resource": "a100", "cpus_per_gpu": 1},
        },
        tiny_sweep(**sweep),
    )


def test_ray_listens_on_loopback_only(ray_ns):
    sockets = listening(ray_ns)
    assert f"[::ffff:127.0.0.1]:{PORT}" in sockets or f"127.0.0.1:{PORT}" in sockets, sockets
    assert len(sockets) >= 3  # the GCS, the raylet, the object manager at least
    assert all(is_loopback(address) for address in sockets), sockets


def test_sweep_on_ray_custom_resources_then_a_failed_job_rerun_alone(ray_ns, tmp_path):
    # One network on both GPU types: a job per custom resource, one of them doomed.
    path = ray_yaml(tmp_path, "ray-e2e", models=["resnest_tiny_basic"])
    jobs = plan(cluster_config.load(path))
    doomed = next(j for j in jobs if j.gpu_type == "a100" and j.model == "resnest_tiny_basic")
    folder = tmp_path / "results" / "ray-e2e" / "jobs" / doomed.id
    folder.mkdir(parents=True)
    (folder / "checkpoints").write_text("not a folder")  # this job fails when it saves

    result = cli_in(ray_ns, "submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "1 succeeded, 1 failed, 0 not run" in result.stderr
    assert all(is_loopback(address) for address in listening(ray_ns))  # workers too
    store = store_of(tmp_path)
    rows = {r["id"]: r for r in store.jobs("ray-e2e")}
    assert all(r["launcher_job_id"].startswith("ray:") for r in rows.values())
    failed = rows[doomed.id]
    assert failed["state"] == "failed" and failed["reason"].startswith("exit code 1")
    assert failed["attempt"] == 1  # the retry policy: tried again once (max_retries: 1)
    assert (folder / "stderr.log").read_text().count("Traceback") == 2
    table = cli_in(ray_ns, "table", "-c", str(path), "--format", "json", cwd=tmp_path)
    assert [r["gpu_type"] for r in json.loads(table.stdout)] == ["a100", "v100"]

    (folder / "checkpoints").unlink()
    result = cli_in(ray_ns, "rerun", doomed.id[:8], "-q", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 succeeded, 0 failed, 0 not run" in result.stderr
    after = {r["id"]: r for r in store.jobs("ray-e2e")}
    assert after[doomed.id]["state"] == "succeeded" and after[doomed.id]["attempt"] == 2
    for job_id in set(rows) - {doomed.id}:  # the others: not run again
        assert after[job_id]["launcher_job_id"] == rows[job_id]["launcher_job_id"]
        assert after[job_id]["ended_at"] == rows[job_id]["ended_at"]
    table = cli_in(ray_ns, "table", "-c", str(path), "--format", "json", cwd=tmp_path)
    rows = json.loads(table.stdout)
    assert [r["gpu_type"] for r in rows] == ["a100", "v100"]
    assert all(r["model"] == "resnest_tiny_basic" and r["runs"] == 1 for r in rows)


@pytest.mark.parametrize("token", ["wrong", None], ids=["wrong-token", "no-token"])
def test_a_refused_token_is_one_line(ray_ns, tmp_path, token):
    path = ray_yaml(tmp_path, "ray-auth", models=["resnest_tiny_basic"], gpu_types=["v100"])
    env = {"RAY_AUTH_TOKEN": secrets.token_hex(16)} if token else {"RAY_AUTH_MODE": "disabled"}
    if token is None:  # nothing set, and an empty home: no token at all
        env |= {"HOME": str(tmp_path), "RAY_AUTH_TOKEN": ""}
    result = cli_in(ray_ns, "submit", str(path), "-q", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "InvalidAuthToken" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "refused this machine's authentication token" in result.stderr
    assert "RAY_AUTH_TOKEN" in result.stderr
    assert {r["state"] for r in store_of(tmp_path).jobs("ray-auth")} == {"pending"}


def test_two_worker_torch_trainer_job(ray_ns, tmp_path):
    path = ray_yaml(
        tmp_path, "ray-ddp", models=["resnest_tiny_basic"], gpu_types=["v100"], gpus_per_job=2
    )
    result = cli_in(ray_ns, "submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    store = store_of(tmp_path)
    (job,) = store.jobs("ray-ddp")
    assert job["state"] == "succeeded"
    with store.begin() as conn:
        sizes = conn.execute(select(epochs.c.world_size, epochs.c.images)).all()
        final = conn.execute(select(events.c.record).where(events.c.kind == "final")).scalar()
        start = conn.execute(select(events.c.record).where(events.c.kind == "start")).scalar()
    assert {size for size, _ in sizes} == {2}
    assert {images for _, images in sizes} == {2 * 32}
    assert final["ranks_consistent"] is True
    assert start["world_size"] == 2
    assert (Path(job["job_dir"]) / "ray-train").is_dir()  # Ray Train's run folder


def test_gpu_type_the_ray_cluster_lacks_fails_at_submission(ray_ns, tmp_path):
    path = ray_yaml(tmp_path, "ray-k80", gpu_types=["k80"])
    data = yaml.safe_load(path.read_text())
    data["gpu_types"]["k80"] = {"ray_resource": "k80", "cpus_per_gpu": 1}
    path.write_text(yaml.safe_dump(data))
    started = time.monotonic()
    result = cli_in(ray_ns, "submit", str(path), "-q", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "resnest-bench: error: gpu_types.k80: the Ray cluster has no resource 'k80' "
        "(it has a100, v100)"
    ) in result.stderr
    assert time.monotonic() - started < 60
    data["gpu_types"]["k80"]["ray_resource"] = "a100"
    data["sweep"]["gpus_per_job"] = 2  # the cluster has one a100
    path.write_text(yaml.safe_dump(data))
    result = cli_in(ray_ns, "submit", str(path), "-q", cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "gpu_types.k80: a job needs 2 a100 (2 GPU(s) x 1), the Ray cluster has 1" in (
        result.stderr
    )
    assert {r["state"] for r in store_of(tmp_path).jobs("ray-k80")} == {"pending"}
    data["gpu_types"]["k80"]["ray_resource"] = "v100"  # two of them: room for two workers
    data["sweep"].update(gpus_per_job=1, nodes=[1, 2])  # one worker per node: needs two nodes
    path.write_text(yaml.safe_dump(data))
    result = cli_in(ray_ns, "submit", str(path), "-q", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sweep.nodes: a job of 2 nodes, the Ray cluster has 1 alive node(s)" in result.stderr
    assert {r["state"] for r in store_of(tmp_path).jobs("ray-k80")} == {"pending"}


def test_local_ray_started_for_the_sweep(ray_ns, tmp_path):
    # A Ray of the sweep's own (address: local) beside the running one, in the same namespace.
    path = ray_yaml(
        tmp_path, "ray-local", address="local", models=["resnest_tiny_basic"], gpu_types=["v100"]
    )
    data = yaml.safe_load(path.read_text())
    data["gpu_types"]["v100"] = {"cpus_per_gpu": 1}  # a fresh local Ray has no custom resources
    path.write_text(yaml.safe_dump(data))
    result = cli_in(ray_ns, "submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 succeeded, 0 failed, 0 not run" in result.stderr


def test_unreachable_ray_address_is_one_line(tmp_path):
    path = ray_yaml(tmp_path, "ray-none", address="127.0.0.1:1")
    result = subprocess.run(
        [str(EXE), "submit", str(path), "-q"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **AUTH},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "resnest-bench: error: launcher.ray.address: cannot connect to Ray at '127.0.0.1:1'" in (
        result.stderr
    )
