"""The Ray launcher: each job a Ray task, DDP jobs through Ray Train's TorchTrainer.

``launcher.ray.address`` names the cluster: ``auto`` (the one this machine belongs to, or
``RAY_ADDRESS``), ``HOST:PORT`` or ``ray://HOST:PORT``, or ``local`` to start a Ray for the
sweep on this machine. The submitting process drives the sweep and waits for it, like the
local launcher; jobs report to the same results store.

A GPU type maps to Ray's accelerator type (``ray_accelerator``, e.g. V100) or to a custom
resource (``ray_resource``), one unit per GPU of the job. Jobs ask for GPUs only where the
cluster has them; elsewhere (as on this machine) they run on CPUs and the resource still
decides where they go. A job of one GPU runs ``python -m jobs.train`` as a subprocess of a
Ray task (its logs in the job folder); a job of several GPUs runs a TorchTrainer whose workers
form the DDP group and call the same job code in-process.

Failures: a job that ends with an error other than bad input or divergence is run again, up to
``launcher.ray.max_retries`` times, resuming from its checkpoint; Ray retries tasks lost with
their node on its own (``max_retries`` of the task), and Ray Train restarts a failed worker
group (``FailureConfig.max_failures``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig, GpuType
from harness.errors import UserError
from harness.launchers import exit_reason, last_line, mark_interrupted, progress_bar
from harness.store import Store
from jobs.spec import (
    EXIT_ALREADY_RUNNING,
    EXIT_DIVERGED,
    EXIT_OK,
    EXIT_REQUEUE,
    EXIT_USER_ERROR,
)

PREFIX = "ray:"
NO_RETRY = (EXIT_OK, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_ALREADY_RUNNING)


def connect(address: str) -> None:
    import ray

    if ray.is_initialized():
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        # Ray itself retries an absent head for minutes: look first, and say so at once.
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise UserError(
                f"launcher.ray.address: cannot connect to Ray at {address!r} "
                f"({exc.strerror or exc}); start one with `ray start --head`, or set "
                "launcher.ray.address: local"
            ) from None
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address == "local":
        options["include_dashboard"] = False
    else:
        options["address"] = address
    if address == "local" or host in ("127.0.0.1", "localhost"):
        # A Ray on loopback: say so, rather than have Ray probe for a route outside.
        options["_node_ip_address"] = "127.0.0.1"
    # Ray's client retries a refused token for a while, a warning line each time, straight
    # on the process's stderr: keep those lines, and say in one line what went wrong.
    with _stderr_kept(enabled=address != "local") as kept:
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failure = first
        else:
            failure = None
        said = kept.text()
    if failure is None:
        return
    if "InvalidAuthToken" in said or "Unauthenticated" in said:
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        raise UserError(
            f"launcher.ray.address: Ray at {address!r} refused this machine's authentication "
            f"token (RAY_AUTH_MODE={mode}): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
            "RAY_AUTH_TOKEN_PATH) to the cluster's token, as `ray get-auth-token` prints it on "
            "the head node"
        )
    raise UserError(
        f"launcher.ray.address: cannot connect to Ray at {address!r} ({failure}); start one "
        "with `ray start --head`, or set launcher.ray.address: local"
    )


class _Kept:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def text(self) -> str:
        if self.path is None or not self.path.is_file():
            return ""
        return self.path.read_text(errors="replace")


@contextmanager
def _stderr_kept(enabled: bool) -> Iterator[_Kept]:
    """Point file descriptor 2 at a temporary file while connecting (Ray's native client
    writes there directly); put it back after, whatever happened."""
    if not enabled:
        yield _Kept(None)
        return
    with tempfile.TemporaryDirectory(prefix="resnest-bench-ray-") as folder:
        path = Path(folder) / "stderr"
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(path, "wb") as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    yield _Kept(path)
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)


def resources_of(gpu: GpuType) -> dict[str, float]:
    """Ray resources for one GPU of this type (besides GPU and CPU)."""
    if gpu.ray_accelerator:
        return {f"accelerator_type:{gpu.ray_accelerator}": 0.001}
    if gpu.ray_resource:
        return {gpu.ray_resource: 1.0}
    return {}


def check_gpu_types(config: ClusterConfig, used: set[str], workers: int) -> None:
    """Refuse, before anything runs, GPU types the Ray cluster has no resource for, or too
    little of for one job: Ray would otherwise wait for them for ever."""
    import ray

    available = ray.cluster_resources()
    for name in sorted(used):
        gpu = config.gpu_types[name]
        needs = {"CPU": float(gpu.cpus_per_gpu)} | resources_of(gpu)
        for resource, amount in needs.items():
            if resource not in available:
                custom = [
                    k
                    for k in sorted(available)
                    if k not in ("CPU", "GPU", "memory")
                    and not k.startswith(("node:", "object_store"))
                ]
                raise UserError(
                    f"gpu_types.{name}: the Ray cluster has no resource {resource!r} "
                    f"(it has {', '.join(custom) or 'no custom resources'})"
                )
            if amount * workers > available[resource]:
                raise UserError(
                    f"gpu_types.{name}: a job needs {amount * workers:g} {resource} "
                    f"({workers} GPU(s) x {amount:g}), the Ray cluster has "
                    f"{available[resource]:g} in all"
                )


def prepare(config: ClusterConfig, jobs: list[dict[str, Any]]) -> None:
    """Connect, and check that the cluster can run the jobs; nothing runs yet."""
    connect(config.launcher.ray.address)
    workers = config.sweep.gpus_per_job * config.sweep.nodes
    check_gpu_types(config, {job["gpu_type"] for job in jobs}, workers)


def _uses_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def run_job_process(spec_path: str, store_url: str) -> tuple[int, str]:
    """A one-GPU job, inside a Ray task: the job as a subprocess, logs in its folder."""
    folder = Path(spec_path).parent
    env = {**os.environ, "RESNEST_BENCH_STORE": store_url, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jobs.run", "--spec", spec_path]
    with open(folder / "stdout.log", "ab") as out, open(folder / "stderr.log", "ab") as err:
        code = subprocess.run(cmd, stdout=out, stderr=err, env=env).returncode
    return code, last_line(folder / "stderr.log")


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a DDP job: the process group is already formed."""
    import ray.train

    from jobs.spec import TrainSpec
    from jobs.train import execute

    context = ray.train.get_context()
    os.environ["LOCAL_RANK"] = str(context.get_local_rank())
    os.environ["RESNEST_BENCH_STORE"] = config["store_url"]
    code, _ = execute(TrainSpec.from_file(config["spec_path"]))
    if code != EXIT_OK:
        raise RuntimeError(f"rank {context.get_world_rank()} ended with exit code {code}")


