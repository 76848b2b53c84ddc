"""ResNeSt model zoo: split-attention convolution, bottleneck and basic blocks, named configs.

The named configurations (``list_models``, ``get_config``) load without torch; the modules
and ``create`` load torch on first use.
"""

from importlib import import_module
from typing import Any

from resnest.configs import ModelConfig, get_config, list_models, register

_LAZY = {
    "BasicBlock": "resnest.blocks",
    "Bottleneck": "resnest.blocks",
    "STEMS": "resnest.network",
    "ResNeSt": "resnest.network",
    "create": "resnest.registry",
    "RadixSoftmax": "resnest.split_attn",
    "SplitAttention": "resnest.split_attn",
}

__all__ = ["ModelConfig", "get_config", "list_models", "register", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resnest' has no attribute {name!r}")
