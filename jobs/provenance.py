"""Where and with what an attempt ran: the provenance every result carries."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from jobs import telemetry
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
    match = telemetry.gpu_matches(spec.expect_gpu, info["gpu_name"], device.type)
    info["gpu_mismatch"] = None if match is None else not match
    return info
