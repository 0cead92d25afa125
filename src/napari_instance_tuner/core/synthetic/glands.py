"""Synthetic H&E colon histology (GlaS-like): glands with epithelium, lumen, goblet cells and nuclei in stroma."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .shapes import place_disks, random_stars, relabel_sequential, smooth_noise, splat, star_partition

# Optical densities (R, G, B) of one unit of haematoxylin and eosin, fitted to colours measured on GlaS:
# nuclei ~ (75, 34, 123), stroma ~ (223, 119, 205), epithelial cytoplasm ~ (170, 95, 185).
_HAEMATOXYLIN_OD = np.array([1.0, 1.45, 0.55], np.float32)
_EOSIN_OD = np.array([0.0, 0.55, 0.12], np.float32)
_BRIGHTFIELD = np.array([248.0, 242.0, 248.0], np.float32)


def _gland_shapes(rng: np.random.Generator, shape: tuple[int, int]) -> list[dict]:
    placed = place_disks(rng, shape, sizes=(32, 105), coverage=0.5, spacing=(0.82, 1.15), margin=0.6)
    return random_stars(rng, placed, max_elongation=1.7, amplitude=0.12, orders=range(2, 6))


def _ellipse_field(rng, count, where: np.ndarray, long_axis, short_axis, angles=None):
    """Random ellipse parameters at ``count`` random positions among the True pixels of ``where``."""
    candidates = np.flatnonzero(where)
    count = int(min(count, candidates.size))
    if count == 0:
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
    flat = rng.choice(candidates, count, replace=False)
    centres = np.stack(np.unravel_index(flat, where.shape), axis=1).astype(np.float64)
    centres += rng.uniform(-0.5, 0.5, centres.shape)
    radii = np.stack([rng.uniform(*long_axis, count), rng.uniform(*short_axis, count)], axis=1)
    if angles is None:
        angles = rng.uniform(0, np.pi, count)
    else:
        angles = angles.ravel()[flat]
    return centres, radii, angles


def synthetic_glands(shape: tuple[int, int] = (512, 768), seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An H&E colon-histology-like RGB image with its gland instance labels (GlaS-like, native scale).

    Glands are 60-250 px across, as in GlaS at 20x; about half the image is gland; some glands touch
    and some are cut by the image border.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image.
    seed : int, optional
        Seed of the random generator; the same seed gives the same image.

    Returns
    -------
    rgb : np.ndarray
        uint8 (H, W, 3).
    labels : np.ndarray
        uint16 (H, W); 0 is stroma, glands are 1..N in raster order.

    Examples
    --------
    >>> rgb, labels = synthetic_glands((256, 256), seed=0)
    >>> int(labels.max()) == len(np.unique(labels)) - 1
    True
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    shapes = _gland_shapes(rng, shape)
    labels = relabel_sequential(star_partition(shape, shapes), min_size=120)
    n = int(labels.max())
    gland = labels > 0

    # Depth below each gland's border (shared borders between touching glands count as borders).
    border = np.zeros(shape, bool)
    border[:-1] |= labels[:-1] != labels[1:]
    border[1:] |= labels[:-1] != labels[1:]
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    border[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    depth = ndi.distance_transform_edt(~(border & gland)).astype(np.float32)
    outside, nearest = ndi.distance_transform_edt(~gland, return_indices=True)
    nearest_gland = labels[nearest[0], nearest[1]]

    # Per-gland properties: epithelium thickness, stain, lumen content, goblet cells, retraction gap.
    inradius = ndi.maximum(depth, labels, index=np.arange(n + 1)).astype(np.float32)
    thickness = np.clip(rng.uniform(0.35, 0.7, n + 1) * inradius, 12, 48).astype(np.float32)
    purple = rng.uniform(0.8, 1.2, n + 1).astype(np.float32)
    debris = rng.random(n + 1) < 0.25
    goblets = rng.random(n + 1) < 0.5
    gap = np.where(rng.random(n + 1) < 0.45, rng.uniform(2, 8, n + 1), 0).astype(np.float32)
    low = smooth_noise(rng, shape, 14, scale=4)
    epithelium_depth = thickness[labels] * np.clip(1.0 + 0.3 * low, 0.5, 1.6)
    lumen = gland & (depth > epithelium_depth)
    epithelium = gland & ~lumen

    # Stain concentrations.
    fibres_a = smooth_noise(rng, shape, (0.8, 5.0))
    fibres_b = smooth_noise(rng, shape, (5.0, 0.8))
    mix = 1.0 / (1.0 + np.exp(-2.0 * smooth_noise(rng, shape, 30, scale=4)))
    fibres = mix * fibres_a + (1 - mix) * fibres_b
    grain = rng.standard_normal(shape).astype(np.float32)
    patches = smooth_noise(rng, shape, 20, scale=4)
    eosin = np.clip(0.72 + 0.14 * patches + 0.1 * fibres + 0.05 * grain, 0.2, None)
    haem = 0.13 + 0.03 * patches + 0.02 * fibres + 0.03 * grain
    # White spaces: soft-edged holes in the stroma and sharp retraction gaps around some glands.
    pale = np.clip((smooth_noise(rng, shape, 5, scale=2) - 1.6) / 0.3, 0, 1)
    pale[(outside > 0) & (outside <= gap[nearest_gland])] = 1.0
    eosin *= 1 - 0.92 * pale
    haem *= 1 - 0.9 * pale
    holes = pale > 0.5

    eosin[epithelium] = (0.5 + 0.05 * grain[epithelium]) * purple[labels[epithelium]]
    haem[epithelium] = (0.42 + 0.05 * grain[epithelium]) * purple[labels[epithelium]]
    lumen_texture = np.clip(smooth_noise(rng, shape, 2.0), 0, None)
    lumen_eosin = np.where(debris[labels], 0.12 + 0.2 * lumen_texture, 0.04 + 0.02 * lumen_texture)
    eosin[lumen] = lumen_eosin[lumen]
    haem[lumen] = 0.03

    # Goblet cells: pale vacuoles in the middle of the epithelium of some glands.
    goblet_map = np.zeros(shape, np.float32)
    middle = epithelium & goblets[labels] & (depth > 0.45 * epithelium_depth) & (depth < 0.9 * epithelium_depth)
    centres, radii, angles = _ellipse_field(rng, middle.sum() / 110, middle, (4, 8), (3.5, 6))
    splat(goblet_map, centres, radii, angles, rng.uniform(0.6, 0.9, len(centres)))
    eosin *= 1 - goblet_map
    haem *= 1 - goblet_map

    # Nuclei: crowded, elongated perpendicular to the basement membrane in the epithelium; sparse and
    # round or spindle-shaped in the stroma.
    nuclei = np.zeros(shape, np.float32)
    gy, gx = (g[1:-1, 1:-1] for g in np.gradient(np.pad(ndi.gaussian_filter(depth, 2.0), 1, mode="edge")))
    basal = epithelium & (depth >= 1.0) & (depth < np.minimum(0.55 * epithelium_depth, 14))
    centres, radii, angles = _ellipse_field(rng, basal.sum() / 40, basal, (5.5, 9), (2.6, 3.8), np.arctan2(gx, gy))
    splat(nuclei, centres, radii, angles, rng.uniform(0.8, 1.1, len(centres)))
    stroma = ~gland & ~holes
    centres, radii, angles = _ellipse_field(rng, stroma.sum() / 260, stroma, (2.3, 6.5), (1.8, 3.2))
    splat(nuclei, centres, radii, angles, rng.uniform(0.8, 1.3, len(centres)))
    chromatin = 0.85 + 0.15 * smooth_noise(rng, shape, 0.7)
    haem += 1.15 * nuclei * chromatin
    eosin += 0.25 * nuclei

    density = haem[..., None] * _HAEMATOXYLIN_OD + eosin[..., None] * _EOSIN_OD
    rgb = _BRIGHTFIELD * np.exp(-np.clip(density, 0, None))
    rgb = ndi.gaussian_filter(rgb, (0.7, 0.7, 0)) + rng.normal(0, 2.5, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels
