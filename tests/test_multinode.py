"""DDP across hosts: a two-node SLURM on this machine (scripts/slurm-local.sh up --nodes 2).

Each node is a network, UTS, mount and process namespace of its own on a private bridge,
with its own slurmd; gloo talks across the bridge as it would across a cluster's network.
The nodes' GPU types are gres entries backed by /dev/null and /dev/zero, as on the
single-node cluster: the jobs run on the CPU.
"""

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import time
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
    run_cli,
    store_of,
    wait_for,
    write_cluster,
)

pytestmark = pytest.mark.slurm


def submit_until_first_epoch(tmp_path: Path, path: Path, name: str, env: dict | None = None):
    """Submit a sweep of one job; return the store, the job's row and folder once the job
    has checkpointed its first epoch."""
    submitted = run_cli(tmp_path, "submit", str(path), "-q", env=env)
    assert submitted.returncode == 0, submitted.stderr
    store = store_of(tmp_path)
    (job,) = store.jobs(name)
    folder = Path(job["job_dir"])
    wait_for(lambda: checkpointed(folder), 300, "the first epoch's checkpoint")
    return store, job, folder


@pytest.fixture(scope="module", autouse=True)
def two_nodes():
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%n %t"], capture_output=True, text=True,
            env=nodes_env(), timeout=20,
        )  # fmt: skip
        ready = out.returncode == 0 and sorted(set(out.stdout.split()[::2])) == ["node1", "node2"]
    except (OSError, subprocess.TimeoutExpired):
        ready = False
    if not ready:
        message = "no two-node SLURM here: run scripts/slurm-local.sh up --nodes 2"
        if os.environ.get("RESNEST_BENCH_TEST_SLURM_NODES"):
            pytest.fail(message)  # CI started it: a cluster that is down is a failure
        pytest.skip(message)


