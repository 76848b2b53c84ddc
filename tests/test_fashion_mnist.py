"""Real data, real learning: a small member of the zoo on Fashion-MNIST, on the CPU."""

import pytest

from jobs.data import FASHION_MNIST_SYSTEM_DIR

from .jobtools import records, run_job


@pytest.mark.slow
def test_tiny_resnest_reaches_85_percent_on_fashion_mnist(tmp_path):
    # resnest_tiny_basic: CIFAR stem, one basic split-attention block per stage, width 8.
    # One epoch over all 60,000 training images, about two minutes on two cores: 86.1% test
    # accuracy here (chance is 10%); a second epoch reaches 88% in twice the time.
    out = tmp_path / "fm"
    result = run_job(
        out,
        "--model",
        "resnest_tiny_basic",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(FASHION_MNIST_SYSTEM_DIR),
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--lr",
        "0.05",
        "--set",
        "schedule=cosine",
        "--set",
        "nesterov=true",
        "--set",
        "weight_decay=5e-4",
        "--set",
        "augment=false",
        "--target-accuracy",
        "0.85",
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr
    epochs = records(out, "epoch")
    assert [e["images"] for e in epochs] == [59_904]  # 468 full batches of 128
    final = records(out, "final")[-1]
    assert final["final_test_acc"] >= 0.85, final
    assert final["time_to_target"] is not None
