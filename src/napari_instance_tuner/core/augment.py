"""Training augmentations on normalised float images and their targets.

The three-branch paper found that stacking many augmentations in one sample hurts (Table I), so each
photometric augmentation fires with a moderate probability ``p`` and geometric ones are cheap exact
symmetries (90-degree rotations, flips) plus a mild random rescale.
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


def photometric(rng: np.random.Generator, image: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """Colour/stain jitter, blur and salt-and-pepper noise on a float32 (C, H, W) image."""
    if not config.enabled:
        return image
    image = image.copy()
    channels = image.shape[0]
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
