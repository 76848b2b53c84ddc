"""The regression gate: `table --check` against cluster.yaml's references, and `table
--compare OTHER --fail-on-regression`, with JUnit XML (simulated stores: no training)."""

import random
import xml.etree.ElementTree as ET

import pytest
import yaml

from records.store import Store

from .jobtools import run
from .test_compare import add_runs

MODEL = "resnest_tiny_basic"


def cluster_yaml(tmp_path, url: str, references: dict, name: str = "after", **sweep) -> str:
    """A cluster.yaml of the sweep ``name`` in the store ``url``, with ``references``."""
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "store": url,
        "gpu_types": {"v100": {"local": "cpu"}, "a100": {"local": "cpu"}},
        "sweep": {"models": [MODEL], "datasets": ["synthetic"], "gpu_types": ["v100"], **sweep},
        "references": references,
    }))  # fmt: skip
    return str(path)


def slower_store(tmp_path, epoch_times: list[float]) -> str:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    add_runs(Store(url), "after", [("v100", t) for t in epoch_times])
    return url


def ref(figure: str, value: float, tolerance: float) -> dict:
    return {"v100": {MODEL: {figure: {"value": value, "tolerance_pct": tolerance}}}}


def test_a_ten_percent_slower_epoch_time_fails_the_check_and_names_the_row(tmp_path):
    """Five runs 10% slower per epoch than the reference (2% CV), 5% tolerance: exit 1, one
    line naming the row, the figure and the change; the rate (images/s, higher is better)
    regresses too; the JUnit file has a failed case per figure."""
    rng = random.Random(3)
    url = slower_store(tmp_path, [rng.gauss(11.0, 0.22) for _ in range(5)])
    refs = {"v100": {MODEL: {"epoch_time_s": {"value": 10.0, "tolerance_pct": 5},
                             "images_per_s": {"value": 100.0, "tolerance_pct": 5}}}}  # fmt: skip
    config = cluster_yaml(tmp_path, url, refs)
    junit = tmp_path / "gate.xml"
    code, out, err = run("table", "-c", config, "--check", "--junit", str(junit))
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    epoch = next(line for line in lines if "epoch_time_s" in line)
    assert epoch.startswith(f"regressed: v100 {MODEL} epoch_time_s 1"), epoch
    change = float(epoch.split("(")[1].split("%")[0])
    assert 7 < change < 13, epoch  # about +10%, as the runs were drawn
    assert "95% interval" in epoch and "over 5 runs" in epoch and "10 ± 5%" in epoch
    assert any(line.startswith(f"regressed: v100 {MODEL} images_per_s") for line in lines)
    assert "0 of 2 figures passed" in out
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuites" and suite.get("tests") == "2" and suite.get("failures") == "2"
    cases = suite.findall("./testsuite/testcase")
    assert {c.get("name") for c in cases} == {"epoch_time_s", "images_per_s"}
    assert all(c.find("failure") is not None for c in cases)
    assert {c.get("classname") for c in cases} == {f"v100.{MODEL}"}


@pytest.mark.parametrize(
    "times, reference, tolerance",
    [
        ([10.9, 11.0, 11.1, 11.0, 10.95], 10.7, 5),  # 3% slower, inside a 5% tolerance
        ([9.0, 10.0, 11.0, 12.0, 13.5], 10.0, 5),  # the median 10% slower, but as noisy
    ],
    ids=["inside-tolerance", "not-significant"],
)
def test_a_figure_inside_its_tolerance_or_not_significantly_worse_passes(
    tmp_path, times, reference, tolerance
):
    url = slower_store(tmp_path, times)
    config = cluster_yaml(tmp_path, url, ref("epoch_time_s", reference, tolerance))
    code, out, err = run("table", "-c", config, "--check")
    assert code == 0, (out, err)
    assert err == ""
    assert out.splitlines()[0].startswith(f"passed: v100 {MODEL} epoch_time_s 11 (")
    assert "1 of 1 figures passed" in out


def test_one_run_is_held_to_its_value_and_says_it_has_no_interval(tmp_path):
    url = slower_store(tmp_path, [11.0])
    config = cluster_yaml(tmp_path, url, ref("epoch_time_s", 10.0, 5))
    code, _, err = run("table", "-c", config, "--check")
    assert code == 1 and "(+10.0%; 1 run, no interval)" in err, err
    config = cluster_yaml(tmp_path, url, ref("epoch_time_s", 10.0, 15))
    code, out, _ = run("table", "-c", config, "--check")
    assert code == 0 and "1 run, no interval" in out


