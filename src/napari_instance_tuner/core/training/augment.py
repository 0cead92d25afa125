"""Training augmentations on normalised float images and their targets.

The three-branch paper found that stacking many augmentations in one sample hurts (Table I), so each
photometric augmentation fires with a moderate probability ``p`` and geometric ones are cheap exact
symmetries (90-degree rotations, flips) plus a mild random rescale.

Two optional augmentations (probability 0 by default, so earlier recipes are unchanged) target stain and
shape variation between slides of H&E tissue:

- HED stain jitter (Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as
  a reference to train distilled stain-invariant convolutional networks", IEEE TMI 2018): colour
  deconvolution with ``skimage.color.rgb2hed``, each stain channel scaled by ``U(1 - s, 1 + s)`` and shifted
  by ``U(-s, s)`` times its own spread, then back with ``hed2rgb``. Here it acts on the percentile-normalised
  image (roughly RGB in [0, 1]), clipped to [0, 1] first, and adds the change in RGB that the jitter makes
  (so strength 0 is the identity even for colours outside the H&E gamut, which ``rgb2hed`` clips).
- Elastic deformation (Simard et al., ICDAR 2003; the U-Net paper's main augmentation): a random
  displacement field smoothed by a Gaussian of ``elastic_sigma`` px, scaled to ``elastic_alpha`` px, applied
  with the same field to the image (bilinear) and to the labels (nearest), before targets are made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of the augmentations (``enabled=False`` turns all off)."""

    enabled: bool = True
    scale_range: tuple[float, float] = (0.8, 1.25)
    p_scale: float = 0.5
    p_color: float = 0.5
    color_strength: float = 0.1
    p_blur: float = 0.15
    p_noise: float = 0.15
    noise_fraction: float = 0.01
    p_stain: float = 0.0
    stain_strength: float = 0.05
    p_elastic: float = 0.0
    elastic_alpha: float = 8.0
    elastic_sigma: float = 24.0

    def __post_init__(self) -> None:
        for name in ("p_scale", "p_color", "p_blur", "p_noise", "p_stain", "p_elastic"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"augmentation probability {name} must lie in [0, 1], got {value}")
        for name in ("stain_strength", "elastic_alpha", "elastic_sigma"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"augmentation strength {name} must be a finite number >= 0, got {value}")

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return asdict(self)


def random_scale(rng: np.random.Generator, config: AugmentConfig) -> float:
    """A scale factor for one sample (1.0 when not drawn)."""
    if config.enabled and rng.random() < config.p_scale:
        lo, hi = config.scale_range
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return 1.0


def random_symmetry(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """Apply one of the 8 dihedral symmetries to (..., H, W) arrays in channel-first layout."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        out.append(np.ascontiguousarray(a[..., ::-1] if flip else a))
    return out


def elastic(rng: np.random.Generator, config: AugmentConfig, image: np.ndarray,
            *masks: np.ndarray) -> tuple[np.ndarray, ...]:
    """Elastic deformation of a float32 (C, H, W) image and integer (H, W) masks with one field.

    Returns the inputs unchanged when the draw (probability ``p_elastic``) does not fire.

    Parameters
    ----------
    rng : np.random.Generator
    config : AugmentConfig
    image : np.ndarray
        float32 (C, H, W), C <= 4; resampled bilinearly, borders mirrored.
    *masks : np.ndarray
        (H, W) label images (int32 or uint8); resampled by nearest neighbour, zero outside.

    Returns
    -------
    tuple of np.ndarray
        The deformed image, then the deformed masks, same shapes and dtypes.
    """
    if not (config.enabled and config.p_elastic > 0 and rng.random() < config.p_elastic):
        return (image, *masks)
    h, w = image.shape[1:]
    fields = []
    for _ in range(2):
        noise = rng.uniform(-1, 1, (h, w)).astype(np.float32)
        smooth = cv2.GaussianBlur(noise, (0, 0), config.elastic_sigma)
        peak = float(np.abs(smooth).max()) or 1.0
        fields.append(smooth * (config.elastic_alpha / peak))
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = gx + fields[1], gy + fields[0]
    warped = cv2.remap(np.ascontiguousarray(image.transpose(1, 2, 0)), map_x, map_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT_101)
    warped = warped.reshape(h, w, -1).transpose(2, 0, 1)
    out = [np.ascontiguousarray(warped, dtype=image.dtype)]
    for m in masks:
        # OpenCV's remap has no 32-bit integer path for every dtype: go through float32, exact up to 2**24.
        moved = cv2.remap(m.astype(np.float32), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
        out.append(moved.astype(m.dtype))
    return tuple(out)


def stain_jitter(rng: np.random.Generator, image: np.ndarray, strength: float) -> np.ndarray:
    """HED colour-deconvolution jitter of a float32 (3, H, W) RGB image in [0, 1] (see the module docstring)."""
    from skimage.color import hed2rgb, rgb2hed

    rgb = np.clip(image.transpose(1, 2, 0), 0.0, 1.0)
    hed = rgb2hed(rgb)
    spread = hed.reshape(-1, 3).std(axis=0) + 1e-6
    alpha = rng.uniform(1 - strength, 1 + strength, 3)
    beta = rng.uniform(-strength, strength, 3) * spread
    # rgb2hed clips negative stain amounts, so hed2rgb(rgb2hed(x)) is not x for colours outside the H&E
    # gamut (percentile normalisation makes some): add the jitter's change instead, exact at strength 0.
    change = hed2rgb(hed * alpha + beta) - hed2rgb(hed)
    out = np.clip(rgb + change, 0.0, 1.0)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def photometric(rng: np.random.Generator, image: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """Stain (HED) and colour jitter, blur and salt-and-pepper noise on a float32 (C, H, W) image."""
    if not config.enabled:
        return image
    image = image.copy()
    channels = image.shape[0]
    if channels == 3 and config.p_stain > 0 and rng.random() < config.p_stain:
        image = stain_jitter(rng, image, config.stain_strength)
    if rng.random() < config.p_color:
        # Per-channel gain and offset approximate stain-intensity variation between slides.
        gain = 1 + rng.uniform(-config.color_strength, config.color_strength, (channels, 1, 1))
        offset = rng.uniform(-config.color_strength, config.color_strength, (channels, 1, 1))
        image = image * gain.astype(np.float32) + offset.astype(np.float32)
    if rng.random() < config.p_blur:
        sigma = rng.uniform(0.5, 1.5)
        image = np.stack([cv2.GaussianBlur(c, (0, 0), sigma) for c in image])
    if rng.random() < config.p_noise:
        mask = rng.random(image.shape[1:]) < config.noise_fraction
        values = rng.integers(0, 2, int(mask.sum())).astype(np.float32)
        image[:, mask] = values
    return image


def random_corner(
    rng: np.random.Generator, shape: tuple[int, int], size: int, region: np.ndarray | None = None
) -> tuple[int, int]:
    """Top-left corner of a random ``size`` x ``size`` crop of an image of ``shape`` (H, W >= size).

    With a bool/uint8 (H, W) ``region`` that has any pixel set, the crop contains a random region pixel.
    """
    if region is None or not region.any():
        return int(rng.integers(0, shape[0] - size + 1)), int(rng.integers(0, shape[1] - size + 1))
    ys, xs = np.nonzero(region)
    i = int(rng.integers(len(ys)))
    y = int(rng.integers(max(0, ys[i] - size + 1), min(ys[i], shape[0] - size) + 1))
    x = int(rng.integers(max(0, xs[i] - size + 1), min(xs[i], shape[1] - size) + 1))
    return y, x
