"""Sweeps end to end on the local launcher with the embedded SQLite store."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from records.schema import epochs, events, results
from records.store import Store

from .jobtools import EXE, TINY, cli, doomed_training_job, job_cmd, job_env, records, sweep_yaml


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    path = sweep_yaml(tmp_path)
    result = cli("submit", str(path), "-q", cwd=tmp_path)
    return tmp_path, path, result


def test_sweep_runs_end_to_end_and_prints_the_comparison(finished_sweep):
    tmp_path, path, result = finished_sweep
    assert result.returncode == 0, result.stderr
    assert "8 succeeded, 0 failed, 0 not run" in result.stderr
    assert "resnest_tiny_basic" in result.stdout and "cpu-b" in result.stdout
    store = Store(f"sqlite:///{tmp_path / 'results' / 'results.db'}")
    rows = store.jobs("local-test")
    assert len(rows) == 8 and {r["state"] for r in rows} == {"succeeded"}
    with store.begin() as conn:
        assert conn.execute(select(func.count()).select_from(epochs)).scalar() == 4 * 2 + 4 * 1
        assert conn.execute(select(func.count()).select_from(results)).scalar() == 8
    for row in rows:  # each job's folder holds its spec, logs and outbox
        folder = Path(row["job_dir"])
        assert (folder / "spec.json").is_file() and (folder / "stderr.log").is_file()
        assert json.loads((folder / "spec.json").read_text())["job_id"] == row["id"]
        # Two jobs at a time: each on its share of the CPUs (or what the user set).
        (start,) = records(folder, "start")
        share = max(1, len(os.sched_getaffinity(0)) // 2)
        assert start["cpu_threads"] == int(os.environ.get("OMP_NUM_THREADS") or share)
    table = cli("table", "local-test", "-c", str(path), "--format", "json", cwd=tmp_path)
    rows = {(r["gpu_type"], r["model"]): r for r in json.loads(table.stdout)}
    models = ("resnest_tiny_basic", "resnest_tiny_bottleneck")
    assert sorted(rows) == [(gpu, model) for gpu in ("cpu-a", "cpu-b") for model in models]
    assert rows[("cpu-a", "resnest_tiny_basic")]["speedup"] == 1.0
    assert all(row["runs"] == 1 for row in rows.values())
    assert rows[("cpu-b", "resnest_tiny_bottleneck")]["epoch_time_s"] > 0
    assert rows[("cpu-b", "resnest_tiny_bottleneck")]["transfer_acc_pct"] is not None


def test_resubmitting_skips_what_succeeded(finished_sweep):
    tmp_path, path, _ = finished_sweep
    result = cli("submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "0 succeeded, 0 failed, 0 not run, 8 already done" in result.stderr


def test_status_lists_jobs(finished_sweep):
    tmp_path, path, _ = finished_sweep
    result = cli("status", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "sweep local-test: 8 succeeded"


def test_status_watch_redraws_while_the_sweep_runs_and_ends_with_it(tmp_path):
    """``status --watch`` on a sweep that is running: it redraws every ``--every`` seconds
    (a frame per redraw, each headed by its time; no cursor codes where stdout is not a
    terminal) and returns by itself, exit 0, once every job has ended, its last frame
    showing them all ended."""
    import re
    import time

    path = sweep_yaml(tmp_path, models=["resnest_tiny_basic"], gpu_types=["cpu-a"],
                      stages=["train"], seeds=[0, 1, 2, 3], epochs=3)  # fmt: skip
    log = (tmp_path / "submit.log").open("w")
    submit = subprocess.Popen([str(EXE), "submit", str(path), "-q"], cwd=tmp_path,
                              stdout=log, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:  # until a job runs (the store and its rows exist)
            status = cli("status", "-c", str(path), "--format", "json", cwd=tmp_path)
            if (
                status.returncode == 0
                and "running" in status.stdout
                and "succeeded" not in status.stdout
            ):
                break
            assert submit.poll() is None, (tmp_path / "submit.log").read_text()
            assert time.monotonic() < deadline, "no job ran within 300 s"
            time.sleep(0.2)
        watched = cli("status", "-c", str(path), "--watch", "--every", "0.5", cwd=tmp_path)
        assert submit.wait(timeout=300) == 0
    finally:
        submit.kill()
        log.close()
    assert watched.returncode == 0, watched.stderr
    head = r"(?m)^\d\d:\d\d:\d\d \(every 0.5 s; Ctrl-C stops watching, not the jobs\)$"
    frames = re.split(head, watched.stdout)[1:]
    assert len(frames) >= 2, watched.stdout
    assert "\x1b[" not in watched.stdout
    assert "running" in frames[0]
    assert frames[-1].strip().splitlines()[0] == "sweep local-test: 4 succeeded"


def test_a_failing_job_fails_alone_and_rerun_fixes_exactly_it(tmp_path):
    path = sweep_yaml(tmp_path, models=["resnest_tiny_basic"])
    doomed, dependant, folder = doomed_training_job(tmp_path, path)

    result = cli("submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 1
    assert "2 succeeded, 1 failed, 1 not run" in result.stderr
    store = Store(f"sqlite:///{tmp_path / 'results' / 'results.db'}")
    states = {r["id"]: r for r in store.jobs("local-test")}
    assert states[doomed.id]["state"] == "failed"
    assert "exit code 1" in states[doomed.id]["reason"]
    assert states[dependant.id]["state"] == "cancelled"
    assert f"depends on {doomed.id}, which failed" in states[dependant.id]["reason"]
    status = cli("status", "-c", str(path), cwd=tmp_path)
    assert f"{folder}/stderr.log" in status.stdout
    others = {i: r for i, r in states.items() if i not in (doomed.id, dependant.id)}
    with store.begin() as conn:
        before = conn.execute(select(epochs).order_by(epochs.c.job_id, epochs.c.epoch)).all()

    (folder / "checkpoints").unlink()
    result = cli("rerun", "--failed", "-q", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 succeeded, 0 failed, 0 not run" in result.stderr
    after = {r["id"]: r for r in store.jobs("local-test")}
    assert after[doomed.id]["state"] == after[dependant.id]["state"] == "succeeded"
    assert after[doomed.id]["attempt"] == 1
    for job_id, row in others.items():  # untouched
        assert after[job_id]["attempt"] == row["attempt"] == 0
        assert after[job_id]["ended_at"] == row["ended_at"]
    with store.begin() as conn:
        kept = conn.execute(
            select(epochs)
            .where(epochs.c.job_id.in_(list(others)))
            .order_by(epochs.c.job_id, epochs.c.epoch)
        ).all()
    assert kept == [r for r in before if r.job_id in others]


def test_rerun_one_job_by_id(finished_sweep):
    tmp_path, path, _ = finished_sweep
    store = Store(f"sqlite:///{tmp_path / 'results' / 'results.db'}")
    target = next(r for r in store.jobs("local-test") if r["stage"] == "train")
    result = cli("rerun", target["id"][:8], "-q", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r for r in store.jobs("local-test")}
    assert rows[target["id"]]["attempt"] == target["attempt"] + 1
    assert sum(r["attempt"] for r in rows.values()) == target["attempt"] + 1


def test_unreachable_store_then_ingest_recovers_every_record(tmp_path):
    out = tmp_path / "job"
    env = {**job_env(), "RESNEST_BENCH_STORE": "postgresql+psycopg://bench@127.0.0.1:1/none"}
    args = [*TINY, "--epochs", "2", "--max-steps", "2"]
    result = subprocess.run(
        job_cmd(out, *args), capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "results store unreachable" in result.stderr
    outbox = records(out)
    assert len([r for r in outbox if r["kind"] == "epoch"]) == 2
    url = f"sqlite:///{tmp_path / 'store.db'}"
    for _ in range(2):  # a replay adds nothing
        ingest = subprocess.run(
            [str(EXE), "ingest", str(tmp_path), "--store", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ingest.returncode == 0, ingest.stderr
        assert f"ingested {len(outbox)} records from 1 outbox file(s)" in ingest.stdout
    store = Store(url)
    with store.begin() as conn:
        logged = set(conn.execute(select(events.c.uid)).scalars())
        # the events log: every record but the measurements, whose own rows hold them
        assert logged == {r["uid"] for r in outbox if r["kind"] not in ("epoch", "telemetry")}
        assert conn.execute(select(func.count()).select_from(epochs)).scalar() == 2
        final = conn.execute(select(results)).one()
    assert final.status == "succeeded"
    assert final.params_sha256 == outbox[-1]["params_sha256"]


WRITER = """
import sys
from records.store import Store
store = Store(sys.argv[1])
worker = int(sys.argv[2])
for epoch in range(1, 21):
    record = {"kind": "epoch", "job_id": f"job{worker}", "attempt": 0, "epoch": epoch,
              "train_loss": 1.0 / epoch, "uid": f"w{worker}e{epoch}"}
    event = {"kind": "event", "job_id": f"job{worker}", "attempt": 0, "event": "checkpoint",
             "epoch": epoch, "step": 0, "uid": f"w{worker}c{epoch}"}
    store.write_records([record, event, record, event])  # each twice, as a replay would
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    url = os.environ.get("RESNEST_BENCH_TEST_PG")
    if not url:
        pytest.skip(
            "no PostgreSQL: run scripts/pg-local.sh up and set RESNEST_BENCH_TEST_PG (.ci/run does)"
        )
    from sqlalchemy import create_engine

    from records.store import metadata

    engine = create_engine(url)  # a clean schema for this test
    metadata.drop_all(engine)
    engine.dispose()
    return url


