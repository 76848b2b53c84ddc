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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.config import ClusterConfig, GpuType, JobEnvironment
from harness.launchers.base import (
    PREFIXES,
    Launcher,
    Row,
    environment_of,
    job_command,
    last_line,
    register,
    write_spec,
)
from harness.launchers.driver import Backend, Driver
from harness.planner import layout
from records.errors import UserError
from records.spec import EXIT_ALREADY_RUNNING, EXIT_DIVERGED, EXIT_OK, EXIT_USER_ERROR
from records.store import Store

PREFIX = PREFIXES["ray"]
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
    failure: str | None = None
    with _stderr_kept(enabled=address != "local") as kept:
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failure = first
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


def check_environments(config: ClusterConfig, jobs: list[Row]) -> None:
    """A DDP job runs in Ray Train's own worker processes, which no setup line or other
    python reaches: only ``env`` does (the task's runtime environment)."""
    for job in jobs:
        per_node, nodes = layout(config, job)
        environment = environment_of(config, job)
        if per_node * nodes > 1 and (environment.setup or environment.python):
            raise UserError(
                f"gpu_types.{job['gpu_type']}: setup and python reach one-GPU Ray jobs only; "
                f"a job of {per_node * nodes} GPUs runs in Ray Train's workers (give it env, "
                f"or use the SLURM launcher)"
            )


def check_nodes(nodes: int) -> None:
    """A job of N nodes places one worker per node at least N nodes apart: refuse it where
    the cluster has fewer alive nodes, or Ray would wait for them for ever."""
    import ray

    alive = sum(1 for node in ray.nodes() if node["Alive"])
    if nodes > alive:
        raise UserError(
            f"sweep.nodes: a job of {nodes} nodes, the Ray cluster has {alive} alive node(s)"
        )


def _uses_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def run_job_process(spec_path: str, environment: JobEnvironment | None = None) -> tuple[int, str]:
    """A one-GPU job, inside a Ray task: the job as a subprocess (after its GPU type's setup
    lines, in its python), logs in its folder."""
    folder = Path(spec_path).parent
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = job_command(environment or JobEnvironment(), spec_path)
    with open(folder / "stdout.log", "ab") as out, open(folder / "stderr.log", "ab") as err:
        code = subprocess.run(cmd, stdout=out, stderr=err, env=env).returncode
    return code, last_line(folder / "stderr.log")


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a DDP job: the process group is already formed."""
    import ray.train

    from jobs.run import execute_file

    context = ray.train.get_context()
    os.environ["LOCAL_RANK"] = str(context.get_local_rank())
    code, _ = execute_file(config["spec_path"])
    if code != EXIT_OK:
        raise RuntimeError(f"rank {context.get_world_rank()} ended with exit code {code}")


def run_job_trainer(
    spec_path: str,
    workers: int,
    use_gpu: bool,
    per_worker: dict[str, float],
    cpus: int,
    max_failures: int,
    placement: str = "PACK",
) -> tuple[int, str]:
    """A DDP job, inside a Ray task: a TorchTrainer with one worker per GPU, placed by
    ``placement`` (``STRICT_SPREAD``: one worker per node; ``SPREAD``: over the nodes)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    folder = Path(spec_path).parent
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"spec_path": spec_path},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={**per_worker, "CPU": cpus},
            placement_strategy=placement,
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


def placement_for(nodes: int, gpus_per_node: int) -> str:
    """Ray's placement strategy for a job's workers: as ``nodes`` asks, one worker per node
    where a node holds one GPU of the job (``STRICT_SPREAD``: the job waits until that many
    nodes have room), spread over the nodes where it holds several (``SPREAD``, best effort:
    Ray has no "N per node"), and packed on as few nodes as possible for a one-node job."""
    if nodes <= 1:
        return "PACK"
    return "STRICT_SPREAD" if gpus_per_node == 1 else "SPREAD"


