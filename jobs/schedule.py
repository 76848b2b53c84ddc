"""The optimiser's schedule: the learning rate at any point of a run, the parameter groups
(with or without weight decay) and the modules a transfer job freezes."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import resnest
from jobs.recipe import Recipe


def warmup_epochs(recipe: Recipe, steps_per_epoch: int | None = None) -> float:
    """How long the warm-up lasts, in epochs: the recipe's ``warmup_epochs``, but at least
    ``warmup_steps`` optimizer steps where an epoch has few of them (a small data set at a
    large batch: two epochs of five steps warm nothing up), and never past a quarter of the
    run (a two-epoch run of a recipe written for forty would otherwise never leave its
    warm-up; fast schedules peak early, as the CIFAR-10 speed records' do)."""
    warm = float(recipe.warmup_epochs)
    if recipe.warmup_steps and steps_per_epoch:
        warm = max(warm, recipe.warmup_steps / steps_per_epoch)
    return min(warm, recipe.epochs / 4)


def lr_factor(recipe: Recipe, epoch: float, steps_per_epoch: int | None = None) -> float:
    """Multiplier of the base lr at fractional ``epoch`` (``epoch + step / steps``)."""
    warmup = warmup_epochs(recipe, steps_per_epoch)
    if recipe.schedule == "multistep":
        factor = recipe.gamma ** sum(1 for m in recipe.milestones if int(epoch) >= m)
    elif recipe.schedule == "step":
        factor = recipe.gamma ** (int(epoch) // recipe.step_size)
    elif recipe.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(epoch / recipe.epochs, 1.0)))
    else:  # onecycle: linear warm-up to the peak, then linear decay to zero
        if epoch < warmup:
            return max(epoch / max(warmup, 1e-9), 0.01)
        rest = max(recipe.epochs - warmup, 1e-9)
        return max(1.0 - (epoch - warmup) / rest, 0.0)
    if warmup > 0 and epoch < warmup:
        factor *= max(epoch / warmup, 0.01)
    return factor


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not recipe.no_decay_norm_bias:
        return [{"params": [p for _, p in trainable], "weight_decay": recipe.weight_decay}]
    # One-dimensional tensors are BN scales and shifts and biases.
    decay = [p for _, p in trainable if p.ndim > 1]
    no_decay = [p for _, p in trainable if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def frozen_modules(model: resnest.ResNeSt, policy: str) -> list[nn.Module]:
    if policy == "none":
        return []
    stem = [model.conv1, model.bn1]
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    if policy == "backbone":
        return stem + stages
    return stem + stages[: int(policy)]


def optimizer_for(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD over the model's trainable parameters, at the recipe's (scaled) base lr."""
    return torch.optim.SGD(
        param_groups(model, recipe),
        lr=recipe.scaled_lr(),
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
    )
