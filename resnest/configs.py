"""Named network configurations. Plain data, no torch: the harness reads it on a login node."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    name: str
    description: str
    block: str
    layers: tuple[int, int, int, int]
    radix: int = 2
    cardinality: int = 1
    bottleneck_width: int = 64
    base_width: int = 64
    stem: str = "deep"
    stem_width: int = 32
    avg_down: bool = True
    avd: bool = True
    avd_first: bool = False

    def network_kwargs(self) -> dict[str, Any]:
        kwargs = asdict(self)
        del kwargs["name"], kwargs["description"]
        return kwargs


_REGISTRY: dict[str, ModelConfig] = {}


def register(config: ModelConfig) -> ModelConfig:
    if config.name in _REGISTRY:
        raise ValueError(f"model {config.name!r} is already registered")
    _REGISTRY[config.name] = config
    return config


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None


# The study's two networks: radix 2, cardinality 1, width 64, deep stem of width 32, avg_down
# shortcuts and avd. The bottleneck one is the official ResNeSt-50.
_RESNEST50 = dict(
    radix=2, cardinality=1, bottleneck_width=64, stem="deep", stem_width=32, avg_down=True, avd=True
)

register(
    ModelConfig(
        name="resnest50_bottleneck",
        description="ResNeSt-50, official bottleneck blocks with split attention",
        block="bottleneck",
        layers=(3, 4, 6, 3),
        **_RESNEST50,
    )
)
register(
    ModelConfig(
        name="resnest50_basic",
        description="the study's ResNeSt-50 with split attention in basic blocks",
        block="basic",
        layers=(3, 4, 14, 3),
        **_RESNEST50,
    )
)
register(
    ModelConfig(
        name="resnet50d_bottleneck",
        description="baseline: resnest50_bottleneck with radix 0 (plain 3x3 conv)",
        block="bottleneck",
        layers=(3, 4, 6, 3),
        **{**_RESNEST50, "radix": 0},
    )
)
register(
    ModelConfig(
        name="resnet50d_basic",
        description="baseline: resnest50_basic with radix 0 (plain 3x3 conv + BN)",
        block="basic",
        layers=(3, 4, 14, 3),
        **{**_RESNEST50, "radix": 0},
    )
)

# Small members of the family for smoke runs and CPU tests: one block per stage, an eighth of
# the width, and the CIFAR stem (no early downsampling, so 32x32 inputs are not wasted).
_TINY = dict(
    radix=2,
    cardinality=1,
    bottleneck_width=64,
    base_width=8,
    stem="cifar",
    stem_width=8,
    avg_down=True,
    avd=True,
)
register(
    ModelConfig(
        name="resnest_tiny_bottleneck",
        description="smoke-size ResNeSt: bottleneck blocks [1, 1, 1, 1], width 8, CIFAR stem",
        block="bottleneck",
        layers=(1, 1, 1, 1),
        **_TINY,
    )
)
register(
    ModelConfig(
        name="resnest_tiny_basic",
        description="smoke-size ResNeSt: basic blocks [1, 1, 1, 1], width 8, CIFAR stem",
        block="basic",
        layers=(1, 1, 1, 1),
        **_TINY,
    )
)