def test_a_two_node_job_trains_across_hosts_exactly_as_one_process(tmp_path):
    path = write_cluster(
        tmp_path, "two-nodes", {"kind": "slurm"},
        {"v100": {"partition": "gpu", "gres": "gpu:v100", "cpus_per_gpu": 1}},
        {"models": ["resnest_tiny_basic"], "datasets": ["synthetic"], "gpu_types": ["v100"],
         "epochs": 2, "max_steps": 4, "overrides": {"batch_size": 32}, "nodes": 2,
         "gpus_per_job": 1},
    )  # fmt: skip
    submitted = subprocess.run(
        [str(EXE), "submit", str(path), "-q", "--wait", "--timeout", "500"],
        capture_output=True, text=True, cwd=tmp_path, env=nodes_env(), timeout=600,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    (job,) = store_of(tmp_path).jobs("two-nodes")
    assert job["state"] == "succeeded" and job["gpus"] == 2, job
    folder = Path(job["job_dir"])
    (start,) = records(folder, "start")
    assert start["world_size"] == 2 and start["hosts"] == ["node1", "node2"]
    assert 0 < start["rendezvous_s"] < 60, start  # both ranks met over the bridge
    epochs = records(folder, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["world_size"] == 2 and e["images"] == 4 * 32 for e in epochs)
    (final,) = records(folder, "final")
    assert final["ranks_consistent"] is True  # every rank ended with the same weights

    assert_same_weights_as_one_process(folder, tmp_path, 2, 4)


NODES = Path(__file__).resolve().parent.parent / "scripts" / "slurm-nodes.sh"


def logs_of(folder: Path) -> str:
    """The tails of a job's SLURM logs, for an assertion's message."""
    logs = sorted((folder.parent.parent / "slurm").glob("*_log.*"))
    return "\n".join(f"== {p.name}\n" + "\n".join(p.read_text().splitlines()[-15:])
                     for p in logs)  # fmt: skip


def test_a_hung_node_ends_the_job_within_the_collective_timeout_and_rerun_resumes_it(tmp_path):
    """Node 2's rank freezes (SIGSTOP: a node that hangs, its sockets still open) after the
    first epoch. Rank 0 waits in its next collective no longer than the collective timeout,
    fails, and takes the step down; the job fails with the reason. `rerun` resumes it from its
    last checkpoint to the very weights of an uninterrupted run. (A timeout is a host failure,
    which the harness would retry by itself: ``max_retries: 0`` leaves it to the user here.)"""
    epochs, steps = 6, 4
    path = write_cluster(
        tmp_path, "hung-node", {"kind": "slurm", "slurm": {"max_retries": 0}},
        {"v100": {"partition": "gpu", "gres": "gpu:v100", "cpus_per_gpu": 1}},
        {"models": ["resnest_tiny_basic"], "datasets": ["synthetic"], "gpu_types": ["v100"],
         "epochs": epochs, "max_steps": steps, "overrides": {"batch_size": 32}, "nodes": 2,
         "gpus_per_job": 1},
    )  # fmt: skip
    env = {**nodes_env(), "RESNEST_BENCH_COLLECTIVE_TIMEOUT": "15"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return run_cli(tmp_path, *args, env=env)

    store, job, folder = submit_until_first_epoch(tmp_path, path, "hung-node", env)
    frozen = processes_on("node2", "submitit")
    assert frozen, "no task of the job on node2"
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()

    def ended():
        cli("status", "-c", str(path))  # one sacct refresh
        row = store.job(job["id"])
        return row if row["state"] in ("failed", "cancelled", "succeeded") else None

    row = wait_for(ended, 240, "the job's end after its node hung")
    waited = time.monotonic() - stopped_at
    assert row["state"] == "failed", row
    assert "timed out" in row["reason"].lower() or "timeout" in row["reason"].lower(), row
    assert waited < 15 + 120  # the timeout, then SLURM taking the step down; never for ever
    assert len(records(folder, "epoch")) < epochs

    rerun = cli("rerun", job["id"], "-q", "--wait", "--timeout", "400", "-c", str(path))
    assert rerun.returncode == 0, rerun.stderr
    assert store.job(job["id"])["state"] == "succeeded"
    starts = records(folder, "start")
    assert starts[-1]["attempt"] == 1 and starts[-1]["resumed_from"][0] >= 1
    assert starts[-1]["hosts"] == ["node1", "node2"]
    final = records(folder, "final")[-1]
    assert final["ranks_consistent"] is True

    assert_same_weights_as_one_process(folder, tmp_path, epochs, steps)


def two_node_sweep(tmp_path: Path, name: str, **sweep) -> Path:
    return write_cluster(
        tmp_path, name, {"kind": "slurm", "slurm": {"array_parallelism": 4}},
        {"v100": {"partition": "gpu", "gres": "gpu:v100", "cpus_per_gpu": 1},
         "a100": {"partition": "gpu", "gres": "gpu:a100", "cpus_per_gpu": 1}},
        {"models": ["resnest_tiny_basic"], "datasets": ["synthetic"], "gpu_types": ["v100"],
         "epochs": 2, "max_steps": 4, "overrides": {"batch_size": 32}, **sweep},
    )  # fmt: skip


def test_a_sweep_spreads_over_both_nodes_and_reads_as_on_one(tmp_path):
    """Four one-GPU jobs (two variants on two GPU types, one of each type per node): the
    arrays land on both nodes; status and table read as they do on one node."""
    path = two_node_sweep(
        tmp_path, "spread", models=["resnest_tiny_basic", "resnest_tiny_bottleneck"],
        gpu_types=["v100", "a100"],
    )  # fmt: skip
    result = run_cli(tmp_path, "submit", str(path), "-q", "--wait", "--timeout", "500")
    assert result.returncode == 0, result.stderr
    assert "4 succeeded, 0 failed, 0 not run" in result.stderr
    rows = store_of(tmp_path).jobs("spread")
    hosts = {records(Path(row["job_dir"]), "start")[0]["hosts"][0] for row in rows}
    assert hosts == {"node1", "node2"}
    status = run_cli(tmp_path, "status", "-c", str(path))
    assert status.returncode == 0 and "sweep spread: 4 succeeded" in status.stdout
    table = run_cli(tmp_path, "table", "-c", str(path), "--format", "csv")
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert sorted(r["gpu_type"] for r in rows) == ["a100", "a100", "v100", "v100"]  # 2 models
    assert {r["runs"] for r in rows} == {"1"}


def test_a_sweep_over_node_counts_runs_each_shape_and_the_table_gives_its_scaling(tmp_path):
    """``nodes: [1, 2]``: one job on one node, one across both (two arrays, one per shape);
    the table has a row per node count with its scaling efficiency (images/s on two nodes
    over twice one node's)."""
    path = two_node_sweep(tmp_path, "counts", nodes=[1, 2])
    result = run_cli(tmp_path, "submit", str(path), "-q", "--wait", "--timeout", "500")
    assert result.returncode == 0, result.stderr
    assert "2 succeeded, 0 failed, 0 not run" in result.stderr
    hosts = sorted(len(records(Path(r["job_dir"]), "start")[0]["hosts"])
                   for r in store_of(tmp_path).jobs("counts"))  # fmt: skip
    assert hosts == [1, 2]
    table = run_cli(tmp_path, "table", "-c", str(path), "--format", "json")
    assert table.returncode == 0, table.stderr
    rows = {(r["gpu_type"], r["nodes"]): r for r in json.loads(table.stdout)}
    assert sorted(rows) == [("v100", 1), ("v100", 2)]
    assert rows[("v100", 2)]["row"] == "v100 (2 nodes)"
    one, two = (rows[k]["images_per_s"] for k in sorted(rows))
    scaling = rows[("v100", 2)]["scaling_efficiency"]
    assert scaling == pytest.approx(two / (2 * one), abs=2e-3) and scaling > 0
    assert rows[("v100", 1)]["scaling_efficiency"] == 1.0


def test_requeue_of_a_two_node_job_stops_every_rank_at_one_step_and_records_each_epoch_once(
    tmp_path,
):
    path = two_node_sweep(tmp_path, "requeue-2n", epochs=6, max_steps=6, nodes=2)
    store, job, folder = submit_until_first_epoch(tmp_path, path, "requeue-2n")
    slurm_id = job["launcher_job_id"].removeprefix("slurm:")
    requeue = subprocess.run(
        ["scontrol", "requeue", slurm_id], capture_output=True, text=True, env=nodes_env(),
        timeout=60,
    )  # fmt: skip
    assert requeue.returncode == 0, requeue.stderr
    waited = run_cli(tmp_path, "status", "-c", str(path))
    assert waited.returncode == 0

    def done():
        run_cli(tmp_path, "status", "-c", str(path))
        return store.job(job["id"])["state"] in ("succeeded", "failed", "cancelled")

    wait_for(done, 400, "the requeued job's end")
    assert store.job(job["id"])["state"] == "succeeded"
    epochs = records(folder, "epoch")
    assert sorted(e["epoch"] for e in epochs) == [1, 2, 3, 4, 5, 6]  # each epoch once
    starts = records(folder, "start")
    assert [s["attempt"] for s in starts] == [0, 1] and starts[1]["resumed_from"] != [0, 0]
    assert all(s["hosts"] == ["node1", "node2"] for s in starts)
    logs = tmp_path / "results" / "requeue-2n" / "slurm"
    stops = [
        [line for line in (logs / f"{slurm_id}_{rank}_log.err").read_text().splitlines()
         if "exiting for requeue" in line]
        for rank in (0, 1)
    ]  # fmt: skip
    # Both ranks stopped at the same point, and said where; rank 0 wrote one checkpoint there.
    assert len(stops[0]) == 1 and [s.split("] ", 1)[-1] for s in stops[1]] == [
        s.split("] ", 1)[-1] for s in stops[0]
    ]
    epoch, step = starts[1]["resumed_from"]
    saved = [e for e in records(folder, "event") if e["event"] == "checkpoint"]
    assert [(e["epoch"], e["step"]) for e in saved if e["attempt"] == 0].count((epoch, step)) == 1


def test_a_node_that_dies_mid_job_is_requeued_and_the_job_resumes_when_it_is_back(tmp_path):
    """Node 2 crashes after the first epoch (its whole process namespace killed at once).
    SLURM declares the node failed (NODE_FAIL) and requeues the job, as a cluster does;
    `status` says so. When the node is back the job runs again as its next attempt, resumes
    from its last checkpoint, and ends with the weights of an uninterrupted run."""
    epochs, steps = 8, 4
    path = two_node_sweep(tmp_path, "dead-node", epochs=epochs, max_steps=steps, nodes=2)
    env = {**nodes_env(), "RESNEST_BENCH_COLLECTIVE_TIMEOUT": "15"}

    def status() -> None:
        run_cli(tmp_path, "status", "-c", str(path), env=env, timeout=120)

    store, job, folder = submit_until_first_epoch(tmp_path, path, "dead-node", env)
    subprocess.run([str(NODES), "kill-node", "2"], check=True, capture_output=True, timeout=60)
    held = None
    try:

        def requeued():
            status()
            row = store.job(job["id"])
            return row if (row["reason"] or "").startswith("requeued after NODE_FAIL") else None

        row = wait_for(requeued, 180, "SLURM's requeue after the node failure")
        assert row["state"] == "submitted", row
        # The node boots again once what is left of the first run on node 1 has gone: its
        # srun would otherwise signal the requeued run's step, which has the same id, and its
        # batch step's late end (exit 143) would count as the requeued run's end. A real node
        # takes minutes to boot; here it would take a second.
        wait_for(lambda: not any(processes_on("node1", name)
                                 for name in ("srun", "submitit", "slurmstepd")),
                 120, "the first run's end on node1")  # fmt: skip
        # Held until the node has booted and settled: a real node takes minutes to come back,
        # and registers long before a job lands on it. Here slurmd's first registrations and
        # the requeued run's start can cross, and SLURM then kills the new step on node 2 (it
        # happened once in CI: the run ended as a host failure and was retried, attempt 2).
        slurm_id = row["launcher_job_id"].removeprefix("slurm:")
        held = subprocess.run(["scontrol", "hold", slurm_id], env=env, capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        assert held.returncode == 0, held.stderr
    finally:
        subprocess.run([str(NODES), "start-node", "2"], check=True, capture_output=True,
                       timeout=120)  # fmt: skip
        if held is not None and held.returncode == 0:
            time.sleep(5)  # its registrations done
            subprocess.run(["scontrol", "release", slurm_id], env=env, check=True, timeout=30)

    def ended():
        status()
        return store.job(job["id"])["state"] in ("succeeded", "failed", "cancelled")

    wait_for(ended, 400, "the job's end on the node that came back")
    row = store.job(job["id"])
    assert row["state"] == "succeeded" and row["attempt"] == 1, (dict(row), logs_of(folder))
    starts = records(folder, "start")
    assert [s["attempt"] for s in starts] == [0, 1] and starts[1]["resumed_from"] != [0, 0]
    assert starts[1]["hosts"] == ["node1", "node2"]
    assert records(folder, "final")[-1]["ranks_consistent"] is True
    assert_same_weights_as_one_process(folder, tmp_path, epochs, steps)


# -- results on a filesystem without shared maps ---------------------------------------------


@contextlib.contextmanager
def shared_filesystem(disk: Path, mount: Path):
    """``disk`` seen at ``mount`` through a FUSE mount with ``direct_io`` on this host and on
    each node, as each host of a cluster is a client of one shared filesystem: a shared
    ``mmap`` fails there with ENODEV, as on Lustre and GPFS, so SQLite's WAL cannot work."""
    if shutil.which("bindfs") is None:
        pytest.fail("bindfs is not installed (.ci/run installs it)")
    disk.mkdir()
    mount.mkdir()
    holders = [(STATE / "run" / f"holder-{node}.pid").read_text().strip() for node in NODE_NAMES]
    enter = [[], *(["nsenter", "-t", holder, "-m"] for holder in holders)]
    mounted = []
    try:
        for prefix in enter:
            subprocess.run([*prefix, "bindfs", "-o", "direct_io", str(disk), str(mount)],
                           check=True, timeout=30)  # fmt: skip
            mounted.append(prefix)
        yield mount
    finally:
        for prefix in mounted:
            subprocess.run([*prefix, "fusermount", "-u", str(mount)], timeout=30, check=False)


NODE_NAMES = ("node1", "node2")
# The table's columns that do not depend on how fast this machine was at the time.
TIMELESS = ("gpu_type", "model", "nodes", "runs", "acc_pct", "reached_", "target_rule")


def test_a_sweep_with_its_results_on_a_filesystem_without_shared_maps_tables_as_on_a_local_disk(
    tmp_path,
):
    """The same sweep twice, its results_dir (and so the SQLite store, the jobs' folders and
    submitit's) once on a local disk and once on the shared mount: the jobs on the nodes write
    only their outboxes, the harness collects them into a store it keeps in rollback-journal
    mode, and ``table --format json`` reads the same."""
    tables, statuses = {}, {}
    with shared_filesystem(tmp_path / "disk", tmp_path / "shared") as shared:
        for where, folder in (("local", tmp_path / "local"), ("shared", shared / "user")):
            folder.mkdir()
            path = two_node_sweep(folder, "onfs", models=["resnest_tiny_basic",
                                                          "resnest_tiny_bottleneck"])  # fmt: skip
            result = run_cli(folder, "submit", str(path), "-q", "--wait", "--timeout", "500")
            assert result.returncode == 0, (where, result.stderr)
            assert "2 succeeded, 0 failed, 0 not run" in result.stderr, (where, result.stderr)
            status = run_cli(folder, "status", "-c", str(path))
            assert status.returncode == 0, (where, status.stderr)
            statuses[where] = status.stdout
            table = run_cli(folder, "table", "-c", str(path), "--format", "json")
            assert table.returncode == 0, (where, table.stderr)
            tables[where] = json.loads(table.stdout)
        results = sorted(os.listdir(tmp_path / "disk" / "user" / "results"))
    assert "results.db" in results and not [n for n in results if n.startswith("results.db-")]
    assert "rollback journal" in statuses["shared"] and "(WAL;" in statuses["local"]
    assert "sweep onfs: 2 succeeded" in statuses["shared"]
    assert [sorted(row) for row in tables["shared"]] == [sorted(row) for row in tables["local"]]

    def timeless(rows):
        return [{k: v for k, v in row.items() if any(t in k for t in TIMELESS)} for row in rows]

    assert timeless(tables["shared"]) == timeless(tables["local"])
    assert timeless(tables["local"])[0]["final_acc_pct"] is not None  # compared something


# -- a host that fails ----------------------------------------------------------------------


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, env=nodes_env(),
                   timeout=30)  # fmt: skip


def node_firewall(node: int, action: str, port: int) -> None:
    """Add (``-I``) or delete (``-D``) a rule in the node's own network namespace that
    refuses TCP connections to ``port``: a host whose network fails, for that host only."""
    subprocess.run(
        ["nsenter", f"--net=/var/run/netns/rbnode{node}", "iptables", action, "INPUT",
         "-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with", "tcp-reset"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def test_a_job_failed_by_its_host_runs_again_by_itself_on_another_host_and_succeeds(tmp_path):
    """A one-node job of two ranks. Both nodes are drained while it is submitted, so that its
    SLURM id, and with it its rendezvous port, is known before it starts; node 1 then refuses
    that port (iptables in its network namespace only) and is resumed alone. The job starts
    there, its ranks cannot meet, and it ends as a host failure. The harness, looking at the
    sweep (`status -c`), submits it again with node 1 excluded (`launcher.slurm.max_retries`,
    default 1); it trains on node 2 and succeeds. `status --job` lists both attempts with their
    hosts. A failure of the job itself is never retried (tests/test_launchers.py)."""
    path = write_cluster(
        tmp_path, "bad-host", {"kind": "slurm"},
        {"cpu": {"partition": "gpu", "cpus_per_gpu": 1}},  # no gres: two ranks on one node
        {"models": ["resnest_tiny_basic"], "datasets": ["synthetic"], "gpu_types": ["cpu"],
         "epochs": 2, "max_steps": 4, "overrides": {"batch_size": 32}, "gpus_per_job": 2},
    )  # fmt: skip
    # Long enough for two ranks starting on one node to meet on a loaded 2-core machine.
    env = {**nodes_env(), "RESNEST_BENCH_COLLECTIVE_TIMEOUT": "30"}
    port = None
    for node in ("node1", "node2"):
        scontrol("update", f"nodename={node}", "state=drain", "reason=resnest-bench test")
    try:
        submitted = run_cli(tmp_path, "submit", str(path), "-q", env=env)
        assert submitted.returncode == 0, submitted.stderr
        store = store_of(tmp_path)
        (job,) = store.jobs("bad-host")
        slurm_id = int(job["launcher_job_id"].removeprefix("slurm:"))
        port = 20000 + slurm_id % 20000  # jobs.distributed: the job's rendezvous port
        node_firewall(1, "-I", port)
        scontrol("update", "nodename=node1", "state=resume")

        def started() -> bool:
            run_cli(tmp_path, "status", "-c", str(path), env=env, timeout=120)
            return any(a["hosts"] for a in store.attempts(job["id"]))

        wait_for(started, 120, "the first attempt's start on node1")
        scontrol("update", "nodename=node2", "state=resume")

        def ended():
            run_cli(tmp_path, "status", "-c", str(path), env=env, timeout=120)
            row = store.job(job["id"])
            return row if row["state"] in ("succeeded", "failed", "cancelled") else None

        row = wait_for(ended, 400, "the job's end")
    finally:
        if port is not None:
            node_firewall(1, "-D", port)
        for node in ("node1", "node2"):
            with contextlib.suppress(subprocess.CalledProcessError):
                scontrol("update", f"nodename={node}", "state=resume")
    folder = Path(row["job_dir"])
    if row["state"] != "succeeded" or row["attempt"] != 1:  # whole, where pytest would cut it
        print(dict(row), *store.attempts(job["id"]), logs_of(folder), sep="\n")
    assert row["state"] == "succeeded" and row["attempt"] == 1, row["reason"]
    first, second = store.attempts(job["id"])
    assert (first["attempt"], first["hosts"], first["state"]) == (0, "node1", "failed"), first
    assert first["host_failure"] and first["reason"].startswith("host failure on node1"), first
    assert (second["attempt"], second["hosts"], second["state"]) == (1, "node2", "succeeded")
    assert not second["host_failure"] and second["launcher_job_id"] != first["launcher_job_id"]
    (start,) = records(folder, "start")  # the first attempt never got as far as its start
    assert start["attempt"] == 1 and start["hosts"] == ["node2", "node2"]
    assert [e["epoch"] for e in records(folder, "epoch")] == [1, 2]
    shown = run_cli(tmp_path, "status", "--job", job["id"], "-c", str(path), "--format", "csv")
    assert shown.returncode == 0, shown.stderr
    listed = list(csv.DictReader(io.StringIO(shown.stdout)))
    assert [(a["attempt"], a["hosts"], a["state"]) for a in listed] == [
        ("0", "node1", "failed"), ("1", "node2", "succeeded")]  # fmt: skip
    assert listed[0]["reason"].startswith("host failure on node1")
