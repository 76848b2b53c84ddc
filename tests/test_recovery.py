"""Recovering as a user does, through the command line: a submission killed half-way and
repeated, the same job started twice, a store lost and rebuilt from the outboxes, a failed
training job rerun with the jobs that waited on it, a running array task seen through sacct."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from harness import config as cluster_config
from harness.launchers.sacct import parse_sacct
from harness.planner import plan
from records.schema import epochs, events
from records.store import Store

from .jobtools import EXE, cli, doomed_training_job, job_env, records, sweep_yaml


def store_at(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'results' / 'results.db'}")


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def count(store: Store, table, job_id: str, **where) -> int:
    query = select(func.count()).select_from(table).where(table.c.job_id == job_id)
    for key, value in where.items():
        query = query.where(table.c[key] == value)
    with store.begin() as conn:
        return conn.execute(query).scalar()


# -- one runner per job ---------------------------------------------------------------------------


def test_the_same_job_started_twice_at_once_trains_once(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    spec = folder / "spec.json"
    spec.write_text(json.dumps({
        "stage": "train", "model": "resnest_tiny_basic", "dataset": "synthetic",
        "recipe": "fast", "overrides": {"batch_size": 32, "epochs": 3}, "max_steps": 4,
        "device": "cpu", "out_dir": str(folder), "job_id": "twice", "attempt": 0,
    }))  # fmt: skip
    url = f"sqlite:///{tmp_path / 'results.db'}"
    env = {**job_env(), "RESNEST_BENCH_STORE": url}
    cmd = [sys.executable, "-m", "jobs.run", "--spec", str(spec)]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    ends = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in ends)
    assert codes == [0, 5], ends
    refused = next(err for code, err in ends if code == 5)
    winner = next(p for p, (code, _) in zip(procs, ends, strict=True) if code == 0)
    assert f"already running ({os.uname().nodename}, pid {winner.pid})" in refused
    assert refused.count("\n") == 1  # it said so, and did nothing else
    store = Store(url)
    assert count(store, epochs, "twice") == 3
    assert count(store, events, "twice", kind="start") == 1
    assert len(records(folder, "start")) == 1 and len(records(folder, "epoch")) == 3


# Lustre mounted without ``-o flock`` answers flock with ENOSYS. No such filesystem can be
# mounted here (FUSE mounts emulate flock in the kernel), so the jobs of these tests run with
# fcntl.flock answering ENOSYS, loaded before anything else through a sitecustomize: a
# stand-in for that filesystem, and the only thing in them that is not real.
NO_FLOCK = """
import errno, fcntl

def _flock(fd, operation):
    raise OSError(errno.ENOSYS, "Function not implemented")