def test_32_concurrent_writers_lose_and_duplicate_nothing(store_url):
    url = store_url
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(i)], stderr=subprocess.PIPE, text=True
        )
        for i in range(32)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    store = Store(url)
    with store.begin() as conn:
        assert conn.execute(select(func.count()).select_from(epochs)).scalar() == 32 * 20
        assert conn.execute(select(func.count()).select_from(events)).scalar() == 32 * 20
        per_job = conn.execute(select(epochs.c.job_id, func.count()).group_by(epochs.c.job_id))
        assert {count for _, count in per_job} == {20}


def test_a_record_written_again_stores_exactly_its_values_nones_included(store_url):
    """An upsert sets every column from the record written last: a figure that the record
    written again leaves out (None) is None afterwards, whether the store binds the None or
    (SQLite) leaves the column out of the INSERT; the first write of each shape is the same
    as one at a time."""
    store = Store(store_url)
    base = {"kind": "epoch", "job_id": "j", "attempt": 0, "epoch": 1, "uid": "u1"}
    full = {**base, "epoch_time": 2.5, "gpu_util_mean": 80.0, "warmup": True, "test_acc": 0.5}
    bare = {**base, "epoch_time": 3.0, "uid": "u2"}  # the same epoch, its GPU figure gone
    other = {**base, "epoch": 2, "gpu_util_mean": 70.0, "uid": "u3"}
    store.write_records([full, {**other, "epoch": 3}])
    store.write_records([bare, other])  # two shapes in one batch
    columns = (epochs.c.epoch, epochs.c.epoch_time, epochs.c.gpu_util_mean, epochs.c.warmup,
               epochs.c.test_acc)  # fmt: skip
    with store.begin() as conn:
        rows = conn.execute(select(*columns).order_by(epochs.c.epoch)).all()
        logged = conn.execute(select(func.count()).select_from(events)).scalar()
    assert [tuple(r) for r in rows] == [
        (1, 3.0, None, None, None),
        (2, None, 70.0, None, None),
        (3, None, 70.0, None, None),
    ]
    assert logged == 0  # epochs are not copied into the events log


