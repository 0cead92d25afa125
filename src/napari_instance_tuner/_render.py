"""A plain rendering of an image with its labels, for the demo on a machine where napari cannot start.

napari draws its canvas with OpenGL and needs a display (or Xvfb). Where neither exists the demo still
writes a picture of the segmented sample, made by :func:`render_overlay` with numpy alone, and says so.
"""

from __future__ import annotations

import numpy as np

#: napari's default canvas background.
BACKGROUND = np.array([0, 0, 0], np.uint8)


def label_colours(labels: np.ndarray) -> np.ndarray:
    """float32 (..., 3) distinct bright colours per label id (golden-ratio hues); 0 stays black."""
    hue = (labels.astype(np.float64) * 0.618033988749895) % 1.0
    k = (np.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0  # HSV -> RGB with s = v = 1
    rgb = 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    rgb[labels == 0] = 0.0
    return rgb.astype(np.float32)


def to_rgb(image: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """float32 (H, W, 3) in [0, 1] from a grey (H, W) or RGB(A) (H, W, C) image.

    ``limits`` map to black and white; by default the 1st and 99.8th percentiles (uint8 RGB is kept).
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.dtype == np.uint8 and limits is None:
        return image[..., :3].astype(np.float32) / 255.0
    low, high = limits if limits is not None else np.percentile(image, [1.0, 99.8])
    scaled = np.clip((image.astype(np.float32) - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    return scaled[..., :3] if scaled.ndim == 3 else np.repeat(scaled[..., None], 3, axis=-1)


def render_overlay(image: np.ndarray, labels: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """uint8 (H, W, 3): ``image`` with each labelled object tinted in its own colour, borders opaque.

    Examples
    --------
    >>> out = render_overlay(np.zeros((4, 4), np.uint8), np.eye(4, dtype=np.uint32))
    >>> out.shape, out.dtype
    ((4, 4, 3), dtype('uint8'))
    """
    base = to_rgb(image)
    colours = label_colours(labels)
    border = np.zeros(labels.shape, bool)
    border[1:] |= labels[1:] != labels[:-1]
    border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    alpha = np.where(labels > 0, opacity, 0.0)[..., None]
    alpha = np.where((border & (labels > 0))[..., None], 1.0, alpha)
    return (255 * ((1 - alpha) * base + alpha * colours) + 0.5).astype(np.uint8)
