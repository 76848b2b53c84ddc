"""Split-attention convolution (ResNeSt, Zhang et al. 2020).

Parameter names follow the official implementation (``conv``, ``bn0``, ``fc1``, ``bn1``,
``fc2``) so official and timm state dicts map onto this module by name.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class RadixSoftmax(nn.Module):
    """Softmax across the radix splits of each cardinal group; sigmoid when radix is 1.

    The attention vector comes out radix-major (``[radix][cardinality][channels]``), the same
    order in which the grouped convolution lays out its splits.
    """

    def __init__(self, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if self.radix > 1:
            x = x.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
            return F.softmax(x, dim=1).reshape(batch, -1)
        return torch.sigmoid(x)


class SplitAttention(nn.Module):
    """A grouped conv into ``radix`` splits, re-weighted by attention over the splits."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        cardinality: int = 1,
        radix: int = 2,
        reduction_factor: int = 4,
        min_inter_channels: int = 32,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if radix < 1:
            raise ValueError(f"split attention needs radix >= 1, got {radix}")
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.radix = radix
        self.channels = channels
        inter_channels = max(in_channels * radix // reduction_factor, min_inter_channels)

        self.conv = nn.Conv2d(
            in_channels,
            channels * radix,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=cardinality * radix,
            bias=bias,
        )
        self.bn0 = nn.BatchNorm2d(channels * radix)
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter_channels, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(inter_channels)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(inter_channels, channels * radix, 1, groups=cardinality)
        self.rsoftmax = RadixSoftmax(radix, cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        batch, _, height, width = x.shape
        if self.radix > 1:
            splits = x.reshape(batch, self.radix, self.channels, height, width)
            gap = splits.sum(dim=1)
        else:
            gap = x
        gap = gap.mean((2, 3), keepdim=True)
        gap = self.act1(self.bn1(self.fc1(gap)))
        attn = self.rsoftmax(self.fc2(gap))
        if self.radix > 1:
            attn = attn.reshape(batch, self.radix, self.channels, 1, 1)
            out = (splits * attn).sum(dim=1)
        else:
            out = x * attn.reshape(batch, self.channels, 1, 1)
        return out