def test_store_url_that_cannot_be_opened_is_one_line(tmp_path):
    path = sweep_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["store"] = "postgresql+psycopg://bench:secret@127.0.0.1:1/none"
    path.write_text(yaml.safe_dump(data))
    result = cli("submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("resnest-bench: error: results store postgresql+psycopg://")
    assert "secret" not in result.stderr and "***" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_a_store_url_with_a_password_is_never_written_into_job_specs(tmp_path):
    """Each job's spec (a file in its folder) names the store it reports to: a store URL
    that carries a password stops the submission before any job starts, says where the
    password belongs, and does not print it."""
    url = os.environ.get("RESNEST_BENCH_TEST_PG")
    if not url:
        pytest.skip("no PostgreSQL: run scripts/pg-local.sh up and set RESNEST_BENCH_TEST_PG")
    from sqlalchemy.engine import make_url

    password = os.environ.get("PGPASSWORD") or "bench-local"
    path = sweep_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["store"] = make_url(url).set(password=password).render_as_string(hide_password=False)
    path.write_text(yaml.safe_dump(data))
    result = cli("submit", str(path), "-q", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "carries a password" in result.stderr and "PGPASSWORD" in result.stderr
    assert password not in result.stderr and result.stderr.count("\n") == 1
    assert not list(tmp_path.rglob("spec.json"))
    states = {row["state"] for row in Store(url).jobs(data["name"])}
    assert states == {"pending"}  # planned, never launched


def test_logs_and_cancel(finished_sweep):
    tmp_path, path, _ = finished_sweep
    store = Store(f"sqlite:///{tmp_path / 'results' / 'results.db'}")
    job = store.jobs("local-test")[0]
    result = cli("logs", job["id"][:6], "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0
    assert f"==> {job['job_dir']}/stdout.log <==" in result.stdout
    assert "epoch   1/" in result.stdout
    result = cli("cancel", "--all", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0 and "nothing to cancel in sweep 'local-test'" in result.stdout


@pytest.mark.slow
def test_the_quickstart_runs_as_the_readme_says(tmp_path):
    quickstart = Path(__file__).parents[1] / "examples" / "quickstart.yaml"
    result = cli("submit", str(quickstart), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 succeeded, 0 failed, 0 not run" in result.stderr
    lines = result.stdout.splitlines()
    for model in ("resnest50_bottleneck", "resnest50_basic"):
        at = lines.index(model)
        assert lines[at + 1].split()[:3] == ["gpu_type", "s/epoch", "img/s"]
        assert lines[at + 3].startswith("cpu ")
    assert (tmp_path / "results" / "results.db").is_file()


def _records_of_many_jobs(n_jobs: int, second: bool) -> list[dict]:
    """Every kind of record the collector writes, for ``n_jobs`` jobs, with the values that
    a store converts or leaves out (None, NaN, booleans, JSON, lists). ``second``: what a
    later collection brings: replays, a changed epoch, a later start of the same attempt."""
    rng = random.Random(1 if second else 0)
    out: list[dict] = []
    for j in range(n_jobs):
        job = f"many{j:05d}"
        start = {"kind": "start", "job_id": job, "attempt": 0, "uid": f"s{j}",
                 "time": 1000.0 + j + (500 if second else 0), "hosts": ["n1", "n2"][: j % 3],
                 "spec": {"submitted_at": 900.0 + j if j % 2 else None}}  # fmt: skip
        out.append(start)
        for epoch in range(2 if second else 3):
            out.append({
                "kind": "epoch", "job_id": job, "attempt": 0, "epoch": epoch,
                "uid": f"e{j}-{epoch}-{second}", "time": 1100.0 + epoch,
                "epoch_time": rng.choice([None, 12.5, float("nan"), rng.random()]),
                "gpu_util_mean": rng.choice([None, 80.0]),
                "warmup": rng.choice([None, True, False]),
                "test_acc": rng.random(), "xids": rng.choice([None, [], [79, 48]]),
                "throttle_reasons": rng.choice([None, ["hw_slowdown"]]),
            })  # fmt: skip
        out.append({"kind": "telemetry", "job_id": job, "attempt": 0, "samples": [
            {"time": 1200.0 + s, "gpu_index": s % 2, "util": rng.choice([None, 55.5])}
            for s in range(2)]})  # fmt: skip
        if j % 4 and not second:
            out.append({"kind": "final", "job_id": job, "attempt": 0, "uid": f"f{j}",
                        "status": rng.choice(["succeeded", "failed"]), "reason": None,
                        "final_test_acc": rng.random(), "time": 1300.0})  # fmt: skip
        if j % 5 == 0:
            out.append({"kind": "provenance", "job_id": job, "attempt": 0, "uid": f"p{j}-{second}",
                        "host": "n1", "packages_sha256": "ab" * 32, "packages": "torch==2",
                        "environment": {"CUDA_VISIBLE_DEVICES": "0"}, "time": 1001.0})  # fmt: skip
    return out


def test_many_rows_copied_into_postgresql_are_stored_as_executemany_stores_them(monkeypatch):
    """On PostgreSQL a group of many rows goes by COPY into a temporary table and one
    INSERT ... SELECT ... ON CONFLICT (``records.batch._copy``), or one UPDATE ... FROM
    (``update_many``: the jobs' states). Written both ways, states set in two shapes and the
    records in two collections whose second replays, changes and fills rows, every table
    holds the same (the jobs' times of a state change aside: they are the clock's)."""
    url = os.environ.get("RESNEST_BENCH_TEST_PG")
    if not url:
        pytest.skip("no PostgreSQL: run scripts/pg-local.sh up and set RESNEST_BENCH_TEST_PG")
    from sqlalchemy import create_engine

    from records import batch
    from records.schema import jobs
    from records.store import metadata

    copied = []
    real_scratch = batch._scratch
    monkeypatch.setattr(batch, "_scratch", lambda *a: copied.append(a[1].name) or real_scratch(*a))
    stamps = ("submitted_at", "started_at", "ended_at")
    held = {}
    for way, copy_from in (("executemany", 10**9), ("copy", 2)):
        engine = create_engine(url)
        metadata.drop_all(engine)
        engine.dispose()
        monkeypatch.setattr(batch, "COPY_FROM", copy_from)
        store = Store(url)
        store.add_sweep("many", {})
        ids = [f"many{j:05d}" for j in range(60)]
        store.add_jobs("many", [
            {"id": job_id, "stage": "train", "model": "m", "dataset": "d", "gpu_type": "v100",
             "gpus": 1, "seed": 0, "repeat": 0, "spec": {"n": j}, "depends_on": []}
            for j, job_id in enumerate(ids)
        ])  # fmt: skip
        store.set_states([(job_id, "running", {"attempt": j % 3}) for j, job_id in enumerate(ids)])
        store.set_states([
            (job_id, "failed" if j % 2 else "succeeded", {"reason": f"exit {j}" if j % 2 else None})
            for j, job_id in enumerate(ids)
        ] + [(ids[1], "failed", {"reason": "given twice: the last"})])  # fmt: skip
        for second in (False, True):
            store.write_records(_records_of_many_jobs(60, second))
        with store.begin() as conn:
            held[way] = {
                table.name: sorted(repr(tuple(row)) for row in conn.execute(select(table)))
                for table in metadata.sorted_tables
                if table.name not in ("jobs", "sweeps")  # (the sweep's: when it was added)
            }
            kept = [c for c in jobs.c if c.name not in stamps]
            held[way]["jobs"] = sorted(repr(tuple(r)) for r in conn.execute(select(*kept)))
            times = conn.execute(select(*(jobs.c[n] for n in stamps))).all()
        assert all(started and ended for _, started, ended in times)
        store.engine.dispose()
    assert {"epochs", "events", "attempts", "telemetry", "summaries", "jobs"} <= set(copied)
    assert held["copy"].keys() == held["executemany"].keys()
    assert {k: v for k, v in held["copy"].items() if held["executemany"][k] != v} == {}
    assert len(held["copy"]["epochs"]) == 180 and len(held["copy"]["attempts"]) == 60
    assert sum("'failed'" in row and "'exit 3'" in row for row in held["copy"]["jobs"]) == 1
    assert sum("'given twice: the last'" in row for row in held["copy"]["jobs"]) == 1
