"""U-Net backbone with a foreground head and an N-layer layering head (layering paper, sections 2.1, 3.1).

The backbone is a U-Net with batch normalisation after every convolution. Both heads share the
backbone's last feature map; each is two 3x3 convolutions with ``head_channels`` features (the paper: 64,
"to avoid feature conflict") followed by a 1x1 output convolution: 1 channel for the foreground,
``n_layers`` channels (the paper: N = 8) for the layering. The paper's UNet-S/M/L differ by one
encoder/decoder block (depth 3/4/5 here; receptive fields 108/220/444 px in the paper).

Deliberate differences: the convolution type and base width are configurable (the shipped model uses
depthwise-separable convolutions and a narrower backbone so that it trains on a 2-core CPU); ``forward``
returns logits, the sigmoid is applied by the losses and at inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..blocks import CONV_TYPES, decode, decoder_blocks, encode, encoder_blocks, norm_layer, unet_widths


@dataclass(frozen=True)
class LayeringConfig:
    """Architecture of :class:`LayeringUNet`.

    Attributes
    ----------
    in_channels : int
        1 (grey) or 3 (RGB).
    n_layers : int
        N, the number of layering output channels (paper: 8).
    base_channels : int
        Channels of the first U-Net level, doubled per level (the original U-Net: 64).
    depth : int
        Number of poolings: 3 = UNet-S, 4 = UNet-M, 5 = UNet-L.
    conv_type : str
        Backbone convolution, one of :data:`~..blocks.CONV_TYPES` (the paper: ``"standard"``).
    head_channels : int
        Features of the two 3x3 convolutions of each head (paper: 64).
    norm : str
        ``"batch"`` (paper) or ``"group"``.
    """

    in_channels: int = 1
    n_layers: int = 8
    base_channels: int = 16
    depth: int = 4
    conv_type: str = "separable"
    head_channels: int = 64
    norm: str = "batch"

    @property
    def size_step(self) -> int:
        """Input sizes must be multiples of this: ``2 ** depth``."""
        return 2**self.depth

    @classmethod
    def from_dict(cls, values: dict) -> LayeringConfig:
        """Build from JSON metadata; raises ValueError on unknown keys or values."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}")
        cfg = cls(**values)
        if cfg.conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type {cfg.conv_type!r} is not one of {CONV_TYPES}")
        if cfg.norm not in ("batch", "group"):
            raise ValueError(f"norm {cfg.norm!r} is not 'batch' or 'group'")
        if not (2 <= cfg.n_layers <= 64):
            raise ValueError(f"n_layers must be 2..64, got {cfg.n_layers}")
        if not (1 <= cfg.depth <= 6 and 1 <= cfg.base_channels <= 256 and cfg.in_channels in (1, 3)):
            raise ValueError("depth must be 1..6, base_channels 1..256, in_channels 1 or 3")
        if not (1 <= cfg.head_channels <= 512):
            raise ValueError(f"head_channels must be 1..512, got {cfg.head_channels}")
        return cfg

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return asdict(self)


class Head(nn.Sequential):
    """Two 3x3 (conv, norm, ReLU) units with ``width`` features, then a 1x1 convolution to ``out`` channels."""

    def __init__(self, in_ch: int, width: int, out: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False), norm_layer(width, norm), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), norm_layer(width, norm), nn.ReLU(inplace=True),
            nn.Conv2d(width, out, 1),
        )


class LayeringUNet(nn.Module):
    """U-Net backbone, foreground head and layering head.

    Input: float32 (B, in_channels, H, W), H and W multiples of ``2 ** depth``.
    Output: float32 logits (B, 1 + n_layers, H, W): channel 0 the foreground, channels 1.. the layers.
    """

    def __init__(self, config: LayeringConfig) -> None:
        super().__init__()
        self.config = config
        widths = unet_widths(config.base_channels, config.depth)
        self.encoder = encoder_blocks(config.in_channels, widths, config.conv_type, config.norm)
        self.pool = nn.MaxPool2d(2)
        self.ups, self.decoder = decoder_blocks(widths, config.conv_type, config.norm)
        self.foreground_head = Head(widths[0], config.head_channels, 1, config.norm)
        self.layering_head = Head(widths[0], config.head_channels, config.n_layers, config.norm)

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return self.config.size_step

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, float32 (B, base_channels, H, W)."""
        return decode(self.ups, self.decoder, encode(self.encoder, self.pool, x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return torch.cat([self.foreground_head(f), self.layering_head(f)], dim=1)
