"""Every table layout and format, and the report, over generated mixtures of rows.

Hypothesis writes a store as jobs would leave it: training and transfer runs with or without
epochs, accuracy, a final result or telemetry; inference jobs whose runtimes were measured,
unavailable, or reported with fields missing; failed, cancelled and pending jobs; a sweep of
one job or of none. The command line must show each of them, in every format, and say what
it shows: the rows it prints are the rows the store implies.
"""

import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harness.cli import main
from records.store import STATES, Store

MODELS = ("resnest_tiny_basic", "resnest_tiny_bottleneck")
GPUS = ("k80", "p100", "v100")
RUNTIMES = ("eager", "onnxruntime", "onnxruntime-int8", "caffe2")
FORMATS = ("table", "md", "csv", "json", "html")

maybe_acc = st.none() | st.floats(0, 1)
epoch = st.fixed_dictionaries(
    {
        "epoch_time": st.floats(0.001, 1e4),
        "images_per_sec": st.floats(0.1, 1e6),
        "warmup": st.booleans(),
        "test_acc": maybe_acc,
    },
    optional={"gpu_util_mean": st.floats(0, 100), "energy_j": st.floats(0, 1e6)},
)
result = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["succeeded", "failed"]),
        "final_test_acc": maybe_acc,
        "best_test_acc": maybe_acc,
        "train_time": st.none() | st.floats(0, 1e6),
        "time_to_target": st.none() | st.floats(0, 1e6),
    }
)
measured = st.fixed_dictionaries(
    {"available": st.just(True), "batch_size": st.sampled_from([1, 8, 64])},
    optional={
        "test_accuracy": st.floats(0, 1),
        "latency_p50_ms": st.floats(0.01, 1e3),
        "latency_p99_ms": st.floats(0.01, 1e3),
        "images_per_sec": st.floats(0.1, 1e6),
        "bytes": st.integers(1, 10**9),
        "top1_agreement_with_eager": st.floats(0, 1),
        "provider": st.sampled_from(["CPUExecutionProvider", "CUDAExecutionProvider"]),
        "threads": st.integers(1, 64),
    },
)
unavailable = st.fixed_dictionaries(
    {"available": st.just(False), "batch_size": st.just(0), "reason": st.text(max_size=40)}
)
job = st.fixed_dictionaries(
    {
        "stage": st.sampled_from(["train", "transfer", "export", "infer"]),
        "model": st.sampled_from(MODELS),
        "gpu_type": st.sampled_from(GPUS),
        "state": st.sampled_from(STATES),
        "epochs": st.lists(epoch, max_size=3),
        "result": st.none() | result,
        "inference": st.dictionaries(
            st.sampled_from(RUNTIMES), st.lists(measured, min_size=1, max_size=2) | unavailable,
            max_size=4,
        ),
    }
)  # fmt: skip
sweeps = st.lists(job, max_size=6)


def fill(store: Store, jobs: list[dict]) -> None:
    # Priced GPU types: the cost column meets runs with and without a training time.
    # Targets too: the time-to-target columns meet runs that reach them, miss them, or have
    # no accuracy at all.
    store.add_sweep("mix", {"gpu_types": {g: {"price_per_gpu_hour": 2.5} for g in GPUS},
                            "sweep": {"target_accuracy": [0.5, 0.9]}})  # fmt: skip
    rows, records = [], []
    for i, j in enumerate(jobs):
        job_id = f"job{i}"
        rows.append({"id": job_id, "stage": j["stage"], "model": j["model"], "dataset": "cifar10",
                     "gpu_type": j["gpu_type"], "gpus": 1, "seed": 0, "repeat": 0, "spec": {},
                     "depends_on": [], "job_dir": f"/nowhere/{job_id}"})  # fmt: skip
        base = {"job_id": job_id, "attempt": 0}
        if j["stage"] in ("train", "transfer"):
            for n, e in enumerate(j["epochs"], start=1):
                records.append({"kind": "epoch", **base, "epoch": n, **e})
            if j["result"]:
                records.append({"kind": "final", **base, **j["result"]})
        if j["stage"] == "infer":
            for runtime, items in j["inference"].items():
                for m in items if isinstance(items, list) else [items]:
                    records.append({"kind": "inference", **base, "runtime": runtime, **m})
    store.add_jobs("mix", rows)
    for row, j in zip(rows, jobs, strict=True):
        store.set_state(row["id"], j["state"])
    store.write_records(records)


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def expected_pairs(jobs: list[dict]) -> set[tuple[str, str]]:
    """(GPU type, model) pairs the comparison has figures for: a training run with epochs, or
    a finished transfer run (a run that failed before its first epoch counts only where it
    started, and these runs write no start record)."""
    found = set()
    for j in jobs:
        if j["stage"] == "train" and j["epochs"]:
            found.add((j["gpu_type"], j["model"]))
        if j["stage"] == "transfer" and j["result"] and j["result"]["status"] == "succeeded":
            found.add((j["gpu_type"], j["model"]))
    return found


