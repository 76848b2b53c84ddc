"""Each job uses the CPUs its launcher gave it: the local launcher's share of the machine,
SLURM's ``--cpus-per-task``; the user's ``OMP_NUM_THREADS`` wins over both."""

import json
import os
import subprocess
import sys

import pytest

from harness.launchers.local import threads_per_job
from jobs.slurm_task import use_allotted_cpus


def test_the_local_launcher_splits_the_cpus_between_its_parallel_jobs():
    cpus = len(os.sched_getaffinity(0))
    assert threads_per_job(1) == cpus
    assert threads_per_job(cpus) == 1
    assert threads_per_job(cpus * 4) == 1  # never none
    assert threads_per_job(0) == cpus  # no limit given: the whole machine


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"SLURM_CPUS_PER_TASK": "3"}, 3),
        ({"SLURM_CPUS_PER_TASK": "3", "OMP_NUM_THREADS": "1"}, None),  # the user's choice
        ({}, None),  # not asked for: torch's default
        ({"SLURM_CPUS_PER_TASK": "zero"}, None),
    ],
)
def test_a_slurm_task_takes_its_cpus_per_task_as_threads(environ, expected):
    code = (
        "import json, torch\n"
        "from jobs.slurm_task import use_allotted_cpus\n"
        f"print(json.dumps([use_allotted_cpus({environ!r}), torch.get_num_threads()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    returned, threads = json.loads(done.stdout)
    assert returned == expected
    if expected:
        assert threads == expected
    assert use_allotted_cpus({}) is None
