"""The harness collects jobs' outboxes into the store: incrementally, only what changed, a torn
last line left for later, and a collection killed anywhere losing and duplicating nothing.

The outboxes are those of a real training job (a tiny network, three epochs), written into a
job folder piece by piece as a job on another host would write them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from harness import collect as collect_module
from harness.collect import collect
from records.schema import attempts, epochs, events, outboxes, provenance, results, summaries
from records.store import Store

from .jobtools import job_env, write_spec

SWEEP = "collected"
FIXTURES = [HealthCheck.function_scoped_fixture]


@pytest.fixture(scope="module")
def outbox(tmp_path_factory) -> bytes:
    """The outbox of a real three-epoch training job."""
    out = tmp_path_factory.mktemp("job") / "job"
    spec = write_spec(
        out.parent / "spec.json", stage="train", model="resnest_tiny_basic", dataset="synthetic",
        out_dir=str(out), job_id="a" * 32, overrides={"batch_size": 32, "epochs": 3},
        max_steps=2, store="outbox",
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "jobs.run", "--spec", str(spec)],
        capture_output=True, text=True, env=job_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = (out / "outbox.jsonl").read_bytes()
    assert data.count(b"\n") >= 6  # start, provenance, three epochs, checkpoints, final
    return data


def of_job(outbox: bytes, job_id: str) -> bytes:
    """The outbox as job ``job_id`` would have written it: the same records under its own id,
    each with its own uid (uids are unique per record: the store keeps one event per uid)."""
    lines = outbox.replace(b"a" * 32, job_id.encode()).split(b"\n")
    return b"\n".join(
        re.sub(rb'"uid": "([0-9a-f]{32})"', lambda m: b'"uid": "' + _uid(m[1], job_id) + b'"', line)
        for line in lines
    )


def _uid(uid: bytes, job_id: str) -> bytes:
    return hashlib.sha256(uid + job_id.encode()).hexdigest()[:32].encode()


def new_store(folder: Path, job_dirs: dict[str, Path], url: str | None = None) -> Store:
    """A store (SQLite in ``folder`` unless ``url``) with a sweep whose jobs (id -> folder)
    are running on a cluster."""
    store = Store(url or f"sqlite:///{folder / 'results.db'}")
    store.add_sweep(SWEEP, {})
    rows = [
        {"id": job_id, "stage": "train", "model": "resnest_tiny_basic", "dataset": "synthetic",
         "gpu_type": "v100", "gpus": 1, "seed": 0, "repeat": 0, "spec": {}, "depends_on": [],
         "job_dir": str(job_dir)}
        for job_id, job_dir in job_dirs.items()
    ]  # fmt: skip
    store.add_jobs(SWEEP, rows)
    store.set_states([(job_id, "running", {}) for job_id in job_dirs])
    return store


def contents(store: Store) -> dict[str, list]:
    """What the store holds of the jobs' records, table by table, in a fixed order."""
    out = {}
    with store.begin() as conn:
        for table in (epochs, events, results, provenance, summaries, attempts):
            rows = [tuple(row) for row in conn.execute(select(table))]
            out[table.name] = sorted(rows, key=repr)
    return out


