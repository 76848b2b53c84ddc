"""The job summaries the table reads (``records.summaries``) against the epoch rows they sum
up: after reruns and requeues (several attempts, epochs written again or resumed part-way),
whatever order and batches the records arrive in (an ingest replays outboxes in its own),
after a rebuild, and after an upgrade from a store that had no summaries. Also what keeps a
shared store small and quick: ``thin`` and state changes written in one transaction."""

import contextlib
import io
import random
import statistics
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from harness.cli import main
from harness.figures import figures
from records import queries
from records.schema import SCHEMA_VERSION, TELEMETRY, epochs, jobs, summaries
from records.store import Store
from records.summaries import time_to

JOB = {"model": "resnest_tiny_basic", "dataset": "cifar10", "stage": "train", "gpus": 1,
       "seed": 0, "repeat": 0, "spec": {}, "depends_on": [], "job_dir": "/x"}  # fmt: skip

epoch = st.fixed_dictionaries(
    {
        "epoch_time": st.floats(0.01, 1e4),
        "images_per_sec": st.floats(0.1, 1e6),
        "test_acc": st.none() | st.floats(0, 1),
    },
    optional={
        "gpu_util_mean": st.floats(0, 100),
        "energy_j": st.floats(0, 1e6),
        "eval_time": st.floats(0, 1e3),
        "time": st.floats(1e9, 2e9),
    },
)
# An attempt: the epoch it starts at (1: from scratch, as a rerun; later: resumed, as after
# a requeue) and the epochs it reported before it ended.
attempt = st.tuples(st.integers(1, 4), st.lists(epoch, min_size=1, max_size=5))
job = st.tuples(st.sampled_from(["v100", "a100"]), st.lists(attempt, min_size=1, max_size=3))


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def records_of(jobs: list) -> list[dict]:
    out = []
    for i, (_gpu, attempts) in enumerate(jobs):
        for number, (first, reported) in enumerate(attempts):
            for n, e in enumerate(reported, start=first):
                out.append({"kind": "epoch", "job_id": f"j{i}", "attempt": number, "epoch": n,
                            "warmup": n == first, **e})  # fmt: skip
    return out


def filled(url: str, jobs: list, records: list[dict], batches: list[int]) -> Store:
    store = Store(url)
    store.add_sweep("s", {"sweep": {"target_accuracy": [0.3, 0.6, 0.9]}})
    store.add_jobs("s", [{"id": f"j{i}", **JOB, "gpu_type": gpu} for i, (gpu, _) in
                         enumerate(jobs)])  # fmt: skip
    start = 0
    for size in [*batches, len(records)]:
        store.write_records(records[start : start + size])
        start += size
    return store


def reference(rows: list) -> dict:
    """A run's figures computed here from its epoch rows, as the table did before summaries."""
    timed = [r for r in rows if not r.warmup] or rows
    times = [r.epoch_time for r in timed]
    mean = statistics.mean(times)
    figures = {
        "epoch_time": statistics.median(times),
        "images_per_sec": statistics.median([r.images_per_sec for r in timed]),
        "epoch_time_cv": statistics.pstdev(times) / mean if len(times) > 1 and mean else 0.0,
    }
    for name in TELEMETRY:
        values = [getattr(r, name) for r in timed if getattr(r, name) is not None]
        figures[name] = statistics.median(values) if values else None
    elapsed, figures["reached"] = 0.0, {}
    for r in rows:
        elapsed += r.epoch_time
        for target in (0.3, 0.6, 0.9, *(x.test_acc for x in rows if x.test_acc is not None)):
            if r.test_acc is not None and r.test_acc >= target:
                figures["reached"].setdefault(target, elapsed)
    # status's epoch and s/epoch of the job once it has ended
    last, before = rows[-1], rows[-2] if len(rows) > 1 else None
    figures["last_epoch"] = last.epoch
    one_attempt = before is not None and before.attempt == last.attempt
    if one_attempt and last.recorded_at and before.recorded_at:
        figures["last_epoch_s"] = last.recorded_at - before.recorded_at
    else:
        figures["last_epoch_s"] = ((last.epoch_time or 0.0) + (last.eval_time or 0.0)) or None
    return figures


def train_epochs(store: Store, sweep: str) -> dict[str, list]:
    """Job id -> its epochs in order, per epoch number the newest attempt's: read here from
    the epoch rows, as the table read them before summaries."""
    with store.begin() as conn:
        rows = conn.execute(
            select(epochs).join(jobs, jobs.c.id == epochs.c.job_id)
            .where(jobs.c.sweep == sweep, jobs.c.stage == "train").order_by(epochs.c.attempt)
        )  # fmt: skip
        per_job: dict[str, dict[int, object]] = {}
        for row in rows:
            per_job.setdefault(row.job_id, {})[row.epoch] = row
    return {job_id: [by_epoch[e] for e in sorted(by_epoch)] for job_id, by_epoch in per_job.items()}


