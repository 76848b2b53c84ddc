"""Launcher logic that needs no cluster: sbatch options from cluster.yaml, sacct states."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config import GpuType
from harness.launchers.sacct import _expand, map_state
from harness.launchers.slurm_site import _minutes, sbatch_parameters


def sbatch_text(params: dict, folder: Path) -> str:
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command="true", folder=folder, **params)


def test_each_gpu_type_setting_becomes_its_sbatch_option(tmp_path):
    gpu = GpuType(
        partition="gpu-v100",
        gres="gpu:v100",
        constraint="ib&v100_32g",
        account="vision",
        qos="high",
        time="1-02:30:00",
        cpus_per_gpu=6,
        mem_per_gpu="40G",
    )
    text = sbatch_text(sbatch_parameters(gpu, gpus_per_node=4, nodes=2), tmp_path)
    for line in (
        "#SBATCH --partition=gpu-v100",
        "#SBATCH --gres=gpu:v100:4",  # the GPUs of one node
        "#SBATCH --constraint='ib&v100_32g'",  # quoted; sbatch reads the quotes
        "#SBATCH --account=vision",
        "#SBATCH --qos=high",
        f"#SBATCH --time={24 * 60 + 150}",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --mem-per-gpu=40G",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",  # 2 x 4 tasks, one per GPU
        "#SBATCH --signal=USR2@90",  # the time-limit notice the job checkpoints on
    ):
        assert line in text.splitlines(), line
    # One failed rank ends the whole step rather than leaving its peers waiting.
    assert "--kill-on-bad-exit=1" in next(x for x in text.splitlines() if x.startswith("srun"))


def test_without_a_time_the_partition_default_applies(tmp_path):
    text = sbatch_text(sbatch_parameters(GpuType(gres="gpu:a100"), 1, 1), tmp_path)
    assert not [line for line in text.splitlines() if line.startswith("#SBATCH --time")]
    assert "--kill-on-bad-exit" not in text  # one task: nothing to take down
    assert "#SBATCH --partition" not in text


@pytest.mark.parametrize(
    ("limit", "minutes"),
    [
        ("90", 90),
        ("02:00", 2),
        ("05:30", 6),
        ("00:10:01", 11),
        ("2-00:00:00", 2880),
        ("2-05", 2 * 1440 + 300),
        ("1-02:30", 1440 + 150),
        ("08:00:00", 480),
    ],  # SLURM's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
)
def test_slurm_time_limits_in_minutes(limit, minutes):
    assert _minutes(limit) == minutes


# -- the mapping of sacct states -------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"State": "PENDING", "Reason": "Resources"}, ("submitted", "Resources")),
        ({"State": "REQUEUED", "Reason": "None"}, ("submitted", None)),
        ({"State": "RUNNING"}, ("running", None)),
        ({"State": "COMPLETED", "ExitCode": "0:0"}, ("succeeded", None)),
        ({"State": "OUT_OF_MEMORY", "ExitCode": "0:125"}, ("failed", "OOM: the job ran out of memory")),  # noqa: E501
        ({"State": "TIMEOUT"}, ("failed", "TIMEOUT: the job reached its time limit")),
        ({"State": "NODE_FAIL"}, ("failed", "NODE_FAIL: a node of the job failed")),
        ({"State": "PREEMPTED"}, ("failed", "PREEMPTED: the job was preempted and not requeued")),
        ({"State": "CANCELLED by 0", "Reason": "None"}, ("cancelled", "CANCELLED by 0")),
        ({"State": "CANCELLED", "Reason": "Dependency"},
         ("cancelled", "not run: a job it depends on did not succeed")),
        # a person's scancel of a job waiting on its dependency: theirs, not SLURM's
        ({"State": "CANCELLED by 0", "Reason": "Dependency"}, ("cancelled", "CANCELLED by 0")),
        ({"State": "FAILED", "ExitCode": "3:0"}, ("failed", "diverged")),
        ({"State": "FAILED", "ExitCode": "1:0"}, ("failed", "FAILED exit code 1")),
        ({"State": "FAILED", "ExitCode": "0:9"}, ("failed", "FAILED exit code 0 (signal 9)")),
        # A second runner of a job another one holds (a rerun racing a requeue): not a failure.
        ({"State": "FAILED", "ExitCode": "5:0"}, ("cancelled", "not run: already running")),
    ],
)  # fmt: skip
def test_sacct_states_map_onto_the_store(record, expected):
    assert map_state(record) == expected


def test_a_dependency_slurm_dropped_though_the_parent_succeeded_is_named_as_such(
    tmp_path, monkeypatch
):
    """SLURM cancels an aftercorr task split out after its parent task's record was purged
    (seen on the single-node SLURM with MinJobAge=5: tasks 11 on of a 40-task transfer array
    whose trainings had all ended): the reason says so, not that a parent did not succeed;
    a transfer whose training failed names its parent. Recorded sacct lines: no cluster."""
    from harness.launchers import sacct
    from records.store import Store

    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.add_sweep("s", {})
    job = {"model": "m", "dataset": "synthetic", "gpu_type": "v100", "gpus": 1, "seed": 0,
           "repeat": 0, "spec": {}, "job_dir": str(tmp_path / "jobs" / "x")}  # fmt: skip
    store.add_jobs("s", [
        {**job, "id": "ta", "stage": "train", "depends_on": []},
        {**job, "id": "tb", "stage": "train", "depends_on": []},
        {**job, "id": "xa", "stage": "transfer", "depends_on": ["ta"]},
        {**job, "id": "xb", "stage": "transfer", "depends_on": ["tb"]},
    ])  # fmt: skip
    store.set_states([("ta", "succeeded", {}), ("tb", "failed", {"reason": "diverged"})])
    store.set_states([(j, "submitted", {"launcher_job_id": f"slurm:38_{i}", "submitted_at": 1e9})
                      for i, j in enumerate(["xa", "xb"])])  # fmt: skip
    when = "2026-12-06T17:11:32"
    recorded = "".join(f"38_{i}|CANCELLED|0:0|Dependency|None|{when}|{when}|None\n" for i in (0, 1))
    monkeypatch.setattr(sacct, "_run", lambda cmd, timeout=60: recorded)
    rows = [row for row in store.jobs("s") if row["stage"] == "transfer"]
    assert sacct.poll(store, rows) == {"xa": "cancelled", "xb": "cancelled"}
    assert store.job("xa")["reason"] == sacct.DEPENDENCY_DROPPED
    assert store.job("xb")["reason"] == "not run: depends on tb, which failed"


def test_jobs_whose_dependency_slurm_dropped_go_again_with_those_not_run_for_them(monkeypatch):
    """What ``status`` and ``submit --wait`` submit again for such jobs: the job, as a new
    attempt, and the jobs after it that were not run for it, and a job not run for a parent
    that has gone again since; not a job whose parent failed, one a person cancelled, nor a
    waiting one (the feeder's or the top-up's). The sbatch side is stood in for here
    (it is the launcher's own, shown on the real SLURM); the full-scale site-limits test
    shows the whole on the real SLURM."""
    from harness.launchers import slurm
    from harness.launchers.sacct import DEPENDENCY_DROPPED

    def row(job_id: str, state: str, reason: str | None, parents: list[str]) -> dict:
        return {"id": job_id, "state": state, "reason": reason, "depends_on": parents,
                "attempt": 0}  # fmt: skip

    rows = [
        row("ta", "succeeded", None, []),
        row("tb", "failed", "diverged", []),
        row("xa", "cancelled", DEPENDENCY_DROPPED, ["ta"]),
        row("xb", "cancelled", "not run: depends on tb, which failed", ["tb"]),
        row("xc", "submitted", None, ["ta"]),  # submitted again: its dependency was dropped
        row("ea", "cancelled", "not run: depends on xa, which cancelled", ["xa"]),
        # held by a feeder, which found xc's first attempt cancelled: not run for nothing
        row("ec", "cancelled", "not run: depends on xc, which cancelled", ["xc"]),
        row("ia", "waiting", "waiting for room: 4 queued jobs per user", ["ea"]),
        row("ib", "cancelled", "CANCELLED by 0", ["tb"]),  # a person's: stays
    ]
    sent = []
    monkeypatch.setattr(slurm, "submit", lambda config, store, jobs: sent.extend(jobs))
    assert slurm.retry_dropped_dependencies(None, None, rows) == ["xa", "ec"]
    assert [(job["id"], job["attempt"]) for job in sent] == [("xa", 1), ("ea", 1), ("ec", 1)]
    sent.clear()
    settled = [r for r in rows if r["id"] not in ("xa", "ec")]
    assert slurm.retry_dropped_dependencies(None, None, settled) == []
    assert sent == []


def test_bad_input_reason_comes_from_the_log(tmp_path):
    err = tmp_path / "1_0_0_log.err"
    err.write_text("submitit INFO starting\nresnest-bench: error: no such dataset folder x\n")
    assert map_state({"State": "FAILED", "ExitCode": "2:0"}, err) == (
        "failed",
        "bad input: no such dataset folder x",
    )


def test_a_second_runner_names_the_holder_from_the_log(tmp_path):
    err = tmp_path / "7_0_0_log.err"
    err.write_text("resnest-bench: already running (node3, pid 4242): /results/jobs/abc\n")
    assert map_state({"State": "FAILED", "ExitCode": "5:0"}, err) == (
        "cancelled",
        "not run: already running (node3, pid 4242): /results/jobs/abc",
    )


def test_collapsed_pending_array_tasks_are_expanded():
    assert _expand("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert _expand("12_3") == ["12_3"]


@settings(max_examples=200, deadline=None)
@given(
    parents=st.lists(st.lists(st.integers(0, 30), max_size=3), min_size=1, max_size=30),
    room=st.integers(0, 35),
)
def test_the_jobs_that_fit_are_at_most_the_room_and_never_leave_a_parent_behind(parents, room):
    """``fit`` over any plan (each job's parents among the jobs before it, or from an earlier
    submission): at most ``room`` jobs, none whose parent in the plan stays behind, and as
    many as that allows in plan order."""
    from harness.launchers.slurm_site import fit

    jobs = [
        {"id": f"j{i}", "depends_on": [f"j{p}" if p < i else f"old{p}" for p in mine]}
        for i, mine in enumerate(parents)
    ]
    chosen = fit(jobs, room)
    assert len(chosen) <= room
    ids = {job["id"] for job in jobs}
    for job in jobs:
        if job["id"] in chosen:
            assert all(p in chosen for p in job["depends_on"] if p in ids)
    # Greedy in plan order: a job left out while there was room had a parent left out.
    taken = 0
    for job in jobs:
        if job["id"] in chosen:
            taken += 1
        elif taken < room:
            assert any(p not in chosen for p in job["depends_on"] if p in ids)


# -- host failures: which failures are the host's, and which are retried --------------------


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_rendezvous_that_cannot_connect_is_a_host_fault_and_the_jobs_own_errors_are_not():
    import datetime

    import torch.distributed as dist

    from jobs.stage import host_fault

    with pytest.raises(Exception) as refused:  # a real store client, nobody listening
        dist.TCPStore("127.0.0.1", closed_port(), 2, False, datetime.timedelta(seconds=1))
    assert host_fault(refused.value), repr(refused.value)
    gloo = "[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 15000ms for recv"
    assert host_fault(RuntimeError(gloo))
    assert host_fault(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    for own in (ValueError("bad shape"), RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
                KeyError("conv1.weight"), ZeroDivisionError()):  # fmt: skip
        assert not host_fault(own), own


def test_a_host_failure_reads_as_one_in_the_store_whatever_code_srun_passed_on(tmp_path):
    from harness.launchers.slurm import host_failed

    err = tmp_path / "9_0_log.err"
    err.write_text("resnest-bench: host failure on node1: The client socket has timed out\n")
    for code in ("76:0", "1:0", "0:9"):  # the job's own code, or a rank killed by srun
        state, reason = map_state({"State": "FAILED", "ExitCode": code}, err)
        assert (state, reason) == ("failed", "host failure on node1: The client socket has "
                                             "timed out"), code  # fmt: skip
        assert host_failed(state, reason)
    assert host_failed(*map_state({"State": "NODE_FAIL"}))
    assert host_failed(*map_state({"State": "BOOT_FAIL"}))
    err.write_text("resnest-bench: error: no such dataset folder x\n")
    assert not host_failed(*map_state({"State": "FAILED", "ExitCode": "2:0"}, err))
    err.write_text("Traceback (most recent call last):\nValueError: bad shape\n")
    assert not host_failed(*map_state({"State": "FAILED", "ExitCode": "1:0"}, err))
    assert not host_failed(*map_state({"State": "FAILED", "ExitCode": "3:0"}))  # diverged
    assert not host_failed(*map_state({"State": "TIMEOUT"}))
    assert not host_failed(*map_state({"State": "OUT_OF_MEMORY"}))


def test_a_host_failure_only_another_rank_saw_reads_as_one(tmp_path):
    """srun (--kill-on-bad-exit) kills rank 0 when rank 1 ends first with the job's host
    failure: rank 0's log then ends at its start, and rank 1's log has the line."""
    from harness.launchers.sacct import err_logs

    folder = tmp_path / "results" / "s" / "slurm"
    folder.mkdir(parents=True)
    (folder / "9_0_log.err").write_text("submitit INFO: Loading pickle: x/9_submitted.pkl\n")
    (folder / "9_1_log.err").write_text(
        "resnest-bench: host failure on node1: The client socket has timed out\n"
    )
    (folder / "19_0_log.err").write_text("resnest-bench: host failure on node7: not this job\n")
    job = {"launcher_job_id": "slurm:9", "job_dir": str(tmp_path / "results" / "s" / "jobs" / "a")}
    logs = err_logs(job)
    assert [p.name for p in logs] == ["9_0_log.err", "9_1_log.err"]
    for code in ("76:0", "0:9", "137:0"):
        assert map_state({"State": "FAILED", "ExitCode": code}, logs) == (
            "failed",
            "host failure on node1: The client socket has timed out",
        ), code
    # rank 0's own line wins over another rank's
    (folder / "9_0_log.err").write_text("resnest-bench: error: no such dataset folder x\n")
    assert map_state({"State": "FAILED", "ExitCode": "2:0"}, err_logs(job))[1] == (
        "bad input: no such dataset folder x"
    )
    # without the other ranks' logs (rank 0's alone), nothing says host failure
    (folder / "9_0_log.err").write_text("submitit INFO: Loading pickle: x/9_submitted.pkl\n")
    assert map_state({"State": "FAILED", "ExitCode": "0:9"}, logs[0])[1].startswith("FAILED")


def five_planned_jobs(tmp_path, name: str, slurm: dict):
    """A SLURM sweep's five training jobs, planned into a SQLite store (no SLURM runs)."""
    from harness import config as cluster_config
    from harness.sweep import record_plan
    from records.store import open_store

    from .jobtools import tiny_sweep, write_cluster

    path = write_cluster(
        tmp_path, name, {"kind": "slurm", "slurm": slurm}, {"v100": {"gres": "gpu:v100"}},
        tiny_sweep(gpu_types=["v100"], models=["resnest_tiny_basic"], seeds=[0, 1, 2, 3, 4]),
    )  # fmt: skip
    config = cluster_config.load(path)
    store = open_store(None, config.results_dir)
    record_plan(config, store)
    return config, store


def test_only_host_failures_are_retried_and_no_more_than_max_retries(tmp_path):
    """The store's side of the retry (no SLURM runs here: the jobs chosen would be submitted,
    and none is): a job's own failure is never retried, nor a host failure whose attempts
    have used up ``max_retries``, which then says so, nor a NODE_FAIL (SLURM requeues it); a
    host failure whose attempt the queue
    has not reported yet waits for it. The retry itself is tests/test_multinode.py's."""
    from harness.launchers.slurm import retry_host_failures

    config, store = five_planned_jobs(tmp_path, "retries", {"max_retries": 1})
    own, used_up, unseen, diverged, node_fail = (row["id"] for row in store.jobs("retries"))
    host = "host failure on node1: Connection closed by peer"
    store.set_states([
        (own, "failed", {"reason": "FAILED exit code 1: ValueError: bad shape"}),
        (used_up, "failed", {"reason": host, "attempt": 1}),
        (unseen, "failed", {"reason": host}),
        (diverged, "failed", {"reason": "diverged"}),
        (node_fail, "failed", {"reason": "NODE_FAIL: a node of the job failed"}),
    ])  # fmt: skip
    store.record_attempts([
        {"job_id": own, "attempt": 0, "state": "failed", "host_failure": False},
        {"job_id": used_up, "attempt": 0, "state": "failed", "host_failure": True,
         "hosts": "node1"},
        {"job_id": used_up, "attempt": 1, "state": "failed", "host_failure": True,
         "hosts": "node2"},
        {"job_id": diverged, "attempt": 0, "state": "failed", "host_failure": False},
        # SLURM requeues a job whose node failed itself (tests/test_multinode.py): not twice
        {"job_id": node_fail, "attempt": 0, "state": "failed", "host_failure": True,
         "hosts": "node[1-2]"},
    ])  # fmt: skip
    assert retry_host_failures(config, store, store.jobs("retries")) == []
    rows = {row["id"]: row for row in store.jobs("retries")}
    assert {rows[i]["state"] for i in rows} == {"failed"}
    assert rows[used_up]["reason"] == f"{host} (retried 1 time(s) on other hosts)"
    assert rows[own]["reason"].startswith("FAILED exit code 1")
    assert rows[unseen]["reason"] == host
    assert rows[node_fail]["reason"] == "NODE_FAIL: a node of the job failed"
    # Looked at again: said once, not twice
    assert retry_host_failures(config, store, store.jobs("retries")) == []
    assert store.job(used_up)["reason"] == f"{host} (retried 1 time(s) on other hosts)"


def test_what_a_feeder_logged_reaches_the_store_for_the_attempt_it_fed_alone(tmp_path):
    """The harness's side of the feeder (the feeder itself: tests/test_slurm_limits.py): the
    feed log's whole lines reach the store, a torn last line (a feeder cut off mid-write)
    and an entry for an earlier attempt do not, and a job no longer waiting keeps its state;
    collecting twice changes nothing more."""
    from harness.launchers import feeder

    config, store = five_planned_jobs(tmp_path, "fed", {})
    sent, stale, dropped, torn, gone = (row["id"] for row in store.jobs("fed"))
    store.set_states([(i, "waiting", {"reason": "waiting for room: 5", "attempt": 1})
                      for i in (sent, stale, dropped, torn)])  # fmt: skip
    store.set_states([(gone, "cancelled", {"reason": "cancelled by the user", "attempt": 1})])
    log = feeder.folder_of(config) / feeder.LOG
    log.parent.mkdir(parents=True)
    lines = [{"feeder": "40"}, {"id": sent, "attempt": 1, "slurm": "41_0"},
             {"id": stale, "attempt": 0, "slurm": "7"}, {"feeder": "42"},
             {"id": dropped, "attempt": 1, "not_run": f"not run: depends on {sent}, which failed"},
             {"id": gone, "attempt": 1, "slurm": "43"}]  # fmt: skip
    log.write_text("".join(json.dumps(line) + "\n" for line in lines)
                   + json.dumps({"id": torn, "attempt": 1, "slurm": "44"})[:20])  # fmt: skip
    assert feeder.read_log(log).feeders == ["40", "42"]
    assert feeder.collect(store, store.jobs("fed")) == 2
    rows = {row["id"]: row for row in store.jobs("fed")}
    assert (rows[sent]["state"], rows[sent]["launcher_job_id"]) == ("submitted", "slurm:41_0")
    assert (rows[dropped]["state"], rows[dropped]["reason"]) == (
        "cancelled", f"not run: depends on {sent}, which failed")  # fmt: skip
    assert rows[stale]["state"] == rows[torn]["state"] == "waiting"
    assert rows[gone]["state"] == "cancelled" and rows[gone]["launcher_job_id"] is None
    assert feeder.collect(store, store.jobs("fed")) == 0


def test_waiting_jobs_cancelled_are_withdrawn_from_the_feed(tmp_path):
    """A waiting job the user cancels: the feed is dropped (status starts a new feeder for
    the jobs still waiting) and the log says not to run it, so that a feeder still running
    skips it; what a feeder had sent of it is cancelled in SLURM (ids here that no queue
    holds: scancel refuses them and nothing else is touched)."""
    from harness.cli.recovery import _cancel_jobs
    from harness.launchers import feeder

    config, store = five_planned_jobs(tmp_path, "withdrawn", {})
    sent, kept, *_ = (row["id"] for row in store.jobs("withdrawn"))
    store.set_states([(i, "waiting", {"reason": "waiting for room: 5"}) for i in (sent, kept)])
    folder = feeder.folder_of(config)
    folder.mkdir(parents=True)
    (folder / feeder.FEED).write_text("{}")
    (folder / feeder.LOG).write_text(json.dumps({"id": sent, "attempt": 0, "slurm": "999999991"})
                                     + "\n")  # fmt: skip
    _cancel_jobs(store, [store.job(sent)])
    assert not (folder / feeder.FEED).exists()
    log = feeder.read_log(folder / feeder.LOG)
    assert log.not_run[(sent, 0)] == "cancelled by the user"
    assert (sent, 0) in log.settled and (kept, 0) not in log.settled
    assert store.job(sent)["state"] == "cancelled"
    assert feeder.collect(store, store.jobs("withdrawn")) == 0  # nothing revived
    assert store.job(kept)["state"] == "waiting"


def test_a_start_record_replayed_in_one_collection_keeps_the_first_start(tmp_path):
    """Two start records of one attempt in one write (a requeued job's two starts read in one
    collection): the attempt keeps the first start time, as row by row; a later record of
    another attempt is its own row."""
    from records.store import open_store

    store = open_store(None, str(tmp_path))
    at = {"submitted_at": 90.0}
    store.write_records([
        {"kind": "start", "job_id": "j1", "attempt": 0, "time": 100.0, "hosts": ["a"], "spec": at},
        {"kind": "start", "job_id": "j1", "attempt": 0, "time": 200.0, "hosts": ["b"], "spec": at},
        {"kind": "start", "job_id": "j1", "attempt": 1, "time": 300.0, "hosts": ["b"]},
    ])  # fmt: skip
    first, second = store.attempts_of(["j1"])["j1"]
    assert (first["started_at"], first["submitted_at"], first["hosts"]) == (100.0, 90.0, "b")
    assert (second["attempt"], second["started_at"]) == (1, 300.0)
