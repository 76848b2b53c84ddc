"""Node counts as a sweep axis: the plan, each job's shape, and the table's scaling column."""

import contextlib
import io
import json

import pytest

from harness import config as cluster_config
from harness.cli import main
from harness.planner import layout, plan
from records.store import Store

from .jobtools import base, write


def planned(tmp_path, **sweep):
    data = base(tmp_path)
    data["launcher"] = {"kind": "slurm"}  # several nodes: a cluster's launcher
    data["sweep"].update(sweep)
    config = cluster_config.load(write(tmp_path, data))
    return config, plan(config)


def test_a_list_of_node_counts_is_an_axis_and_one_count_keeps_the_ids(tmp_path):
    _, one = planned(tmp_path, nodes=1)
    _, same = planned(tmp_path, nodes=[1])
    assert [j.id for j in one] == [j.id for j in same]  # `nodes: [1]` is `nodes: 1`
    config, both = planned(tmp_path, nodes=[1, 2], gpus_per_job=2)
    trains = [j for j in both if j.stage == "train"]
    assert len(trains) == 2 * len([j for j in one if j.stage == "train"])
    assert sorted({(j.nodes, j.row()["gpus"]) for j in trains}) == [(1, 2), (2, 4)]
    # Export and inference jobs are one process on one GPU, whatever trained their network.
    deploys = [j for j in both if j.stage in ("export", "infer")]
    assert deploys and {(j.nodes, j.gpus_per_node, j.row()["gpus"]) for j in deploys} == {(1, 1, 1)}
    rows = {j.id: {"stage": j.stage, "gpus": j.row()["gpus"]} for j in both}
    shapes = {layout(config, rows[j.id]) for j in trains}
    assert shapes == {(2, 1), (2, 2)}
    assert {layout(config, rows[j.id]) for j in deploys} == {(1, 1)}


@pytest.mark.parametrize("nodes", [[], [2, 2], [0], "two"])
def test_a_bad_node_count_is_one_line(tmp_path, nodes):
    data = base(tmp_path)
    data["sweep"]["nodes"] = nodes
    with pytest.raises(Exception) as info:
        cluster_config.load(write(tmp_path, data))
    assert "sweep.nodes" in str(info.value) and "\n" not in str(info.value)


def table(url: str, *args: str) -> list[dict]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["table", "scale", "--store", url, "--format", "json", *args])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


def test_the_table_compares_node_counts_by_scaling_efficiency(tmp_path):
    """Images/s at N nodes over N times images/s at one node, per GPU type and model; a GPU
    type only run on several nodes is compared with its fewest."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(url)
    store.add_sweep("scale", {"sweep": {"gpus_per_job": 2}})
    runs = [  # (gpu type, nodes, images/s of its timed epochs)
        ("v100", 1, [100.0, 100.0]), ("v100", 2, [180.0, 180.0]), ("v100", 4, [340.0, 340.0]),
        ("a100", 2, [500.0, 500.0]), ("a100", 4, [900.0, 900.0]),
    ]  # fmt: skip
    rows, records = [], []
    for i, (gpu, nodes, speeds) in enumerate(runs):
        job_id = f"job{i}"
        rows.append({"id": job_id, "stage": "train", "model": "resnest_tiny_basic",
                     "dataset": "cifar10", "gpu_type": gpu, "gpus": 2 * nodes, "seed": 0,
                     "repeat": 0, "spec": {}, "depends_on": [], "job_dir": "/x"})  # fmt: skip
        for n, ips in enumerate([1.0, *speeds], start=1):  # the first epoch is warm-up
            records.append({"kind": "epoch", "job_id": job_id, "attempt": 0, "epoch": n,
                            "epoch_time": 50_000 / ips, "images_per_sec": ips,
                            "warmup": n == 1})  # fmt: skip
    store.add_jobs("scale", rows)
    store.write_records(records)
    got = {(r["gpu_type"], r["nodes"]): r["scaling_efficiency"] for r in table(url)}
    assert got == {
        ("a100", 2): 1.0, ("a100", 4): 0.9, ("v100", 1): 1.0, ("v100", 2): 0.9, ("v100", 4): 0.85,
    }  # fmt: skip
    assert {r["row"] for r in table(url)} >= {"v100 (1 node)", "a100 (4 nodes)"}
    # Speed-up against a GPU type is against its fewest nodes.
    speedups = {r["row"]: r["speedup"] for r in table(url, "--reference", "v100")}
    assert speedups["v100 (1 node)"] == 1.0 and speedups["a100 (2 nodes)"] == 5.0