fcntl.flock = _flock
"""


def no_flock_env(tmp_path: Path, url: str) -> dict[str, str]:
    site = tmp_path / "no-flock"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_FLOCK)
    env = {**job_env(), "RESNEST_BENCH_STORE": url}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def twice_spec(folder: Path, job_id: str) -> Path:
    folder.mkdir()
    spec = folder / "spec.json"
    spec.write_text(json.dumps({
        "stage": "train", "model": "resnest_tiny_basic", "dataset": "synthetic",
        "recipe": "fast", "overrides": {"batch_size": 32, "epochs": 3}, "max_steps": 4,
        "device": "cpu", "out_dir": str(folder), "job_id": job_id, "attempt": 0,
    }))  # fmt: skip
    return spec


def test_where_flock_is_refused_a_lock_file_still_lets_the_same_job_train_once(tmp_path):
    folder = tmp_path / "job"
    spec = twice_spec(folder, "noflock")
    url = f"sqlite:///{tmp_path / 'results.db'}"
    env = no_flock_env(tmp_path, url)
    cmd = [sys.executable, "-m", "jobs.run", "--spec", str(spec)]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    ends = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in ends) == [0, 5], ends
    refused = next(err for code, err in ends if code == 5)
    winner = next(p for p, (code, _) in zip(procs, ends, strict=True) if code == 0)
    assert f"already running ({os.uname().nodename}, pid {winner.pid})" in refused
    for _, err in ends:  # each said once why it holds a lock file
        assert err.count("the filesystem refuses flock (ENOSYS)") == 1, err
    store = Store(url)
    assert count(store, epochs, "noflock") == 3
    assert count(store, events, "noflock", kind="start") == 1
    assert not (folder / "lock.held").exists()  # released at the end


def test_where_flock_is_refused_a_lock_file_left_by_a_dead_runner_is_taken_over(tmp_path):
    """A lock file nobody has touched for a minute (its runner was killed, or its node
    failed) does not keep a requeued job out; a fresh one does."""
    from records.lock import STALE_S, is_held

    folder = tmp_path / "job"
    spec = twice_spec(folder, "stale")
    held = folder / "lock.held"
    held.write_text(json.dumps({"host": "node7", "pid": 4242}))
    assert is_held(folder)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    cmd = [sys.executable, "-m", "jobs.run", "--spec", str(spec)]
    env = no_flock_env(tmp_path, url)
    fresh = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 5 and "already running (node7, pid 4242)" in fresh.stderr
    old = time.time() - STALE_S - 5
    os.utime(held, (old, old))
    assert not is_held(folder)
    taken = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert taken.returncode == 0, taken.stderr
    assert count(Store(url), epochs, "stale") == 3
    assert not held.exists() and not list(folder.glob("lock.held.stale-*"))


def test_a_killed_submission_submitted_again_follows_the_running_job(tmp_path):
    path = sweep_yaml(
        tmp_path, models=["resnest_tiny_basic"], gpu_types=["cpu-a"], stages=["train"],
        transfer_to=[], epochs=4, max_steps=6,
    )  # fmt: skip
    (job,) = plan(cluster_config.load(path))
    folder = tmp_path / "results" / "local-test" / "jobs" / job.id
    first = subprocess.Popen(
        [str(EXE), "submit", str(path), "-q"], cwd=tmp_path, stderr=subprocess.DEVNULL
    )
    wait_until(lambda: (folder / "outbox.jsonl").is_file(), 300, "the job to start")
    first.send_signal(signal.SIGKILL)  # the submission dies; its job goes on
    first.wait(timeout=60)
    store = store_at(tmp_path)
    assert store.job(job.id)["state"] == "running"

    again = cli("submit", str(path), "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "1 succeeded, 0 failed, 0 not run" in again.stderr
    row = store.job(job.id)
    assert row["state"] == "succeeded" and row["attempt"] == 0
    # The second runner found the folder held and left at once: one start, no double epoch.
    assert "already running" in (folder / "stderr.log").read_text()
    assert len(records(folder, "start")) == 1
    assert count(store, epochs, job.id) == 4
    assert count(store, events, job.id, kind="start") == 1


# -- a lost store, rebuilt ------------------------------------------------------------------------


def _views(path: Path, cwd: Path) -> dict[str, object]:
    views = {}
    for name, args in {
        "gpu": ["table", "--format", "json"],
        "study": ["table", "--layout", "study", "--format", "json"],
        "status": ["status", "--format", "json"],
    }.items():
        result = cli(*args, "-c", str(path), cwd=cwd)
        assert result.returncode == 0, result.stderr
        views[name] = json.loads(result.stdout)
    views["status"] = sorted((r["id"], r["stage"], r["state"], r["attempt"])
                             for r in views["status"])  # fmt: skip
    return views


def test_the_tables_after_losing_the_store_and_ingesting_are_the_tables_before(tmp_path):
    path = sweep_yaml(tmp_path, models=["resnest_tiny_basic"])
    result = cli("submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    before = _views(path, tmp_path)
    assert len(before["gpu"]) == 2 and before["gpu"][0]["transfer_acc_pct"]
    for leftover in (tmp_path / "results").glob("results.db*"):
        leftover.unlink()

    result = cli("ingest", str(tmp_path / "results"), "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(sweep 'local-test')" in result.stdout
    assert _views(path, tmp_path) == before
    again = cli("ingest", str(tmp_path / "results"), "-c", str(path), cwd=tmp_path)
    assert again.returncode == 0 and _views(path, tmp_path) == before  # idempotent


# -- rerun brings the jobs that waited on it ------------------------------------------------------


def test_rerun_of_a_failed_training_job_runs_its_not_run_dependants_too(tmp_path):
    path = sweep_yaml(tmp_path, models=["resnest_tiny_basic"])
    doomed, dependant, folder = doomed_training_job(tmp_path, path)
    result = cli("submit", str(path), "-q", cwd=tmp_path)
    assert "2 succeeded, 1 failed, 1 not run" in result.stderr
    store = store_at(tmp_path)
    untouched = {r["id"]: r for r in store.jobs("local-test") if r["id"] not in
                 (doomed.id, dependant.id)}  # fmt: skip

    (folder / "checkpoints").unlink()
    result = cli("rerun", doomed.id[:8], "-q", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rerun: with 1 job(s) after them that had not run" in result.stderr
    assert "2 succeeded, 0 failed, 0 not run" in result.stderr
    rows = {r["id"]: r for r in store.jobs("local-test")}
    assert rows[doomed.id]["state"] == rows[dependant.id]["state"] == "succeeded"
    for job_id, row in untouched.items():
        assert (rows[job_id]["attempt"], rows[job_id]["ended_at"]) == (0, row["ended_at"])

    # A job whose dependants succeeded: they are named, not rerun behind the user's back.
    result = cli("rerun", doomed.id[:8], "-q", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"to run them on the new one too: resnest-bench rerun {dependant.id}" in result.stderr
    assert store.job(dependant.id)["attempt"] == rows[dependant.id]["attempt"]


# -- SLURM: a running array task is shown as running -----------------------------------------------

# Recorded `sacct -X -n -P --format=JobID,State,ExitCode,Reason,Start,End` while task 0 of
# array 2 ran and the array's pending remainder was still listed as a range that includes it.
SACCT = """\
2_0|RUNNING|0:0|None|2026-11-28T10:00:05|Unknown
2_[0-1%2]|PENDING|0:0|JobArrayTaskLimit|Unknown|Unknown
"""


def test_a_concrete_array_task_wins_over_a_pending_range():
    for text in (SACCT, "".join(reversed(SACCT.splitlines(keepends=True)))):
        states = parse_sacct(text)
        assert states["2_0"]["State"] == "RUNNING"
        assert states["2_1"]["State"] == "PENDING"


def test_status_shows_the_running_array_task_as_running(tmp_path):
    """Through the command line: `sacct` here is a script that prints the recorded output
    above (a SLURM in that exact state cannot be arranged on demand); the rest is real."""
    from harness.sweep import record_plan, store_for

    path = sweep_yaml(tmp_path, models=["resnest_tiny_basic"], stages=["train"], transfer_to=[])
    config = cluster_config.load(path)
    store = store_for(config)
    first, second = sorted(record_plan(config, store))
    for job_id, task in ((first, "2_0"), (second, "2_1")):
        store.set_state(job_id, "submitted", launcher_job_id=f"slurm:{task}")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "recorded.txt").write_text(SACCT)
    (tools / "sacct").write_text(f"#!/bin/sh\ncat {tools / 'recorded.txt'}\n")
    (tools / "sacct").chmod(0o755)
    result = subprocess.run(
        [str(EXE), "status", "--format", "json", "-c", str(path)], capture_output=True,
        text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r["state"] for r in json.loads(result.stdout)}
    assert rows == {first: "running", second: "submitted"}


def test_jobs_run_by_hand_are_ingested_into_a_sweep_and_tabled(tmp_path):
    """A training and its transfer run by hand (`resnest-bench train` / `transfer`), then
    brought into a sweep with `ingest --sweep`: status and table show them as that sweep's."""
    from .jobtools import TINY

    url = f"sqlite:///{tmp_path / 'results.db'}"
    trained, moved = tmp_path / "hand-train", tmp_path / "hand-transfer"
    small = [*TINY, "--epochs", "2", "--max-steps", "2", "--device", "cpu"]
    for out, extra in ((trained, ["train"]), (moved, ["transfer", "--from", str(trained)])):
        result = subprocess.run(
            [str(EXE), extra[0], *small, "--out", str(out), *extra[1:]],
            capture_output=True, text=True, env=job_env(), timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    start = records(moved, "start")[0]
    assert start["spec"]["stage"] == "transfer" and start["spec"]["init_from"] == str(trained)
    for _ in range(2):  # twice: the second adds nothing
        result = cli("ingest", str(tmp_path), "--sweep", "by-hand", "--store", url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "from 2 outbox file(s)" in result.stdout
    status = cli("status", "by-hand", "--store", url, "--format", "json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "sweep by-hand: 2 succeeded" in status.stderr  # the counts, apart from the rows
    rows = json.loads(status.stdout)
    assert sorted((r["stage"], r["state"]) for r in rows) == [
        ("train", "succeeded"), ("transfer", "succeeded"),
    ]  # fmt: skip
    as_csv = cli("status", "by-hand", "--store", url, "--format", "csv", cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert sorted((r["id"], r["state"]) for r in parsed) == sorted(
        (r["id"], r["state"]) for r in rows
    )
    table = cli("table", "by-hand", "--store", url, "--format", "json", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    (row,) = json.loads(table.stdout)
    assert row["model"] == "resnest_tiny_basic" and row["runs"] == 1
    assert row["transfer_acc_pct"] is not None
