"""Real data, real learning: both training recipes on Fashion-MNIST, on the CPU.

The two recipes as a user runs them (``--recipe study`` and ``--recipe fast``), shortened to
fit the suite: two epochs of 90 steps of 128 images (the study) and of 45 steps of 256 (the
fast recipe at its base batch, where its lr is unscaled: a CPU runs no faster at 1024, so the
larger batch would only cost it steps). Both see the same 23,040 training images. The two
jobs run side by side, one thread each, so they share the machine alike.
"""

import subprocess

import pytest

from jobs.data import FASHION_MNIST_SYSTEM_DIR

from .jobtools import job_cmd, job_env, records

RUNS = {
    "study": ["--recipe", "study", "--max-steps", "90"],
    "fast": ["--recipe", "fast", "--batch-size", "256", "--max-steps", "45"],
}
COMMON = [
    "--model", "resnest_tiny_basic", "--dataset", "fashion-mnist",
    "--data-dir", str(FASHION_MNIST_SYSTEM_DIR), "--epochs", "2", "--telemetry-interval", "0",
    "--target-accuracy", "0.6",
]  # fmt: skip


@pytest.mark.slow
def test_the_study_and_the_fast_recipe_each_learn_fashion_mnist(tmp_path):
    env = {**job_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            job_cmd(tmp_path / name, *COMMON, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, args in RUNS.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: {err}"
    final = {name: records(tmp_path / name, "final")[-1] for name in RUNS}
    epochs = {name: records(tmp_path / name, "epoch") for name in RUNS}
    assert [e["images"] for e in epochs["study"]] == [90 * 128] * 2
    assert [e["images"] for e in epochs["fast"]] == [45 * 256] * 2
    # Measured here (2 cores, torch 2.14.1): the study 66.7% then 67.5%, its lr still at 0.1;
    # the fast recipe 29.7% at its peak lr, then 69.3% once it has annealed (chance: 10%).
    # The study's figure at a constant lr of 0.1 swings between runs (52.6% after 120 steps
    # an epoch), hence its lower bar.
    assert final["study"]["final_test_acc"] >= 0.45, final["study"]
    assert final["fast"]["final_test_acc"] >= 0.62, final["fast"]
    assert final["fast"]["time_to_target"] is not None  # reached 60%, and says when
    # The fast recipe's schedule: up for a quarter of the run, then down to nearly zero.
    lrs = [e["lr"] for e in epochs["fast"]]
    assert lrs[0] > lrs[1] and lrs[1] < 0.01
    start = records(tmp_path / "fast", "start")[-1]
    assert start["memory_format_by"] == "measured"  # auto: timed on this machine
    assert start["memory_format"] == min(
        start["memory_format_step_ms"], key=start["memory_format_step_ms"].get
    )
    assert records(tmp_path / "study", "start")[-1]["memory_format_by"] == "recipe"
