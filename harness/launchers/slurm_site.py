"""What the SLURM site is and allows, read before submitting: its GPU types (``sinfo``), the
sbatch options of a GPU type, ``MaxArraySize`` and the submission limits that apply to the
user (``scontrol show config``, ``sacctmgr``), and which jobs fit in the room left."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness.config import ClusterConfig, GpuType
from harness.launchers.base import Row
from records.errors import UserError


def _run(cmd: list[str], timeout: float = 60) -> str:
    if shutil.which(cmd[0]) is None:
        raise UserError(f"{cmd[0]}: not found; the SLURM launcher needs the SLURM client tools")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"{cmd[0]}: no answer from SLURM within {timeout:.0f} s") from None
    if out.returncode != 0:
        message = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"{' '.join(cmd[:2])}: {message}")
    return out.stdout


# -- before submitting: does the cluster have what the sweep asks for? ----------------------


def cluster_resources() -> dict[str, set[str]]:
    """Partition -> the gres of its nodes (``gpu:v100``, ...); the default partition is also
    listed under ``""``."""
    found: dict[str, set[str]] = defaultdict(set)
    for line in _run(["sinfo", "-h", "-o", "%P|%G"]).splitlines():
        partition, _, gres = line.strip().partition("|")
        names = set()
        for item in re.split(r",(?![^(]*\))", gres):
            parts = item.split("(")[0].split(":")
            if parts[0] and parts[0] != "(null)":
                names.add(parts[0])
                if len(parts) >= 3 or (len(parts) == 2 and not parts[1].isdigit()):
                    names.add(f"{parts[0]}:{parts[1]}")
        if partition.endswith("*"):
            partition = partition[:-1]
            found[""] |= names
        found[partition] |= names
    return dict(found)


def check_gpu_types(config: ClusterConfig, used: set[str]) -> None:
    """Refuse, before anything is submitted, GPU types the cluster cannot run."""
    resources = cluster_resources()
    partitions = sorted(p for p in resources if p)
    for name in sorted(used):
        gpu = config.gpu_types[name]
        partition = gpu.partition or ""
        if partition not in resources:
            raise UserError(
                f"gpu_types.{name}: the SLURM cluster has no partition {partition!r} "
                f"(it has {', '.join(partitions)})"
            )
        if gpu.gres:
            wanted = ":".join(gpu.gres.split(":")[:2])
            if wanted not in resources[partition]:
                where = f"partition {partition}" if partition else "the default partition"
                have = ", ".join(sorted(r for r in resources[partition] if ":" in r)) or "none"
                raise UserError(
                    f"gpu_types.{name}: the SLURM cluster has no {wanted} in {where} "
                    f"(gres there: {have})"
                )


# -- submission -----------------------------------------------------------------------------


def _minutes(limit: str | None) -> int | None:
    """A SLURM time limit in whole minutes (seconds round up). SLURM's forms: ``M``,
    ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    if limit is None:
        return None
    days, dash, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if dash:
        hours, minutes, seconds = (*parts, 0, 0)[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, minutes, seconds = 0, parts[0], (parts[1] if len(parts) == 2 else 0)
    return int(days or 0) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)


