"""Training recipes: the study's, exactly, and a fast one for modern GPUs.

A recipe is plain data (no torch): it travels in job specs and is printed in plans. Every
field can be overridden by name from a spec or the command line.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, fields, replace
from typing import Any

RECIPES = ("study", "fast")


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int  # per optimizer step, across all ranks
    lr: float
    accum_steps: int = 1  # micro-batches per rank and step (gradient accumulation)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    no_decay_norm_bias: bool = False
    schedule: str = "multistep"  # multistep | step | cosine | onecycle
    milestones: tuple[int, ...] = ()
    step_size: int = 30
    gamma: float = 0.1
    warmup_epochs: int = 0
    warmup_steps: int = 0  # the warm-up lasts at least this many steps (up to a quarter of the run)
    base_batch_size: int = 0  # > 0: lr is scaled linearly by batch_size / base_batch_size
    label_smoothing: float = 0.0
    # the last BN scale of every block starts at zero, so that each block starts as its
    # shortcut (the official ResNeSt's last_gamma, "zero-init residual"): a new network only,
    # and only where that BN is the block's last (not a split-attention basic block's)
    last_gamma: bool = False
    augment: bool = True
    pipeline: str = "device"  # device (whole set on the device) | torchvision (PIL workers)
    bf16: bool = False  # autocast to bfloat16 on CUDA
    # contiguous (NCHW) | channels_last | auto: the faster of the two on this device, timed
    # when the job starts (jobs.memory_format)
    memory_format: str = "contiguous"
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default, reduce-overhead, max-autotune
    # FIRST:LAST: a torch.profiler trace of those training steps on rank 0 (jobs.profiling)
    profile: str = ""

    def scaled_lr(self) -> float:
        if self.base_batch_size > 0:
            return self.lr * self.batch_size / self.base_batch_size
        return self.lr


STUDY_TRAIN = Recipe(
    epochs=250,
    batch_size=128,
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    schedule="multistep",
    milestones=(80, 210),
    gamma=0.1,
)
STUDY_TRANSFER = Recipe(
    epochs=200,
    batch_size=64,
    lr=0.001,
    momentum=0.9,
    weight_decay=0.0,
    schedule="step",
    step_size=60,
    gamma=0.1,
)
FAST_TRAIN = Recipe(
    epochs=40,
    batch_size=1024,
    lr=0.1,
    base_batch_size=256,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    no_decay_norm_bias=True,
    schedule="onecycle",
    warmup_epochs=2,
    warmup_steps=100,
    label_smoothing=0.1,
    bf16=True,
    memory_format="auto",
)
FAST_TRANSFER = replace(FAST_TRAIN, epochs=20, lr=0.01, weight_decay=0.0, warmup_epochs=1)

_RECIPES = {
    ("study", "train"): STUDY_TRAIN,
    ("study", "transfer"): STUDY_TRANSFER,
    ("fast", "train"): FAST_TRAIN,
    ("fast", "transfer"): FAST_TRANSFER,
}


class RecipeError(ValueError):
    pass


def get_recipe(name: str, stage: str = "train", overrides: dict[str, Any] | None = None) -> Recipe:
    if (name, stage) not in _RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
    return apply_overrides(_RECIPES[(name, stage)], overrides or {})


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    known = {f.name: f for f in fields(Recipe)}
    hints = typing.get_type_hints(Recipe)
    changes = {}
    for key, value in overrides.items():
        if key not in known:
            raise RecipeError(f"unknown recipe field {key!r}; known fields: {', '.join(known)}")
        changes[key] = _coerce(key, value, hints[key])
    result = replace(recipe, **changes)
    check(result)
    return result


CHOICES = {
    "pipeline": ("device", "torchvision"),
    "memory_format": ("contiguous", "channels_last", "auto"),
    "schedule": ("multistep", "step", "cosine", "onecycle"),
    "compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}
# Field -> (lowest, highest, whether the lowest itself is allowed); None: no bound.
RANGES = {
    "epochs": (1, None, True),
    "batch_size": (1, None, True),
    "lr": (0, None, True),  # 0: nothing changes, as a measurement may want
    "accum_steps": (1, None, True),
    "momentum": (0, 1, True),
    "weight_decay": (0, None, True),
    "step_size": (1, None, True),
    "gamma": (0, None, False),
    "warmup_epochs": (0, None, True),
    "warmup_steps": (0, None, True),
    "base_batch_size": (0, None, True),
    "label_smoothing": (0, 1, True),
}


def check(recipe: Recipe) -> None:
    """The recipe's schema: every value in its range. The harness runs the same check when a
    sweep is planned, so a value a job would refuse never reaches a queue."""
    for name, allowed in CHOICES.items():
        value = getattr(recipe, name)
        if value not in allowed:
            raise RecipeError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    for name, (low, high, low_ok) in RANGES.items():
        value = getattr(recipe, name)
        if not math.isfinite(value) or value < low or (value == low and not low_ok):
            bound = f"at least {low}" if low_ok else f"more than {low}"
            raise RecipeError(f"{name}: expected a number {bound}, got {value!r}")
        if high is not None and value >= high:
            raise RecipeError(f"{name}: expected a number below {high}, got {value!r}")
    if recipe.batch_size % recipe.accum_steps:
        raise RecipeError(
            f"batch_size: {recipe.batch_size} is not a multiple of accum_steps "
            f"({recipe.accum_steps})"
        )
    try:
        profile_window(recipe.profile)
    except ValueError as exc:
        raise RecipeError(f"profile: {exc}") from None
    steps = list(recipe.milestones)
    if any(m < 1 for m in steps) or steps != sorted(set(steps)):
        raise RecipeError(f"milestones: expected increasing epochs of at least 1, got {steps}")


def profile_window(text: str) -> tuple[int, int] | None:
    """``profile``'s ``FIRST:LAST`` as (first, last); None for ``""`` (off)."""
    if not text:
        return None
    found = re.fullmatch(r"(\d+):(\d+)", text)
    if found is None or int(found[1]) >= int(found[2]):
        raise ValueError(f"expected FIRST:LAST, steps with FIRST < LAST (e.g. 10:20), got {text!r}")
    return int(found[1]), int(found[2])


def _coerce(key: str, value: Any, hint: Any) -> Any:
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
        elif hint is int:
            if not isinstance(value, bool) and float(value).is_integer():
                return int(value)
        elif hint is float:
            if not isinstance(value, bool):
                return float(value)
        elif hint is str:
            if isinstance(value, str):
                return value
        elif typing.get_origin(hint) is tuple:
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(_coerce(key, v, int) for v in items)
    except (TypeError, ValueError):
        pass
    expected = "a list of int" if typing.get_origin(hint) is tuple else hint.__name__
    raise RecipeError(f"{key}: expected {expected}, got {value!r}")


def as_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)
