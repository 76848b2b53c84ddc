"""A site's limits on the real single-node SLURM, as a site sets them: ``MaxArraySize`` in
slurm.conf and a QOS with ``MaxSubmitJobsPerUser`` under ``AccountingStorageEnforce``
(scripts/slurm-local.sh enforces associations, limits and QOS). A sweep larger than both is
fed to the cluster by feeder jobs, from the cluster itself: no harness process runs while
it does.

The jobs run on the CPU (the GPU types are gres entries on /dev/null and /dev/zero). CI runs
the test at a small scale; ``RESNEST_BENCH_FULL_SCALE=1`` runs it as the site issue states
it: 250 jobs, MaxArraySize=50, a QOS of 80 queued jobs per user.
"""

import contextlib
import json
import os
import re
import subprocess
import time
import uuid

import pytest

from harness import config as cluster_config
from harness.launchers.feeder import LOG, read_log
from harness.planner import plan
from records.schema import ENDED

from .jobtools import cli, max_array_size, store_of, tiny_sweep, wait_for, write_cluster
from .jobtools import records as records_of_job

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

FULL = bool(os.environ.get("RESNEST_BENCH_FULL_SCALE"))
TRAININGS, ARRAY, QUEUED = (125, 50, 80) if FULL else (4, 3, 4)


