"""Time to a target accuracy as the tables show it: per target of the sweep, the training time
the runs took to reach it (MLPerf's rule from five runs on, the median below), how many did,
and the rule used; a target no run reached is shown as such, not as a blank."""

import contextlib
import io
import json
import statistics
import types

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from harness import config as cluster_config
from harness.cli import main
from harness.figures import headline
from harness.planner import plan
from records.schema import TELEMETRY
from records.store import Store
from records.summaries import summarise, time_to


def Epoch(epoch_time, test_acc):
    return types.SimpleNamespace(epoch_time=epoch_time, test_acc=test_acc, warmup=False,
                                 images_per_sec=1.0, epoch=1, attempt=0, eval_time=None,
                                 recorded_at=None, throttled_pct=None,
                                 **dict.fromkeys(TELEMETRY))  # fmt: skip


def times_to(job_epochs: list, targets: list[float]) -> dict[float, float | None]:
    """The time to each target, from the job's summary as the store keeps it."""
    steps = summarise(job_epochs)["accuracy_steps"]
    return {target: time_to(steps, target) for target in targets}


def test_time_to_a_target_is_the_training_time_to_the_first_epoch_at_it():
    epochs = [Epoch(10.0, 0.5), Epoch(12.0, 0.91), Epoch(11.0, 0.89), Epoch(9.0, 0.95)]
    assert times_to(epochs, [0.5, 0.9, 0.93, 0.99]) == {
        0.5: 10.0, 0.9: 22.0, 0.93: 42.0, 0.99: None
    }  # fmt: skip
    assert times_to([Epoch(5.0, None), Epoch(5.0, 0.9)], [0.9]) == {0.9: 10.0}
    assert times_to([], [0.9]) == {0.9: None}


def test_the_headline_rule():
    assert headline([30.0, 10.0, 20.0]) == (20.0, "median")
    assert headline([30.0, None, 10.0]) == (20.0, "median")  # of those that got there
    assert headline([None, None]) == (None, "median")
    # Five runs: drop the fastest (10) and the slowest (100), the mean of 20, 30, 40.
    assert headline([40.0, 10.0, 100.0, 20.0, 30.0]) == (30.0, "MLPerf (mean of 3 of 5)")
    # A run that never got there is the slowest, and is dropped; a second one leaves none.
    assert headline([40.0, 10.0, None, 20.0, 30.0]) == (30.0, "MLPerf (mean of 3 of 5)")
    assert headline([40.0, None, None, 20.0, 30.0]) == (None, "MLPerf (mean of 3 of 5)")


@given(st.lists(st.floats(0.1, 1e5), min_size=5, max_size=12))
def test_from_five_runs_the_headline_is_the_mean_without_the_extremes(times):
    figure, rule = headline(times)
    assert rule == f"MLPerf (mean of {len(times) - 2} of {len(times)})"
    assert figure == pytest.approx(statistics.fmean(sorted(times)[1:-1]), rel=1e-3)
    assert min(times) - 1e-4 <= figure <= max(times) + 1e-4  # rounded to 4 places


def sweep_config(targets) -> dict:
    return {
        "name": "ttt",
        "results_dir": "results",
        "gpu_types": {"v100": {"local": "cpu"}},
        "sweep": {
            "models": ["resnest_tiny_basic"], "datasets": ["synthetic"],
            "gpu_types": ["v100"], "target_accuracy": targets,
        },
    }  # fmt: skip


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def fill(url: str, targets, runs: list[list[tuple]], price: float | None = None) -> None:
    """A sweep whose runs (one per list of (epoch time, test accuracy[, energy J])) trained
    one model on one GPU type, as jobs leave it in the store."""
    store = Store(url)
    config = sweep_config(targets)
    if price is not None:
        config["gpu_types"]["v100"]["price_per_gpu_hour"] = price
    store.add_sweep("ttt", config)
    rows = [
        {"id": f"run{i}", "stage": "train", "model": "resnest_tiny_basic",
         "dataset": "synthetic", "gpu_type": "v100", "gpus": 1, "seed": i, "repeat": 0,
         "spec": {}, "depends_on": [], "job_dir": f"/nowhere/run{i}"}
        for i in range(len(runs))
    ]  # fmt: skip
    store.add_jobs("ttt", rows)
    records = []
    for i, epochs in enumerate(runs):
        for n, (seconds, acc, *energy) in enumerate(epochs, start=1):
            records.append({"kind": "epoch", "job_id": f"run{i}", "attempt": 0, "epoch": n,
                            "epoch_time": seconds, "images_per_sec": 100.0,
                            "warmup": n == 1, "test_acc": acc,
                            "energy_j": energy[0] if energy else None})  # fmt: skip
        store.set_state(f"run{i}", "succeeded")
    store.write_records(records)