def check(store: Store) -> None:
    merged = train_epochs(store, "s")
    kept = queries.train_summaries(store, "s")
    assert set(kept) == set(merged)
    for job_id, rows in merged.items():
        want, have = reference(rows), kept[job_id]
        assert have.epochs == len(rows)
        for name in ("epoch_time", "images_per_sec", "last_epoch", "last_epoch_s", *TELEMETRY):
            assert getattr(have, name) == want[name], (job_id, name)
        # the CV in floats (exact sums) against statistics' exact fractions
        assert have.epoch_time_cv == pytest.approx(want["epoch_time_cv"], rel=1e-12, abs=1e-15)
        targets = {0.3, 0.6, 0.9, *(r.test_acc for r in rows if r.test_acc is not None)}
        for target in targets:
            assert time_to(have.accuracy_steps, target) == want["reached"].get(target)


@settings(phases=(Phase.explicit, Phase.reuse, Phase.generate), max_examples=60,
          deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(jobs=st.lists(job, min_size=1, max_size=4), seed=st.integers(0, 2**16),
       batches=st.lists(st.integers(1, 6), max_size=4))  # fmt: skip
def test_summaries_equal_the_figures_of_the_epoch_rows_however_they_arrive(jobs, seed, batches):
    records = records_of(jobs)
    with tempfile.TemporaryDirectory() as folder:
        # As the jobs report them: in order, in batches.
        store = filled(f"sqlite:///{Path(folder) / 'a.db'}", jobs, records, batches)
        check(store)
        table = figures(store, "s")
        # As an ingest might replay them: shuffled, one at a time.
        shuffled = random.Random(seed).sample(records, len(records))
        other = filled(f"sqlite:///{Path(folder) / 'b.db'}", jobs, shuffled, [1] * len(records))
        check(other)
        assert figures(other, "s") == table
        # Rebuilt from the epoch rows alone.
        assert store.rebuild_summaries() == len(jobs)
        check(store)
        assert figures(store, "s") == table


def test_a_store_from_before_summaries_gets_them_when_it_is_opened(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"

    def e(seconds: float, accuracy: float) -> dict:
        return {"epoch_time": seconds, "images_per_sec": 30 / seconds, "test_acc": accuracy}

    jobs = [
        ("v100", [(1, [e(3.0, 0.5)] * 3)]),
        ("a100", [(1, [e(1.0, 0.7)] * 2), (2, [e(2.0, 0.9)])]),
    ]
    store = filled(url, jobs, records_of(jobs), [])
    table = figures(store, "s")
    with store.begin() as conn:  # as version 3 left it: no summaries
        conn.execute(text("DROP TABLE summaries"))
        conn.execute(text("UPDATE schema_version SET version = 3"))
    store.engine.dispose()
    reopened = Store(url)
    with reopened.begin() as conn:
        assert conn.execute(text("SELECT version FROM schema_version")).scalar() == SCHEMA_VERSION
        assert len(conn.execute(summaries.select()).all()) == 2
    check(reopened)
    assert figures(reopened, "s") == table
    (a100,) = [row for row in table if row["gpu_type"] == "a100"]
    # Epoch 2 is the resumed attempt's (2.0 s, not 1.0 s); both epochs are a process's first,
    # so both count: the median of 1.0 and 2.0.
    assert a100["epoch_time_s"] == 1.5


def test_thin_drops_the_samples_of_finished_jobs_and_the_tables_stay(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    jobs = [("v100", [(1, [{"epoch_time": 3.0, "images_per_sec": 10.0, "test_acc": 0.5,
                            "gpu_util_mean": 91.0, "energy_j": 40.0}] * 3)])] * 2  # fmt: skip
    store = filled(url, jobs, records_of(jobs), [])
    store.set_state("j0", "succeeded")
    store.set_state("j1", "running")
    store.write_records([
        {"kind": "telemetry", "job_id": job, "attempt": 0, "epoch": 1,
         "samples": [{"time": 100.0 + t, "gpu_index": g, "gpu_util": 90.0, "power_w": 250.0}
                     for t in range(5) for g in (0, 1)]}
        for job in ("j0", "j1")
    ])  # fmt: skip
    before = figures(store, "s")

    def samples() -> dict[str, int]:
        with store.begin() as conn:
            query = text("SELECT job_id, COUNT(*) FROM telemetry GROUP BY job_id")
            return dict(conn.execute(query).all())

    code, out, err = run("thin", "s", "--store", url, "--dry-run")
    assert code == 0 and "would drop 10 telemetry sample(s) of 1 finished job(s)" in out, err
    assert samples() == {"j0": 10, "j1": 10}
    code, out, err = run("thin", "s", "--store", url)
    assert code == 0 and "dropped 10 telemetry sample(s) of 1 finished job(s)" in out, err
    assert samples() == {"j1": 10}  # the running job keeps its own
    assert figures(store, "s") == before  # utilisation and energy per epoch stay
    assert before[0]["gpu_util_pct"] == 91.0 and before[0]["energy_per_epoch_j"] == 40.0
    code, out, _ = run("thin", "s", "--store", url)  # again: nothing left to drop
    assert code == 0 and "dropped 0 telemetry sample(s) of 0 finished job(s)" in out
    code, _, err = run("report", "s", "--store", url, "--out", str(tmp_path / "report"))
    assert code == 0 and (tmp_path / "report" / "index.html").is_file(), err
    code, _, err = run("thin", "nope", "--store", url)
    assert code == 2 and "nope" in err and "Traceback" not in err


def test_many_state_changes_are_one_transaction_and_a_bad_one_writes_none(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.add_sweep("s", {})
    store.add_jobs("s", [{"id": f"j{i}", **JOB, "gpu_type": "v100"} for i in range(4)])
    store.set_states([("j0", "running", {}), ("j1", "failed", {"reason": "exit code 1"}),
                      ("j2", "submitted", {"reason": None, "attempt": 2})])  # fmt: skip
    rows = {row["id"]: row for row in store.jobs("s")}
    assert rows["j0"]["state"] == "running" and rows["j0"]["started_at"]
    assert (rows["j1"]["state"], rows["j1"]["reason"]) == ("failed", "exit code 1")
    assert rows["j1"]["ended_at"] and rows["j2"]["attempt"] == 2 and rows["j2"]["submitted_at"]
    assert rows["j3"]["state"] == "pending"
    with pytest.raises(ValueError, match="unknown state 'lost'"):
        store.set_states([("j3", "succeeded", {}), ("j0", "lost", {})])
    assert {row["id"]: row["state"] for row in store.jobs("s")}["j3"] == "pending"


def test_an_ended_jobs_epoch_and_s_per_epoch_in_status_are_those_its_epoch_rows_gave(tmp_path):
    """Status reads an ended job's progress from its summary, a running one's from its epoch
    rows: the same job shows the same epoch and s/epoch either way, after a requeue that
    resumed part-way and after one that wrote a single epoch."""
    from harness.progress import job_progress

    def e(job: str, attempt: int, n: int, at: float) -> dict:
        return {"kind": "epoch", "job_id": job, "attempt": attempt, "epoch": n, "time": at,
                "epoch_time": 2.0 + n, "eval_time": 0.5, "images_per_sec": 10.0}  # fmt: skip

    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.add_sweep("s", {})
    store.add_jobs("s", [{"id": j, **JOB, "gpu_type": "v100"} for j in ("a", "b", "c")])
    store.write_records(
        [e("a", 0, n, 100.0 + 10 * n) for n in (1, 2, 3, 4)]  # requeued at epoch 3
        + [e("a", 1, n, 500.0 + 7 * n) for n in (3, 4, 5, 6)]
        + [e("b", 0, n, 100.0 + 10 * n) for n in (1, 2, 3)]  # resumed for one epoch
        + [e("b", 1, 4, 900.0)]
        + [e("c", 0, 1, 100.0)]  # one epoch in all
    )
    attempt = {"a": 1, "b": 1, "c": 0}
    rows = [{**row, "attempt": attempt[row["id"]]} for row in store.jobs("s")]
    running = job_progress([{**row, "state": "running"} for row in rows], store, now=1000.0)
    ended = job_progress([{**row, "state": "succeeded"} for row in rows], store, now=1000.0)
    assert {j: (p["epoch"], p["epoch_s"]) for j, p in running.items()} == {
        "a": (6, 7.0),
        "b": (4, 6.5),
        "c": (1, 3.5),
    }
    for job in "abc":
        assert (ended[job]["epoch"], ended[job]["epoch_s"]) == (
            running[job]["epoch"],
            running[job]["epoch_s"],
        )
        assert ended[job]["eta_s"] is None and running[job]["eta_s"] is not None
    # A summary written before schema 6 has no last epoch: status reads the epoch rows.
    with store.begin() as conn:
        conn.execute(summaries.update().values(last_epoch=None, last_epoch_s=None))
    older = job_progress([{**row, "state": "succeeded"} for row in rows], store, now=1000.0)
    assert older == ended
