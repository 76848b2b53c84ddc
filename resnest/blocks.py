"""Residual blocks: the official ResNeSt bottleneck and the study's split-attention basic block.

Both take ``radix``: 0 puts a plain 3x3 convolution where split attention would be, which
gives the ResNet / ResNeXt baseline of the same network. Configuration decides which
submodules exist; ``forward`` runs the same straight line of modules in every case.
"""

from __future__ import annotations

from torch import Tensor, nn

from resnest.split_attn import SplitAttention


def avg_down_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """ResNet-D shortcut: average pool, then a 1x1 conv and BN (official ``avg_down``)."""
    pool: nn.Module = (
        nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        if stride > 1
        else nn.Identity()
    )
    return nn.Sequential(
        pool,
        nn.Conv2d(in_channels, out_channels, 1, stride=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def strided_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Classic ResNet shortcut: a strided 1x1 conv and BN."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _avd_pools(avd: bool, avd_first: bool, stride: int) -> tuple[nn.Module, nn.Module]:
    pool = nn.AvgPool2d(3, stride, padding=1)
    if not avd:
        return nn.Identity(), nn.Identity()
    return (pool, nn.Identity()) if avd_first else (nn.Identity(), pool)


def mid_conv(
    channels: int, stride: int, dilation: int, cardinality: int, radix: int
) -> tuple[nn.Module, nn.Module]:
    """The 3x3 convolution in the middle of a block and the norm after it: split attention
    (``radix`` >= 1; it normalises inside, so no norm follows) or, with ``radix=0``, a plain
    grouped conv and BN (the ResNet / ResNeXt baseline)."""
    if radix >= 1:
        conv = SplitAttention(
            channels, channels, 3, stride=stride, dilation=dilation, cardinality=cardinality,
            radix=radix,
        )  # fmt: skip
        return conv, nn.Identity()
    conv = nn.Conv2d(
        channels, channels, 3, stride=stride, padding=dilation, dilation=dilation,
        groups=cardinality, bias=False,
    )  # fmt: skip
    return conv, nn.BatchNorm2d(channels)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (split attention) -> 1x1 expand, with the official ResNeSt options.

    ``avd`` moves the stride out of the 3x3 conv into a 3x3 average pool, placed before the
    3x3 conv with ``avd_first`` and after it otherwise; it applies where the block strides or
    ``is_first`` is set. ``last_gamma`` zero-initialises the last BN's scale so the block
    starts as an identity.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        avd: bool = False,
        avd_first: bool = False,
        dilation: int = 1,
        is_first: bool = False,
        last_gamma: bool = False,
    ) -> None:
        super().__init__()
        group_width = int(planes * (bottleneck_width / 64.0)) * cardinality
        out_channels = planes * self.expansion
        use_avd = avd and (stride > 1 or is_first)
        conv_stride = 1 if use_avd else stride
        self.last_gamma = last_gamma

        self.conv1 = nn.Conv2d(in_channels, group_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.act1 = nn.ReLU(inplace=True)
        self.avd_first, self.avd_last = _avd_pools(use_avd, avd_first, stride)
        self.conv2, self.bn2 = mid_conv(group_width, conv_stride, dilation, cardinality, radix)
        self.act2 = nn.ReLU(inplace=True) if radix < 1 else nn.Identity()
        self.conv3 = nn.Conv2d(group_width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.act3 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        if self.last_gamma:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.avd_first(out)
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.avd_last(out)
        out = self.bn3(self.conv3(out))
        return self.act3(out + shortcut)


class BasicBlock(nn.Module):
    """The study's basic block: 3x3 conv -> BN -> ReLU -> split-attention 3x3 -> avd -> add.

    There is no BN after the split-attention output (its attention-weighted sum is already
    normalised inside). With ``radix=0`` the second 3x3 is a plain conv followed by BN,
    which is the ResNet basic block.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        radix: int = 2,
        cardinality: int = 1,
        bottleneck_width: int = 64,
        avd: bool = False,
        avd_first: bool = False,
        dilation: int = 1,
        is_first: bool = False,
        last_gamma: bool = False,
    ) -> None:
        super().__init__()
        del bottleneck_width, avd_first  # a basic block has no bottleneck to widen
        use_avd = avd and (stride > 1 or is_first)
        conv_stride = 1 if use_avd else stride
        self.last_gamma = last_gamma

        self.conv1 = nn.Conv2d(
            in_channels, planes, 3, stride=1, padding=dilation, dilation=dilation, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = mid_conv(planes, conv_stride, dilation, cardinality, radix)
        self.avd_last = nn.AvgPool2d(3, stride, padding=1) if use_avd else nn.Identity()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.act2 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        if self.last_gamma and isinstance(self.bn2, nn.BatchNorm2d):
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.avd_last(out)
        return self.act2(out + shortcut)


BLOCKS: dict[str, type[Bottleneck] | type[BasicBlock]] = {
    "bottleneck": Bottleneck,
    "basic": BasicBlock,
}
