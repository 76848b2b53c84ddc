"""Harness scale: what the harness itself costs on a shared store that holds a lab's sweeps.

    python bench/harness_scale.py [--postgres URL] [--table-jobs 10000] [--report-jobs 1000]
        [--epochs 250] [--plan-jobs 100000] [--status-jobs 10000] [--repeats 3]

Each figure is printed against its target, on SQLite (a file in a temporary folder) and on
PostgreSQL (``--postgres URL``, or ``RESNEST_BENCH_TEST_PG``; the bench works in a schema of
its own, ``harness_scale``, and drops it at the end):

- ``plan``: validating a cluster.yaml and expanding it into ``--plan-jobs`` jobs (< 1 s);
- ``table``: ``resnest-bench table`` over ``--table-jobs`` finished training jobs of
  ``--epochs`` epochs each (< 2 s), run in this process as the command line runs it; also
  how long the store takes to rebuild every job's summary from the epoch rows (what an
  ``ingest`` of that many jobs pays once); and ``resnest-bench status`` of that finished
  sweep (< 2 s);
- ``report``: ``resnest-bench report`` (tables and PNG plots) over ``--report-jobs`` jobs
  (< 10 s);
- ``status``: ``resnest-bench status`` of a ``--status-jobs`` SLURM sweep, its states read
  from a recorded ``sacct`` output of that size (one call, counted; < 2 s of harness time),
  with the jobs' outboxes collected into the store: the first time (every job changes state
  and every outbox is read) and again (only the running jobs' outboxes have grown);
- the store's growth: bytes per epoch row and per telemetry sample, and a year of daily
  sweeps of 1,000 jobs, before and after ``resnest-bench thin`` (telemetry samples dropped,
  per-epoch aggregates kept).

Timings are medians over ``--repeats`` runs after one warm-up run, with their spread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml
from sqlalchemy import func, insert, select, text

from bench.results_file import Result, out_file
from harness import config as cluster_config
from harness.cli import main as cli
from harness.planner import plan
from records.schema import epochs, jobs, metadata, results, telemetry
from records.store import Store

GPU_TYPES = ["k80", "p100", "v100", "a100", "h100"]
MODELS = ["resnest50_bottleneck", "resnest50_basic"]
JOBS_PER_TRAIN = 6  # train, transfer, 2 exports, 2 inferences
SCHEMA = "harness_scale"


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float, object]:
    """Median, min and max seconds of ``repeats`` runs after a warm-up run (no repeats: of
    the one run); the last value."""
    times, value = [], None
    for i in range(repeats + 1):
        value = None  # the last run's value is freed here, not in the next run's time
        start = time.perf_counter()
        value = fn()
        if i > 0 or repeats == 0:  # no repeats: the one run is the figure
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times), value


FIGURES: dict[str, dict[str, dict]] = {}  # per store kind, per figure: what --out keeps
KIND = ["plan"]  # the store kind being measured


def line(what: str, seconds: tuple, target: float, detail: str = "", key: str = "") -> None:
    median, low, high = seconds[:3]
    if key:
        FIGURES.setdefault(KIND[0], {})[key] = {
            "what": what, "median": median, "low": low, "high": high, "target": target,
            "detail": detail,
        }  # fmt: skip
    verdict = "ok" if median < target else "MISSED"
    print(f"  {what:<34} {median:7.3f} s ({low:.3f}-{high:.3f})  target < {target:g} s  "
          f"{verdict}{'  ' + detail if detail else ''}", flush=True)  # fmt: skip


def quiet(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli(list(args))
    if code != 0:
        raise SystemExit(f"resnest-bench {' '.join(args)} exited {code}")
    return code


# -- planning -------------------------------------------------------------------------------


def scale_config(folder: Path, seeds: int) -> Path:
    data = {
        "name": "scale",
        "gpu_types": {g: {"partition": f"gpu-{g}", "gres": f"gpu:{g}"} for g in GPU_TYPES},
        "sweep": {
            "models": MODELS, "datasets": ["synthetic"], "transfer_to": ["synthetic"],
            "gpu_types": GPU_TYPES, "seeds": list(range(seeds)),
            "stages": ["train", "transfer", "export", "infer"],
        },
    }  # fmt: skip
    path = folder / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bench_plan(folder: Path, n_jobs: int, repeats: int) -> None:
    seeds = math.ceil(n_jobs / (len(MODELS) * len(GPU_TYPES) * JOBS_PER_TRAIN))
    path = scale_config(folder, seeds)
    result = timed(lambda: plan(cluster_config.load(path)), repeats)
    line(f"plan {len(result[3]):,} jobs", result, 1.0, key="plan")
    FIGURES["plan"]["plan"]["jobs"] = len(result[3])


# -- a filled store -------------------------------------------------------------------------


def job_rows(n: int, prefix: str = "job") -> list[dict]:
    """``n`` training jobs' rows, each with a spec as the planner writes it (JSON that every
    read of the jobs decodes)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = plan(cluster_config.load(scale_config(Path(tmp), 1)))[0].spec.to_dict()
    rows = []
    for i in range(n):
        job_id = f"{prefix}{i:06d}"
        rows.append({
            "id": job_id, "sweep": "scale", "stage": "train", "model": MODELS[i % 2],
            "dataset": "cifar10", "gpu_type": GPU_TYPES[i // 2 % 5], "gpus": 1, "seed": i // 10,
            "repeat": 0, "spec": {**spec, "job_id": job_id, "seed": i // 10},
            "depends_on": [], "state": "succeeded", "attempt": 0, "job_dir": "",
        })  # fmt: skip
    return rows


def fill(store: Store, n_jobs: int, n_epochs: int, samples_per_epoch: int = 0) -> float:
    """``n_jobs`` finished training jobs of ``n_epochs`` epochs (and telemetry samples),
    written in bulk; then every summary rebuilt from the epoch rows. Returns the seconds the
    rebuild took."""
    store.add_sweep("scale", {"sweep": {"target_accuracy": [0.6, 0.7]}})
    rows = job_rows(n_jobs)
    with store.begin() as conn:
        conn.execute(insert(jobs), rows)
    for start in range(0, n_jobs, 500):
        chunk = rows[start : start + 500]
        with store.begin() as conn:
            conn.execute(insert(epochs), [
                {"job_id": row["id"], "attempt": 0, "epoch": e,
                 "epoch_time": 10.0 + (e * 7 + i) % 13 / 10, "images_per_sec": 5000.0 - e,
                 "test_acc": 0.5 + e / (4 * n_epochs), "warmup": e == 1, "images": 50000,
                 "gpu_util_mean": 90.0 + e % 5, "power_mean_w": 250.0, "energy_j": 2500.0}
                for i, row in enumerate(chunk) for e in range(1, n_epochs + 1)
            ])  # fmt: skip
            conn.execute(insert(results), [
                {"job_id": row["id"], "attempt": 0, "status": "succeeded",
                 "final_test_acc": 0.75, "best_test_acc": 0.76, "train_time": 2600.0}
                for row in chunk
            ])  # fmt: skip
            if samples_per_epoch:
                conn.execute(insert(telemetry), [
                    {"job_id": row["id"], "attempt": 0, "gpu_index": 0,
                     "time": 1.7e9 + e * samples_per_epoch + s,
                     "sample": {"time": 1.7e9 + e * samples_per_epoch + s, "gpu_index": 0,
                                "gpu_util": 93.0, "mem_util": 40.0, "power_w": 250.5,
                                "mem_used_bytes": 2.1e10, "temperature_c": 61}}
                    for row in chunk for e in range(1, n_epochs + 1)
                    for s in range(samples_per_epoch)
                ])  # fmt: skip
    start = time.perf_counter()
    store.rebuild_summaries()
    return time.perf_counter() - start


# -- status of a large SLURM sweep ----------------------------------------------------------


def outbox_line(job_id: str, kind: str, stamp: float, **record: object) -> str:
    line = {"kind": kind, "job_id": job_id, "attempt": 0, "time": stamp,
            "uid": uuid.uuid4().hex, **record}  # fmt: skip
    return json.dumps(line) + "\n"


def epoch_line(job_id: str, epoch: int, stamp: float) -> str:
    return outbox_line(job_id, "epoch", stamp, epoch=epoch, images=50_000, steps=391,
                       world_size=1, warmup=epoch == 0, train_loss=1.0, test_acc=0.5 + epoch / 100,
                       epoch_time=30.0, images_per_sec=1666.0)  # fmt: skip


def bench_status(store: Store, n_jobs: int, repeats: int, folder: Path) -> None:
    """``status`` of an ``n_jobs`` sweep held by SLURM: arrays of 1,000 tasks; sacct answers
    from a recorded output (most completed, some failed, some running). Every job has an
    outbox in its folder (a start record and ``EPOCHS_WRITTEN`` epochs; the ended ones a
    final record too), which status collects into the store: the first time every outbox
    (all the jobs just ended or started), again only those of the running jobs, each of which
    has written one more epoch since the last status."""
    from harness.launchers import sacct as slurm  # where poll reads sacct

    rows = job_rows(n_jobs, prefix="st")
    now = time.time()
    lines, running = [], []
    jobs_dir = folder / "status-jobs"
    for i, row in enumerate(rows):
        row.update(sweep="status", state="submitted", submitted_at=now - 3600,
                   launcher_job_id=f"slurm:{1000 + i // 1000}_{i % 1000}",
                   job_dir=str(jobs_dir / row["id"]))  # fmt: skip
        state = "FAILED" if i % 97 == 0 else "RUNNING" if i % 13 == 0 else "COMPLETED"
        code = "1:0" if state == "FAILED" else "0:0"
        lines.append(f"{1000 + i // 1000}_{i % 1000}|{state}|{code}|None|"
                     "2026-11-29T01:00:00|2026-11-29T01:30:00")  # fmt: skip
        outbox = [outbox_line(row["id"], "start", now - 3000, world_size=1, hosts=["node1"])]
        outbox += [epoch_line(row["id"], e, now - 3000 + e) for e in range(EPOCHS_WRITTEN)]
        if state == "RUNNING":
            running.append(Path(row["job_dir"]) / "outbox.jsonl")
        else:
            outbox.append(outbox_line(row["id"], "final", now - 2000, status=state.lower()))
        Path(row["job_dir"]).mkdir(parents=True)
        (Path(row["job_dir"]) / "outbox.jsonl").write_text("".join(outbox))
    recorded = "\n".join(lines) + "\n"
    store.add_sweep("status", {})
    with store.begin() as conn:
        conn.execute(insert(jobs), rows)
    calls = []

    def sacct(cmd: list[str], timeout: float = 60) -> str:
        calls.append(cmd[0])
        return recorded

    def status() -> int:
        return quiet("status", "status", "--store", store.url)

    def forget() -> None:
        """The store as before the first status: every job submitted, nothing collected."""
        with store.begin() as conn:
            for table in metadata.sorted_tables:
                if table is not jobs and "job_id" in table.c:
                    conn.execute(table.delete().where(table.c.job_id.like("st%")))
            conn.execute(jobs.update().where(jobs.c.sweep == "status").values(state="submitted"))

    os.sync()  # the files just written reach the disk before, not during, the timings
    real, slurm._run = slurm._run, sacct
    try:
        firsts = []
        for repeat in range(repeats + 1):  # one warm-up, then the repeats
            forget()
            start = time.perf_counter()
            status()
            if repeat or not repeats:
                firsts.append(time.perf_counter() - start)
        first = (statistics.median(firsts), min(firsts), max(firsts))
        again = []
        for repeat in range(repeats + 1):  # one warm-up, then the repeats
            with store.begin() as conn:  # back to submitted, for sacct to move them again
                conn.execute(
                    jobs.update().where(jobs.c.sweep == "status").values(state="submitted")
                )
            for path in running:  # every running job has finished one more epoch
                job_id = path.parent.name
                with open(path, "a") as f:
                    f.write(epoch_line(job_id, EPOCHS_WRITTEN + repeat, time.time()))
            start = time.perf_counter()
            status()
            if repeat or not repeats:
                again.append(time.perf_counter() - start)
    finally:
        slurm._run = real
    with store.begin() as conn:
        stored = conn.execute(
            select(func.count()).select_from(epochs).where(epochs.c.job_id.like("st%"))
        ).scalar()
    expected = n_jobs * EPOCHS_WRITTEN + len(running) * (repeats + 1)
    if stored != expected:
        raise SystemExit(f"status collected {stored:,} epoch rows, not {expected:,}")
    per = len(calls) / (2 * repeats + 2)
    line(f"status {n_jobs:,} jobs, first time", first, 2.0,
         f"{per:g} sacct call(s) each; {n_jobs:,} outboxes collected", "status_first")  # fmt: skip
    again_s = (statistics.median(again), min(again), max(again))
    grew = f"{len(running):,} running jobs' outboxes grew and were collected"
    line(f"status {n_jobs:,} jobs, again", again_s, 2.0, grew, "status_again")
    FIGURES[KIND[0]]["status_again"]["running"] = len(running)
    FIGURES[KIND[0]]["status_first"]["records"] = (
        n_jobs * (EPOCHS_WRITTEN + 1) + n_jobs - len(running)
    )


EPOCHS_WRITTEN = 3


# -- growth -----------------------------------------------------------------------------------


def table_bytes(store: Store, name: str) -> int | None:
    with store.begin() as conn:
        if store.engine.dialect.name == "postgresql":
            return conn.execute(text(f"SELECT pg_total_relation_size('{SCHEMA}.{name}')")).scalar()
        try:
            query = text("SELECT SUM(pgsize) FROM dbstat WHERE name = :n OR name LIKE :i")
            return conn.execute(query, {"n": name, "i": f"sqlite_autoindex_{name}_%"}).scalar()
        except Exception:
            return None


def bench_growth(url: str, n_epochs: int) -> None:
    store = Store(url)
    fill(store, 200, n_epochs, samples_per_epoch=2)
    n_rows, n_samples = 200 * n_epochs, 200 * n_epochs * 2
    per_epoch = (table_bytes(store, "epochs") or 0) / n_rows
    per_sample = (table_bytes(store, "telemetry") or 0) / n_samples
    per_summary = (table_bytes(store, "summaries") or 0) / 200
    # A year of daily sweeps of 1,000 training jobs of 250 epochs; one sample a second of a
    # 30 s epoch on one GPU.
    year_epochs = 365 * 1000 * 250
    year_samples = year_epochs * 30
    gb = 1e9
    FIGURES[KIND[0]]["bytes"] = {"epoch_row": per_epoch, "sample": per_sample,
                                 "summary": per_summary}  # fmt: skip
    print(f"  bytes per epoch row {per_epoch:,.0f}, per telemetry sample {per_sample:,.0f}, "
          f"per job summary {per_summary:,.0f}")  # fmt: skip
    print(f"  a year of daily 1,000-job sweeps (250 epochs of 30 s, 1 sample/s): epochs "
          f"{year_epochs * per_epoch / gb:,.1f} GB, telemetry {year_samples * per_sample / gb:,.0f}"
          f" GB; after thin: {year_epochs * per_epoch / gb:,.1f} GB")  # fmt: skip
    before = table_bytes(store, "telemetry")
    start = time.perf_counter()
    quiet("thin", "scale", "--store", url)
    seconds = time.perf_counter() - start
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as conn:
            conn.execute(text("VACUUM"))
    else:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM FULL {SCHEMA}.telemetry"))
    print(
        f"  thin: {n_samples:,} samples dropped in {seconds:.2f} s; telemetry "
        f"{(before or 0) / 1e6:.1f} MB -> {(table_bytes(store, 'telemetry') or 0) / 1e6:.2f} MB"
    )


# -- one backend ----------------------------------------------------------------------------


def bench_store(
    kind: str, make_url: Callable[[str], str], args: argparse.Namespace, folder: Path
) -> None:
    print(f"{kind}:", flush=True)
    KIND[0] = kind
    store = Store(make_url("table"))
    rebuild = fill(store, args.table_jobs, args.epochs)
    result = timed(lambda: quiet("table", "scale", "--store", store.url), args.repeats)
    rows = args.table_jobs * args.epochs
    detail = f"({rows:,} epoch rows; summaries rebuilt in {rebuild:.1f} s)"
    line(f"table {args.table_jobs:,} x {args.epochs} epochs", result, 2.0, detail, "table")
    FIGURES[kind]["rebuild"] = {"seconds": rebuild, "jobs": args.table_jobs}
    result = timed(lambda: quiet("status", "scale", "--store", store.url), args.repeats)
    line(f"status of those {args.table_jobs:,}, ended", result, 2.0, key="status_ended")
    bench_status(store, args.status_jobs, args.repeats, folder)
    store = Store(make_url("report"))
    fill(store, args.report_jobs, args.epochs)
    with tempfile.TemporaryDirectory() as out:
        result = timed(lambda: quiet("report", "scale", "--store", store.url, "--out", out),
                       args.repeats)  # fmt: skip
    line(f"report {args.report_jobs:,} x {args.epochs} epochs", result, 10.0, key="report")
    bench_growth(make_url("growth"), args.epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("RESNEST_BENCH_TEST_PG"))
    parser.add_argument("--plan-jobs", type=int, default=100_000)
    parser.add_argument("--table-jobs", type=int, default=10_000)
    parser.add_argument("--report-jobs", type=int, default=1_000)
    parser.add_argument("--status-jobs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=out_file, help="also write the figures as JSON here")
    args = parser.parse_args()
    result = Result("harness_scale")
    sizes = ("repeats", "epochs", "table_jobs", "report_jobs", "status_jobs")
    result.conditions.update({key: getattr(args, key) for key in sizes})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bench_plan(folder, args.plan_jobs, args.repeats)
        bench_store("SQLite", lambda name: f"sqlite:///{folder / name}.db", args, folder / "sqlite")
    if args.postgres:
        from sqlalchemy import create_engine

        engine = create_engine(args.postgres)
        separator = "&" if "?" in args.postgres else "?"
        scoped = f"{args.postgres}{separator}options=-csearch_path%3D{SCHEMA}"

        def fresh(_name: str) -> str:
            with engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
                conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
            return scoped

        try:
            with tempfile.TemporaryDirectory() as tmp:
                bench_store("PostgreSQL", fresh, args, Path(tmp))
        finally:
            with engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
    else:
        print("PostgreSQL: skipped (give --postgres URL or set RESNEST_BENCH_TEST_PG)")
    result.figures = FIGURES
    result.write(args.out)


if __name__ == "__main__":
    main()
