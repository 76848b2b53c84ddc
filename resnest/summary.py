"""Model size and compute: parameters, fp32 weight bytes, FLOPs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """FLOPs of one forward pass in eval mode, counted as 2 x multiply-adds.

    Counts convolutions and matrix products (PyTorch's ``FlopCounterMode``); pooling,
    normalisation and activations are not counted, the usual convention for ResNets.
    A model on the meta device is counted without running any arithmetic.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


@dataclass(frozen=True)
class ModelSummary:
    name: str
    block: str
    stages: tuple[int, ...]
    radix: int
    parameters: int
    mflops_32: float
    mflops_224: float
    fp32_mb: float
    description: str


def summarize(name: str, num_classes: int = 10) -> ModelSummary:
    """Size and compute of a registered model, built on the meta device (no memory, fast)."""
    from resnest.registry import create, get_config

    config = get_config(name)
    with torch.device("meta"):
        model = create(name, num_classes=num_classes)
    params = count_parameters(model)
    return ModelSummary(
        name=name,
        block=config.block,
        stages=tuple(config.layers),
        radix=config.radix,
        parameters=params,
        mflops_32=count_flops(model, (1, 3, 32, 32)) / 1e6,
        mflops_224=count_flops(model, (1, 3, 224, 224)) / 1e6,
        fp32_mb=params * 4 / 1e6,
        description=config.description,
    )
