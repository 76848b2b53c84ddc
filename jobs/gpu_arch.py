"""GPU architecture preflight: does this torch build carry kernels for this GPU?

A CUDA build of torch holds machine code (``sm_XY``) for some GPU generations and, in some
builds, PTX (``compute_XY``) that the driver compiles for newer ones. A GPU the build does
not cover starts the job and then dies at its first kernel with "no kernel image is
available". The study's GPUs are exactly the ones today's builds drop: K80 (3.7), P100 (6.0),
V100 (7.0). So a job checks before it builds anything and stops with one line that names the
GPU, its capability, the build's list and what would run there.

The rules (CUDA's compatibility): machine code for ``sm_XY`` runs on a GPU of the same major
version X and minor at least Y (``sm_80`` runs on 8.6, not on 9.0); an architecture-specific
target (``sm_90a``) only on that exact capability; PTX for ``compute_XY`` on any capability
at or above X.Y.
"""

from __future__ import annotations

import re

from records.errors import UserError

# Which torch builds run where (PyTorch's release matrix for 2.10-2.14; CUDA 13 and 12.8 no
# longer compile for Maxwell, Pascal or Volta; no current build compiles for Kepler).
ADVICE = {
    (3, 0): "no current torch build has kernels for Kepler (sm_3x); CUDA 11 was the last "
    "toolkit to compile for it, so only a torch built from source against CUDA 11 runs here",
    (5, 0): "install a CUDA 12.6 build of torch (pip install torch --index-url "
    "https://download.pytorch.org/whl/cu126; torch 2.14 is the last with one), which keeps "
    "sm_50, sm_60 and sm_70",
    (7, 5): "install a torch build for a CUDA release that supports this GPU",
    (10, 0): "install a CUDA 12.8 or 13.0 build of torch (pip's default, or --index-url "
    "https://download.pytorch.org/whl/cu128), which has sm_100 and sm_120",
}


class GpuArchError(UserError):
    """The torch build has no kernels for this GPU."""


_ARCH = re.compile(r"^(sm|compute)_(\d+)(\d)([a-z]?)$")


def runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build with ``arch_list`` (``torch.cuda.get_arch_list()``) has code that runs
    on a GPU of ``capability`` (``torch.cuda.get_device_capability()``)."""
    for entry in arch_list:
        match = _ARCH.match(entry)
        if not match:
            continue
        kind, major, minor, suffix = match[1], int(match[2]), int(match[3]), match[4]
        if kind == "compute":
            if (major, minor) <= capability:
                return True
        elif suffix:
            if (major, minor) == capability:
                return True
        elif major == capability[0] and minor <= capability[1]:
            return True
    return False


def advice(capability: tuple[int, int]) -> str:
    return ADVICE[max(k for k in ADVICE if k <= capability or k == (3, 0))]


def message(
    index: int, name: str, capability: tuple[int, int], arch_list: list[str], version: str
) -> str:
    cap = f"{capability[0]}.{capability[1]}"
    return (
        f"GPU {index} ({name}, compute capability {cap}): this torch ({version}) has kernels "
        f"only for {' '.join(arch_list)}: {advice(capability)}"
    )


def check(device) -> None:
    """Raise GpuArchError when ``device`` is a CUDA GPU this torch build cannot run on."""
    import torch

    if device.type != "cuda":
        return
    capability = tuple(torch.cuda.get_device_capability(device))
    arch_list = torch.cuda.get_arch_list()
    if arch_list and not runs_on(capability, arch_list):
        name = torch.cuda.get_device_name(device)
        index = device.index or 0
        raise GpuArchError(message(index, name, capability, arch_list, torch.__version__))
