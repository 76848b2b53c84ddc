"""Hosts in the figures: how many hosts a figure's runs came from, a host whose runs are
outliers against the other hosts of its GPU type, and `table --exclude-host` (simulated
stores: no training)."""

import json
import random

from harness.stats import outlier_hosts
from records.store import Store

from .jobtools import run
from .test_compare import add_runs

MODEL = "resnest_tiny_basic"


def test_a_host_15_percent_slow_is_flagged_and_a_normal_one_is_not():
    """200 GPU types of 4 hosts x 3 runs at a 2% CV: with every host alike, few are flagged;
    with one host 15% slow, it is flagged, and only it, nearly always. Prints both rates."""
    rng = random.Random(7)
    hosts = [f"h{i}" for i in range(4) for _ in range(3)]
    false = found = 0
    trials = 200
    for _ in range(trials):
        alike = [rng.gauss(10.0, 0.2) for _ in hosts]
        false += bool(outlier_hosts(alike, hosts))
        slow = [rng.gauss(10.0, 0.2) * (1.15 if h == "h3" else 1.0) for h in hosts]
        found += outlier_hosts(slow, hosts) == ["h3"]
    print(f"\nhosts alike: {false}/{trials} flagged; one 15% slow: found {found}/{trials}")
    assert false <= 0.05 * trials
    assert found >= 0.95 * trials


def test_two_hosts_or_unknown_hosts_flag_nothing():
    assert outlier_hosts([10.0, 10.0, 12.0, 12.0], ["a", "a", "b", "b"]) == []
    assert outlier_hosts([10.0, 10.0, 15.0], [None, "a", "b"]) == []  # two known hosts
    # identical runs elsewhere: a 0.5% difference is under the 1% floor of the spread
    assert outlier_hosts([10.0, 10.0, 10.0, 10.05], ["a", "b", "c", "d"]) == []
    assert outlier_hosts([10.0, 10.0, 10.0, 10.5], ["a", "b", "c", "d"]) == ["d"]


def store_with_a_slow_host(tmp_path) -> str:
    """One GPU type, 4 hosts x 3 runs (2% CV); node04's runs are 15% slower."""
    rng = random.Random(2)
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    hosts = [f"node0{1 + i % 4}" for i in range(12)]
    times = [rng.gauss(10.0, 0.2) * (1.15 if h == "node04" else 1.0) for h in hosts]
    add_runs(store, "site", [("v100", t) for t in times])
    store.write_records([
        {"kind": "provenance", "job_id": f"site-v100-{i}", "attempt": 0, "host": host}
        for i, host in enumerate(hosts)
    ])  # fmt: skip
    return url


def test_the_table_counts_hosts_flags_the_slow_one_and_leaves_it_out_on_demand(tmp_path):
    url = store_with_a_slow_host(tmp_path)
    code, out, err = run("table", "site", "--store", url, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["hosts"], row["outlier_hosts"], row["runs"]) == (4, "node04", 12)
    with_slow = row["epoch_time_s"]
    code, out, err = run("table", "site", "--store", url)
    assert code == 0 and "4 ! node04" in out, out
    assert "--exclude-host HOST" in err

    code, out, err = run("table", "site", "--store", url, "--format", "json",
                         "--exclude-host", "node04")  # fmt: skip
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["hosts"], row["outlier_hosts"], row["runs"]) == (3, None, 9)
    assert row["epoch_time_s"] < with_slow
    assert 9.5 < row["epoch_time_s"] < 10.5  # the other hosts' runs, around 10 s
    code, out, _ = run("table", "site", "--store", url, "--exclude-host", "node04")
    assert code == 0 and "!" not in out.split("hosts")[-1].splitlines()[2]

    code, out, err = run("table", "site", "--store", url, "--exclude-host", "node4")
    assert code == 2 and out == ""
    assert err.strip() == (
        "resnest-bench: error: --exclude-host 'node4': no job of sweep 'site' ran there "
        "(hosts: node01, node02, node03, node04)"
    )


def test_the_gate_and_a_comparison_leave_an_excluded_host_out_too(tmp_path):
    url = store_with_a_slow_host(tmp_path)
    store = Store(url)
    refs = {"v100": {MODEL: {"epoch_time_s": {"value": 10.0, "tolerance_pct": 3}}}}
    store.add_sweep("site", {"references": refs})
    add_runs(store, "fast", [("v100", 10.0 + i / 100) for i in range(9)])
    code, out, err = run("table", "site", "--store", url, "--check")
    assert code == 0 and "over 12 runs" in out, (out, err)
    code, out, err = run("table", "site", "--store", url, "--check", "--exclude-host", "node04")
    assert code == 0 and "over 9 runs" in out, (out, err)
    code, out, err = run("table", "site", "--store", url, "--compare", "fast", "--format",
                         "json", "--exclude-host", "node04")  # fmt: skip
    assert code == 0, err
    by = {r["figure"]: r for r in json.loads(out)}
    assert by[f"{MODEL} runs"]["site"] == 9
