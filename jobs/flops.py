"""What a training job's GPU computes: the network's forward FLOPs per image at the job's
input size, and the math mode they run in, from which each epoch's achieved TFLOP/s follows
(images/s x 3 x forward FLOPs: the backward pass costs about twice the forward) and the
tables' fraction of the GPU's peak (``harness.peaks``)."""

from __future__ import annotations

import torch

from records.kinds import achieved_tflops
from resnest.summary import count_flops

__all__ = ["achieved_tflops", "forward_flops", "math_mode"]


def forward_flops(model: torch.nn.Module, image_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one image (convolutions and matrix products, 2 x
    multiply-adds: ``resnest.summary.count_flops``)."""
    return int(count_flops(model, (1, *image_shape)))


def math_mode(device: torch.device, bf16: bool) -> str:
    """``bf16`` under autocast; ``tf32`` where cuDNN may run the convolutions (nearly all of a
    ResNeSt's FLOPs) in TF32, on a GPU of compute capability 8 or later; else ``fp32``."""
    if device.type != "cuda":
        return "fp32"
    if bf16:
        return "bf16"
    major, _ = torch.cuda.get_device_capability(device)
    return "tf32" if major >= 8 and torch.backends.cudnn.allow_tf32 else "fp32"