def expected_gpu_rows(jobs: list[dict]) -> set[str]:
    """GPU types the wide comparison has a row for."""
    return {gpu for gpu, _ in expected_pairs(jobs)}


def expected_deploy_rows(jobs: list[dict]) -> set[tuple]:
    return {
        (j["model"], j["gpu_type"], runtime)
        for j in jobs
        if j["stage"] == "infer"
        for runtime in j["inference"]
    }


def unavailable_runtimes(jobs: list[dict]) -> set[tuple]:
    """Runtimes that no inference job measured: they are rows that say so."""
    measured, seen = set(), set()
    for j in jobs:
        if j["stage"] != "infer":
            continue
        for runtime, items in j["inference"].items():
            seen.add((j["model"], j["gpu_type"], runtime))
            if isinstance(items, list):
                measured.add((j["model"], j["gpu_type"], runtime))
    return seen - measured


def data_lines(text: str, fmt: str) -> int:
    """How many rows a rendered table shows."""
    if not text.strip():
        return 0
    if fmt == "json":
        return len(json.loads(text))
    if fmt == "csv":
        return len(list(csv.DictReader(io.StringIO(text))))
    if fmt == "md":
        return len([x for x in text.splitlines() if x.startswith("| ")]) - 2  # header, rule
    if fmt == "html":
        return text.count("<tr>") - 1
    return len(text.splitlines()) - 2  # header and rule


# No example database (nothing is written into the checkout) and no shrinking (a failure is
# reported as generated, within CI's time rather than after minutes of shrinking).
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)


@settings(
    phases=PHASES,
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(jobs=sweeps)
def test_every_table_layout_and_format_renders_any_mixture_of_rows(jobs):
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'results.db'}"
        fill(Store(url), jobs)
        gpus = expected_gpu_rows(jobs)
        pairs = expected_pairs(jobs)
        deploy = expected_deploy_rows(jobs)
        for fmt in FORMATS:
            code, out, err = run("table", "mix", "--store", url, "--format", fmt)
            assert code == 0 and "Traceback" not in err, err
            if fmt == "json":  # tidy: a row per GPU type and model, numbers as numbers
                rows = json.loads(out)
                assert {(r["gpu_type"], r["model"]) for r in rows} == pairs
                assert len(rows) == len(pairs)
                for r in rows:
                    assert isinstance(r["cv_flag"], bool) and isinstance(r["runs"], int)
                    assert r["cv_flag"] == (r["cv_pct"] > 5)
            elif fmt == "csv":
                assert data_lines(out, fmt) == len(pairs)
            elif fmt != "table":  # md, html: the wide table, a row per GPU type
                assert data_lines(out, fmt) == len(gpus)
            elif not gpus:
                assert "(no finished training jobs yet)" in out

            code, out, err = run("table", "mix", "--store", url, "--layout", "study",
                                 "--format", fmt)  # fmt: skip
            assert code == 0, err

            code, out, err = run("table", "mix", "--deploy", "--store", url, "--format", fmt)
            assert code == 0, err
            if not deploy:  # machine formats: an empty list or file; else it says so
                empty = {"json": "[]", "csv": ""}.get(fmt, "(no inference results yet)")
                assert out.strip() == empty
                continue
            assert data_lines(out, fmt) == len(deploy)
            if fmt == "json":
                rows = json.loads(out)
                assert {(r["model"], r["gpu_type"], r["runtime"]) for r in rows} == deploy
                unmeasured = unavailable_runtimes(jobs)
                for r in rows:  # the same columns in every row, whatever was measured
                    assert list(r) == list(rows[0])
                    key = (r["model"], r["gpu_type"], r["runtime"])
                    assert r["available"] == (key not in unmeasured)
                    assert (r["reason"] is None) == r["available"]
            if fmt == "table":  # every runtime row shows, with its note if unavailable
                for model, _gpu, runtime in deploy:
                    assert any(runtime in line and model in line for line in out.splitlines())


@settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(jobs=sweeps)
def test_the_report_renders_any_mixture_of_rows(jobs):
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'results.db'}"
        fill(Store(url), jobs)
        out = Path(folder) / "report"
        code, _, err = run("report", "mix", "--store", url, "--out", str(out))
        assert code == 0 and "Traceback" not in err, err
        page = (out / "index.html").read_text()
        for name in ("GPU comparison", "Deployment", "Provenance"):
            assert f"<h2>{name}</h2>" in page
        deploy = expected_deploy_rows(jobs)
        if deploy:
            section = page.split("<h2>Deployment</h2>")[1].split("<h2>")[0]
            assert section.count("<tr>") - 1 == len(deploy)
        else:
            assert "(no inference results)" in page
        for image in page.split('<img src="')[1:]:
            assert (out / image.split('"')[0]).stat().st_size > 1000
