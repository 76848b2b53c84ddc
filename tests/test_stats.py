"""Uncertainty on the figures: a 95% bootstrap interval over the runs of each headline figure
(``harness.stats``), in the tidy formats, the Markdown and HTML tables, the terminal's
``--wide`` table and the report's bar plots; none from one run."""

import json
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.figures import headline
from harness.stats import _target_headlines, half_width_pct, interval

from .test_time_to_target import fill, run


@pytest.mark.parametrize("n, at_least", [(5, 0.88), (20, 0.90)])
def test_the_interval_covers_the_true_median_about_95_percent_of_the_time(n, at_least):
    """Runs drawn from a known distribution (normal, 2% CV): the share of intervals that hold
    its median. A percentile bootstrap of a median is a little short of 95% with few runs;
    the rate is printed (pytest -s), and held to a floor a broken interval cannot meet."""
    rng = np.random.default_rng(7)
    trials = 300
    held = 0
    for _ in range(trials):
        low, high = interval(list(rng.normal(10.0, 0.2, n)))
        held += low <= 10.0 <= high
    rate = held / trials
    print(f"{n} runs: the 95% interval held the median in {rate:.1%} of {trials} trials")
    assert at_least <= rate <= 1.0


@given(st.lists(st.none() | st.sampled_from([1.0, 2.5, 3.0, 7.25, 9.0]), min_size=1, max_size=9))
def test_the_resamples_headline_is_the_tables_rule(values):
    """The bootstrap's vectorised headline of a resample is ``harness.figures.headline`` (the
    MLPerf rule from five runs on, the median below; a run that did not get there is +inf)."""
    row = np.array([[np.inf if v is None else v for v in values]])
    got = _target_headlines(row)[0]
    want = headline(values)[0]
    if want is None:
        assert got == np.inf
    else:
        assert got == pytest.approx(want, abs=1e-4)


def test_no_interval_from_one_run_and_an_unreached_target_leaves_it_open():
    assert interval([12.0]) == (None, None)
    assert interval([12.0, None], "median") == (None, None)  # one measured run
    low, high = interval([10.0, 11.0, 12.0, 13.0, 14.0])
    assert 10.0 <= low < 12.0 < high <= 14.0
    assert interval([10.0, 11.0, 12.0, 13.0, 14.0]) == (low, high)  # seeded: the same again
    # Two of five never got there: most resamples keep one of them, "not reached": no bound.
    low, high = interval([10.0, 11.0, 12.0, None, None], "target")
    assert low is not None and high is None
    assert half_width_pct(12.0, 11.0, 12.6) == 8.3
    assert half_width_pct(12.0, None, 13.0) is None and half_width_pct(None, 1.0, 2.0) is None


