"""Building blocks shared by the U-Net families: convolution types and the (conv, norm, ReLU) x2 block."""

from __future__ import annotations

import torch
from torch import nn

CONV_TYPES = ("standard", "separable", "space_depth_separable")


def conv(in_ch: int, out_ch: int, conv_type: str) -> nn.Module:
    """One 'convolution' of the chosen type (3x3 receptive field, padding keeps the size)."""
    if conv_type == "standard":
        return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
    if conv_type == "separable":
        return nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
        )
    if conv_type == "space_depth_separable":
        return nn.Sequential(
            nn.Conv2d(in_ch, in_ch, (3, 1), padding=(1, 0), groups=in_ch, bias=False),
            nn.Conv2d(in_ch, in_ch, (1, 3), padding=(0, 1), groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
        )
    raise ValueError(f"unknown conv_type {conv_type!r}; valid: {CONV_TYPES}")


def norm_layer(channels: int, kind: str) -> nn.Module:
    """Batch norm (the papers) or group norm (robust to tiny fine-tuning batches)."""
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels), channels)


class ConvBlock(nn.Sequential):
    """Two (convolution, normalisation, ReLU) units."""

    def __init__(self, in_ch: int, out_ch: int, conv_type: str, norm: str) -> None:
        super().__init__(
            conv(in_ch, out_ch, conv_type), norm_layer(out_ch, norm), nn.ReLU(inplace=True),
            conv(out_ch, out_ch, conv_type), norm_layer(out_ch, norm), nn.ReLU(inplace=True),
        )


def unet_widths(base_channels: int, depth: int) -> list[int]:
    """Channels per U-Net level: ``base_channels`` doubled per pooling, ``depth + 1`` levels."""
    return [base_channels * 2**i for i in range(depth + 1)]


def encoder_blocks(in_channels: int, widths: list[int], conv_type: str, norm: str) -> nn.ModuleList:
    """One :class:`ConvBlock` per level (run with :func:`encode`)."""
    blocks = nn.ModuleList()
    for w in widths:
        blocks.append(ConvBlock(in_channels, w, conv_type, norm))
        in_channels = w
    return blocks


def encode(blocks: nn.ModuleList, pool: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder's feature maps, finest first: block, then (pool, block) per level."""
    features = []
    for i, block in enumerate(blocks):
        x = block(x if i == 0 else pool(x))
        features.append(x)
    return features


def decoder_blocks(widths: list[int], conv_type: str, norm: str) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The expanding path: (transposed convolution x2, :class:`ConvBlock` on the concatenated skip) per level."""
    ups, blocks = nn.ModuleList(), nn.ModuleList()
    for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
        ups.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
        blocks.append(ConvBlock(2 * shallow, shallow, conv_type, norm))
    return ups, blocks


def decode(ups: nn.ModuleList, blocks: nn.ModuleList, features: list[torch.Tensor]) -> torch.Tensor:
    """Run the expanding path over encoder ``features``; returns the finest map, (B, widths[0], H, W)."""
    x = features[-1]
    for up, block, skip in zip(ups, blocks, features[-2::-1]):
        x = block(torch.cat([up(x), skip], dim=1))
    return x
