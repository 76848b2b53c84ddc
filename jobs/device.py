"""The device a job runs on, resolved in one place for every stage.

``auto`` is the first CUDA device where one is visible, else the CPU. A CUDA device is checked
against this torch's architectures (``jobs.gpu_arch``) before anything runs on it, so a GPU
the build cannot run is one line at once, not a kernel-image crash later.
"""

from __future__ import annotations

import os

import torch

from jobs import gpu_arch
from records.errors import UserError


class DeviceError(UserError):
    """A device that was asked for and is not here."""


def resolve(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for ``requested`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``); a plain
    ``cuda`` is the local rank's GPU, which becomes the current CUDA device."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:  # torch's own message is a paragraph of device types
        raise DeviceError(
            f"device {requested!r}: not a device (auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} was asked for, but no CUDA device is visible")
    count = torch.cuda.device_count()
    if device.index is None:
        device = torch.device("cuda", local_rank % count)
    elif device.index >= count:  # torch would fail later, deep in a call, with a traceback
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise DeviceError(
            f"device {requested!r} was asked for, but {count} CUDA device(s) are visible "
            f"(cuda:0 to cuda:{count - 1}"
            + (f"; CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")
            + ")"
        )
    gpu_arch.check(device)
    torch.cuda.set_device(device)
    return device
