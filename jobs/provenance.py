"""Where and with what an attempt ran: the provenance every result carries."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from jobs import telemetry
from records import packages
from records.spec import TrainSpec


def params_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def provenance(
    device: torch.device, spec: TrainSpec, gpus: list[dict[str, Any]], telemetry_note: str | None
) -> dict[str, Any]:
    """Where this attempt ran, and whether that is the GPU type the sweep asked for."""
    import socket
    from importlib.metadata import PackageNotFoundError, version

    try:
        code = version("resnest-bench")
    except PackageNotFoundError:
        code = "unknown"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "cudnn": str(cudnn or ""),
        "gpu_name": "",
        "gpu_uuid": "",
        "gpu_memory_total": None,
        "driver": "",
        "code_version": code,
        "telemetry": telemetry_note or "nvml",
        "gpu_type": spec.gpu_type,
        "expected_gpu": spec.expect_gpu,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_name"] = props.name
        info["gpu_uuid"] = str(getattr(props, "uuid", ""))
        info["gpu_memory_total"] = props.total_memory
    if gpus:  # NVML's view, which has the driver version
        info.update(
            gpu_name=gpus[0]["name"] or info["gpu_name"],
            gpu_uuid=gpus[0]["uuid"] or info["gpu_uuid"],
            gpu_memory_total=gpus[0]["memory_total"] or info["gpu_memory_total"],
            driver=gpus[0]["driver"],
        )
    for name in HARDWARE:  # the GPU's settings as NVML saw them (rank 0's first GPU)
        info[name] = gpus[0].get(name) if gpus else None
    info["nccl"] = nccl_version() if device.type == "cuda" else None
    info["cpu_model"], info["cpu_cores"] = cpu_model(), os.cpu_count()
    info["python"] = sys.executable
    info["code_commit"] = code_commit()
    names = installed_packages()
    info["packages_sha256"] = packages.digest(names)
    info["packages"] = packages.pack(names)  # the list whole, for history's diffs
    info["environment"] = environment_record(spec.environment, os.environ)
    match = telemetry.gpu_matches(spec.expect_gpu, info["gpu_name"], device.type)
    info["gpu_mismatch"] = None if match is None else not match
    return info


# The hardware settings of ``jobs.nvml.NvmlSource.settings``, kept in the provenance.
HARDWARE = ("power_limit_w", "default_power_limit_w", "ecc", "mig", "persistence", "pcie_gen",
            "pcie_gen_max", "pcie_width", "pcie_width_max")  # fmt: skip


def nccl_version() -> str | None:
    """The NCCL that torch was built with ("2.21.5"), None without it."""
    try:
        found = torch.cuda.nccl.version()
    except Exception:  # a build without NCCL
        return None
    return ".".join(map(str, found)) if isinstance(found, tuple) else str(found)


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``; the platform's word for it elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


_EXPORT = re.compile(r"(?:^|[;&|\s])export\s+([A-Za-z_][A-Za-z0-9_]*)=")


def environment_record(
    asked: dict[str, Any] | None, environ: Mapping[str, str]
) -> dict[str, Any] | None:
    """The GPU type's job environment as this process got it: the setup lines and python
    asked for, and the value here of every variable it sets (its ``env`` and each
    ``export NAME=`` of its setup lines)."""
    if not asked:
        return None
    names = dict.fromkeys(
        [*(m for line in asked.get("setup", []) for m in _EXPORT.findall(line)),
         *asked.get("env", {})]
    )  # fmt: skip
    return {
        "setup": list(asked.get("setup", [])),
        "python": asked.get("python"),
        "variables": {name: environ.get(name) for name in names},
    }


def code_commit() -> str | None:
    """The git commit of the code this job runs, with ``+dirty`` where its files differ from
    it; None where the code is not a git checkout (an installed release: see code_version)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def installed_packages() -> list[str]:
    """The installed distributions, ``name==version`` (names normalised), sorted."""
    from importlib.metadata import distributions

    return sorted(
        {f"{re.sub(r'[-_.]+', '-', d.metadata['Name'] or '').lower()}=={d.version}"
         for d in distributions()}
    )  # fmt: skip


def packages_digest() -> str:
    """A sha256 over the installed distributions (name==version, sorted): two jobs with the
    same digest ran on the same package set."""
    return packages.digest(installed_packages())