def test_the_tables_give_each_headline_figure_its_interval(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    rng = random.Random(3)
    # Five runs of two epochs, 10 s +- 0.3 each; all reach 80% at the end of the second.
    runs = [[(10.0, 0.7), (rng.gauss(10.0, 0.3), 0.85)] for _ in range(5)]
    fill(url, [0.8], runs)
    code, out, err = run("table", "ttt", "--store", url, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    times = sorted(r[1][0] for r in runs)
    for figure in ("epoch_time_s", "time_to_80pct_s", "images_per_s"):
        low, high = row[f"{figure}_ci95_low"], row[f"{figure}_ci95_high"]
        assert low <= row[figure] <= high, (figure, low, row[figure], high)
    assert times[0] <= row["epoch_time_s_ci95_low"] < row["epoch_time_s_ci95_high"] <= times[-1]
    assert row["final_acc_pct"] is None and row["final_acc_pct_ci95_low"] is None
    spread = half_width_pct(row["epoch_time_s"], row["epoch_time_s_ci95_low"],
                            row["epoch_time_s_ci95_high"])  # fmt: skip
    # The terminal: the figures alone by default, their intervals with --wide.
    code, out, _ = run("table", "ttt", "--store", url)
    assert "±" not in out
    code, wide, err = run("table", "ttt", "--store", url, "--wide")
    assert code == 0 and "s/epoch ±" in wide and f"±{spread:g}%" in wide, wide
    assert "95% interval over the runs" in err
    code, md, _ = run("table", "ttt", "--store", url, "--format", "md")
    assert f"| ±{spread:g}% |" in md
    assert run("table", "ttt", "--store", url, "--format", "md")[1] == md  # seeded
    code, _, err = run("report", "ttt", "--store", url, "--out", str(tmp_path / "report"))
    assert code == 0, err
    page = (tmp_path / "report" / "index.html").read_text()
    assert "s/epoch ±" in page and f"±{spread:g}%" in page
    assert "error bars: the 95% interval over the runs" in page


def test_one_run_has_no_interval_anywhere(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    fill(url, [0.8], [[(10.0, 0.7), (11.0, 0.85)]])
    code, out, err = run("table", "ttt", "--store", url, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    bounds = [value for name, value in row.items() if "_ci95_" in name]
    assert len(bounds) == 2 * 6 and all(value is None for value in bounds)  # 5 and speedup
    code, wide, _ = run("table", "ttt", "--store", url, "--wide")
    assert code == 0 and "±" not in wide  # a column with no value in any row is left out


@given(
    st.lists(st.integers(0, 10_000), min_size=2, max_size=11, unique=True),
    st.integers(1, 10),
)
def test_the_exact_mann_whitney_p_is_the_share_of_orderings_as_extreme(values, cut):
    """Without ties, the exact p is what counting every split of the pooled runs gives."""
    from itertools import combinations

    from harness.stats import mann_whitney_p

    cut = min(cut, len(values) - 1)
    a, b = values[:cut], values[cut:]
    u = sum(x > y for x in a for y in b)
    us = [
        sum(x > y for x in pick for y in set(values) - set(pick))
        for pick in combinations(values, len(a))
    ]
    below = sum(v <= u for v in us) / len(us)
    above = sum(v >= u for v in us) / len(us)
    assert mann_whitney_p(a, b) == pytest.approx(min(1.0, 2 * min(below, above)))


def test_the_terminal_table_of_every_figure_stays_within_120_columns(tmp_path):
    """A sweep with every figure (targets, GPU telemetry, a price, several hosts, a CV flag):
    each line of `table` and `table --wide` is at most 120 characters, and no figure is lost
    (the columns go into tables one under another, each led by the GPU type)."""
    from records.store import Store

    rng = random.Random(1)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    store.add_sweep("full", {"sweep": {"target_accuracy": [0.6, 0.7]},
                             "gpu_types": {"v100": {"price_per_gpu_hour": 2.5}}})  # fmt: skip
    rows, records = [], []
    for i in range(30):
        job_id = f"full-{i}"
        gpu = ("v100", "a100", "h100")[i % 3]
        model = ("resnest50_bottleneck", "resnest50_basic")[i // 3 % 2]
        rows.append({"id": job_id, "stage": "train", "model": model, "dataset": "cifar10",
                     "gpu_type": gpu, "gpus": 1, "seed": i, "repeat": 0, "spec": {},
                     "depends_on": [], "job_dir": f"/nowhere/{job_id}"})  # fmt: skip
        for n in (1, 2, 3, 4):
            records.append({"kind": "epoch", "job_id": job_id, "attempt": 0, "epoch": n,
                            "epoch_time": rng.gauss(120.0, 9.0), "images_per_sec": 416.7,
                            "warmup": n == 1, "test_acc": 0.2 * n, "images": 50000,
                            "gpu_util_mean": 93.1, "gpu_mem_peak_bytes": 1.2e10,
                            "power_mean_w": 251.3, "energy_j": 30156.0,
                            "energy_per_image_j": 0.6031})  # fmt: skip
        records.append({"kind": "final", "job_id": job_id, "attempt": 0,
                        "status": "succeeded", "final_test_acc": 0.8, "best_test_acc": 0.81,
                        "train_time": 480.0})  # fmt: skip
        records.append({"kind": "provenance", "job_id": job_id, "attempt": 0,
                        "host": f"node{i % 4}"})  # fmt: skip
    store.add_jobs("full", rows)
    for row in rows:
        store.set_state(row["id"], "succeeded")
    store.write_records(records)
    for args in ([], ["--wide"]):
        code, out, err = run("table", "full", "--store", url, *args)
        assert code == 0, err
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= 120, max(lines, key=len)
        headers = {word for line in lines if line.startswith("gpu_type") for word in
                   line.split("  ") if word}  # fmt: skip
        for figure in ("s/epoch", "img/s", "final acc %", "s to 60%", "reached 70%", "mJ/img",
                       "GPU util %", "power W", "$/run", "hosts", "CV"):  # fmt: skip
            assert figure in headers, (figure, headers)
        if args:
            assert "s/epoch ±" in headers and "vs ref" in headers
