"""The local launcher: jobs as subprocesses of this machine, a few at a time, in dependency
order. One failed job never stops the others; the jobs after it are marked as not run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.launchers import exit_reason, last_line, mark_interrupted, progress_bar
from harness.store import Store
from jobs.lock import holder_of, is_held
from jobs.reporter import OutboxError, read_outbox
from jobs.spec import EXIT_ALREADY_RUNNING, EXIT_REQUEUE

POLL_S = 0.2
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


@dataclass
class Running:
    job: dict[str, Any]
    process: subprocess.Popen
    requeues: int = 0


def job_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.run", "--spec", str(spec_path)]


def failure_reason(code: int, stderr_path: Path) -> str:
    return exit_reason(code, last_line(stderr_path))


def outcome(job_dir: Path) -> tuple[str, str | None]:
    """How a job that another runner ran has ended, from the final record of its outbox's
    newest attempt."""
    try:
        records = read_outbox(job_dir / "outbox.jsonl")
    except (OSError, OutboxError) as exc:
        return "failed", f"ended; its outbox cannot be read: {exc}"
    if not records:
        return "failed", "ended without writing any record"
    attempt = max(r.get("attempt", 0) for r in records)
    finals = [r for r in records if r["kind"] == "final" and r.get("attempt", 0) == attempt]
    if not finals:
        return "failed", "ended without a final record (killed?)"
    status = finals[-1].get("status")
    if status == "succeeded":
        return "succeeded", None
    return "failed", str(finals[-1].get("reason") or status)


def run(
    store: Store,
    jobs: list[dict[str, Any]],
    max_parallel: int,
    write_spec: Any,
    progress: bool = True,
) -> dict[str, str]:
    """Run ``jobs`` (store rows, in dependency order) to the end; return id -> final state."""
    waiting = {job["id"]: job for job in jobs}
    running: dict[str, Running] = {}
    # Jobs found running already (a runner left by an earlier, killed submission holds the
    # folder): followed through their lock until they end, then judged by their outbox.
    followed: dict[str, dict[str, Any]] = {}
    final: dict[str, str] = {}
    counts: Counter[str] = Counter()
    outside: dict[str, str | None] = {}  # states of jobs outside this run: they stay put
    bar = progress_bar(len(jobs), progress)

    def finish(job_id: str, state: str, reason: str | None = None, record: bool = True) -> None:
        if record:
            store.set_state(job_id, state, reason=reason)
        final[job_id] = state
        counts[state] += 1
        bar.update(1)
        bar.set_postfix(running=len(running), **counts)

    def state_of(job_id: str) -> str | None:
        if job_id in final:
            return final[job_id]
        if job_id in waiting or job_id in running or job_id in followed:
            return "pending"
        if job_id not in outside:
            row = store.job(job_id)
            outside[job_id] = row["state"] if row else None
        return outside[job_id]

    def start(job: dict[str, Any], requeues: int = 0) -> None:
        job_dir = Path(job["job_dir"])
        job_dir.mkdir(parents=True, exist_ok=True)
        spec_path = write_spec(job)
        env = {**os.environ, "RESNEST_BENCH_STORE": store.url, "PYTHONUNBUFFERED": "1"}
        with open(job_dir / "stdout.log", "ab") as out, open(job_dir / "stderr.log", "ab") as err:
            process = subprocess.Popen(
                job_command(spec_path), stdout=out, stderr=err, env=env, start_new_session=True
            )
        store.set_state(
            job["id"], "running", launcher_job_id=f"pid:{process.pid}", attempt=job["attempt"]
        )
        running[job["id"]] = Running(job, process, requeues)

    try:
        while waiting or running or followed:
            for job_id, job in list(followed.items()):
                if not is_held(job["job_dir"]):
                    del followed[job_id]
                    finish(job_id, *outcome(Path(job["job_dir"])))
            for job_id, job in list(waiting.items()):
                states = [state_of(parent) for parent in job["depends_on"] or []]
                blocked = [
                    p
                    for p, s in zip(job["depends_on"] or [], states, strict=True)
                    if s in ("failed", "cancelled")
                ]
                if blocked:
                    del waiting[job_id]
                    finish(
                        job_id,
                        "cancelled",
                        f"not run: depends on {blocked[0]}, which {state_of(blocked[0])}",
                    )
                elif all(s == "succeeded" for s in states) and len(running) < max_parallel:
                    del waiting[job_id]
                    start(job)
            for job_id, item in list(running.items()):
                code = item.process.poll()
                if code is None:
                    continue
                del running[job_id]
                if (store.job(job_id) or {}).get("state") == "cancelled":
                    finish(job_id, "cancelled", record=False)  # by `cancel`: keep its reason
                elif code == 0:
                    finish(job_id, "succeeded")
                elif code == EXIT_ALREADY_RUNNING:
                    holder = holder_of(Path(item.job["job_dir"]) / "lock")
                    store.set_state(
                        job_id, "running", launcher_job_id=f"pid:{holder.get('pid')}",
                        reason=f"already running (host {holder.get('host')}, pid "
                        f"{holder.get('pid')}): followed to its end",
                    )  # fmt: skip
                    followed[job_id] = item.job
                elif code == EXIT_REQUEUE and item.requeues < MAX_REQUEUES:
                    item.job["attempt"] += 1
                    start(item.job, item.requeues + 1)
                else:
                    finish(
                        job_id,
                        "failed",
                        failure_reason(code, Path(item.job["job_dir"]) / "stderr.log"),
                    )
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        for item in running.values():
            item.process.terminate()
        mark_interrupted(store, [*running, *waiting])
        raise
    finally:
        bar.close()
    return final
