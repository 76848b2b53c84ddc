"""`table SWEEP --compare OTHER`: two sweeps of one store side by side."""

import json
import random

import pytest

from harness.stats import mann_whitney_p, verdict
from records.store import Store

from .jobtools import run


def add_runs(
    store: Store,
    name: str,
    runs: list[tuple[str, float]],
    images_per_sec: float | None = None,
    test_acc: float = 0.5,
) -> None:
    """A sweep of one model whose runs are (GPU type, seconds per epoch), one job each;
    images/s ``images_per_sec``, else 1,000 images an epoch; ``test_acc`` after each epoch."""
    store.add_sweep(name, {})
    rows, records = [], []
    for i, (gpu, epoch_time) in enumerate(runs):
        job_id = f"{name}-{gpu}-{i}"
        rows.append({"id": job_id, "stage": "train", "model": "resnest_tiny_basic",
                     "dataset": "cifar10", "gpu_type": gpu, "gpus": 1, "seed": i, "repeat": 0,
                     "spec": {}, "depends_on": [], "job_dir": f"/nowhere/{job_id}"})  # fmt: skip
        for n in (1, 2, 3):  # the first is the warm-up epoch, left out of the medians
            records.append({"kind": "epoch", "job_id": job_id, "attempt": 0, "epoch": n,
                            "epoch_time": epoch_time * (5 if n == 1 else 1),
                            "images_per_sec": images_per_sec or 1000 / epoch_time,
                            "warmup": n == 1, "test_acc": test_acc})  # fmt: skip
    store.add_jobs(name, rows)
    for row in rows:
        store.set_state(row["id"], "succeeded")
    store.write_records(records)


def add_sweep(store: Store, name: str, epoch_time: float, gpu_types: tuple[str, ...]) -> None:
    add_runs(store, name, [(gpu, epoch_time) for gpu in gpu_types])


def test_two_sweeps_side_by_side_per_gpu_type_and_figure(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    add_sweep(store, "new-driver", 2.0, ("v100", "a100"))
    add_sweep(store, "last-week", 4.0, ("v100", "k80"))  # a100 and k80: in one sweep only
    code, out, err = run("table", "new-driver", "--compare", "last-week", "--store", url,
                         "--format", "json")  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert {r["gpu_type"] for r in rows} == {"v100"}
    by = {r["figure"]: r for r in rows}
    (epoch,) = [f for f in by if "s/epoch" in f]
    assert (by[epoch]["new-driver"], by[epoch]["last-week"]) == (2.0, 4.0)
    assert (by[epoch]["ratio"], by[epoch]["change %"]) == (0.5, -50.0)
    (speed,) = [f for f in by if "img/s" in f]
    assert (by[speed]["ratio"], by[speed]["change %"]) == (2.0, 100.0)
    code, out, err = run("table", "new-driver", "--compare", "last-wek", "--store", url)
    assert code == 2 and err.strip().splitlines() == [
        f"resnest-bench: error: --compare 'last-wek': no such sweep in {url}"
    ]


def test_a_comparison_says_whether_a_change_is_real(tmp_path):
    """Five runs a side, the new sweep 10% slower per epoch (2% CV), the images/s the same:
    s/epoch is "slower" with its p-value, img/s "same"; a change smaller than --min-change
    is "same"; a negative --min-change is one line."""
    rng = random.Random(5)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    add_runs(store, "before", [("v100", rng.gauss(10.0, 0.2)) for _ in range(5)], 1000.0)
    add_runs(store, "after", [("v100", rng.gauss(11.0, 0.22)) for _ in range(5)], 1000.0)
    code, out, err = run("table", "after", "--compare", "before", "--store", url,
                         "--format", "json")  # fmt: skip
    assert code == 0, err
    by = {r["figure"]: r for r in json.loads(out)}
    epoch, speed = by["resnest_tiny_basic s/epoch"], by["resnest_tiny_basic img/s"]
    assert epoch["verdict"] == "slower" and epoch["p"] < 0.05, epoch
    assert speed["verdict"] == "same" and speed["p"] >= 0.05, speed
    code, out, _ = run("table", "after", "--compare", "before", "--store", url, "--format",
                       "json", "--min-change", "20")  # fmt: skip
    by = {r["figure"]: r for r in json.loads(out)}
    assert by["resnest_tiny_basic s/epoch"]["verdict"] == "same"  # 10% < 20%
    code, out, _ = run("table", "before", "--compare", "after", "--store", url)
    assert code == 0 and "faster" in out, out  # the other way round
    code, _, err = run("table", "after", "--compare", "before", "--store", url,
                       "--min-change", "-1")  # fmt: skip
    assert code == 2 and err.strip().splitlines() == [
        "resnest-bench: error: --min-change -1: a change in percent, 0 or more"
    ]


def test_the_verdicts_error_rates_on_known_distributions():
    """200 pairs of five-run samples from one distribution: at most 5% are called different;
    a 10% slowdown at a 2% CV, five runs a side: called slower at least 95% of the time. The
    test prints both rates (pytest -s)."""
    rng = random.Random(11)
    pairs = 200
    false = sum(
        verdict([rng.gauss(10, 0.2) for _ in range(5)], [rng.gauss(10, 0.2) for _ in range(5)],
                True)[1] != "same"
        for _ in range(pairs)
    )  # fmt: skip
    found = sum(
        verdict([rng.gauss(11, 0.22) for _ in range(5)], [rng.gauss(10, 0.2) for _ in range(5)],
                True)[1] == "slower"
        for _ in range(pairs)
    )  # fmt: skip
    print(f"no change: {false / pairs:.1%} called different; 10% slower: {found / pairs:.1%} "
          "called slower")  # fmt: skip
    assert false / pairs <= 0.05 and found / pairs >= 0.95
    # The exact test: 5 against 5 with no overlap is the smallest two-sided p there is.
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert mann_whitney_p([1.0, 2.0], [1.0, 2.0]) == 1.0  # ties: the normal approximation


def test_each_gpu_type_is_tested_against_the_reference(tmp_path):
    """Within one sweep: the speedup gets its interval and a verdict from the GPU type's runs
    against the reference type's; a type that runs as the reference does is the same."""
    rng = random.Random(8)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    runs = [("a100", rng.gauss(5.0, 0.1)) for _ in range(5)]
    runs += [("a10", rng.gauss(5.0, 0.1)) for _ in range(5)]  # as fast as the a100
    runs += [("v100", rng.gauss(10.0, 0.2)) for _ in range(5)]
    add_runs(Store(url), "types", runs)
    code, out, err = run("table", "types", "--reference", "a100", "--store", url,
                         "--format", "json")  # fmt: skip
    assert code == 0, err
    by = {r["gpu_type"]: r for r in json.loads(out)}
    assert by["a100"]["speedup_verdict"] is None and by["a100"]["speedup_ci95_low"] is None
    v100 = by["v100"]
    assert v100["speedup_verdict"] == "slower" and v100["speedup_p"] < 0.05
    assert v100["speedup_ci95_low"] <= v100["speedup"] <= v100["speedup_ci95_high"] < 0.6
    assert by["a10"]["speedup_verdict"] == "same", by["a10"]
    assert by["a10"]["speedup_ci95_low"] <= 1.0 <= by["a10"]["speedup_ci95_high"]
    code, out, _ = run("table", "types", "--reference", "a100", "--store", url, "--wide")
    (line,) = [x for x in out.splitlines() if x.startswith("v100")]
    assert "vs ref" in out and "slower" in line.split(), out
