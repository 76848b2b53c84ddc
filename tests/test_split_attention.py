"""Split-attention semantics against a literal transcription of the official algorithm."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from resnest import RadixSoftmax, SplitAttention

from .conftest import randomize_


def official_split_attention(sa: SplitAttention, x: torch.Tensor) -> torch.Tensor:
    """The official ResNeSt SplAtConv2d.forward, written with torch.split and Python sums,
    using the weights of ``sa``."""
    radix, cardinality = sa.radix, sa.rsoftmax.cardinality
    x = F.relu(sa.bn0(sa.conv(x)))
    batch, rchannel = x.shape[:2]
    if radix > 1:
        splited = torch.split(x, rchannel // radix, dim=1)
        gap = sum(splited)
    else:
        gap = x
    gap = F.adaptive_avg_pool2d(gap, 1)
    gap = F.relu(sa.bn1(sa.fc1(gap)))
    atten = sa.fc2(gap)
    if radix > 1:
        atten = atten.view(batch, cardinality, radix, -1).transpose(1, 2)
        atten = F.softmax(atten, dim=1).reshape(batch, -1)
    else:
        atten = torch.sigmoid(atten)
    atten = atten.view(batch, -1, 1, 1)
    if radix > 1:
        attens = torch.split(atten, rchannel // radix, dim=1)
        return sum(a * s for a, s in zip(attens, splited, strict=True))
    return atten * x


@pytest.mark.parametrize(
    "radix,cardinality,stride", [(1, 1, 1), (2, 1, 1), (2, 1, 2), (2, 2, 1), (4, 2, 2), (3, 4, 1)]
)
def test_matches_official_algorithm(radix, cardinality, stride):
    sa = randomize_(
        SplitAttention(48, 48, 3, stride=stride, cardinality=cardinality, radix=radix)
    ).eval()
    x = torch.randn(3, 48, 9, 9)
    with torch.no_grad():
        expected = official_split_attention(sa, x)
        got = sa(x)
    assert got.shape == (3, 48, 9 // stride + (9 % stride > 0), 9 // stride + (9 % stride > 0))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_layer_shapes_follow_the_definition():
    sa = SplitAttention(64, 64, 3, cardinality=2, radix=2)
    assert sa.conv.out_channels == 64 * 2
    assert sa.conv.groups == 2 * 2
    assert sa.conv.bias is None
    assert isinstance(sa.bn0, nn.BatchNorm2d) and sa.bn0.num_features == 128
    # fc1: from the summed split (channels) to max(in_channels * radix // 4, 32), with bias.
    assert (sa.fc1.in_channels, sa.fc1.out_channels, sa.fc1.groups) == (64, 32, 2)
    assert sa.fc1.bias is not None
    assert (sa.fc2.in_channels, sa.fc2.out_channels, sa.fc2.groups) == (32, 128, 2)
    assert SplitAttention(256, 256, radix=2).fc1.out_channels == 128
    assert SplitAttention(16, 16, radix=1).fc1.out_channels == 32


def test_radix_softmax_is_radix_major_and_sums_to_one():
    rs = RadixSoftmax(radix=3, cardinality=2)
    # Input laid out [cardinality][radix][channels]; output [radix][cardinality][channels].
    x = torch.randn(5, 2 * 3 * 4)
    out = rs(x).view(5, 3, 2, 4)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(5, 2, 4))
    expected = F.softmax(x.view(5, 2, 3, 4), dim=2).transpose(1, 2)
    torch.testing.assert_close(out, expected)


def test_radix_one_is_a_sigmoid_gate():
    x = torch.randn(4, 16)
    torch.testing.assert_close(RadixSoftmax(1, 1)(x), torch.sigmoid(x))


def test_radix_zero_is_refused():
    with pytest.raises(ValueError, match="radix >= 1"):
        SplitAttention(8, 8, radix=0)
