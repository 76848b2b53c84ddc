"""`table SWEEP --compare OTHER`: two sweeps of one store side by side."""

import json

from records.store import Store

from .jobtools import run


def add_sweep(store: Store, name: str, epoch_time: float, gpu_types: tuple[str, ...]) -> None:
    store.add_sweep(name, {})
    rows, records = [], []
    for gpu in gpu_types:
        job_id = f"{name}-{gpu}"
        rows.append({"id": job_id, "stage": "train", "model": "resnest_tiny_basic",
                     "dataset": "cifar10", "gpu_type": gpu, "gpus": 1, "seed": 0, "repeat": 0,
                     "spec": {}, "depends_on": [], "job_dir": f"/nowhere/{job_id}"})  # fmt: skip
        for n in (1, 2, 3):  # the first is the warm-up epoch, left out of the medians
            records.append({"kind": "epoch", "job_id": job_id, "attempt": 0, "epoch": n,
                            "epoch_time": epoch_time * (5 if n == 1 else 1),
                            "images_per_sec": 1000 / epoch_time, "warmup": n == 1,
                            "test_acc": 0.5})  # fmt: skip
    store.add_jobs(name, rows)
    for row in rows:
        store.set_state(row["id"], "succeeded")
    store.write_records(records)


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
