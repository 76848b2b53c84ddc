"""Two-process DDP on the CPU (gloo), started by torchrun as on a real node."""

import socket
import subprocess
import sys

import pytest
import torch

from jobs import memory_format

from .jobtools import TINY, final_weights, job_cmd, job_env, records


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_stay_identical_and_match_one_process_with_the_same_global_batch(tmp_path):
    args = [*TINY, "--epochs", "2", "--max-steps", "4"]
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        "-m",
        "jobs.train",
        "--out",
        str(ddp),
        *args,
    ]
    # torchrun gives each worker one OpenMP thread; the single process gets the same, so that
    # both sum in the same order.
    env = {**job_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = records(ddp, "epoch")
    # Rank 0 alone reports: one row per epoch, holding both ranks' samples.
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["world_size"] == 2 and e["images"] == 4 * 32 for e in epochs)
    final = records(ddp, "final")
    assert len(final) == 1 and final[0]["ranks_consistent"] is True

    # One process, global batch 32 in two strided micro-batches of 16: the same samples, the
    # same crops and the same BN batches as the two ranks, and the same gradient sums. BN
    # running statistics are rank 0's alone in DDP, so they are not compared.
    single = tmp_path / "single"
    cmd = job_cmd(single, *args, "--set", "accum_steps=2")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    a, b = final_weights(ddp), final_weights(single)
    params = [
        k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert len(params) > 50
    different = [k for k in params if not torch.equal(a[k], b[k])]
    assert different == []
    for e_ddp, e_single in zip(epochs, records(single, "epoch"), strict=True):
        assert e_ddp["train_loss"] == pytest.approx(e_single["train_loss"], rel=1e-6)
        assert e_ddp["train_acc"] == e_single["train_acc"]


def test_memory_format_auto_is_measured_once_and_taken_by_every_rank(tmp_path):
    """The fast recipe's ``memory_format=auto`` under DDP: rank 0 times both formats and
    broadcasts its choice; a rank that chose differently would train a different layout."""
    out = tmp_path / "auto"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "jobs.train",
        "--out", str(out), *TINY, "--epochs", "1", "--max-steps", "2",
        "--set", "memory_format=auto",
    ]  # fmt: skip
    env = {**job_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (start,) = records(out, "start")
    assert start["world_size"] == 2 and start["memory_format_by"] == "measured"
    timed = start["memory_format_step_ms"]
    assert set(timed) == {"contiguous", "channels_last"} and all(v > 0 for v in timed.values())
    chosen = memory_format.decide(start["memory_format_rounds_ms"])
    assert (start["memory_format"], start["memory_format_why"]) == chosen
    assert records(out, "final")[-1]["ranks_consistent"] is True


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"MASTER_ADDR": "no-such-node.invalid"},
         "MASTER_ADDR 'no-such-node.invalid' (from torchrun) does not resolve on "),
        ({"MASTER_ADDR": "127.0.0.1", "RESNEST_BENCH_COLLECTIVE_TIMEOUT": "soon"},
         "RESNEST_BENCH_COLLECTIVE_TIMEOUT='soon': expected a number of seconds above 0"),
    ],
)  # fmt: skip
def test_a_rendezvous_that_cannot_happen_is_one_line(tmp_path, settings, message):
    """A rank told to meet at a name its host cannot resolve, or given a timeout that is not
    one, says so in one line and exits 2, rather than waiting for peers. (Run in a network
    namespace of its own with nothing up: the failed lookup reaches no name server.)"""
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (needs root and unshare)")
    env = {**job_env(), "RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "29511", **settings}
    env.pop("GLOO_SOCKET_IFNAME", None)
    cmd = ["unshare", "--net", *job_cmd(tmp_path / "job", *TINY, "--max-steps", "1")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("resnest-bench: error: " + message), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "job").exists()  # refused before it wrote anything
