"""The peak TFLOP/s of known GPUs, per math mode: what the fraction of peak (``mfu_pct``) of a
run is taken against, unless its GPU type in cluster.yaml names its own ``peak_tflops``.

Dense figures per GPU (NVML's device, one die of a K80 board), from NVIDIA's datasheets; where
a datasheet quotes tensor figures with 2:4 sparsity only, they are halved here. A math mode a
GPU does not have (TF32 and BF16 before Ampere) is None: no fraction of peak is given for it.
The math mode of a run is the job's (``jobs.flops.math_mode``): ``bf16`` under autocast,
``tf32`` where cuDNN's convolutions may use TF32 on a GPU that has it, else ``fp32``.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Peak(NamedTuple):
    fp32: float
    tf32: float | None
    bf16: float | None
    source: str


# (a fragment of NVML's name, lower case; the first that matches wins, the most specific first)
KNOWN: list[tuple[str, Peak]] = [
    ("k80", Peak(4.37, None, None, "Tesla K80 datasheet: 8.73 single precision per two-GPU board")),
    ("p100-sxm", Peak(10.6, None, None, "Tesla P100 datasheet, NVLink (SXM2) model")),
    ("p100", Peak(9.3, None, None, "Tesla P100 datasheet, PCIe model")),
    ("v100-sxm", Peak(15.7, None, None, "Tesla V100 datasheet, SXM2 model")),
    ("v100", Peak(14.0, None, None, "Tesla V100 datasheet, PCIe model")),
    ("t4", Peak(8.1, None, None, "Tesla T4 datasheet")),
    ("a100", Peak(19.5, 156.0, 312.0, "A100 datasheet (tensor figures dense)")),
    ("l40s", Peak(91.6, 183.0, 362.05, "L40S datasheet (tensor figures dense)")),
    ("h100 pcie", Peak(51.0, 378.0, 756.0, "H100 datasheet, PCIe model (sparse halved)")),
    ("h100 nvl", Peak(60.0, 417.5, 835.5, "H100 datasheet, NVL model (sparse halved)")),
    ("h100", Peak(67.0, 494.5, 989.5, "H100 datasheet, SXM model (sparse halved)")),
    ("h200 nvl", Peak(60.0, 417.5, 835.5, "H200 datasheet, NVL model (sparse halved)")),
    ("h200", Peak(67.0, 494.5, 989.5, "H200 datasheet, SXM model (sparse halved)")),
    ("b200", Peak(75.0, 1100.0, 2250.0, "HGX B200 datasheet, per GPU (sparse halved)")),
]


def known_peak(gpu_name: str | None) -> Peak | None:
    """The peak of the first known GPU whose name fragment begins a word of ``gpu_name``."""
    name = (gpu_name or "").lower()
    for fragment, peak in KNOWN:
        if re.search(rf"(?<![a-z0-9]){re.escape(fragment)}", name):
            return peak
    return None


def peak_tflops(gpu_name: str | None, math_mode: str | None) -> float | None:
    """The known peak of ``gpu_name`` in ``math_mode`` (fp32, tf32, bf16); None where the GPU
    is not known or lacks that mode (a CPU among them)."""
    peak = known_peak(gpu_name)
    if peak is None or math_mode not in ("fp32", "tf32", "bf16"):
        return None
    return getattr(peak, math_mode)
