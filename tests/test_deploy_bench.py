"""``bench/deploy_latency.py`` as a user runs it: interleaved rounds, intervals, the "same"
verdict, the recorded conditions, the JSON result, and a busy round flagged (a CPU hog that
this test runs beside exactly one round) with ``--strict`` turning the flag into exit 1.
The networks are the tiny ones, trained a few steps on the real Fashion-MNIST files."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.data import FASHION_MNIST_SYSTEM_DIR

from .jobtools import job_env

BENCH = Path(__file__).parents[1] / "bench" / "deploy_latency.py"
HOG = "import time\nend = time.time() + 120\nwhile time.time() < end: pass\n"
HOGS = (os.cpu_count() or 1) + 1


def bench_module():
    spec = importlib.util.spec_from_file_location("deploy_latency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("other", "verdict"),
    [
        ([9.6, 10.4, 10.0, 9.8, 10.3], "same"),  # the rounds' ratios straddle 1
        ([5.0, 5.2, 4.9, 5.1, 5.0], "faster"),
        ([20.0, 19.0, 21.0, 20.5, 19.5], "slower"),
    ],
)
def test_a_speedup_whose_interval_holds_one_is_the_same(other, verdict):
    rounds = {"eager": [10.0, 10.1, 9.9, 10.0, 10.2], "onnxruntime": other}
    row = bench_module().compare(rounds, "onnxruntime", "eager")
    assert row["vs_eager_verdict"] == verdict
    assert row["vs_eager_ci95_low"] <= row["vs_eager"] <= row["vs_eager_ci95_high"]
    assert bench_module().compare(rounds, "eager", "eager") == {}


def test_each_variant_trains_on_its_own_schedule_and_an_option_given_sets_both():
    bench = bench_module()
    schedules = bench.SCHEDULES
    assert schedules["bottleneck"] != schedules["basic"]
    unset = argparse.Namespace(lr=None, warmup_steps=None, nesterov=None, last_gamma=None)
    assert bench.schedule_of("resnest50_bottleneck", unset) == schedules["bottleneck"]
    assert bench.schedule_of("resnest50_basic", unset) == schedules["basic"]
    given = argparse.Namespace(lr=0.1, warmup_steps=None, nesterov=False, last_gamma=None)
    for kind, model in (("bottleneck", "resnest50_bottleneck"), ("basic", "resnest50_basic")):
        expected = {**schedules[kind], "lr": 0.1, "nesterov": False}
        assert bench.schedule_of(model, given) == expected


@pytest.mark.skipif(not Path(FASHION_MNIST_SYSTEM_DIR).is_dir(), reason="dataset-fashion-mnist")
def test_a_round_with_a_hog_beside_it_is_flagged_and_strict_fails(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(BENCH), "--models", "resnest_tiny_bottleneck",
           "resnest_tiny_basic", "--train-steps", "5", "--rounds", "5", "--iters", "100",
           "--runtimes", "eager", "onnxruntime", "--threads", "1", "--eval-threads", "1",
           "--out", str(out), "--strict"]  # fmt: skip
    scratch = tmp_path / "tmp"  # the bench's own temporary folder, which it must remove
    scratch.mkdir()
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=tmp_path, env={**job_env(), "TMPDIR": str(scratch)})  # fmt: skip
    hogs: list[subprocess.Popen] = []
    lines = []
    try:
        for line in bench.stdout:
            lines.append(line)
            # The hogs start a round early, so that they run all through round 2 however
            # slowly a loaded machine starts them; one more hog than cores leaves the bench
            # well under its share.
            if line.startswith("resnest_tiny_basic: round 1 of 5"):
                hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(HOGS)]
            elif line.startswith("resnest_tiny_basic: round 3 of 5"):
                for hog in hogs:
                    hog.kill()
        bench.wait(timeout=600)
    finally:
        for hog in hogs:
            hog.kill()
        if bench.poll() is None:
            bench.kill()
    text = "".join(lines)
    assert bench.returncode == 1, text + bench.stderr.read()
    # its trained networks and exports went with it (torch's own caches may stay)
    assert list(scratch.glob("deploy-bench-*")) == []
    result = json.loads(out.read_text())
    schedules = bench_module().SCHEDULES  # each variant trained on its own
    assert result["training"]["resnest_tiny_bottleneck"].items() >= schedules["bottleneck"].items()
    assert result["training"]["resnest_tiny_basic"].items() >= schedules["basic"].items()
    rounds = {(r["model"], r["round"]): r for r in result["rounds"]}
    assert len(rounds) == 10 and rounds["resnest_tiny_basic", 2]["busy"]
    assert rounds["resnest_tiny_basic", 2]["others_cores"] > 1.0  # more than a core of hogs
    assert "resnest_tiny_basic round 2: busy" in " ".join(result["flags"])
    assert "FLAG: resnest_tiny_basic round 2: busy" in text
    # Every runtime once a round, in a rotating order.
    assert [r["order"] for r in result["rounds"][:2]] == [
        ["eager", "onnxruntime"], ["onnxruntime", "eager"],
    ]  # fmt: skip
    conditions = result["conditions"]
    assert conditions["threads"] == 1 and conditions["cores"] >= 1 and conditions["cpu_model"]
    assert isinstance(conditions["cpu_flags"], list) and len(conditions["load_after"]) == 3
    rows = {(r["model"], r["runtime"]): r for r in result["rows"]}
    assert len(rows) == 4
    for row in rows.values():
        assert len(row["rounds_ms"]) == 5
        assert row["latency_ci95_low_ms"] <= row["latency_p50_ms"] <= row["latency_ci95_high_ms"]
        for key in ("accuracy_pct", "agreement_pct", "max_logit_diff", "size_mb"):
            assert row[key] is not None
    ort = rows["resnest_tiny_basic", "onnxruntime"]
    assert ort["vs_eager_verdict"] in ("faster", "slower", "same")
    assert (
        ort["agreement_pct"] == 100.0 and rows["resnest_tiny_basic", "eager"]["max_logit_diff"] == 0
    )
    assert "vs_onnxruntime" in rows["resnest_tiny_basic", "eager"]
