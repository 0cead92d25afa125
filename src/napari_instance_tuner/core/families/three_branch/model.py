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
safer than a sigmoid layer followed by BCE). With ``encoder="efficientnet_lite0"`` or ``"efficientnet_lite2"``
(issue 20) the encoder is that EfficientNet-Lite trunk, which can start from ImageNet weights
(:mod:`..efficientnet_lite`), and one (conv, norm, ReLU) x2 block at full resolution gives the decoders their
finest skip; the paper's encoder was trained from scratch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..blocks import (  # noqa: F401  (conv and ConvBlock re-exported)
    CONV_TYPES,
    ConvBlock,
    conv,
    decode,
    decoder_blocks,
    encode,
    encoder_blocks,
    unet_widths,
)
from ..efficientnet_lite import EfficientNetLiteEncoder, variant_widths

BRANCHES = ("foreground", "boundary", "centroid")
ENCODERS = ("unet", "efficientnet_lite0", "efficientnet_lite2")


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
    members : int
        1: one network. N > 1: an ensemble of N such networks trained apart, whose sigmoid outputs are averaged
        (see :class:`ThreeBranchUNet`); not in the paper, added for issue 20. Omitted from :meth:`to_dict` when 1,
        so single networks' metadata stays as it was.
    encoder : str
        ``"unet"`` (the paper's), ``"efficientnet_lite0"`` or ``"efficientnet_lite2"`` (that EfficientNet-Lite
        trunk, ImageNet-initialisable; then ``depth`` is 5, ``in_channels`` 3, and ``base_channels`` the width of
        the full-resolution block; the other levels have the trunk's widths,
        :func:`..efficientnet_lite.variant_widths`). Omitted from
        :meth:`to_dict` when ``"unet"``.
    member_architectures : tuple[ThreeBranchConfig, ...]
        Empty: the members (if several) all have this architecture. Otherwise each member's own architecture, single
        networks with this config's ``in_channels`` and ``branches``, one per member (``members`` is their number),
        so that networks of different architectures, e.g. the U-Net encoder and EfficientNet-Lite0's, can be averaged;
        the other top-level keys are the first member's. Omitted from :meth:`to_dict` when empty.
    """

    in_channels: int = 3
    base_channels: int = 16
    depth: int = 4
    conv_type: str = "space_depth_separable"
    norm: str = "batch"
    branches: tuple[str, ...] = BRANCHES
    members: int = 1
    encoder: str = "unet"
    member_architectures: tuple[ThreeBranchConfig, ...] = ()

    @classmethod
    def from_dict(cls, values: dict) -> ThreeBranchConfig:
        """Build from JSON metadata; raises ValueError on unknown keys or values."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}")
        values = dict(values)
        if "branches" in values:
            values["branches"] = tuple(values["branches"])
        if "member_architectures" in values:
            values["member_architectures"] = tuple(_member_config(cls, m) for m in values["member_architectures"])
        cfg = cls(**values)
        if cfg.conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type {cfg.conv_type!r} is not one of {CONV_TYPES}")
        if cfg.norm not in ("batch", "group"):
            raise ValueError(f"norm {cfg.norm!r} is not 'batch' or 'group'")
        if not set(cfg.branches) <= set(BRANCHES) or not cfg.branches:
            raise ValueError(f"branches {cfg.branches!r} must be a non-empty subset of {BRANCHES}")
        if not (1 <= cfg.depth <= 6 and 1 <= cfg.base_channels <= 256 and cfg.in_channels in (1, 3)):
            raise ValueError("depth must be 1..6, base_channels 1..256, in_channels 1 or 3")
        if not 1 <= cfg.members <= 8:
            raise ValueError(f"members must be 1..8, got {cfg.members!r}")
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"encoder {cfg.encoder!r} is not one of {ENCODERS}")
        if cfg.encoder != "unet" and (cfg.depth != 5 or cfg.in_channels != 3):
            raise ValueError(f"the {cfg.encoder} encoder needs depth 5 and 3 input channels (RGB), "
                             f"got depth {cfg.depth} and {cfg.in_channels} channel(s)")
        if cfg.member_architectures:
            if len(cfg.member_architectures) != cfg.members:
                raise ValueError(f"{len(cfg.member_architectures)} member architectures for {cfg.members} members")
            for m in cfg.member_architectures:
                if (m.in_channels, m.branches) != (cfg.in_channels, cfg.branches):
                    raise ValueError("every member must have the ensemble's in_channels and branches, got "
                                     f"{m.in_channels} and {list(m.branches)}")
        return cfg

    @property
    def size_step(self) -> int:
        """Input sizes must be multiples of this: ``2 ** depth``, of the deepest member in an ensemble."""
        return max(2**c.depth for c in self.member_architectures or (self,))

    def member_configs(self) -> tuple[ThreeBranchConfig, ...]:
        """The architecture of each member, single networks (``(self,)`` for a single network)."""
        if self.member_architectures:
            return self.member_architectures
        return (replace(self, members=1),) * self.members

    def to_dict(self) -> dict:
        """JSON-able dict."""
        d = asdict(self)
        d["branches"] = list(self.branches)
        if self.members == 1:
            del d["members"]
        if self.encoder == "unet":
            del d["encoder"]
        if self.member_architectures:
            d["member_architectures"] = [m.to_dict() for m in self.member_architectures]
        else:
            del d["member_architectures"]
        return d


