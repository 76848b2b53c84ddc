"""ResNeSt model zoo: split-attention convolution, bottleneck and basic blocks, named configs."""

from resnest.blocks import BasicBlock, Bottleneck
from resnest.network import STEMS, ResNeSt
from resnest.registry import ModelConfig, create, get_config, list_models, register
from resnest.split_attn import RadixSoftmax, SplitAttention

__all__ = [
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ModelConfig",
    "RadixSoftmax",
    "ResNeSt",
    "SplitAttention",
    "create",
    "get_config",
    "list_models",
    "register",
]
