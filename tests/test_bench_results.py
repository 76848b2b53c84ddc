"""The benches' stored results and what the README makes of them: ``bench/refresh_readme.sh
--quick`` runs the CPU benches small, writes their results as JSON and renders a copy of the
README from them, leaving the repository's own alone; each renderer says what its figures
say (a missed target is said to be missed, a comparison whose interval holds 1 is "same",
the fast recipe's place against the study's follows the accuracies); a bench refuses an
``--out`` it could not write before it measures anything."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from bench.readme_blocks import RENDERERS  # noqa: E402

CONDITIONS = {"when": "2026-12-07T12:00:00Z", "commit": "abc1234", "cpu_model": "Some CPU",
              "cores": 2, "load_before": [0.5, 0.5, 0.5], "load_after": [0.7, 0.6, 0.5],
              "command": "python bench/x.py", "duration_s": 95.0}  # fmt: skip


def fig(median: float, low: float, high: float, target: float = 2.0, what: str = "x") -> dict:
    return {"median": median, "low": low, "high": high, "target": target, "what": what,
            "detail": ""}  # fmt: skip


def scale_result(first_status_s: float) -> dict:
    kind = {"table": fig(0.7, 0.6, 0.8, what="table 10,000 x 250 epochs"),
            "status_ended": fig(0.6, 0.5, 0.7), "report": fig(2.4, 2.3, 2.5, 10.0),
            "status_first": {**fig(first_status_s, first_status_s - 0.1, first_status_s + 0.1,
                                   what="status 10,000 jobs, first time"), "records": 49_231},
            "status_again": {**fig(1.5, 1.4, 1.6), "running": 770},
            "rebuild": {"seconds": 15.8, "jobs": 10_000},
            "bytes": {"epoch_row": 96.0, "sample": 207.0, "summary": 5100.0}}  # fmt: skip
    return {"bench": "harness_scale",
            "conditions": {**CONDITIONS, "repeats": 3, "epochs": 250, "table_jobs": 10_000,
                           "report_jobs": 1_000, "status_jobs": 10_000},
            "figures": {"plan": {"plan": {**fig(0.49, 0.48, 0.5, 1.0), "jobs": 100_020}},
                        "SQLite": kind}}  # fmt: skip


def test_the_scale_block_says_which_target_is_missed_and_when_all_are_met():
    missed = RENDERERS["harness_scale"](scale_result(3.318))
    assert "| < 2 s | **3.318 s (3.218-3.418), missed** |" in missed
    assert "Missed: status 10,000 jobs, first time on SQLite." in missed
    assert "Measured 2026-12-07 at commit abc1234 on Some CPU, 2 cores" in missed
    assert "(2 minutes; load average 0.50 before, 0.70 after)" in missed
    assert (
        "| planning 100,020 jobs (validate cluster.yaml, expand, build every spec) | < 1 s "
        "| 0.490 s (0.480-0.500) |" in missed
    )
    # 365 days x 1,000 jobs x 250 epochs x 96 bytes
    assert "the epoch rows take 8.8 GB on SQLite" in missed
    met = RENDERERS["harness_scale"](scale_result(1.9))
    assert "missed" not in met.lower() and "Every target is met." in met


def tta_run(model: str, recipe: str, accs: list[float], to70: list[float]) -> dict:
    runs = [{"final acc %": a, "s to 60%": t / 2, "s to 70%": t, "s/epoch": 10.0, "img/s": 600,
             "train s": t, "probe s": "-" if recipe == "study" else 1.5, "images": 23_040,
             "batch": 128} for a, t in zip(accs, to70, strict=True)]  # fmt: skip
    return {"model": model, "recipe": recipe, "runs": runs}


def test_the_time_to_accuracy_block_follows_the_accuracies_and_quotes_the_rounds():
    result = {"conditions": {**CONDITIONS, "targets": [0.6, 0.7], "repeats": 3},
              "figures": {"runs": [
                  tta_run("tiny_a", "study", [73.49] * 3, [50.0, 60.0, 55.0]),
                  tta_run("tiny_a", "fast", [74.14] * 3, [25.0, 20.0, 30.0]),
                  tta_run("tiny_b", "study", [80.56] * 3, [60.0, 61.0, 62.0]),
                  tta_run("tiny_b", "fast", [79.0, 81.0, 80.0], [50.0, 52.0, 51.0]),
              ]}}  # fmt: skip
    text = RENDERERS["time_to_accuracy"](result)
    assert "| tiny_a | fast | 128 | 23,040 | 74.14 | 12.5 (10.0-15.0) | 25.0 (20.0-30.0) |" in text
    assert (
        "tiny_a: the fast recipe, on 23,040 images against the study's 23,040, ends above "
        "the study's final accuracy (74.14% against 73.49%)" in text
    )
    # round by round: 50/25, 60/20, 55/30
    assert "the study takes 2.00 (1.83-3.00) times the fast recipe's training time" in text
    # the fast runs straddle the study's 80.56: neither above nor below
    assert "tiny_b: the fast recipe" in text and "ends level with" in text
    assert "| tiny_b | fast | 128 | 23,040 | 80.00 (79.00-81.00) |" in text


def test_a_memory_format_comparison_whose_interval_holds_one_is_the_same():
    verdict = {"model": "tiny", "precision": "fp32", "nchw_images_per_sec": 600.0,
               "nhwc_images_per_sec": 606.0, "nhwc_over_nchw": 1.01, "rounds": 5}  # fmt: skip
    result = {"conditions": {**CONDITIONS, "device": "CPU (2 threads)", "rounds": 5,
                             "blocks": 5, "steps": 2},
              "figures": {"rows": [{"configuration": "fast NCHW fp32", "batch_size": 128}],
                          "verdicts": [{**verdict, "winner": "same", "ci95_low": 0.97,
                                        "ci95_high": 1.05},
                                       {**verdict, "model": "other", "winner": "NHWC",
                                        "nhwc_over_nchw": 1.2, "ci95_low": 1.1,
                                        "ci95_high": 1.3}]}}  # fmt: skip
    text = RENDERERS["train_throughput"](result)
    assert (
        "- `tiny`, fp32: neither wins, the interval holds 1: NCHW 600 img/s, NHWC 606 "
        "img/s, NHWC at 1.01x [95%: 0.97-1.05]." in text
    )
    assert "- `other`, fp32: NHWC wins:" in text and "NHWC at 1.20x [95%: 1.10-1.30]" in text


def test_the_submit_block_marks_a_missed_target():
    row = {"jobs": 6000, "sbatch": 12, "queued": 6000,
           "submit_s": fig(3.0, 2.9, 3.1), "status_s": fig(1.4, 1.3, 1.5)}  # fmt: skip
    result = {"conditions": {**CONDITIONS, "repeats": 3, "limit": 1000, "target_s": 5.0},
              "figures": {"lab": {**row, "queued_s": fig(5.5, 5.2, 6.0)},
                          "limited": {**row, "queued_s": fig(2.0, 1.9, 2.2)}}}  # fmt: skip
    text = RENDERERS["slurm_submit"](result)
    assert "- Target < 5 s for the lab sweep: **missed** (5.50 s (5.20-6.00))." in text
    assert "- Target < 5 s for the lab sweep under the limit: met (2.00 s (1.90-2.20))." in text


def test_a_bench_refuses_an_out_it_could_not_write_before_it_measures(tmp_path):
    for bench in ("harness_scale", "quickstart_time", "profile_overhead", "time_to_accuracy"):
        done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{bench}.py"), "--out",
                               str(tmp_path / "no-such-folder" / "r.json")],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2, bench
        assert f"no folder {tmp_path / 'no-such-folder'} for the result" in done.stderr, bench
        assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_quick_refresh_renders_a_copy_and_leaves_the_repository_alone(tmp_path):
    """The CPU benches at their quick sizes, for real: each writes its result, a copy of the
    README is rendered from them, and the checkout's README and results stay as they were."""
    stored = {p.name: p.read_bytes() for p in (ROOT / "bench" / "results").glob("*.json")}
    readme = (ROOT / "README.md").read_bytes()
    names = "quickstart_time profile_overhead train_throughput harness_scale"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("RESNEST_BENCH_TEST_PG", None)  # SQLite alone: the quick look's own store
    done = subprocess.run(["bash", str(ROOT / "bench" / "refresh_readme.sh"), "--quick",
                           "--only", names, "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=900, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    copy = (tmp_path / "README.md").read_text()
    for name in names.split():
        result = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        assert result["bench"] == name and f"bench/{name}.py" in result["conditions"]["command"]
        block = copy.split(f"<!-- render: {name} -->\n")[1].split("<!-- /render -->")[0]
        assert block == RENDERERS[name](result)  # the copy holds this run's figures
        assert result["conditions"]["command"] in block
    assert "PostgreSQL" not in json.loads((tmp_path / "results" / "harness_scale.json")
                                          .read_text())["figures"]  # fmt: skip
    assert f"quick look: {tmp_path}/README.md" in done.stdout
    assert (ROOT / "README.md").read_bytes() == readme
    assert {p.name: p.read_bytes() for p in (ROOT / "bench" / "results").glob("*.json")} == stored


def int8_row(runtime: str, acc: float, ratio: tuple, agreement: float | None = None) -> dict:
    row = {"model": "resnest50_basic", "runtime": runtime, "accuracy_pct": acc,
           "agreement_pct": 100.0, "latency_p50_ms": 5.0 / ratio[0],
           "latency_ci95_low_ms": 4.9 / ratio[0], "latency_ci95_high_ms": 5.1 / ratio[0],
           "graph_ops": {"QLinearConv": 70, "Gemm": 1, "QuantizeLinear": 10,
                         "DequantizeLinear": 12, "Transpose": 30, "ReduceSum": 16}}  # fmt: skip
    if runtime != "onnxruntime":
        row.update(vs_onnxruntime=ratio[0], vs_onnxruntime_ci95_low=ratio[1],
                   vs_onnxruntime_ci95_high=ratio[2], vs_onnxruntime_verdict="faster",
                   agreement_with_onnxruntime_pct=agreement)  # fmt: skip
    return row


def test_the_int8_block_judges_each_scheme_by_the_whole_target_and_names_the_weights():
    result = {"conditions": {**CONDITIONS, "threads": 2},
              "training": {"resnest50_basic": {"steps": 938, "batch": 64, "lr": 0.02,
                                               "seconds": 600.0}},
              "rows": [int8_row("onnxruntime", 86.00, (1.0, 1.0, 1.0)),
                       int8_row("onnxruntime-int8", 85.80, (2.3, 2.1, 2.5), 99.2),
                       int8_row("onnxruntime-int8-all", 85.90, (2.3, 1.9, 2.6), 99.5),
                       int8_row("onnxruntime-int8-s8", 85.00, (0.8, 0.7, 0.9), 97.0),
                       int8_row("eager", 86.00, (1.0, 1.0, 1.0))]}  # fmt: skip
    text = RENDERERS["deploy_int8"](result)
    assert (
        "- resnest50_basic: 938 training steps here (batch 64, lr 0.02, cosine; 10.0 "
        "minutes), 86.00% in fp32 ONNX Runtime (85% reached)." in text
    )
    result["training"]["resnest50_basic"].update(epochs=2, lr=0.05, warmup_steps=100, nesterov=True)
    assert (
        "- resnest50_basic: 2 epochs of 938 training steps here (batch 64, lr 0.05 after 100 "
        "warm-up steps, Nesterov momentum, cosine; 10.0 minutes), 86.00% in fp32 ONNX Runtime "
        "(85% reached)." in RENDERERS["deploy_int8"](result)
    )
    result["training"]["resnest50_basic"].update(epochs=1, last_gamma=True)
    assert (
        "- resnest50_basic: 938 training steps here (batch 64, lr 0.05 after 100 warm-up steps, "
        "Nesterov momentum, each block's last BN scale from zero, cosine; 10.0 minutes)"
        in RENDERERS["deploy_int8"](result)
    )
    lines = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| res")}
    assert set(lines) == {"onnxruntime-int8", "onnxruntime-int8-all", "onnxruntime-int8-s8"}
    assert lines["onnxruntime-int8"].endswith("| 0.20 | 99.20 | 70 / 0 | 22 | 30 | 16 | met |")
    # a median of 2.3x whose interval reaches below 2x does not meet it
    assert lines["onnxruntime-int8-all"].endswith("| missed: speed |")
    assert lines["onnxruntime-int8-s8"].endswith("| missed: speed, accuracy, agreement |")
    assert "| 2.17 [2.13-2.22] | 2.30x [2.10-2.50] | 85.80 (86.00) |" in lines["onnxruntime-int8"]
    # the deployment table keeps to its runtimes: the other schemes are this block's
    result["rows"] = [{**r, "max_logit_diff": 0.0, "size_mb": 1.0} for r in result["rows"]]
    result.update(flags=[], rounds=[{"round": 5}])
    result["conditions"].update(cpu_flags=["avx2"], onnxruntime="1.32.0", torch="2.14.1")
    table = RENDERERS["deploy_latency"](result)
    assert "| onnxruntime-int8 |" in table and "onnxruntime-int8-all" not in table
