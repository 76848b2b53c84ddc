"""The training job end to end, run as a launcher runs it: in subprocesses, on the CPU."""

import os
import signal
import subprocess

import pytest
import torch

from records.spec import EXIT_DIVERGED, EXIT_REQUEUE, EXIT_USER_ERROR

from .formats import write_cifar100
from .jobtools import TINY, events, final_weights, job_cmd, job_env, records, run_job, wait_for


def test_epoch_reports_and_final_summary(tmp_path):
    out = tmp_path / "job"
    result = run_job(out, *TINY, "--epochs", "2", "--max-steps", "5", "--target-accuracy", "0.0")
    assert result.returncode == 0, result.stderr
    assert "epoch   1/2" in result.stdout and "epoch   2/2" in result.stdout
    epochs = records(out, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert [e["warmup"] for e in epochs] == [True, False]
    for e in epochs:
        assert e["images"] == 5 * 32 and e["steps"] == 5
        assert 0 < e["data_time"] + e["compute_time"] <= e["epoch_time"]
        assert e["images_per_sec"] == pytest.approx(e["images"] / e["epoch_time"])
        assert 0 <= e["train_acc"] <= 1 and 0 <= e["test_acc"] <= 1 and e["train_loss"] > 0
        assert e["peak_mem_bytes"] > 0 and e["lr"] == pytest.approx(0.1)
    final = records(out, "final")[-1]
    assert final["status"] == "succeeded" and final["ranks_consistent"]
    assert final["best_test_acc"] == max(e["test_acc"] for e in epochs)
    assert final["final_test_acc"] == epochs[-1]["test_acc"]
    assert final["time_to_target"] == pytest.approx(epochs[0]["epoch_time"])
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "ckpt-e00001-s000000.pt",
        "ckpt-e00002-s000000.pt",
    ]


def test_train_loss_is_the_mean_over_the_epoch(tmp_path):
    # With lr 0 nothing changes, so every batch's loss is a fresh sample of the same model:
    # the epoch's mean must equal the mean loss over exactly the batches it trained on.
    out = tmp_path / "job"
    args = [*TINY, "--epochs", "1", "--max-steps", "4", "--lr", "0", "--set", "augment=false"]
    assert run_job(out, *args).returncode == 0
    from jobs import data
    from jobs.loader import DeviceLoader

    weights = final_weights(out)
    import resnest

    model = resnest.create("resnest_tiny_basic", num_classes=10)
    model.load_state_dict(weights)
    model.train()
    images, labels = data.synthetic(train=True)
    loader = DeviceLoader(
        data.ImageSet(images, labels, 10, *data._STATS["synthetic"]),
        32,
        torch.device("cpu"),
        train=True,
        augment=False,
        seed=0,
    )
    losses = []
    with torch.no_grad():
        for step, (x, y) in enumerate(loader.batches(0)):
            if step == 4:
                break
            losses.append(torch.nn.functional.cross_entropy(model(x), y).item())
    reported = records(out, "epoch")[0]["train_loss"]
    assert reported == pytest.approx(sum(losses) / 4, rel=1e-4)
    assert reported != pytest.approx(losses[-1], rel=1e-4)


def checkpointed_after(out, epoch: int) -> bool:
    """Whether the job's outbox records its checkpoint at the end of ``epoch``."""
    return any(e["epoch"] == epoch and e["step"] == 0 for e in events(out, "checkpoint"))


