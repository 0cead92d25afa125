"""Synthetic brightfield C. elegans (BBBC010-like): dark worms in a bright well, some crossing, exact masks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .shapes import smooth_noise


def _worm_path(rng: np.random.Generator, length: float, start, heading: float) -> np.ndarray:
    """Points (M, 2) about one pixel apart along a smooth random curve starting at ``start``."""
    steps = max(2, int(length))
    s = np.arange(steps) / steps
    # Gentle bends: a constant curvature plus one slow wave (radians per pixel).
    curvature = rng.uniform(-0.008, 0.008) + rng.uniform(0, 0.014) * np.sin(
        2 * np.pi * rng.uniform(0.5, 1.5) * s + rng.uniform(0, 2 * np.pi)
    )
    heading = heading + np.cumsum(curvature)
    step = np.stack([np.sin(heading), np.cos(heading)], axis=1)
    return np.asarray(start, np.float64) + np.cumsum(step, axis=0)


def _draw_worm(shape, path: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Mask of a worm of the given maximal width along ``path`` (tapered ends) and its distance map.

    Returns the bool mask (H, W) and, inside it, the distance to the midline relative to the local
    half-width (0 on the midline, 1 at the edge).
    """
    height, width_px = shape
    half = width / 2 * np.sqrt(np.clip(np.sin(np.linspace(0, np.pi, len(path))), 0.05, 1))
    pad = int(np.ceil(width)) + 2
    r0 = max(0, int(path[:, 0].min()) - pad)
    r1 = min(height, int(path[:, 0].max()) + pad + 1)
    c0 = max(0, int(path[:, 1].min()) - pad)
    c1 = min(width_px, int(path[:, 1].max()) + pad + 1)
    mask = np.zeros(shape, bool)
    relative = np.ones(shape, np.float32)
    if r0 >= r1 or c0 >= c1:
        return mask, relative
    index = np.full((r1 - r0, c1 - c0), -1, np.int64)
    rows = np.round(path[:, 0]).astype(np.intp) - r0
    cols = np.round(path[:, 1]).astype(np.intp) - c0
    ok = (rows >= 0) & (rows < r1 - r0) & (cols >= 0) & (cols < c1 - c0)
    if not ok.any():
        return mask, relative
    index[rows[ok], cols[ok]] = np.flatnonzero(ok)
    dist, (ny, nx) = ndi.distance_transform_edt(index < 0, return_indices=True)
    local = half[index[ny, nx]]
    inside = dist <= local
    mask[r0:r1, c0:c1] = inside
    relative[r0:r1, c0:c1] = np.where(inside, dist / local, 1.0)
    return mask, relative


def synthetic_worms(
    shape: tuple[int, int] = (512, 768),
    seed: int | None = None,
    *,
    count: int | None = None,
    well: tuple[float, float] = (0.55, 0.55),
    absorption: float = 0.62,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A brightfield image of C. elegans-like worms in a bright well, several crossing (BBBC010-like).

    Parameters
    ----------
    shape : tuple of int
        (H, W).
    seed : int, optional
        Seed of the random generator.
    count : int, optional
        Number of worms (default: one per 26000 pixels, 2 to 18); every second worm crosses an earlier one.
    well : tuple of float
        Half-extent of the bright well as fractions of (H, W); worms start inside it. BBBC010 images have a
        well of about (0.4, 0.3) in a dark surround.
    absorption : float
        Fraction of the light a worm's midline absorbs (0-0.8); its rim absorbs 0.2 more.

    Returns
    -------
    image : np.ndarray
        uint16 (H, W): worms dark (about 200-900) on a bright well (about 2500) in a dark surround.
    labels : np.ndarray
        uint16 (H, W); 0 is background. Overlaps are flattened: worms are painted largest first, so the
        smaller worm wins where two cross (as in the BBBC010 label files).
    masks : np.ndarray
        bool (N, H, W), the exact mask of every worm; masks of crossing worms overlap. ``masks[i]`` is
        the worm labelled ``i + 1``.

    Examples
    --------
    >>> image, labels, masks = synthetic_worms((128, 128), seed=0)
    >>> masks.shape[1:] == image.shape
    True
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    height, width = shape
    scale = min(height, width)
    count = int(np.clip(round(height * width / 26000), 2, 18)) if count is None else int(count)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    reach = np.array([0.6 * well[0] * height, 0.6 * well[1] * width])
    paths, widths = [], []
    for i in range(count):
        length = rng.uniform(0.18, 0.35) * scale + 30
        if i % 2 == 1 and paths:
            # Cross an existing worm: put this worm's middle on a point of that worm, at a steep angle.
            other = paths[rng.integers(len(paths))]
            k = rng.integers(len(other) // 4, 3 * len(other) // 4)
            direction = other[min(k + 1, len(other) - 1)] - other[k - 1]
            heading = np.arctan2(direction[0], direction[1]) + rng.choice([-1, 1]) * rng.uniform(0.6, 1.4)
            half = length / 2
            start = other[k] - half * np.array([np.sin(heading), np.cos(heading)])
        else:
            heading = rng.uniform(0, 2 * np.pi)
            low = np.maximum([0.2 * height, 0.2 * width], [cy, cx] - reach)
            high = np.minimum([0.8 * height, 0.8 * width], [cy, cx] + reach)
            start = rng.uniform(low, high)
        paths.append(_worm_path(rng, length, start, heading))
        widths.append(rng.uniform(7, 11))
    drawn = [_draw_worm(shape, p, w) for p, w in zip(paths, widths)]
    keep = [i for i, (m, _) in enumerate(drawn) if m.sum() >= 80]
    masks = np.stack([drawn[i][0] for i in keep]) if keep else np.zeros((0,) + shape, bool)
    # Larger worms first, so the smaller one wins in the flattened label image.
    order = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")
    masks = masks[order]
    relative = [drawn[keep[i]][1] for i in order]
    labels = np.zeros(shape, np.uint16)
    for index, mask in enumerate(masks, start=1):
        labels[mask] = index

    # Brightfield: a bright rounded well, worms absorb (darker edges, lighter midline), overlaps darker.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    well = ((np.abs(yy - cy) / (well[0] * height)) ** 6 + (np.abs(xx - cx) / (well[1] * width)) ** 6) ** (1 / 6)
    vignette = 1.0 - 0.15 * ((yy - cy) ** 2 + (xx - cx) ** 2) / max(1.0, cy * cy + cx * cx)
    light = 2500 * np.clip((1.0 - well) * 12, 0, 1) * vignette
    light *= 1 + 0.01 * smooth_noise(rng, shape, 60, scale=8)
    transmission = np.ones(shape, np.float32)
    for mask, rel in zip(masks, relative):
        absorb = np.where(mask, absorption + 0.2 * rel**2, 0.0)
        transmission *= 1.0 - absorb
    transmission = ndi.gaussian_filter(transmission, 0.8)
    image = 95 + light * transmission + rng.normal(0, 15, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels, masks
