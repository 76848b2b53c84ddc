"""What a SLURM task runs: the callable that submitit pickles on the login node.

This module imports neither torch nor submitit at import time, so that pickling the task on
a login node needs neither. On the compute node every task of the job (one per GPU) calls
it; the tasks form one process group from the SLURM environment (``jobs.distributed``).

Preemption, time limits and ``scontrol requeue``: the trainer checkpoints at the next step
boundary and stops (``Requeue``). After a time-limit or preemption notice (SIGUSR1, or the
SIGUSR2 that submitit asks SLURM to send before the limit), rank 0 requeues the job itself
with ``scontrol requeue``, as submitit's checkpointing does; after SIGTERM, SLURM is already
requeuing or cancelling the job and nothing more is done. A requeued job runs the same task
again, which resumes from the job folder's latest valid checkpoint; its attempt number is the
submitted attempt plus ``SLURM_RESTART_COUNT``, so its records never overwrite the earlier
attempt's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from records.spec import EXIT_REQUEUE

NOTICE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def slurm_job_id(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """The id ``scontrol`` knows this job by: ``ARRAY_TASK`` for array tasks."""
    array_id = environ.get("SLURM_ARRAY_JOB_ID")
    if array_id:
        return f"{array_id}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ["SLURM_JOB_ID"]


def use_allotted_cpus(environ: dict[str, str] | os._Environ = os.environ) -> int | None:
    """Intra-op threads = the CPUs SLURM gave the task (``--cpus-per-task``), unless the job's
    environment sets ``OMP_NUM_THREADS``: without task binding, torch would start one thread
    per CPU of the node in every task, and tasks sharing a node slow each other down many
    times over. Returns the thread count set, or None."""
    cpus = environ.get("SLURM_CPUS_PER_TASK", "")
    if environ.get("OMP_NUM_THREADS") or not cpus.isdigit() or int(cpus) < 1:
        return None
    import torch

    torch.set_num_threads(int(cpus))
    return int(cpus)


class SlurmTask:
    """One job of a sweep, as a submitit callable (and submitit ``Checkpointable``). It
    carries the job's spec and writes it into the job's folder as it starts, making the
    folder: a sweep of thousands of jobs creates no folder or file per job on the shared
    filesystem at submission (submitit's own pickle per task aside)."""

    def __init__(self, spec_path: str, requeue: bool = True, spec_text: str | None = None) -> None:
        self.spec_path = str(spec_path)
        self.requeue = requeue
        self.spec_text = spec_text

    def __call__(self) -> None:
        from jobs.run import execute_file
        from records.spec import save

        text = getattr(self, "spec_text", None)  # None: a task that found its file written
        if text is not None:
            save(self.spec_path, text)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        use_allotted_cpus()
        code, stopped_by = execute_file(self.spec_path, attempt_offset=restarts)
        rank = int(os.environ.get("SLURM_PROCID", 0))
        if code == EXIT_REQUEUE and stopped_by in NOTICE_SIGNALS and self.requeue and rank == 0:
            job = slurm_job_id()
            subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)
            print(f"resnest-bench: requeued SLURM job {job}", file=sys.stderr, flush=True)
        if code:
            sys.exit(code)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on its preemption signal if it arrives before the trainer has
        taken the signals over: the state is already on disk, so run the same task again."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)

    def __repr__(self) -> str:
        return f"SlurmTask({Path(self.spec_path).parent.name})"
