"""One U-Net encoder, three decoders (foreground, boundary, centroid).

Follows section III of the three-branch paper: encoder blocks of two convolutions, each followed by
normalisation and ReLU, then 2x2 max pooling; channels double per level; decoders mirror the encoder
with a transposed convolution (x2), concatenation of the encoder features and two convolutions; a
1x1 convolution per decoder. A "convolution" is one of

- ``"standard"``: 3x3;
- ``"separable"``: 3x3 depthwise then 1x1 (Xception);
- ``"space_depth_separable"``: 3x1 depthwise, 1x3 depthwise, 1x1 (the paper's final choice);

with no normalisation or activation inside the sequence, as in the paper.

Deliberate differences from the paper: depth and base width are configurable (the paper used 5 levels
and 32 channels, 14 M parameters; the shipped model is far smaller to train on a CPU); ``forward``
returns logits (the sigmoid is applied in inference and folded into the loss, which is numerically
safer than a sigmoid layer followed by BCE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

BRANCHES = ("foreground", "boundary", "centroid")
CONV_TYPES = ("standard", "separable", "space_depth_separable")


@dataclass(frozen=True)
class ThreeBranchConfig:
    """Architecture of :class:`ThreeBranchUNet`.

    Attributes
    ----------
    in_channels : int
        1 (grey) or 3 (RGB).
    base_channels : int
        Channels of the first level; doubled per level.
    depth : int
        Number of poolings (the input size must be a multiple of ``2 ** depth``).
    conv_type : str
        One of :data:`CONV_TYPES`.
    norm : str
        ``"batch"`` (paper) or ``"group"`` (better for tiny fine-tuning batches).
    branches : tuple[str, ...]
        Which decoders exist; the ablation trains ``("foreground",)`` alone.
    """

    in_channels: int = 3
    base_channels: int = 16
    depth: int = 4
    conv_type: str = "space_depth_separable"
    norm: str = "batch"
    branches: tuple[str, ...] = BRANCHES

    @classmethod
    def from_dict(cls, values: dict) -> ThreeBranchConfig:
        """Build from JSON metadata; raises ValueError on unknown keys or values."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}")
        values = dict(values)
        if "branches" in values:
            values["branches"] = tuple(values["branches"])
        cfg = cls(**values)
        if cfg.conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type {cfg.conv_type!r} is not one of {CONV_TYPES}")
        if cfg.norm not in ("batch", "group"):
            raise ValueError(f"norm {cfg.norm!r} is not 'batch' or 'group'")
        if not set(cfg.branches) <= set(BRANCHES) or not cfg.branches:
            raise ValueError(f"branches {cfg.branches!r} must be a non-empty subset of {BRANCHES}")
        if not (1 <= cfg.depth <= 6 and 1 <= cfg.base_channels <= 256 and cfg.in_channels in (1, 3)):
            raise ValueError("depth must be 1..6, base_channels 1..256, in_channels 1 or 3")
        return cfg

    def to_dict(self) -> dict:
        """JSON-able dict."""
        d = asdict(self)
        d["branches"] = list(self.branches)
        return d


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


def _norm(channels: int, kind: str) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels), channels)


class ConvBlock(nn.Sequential):
    """Two (convolution, normalisation, ReLU) units."""

    def __init__(self, in_ch: int, out_ch: int, conv_type: str, norm: str) -> None:
        super().__init__(
            conv(in_ch, out_ch, conv_type), _norm(out_ch, norm), nn.ReLU(inplace=True),
            conv(out_ch, out_ch, conv_type), _norm(out_ch, norm), nn.ReLU(inplace=True),
        )


class Decoder(nn.Module):
    """Mirrors the encoder: (transposed conv x2, concat skip, ConvBlock) per level, then a 1x1 conv."""

    def __init__(self, widths: list[int], conv_type: str, norm: str) -> None:
        super().__init__()
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
            self.ups.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
            self.blocks.append(ConvBlock(2 * shallow, shallow, conv_type, norm))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.ups, self.blocks, features[-2::-1]):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class ThreeBranchUNet(nn.Module):
    """Shared encoder, one decoder per branch.

    Input: float32 (B, in_channels, H, W), H and W multiples of ``2 ** depth``.
    Output: float32 logits (B, len(branches), H, W), channels in the order of ``config.branches``.
    """

    def __init__(self, config: ThreeBranchConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.encoder = nn.ModuleList()
        in_ch = config.in_channels
        for w in widths:
            self.encoder.append(ConvBlock(in_ch, w, config.conv_type, config.norm))
            in_ch = w
        self.pool = nn.MaxPool2d(2)
        self.decoders = nn.ModuleDict({b: Decoder(widths, config.conv_type, config.norm) for b in config.branches})

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return 2**self.config.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            features.append(x)
        return torch.cat([self.decoders[b](features) for b in self.config.branches], dim=1)