def sacctmgr(*args: str) -> None:
    subprocess.run(["sacctmgr", "-i", "-Q", *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def qos_with_submit_limit(per_user: int):
    """A QOS of its own with ``MaxSubmitJobsPerUser=per_user``, granted to this user's
    association for the block (the other tests' jobs use the default QOS and do not count)."""
    enforce = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=30).stdout  # fmt: skip
    assert re.search(r"AccountingStorageEnforce\s*=\s*\S*limits", enforce), (
        "scripts/slurm-local.sh up enforces accounting limits"
    )
    name = f"limit{uuid.uuid4().hex[:6]}"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    sacctmgr("add", "qos", name, f"MaxSubmitJobsPerUser={per_user}")
    try:
        sacctmgr("modify", "user", user, "set", f"qos+={name}")
        yield name
    finally:
        subprocess.run(["scancel", "-q", name], capture_output=True, timeout=60)
        sacctmgr("modify", "user", user, "set", f"qos-={name}")
        sacctmgr("delete", "qos", name)


def in_qos(qos: str) -> list[str]:
    """The job names in the queue under ``qos``, array tasks one by one (as SLURM counts)."""
    out = subprocess.run(["squeue", "-h", "-r", "-q", qos, "-o", "%j"], capture_output=True,
                         text=True, timeout=30).stdout  # fmt: skip
    return out.split()


def test_a_sweep_over_the_sites_limits_is_fed_from_the_cluster_and_runs_every_job_once(tmp_path):
    """MaxArraySize and a QOS limit smaller than the sweep (train + transfer on one GPU
    type), training job 1 made to fail. submit reads both limits, queues what fits, keeps the
    rest waiting with the reason, and starts a feeder. From then on no harness command runs
    until the queue holds nothing of the sweep but a status half-way: the feeders bring every
    waiting job in, never more than the QOS allows in the queue at once (feeder included), in
    arrays within MaxArraySize. One status at the end then shows every job run exactly once,
    and the failed job's transfer not run."""
    with qos_with_submit_limit(QUEUED) as qos:
        path = write_cluster(
            tmp_path, "fed", {"kind": "slurm", "slurm": {"array_parallelism": 2}},
            {"v100": {"partition": "gpu", "gres": "gpu:v100", "cpus_per_gpu": 1, "qos": qos}},
            tiny_sweep(models=["resnest_tiny_basic"], gpu_types=["v100"], epochs=1,
                       seeds=list(range(TRAININGS)), stages=["train", "transfer"],
                       transfer_to=["synthetic"], transfer_epochs=1),
        )  # fmt: skip
        jobs = plan(cluster_config.load(path))
        trains = [j for j in jobs if j.stage == "train"]
        transfers = {j.depends_on[0]: j for j in jobs if j.stage == "transfer"}
        doomed = trains[1]
        (tmp_path / "results" / "fed" / "jobs" / doomed.id).mkdir(parents=True)
        (tmp_path / "results" / "fed" / "jobs" / doomed.id / "checkpoints").write_text("x")
        started = time.monotonic()
        with max_array_size(ARRAY):
            result = cli("submit", str(path), "-q", cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            why = rf"waiting for room: {QUEUED} queued jobs per user \(QOS {qos} MaxSubmitPU\)"
            said = re.search(
                rf"(\d+) job\(s\) queued on slurm, (\d+) waiting for room \({why}\)"
                r".*feeder job (\d+) submits the waiting jobs",
                result.stderr,
            )
            assert said, result.stderr
            assert int(said[1]) + int(said[2]) == len(jobs) and int(said[1]) < QUEUED
            most, midway = 0, None
            log = tmp_path / "results" / "fed" / "slurm" / LOG

            def drained() -> bool:
                nonlocal most, midway
                names = in_qos(qos)
                assert len(names) <= QUEUED, names
                most = max(most, len(names))
                if midway is None and len(read_log(log).fed) >= 2:
                    status = cli("status", "-c", str(path), cwd=tmp_path)
                    midway = status.stdout.splitlines()[0] if status.returncode == 0 else status
                return not any(name.startswith("fed-") for name in names)

            wait_for(drained, 3000 if FULL else 600, "the feeders to bring in the whole sweep")
            took = time.monotonic() - started
            # SLURM may drop a chained task's dependency though its parent succeeded (an
            # aftercorr task split out after its parent task's record was purged): status
            # submits those again. Followed as a user would, with status, until all have ended.
            rows: dict[str, dict] = {}

            def ended() -> bool:
                final = cli("status", "-c", str(path), "--format", "json", cwd=tmp_path)
                assert final.returncode == 0, final.stderr
                rows.update({row["id"]: row for row in json.loads(final.stdout)})
                return all(row["state"] in ENDED for row in rows.values())

            wait_for(ended, 1200 if FULL else 120, "the jobs status submitted again to end")
        assert midway is not None and "waiting" in midway, midway  # counts along the way
        assert re.search(r"\d+ (submitted|running)", midway), midway
        feed = read_log(log)
        assert not feed.errors, feed.errors
        assert len(feed.feeders) >= 2  # the first feeder chained the next itself
    store = store_of(tmp_path)
    arrays: dict[str, int] = {}
    again = [job.id for job in jobs if store.job(job.id)["attempt"] > 0]
    for job in jobs:
        if job.id == transfers[doomed.id].id:  # not run: no outbox, or no start in it
            folder = tmp_path / "results" / "fed" / "jobs" / job.id
            assert not (folder / "outbox.jsonl").exists() or not records_of_job(folder, "start")
            continue
        slurm_id = store.job(job.id)["launcher_job_id"].removeprefix("slurm:")
        arrays[slurm_id.split("_")[0]] = arrays.get(slurm_id.split("_")[0], 0) + 1
    assert max(arrays.values()) <= ARRAY, arrays
    assert rows[doomed.id]["state"] == "failed"
    assert store.job(transfers[doomed.id].id)["reason"] == (
        f"not run: depends on {doomed.id}, which failed"
    )
    for job in jobs:
        if job.id not in (doomed.id, transfers[doomed.id].id):
            assert rows[job.id]["state"] == "succeeded", rows[job.id]
            starts = records_of_job(tmp_path / "results" / "fed" / "jobs" / job.id, "start")
            assert len(starts) == 1  # ran exactly once
    print(f"{len(jobs)} jobs, MaxArraySize={ARRAY}, QOS {QUEUED} per user: {len(arrays)} sbatch "
          f"arrays or jobs, {len(feed.feeders)} feeders, at most {most} queued at once, "
          f"{took:.0f} s; {len(again)} submitted again after SLURM dropped their "
          "dependency")  # fmt: skip