def sbatch_parameters(gpu: GpuType, gpus_per_node: int, nodes: int) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one job of this GPU type."""
    params: dict[str, Any] = {
        "nodes": nodes,
        "ntasks_per_node": gpus_per_node,
        "cpus_per_task": gpu.cpus_per_gpu,
    }
    extra: dict[str, Any] = {}
    if gpu.partition:
        params["partition"] = gpu.partition
    if gpu.gres:
        params["gres"] = f"{gpu.gres}:{gpus_per_node}"
    if gpu.constraint:
        params["constraint"] = gpu.constraint
    if gpu.account:
        params["account"] = gpu.account
    if gpu.qos:
        params["qos"] = gpu.qos
    # Without a time in cluster.yaml the partition's default applies (not submitit's 5 min).
    params["time"] = _minutes(gpu.time)
    if gpu.mem_per_gpu:
        params["mem_per_gpu"] = gpu.mem_per_gpu
    if gpus_per_node * nodes > 1:
        # A rank that fails takes the step down: its peers would otherwise wait in a
        # collective (up to the job's collective timeout) on a rank that is gone.
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    params["additional_parameters"] = extra
    return params


def fit(jobs: list[Row], room: int) -> set[str]:
    """The ids of the first ``room`` jobs (in dependency order) that can go out now: a job
    whose parent in ``jobs`` stays behind stays behind too."""
    ids = {job["id"] for job in jobs}
    chosen: set[str] = set()
    for job in jobs:
        if len(chosen) >= room:
            break
        if all(p in chosen for p in job["depends_on"] or [] if p in ids):
            chosen.add(job["id"])
    return chosen


def submit_room(config: ClusterConfig) -> tuple[int | None, str]:
    """How many more jobs this user may queue now (None: no limit known), and the limit that
    says so: the tightest of ``launcher.slurm.max_queued`` and, where the site enforces limits
    (AccountingStorageEnforce), the user's association's MaxSubmit/GrpSubmit and the
    MaxSubmitPU/GrpSubmit of the QOS the GPU types name (else the association's default).
    Jobs count as SLURM counts them, array tasks one by one: all the user's jobs against the
    association's limits and ``max_queued``, a QOS's own jobs against the QOS's."""
    limits = site_limits(config)
    if config.launcher.slurm.max_queued:
        limits.append((config.launcher.slurm.max_queued, "launcher.slurm.max_queued", None))
    if not limits:
        return None, ""
    rooms = []
    for limit, source, qos in limits:
        cmd = ["squeue", "-h", "-r", "-u", _user(), "-o", "%i", *(["-q", qos] if qos else [])]
        queued = len(_run(cmd).split())
        rooms.append((max(0, limit - queued), f"{limit} queued jobs per user ({source})"))
    return min(rooms)


def site_limits(config: ClusterConfig) -> list[tuple[int, str, str | None]]:
    """(limit, where it is set, the QOS it counts or None for all the user's jobs) of the
    submission limits SLURM enforces for this user."""
    enforce = _slurm_config().get("AccountingStorageEnforce", "none")
    if not any(word in enforce for word in ("limits", "qos", "associations")):
        return []
    found: list[tuple[int, str, str | None]] = []
    asks = (["sacctmgr", "-nP", "show", "assoc", "where", f"user={_user()}",
             "format=MaxSubmit,GrpSubmit,DefaultQOS"],
            ["sacctmgr", "-nP", "show", "qos", "format=Name,MaxSubmitPU,GrpSubmit"])  # fmt: skip
    try:  # both at once: each is a round trip to slurmdbd
        with ThreadPoolExecutor(2) as pool:
            assocs, qos_table = pool.map(lambda cmd: _run(cmd, timeout=30), asks)
    except UserError:  # no accounting to ask: sbatch itself will say
        return []
    default_qos = "normal"
    for line in assocs.splitlines():
        max_submit, grp_submit, default = [*line.split("|"), "", "", ""][:3]
        default_qos = default or default_qos
        for value, name in ((max_submit, "MaxSubmit"), (grp_submit, "GrpSubmit")):
            if value.isdigit():
                found.append((int(value), f"the association's {name}", None))
    wanted = {gpu.qos or default_qos for gpu in config.gpu_types.values()}
    for line in qos_table.splitlines():
        name, per_user, group = [*line.split("|"), "", ""][:3]
        if name in wanted:
            for value, field in ((per_user, "MaxSubmitPU"), (group, "GrpSubmit")):
                if value.isdigit():
                    found.append((int(value), f"QOS {name} {field}", name))
    return found


def _user() -> str:
    import getpass

    return getpass.getuser()


@functools.cache
def _slurm_config() -> dict[str, str]:
    """``scontrol show config`` as name -> value ({} where it cannot be read)."""
    try:
        out = _run(["scontrol", "show", "config"], timeout=30)
    except UserError:
        return {}
    found = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            found[name.strip()] = value.strip()
    return found


@functools.cache
def max_array_size() -> int:
    """The most tasks one array may have here: SLURM's ``MaxArraySize`` (task indices run
    from 0 to MaxArraySize - 1; sites set their own, SLURM's default is 1001), as
    ``scontrol show config`` gives it."""
    value = _slurm_config().get("MaxArraySize", "")
    return max(1, int(value)) if value.isdigit() else DEFAULT_MAX_ARRAY_SIZE


DEFAULT_MAX_ARRAY_SIZE = 1001
