"""The local launcher: jobs as subprocesses of this machine, a few at a time, in dependency
order (``driver.Driver``). One failed job never stops the others; the jobs after it are marked
as not run. A job stopped for requeue (exit 75) runs again as its next attempt, up to three
times; a job another runner already holds is followed until that runner ends."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from harness.launchers.base import (
    Launcher,
    Row,
    environment_of,
    job_command,
    last_line,
    register,
    write_spec,
)
from harness.launchers.driver import Backend, Driver
from records.errors import OutboxError, UserError
from records.lock import holder_of, is_held
from records.outbox import NAME, final_state, read_outbox
from records.spec import EXIT_REQUEUE
from records.store import Store

MAX_REQUEUES = 3


def visible_gpus() -> int:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return out.stdout.count("GPU ") if out.returncode == 0 else 0


def threads_per_job(max_parallel: int) -> int:
    """Each job's share of this machine's CPUs. torch starts one intra-op thread per CPU in
    every process: two jobs on two cores would each start two, and their spinning threads
    slow both down many times over (an epoch of the tests' sweep: 7 s instead of 0.2 s)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // max(1, max_parallel))


def outcome(job_dir: Path) -> tuple[str, str | None]:
    """How a job that another runner ran has ended, from its outbox's newest attempt."""
    try:
        records = read_outbox(job_dir / NAME)
    except (OSError, OutboxError) as exc:
        return "failed", f"ended; its outbox cannot be read: {exc}"
    state, reason, _ = final_state(records)
    return state, reason


class Processes(Backend):
    """The Driver's backend here: one subprocess per job, at most ``max_parallel`` at once;
    a job another runner holds is followed to its end."""

    follows = True

    def __init__(self, store: Store, max_parallel: int, config: Any = None) -> None:
        self.store = store
        self.config = config
        self.max_parallel = max_parallel
        self.threads = threads_per_job(max_parallel)
        self.running: dict[str, tuple[Row, subprocess.Popen]] = {}
        self.requeues: dict[str, int] = {}

    def room(self) -> bool:
        return len(self.running) < self.max_parallel

    def start(self, job: Row) -> None:
        job_dir = Path(job["job_dir"])
        spec_path = write_spec(self.store, job)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if not os.environ.get("OMP_NUM_THREADS"):  # the user's setting wins
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        command = job_command(environment_of(self.config, job), spec_path)
        with open(job_dir / "stdout.log", "ab") as out, open(job_dir / "stderr.log", "ab") as err:
            process = subprocess.Popen(
                command, stdout=out, stderr=err, env=env, start_new_session=True
            )
        self.store.set_state(
            job["id"], "running", launcher_job_id=f"pid:{process.pid}", attempt=job["attempt"]
        )
        self.running[job["id"]] = (job, process)

    def ended(self) -> list[tuple[Row, int, str]]:
        done = []
        for job_id, (job, process) in list(self.running.items()):
            code = process.poll()
            if code is not None:
                del self.running[job_id]
                done.append((job, code, last_line(Path(job["job_dir"]) / "stderr.log")))
        if not done:
            time.sleep(Driver.POLL_S)
        return done

    def retry(self, job: Row, code: int) -> bool:
        if code != EXIT_REQUEUE or self.requeues.get(job["id"], 0) >= MAX_REQUEUES:
            return False
        self.requeues[job["id"]] = self.requeues.get(job["id"], 0) + 1
        return True

    def stop(self) -> None:
        for _, process in self.running.values():
            process.terminate()

    def following(self, job: Row) -> None:
        holder = holder_of(Path(job["job_dir"]) / "lock")
        self.store.set_state(
            job["id"], "running", launcher_job_id=f"pid:{holder.get('pid')}",
            reason=f"already running (host {holder.get('host')}, pid {holder.get('pid')}): "
            "followed to its end",
        )  # fmt: skip

    def follow(self, job: Row) -> tuple[str, str | None] | None:
        if is_held(job["job_dir"]):
            return None
        return outcome(Path(job["job_dir"]))


# What each stage's job imports beyond the harness, and the extra that installs it.
STAGE_MODULES = {
    "train": ("torch", "torchvision"),
    "transfer": ("torch", "torchvision"),
    "export": ("torch", "torchvision", "onnx", "onnxscript"),
    "infer": ("torch", "torchvision", "onnxruntime"),
}
EXTRA_OF = {"torch": "jobs", "torchvision": "jobs", "onnx": "deploy", "onnxscript": "deploy",
            "onnxruntime": "deploy"}  # fmt: skip


def missing_modules(stages: set[str]) -> list[str]:
    """The modules the jobs of ``stages`` need that this interpreter cannot import (looked up,
    not imported: the check costs no start-up time)."""
    needed = dict.fromkeys(m for stage in sorted(stages) for m in STAGE_MODULES.get(stage, ()))
    missing = []
    for module in needed:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


@register("local")
class LocalLauncher(Launcher):
    """Jobs as processes of this machine; ``submit`` runs them to the end."""

    jobs_share_host = True  # its jobs write even a SQLite store themselves

    @classmethod
    def describe(cls, gpu: Any, per_node: int, nodes: int) -> str:
        return f"a process here on {gpu.local or 'auto'}"

    def check(self, jobs: list[Row]) -> None:
        """The jobs run here, so this machine needs what they import: torch for every stage,
        ONNX for export and ONNX Runtime for inference (the package's extras)."""
        super().check(jobs)
        missing = missing_modules({job["stage"] for job in jobs})
        if missing:
            extras = ",".join(dict.fromkeys(EXTRA_OF[m] for m in missing))
            raise UserError(
                f"the local launcher runs the jobs on this machine, which lacks "
                f"{', '.join(missing)}: pip install 'resnest-bench[{extras}]'"
            )

    def submit(self, jobs: list[Row], progress: bool = True) -> dict[str, str]:
        self.check(jobs)
        config = self.sweep_config()
        for job in jobs:
            self.store.set_state(job["id"], "submitted", attempt=job["attempt"], reason=None)
        max_parallel = config.launcher.local.max_parallel or max(visible_gpus(), 1)
        processes = Processes(self.store, max_parallel, config)
        return Driver(self.store, jobs, processes, progress).run()

    def cancel(self, jobs: list[Row]) -> None:
        """Stop the running ones (their whole process group); all recorded as cancelled."""
        for job in jobs:
            launcher_id = job.get("launcher_job_id") or ""
            if job["state"] == "running" and launcher_id.startswith(self.prefix):
                with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                    os.killpg(int(launcher_id.removeprefix(self.prefix)), signal.SIGTERM)
        super().cancel(jobs)
