"""History across sweeps: each figure per GPU type and model over a store's sweeps, the
steps where its level changed, and what differs in the provenance at each (simulated stores
of known distributions: no training)."""

import json
import random

import pytest

from harness.history import find_steps
from records import packages
from records.store import Store

from .jobtools import run
from .test_compare import add_runs

MODEL = "resnest_tiny_basic"


def series(rng: random.Random, sweeps: int = 20, step_at: int | None = 12, size: float = 0.08):
    """Five runs per sweep at a 2% CV; from sweep ``step_at`` on (1-based), ``size`` slower."""
    return [
        [rng.gauss(10.0, 0.2) * (1 + size if step_at and k + 1 >= step_at else 1) for _ in range(5)]
        for k in range(sweeps)
    ]


def test_steps_are_found_where_they_are_and_not_where_they_are_not():
    """200 series of 20 sweeps (5 runs each, 2% CV) with an 8% step at sweep 12: the step
    found there, and nowhere else; 200 without a step: rarely one. Prints both rates."""
    rng = random.Random(12)
    names = [f"s{k + 1:02d}" for k in range(20)]
    exact = sum(
        [(s.before, s.after) for s in find_steps(series(rng), names)] == [("s11", "s12")]
        for _ in range(200)
    )
    false = sum(bool(find_steps(series(rng, step_at=None), names)) for _ in range(200))
    print(f"\n8% step at sweep 12: found exactly in {exact}/200; no step: one found in {false}/200")
    assert exact >= 190
    assert false <= 10


def provenance_records(sweep: str, n: int, torch: str) -> list[dict]:
    names = sorted([f"torch=={torch}", "numpy==2.2.1", "pillow==11.0.0"])
    return [
        {
            "kind": "provenance",
            "job_id": f"{sweep}-v100-{i}",
            "attempt": 0,
            "host": f"n{i}",
            "torch": torch,
            "driver": "550.54",
            "cuda": "12.4",
            "gpu_name": "Tesla V100",
            "code_commit": "abc123",
            "packages_sha256": packages.digest(names),
            "packages": packages.pack(names),
        }
        for i in range(n)
    ]


@pytest.fixture
def twenty_sweeps(tmp_path) -> str:
    """20 sweeps of 5 runs (2% CV); from sweep 12 on, 8% slower per epoch and torch 2.11.0
    instead of 2.10.0; images/s and accuracy the same throughout."""
    rng = random.Random(4)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    for k in range(1, 21):
        name = f"nightly-{k:02d}"
        slow = 1.08 if k >= 12 else 1.0
        add_runs(store, name, [("v100", rng.gauss(10.0, 0.2) * slow) for _ in range(5)], 1000.0)
        store.write_records(provenance_records(name, 5, "2.11.0" if k >= 12 else "2.10.0"))
    return url


def test_history_lists_exactly_the_step_and_names_torch(twenty_sweeps):
    code, out, err = run("history", "--store", twenty_sweeps, "--format", "json")
    assert code == 0, err
    (step,) = json.loads(out)
    assert (step["gpu_type"], step["model"], step["figure"]) == ("v100", MODEL, "epoch_time_s")
    assert (step["before"], step["after"]) == ("nightly-11", "nightly-12")
    assert 6 < step["change %"] < 10 and step["p"] < 0.05 / 19
    assert step["differences"] == "torch: 2.10.0 -> 2.11.0; package torch 2.10.0 -> 2.11.0"
    code, out, err = run("history", "--store", twenty_sweeps)
    assert code == 0 and "nightly-12" in out and "20 sweeps, in the order submitted" in err


def test_history_plots_every_figure_with_its_intervals(twenty_sweeps, tmp_path):
    out_dir = tmp_path / "history"
    code, out, err = run("history", "--store", twenty_sweeps, "--out", str(out_dir))
    assert code == 0, err
    assert out.strip() == f"history: {out_dir / 'index.html'} (open it in a browser; the " \
        "folder works offline)"  # fmt: skip
    page = (out_dir / "index.html").read_text()
    assert "History across 20 sweeps" in page and "torch: 2.10.0 -&gt; 2.11.0" in page
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    # s/epoch and img/s were measured; accuracy and energy were not
    assert len(pngs) == 2 and all((out_dir / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert page.count("<img ") == 2


def test_a_store_of_one_sweep_has_no_history_and_a_bad_min_change_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    add_runs(Store(url), "only", [("v100", 10.0)])
    code, out, err = run("history", "--store", url)
    assert code == 2 and out == ""
    assert err.strip() == (
        f"resnest-bench: error: history: the store {url} holds 1 sweep(s); a history needs "
        "two or more"
    )
    code, _, err = run("history", "--store", url, "--min-change", "-1")
    assert code == 2 and "--min-change -1: a change in percent, 0 or more" in err


def test_a_step_without_a_kept_package_list_says_so(tmp_path):
    """Sweeps from a store whose package lists were not kept (only the digest): the step
    says the package set differs, without inventing names."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    for k, (time, digest) in enumerate([(10.0, "a" * 64), (10.0, "a" * 64), (12.0, "b" * 64),
                                        (12.0, "b" * 64)]):  # fmt: skip
        name = f"w{k}"
        add_runs(store, name, [("v100", time + i / 100) for i in range(5)], 1000.0)
        store.write_records([
            {"kind": "provenance", "job_id": f"{name}-v100-{i}", "attempt": 0, "host": "n",
             "packages_sha256": digest}
            for i in range(5)
        ])  # fmt: skip
    code, out, err = run("history", "--store", url, "--format", "json")
    assert code == 0, err
    (step,) = json.loads(out)
    assert (step["before"], step["after"]) == ("w1", "w2")
    assert step["differences"] == "packages: the set differs (its list was not kept)"
