"""The ResNeSt network: a stem, four stages of residual blocks, pooling and a linear head.

Module names follow the official ResNeSt code (``conv1``, ``bn1``, ``layer1``..``layer4``,
``fc``), so official and timm checkpoints load by name.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from resnest.blocks import BLOCKS, BasicBlock, Bottleneck, avg_down_shortcut, strided_shortcut

StemKind = Literal["deep", "classic", "cifar"]
BlockKind = Literal["bottleneck", "basic"]
STEMS: tuple[str, ...] = ("deep", "classic", "cifar")


def make_stem(
    kind: str, stem_width: int, in_chans: int = 3, width: int = 64
) -> tuple[nn.Module, int, nn.Module]:
    """Return ``(conv1, out_channels, pool)``: the convolutions before ``bn1`` and the pool after.

    ``deep``: three 3x3 convs (the first with stride 2) and a 3x3 max pool, as in ResNet-D and
    the study; 32x32 inputs reach the first stage at 8x8. ``classic``: one 7x7 conv with stride
    2 and the max pool. ``cifar``: one 3x3 conv with stride 1 and no pool, so 32x32 inputs
    reach the first stage at full resolution. The last two put out ``width`` channels.
    """
    if kind == "deep":
        conv1: nn.Module = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_width * 2, 3, stride=1, padding=1, bias=False),
        )
        return conv1, stem_width * 2, nn.MaxPool2d(3, stride=2, padding=1)
    if kind == "classic":
        conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        return conv1, width, nn.MaxPool2d(3, stride=2, padding=1)
    if kind == "cifar":
        conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        return conv1, width, nn.Identity()
    raise ValueError(f"unknown stem {kind!r}; expected one of {', '.join(STEMS)}")


class ResNeSt(nn.Module):
    """ResNet family network with split-attention blocks (radix >= 1) or plain ones (radix 0)."""

    def __init__(
        self,
        block: BlockKind = "bottleneck",
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        base_width: int = 64,
        stem: StemKind = "deep",
        stem_width: int = 32,
        avg_down: bool = True,
        avd: bool = True,
        avd_first: bool = False,
        last_gamma: bool = False,
        drop_rate: float = 0.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {', '.join(BLOCKS)}")
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stage depths, got {list(layers)}")
        block_cls = BLOCKS[block]
        self.num_classes = num_classes
        self.block_kind = block

        self.conv1, channels, self.maxpool = make_stem(stem, stem_width, in_chans, base_width)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

        block_args = dict(
            radix=radix,
            cardinality=cardinality,
            bottleneck_width=bottleneck_width,
            avd=avd,
            avd_first=avd_first,
            last_gamma=last_gamma,
        )
        stages = []
        widths = (base_width, base_width * 2, base_width * 4, base_width * 8)
        if len(layers) != len(widths):
            raise ValueError(f"layers: expected {len(widths)} stage depths, got {list(layers)}")
        # zip without strict=: the network also runs in Python 3.9 (torch 1.10.2's interpreter,
        # for the deployment bench's eager row of the study's era)
        for index, (planes, depth) in enumerate(zip(widths, layers)):  # noqa: B905
            stride = 1 if index == 0 else 2
            stage, channels = _make_stage(
                block_cls, channels, planes, depth, stride, avg_down, block_args
            )
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """Official initialisation: He-normal convs (fan-out), BN scale 1 and shift 0.

        The linear head keeps PyTorch's default, as in the official code.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # After the BN loop: the official code zeroes gamma in the block and then overwrites
        # it with ones here, which makes its last_gamma a no-op.
        for m in self.modules():
            if isinstance(m, (Bottleneck, BasicBlock)):
                m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head: what transfer learning starts from."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)


def _make_stage(
    block_cls: type[Bottleneck] | type[BasicBlock],
    in_channels: int,
    planes: int,
    depth: int,
    stride: int,
    avg_down: bool,
    block_args: dict,
) -> tuple[nn.Sequential, int]:
    out_channels = planes * block_cls.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        shortcut = avg_down_shortcut if avg_down else strided_shortcut
        downsample = shortcut(in_channels, out_channels, stride)
    blocks = [block_cls(in_channels, planes, stride, downsample, **block_args)]
    blocks += [block_cls(out_channels, planes, **block_args) for _ in range(1, depth)]
    return nn.Sequential(*blocks), out_channels