def _member_config(cls, values) -> ThreeBranchConfig:
    """One entry of ``member_architectures``: a single network (no members of its own)."""
    if not isinstance(values, dict):  # a ValueError, as for any bad metadata (the loader reports those)
        raise ValueError(f"a member architecture must be a dict, got {type(values).__name__}")  # noqa: TRY004
    if values.get("members", 1) != 1 or "member_architectures" in values:
        raise ValueError("a member architecture must be a single network (no members of its own)")
    return cls.from_dict(values)


class Decoder(nn.Module):
    """Mirrors the encoder: (transposed conv x2, concat skip, ConvBlock) per level, then a 1x1 conv."""

    def __init__(self, widths: list[int], conv_type: str, norm: str) -> None:
        super().__init__()
        self.ups, self.blocks = decoder_blocks(widths, conv_type, norm)
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(decode(self.ups, self.blocks, features))


class ThreeBranchUNet(nn.Module):
    """Shared encoder, one decoder per branch; with ``config.members`` N > 1, an ensemble of N such networks
    (of one architecture, or each of its own: ``config.member_architectures``).

    Input: float32 (B, in_channels, H, W), H and W multiples of :attr:`size_divisor` (``2 ** depth``).
    Output: float32 logits (B, len(branches), H, W), channels in the order of ``config.branches``. An ensemble
    returns the logit of its members' mean sigmoid, so the maps inference shows are the mean probabilities.
    """

    def __init__(self, config: ThreeBranchConfig) -> None:
        super().__init__()
        self.config = config
        if config.members > 1:  # an ensemble: N single networks under ``members.0.``, ``members.1.``, ...
            self.members = nn.ModuleList(ThreeBranchUNet(member) for member in config.member_configs())
            return
        if config.encoder != "unet":  # "efficientnet_lite0" -> variant "lite0"
            variant = config.encoder.removeprefix("efficientnet_")
            widths = [config.base_channels, *variant_widths(variant)]
            self.stem = ConvBlock(config.in_channels, config.base_channels, config.conv_type, config.norm)
            self.encoder = EfficientNetLiteEncoder(variant)
        else:
            widths = unet_widths(config.base_channels, config.depth)
            self.encoder = encoder_blocks(config.in_channels, widths, config.conv_type, config.norm)
            self.pool = nn.MaxPool2d(2)
        self.decoders = nn.ModuleDict({b: Decoder(widths, config.conv_type, config.norm) for b in config.branches})

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this."""
        return self.config.size_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.members > 1:  # the logit of the members' mean probability: inference sees the mean map
            probs = torch.stack([member(x).float().sigmoid() for member in self.members]).mean(0)
            return torch.logit(probs, eps=1e-6)
        if self.config.encoder == "unet":
            features = encode(self.encoder, self.pool, x)
        else:
            features = [self.stem(x), *self.encoder(x)]
        return torch.cat([self.decoders[b](features) for b in self.config.branches], dim=1)
