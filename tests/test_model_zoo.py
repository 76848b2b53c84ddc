"""The model zoo: exact sizes and compute, block and stem semantics, initialisation, registry."""

import math

import pytest
import torch
from torch import nn

import resnest
from resnest import BasicBlock, Bottleneck, SplitAttention
from resnest.summary import count_flops, count_parameters, summarize


@pytest.mark.parametrize(
    "name,num_classes,params,mflops32",
    [
        ("resnest50_bottleneck", 10, 25_454_730, 222.9),
        ("resnest50_basic", 10, 33_459_082, 303.9),
        ("resnest50_bottleneck", 1000, 27_483_240, None),
    ],
)
def test_study_networks_have_the_exact_size_and_compute(name, num_classes, params, mflops32):
    model = resnest.create(name, num_classes=num_classes)
    assert count_parameters(model) == params
    if mflops32 is not None:
        assert round(count_flops(model, (1, 3, 32, 32)) / 1e6, 1) == mflops32


def test_summary_on_meta_device_agrees_with_a_real_model():
    s = summarize("resnest50_basic", num_classes=10)
    assert s.parameters == 33_459_082
    assert round(s.mflops_32, 1) == 303.9
    assert s.fp32_mb == pytest.approx(33_459_082 * 4 / 1e6)
    # Compute grows with the pixel count: 224x224 has 49x the pixels of 32x32, and the
    # 32x32 network runs its last stage at 1x1, so the ratio is somewhat below 49.
    assert 40 < s.mflops_224 / s.mflops_32 < 49


def test_flop_counter_counts_two_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 3, 5, 5)) == 2 * 8 * 5 * 5 * 3 * 3 * 3


def test_registry_has_the_study_networks_and_their_radix0_baselines():
    names = resnest.list_models()
    study = ["resnest50_bottleneck", "resnest50_basic", "resnet50d_bottleneck", "resnet50d_basic"]
    assert set(study) <= set(names)
    for name in study:
        cfg = resnest.get_config(name)
        assert (cfg.cardinality, cfg.bottleneck_width, cfg.stem, cfg.stem_width) == (
            1,
            64,
            "deep",
            32,
        )
        assert cfg.avg_down and cfg.avd
    assert resnest.get_config("resnest50_bottleneck").layers == (3, 4, 6, 3)
    assert resnest.get_config("resnest50_basic").layers == (3, 4, 14, 3)
    for block in ("bottleneck", "basic"):
        base = resnest.get_config(f"resnet50d_{block}")
        assert base.radix == 0 and resnest.get_config(f"resnest50_{block}").radix == 2
        model = resnest.create(f"resnet50d_{block}", num_classes=10)
        assert not any(isinstance(m, SplitAttention) for m in model.modules())


def test_unknown_names_are_refused_with_the_known_ones_listed():
    with pytest.raises(KeyError, match="resnest50_basic"):
        resnest.create("resnest51")
    with pytest.raises(ValueError, match="deep, classic, cifar"):
        resnest.create("resnest50_basic", stem="tiny")


@pytest.mark.parametrize(
    "stem,stage1_size,has_pool", [("deep", 8, True), ("classic", 8, True), ("cifar", 32, False)]
)
def test_stems(stem, stage1_size, has_pool):
    model = resnest.create("resnest50_bottleneck", num_classes=10, stem=stem).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem_out = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        assert stem_out.shape == (2, 64, stage1_size, stage1_size)
        assert model(x).shape == (2, 10)
    assert isinstance(model.maxpool, nn.MaxPool2d) == has_pool
    if stem == "deep":
        convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
            (3, 32, (3, 3), (2, 2)),
            (32, 32, (3, 3), (1, 1)),
            (32, 64, (3, 3), (1, 1)),
        ]
    if stem == "classic":
        assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))