def test_a_reference_with_nothing_measured_fails_and_others_are_skipped(tmp_path):
    """Energy was not measured (no telemetry): that reference fails, so that a gate does not
    pass on nothing; a reference for a GPU type the sweep did not run is not checked."""
    url = slower_store(tmp_path, [10.0, 10.1, 9.9])
    refs = {"v100": {MODEL: {"energy_per_image_mj": {"value": 1.0, "tolerance_pct": 5},
                             "epoch_time_s": {"value": 10.0, "tolerance_pct": 5}}},
            "a100": {MODEL: {"epoch_time_s": {"value": 5.0, "tolerance_pct": 5}}}}  # fmt: skip
    config = cluster_yaml(tmp_path, url, refs)
    code, out, err = run("table", "-c", config, "--check")
    assert code == 1
    assert err.strip() == (
        f"not measured: v100 {MODEL} energy_per_image_mj was not measured: nothing to hold "
        "against the reference 1 ± 5%"
    )
    assert "1 of 2 figures passed" in out and "a100" not in out


def test_the_references_as_submitted_serve_with_store_alone(tmp_path):
    """--store without a cluster.yaml: the references kept with the sweep."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    add_runs(store, "after", [("v100", 11.0 + i / 100) for i in range(5)])
    store.add_sweep("after", {"references": ref("epoch_time_s", 10.0, 2)})
    code, _, err = run("table", "after", "--store", url, "--check")
    assert code == 1 and f"regressed: v100 {MODEL} epoch_time_s 11.02 (+10.2%" in err, err
    store.add_sweep("after", {})
    code, _, err = run("table", "after", "--store", url, "--check")
    assert code == 2 and err.strip() == (
        "resnest-bench: error: --check: no references in sweep 'after' as submitted "
        "(cluster.yaml's references:)"
    )


@pytest.mark.parametrize(
    "references, message",
    [
        (
            {"p100": {MODEL: {"epoch_time_s": {"value": 1}}}},
            "references: 'p100' is not a GPU type of gpu_types (a100, v100)",
        ),
        (
            {"v100": {"resnest_tiny_bsic": {"epoch_time_s": {"value": 1}}}},
            "references.v100: unknown model 'resnest_tiny_bsic'",
        ),
        (
            {"v100": {MODEL: {"epoch_time": {"value": 1}}}},
            f"references.v100.{MODEL}: unknown figure 'epoch_time'; expected one of "
            "epoch_time_s, images_per_s, final_acc_pct, energy_per_image_mj, time_to_90pct_s",
        ),
        (
            {"v100": {MODEL: {"time_to_95pct_s": {"value": 1}}}},
            f"references.v100.{MODEL}: unknown figure 'time_to_95pct_s'",
        ),
        (
            {"v100": {MODEL: {"epoch_time_s": {"value": 1, "tolerance_pct": -2}}}},
            f"references.v100.{MODEL}.epoch_time_s.tolerance_pct: Input should be greater than "
            "or equal to 0, got -2",
        ),
        (
            {"v100": {MODEL: {"epoch_time_s": {"value": 0}}}},
            f"references.v100.{MODEL}.epoch_time_s.value: Input should be greater than 0, got 0",
        ),
        (
            {"v100": {MODEL: {"epoch_time_s": {"value": float("nan")}}}},
            f"references.v100.{MODEL}.epoch_time_s.value: Input should be a finite number",
        ),
        (
            {"v100": {MODEL: {"epoch_time_s": {"valeu": 1}}}},
            f"references.v100.{MODEL}.epoch_time_s.value: required, missing",
        ),
    ],
    ids=["gpu-type", "model", "figure", "target", "negative-tolerance", "zero", "nan", "typo"],
)
def test_bad_references_are_one_line_at_plan_time(tmp_path, references, message):
    config = cluster_yaml(tmp_path, f"sqlite:///{tmp_path / 'r.db'}", references,
                          target_accuracy=0.9)  # fmt: skip
    code, out, err = run("submit", config, "--dry-run")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"resnest-bench: error: {config}: {message}"), line


def test_a_sweep_slower_than_the_last_fails_on_regression(tmp_path):
    """--compare OTHER --fail-on-regression: 10% slower per epoch (2% CV, five runs a side)
    exits 1 and names the row; a sweep from the same distribution exits 0."""
    rng = random.Random(11)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    add_runs(store, "before", [("v100", rng.gauss(10.0, 0.2)) for _ in range(5)], 1000.0)
    add_runs(store, "after", [("v100", rng.gauss(11.0, 0.22)) for _ in range(5)], 1000.0)
    add_runs(store, "again", [("v100", rng.gauss(10.0, 0.2)) for _ in range(5)], 1000.0)
    junit = tmp_path / "compare.xml"
    code, out, err = run("table", "after", "--compare", "before", "--store", url,
                         "--fail-on-regression", "--junit", str(junit))  # fmt: skip
    assert code == 1, (out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith(f"regressed: v100 {MODEL} s/epoch +") and line.endswith(": slower")
    assert "of 2 figures passed" in out  # s/epoch and img/s (the same 1,000 images/s)
    failed = ET.parse(junit).getroot().findall(".//failure")
    assert len(failed) == 1 and "s/epoch" in failed[0].get("message")
    code, out, err = run("table", "again", "--compare", "before", "--store", url,
                         "--fail-on-regression")  # fmt: skip
    assert code == 0 and err == "", err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--junit", "x.xml"],
            "--junit FILE writes the gate's outcome: add --check or --fail-on-regression",
        ),
        (
            ["--fail-on-regression"],
            "--fail-on-regression needs --compare OTHER_SWEEP (against references: --check)",
        ),
        (
            ["--check", "--deploy"],
            "--check holds this sweep to its references: not with --compare or --deploy",
        ),
    ],
)
def test_gate_flags_that_do_not_go_together_are_one_line(tmp_path, args, message):
    url = slower_store(tmp_path, [10.0])
    code, _, err = run("table", "after", "--store", url, *args)
    assert code == 2 and err.strip() == f"resnest-bench: error: {message}"


def test_an_unwritable_junit_file_is_one_line_and_nothing_is_left(tmp_path):
    url = slower_store(tmp_path, [10.0, 10.0])
    config = cluster_yaml(tmp_path, url, ref("epoch_time_s", 10.0, 5))
    code, _, err = run("table", "-c", config, "--check", "--junit",
                       str(tmp_path / "no" / "gate.xml"))  # fmt: skip
    assert code == 2 and err.strip().endswith(f"--junit {tmp_path}/no/gate.xml: no folder "
                                              f"'{tmp_path}/no'")  # fmt: skip


def test_a_planned_gpu_type_without_runs_fails_the_check(tmp_path):
    """Every a100 job failed: its reference is not measured (and fails), not skipped."""
    url = slower_store(tmp_path, [10.0, 10.1, 9.9])
    store = Store(url)
    store.add_jobs("after", [{"id": "after-a100-0", "stage": "train", "model": MODEL,
                              "dataset": "cifar10", "gpu_type": "a100", "gpus": 1, "seed": 0,
                              "repeat": 0, "spec": {}, "depends_on": [],
                              "job_dir": "/nowhere/a"}])  # fmt: skip
    store.set_state("after-a100-0", "failed")
    refs = {"v100": {MODEL: {"epoch_time_s": {"value": 10.0, "tolerance_pct": 5}}},
            "a100": {MODEL: {"epoch_time_s": {"value": 5.0, "tolerance_pct": 5}}}}  # fmt: skip
    config = cluster_yaml(tmp_path, url, refs)
    code, out, err = run("table", "-c", config, "--check")
    assert code == 1, (out, err)
    assert err.strip() == (
        f"not measured: a100 {MODEL} epoch_time_s was not measured: nothing to hold against "
        "the reference 5 ± 5%"
    )
    assert "1 of 2 figures passed" in out


def test_a_target_no_longer_reached_or_a_gpu_type_gone_fails_on_regression(tmp_path):
    """Against the last sweep: its runs reached 40% test accuracy and this sweep's did not
    (the same speed); a GPU type the last sweep measured is missing here; a comparison with
    nothing in common fails too."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    add_runs(store, "before", [(gpu, 10.0 + i / 50) for i in range(5) for gpu in ("v100", "a100")],
             1000.0, test_acc=0.5)  # fmt: skip
    add_runs(store, "after", [("v100", 10.0 + i / 50) for i in range(5)], 1000.0, test_acc=0.3)
    for name in ("before", "after"):
        store.add_sweep(name, {"sweep": {"target_accuracy": 0.4}})
    code, out, err = run("table", "after", "--compare", "before", "--store", url,
                         "--fail-on-regression")  # fmt: skip
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert f"not measured: a100 {MODEL} was measured in before, not in this sweep" in lines
    assert any(line.startswith(f"regressed: v100 {MODEL} time_to_40pct_s: not reached (headline "
                               "of 5 runs)") for line in lines), lines  # fmt: skip
    add_runs(store, "elsewhere", [("h100", 10.0)], 1000.0)
    code, out, err = run("table", "elsewhere", "--compare", "after", "--store", url,
                         "--fail-on-regression")  # fmt: skip
    assert code == 1 and "0 of 1 figures passed" in out, (out, err)
