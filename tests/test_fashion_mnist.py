"""Real data, real learning: both training recipes on Fashion-MNIST, on the CPU, and the fast
recipe reaching the study's accuracy in less training time.

The two recipes as a user runs them (``--recipe study`` and ``--recipe fast``), shortened to
fit the suite: two epochs of 90 steps of 128 images for the study (23,040 images, its lr at
0.1 throughout, as in its first 80 epochs), two of 60 steps of 128 for the fast recipe
(15,360 images, two thirds of the study's; its lr scales with its batch, 0.05 at 128). Both
at the study's batch, so an image costs both the same (a CPU runs no faster at 1,024, and a
larger batch costs more per image when the machine is busy) and the runs differ in what the
recipes do with their images: a one-cycle schedule that anneals, label smoothing, Nesterov
momentum. The two jobs run side by side, one thread each, so they share the machine alike.

"Sooner" is counted in images, which the training decides alone; the seconds are printed, not
asserted, since they depend on what else the machine runs. The fast recipe's speed (bf16, the
whole set on the device, CUDA graphs) is for `bench/time_to_accuracy.py` to measure on a GPU.

The fast recipe trains here in NCHW, as the study does, fixed. Its ``auto`` memory format
times both formats and keeps NCHW unless channels-last wins every round by more than the
rounds' spread (tests/test_recipe_and_env.py); on a CPU the two are near a tie, and two
epochs end at different accuracies in each (the bottleneck network, measured here: 78.80% in
NCHW, 74.78% in channels_last, each the same in two runs), so the test does not leave even
that choice to a measurement.
"""

import subprocess
import time

import pytest

from jobs.data import FASHION_MNIST_SYSTEM_DIR

from .jobtools import job_cmd, job_env, records

RUNS = {
    "study": ["--recipe", "study", "--max-steps", "90"],
    "fast": [
        "--recipe",
        "fast",
        "--batch-size",
        "128",
        "--max-steps",
        "60",
        "--set",
        "memory_format=contiguous",
    ],
}
COMMON = [
    "--dataset", "fashion-mnist",
    "--data-dir", str(FASHION_MNIST_SYSTEM_DIR), "--epochs", "2", "--telemetry-interval", "0",
    "--target-accuracy", "0.6",
]  # fmt: skip


def time_to(epochs: list[dict], accuracy: float, what: str = "epoch_time") -> float | None:
    """Training time (evaluation excluded, as the table counts it), or with ``what="images"``
    the images trained on, at the end of the first epoch whose test accuracy is at least
    ``accuracy``."""
    elapsed = 0.0
    for epoch in epochs:
        elapsed += epoch[what]
        if epoch["test_acc"] >= accuracy:
            return elapsed
    return None


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnest_tiny_basic", "resnest_tiny_bottleneck"])
def test_both_recipes_learn_fashion_mnist_and_the_fast_one_reaches_the_studys_accuracy_sooner(
    tmp_path, model
):
    env = {**job_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    logs = {name: (tmp_path / f"{name}.err").open("w") for name in RUNS}  # not a pipe: unread,
    started = time.monotonic()  # it could fill and stop the job
    procs = {
        name: subprocess.Popen(
            job_cmd(tmp_path / name, "--model", model, *COMMON, *args),
            stdout=subprocess.DEVNULL,
            stderr=logs[name],
            env=env,
        )
        for name, args in RUNS.items()
    }
    wall = {}
    try:
        while len(wall) < len(procs):  # each job's whole time: start-up and evaluation included
            for name, proc in procs.items():
                if name not in wall and proc.poll() is not None:
                    wall[name] = time.monotonic() - started
            assert time.monotonic() - started < 900, f"still running: {set(procs) - set(wall)}"
            time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, proc in procs.items():
        logs[name].close()
        assert proc.returncode == 0, f"{name}: {(tmp_path / f'{name}.err').read_text()}"
    final = {name: records(tmp_path / name, "final")[-1] for name in RUNS}
    epochs = {name: records(tmp_path / name, "epoch") for name in RUNS}
    assert [e["images"] for e in epochs["study"]] == [90 * 128] * 2
    assert [e["images"] for e in epochs["fast"]] == [60 * 128] * 2
    # Measured here (2 cores, torch 2.14.1): the basic network, the study 34.6% then 60.9%
    # (the same in three runs), its lr still at 0.1; the fast recipe 41-53% at its peak lr,
    # then 69.5% once it has annealed. The bottleneck network: the study 74.37% then 75.40%;
    # the fast recipe 63.33% then 78.80%. Chance: 10%.
    assert final["study"]["final_test_acc"] >= 0.45, final["study"]
    assert final["fast"]["final_test_acc"] >= 0.65, final["fast"]
    assert final["fast"]["time_to_target"] is not None  # reached 60%, and says when
    # The fast recipe reaches the study's final accuracy on two thirds of its images or fewer.
    reached = final["study"]["final_test_acc"]
    images = {n: time_to(epochs[n], reached, "images") for n in RUNS}
    seconds = {n: time_to(epochs[n], reached) for n in RUNS}
    print(
        *(f"{n}: {[round(e['test_acc'], 4) for e in epochs[n]]} {wall[n]:.0f} s" for n in RUNS),
        f"to {reached:.2%}: fast {images['fast']} images in {seconds['fast']} s of training, "
        f"study {images['study']} in {seconds['study']} s",
    )  # for the record (pytest -s); the whole run's time also counts evaluation and start-up
    assert images["fast"] is not None, (final["fast"]["final_test_acc"], reached)
    assert 3 * images["fast"] <= 2 * images["study"], images
    # The fast recipe's schedule: up for a quarter of the run, then down to nearly zero.
    lrs = [e["lr"] for e in epochs["fast"]]
    assert lrs[0] > lrs[1] and lrs[1] < 0.01
    start = records(tmp_path / "fast", "start")[-1]
    assert (start["memory_format"], start["memory_format_by"]) == ("contiguous", "recipe")
    assert records(tmp_path / "study", "start")[-1]["memory_format_by"] == "recipe"
