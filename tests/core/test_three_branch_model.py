import numpy as np
import pytest
import torch

from napari_instance_tuner.core.families.three_branch.model import (
    CONV_TYPES,
    ThreeBranchConfig,
    ThreeBranchUNet,
    conv,
)


@pytest.mark.parametrize("conv_type", CONV_TYPES)
def test_forward_shapes_for_every_conv_type(conv_type):
    model = ThreeBranchUNet(ThreeBranchConfig(in_channels=3, base_channels=4, depth=2, conv_type=conv_type)).eval()
    out = model(torch.zeros(2, 3, 32, 48))
    assert out.shape == (2, 3, 32, 48) and model.size_divisor == 4


def test_conv_types_have_the_papers_structure():
    kernels = lambda m: [tuple(c.kernel_size) + (c.groups,) for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert kernels(conv(8, 16, "standard")) == [(3, 3, 1)]
    assert kernels(conv(8, 16, "separable")) == [(3, 3, 8), (1, 1, 1)]
    assert kernels(conv(8, 16, "space_depth_separable")) == [(3, 1, 8), (1, 3, 8), (1, 1, 1)]
    # No normalisation or activation inside a separated convolution (paper, section III).
    assert all(isinstance(m, torch.nn.Conv2d) for m in conv(8, 16, "space_depth_separable"))


def test_separable_models_are_smaller_and_depth_width_configurable():
    count = lambda cfg: sum(p.numel() for p in ThreeBranchUNet(cfg).parameters())
    std = count(ThreeBranchConfig(base_channels=8, depth=3, conv_type="standard"))
    sep = count(ThreeBranchConfig(base_channels=8, depth=3, conv_type="separable"))
    assert sep < 0.5 * std
    assert count(ThreeBranchConfig(base_channels=16, depth=3)) > count(ThreeBranchConfig(base_channels=8, depth=3))
    assert count(ThreeBranchConfig(base_channels=8, depth=4)) > count(ThreeBranchConfig(base_channels=8, depth=3))


def test_three_decoders_share_one_encoder_and_branch_subset():
    model = ThreeBranchUNet(ThreeBranchConfig(base_channels=4, depth=2))
    assert set(model.decoders) == {"foreground", "boundary", "centroid"}
    fg_only = ThreeBranchUNet(ThreeBranchConfig(base_channels=4, depth=2, branches=("foreground",)))
    assert fg_only(torch.zeros(1, 3, 16, 16)).shape == (1, 1, 16, 16)
    # A boundary loss must move the shared encoder but not the foreground decoder.
    out = model(torch.randn(1, 3, 16, 16))
    out[:, 1].sum().backward()
    assert model.encoder[0][0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoders["foreground"].parameters())


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    model = ThreeBranchUNet(ThreeBranchConfig(base_channels=4, depth=2)).eval()
    x = torch.randn(1, 3, 32, 32)
    a = model(x)
    b = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "values,match",
    [({"conv_type": "x"}, "conv_type"), ({"norm": "x"}, "norm"), ({"branches": ["x"]}, "branches"),
     ({"depth": 9}, "depth"), ({"colour": 1}, "unknown")],
)
def test_config_validation(values, match):
    with pytest.raises(ValueError, match=match):
        ThreeBranchConfig.from_dict(values)


def test_config_roundtrip():
    cfg = ThreeBranchConfig(base_channels=8, branches=("foreground", "centroid"))
    assert ThreeBranchConfig.from_dict(cfg.to_dict()) == cfg
    np.testing.assert_array_equal(cfg.to_dict()["branches"], ["foreground", "centroid"])