def test_killed_mid_epoch_and_resumed_is_bitwise_identical(tmp_path):
    args = [*TINY, "--epochs", "3", "--max-steps", "12"]
    straight = tmp_path / "straight"
    assert run_job(straight, *args).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        job_cmd(killed, *args),
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # Kill once epoch 1's checkpoint is saved (its record says so): in epoch 2, whatever
    # the machine's pace.
    line = proc.stdout.readline()
    assert line.startswith("epoch   1/3"), line
    wait_for(lambda: checkpointed_after(killed, 1), 120, "epoch 1's checkpoint record")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not records(killed, "final")
    assert [e["epoch"] for e in records(killed, "epoch")] == [1]

    result = run_job(killed, *args)
    assert result.returncode == 0, result.stderr
    resumed = events(killed, "resumed")
    assert resumed and resumed[0]["epoch"] == 1 and resumed[0]["step"] == 0
    assert (
        records(killed, "final")[0]["params_sha256"]
        == records(straight, "final")[0]["params_sha256"]
    )
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_and_exits_for_requeue(tmp_path, signum):
    out = tmp_path / "job"
    args = [*TINY, "--epochs", "4", "--max-steps", "40", "--check-every", "1"]
    proc = subprocess.Popen(
        job_cmd(out, *args),
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("epoch   1/4")
    # The signal once epoch 1's checkpoint is saved (its record says so): it lands in epoch
    # 2, which checks for it after every step (--check-every 1).
    wait_for(lambda: checkpointed_after(out, 1), 120, "epoch 1's checkpoint record")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_REQUEUE, stderr
    assert "requeue" in stderr and "Traceback" not in stderr
    saved = events(out, "checkpoint")[-1]
    assert saved["epoch"] == 1 and 0 < saved["step"] < 40  # mid-epoch 2, at a step boundary
    assert os.path.exists(saved["path"])

    result = run_job(out, *args)
    assert result.returncode == 0, result.stderr
    assert events(out, "resumed")[-1]["step"] == saved["step"]
    epochs = [e["epoch"] for e in records(out, "epoch")]
    assert epochs == [1, 2, 3, 4]  # no epoch reported twice
    assert records(out, "epoch")[1]["steps"] == 40  # the resumed epoch counts all its steps


def test_corrupt_checkpoint_is_refused_and_the_previous_one_used(tmp_path):
    out = tmp_path / "job"
    assert run_job(out, *TINY, "--epochs", "2", "--max-steps", "3").returncode == 0
    newest = out / "checkpoints" / "ckpt-e00002-s000000.pt"
    newest.write_bytes(newest.read_bytes()[:-50])
    result = run_job(out, *TINY, "--epochs", "3", "--max-steps", "3")
    assert result.returncode == 0, result.stderr
    refused = events(out, "checkpoint_refused")
    assert len(refused) == 1 and "ckpt-e00002-s000000.pt: sha256 mismatch" in refused[0]["reason"]
    assert events(out, "resumed")[-1]["epoch"] == 1
    assert [e["epoch"] for e in records(out, "epoch")] == [1, 2, 2, 3]


@pytest.mark.parametrize("recipe", ["study", "fast"])
def test_nan_loss_ends_as_diverged(tmp_path, recipe):
    out = tmp_path / "job"
    result = run_job(
        out, *TINY, "--recipe", recipe, "--epochs", "2", "--max-steps", "20", "--lr", "1e12"
    )
    assert result.returncode == EXIT_DIVERGED, result.stderr
    assert "diverged" in result.stderr and "Traceback" not in result.stderr
    final = records(out, "final")[-1]
    assert (final["status"], final["reason"]) == ("failed", "diverged")


def test_transfer_with_a_frozen_backbone(tmp_path):
    source = tmp_path / "train"
    assert run_job(source, *TINY, "--epochs", "1", "--max-steps", "3").returncode == 0
    write_cifar100(tmp_path / "data", train=64, test=20)
    out = tmp_path / "transfer"
    result = run_job(
        out,
        "--from",
        str(source),
        "--model",
        "resnest_tiny_basic",
        "--dataset",
        "cifar100",
        "--data-dir",
        str(tmp_path / "data"),
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--freeze",
        "backbone",
        stage="transfer",
    )
    assert result.returncode == 0, result.stderr
    before, after = final_weights(source), final_weights(out)
    assert after["fc.weight"].shape == (100, before["fc.weight"].shape[1])
    backbone = [k for k in before if not k.startswith("fc.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # BN statistics too
    start = records(out, "start")[0]
    assert start["recipe"]["lr"] == 0.001 and start["recipe"]["schedule"] == "step"
    # Another network than the checkpoint's: one line naming both, not a state-dict dump.
    other = ["--model", "resnest_tiny_bottleneck", "--dataset", "synthetic"]
    result = run_job(tmp_path / "other", "--from", str(source), *other, stage="transfer")
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert (
        f"{source}: a resnest_tiny_basic checkpoint; this job's model is "
        "resnest_tiny_bottleneck" in result.stderr
    )


def test_bad_input_is_one_line(tmp_path):
    result = run_job(tmp_path / "a", *TINY, "--set", "warp=9")
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.strip().count("\n") == 0 and "unknown recipe field 'warp'" in result.stderr
    transfer = ["--model", "resnest_tiny_basic", "--dataset", "synthetic"]
    result = run_job(tmp_path / "b", "--from", str(tmp_path / "none"), *transfer, stage="transfer")
    assert result.returncode == EXIT_USER_ERROR
    assert f"{tmp_path / 'none'}: no such checkpoint" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_job(tmp_path / "c", "--from", str(tmp_path / "empty"), *transfer, stage="transfer")
    assert result.returncode == EXIT_USER_ERROR
    assert "no valid checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_the_recipes_last_gamma_starts_each_blocks_last_bn_scale_at_zero(tmp_path):
    """``--set last_gamma=true`` builds the network with each bottleneck block's last BN
    scale at zero (with lr 0 they stay as built); without it they start at one."""
    import resnest

    model = "resnest_tiny_bottleneck"
    built = resnest.create(model, num_classes=10, last_gamma=True).state_dict()
    zeroed = {k for k, v in built.items() if k.endswith(".weight") and v.ndim == 1 and not v.any()}
    assert zeroed  # the blocks' last BN scales
    for last_gamma in ("true", "false"):
        out = tmp_path / last_gamma
        args = ["--model", model, *TINY[2:], "--epochs", "1", "--max-steps", "1", "--lr", "0"]
        result = run_job(out, *args, "--set", f"last_gamma={last_gamma}")
        assert result.returncode == 0, result.stderr
        weights = final_weights(out)
        nonzero = [bool(weights[k].any()) for k in sorted(zeroed)]
        assert nonzero == [last_gamma == "false"] * len(zeroed)