def test_five_seeds_in_the_table_and_the_study_layout(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    # Five seeds; seconds to 80%: 20, 25, 30, 35 and never; none reaches 99%.
    runs = [[(10.0, 0.7), (10.0, 0.85)], [(10.0, 0.7), (15.0, 0.81)], [(10.0, 0.8), (20.0, 0.9)],
            [(20.0, 0.6), (15.0, 0.8)], [(10.0, 0.5), (10.0, 0.6)]]  # fmt: skip
    runs[2][0] = (30.0, 0.8)  # reaches it at the end of its first epoch: 30 s
    fill(url, [0.8, 0.99], runs)
    code, out, err = run("table", "ttt", "--store", url, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["model"] == "resnest_tiny_basic" and row["runs"] == 5
    # MLPerf: drop the fastest (20) and the never (slowest), mean of 25, 30 and 35.
    assert row["time_to_80pct_s"] == 30.0 and row["reached_80pct"] == 4
    assert row["time_to_99pct_s"] is None and row["reached_99pct"] == 0
    assert row["target_rule"] == "MLPerf (mean of 3 of 5)"
    # In the terminal the unreached target reads as such, not as a blank.
    code, out, _ = run("table", "ttt", "--store", url)
    (header,) = [line for line in out.splitlines() if line.startswith("gpu_type")]
    (values,) = [line for line in out.splitlines() if line.startswith("v100")]
    assert "s to 80%" in header and "reached 99%" in header
    assert values.split()[4:7] == ["30", "4/5", "0/5"]
    code, out, _ = run("table", "ttt", "--store", url, "--layout", "study", "--format", "json")
    assert code == 0
    tables = json.loads(out)
    assert "seconds to 80% test accuracy" in json.dumps(tables)
    # The report's comparison table: the same figures, the unreached target as 0/5.
    code, _, err = run("report", "ttt", "--store", url, "--out", str(tmp_path / "report"))
    assert code == 0, err
    page = (tmp_path / "report" / "index.html").read_text()
    header = page[page.index("s to 80%") :]
    row = page[page.index("<td>v100</td>") :]
    assert "reached 99%" in header and "MLPerf (mean of 3 of 5)" in row
    assert "<td>30</td><td>4/5</td><td>0/5</td>" in row.replace("\n", "").replace(" ", "")


def test_fewer_runs_take_the_median_of_those_that_got_there(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    fill(url, 0.8, [[(10.0, 0.9)], [(10.0, 0.5), (30.0, 0.8)], [(10.0, 0.1)]])
    code, out, err = run("table", "ttt", "--store", url, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["time_to_80pct_s"] == 25.0  # median of 10 and 40
    assert row["reached_80pct"] == 2 and row["runs"] == 3 and row["target_rule"] == "median"
    code, out, err = run("table", "ttt", "--store", url, "--format", "md")
    # "-": no upper bound to its interval (a resample of three runs that never got there)
    assert code == 0 and "| 25 | - | 2/3 | median |" in out, out


def test_the_sweep_gives_its_first_target_to_each_training_job(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(sweep_config([0.9, 0.93])))
    config = cluster_config.load(path)
    (job,) = plan(config)
    assert job.spec.target_accuracy == 0.9


@pytest.mark.parametrize(
    "targets, says",
    [(1.5, "less than or equal to 1"), (0, "greater than 0"), ([0.9, 0.9], "different"),
     ([], "different"), ("high", "valid number")],
)  # fmt: skip
def test_a_target_out_of_range_is_one_line(tmp_path, targets, says):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(sweep_config(targets)))
    code, _, err = run("submit", str(path), "--dry-run")
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and "sweep.target_accuracy" in err and says in err, err


def test_a_run_that_failed_before_its_first_epoch_counts_as_the_slowest(tmp_path):
    """MLPerf counts every run that was started: one that failed before reporting an epoch
    did not reach the target, so it is one of the n of "reached k/n" and the slowest run of
    the olympic rule, not a run left out."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    # Four runs reach 80% at 20, 25, 30 and 35 s; a fifth failed before its first epoch.
    runs = [[(20.0, 0.8)], [(10.0, 0.7), (15.0, 0.8)], [(30.0, 0.8)], [(35.0, 0.85)]]
    fill(url, 0.8, runs)
    store = Store(url)
    store.add_jobs("ttt", [{"id": name, "stage": "train", "model": "resnest_tiny_basic",
                            "dataset": "synthetic", "gpu_type": "v100", "gpus": 1, "seed": 9 + i,
                            "repeat": 0, "spec": {}, "depends_on": [],
                            "job_dir": f"/nowhere/{name}"}
                           for i, name in enumerate(("crashed", "refused", "lost"))])  # fmt: skip
    store.write_records([{"kind": "start", "job_id": "crashed", "attempt": 0, "time": 1.0e9,
                          "hosts": ["node1"], "spec": {}}])  # fmt: skip
    code, out, err = run("table", "ttt", "--store", url, "--format", "json")
    (before,) = json.loads(out)
    # Still running, it is not a run that ended: four runs, the median of those.
    assert before["reached_80pct"] == 4 and before["target_runs"] == 4
    assert before["target_rule"] == "median" and before["time_to_80pct_s"] == 27.5
    # Failures that are not the run's: bad input (it never ran), and a host that failed it.
    store.set_state("refused", "failed", reason="bad input: --lr -1: expected a number > 0")
    store.write_records([{"kind": "start", "job_id": "lost", "attempt": 0, "time": 1.0e9,
                          "hosts": ["node2"], "spec": {}}])  # fmt: skip
    store.record_attempts([{"job_id": "lost", "attempt": 0, "host_failure": True}])
    store.set_state("lost", "failed", reason="host failure on node2: connection reset")
    code, out, err = run("table", "ttt", "--store", url, "--format", "json")
    assert json.loads(out)[0]["target_runs"] == 4, out
    store.set_state("crashed", "failed", reason="FAILED exit code 1")
    code, out, err = run("table", "ttt", "--store", url, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["runs"] == 4  # timed runs: the epoch figures are theirs
    assert row["reached_80pct"] == 4 and row["target_runs"] == 5
    # MLPerf: drop the fastest (20) and the failed one (the slowest): mean of 25, 30, 35.
    assert row["target_rule"] == "MLPerf (mean of 3 of 5)" and row["time_to_80pct_s"] == 30.0
    code, out, _ = run("table", "ttt", "--store", url)
    (values,) = [line for line in out.splitlines() if line.startswith("v100")]
    assert "4/5" in values.split(), out


def test_energy_and_cost_to_a_target_are_summed_over_the_epochs_up_to_it(tmp_path):
    """Energy to a target: the sum of a run's epoch energies up to its first epoch at or
    above it (the median over the runs that got there; a run with an epoch that measured no
    energy has none); cost to it: the time to it x GPUs x the GPU type's price per hour."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    runs = [
        [(10.0, 0.7, 1000.0), (10.0, 0.85, 1500.0), (10.0, 0.9, 900.0)],  # 80%: 2,500 J, 20 s
        [(10.0, 0.81, 1200.0), (15.0, 0.82, 2000.0)],  # 80%: 1,200 J at 10 s
        [(20.0, 0.5, 3000.0), (20.0, 0.6, None), (20.0, 0.95, 800.0)],  # 80% at 60 s, no energy
        [(10.0, 0.5, 700.0), (10.0, 0.6, 700.0)],  # never
    ]
    fill(url, [0.8, 0.99], runs, price=3.6)
    code, out, err = run("table", "ttt", "--store", url, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    expected_energy = statistics.median([2500.0, 1200.0]) / 1000  # the third measured none
    assert row["energy_to_80pct_kj"] == round(expected_energy, 3)
    assert row["cost_to_80pct"] == round(statistics.median([20.0, 10.0, 60.0]) / 3600 * 3.6, 4)
    assert row["energy_to_99pct_kj"] is None and row["cost_to_99pct"] is None
    code, out, _ = run("table", "ttt", "--store", url)
    headers = " ".join(line for line in out.splitlines() if line.startswith("gpu_type"))
    assert "kJ to 80%" in headers and "$ to 80%" in headers
    code, out, _ = run("table", "ttt", "--store", url, "--layout", "study", "--format", "json")
    titles = {t["table"] for t in json.loads(out)}
    assert {"energy (kJ) to 80% test accuracy", "cost to 80% test accuracy"} <= titles