def run_job_trainer(
    spec_path: str,
    store_url: str,
    workers: int,
    use_gpu: bool,
    per_worker: dict[str, float],
    cpus: int,
    max_failures: int,
) -> tuple[int, str]:
    """A DDP job, inside a Ray task: a TorchTrainer with one worker per GPU."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    folder = Path(spec_path).parent
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec_path": spec_path, "store_url": store_url},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={**per_worker, "CPU": cpus},
        ),
        run_config=RunConfig(
            name="ray-train",
            storage_path=str(folder),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # the workers' error, as Ray Train reports it
        text = str(exc).strip().splitlines()
        return 1, next((line for line in reversed(text) if "exit code" in line), text[-1])
    return EXIT_OK, ""


def run(
    config: ClusterConfig,
    store: Store,
    jobs: list[dict[str, Any]],
    write_spec: Any,
    progress: bool = True,
) -> dict[str, str]:
    """Run ``jobs`` (store rows in dependency order) on Ray to the end; id -> final state.
    Call ``prepare`` first."""
    import ray

    settings = config.launcher.ray
    workers = config.sweep.gpus_per_job * config.sweep.nodes
    use_gpu = _uses_gpus()
    single = ray.remote(run_job_process)
    trainer = ray.remote(run_job_trainer)

    def start(job: dict[str, Any]) -> Any:
        Path(job["job_dir"]).mkdir(parents=True, exist_ok=True)
        spec_path = str(write_spec(job))
        gpu = config.gpu_types[job["gpu_type"]]
        per_gpu = resources_of(gpu)
        if workers == 1 or job["stage"] not in ("train", "transfer"):
            options: dict[str, Any] = {
                "num_cpus": gpu.cpus_per_gpu,
                "num_gpus": 1 if use_gpu else 0,
                "resources": per_gpu,
                "max_retries": settings.max_retries,
            }
            ref = single.options(**options).remote(spec_path, store.url)
        else:  # the trainer task only coordinates: its workers hold the resources
            ref = trainer.options(num_cpus=0, max_retries=settings.max_retries).remote(
                spec_path, store.url, workers, use_gpu, per_gpu, gpu.cpus_per_gpu,
                settings.max_retries,
            )  # fmt: skip
        store.set_state(
            job["id"], "running", launcher_job_id=PREFIX + ref.task_id().hex(),
            attempt=job["attempt"],
        )  # fmt: skip
        return ref

    waiting = {job["id"]: job for job in jobs}
    running: dict[Any, dict[str, Any]] = {}
    retries: dict[str, int] = {}
    final: dict[str, str] = {}
    bar = progress_bar(len(jobs), progress)

    def state_of(job_id: str) -> str | None:
        if job_id in final:
            return final[job_id]
        if job_id in waiting or any(j["id"] == job_id for j in running.values()):
            return "pending"
        row = store.job(job_id)
        return row["state"] if row else None

    def finish(job_id: str, state: str, reason: str | None = None) -> None:
        store.set_state(job_id, state, reason=reason)
        final[job_id] = state
        bar.update(1)

    try:
        while waiting or running:
            for job_id, job in list(waiting.items()):
                parents = job["depends_on"] or []
                states = [state_of(p) for p in parents]
                bad = [
                    p for p, s in zip(parents, states, strict=True) if s in ("failed", "cancelled")
                ]
                if bad:
                    del waiting[job_id]
                    finish(
                        job_id,
                        "cancelled",
                        f"not run: depends on {bad[0]}, which {state_of(bad[0])}",
                    )
                elif all(s == "succeeded" for s in states):
                    del waiting[job_id]
                    running[start(job)] = job
            if not running:
                time.sleep(0.2)  # waiting on jobs outside this run
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                job = running.pop(ref)
                try:
                    code, last = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task itself was lost
                    code, last = 1, str(exc).strip().splitlines()[0]
                if code == EXIT_OK:
                    finish(job["id"], "succeeded")
                elif code not in NO_RETRY and retries.get(job["id"], 0) < settings.max_retries:
                    retries[job["id"]] = retries.get(job["id"], 0) + 1
                    job["attempt"] += 1
                    running[start(job)] = job
                elif code == EXIT_ALREADY_RUNNING:  # another runner has it: not a failure
                    finish(job["id"], "cancelled", exit_reason(code, last))
                else:
                    if code == EXIT_REQUEUE:
                        last = "stopped for requeue too many times"
                    finish(job["id"], "failed", exit_reason(code, last))
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        mark_interrupted(store, [*(job["id"] for job in running.values()), *waiting])
        raise
    finally:
        bar.close()
    return final
