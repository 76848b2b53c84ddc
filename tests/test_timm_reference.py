"""Numerical equivalence with an independent implementation: timm's resnest50d."""

import pytest
import torch

import resnest

from .conftest import randomize_

timm = pytest.importorskip("timm")


def test_resnest50_bottleneck_equals_timm_resnest50d():
    ours = randomize_(resnest.create("resnest50_bottleneck", num_classes=1000), seed=1).eval()
    reference = timm.create_model("resnest50d", pretrained=False, num_classes=1000).eval()
    # Same names on both sides: the mapping by name is the identity, and strict loading
    # proves that every tensor found its counterpart.
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, expected = ours(x), reference(x)
    assert got.shape == (2, 1000)
    assert expected.abs().max() > 0.1  # a meaningful signal, not all zeros
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # Odd sizes exercise the ceil-mode pooling of the avg_down shortcuts.
    x = torch.randn(2, 3, 97, 97, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)