def reference(tmp_path: Path, data: bytes) -> dict[str, list]:
    """The store of one collection of the whole outbox."""
    folder = tmp_path / "reference"
    job = folder / "jobs" / ("a" * 32)
    job.mkdir(parents=True)
    (job / "outbox.jsonl").write_bytes(data)
    store = new_store(folder, {"a" * 32: job})
    assert collect(store, store.jobs(SWEEP)) == data.count(b"\n")
    found = contents(store)
    store.engine.dispose()
    return found


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURES)
@given(cuts=st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_an_outbox_collected_piece_by_piece_gives_the_store_of_one_collection(
    tmp_path_factory, outbox, cuts
):
    """The outbox grows in pieces cut anywhere, mid-line included (a write under way); the
    store is collected after each. The end is the store of one collection of the whole."""
    tmp_path = tmp_path_factory.mktemp("pieces")
    job = tmp_path / "jobs" / ("a" * 32)
    job.mkdir(parents=True)
    store = new_store(tmp_path, {"a" * 32: job})
    path = job / "outbox.jsonl"
    written = 0
    for cut in [*sorted(cuts), 1.0]:
        end = int(cut * len(outbox))
        with open(path, "ab") as f:
            f.write(outbox[written:end])
        written = max(written, end)
        collect(store, store.jobs(SWEEP))
        with store.begin() as conn:
            (offset,) = conn.execute(select(outboxes.c.offset)).one()
        # Read up to the last whole line: a torn one waits.
        assert offset == outbox.rfind(b"\n", 0, written) + 1
    assert contents(store) == reference(tmp_path, outbox)


def test_only_outboxes_that_changed_are_opened(tmp_path, outbox):
    """Three running jobs; after a first collection only the one whose outbox grew is opened
    again (every file the process opens is seen through Python's audit hook)."""
    folders = {c * 32: tmp_path / "jobs" / (c * 32) for c in "abc"}
    half = outbox.rfind(b"\n", 0, len(outbox) // 2) + 1
    for job_id, folder in folders.items():
        folder.mkdir(parents=True)
        (folder / "outbox.jsonl").write_bytes(of_job(outbox, job_id)[:half])
    store = new_store(tmp_path, folders)
    opened: list[str] = []
    watching = [False]

    def hook(event: str, args: tuple) -> None:
        if watching[0] and event == "open" and str(args[0]).endswith("outbox.jsonl"):
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    try:
        watching[0] = True
        first = collect(store, store.jobs(SWEEP))
        assert sorted(opened) == sorted(str(f / "outbox.jsonl") for f in folders.values())
        opened.clear()
        assert collect(store, store.jobs(SWEEP)) == 0 and opened == []  # nothing changed
        watching[0] = False
        with open(folders["b" * 32] / "outbox.jsonl", "ab") as f:  # the job writes on
            f.write(of_job(outbox, "b" * 32)[half:])
        watching[0] = True
        more = collect(store, store.jobs(SWEEP))
        assert opened == [str(folders["b" * 32] / "outbox.jsonl")]
    finally:
        watching[0] = False
    assert first == 3 * outbox[:half].count(b"\n")
    assert more == outbox[half:].count(b"\n")


def test_ended_jobs_are_looked_at_until_a_grace_after_their_end_and_then_no_more(tmp_path, outbox):
    job = tmp_path / "jobs" / ("a" * 32)
    job.mkdir(parents=True)
    (job / "outbox.jsonl").write_bytes(outbox)
    store = new_store(tmp_path, {"a" * 32: job})
    store.set_state("a" * 32, "succeeded")
    collect(store, store.jobs(SWEEP))
    (row,) = store.jobs(SWEEP)
    with store.begin() as conn:
        conn.execute(outboxes.update().values(checked_at=row["ended_at"] + 61))
    last = outbox.splitlines(keepends=True)[-1]
    (job / "outbox.jsonl").write_bytes(outbox + last)  # a change no one looks for
    assert collect(store, store.jobs(SWEEP)) == 0
    assert collect(store, store.jobs(SWEEP), force=True) == 1  # but a forced look reads it


def test_a_damaged_line_stops_that_outbox_there_and_says_so(tmp_path, outbox, capsys):
    job = tmp_path / "jobs" / ("a" * 32)
    job.mkdir(parents=True)
    lines = outbox.splitlines(keepends=True)
    (job / "outbox.jsonl").write_bytes(b"".join(lines[:2]) + b"{not json\n" + b"".join(lines[2:]))
    store = new_store(tmp_path, {"a" * 32: job})
    assert collect(store, store.jobs(SWEEP)) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "damaged" in said and str(job / "outbox.jsonl") in said
    assert collect(store, store.jobs(SWEEP)) == 0  # still stopped there, nothing twice


def jobs_written_to(
    tmp_path: Path, letters: str, outbox: bytes, first: int, url: str | None = None
) -> tuple[dict[str, Path], Store]:
    """A job per letter (its id the letter 32 times), each whose outbox holds the ``first``
    bytes of its own; and a store of them (SQLite unless ``url``), its connections closed."""
    folders = {c * 32: tmp_path / "jobs" / (c * 32) for c in letters}
    for job_id, folder in folders.items():
        folder.mkdir(parents=True)
        (folder / "outbox.jsonl").write_bytes(of_job(outbox, job_id)[:first])
    store = new_store(tmp_path, folders, url)
    store.engine.dispose()
    return folders, store


def write_on(folders: dict[str, Path], outbox: bytes, first: int) -> None:
    """The jobs write the rest of their outboxes."""
    for job_id, folder in folders.items():
        with open(folder / "outbox.jsonl", "ab") as f:
            f.write(of_job(outbox, job_id)[first:])


KILLER = textwrap.dedent(
    """
    import os, sys
    from sqlalchemy import event
    from harness.collect import collect
    from records.store import Store

    store = Store(sys.argv[1])
    count = [0]

    @event.listens_for(store.engine, "before_cursor_execute")
    def _kill(*args):
        count[0] += 1
        if count[0] == int(sys.argv[2]):
            os._exit(9)  # as SIGKILL: no rollback, no cleanup, mid-transaction

    collect(store, store.jobs("collected"))
    print("finished", count[0])
    """
)


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURES)
@given(
    grown=st.floats(0.05, 0.95),
    kill_at=st.integers(1, 60),  # a whole collection here is 4 to 51 statements
)
def test_a_collection_killed_anywhere_and_run_again_loses_and_duplicates_nothing(
    tmp_path_factory, outbox, grown, kill_at
):
    """A collection is killed at its Nth SQL statement (any point of its transaction, or
    after it), the outbox grows, and collections run again: the store ends as one whole
    collection would leave it."""
    tmp_path = tmp_path_factory.mktemp("killed")
    first = int(grown * len(outbox))
    folders, store = jobs_written_to(tmp_path, "ab", outbox, first)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, store.url, str(kill_at)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode in (0, 9), killed.stderr
    write_on(folders, outbox, first)
    store = Store(store.url)
    collect(store, store.jobs(SWEEP))
    collect(store, store.jobs(SWEEP))
    assert_each_job_as_reference(store, list(folders), reference(tmp_path, outbox), kill_at)


def assert_each_job_as_reference(store: Store, job_ids: list[str], expected: dict, note) -> None:
    """Each job holds what the one job of the reference store holds, every record once."""
    found = contents(store)
    for table in ("epochs", "results", "provenance", "summaries", "attempts"):
        for job_id in job_ids:
            assert [row[1:] for row in found[table] if row[0] == job_id] == [
                row[1:] for row in expected[table]
            ], (table, job_id, note)
    assert len(found["events"]) == len(job_ids) * len(expected["events"])


SHARED = textwrap.dedent(
    """
    import os, sys
    from sqlalchemy import event
    from harness import collect
    from records.store import Store

    collect.SHARE = 1  # an outbox is a share: three jobs' outboxes go to a worker and the harness
    store = Store(sys.argv[1])
    harness, count, kill_at = os.getpid(), [0], int(sys.argv[2])

    @event.listens_for(store.engine, "before_cursor_execute")
    def _kill(*args):
        if (os.getpid() == harness) == (sys.argv[3] == "harness"):  # the one to kill
            count[0] += 1
            if count[0] == kill_at:
                os._exit(9)  # as SIGKILL: no rollback, no cleanup, mid-transaction

    collection = collect.Collection(store, store.jobs("collected"))
    print("workers", *[pid for pid, _ in collection.workers], flush=True)
    print("finished", collection.finish())
    """
)


def _ended(pid: int) -> bool:
    """Whether a process is gone (or a zombie no one has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def run_shared(url: str, kill_at: int = 0, who: str = "harness") -> tuple[int, list[int], str]:
    """A collection of the sweep's outboxes among a worker and the harness, one of which is
    killed at its ``kill_at``-th SQL statement (0: none): its exit code, the workers' pids
    (none where it was killed before it forked them) and its output."""
    run = subprocess.run(
        [sys.executable, "-c", SHARED, url, str(kill_at), who],
        capture_output=True, text=True, timeout=120, env=job_env(),
    )  # fmt: skip
    assert run.returncode in (0, 9), run.stderr
    said = run.stdout.splitlines()
    workers = [int(pid) for pid in said[0].split()[1:]] if said else []
    for _ in range(100):  # a worker ends with the harness, killed or not
        if all(_ended(pid) for pid in workers):
            break
        time.sleep(0.1)
    assert all(_ended(pid) for pid in workers), (workers, run.stdout)
    return run.returncode, workers, run.stdout


TWO_CORES = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="a collection is shared among workers on 2+ cores"
)


@TWO_CORES
@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURES)
@given(
    grown=st.floats(0.05, 0.95),
    kill_at=st.integers(1, 30),  # a share here is 4 to 25 statements
    who=st.sampled_from(["harness", "worker"]),
)
def test_a_collection_shared_among_workers_killed_anywhere_loses_and_duplicates_nothing(
    tmp_path_factory, outbox, grown, kill_at, who
):
    """The harness or its worker is killed at its Nth SQL statement: a worker killed has its
    share collected by the harness, which finishes; a harness killed takes its worker with
    it. The outboxes grow, and collections run again: the store ends as one whole
    collection would leave it."""
    tmp_path, first = tmp_path_factory.mktemp("shared"), int(grown * len(outbox))
    folders, store = jobs_written_to(tmp_path, "abc", outbox, first)
    code, workers, said = run_shared(store.url, kill_at, who)
    if who == "worker":  # the harness goes on, its worker's share collected again
        assert code == 0 and len(workers) == 1 and "finished" in said
    write_on(folders, outbox, first)
    store = Store(store.url)
    collect(store, store.jobs(SWEEP))
    collect(store, store.jobs(SWEEP))
    assert_each_job_as_reference(store, list(folders), reference(tmp_path, outbox), (kill_at, who))


@TWO_CORES
def test_a_collection_shared_among_workers_on_postgresql_stores_what_one_process_stores(
    tmp_path, outbox
):
    """On PostgreSQL the harness and its worker write side by side: the store holds each job
    as one collection into SQLite does."""
    url = os.environ.get("RESNEST_BENCH_TEST_PG")
    if not url:
        pytest.skip("no PostgreSQL: run scripts/pg-local.sh up and set RESNEST_BENCH_TEST_PG")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)  # a schema of this test's own
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS collect_shared CASCADE"))
        conn.execute(text("CREATE SCHEMA collect_shared"))
    try:
        scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3Dcollect_shared"
        folders, store = jobs_written_to(tmp_path, "abc", outbox, len(outbox), scoped)
        code, workers, said = run_shared(scoped)
        assert code == 0 and len(workers) == 1, said
        records = 3 * outbox.count(b"\n")
        assert f"finished {records}" in said  # every record, by the harness or its worker
        assert_each_job_as_reference(store, list(folders), reference(tmp_path, outbox), said)
        store.engine.dispose()
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS collect_shared CASCADE"))
        engine.dispose()


def test_a_store_on_a_filesystem_without_shared_maps(tmp_path, monkeypatch):
    """SQLite's WAL cannot work where a shared mmap fails (Lustre, GPFS; here a FUSE mount
    with direct_io): the store uses the rollback journal there, a WAL file moved there is
    switched back, and status says which."""
    if shutil.which("bindfs") is None or os.geteuid() != 0:
        pytest.skip("needs bindfs and root (.ci/run installs it)")
    source, mount = tmp_path / "disk", tmp_path / "shared"
    source.mkdir()
    mount.mkdir()
    subprocess.run(["bindfs", "-o", "direct_io", str(source), str(mount)], check=True)
    try:
        local = Store(f"sqlite:///{source / 'results.db'}")  # the same file, seen locally
        assert local.journal == "wal"
        local.add_sweep("before", {})
        local.engine.dispose()
        shared = Store(f"sqlite:///{mount / 'results.db'}", create=False)
        assert shared.journal == "delete" and shared.sweeps() == ["before"]
        shared.add_sweep("after", {})
        assert "rollback journal" in shared.describe()
        many = [("", "", 0, os.stat(mount))] * (4 * collect_module.SHARE)  # workers' worth
        # As in a harness with no other thread (pytest's worker has its own): one process on
        # the rollback journal, which takes one writer at a time; workers on the local disk.
        monkeypatch.setattr(collect_module.threading, "active_count", lambda: 1)
        assert len(collect_module._shares(shared, many)) == 1
        assert len(collect_module._shares(local, many)) == min(2, len(os.sched_getaffinity(0)))
        monkeypatch.undo()
        shared.engine.dispose()
        assert sorted(os.listdir(source)) == ["results.db"]  # no WAL, no index, no probe left
    finally:
        subprocess.run(["fusermount", "-u", str(mount)], check=False)
        subprocess.run(["umount", str(mount)], check=False, capture_output=True)