class RayTasks(Backend):
    """The Driver's backend on Ray: a task per job (a TorchTrainer's for DDP jobs)."""

    def __init__(self, config: ClusterConfig, store: Store, direct: bool) -> None:
        import ray

        self.ray = ray
        self.config = config
        self.store = store
        self.direct = direct
        self.settings = config.launcher.ray
        self.use_gpu = _uses_gpus()
        # Ray's stubs type a remote function's .options().remote() by the function's own
        # arguments, and the tasks' resources by keyword: held as Any here.
        self.single: Any = ray.remote(run_job_process)
        self.trainer: Any = ray.remote(run_job_trainer)
        self.running: dict[Any, Row] = {}
        self.retries: dict[str, int] = {}

    def room(self) -> bool:
        return True  # Ray queues tasks until their resources are free

    def start(self, job: Row) -> None:
        spec_path = str(write_spec(self.store, job, direct=self.direct))
        gpu = self.config.gpu_types[job["gpu_type"]]
        per_gpu = resources_of(gpu)
        retries = self.settings.max_retries
        per_node, nodes = layout(self.config, job)
        if per_node * nodes == 1:
            ref = self.single.options(
                num_cpus=gpu.cpus_per_gpu, num_gpus=1 if self.use_gpu else 0, resources=per_gpu,
                max_retries=retries,
            ).remote(spec_path, environment_of(self.config, job))  # fmt: skip
        else:  # the trainer task only coordinates: its workers hold the resources
            # Its workers inherit the task's runtime environment: the GPU type's variables.
            env_vars = dict(environment_of(self.config, job).env)
            options = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
            ref = self.trainer.options(num_cpus=0, max_retries=retries, **options).remote(
                spec_path, per_node * nodes, self.use_gpu, per_gpu, gpu.cpus_per_gpu, retries,
                placement_for(nodes, per_node),
            )  # fmt: skip
        self.store.set_state(
            job["id"], "running", launcher_job_id=RayLauncher.prefix + ref.task_id().hex(),
            attempt=job["attempt"],
        )  # fmt: skip
        self.running[ref] = job

    def ended(self) -> list[tuple[Row, int, str]]:
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=1.0)
        done = []
        for ref in ready:
            job = self.running.pop(ref)
            try:
                code, last = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:  # the task itself was lost
                code, last = 1, str(exc).strip().splitlines()[0]
            done.append((job, code, last))
        if done:  # their records, from their outboxes, before their dependants start
            from harness.collect import collect

            collect(self.store, [job for job, _, _ in done], force=True)
        return done

    def retry(self, job: Row, code: int) -> bool:
        """Errors other than bad input, divergence or another runner holding the job run
        again, up to ``launcher.ray.max_retries`` times, from their checkpoint."""
        if code in NO_RETRY or self.retries.get(job["id"], 0) >= self.settings.max_retries:
            return False
        self.retries[job["id"]] = self.retries.get(job["id"], 0) + 1
        return True

    def stop(self) -> None:
        for ref in self.running:
            self.ray.cancel(ref, force=True)


@register("ray")
class RayLauncher(Launcher):
    """Jobs as Ray tasks, driven from this process; ``submit`` runs them to the end.
    ``cancel`` records the jobs as cancelled; the driving process stops its tasks at Ctrl-C."""

    @classmethod
    def describe(cls, gpu: Any, per_node: int, nodes: int) -> str:
        resources = {"CPU": gpu.cpus_per_gpu, "GPU": 1, **resources_of(gpu)}
        workers = per_node * nodes
        task = "a Ray task" if workers == 1 else f"{workers} Ray Train workers"
        what = f"{task}, each {resources}"
        return what + (f", {placement_for(nodes, per_node)}" if workers > 1 else "")

    def check(self, jobs: list[Row]) -> None:
        """Connect, and check that the cluster can run the jobs; nothing runs yet."""
        config = self.sweep_config()
        check_environments(config, jobs)
        connect(config.launcher.ray.address)
        shapes = [layout(config, job) for job in jobs]
        workers = max((per_node * nodes for per_node, nodes in shapes), default=1)
        check_gpu_types(config, {job["gpu_type"] for job in jobs}, workers)
        check_nodes(max((nodes for _, nodes in shapes), default=1))

    def submit(self, jobs: list[Row], progress: bool = True) -> dict[str, str]:
        self.check(jobs)
        for job in jobs:
            self.store.set_state(job["id"], "submitted", attempt=job["attempt"], reason=None)
        backend = RayTasks(self.config, self.store, self.direct)
        return Driver(self.store, jobs, backend, progress).run()