def test_basic_block_follows_the_study():
    model = resnest.create("resnest50_basic", num_classes=10)
    block = model.layer2[0]
    assert isinstance(block, BasicBlock)
    assert (block.conv1.kernel_size, block.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(block.conv2, SplitAttention)
    assert block.conv2.conv.stride == (1, 1)  # the stride moved into the avd pool
    assert isinstance(block.bn2, nn.Identity)  # no BN after split attention
    assert isinstance(block.avd_last, nn.AvgPool2d) and block.avd_last.stride == 2
    pool, conv, bn = block.downsample
    assert isinstance(pool, nn.AvgPool2d) and pool.ceil_mode and not pool.count_include_pad
    assert (conv.in_channels, conv.out_channels, conv.stride) == (64, 128, (1, 1))
    assert isinstance(bn, nn.BatchNorm2d)
    # A non-downsampling block has no shortcut conv and no pool.
    assert isinstance(model.layer2[1].downsample, nn.Identity)
    assert isinstance(model.layer2[1].avd_last, nn.Identity)


def test_basic_block_forward_is_the_documented_sequence():
    block = BasicBlock(
        16, 32, stride=2, downsample=nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(16, 32, 1)), avd=True
    ).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = block.act1(block.bn1(block.conv1(x)))
        out = nn.functional.avg_pool2d(block.conv2(out), 3, 2, padding=1)
        expected = torch.relu(out + block.downsample(x))
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("avd_first", [False, True])
def test_bottleneck_avd_places_the_pool(avd_first):
    block = Bottleneck(64, 32, stride=2, avd=True, avd_first=avd_first, radix=2)
    pool, identity = (block.avd_first, block.avd_last)[:: 1 if avd_first else -1]
    assert isinstance(pool, nn.AvgPool2d) and pool.stride == 2
    assert isinstance(identity, nn.Identity)
    assert block.conv2.conv.stride == (1, 1)


def test_bottleneck_options():
    # No avd: the 3x3 conv strides itself.
    assert Bottleneck(64, 32, stride=2, avd=False).conv2.conv.stride == (2, 2)
    # is_first applies avd (a stride-1 pool) even where the block does not stride.
    assert isinstance(Bottleneck(64, 32, stride=1, avd=True, is_first=True).avd_last, nn.AvgPool2d)
    assert isinstance(Bottleneck(64, 32, stride=1, avd=True).avd_last, nn.Identity)
    # bottleneck_width and cardinality set the group width: planes * width / 64 * cardinality.
    wide = Bottleneck(64, 32, bottleneck_width=128, cardinality=2, radix=2)
    assert wide.conv1.out_channels == 32 * 2 * 2
    assert wide.conv3.out_channels == 32 * 4
    # Dilation pads to keep the size.
    dilated = Bottleneck(128, 32, dilation=2, radix=2).eval()
    assert dilated.conv2.conv.dilation == (2, 2)
    assert dilated(torch.randn(1, 128, 9, 9)).shape == (1, 128, 9, 9)
    # radix 0: a plain grouped conv followed by BN and ReLU (ResNeXt).
    plain = Bottleneck(64, 32, radix=0, cardinality=2)
    assert isinstance(plain.conv2, nn.Conv2d) and plain.conv2.groups == 2
    assert isinstance(plain.bn2, nn.BatchNorm2d) and isinstance(plain.act2, nn.ReLU)


def test_last_gamma_zero_initialises_the_last_bn():
    model = resnest.create("resnest50_bottleneck", num_classes=10, last_gamma=True)
    for block in model.modules():
        if isinstance(block, Bottleneck):
            assert torch.count_nonzero(block.bn3.weight) == 0
            assert torch.all(block.bn1.weight == 1)
    default = resnest.create("resnest50_bottleneck", num_classes=10)
    assert torch.all(default.layer1[0].bn3.weight == 1)
    basic = resnest.create("resnet50d_basic", num_classes=10, last_gamma=True)
    assert torch.count_nonzero(basic.layer1[0].bn2.weight) == 0


def test_official_initialisation():
    model = resnest.create("resnest50_basic", num_classes=10)
    conv = model.layer3[0].conv2.conv  # 256 -> 512 channels, 3x3
    expected_std = math.sqrt(2.0 / (3 * 3 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert conv.weight.mean().item() == pytest.approx(0.0, abs=expected_std * 0.02)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_reset_classifier_gives_a_new_head():
    model = resnest.create("resnest50_bottleneck", num_classes=10)
    model.reset_classifier(100)
    assert model.fc.out_features == 100 and model.fc.in_features == 2048
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
