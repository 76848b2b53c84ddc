"""``create``: build a registered network."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from resnest.configs import get_config
from resnest.network import STEMS, ResNeSt


def create(
    name: str, num_classes: int = 1000, stem: str | None = None, **overrides: Any
) -> ResNeSt:
    """Build a registered network.

    ``stem`` swaps the stem (``deep``, ``classic`` or ``cifar``); any other keyword overrides
    the matching field of the configuration (``radix=0``, ``drop_rate=0.2``, ...).
    """
    config = get_config(name)
    if stem is not None:
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {', '.join(STEMS)}")
        config = replace(config, stem=stem)
    return ResNeSt(num_classes=num_classes, **{**config.network_kwargs(), **overrides})
