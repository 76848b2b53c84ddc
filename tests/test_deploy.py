"""Export and inference jobs: both block variants exported (ONNX at opsets 18 and 11,
torch.export, AOTInductor) with parity and a parity failure, every runtime over real
Fashion-MNIST images (Caffe2 in its own interpreter, on both variants), a missing runtime, a
crash and a wrong device as rows, a corrupt ONNX file refused, the choice of the winner, and the
train -> export -> infer chain on the local launcher."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from jobs.data import FASHION_MNIST_SYSTEM_DIR

from .conftest import CAFFE2_PYTHON, needs_caffe2
from .jobtools import (
    EXE,
    check_winner_deployed,
    records,
    run_job,
    store_of,
    tiny_sweep,
    write_cluster,
)

VARIANTS = ["resnest_tiny_bottleneck", "resnest_tiny_basic"]
AOTI_VARIANT = "resnest_tiny_basic"
# Real images: Debian's Fashion-MNIST IDX files (dataset-fashion-mnist, which .ci/run installs).
DATA = ["--data-dir", str(FASHION_MNIST_SYSTEM_DIR)]


def job(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout
    )


def copy_artifacts(source: Path, folder: Path) -> Path:
    """A copy of an export's artifacts folder (``folder``), to damage."""
    folder.mkdir(parents=True)
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def quick_infer(export: Path, out: Path, *runtimes: str, extra: tuple = ()) -> dict[str, dict]:
    """An inference job over 32 test images at batch 1, as `resnest-bench infer` runs it;
    runtime -> its row."""
    result = subprocess.run(
        [str(EXE), "infer", "--from", str(export), "--out", str(out), *DATA, "--runtimes",
         *runtimes, "--batches", "1", "--iters", "2", "--test-images", "32", *extra],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {r["runtime"]: r for r in records(out, "inference")}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each variant trained briefly, then exported: variant -> its folder."""
    folders = {}
    for variant in VARIANTS:
        tmp_path = tmp_path_factory.mktemp(variant)
        args = ["--model", variant, "--dataset", "fashion-mnist", *DATA, "--batch-size", "32"]
        trained = run_job(tmp_path / "train", *args, "--epochs", "1", "--max-steps", "4")
        assert trained.returncode == 0, trained.stderr
        # AOTInductor is the same code for either block (and its compile the slowest step
        # here): compiled for one variant only.
        aoti = [] if variant == AOTI_VARIANT else ["--no-aoti"]
        # The job's own command line for one variant, `resnest-bench export` for the other.
        command = [sys.executable, "-m", "jobs.export"] if aoti == [] else [str(EXE), "export"]
        result = subprocess.run(
            [*command, "--from", str(tmp_path / "train"), "--out", str(tmp_path / "export"),
             *DATA, *aoti],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        folders[variant] = tmp_path
    return folders


@pytest.fixture(params=VARIANTS)
def exported(request, exports):
    return exports[request.param]


def test_export_writes_every_artifact_with_parity(exported):
    tmp_path = exported
    folder = tmp_path / "export" / "artifacts"
    names = sorted(p.name for p in folder.iterdir())
    aoti = ["model.aoti.pt2"] if tmp_path.name.startswith(AOTI_VARIANT) else []
    assert names == [
        *aoti,
        "model.caffe2.onnx",
        "model.json",
        "model.onnx",
        "model.pt2",
        "model.state_dict.pt",
    ]
    for name, opsets in (("model.onnx", range(17, 99)), ("model.caffe2.onnx", [11])):
        model = onnx.load(str(folder / name))
        onnx.checker.check_model(model, full_check=True)
        (default,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
        assert default in opsets, (name, default)
        assert [i.name for i in model.graph.input][:1] == ["images"]
        assert [o.name for o in model.graph.output] == ["logits"]
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.dim_value  # a dynamic batch axis
    artifacts = records(tmp_path / "export", "artifact")
    kinds = {"state_dict", "torch_export", "onnx", "onnx_opset11"} | ({"aoti"} if aoti else set())
    assert {a["artifact"] for a in artifacts} == kinds
    for a in artifacts:
        assert Path(a["path"]).stat().st_size == a["bytes"] and len(a["sha256"]) == 64
    (final,) = records(tmp_path / "export", "final")
    assert final["status"] == "succeeded"
    assert final["parity"]["images"] == 256
    assert final["parity"]["max_abs_diff"] <= 1e-4
    assert final["parity"]["top1_agreement"] == 1.0
    assert final["parity_opset11"]["images"] == 256
    assert final["parity_opset11"]["max_abs_diff"] <= 1e-4
    assert final["parity_opset11"]["top1_agreement"] == 1.0
    assert final["fp32_bytes"] == 4 * final["params"]


def test_inference_in_every_runtime_available_here(exports):
    tmp_path = exports["resnest_tiny_basic"]
    out = tmp_path / "infer"
    result = job(
        "jobs.infer", "--from", str(tmp_path / "export"), "--out", str(out), *DATA,
        "--batches", "1", "8", "--iters", "5", "--threads", "1", "--calibration-images", "64",
        "--test-images", "400",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = records(out, "inference")
    runtimes = {r["runtime"] for r in rows if r["available"]}
    here = {"eager", "compile", "aoti", "onnxruntime", "onnxruntime-int8"}
    assert runtimes == (here | {"caffe2"} if CAFFE2_PYTHON else here)
    if not CAFFE2_PYTHON:
        (caffe2,) = [r for r in rows if r["runtime"] == "caffe2"]
        assert caffe2["available"] is False and caffe2["batch_size"] == 0
        assert "scripts/caffe2-env.sh up builds it" in caffe2["reason"]
    by = {(r["runtime"], r["batch_size"]): r for r in rows if r["available"]}
    assert set(by) == {(name, b) for name in runtimes for b in (1, 8)}
    for (name, _), row in by.items():
        assert row["test_images"] == 400 and 0 <= row["test_accuracy"] <= 1
        assert row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"]
        assert row["images_per_sec"] > 0 and row["threads"] == 1
        provider = {"onnx": "CPUExecutionProvider", "caffe2": "caffe2 CPU"}
        assert row["provider"] == next(
            (v for k, v in provider.items() if name.startswith(k)), "torch cpu"
        )
    for name in runtimes - {"eager", "onnxruntime-int8"}:  # the same fp32 network
        assert by[(name, 1)]["top1_agreement_with_eager"] == 1.0
        assert by[(name, 1)]["max_abs_diff_vs_eager"] <= 1e-4
        assert by[(name, 1)]["test_accuracy"] == by[("eager", 1)]["test_accuracy"]
    int8 = by[("onnxruntime-int8", 1)]
    assert int8["top1_agreement_with_eager"] >= 0.9
    assert int8["bytes"] < by[("onnxruntime", 1)]["bytes"]


@pytest.fixture(scope="module")
def caffe2_inferences(exports):
    """Each variant's export in eager and Caffe2 over 2,000 real test images: variant -> the
    inference job's folder."""
    if not CAFFE2_PYTHON:
        pytest.skip("set RESNEST_BENCH_TEST_CAFFE2 to a Caffe2 interpreter")
    folders = {}
    for variant, folder in exports.items():
        out = folder / "infer-caffe2"
        result = job(
            "jobs.infer", "--from", str(folder / "export"), "--out", str(out), *DATA,
            "--runtimes", "eager", "caffe2", "--batches", "1", "64", "--iters", "5",
            "--threads", "1", "--test-images", "2000", "--job-id", f"caffe2-{variant}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        folders[variant] = out
    return folders


@pytest.mark.parametrize("variant", VARIANTS)
def test_caffe2_runs_each_variant_with_parity_over_real_images(caffe2_inferences, exports, variant):
    """The study's second runtime for real: the opset-11 file in Caffe2 (torch 1.10.2, Python
    3.9, a child process of its own) gives eager's logits and accuracy on real images."""
    measured = records(caffe2_inferences[variant], "inference")
    rows = {(r["runtime"], r["batch_size"]): r for r in measured}
    assert set(rows) == {(name, b) for name in ("eager", "caffe2") for b in (1, 64)}
    eager, caffe2 = rows[("eager", 1)], rows[("caffe2", 1)]
    assert caffe2["available"] and caffe2["device"] == "cpu" and caffe2["test_images"] == 2000
    assert caffe2["max_abs_diff_vs_eager"] <= 1e-4  # parity over all 2,000 images
    assert caffe2["top1_agreement_with_eager"] == 1.0
    assert caffe2["test_accuracy"] == eager["test_accuracy"]
    assert caffe2["versions"]["torch"].startswith("1.10.2")
    assert caffe2["versions"]["python"].startswith("3.9.")
    opset11 = exports[variant] / "export" / "artifacts" / "model.caffe2.onnx"
    assert caffe2["bytes"] == opset11.stat().st_size
    for b in (1, 64):  # timed in the child, around Caffe2's run alone
        row = rows[("caffe2", b)]
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"]
        assert row["iterations"] == 5 and row["images_per_sec"] > 0


def test_the_deployment_table_shows_caffe2_for_both_variants(caffe2_inferences, tmp_path):
    """Jobs run by hand, ingested as a sweep: ``table --deploy`` has a Caffe2 row per variant
    with accuracy, agreement, latency and size, next to eager."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    for folder in caffe2_inferences.values():
        done = subprocess.run(
            [str(EXE), "ingest", str(folder), "--store", url, "--sweep", "by-hand"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    table = subprocess.run(
        [str(EXE), "table", "by-hand", "--deploy", "--store", url, "--format", "json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    rows = {(r["model"], r["runtime"]): r for r in json.loads(table.stdout)}
    assert set(rows) == {(v, name) for v in VARIANTS for name in ("eager", "caffe2")}
    for variant in VARIANTS:
        eager, caffe2 = rows[(variant, "eager")], rows[(variant, "caffe2")]
        assert caffe2["test_acc_pct"] == eager["test_acc_pct"] is not None
        assert caffe2["agreement_pct"] == 100.0 and caffe2["agreement_flag"] is False
        assert caffe2["latency_p50_ms_batch1"] > 0 and caffe2["best_batch_size"] in (1, 64)
        assert caffe2["size_mb"] > 0 and caffe2["provider"] == "caffe2 CPU"


def test_without_a_caffe2_interpreter_its_row_says_how_to_get_one(exports, tmp_path):
    missing = tmp_path / "no-such-env" / "bin" / "python"
    export = exports["resnest_tiny_basic"] / "export"
    rows = quick_infer(export, tmp_path / "infer", "eager", "caffe2",
                       extra=("--caffe2-python", str(missing)))  # fmt: skip
    assert rows["eager"]["available"] and not rows["caffe2"]["available"]
    assert rows["caffe2"]["reason"] == (
        f"no Caffe2 interpreter at {missing}: scripts/caffe2-env.sh up builds it (Python 3.9, "
        "torch 1.10.2; 2.0 GB), or set RESNEST_BENCH_CAFFE2_PYTHON"
    )


@needs_caffe2
def test_a_file_caffe2_cannot_prepare_costs_its_row_not_the_job(exports, tmp_path):
    source = exports["resnest_tiny_basic"] / "export" / "artifacts"
    folder = copy_artifacts(source, tmp_path / "export" / "artifacts")
    data = (folder / "model.caffe2.onnx").read_bytes()
    (folder / "model.caffe2.onnx").write_bytes(data[: len(data) // 3])  # cut short
    out = tmp_path / "infer"
    rows = quick_infer(folder.parent, out, "caffe2", "eager")
    assert rows["eager"]["available"] and not rows["caffe2"]["available"]
    assert rows["caffe2"]["reason"].startswith("Caffe2 could not prepare model.caffe2.onnx: ")
    assert (out / "caffe2.stderr.log").stat().st_size > 0  # Caffe2's own words, kept


def test_a_corrupt_onnx_file_is_refused(exports, tmp_path):
    source = exports["resnest_tiny_basic"]
    broken = tmp_path / "export"
    (broken / "artifacts").mkdir(parents=True)
    for name in ("model.json", "model.state_dict.pt"):
        (broken / "artifacts" / name).write_bytes(
            (source / "export" / "artifacts" / name).read_bytes()
        )
    data = (source / "export" / "artifacts" / "model.onnx").read_bytes()
    (broken / "artifacts" / "model.onnx").write_bytes(data[: len(data) // 2])  # cut short
    result = job("jobs.infer", "--from", str(broken), "--out", str(tmp_path / "infer"), *DATA,
                 "--runtimes", "onnxruntime")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"resnest-bench: error: {broken / 'artifacts' / 'model.onnx'}: not a valid ONNX model"
    )
    assert result.stderr.count("\n") == 1


def test_an_aoti_package_for_another_device_or_a_broken_one_is_a_row(exports, tmp_path):
    """The export job compiles the AOTInductor package for its own device (CUDA on a GPU
    node); an inference job elsewhere, or a package that cannot run, says so in a row."""
    source = exports["resnest_tiny_basic"] / "export" / "artifacts"
    results = {}
    for case in ("cuda", "truncated"):
        folder = copy_artifacts(source, tmp_path / case / "artifacts")
        meta = json.loads((folder / "model.json").read_text())
        assert meta["aoti_device"] == "cpu"  # exported here, where there is no GPU
        if case == "cuda":
            meta["aoti_device"] = "cuda"
            (folder / "model.json").write_text(json.dumps(meta))
        else:
            package = (folder / "model.aoti.pt2").read_bytes()
            (folder / "model.aoti.pt2").write_bytes(package[: len(package) // 2])
        rows = quick_infer(folder.parent, tmp_path / f"infer-{case}", "eager", "aoti")
        assert rows["eager"]["available"] and not rows["aoti"]["available"]
        results[case] = rows["aoti"]["reason"]
    assert results["cuda"].startswith(
        "the AOTInductor package was compiled for cuda; this job runs on cpu"
    )
    assert results["truncated"].startswith("the AOTInductor package failed to run: ")


def test_a_runtime_that_crashes_costs_its_row_not_the_job():
    from jobs.runtimes import Unavailable, isolated

    isolated("print('fine')", what="a runtime")  # runs, nothing raised
    with pytest.raises(
        Unavailable, match=r"^a runtime crashed the process that ran it \(SIGSEGV\)$"
    ):
        isolated("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", what="a runtime")
    with pytest.raises(Unavailable, match=r"^a runtime failed to run: ValueError: bad package$"):
        isolated("raise ValueError('bad package')", what="a runtime")
    with pytest.raises(Unavailable, match=r"did not run one batch within 1 s"):
        isolated("import time\ntime.sleep(30)", what="a runtime", timeout=1)


def test_export_fails_when_the_logits_differ_by_more_than_the_tolerance(exports, tmp_path):
    trained = exports["resnest_tiny_bottleneck"] / "train"
    out = tmp_path / "export"
    result = job(
        "jobs.export", "--from", str(trained), "--out", str(out), *DATA, "--no-aoti",
        "--parity-images", "64", "--tolerance", "0",
    )  # fmt: skip
    (final,) = records(out, "final")
    difference = final["detail"]["parity"]["max_abs_diff"]
    assert 0 < difference <= 1e-4  # within the default bound, beyond this one
    assert result.returncode == 4 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"resnest-bench: parity check failed: ONNX Runtime (model.onnx) and PyTorch differ by "
        f"{difference:.3g} > 0 on the logits"
    )
    assert final["status"] == "failed" and final["reason"] == "parity"


def test_export_of_a_folder_without_checkpoints_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = job("jobs.export", "--from", str(tmp_path / "empty"), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no valid checkpoint" in result.stderr and result.stderr.count("\n") == 1


def test_train_export_infer_chain_on_the_local_launcher_and_the_deployment_table(tmp_path):
    """Both variants trained; as the study did, only the winner deployed (deploy: winner)."""
    path = write_cluster(
        tmp_path,
        "deploy",
        {"kind": "local", "local": {"max_parallel": 2}},
        {"cpu": {"local": "cpu"}},
        tiny_sweep(
            gpu_types=["cpu"],
            stages=["train", "export", "infer"],
            deploy="winner",
            epochs=1,
            export_options={"no_aoti": True, "parity_images": 64},
            infer_options={
                "runtimes": ["eager", "onnxruntime", "aoti", "caffe2"],
                "batches": [1, 8],
                "iters": 5,
                "threads": 1,
            },
        ),
    )
    result = subprocess.run(
        [str(EXE), "submit", str(path), "-q"], capture_output=True, text=True, cwd=tmp_path,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "4 succeeded, 0 failed, 0 not run" in result.stderr
    store = store_of(tmp_path)
    winner = check_winner_deployed(store, "deploy")
    stages = {r["stage"]: r for r in store.jobs("deploy")}
    assert stages["infer"]["depends_on"] == [stages["export"]["id"]]
    table = subprocess.run(
        [str(EXE), "table", "--deploy", "-c", str(path), "--format", "json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    rows = json.loads(table.stdout)
    assert [(r["model"], r["runtime"]) for r in rows] == [
        (winner["model"], runtime) for runtime in ("eager", "aoti", "onnxruntime", "caffe2")
    ]
    eager, aoti, ort, caffe2 = rows
    measured = [eager, ort, caffe2] if CAFFE2_PYTHON else [eager, ort]
    for row in measured:
        assert row["available"] and row["agreement_pct"] == 100.0
        assert row["agreement_flag"] is False and row["test_acc_pct"] == eager["test_acc_pct"]
        assert row["latency_p50_ms_batch1"] > 0 and row["best_batch_size"] in (1, 8)
        assert row["size_mb"] > 0
    if CAFFE2_PYTHON:  # the opset-11 file, a little smaller than the opset-18 one
        assert caffe2["provider"] == "caffe2 CPU" and 0 < caffe2["size_mb"] <= ort["size_mb"]
    else:
        assert not caffe2["available"]
        assert caffe2["reason"].startswith("no Caffe2 interpreter at ")
    assert aoti["reason"].startswith("no AOTInductor package")  # --no-aoti
    assert not aoti["available"] and aoti["test_acc_pct"] is None
    assert aoti["latency_p50_ms_batch1"] is None
    # The same mixture (runtimes measured, one unavailable) in the terminal and md formats.
    for fmt, aoti_line in (("table", "aoti "), ("md", "| aoti |")):
        shown = subprocess.run(
            [str(EXE), "table", "--deploy", "-c", str(path), "--format", fmt],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        (line,) = [x for x in shown.stdout.splitlines() if aoti_line in x]
        assert "unavailable: no AOTInductor package" in line
    report = subprocess.run(
        [str(EXE), "report", "-c", str(path), "--out", str(tmp_path / "report")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "latency.png").stat().st_size > 10_000
    assert 'src="latency.png"' in (tmp_path / "report" / "index.html").read_text()


def _finished_run(folder: Path, job_id: str, model: str, accuracy: float) -> Path:
    """A training job's outbox as the trainer writes it (start and final records)."""
    from records.outbox import OutboxWriter

    reporter = OutboxWriter(folder, job_id)
    reporter.report("start", {"spec": {"stage": "train", "model": model}})
    reporter.report("final", {"status": "succeeded", "final_test_acc": accuracy})
    return folder


def test_the_winner_is_the_best_final_accuracy_in_the_store(tmp_path):
    from jobs.checkpoint import CheckpointError
    from jobs.export import choose_winner
    from records.store import Store

    folders = [
        _finished_run(tmp_path / "a", "job-a", "resnest_tiny_basic", 0.50),
        _finished_run(tmp_path / "b", "job-b", "resnest_tiny_bottleneck", 0.70),
        _finished_run(tmp_path / "c", "job-c", "resnest_tiny_basic", 0.60),
    ]
    # Without a store: the outboxes decide.
    chosen, ranking = choose_winner(folders)
    assert chosen == folders[1] and {c["from"] for c in ranking} == {"outbox"}
    # The store has the newest word: attempt 1 of job a did better than anything.
    url = f"sqlite:///{tmp_path / 'results.db'}"
    Store(url).write_records(
        [
            {"kind": "final", "job_id": "job-a", "attempt": 0, "status": "succeeded",
             "final_test_acc": 0.50},
            {"kind": "final", "job_id": "job-a", "attempt": 1, "status": "succeeded",
             "final_test_acc": 0.90},
            {"kind": "final", "job_id": "job-b", "attempt": 0, "status": "succeeded",
             "final_test_acc": 0.70},
            {"kind": "final", "job_id": "job-c", "attempt": 2, "status": "failed",
             "final_test_acc": 0.99},
        ]
    )  # fmt: skip
    chosen, ranking = choose_winner(folders, store=url)
    assert chosen == folders[0]
    assert [(c["job_id"], c["test_acc"], c["from"]) for c in ranking] == [
        ("job-a", 0.90, "store"), ("job-b", 0.70, "store"), ("job-c", 0.60, "outbox"),
    ]  # fmt: skip
    # Equals: the first candidate in the sweep's order.
    tie = [_finished_run(tmp_path / n, f"job-{n}", "resnest_tiny_basic", 0.8) for n in "xy"]
    assert choose_winner(tie[::-1])[0] == tie[1]
    # An unreachable store (nothing listens on this loopback port): the outboxes decide.
    unreachable = "postgresql+psycopg://rb@127.0.0.1:9/none"
    assert choose_winner(folders, store=unreachable)[0] == folders[1]
    # A candidate that never finished is a clear error.
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(CheckpointError, match="no finished training run here"):
        choose_winner([folders[0], tmp_path / "unfinished"])


def test_disagreement_with_eager_above_a_tenth_of_a_percent_is_flagged(tmp_path):
    from harness.report import deployment
    from records.store import Store

    store = Store(f"sqlite:///{tmp_path / 'results.db'}")
    store.add_sweep("flags", {})
    job_row = {"id": "infer-1", "stage": "infer", "model": "resnest50_basic", "gpus": 1,
               "dataset": "fashion-mnist", "gpu_type": "cpu", "seed": 0, "repeat": 0,
               "spec": {}, "depends_on": [], "job_dir": str(tmp_path)}  # fmt: skip
    store.add_jobs("flags", [job_row])

    def measured(runtime: str, agreement: float) -> dict:
        return {"kind": "inference", "job_id": "infer-1", "attempt": 0, "runtime": runtime,
                "batch_size": 1, "available": True, "test_accuracy": 0.9, "bytes": 1000,
                "top1_agreement_with_eager": agreement, "latency_p50_ms": 1.0,
                "latency_p99_ms": 2.0, "images_per_sec": 1000.0}  # fmt: skip

    store.write_records(
        [
            measured("eager", 1.0),
            measured("onnxruntime", 0.9991),
            measured("onnxruntime-int8", 0.9989),
        ]
    )
    rows = {r["runtime"]: r for r in deployment(store, "flags")}
    assert (rows["eager"]["flag"], rows["onnxruntime"]["flag"]) == ("", "")
    assert rows["onnxruntime-int8"]["flag"] == "!"
    assert rows["onnxruntime-int8"]["agreement %"] == 99.89
