"""One process-group set-up for every way a job is started.

A single process, ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT),
SLURM tasks (SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, master on the first node of
SLURM_JOB_NODELIST) and Ray Train workers (which form the group before the job starts).
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from records.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm | preinitialised

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the rank layout from the environment the launcher left."""
    env = os.environ if environ is None else environ
    if dist.is_available() and dist.is_initialized():
        return DistEnv(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            source="preinitialised",
        )
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        job_id = int(env.get("SLURM_JOB_ID", 0))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"]),
            # A port per job, so that two jobs sharing a node do not collide.
            master_port=int(env.get("MASTER_PORT", 20000 + job_id % 20000)),
            source="slurm",
        )
    return DistEnv()


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[07-09,12],cpu3``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


# How long a rank waits in a collective (and at the rendezvous) for a peer that does not
# come: a rank whose node hangs or dies ends the job after this, instead of never.
TIMEOUT_ENV = "RESNEST_BENCH_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


class RendezvousError(UserError):
    """The ranks cannot meet: the message says where they were told to."""


def collective_timeout(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise RendezvousError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds above 0")
    return value


def check_master(env: DistEnv) -> None:
    """The master's address, resolved here as every rank resolves it; a name that does not
    resolve is one line naming it, not a rendezvous that waits for ever."""
    try:
        socket.getaddrinfo(env.master_addr, env.master_port)
    except (OSError, UnicodeError) as exc:
        raise RendezvousError(
            f"MASTER_ADDR {env.master_addr!r} (from {env.source}) does not resolve on "
            f"{socket.gethostname()}: {getattr(exc, 'strerror', None) or exc}"
        ) from None


def init_process_group(env: DistEnv, device: torch.device) -> float | None:
    """Form the process group; return the seconds the rendezvous took (None where there is
    none to form: one process, or a group Ray Train formed before the job began)."""
    if not env.distributed or dist.is_initialized():
        return None
    started = time.monotonic()
    check_master(env)
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        rank=env.rank,
        world_size=env.world_size,
        device_id=device if device.type == "cuda" else None,
        timeout=datetime.timedelta(seconds=collective_timeout()),
    )
    return time.monotonic() - started


def shutdown(env: DistEnv) -> None:
    """Barrier, then destroy the group: leaving without both aborts some runs at exit."""
    if env.distributed and env.source != "preinitialised" and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def hosts(env: DistEnv) -> list[str]:
    """The host name of every rank, in rank order (every rank must call this)."""
    name = socket.gethostname()
    if not env.distributed:
        return [name]
    names: list[str] = [""] * env.world_size
    dist.all_gather_object(names, name)
    return names
