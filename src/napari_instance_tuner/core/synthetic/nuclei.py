"""Synthetic fluorescence nuclei (DSB 2018-like): textured grey blobs, many touching."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .shapes import place_disks, random_stars, relabel_sequential, smooth_noise, star_partition


def synthetic_nuclei(shape: tuple[int, int] = (256, 256), seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like grey image of nuclei (many touching) and their instance labels.

    Parameters
    ----------
    shape : tuple of int
        (H, W).
    seed : int, optional
        Seed of the random generator.

    Returns
    -------
    image : np.ndarray
        uint8 (H, W): bright textured blobs on a dark, slightly uneven background with noise.
    labels : np.ndarray
        uint16 (H, W); 0 is background, nuclei are 1..N in raster order.

    Examples
    --------
    >>> image, labels = synthetic_nuclei((64, 64), seed=3)
    >>> image.shape == labels.shape
    True
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    placed = place_disks(rng, shape, sizes=(6, 13), coverage=0.3, spacing=(0.7, 1.2), margin=0.3)
    shapes = random_stars(rng, placed, max_elongation=1.6, amplitude=0.06, orders=(1, 1))
    labels = relabel_sequential(star_partition(shape, shapes), min_size=15)
    n = int(labels.max())
    brightness = rng.uniform(0.45, 1.0, n + 1).astype(np.float32)
    brightness[0] = 0
    texture = 0.85 + 0.15 * smooth_noise(rng, shape, 1.2)
    signal = ndi.gaussian_filter(brightness[labels] * texture, 1.0)
    background = 0.06 + 0.02 * smooth_noise(rng, shape, 40, scale=4)
    image = 255 * (background + 0.8 * signal) + rng.normal(0, 3.0, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels
