"""A real training job on the CPU, watched by the stand-in NVML of ``tests/standin`` (not
NVIDIA's library: there is no GPU here) through the calls the sampler makes on a GPU: a
power-capped GPU in MIG mode on a narrow PCIe link that throttles, and XID errors. Each
path goes through the job's own records, the store and the command line."""

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

from harness.launchers.base import judge_exit
from harness.launchers.sacct import host_failed
from records.spec import EXIT_HOST, EXIT_USER_ERROR

from .jobtools import TINY, cli, job_env, records, run_job
from .test_ddp import _free_port

STANDIN = Path(__file__).parent / "standin"


def standin_env(**settings) -> dict[str, str]:
    """The job's environment: the stand-in first on its path, NVML asked for on the CPU."""
    path = [str(STANDIN), *filter(None, [job_env().get("PYTHONPATH")])]
    return {
        "PYTHONPATH": ":".join(path),
        "RESNEST_BENCH_TELEMETRY_SOURCE": "nvml",
        "NVML_STANDIN": json.dumps(settings),
    }


def test_a_capped_throttled_gpu_and_an_xid_reach_the_records_the_store_and_status(tmp_path):
    out = tmp_path / "job"
    env = standin_env(
        throttle=[0, 0x4, 0x4, 0x24], power_limit_w=150, default_power_limit_w=250, mig=1,
        pcie=[3, 4, 8, 16], xid={"number": 79, "after_reads": 3},
    )  # fmt: skip
    result = run_job(out, *TINY, "--epochs", "2", "--max-steps", "3",
                     "--telemetry-interval", "0.05", env=env)  # fmt: skip
    # An XID with no failure after it: the job succeeds, and the XID is kept.
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reported XID 79" in result.stderr
    (prov,) = records(out, "provenance")
    assert prov["gpu_name"] == "Tesla V100-SXM2-32GB" and prov["telemetry"] == "nvml"
    assert (prov["power_limit_w"], prov["default_power_limit_w"]) == (150.0, 250.0)
    assert (prov["mig"], prov["ecc"], prov["persistence"]) == (True, True, True)
    assert [prov[k] for k in ("pcie_gen", "pcie_gen_max", "pcie_width", "pcie_width_max")] == [
        3, 4, 8, 16,
    ]  # fmt: skip
    rows = records(out, "epoch")
    assert [r["telemetry_source"] for r in rows] == ["nvml", "nvml"]
    # The first reading was clean (maybe before epoch 1 began), every later one power-capped
    # (the share's arithmetic: tests/test_throttling.py).
    assert 0 < rows[0]["throttled_pct"] <= 100 and rows[1]["throttled_pct"] == 100.0
    assert rows[1]["throttle_reasons"] == "power_cap 100%, sw_thermal 100%"
    assert [r.get("xids") for r in rows] == ["79 (GPU 0)", None]
    samples = [s for batch in records(out, "telemetry") for s in batch["samples"]]
    assert sum(s.get("xids", []) == [79] for s in samples) == 1

    url = f"sqlite:///{tmp_path / 'store.db'}"
    ingest = cli("ingest", str(out), "--sweep", "by-hand", "--store", url, cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr
    job_id = records(out, "start")[0]["job_id"]
    status = cli("status", "by-hand", "--store", url, "--job", job_id, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "attempt 0 XIDs: epoch 1 79 (GPU 0)" in status.stdout
    assert re.search(r"attempt 0 throttled: epoch 1 \d+% \(power_cap", status.stdout)
    assert "epoch 2 100% (power_cap 100%, sw_thermal 100%)" in status.stdout
    # The same job on the same host without the stand-in: provenance names the GPU settings.
    plain = tmp_path / "plain"
    assert run_job(plain, *TINY, "--epochs", "1", "--max-steps", "1").returncode == 0
    assert cli("ingest", str(plain), "--sweep", "by-hand", "--store", url,
               cwd=tmp_path).returncode == 0  # fmt: skip
    other = records(plain, "start")[0]["job_id"]
    differ = cli("provenance", job_id, other, "--store", url, cwd=tmp_path)
    assert differ.returncode == 0, differ.stderr
    said = {line.strip() for line in differ.stdout.splitlines()[1:]}
    assert {"power_limit_w: 150.0 -> (none)", "mig: True -> (none)", "pcie_width: 8 -> (none)",
            "gpu_name: Tesla V100-SXM2-32GB -> (none)"} <= said  # fmt: skip


def test_a_failure_after_an_xid_is_the_hosts_and_without_one_the_jobs(tmp_path):
    """The same failure (a file where the checkpoints go), once after the GPU reported XID 48
    (a double-bit ECC error), once after XID 13 (what a program's own bad kernel makes the
    driver report) and once without: a host failure that the launchers retry elsewhere, then
    twice the job's own."""
    ends = {}
    cases = (("faulted", {"number": 48, "after_reads": 1}),
             ("own", {"number": 13, "after_reads": 1}), ("clean", None))  # fmt: skip
    for name, xid in cases:
        out = tmp_path / name
        out.mkdir()
        (out / "checkpoints").write_text("not a folder")
        env = standin_env(**({"xid": xid} if xid else {}))
        ends[name] = run_job(out, *TINY, "--epochs", "1", "--max-steps", "2",
                             "--telemetry-interval", "0.05", env=env)  # fmt: skip
    faulted, clean = ends["faulted"], ends["clean"]
    assert faulted.returncode == EXIT_HOST, faulted.stderr[-3000:]
    last = faulted.stderr.strip().splitlines()[-1]
    assert last.startswith(f"resnest-bench: host failure on {socket.gethostname()}: GPU XID 48 on "
                           "GPU 0, then ")  # fmt: skip
    state, reason = judge_exit(faulted.returncode, last)  # as every launcher reads a job's end
    assert state == "failed" and host_failed(state, reason)  # SLURM's retry takes it elsewhere
    assert clean.returncode not in (0, EXIT_HOST), clean.stderr[-3000:]
    assert "host failure" not in clean.stderr and "XID" not in clean.stderr
    assert clean.returncode == EXIT_USER_ERROR or "Traceback" in clean.stderr
    own = ends["own"]
    assert "reported XID 13" in own.stderr  # seen and logged, and still the job's failure
    assert own.returncode == clean.returncode and "host failure" not in own.stderr


def test_an_xid_on_one_rank_of_a_ddp_job_reaches_its_epoch_record(tmp_path):
    """Two ranks (gloo), each with its own sampler: rank 1's GPU reports XID 79, and rank 0's
    epoch record names it (the epoch's XIDs are gathered only when some rank saw one)."""
    port = _free_port()
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "jobs.train",
           "--out", str(out), *TINY, "--epochs", "2", "--max-steps", "3",
           "--telemetry-interval", "0.05"]  # fmt: skip
    env = {**job_env(), "OMP_NUM_THREADS": "1",
           **standin_env(xid={"number": 79, "after_reads": 2, "rank": 1})}  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = records(out, "epoch")
    assert [r["world_size"] for r in rows] == [2, 2]
    assert [r.get("xids") for r in rows] == ["rank 1: 79 (GPU 0)", None]


def test_the_prepared_gpu_check_runs_through_and_names_a_field_left_empty(tmp_path):
    """``bench/gpu_truth.sh`` in its SMOKE mode (the tiny networks on the CPU, this stand-in
    for NVML): every field filled, a profile per network; then with a GPU whose NVML cannot
    give its power limit, exit 1 naming the field."""
    script = Path(__file__).parents[1] / "bench" / "gpu_truth.sh"
    env = {**job_env(), "SMOKE": "1", "PYTHON": sys.executable}
    good = subprocess.run(["bash", str(script), str(tmp_path / "good")], cwd=script.parents[1],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    assert "every field filled" in good.stdout
    assert good.stdout.count("profile: ") == 2 and "power_limit_w: 250.0" in good.stdout
    assert "GPU-architecture preflight" in good.stdout
    env["NVML_STANDIN"] = json.dumps({"unsupported": ["nvmlDeviceGetEnforcedPowerLimit"]})
    bad = subprocess.run(["bash", str(script), str(tmp_path / "bad")], cwd=script.parents[1],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-3000:]
    (empty,) = [line for line in bad.stdout.splitlines() if line.startswith("EMPTY: ")]
    assert "resnest_tiny_basic provenance.power_limit_w" in empty
    assert "every field filled" not in bad.stdout
