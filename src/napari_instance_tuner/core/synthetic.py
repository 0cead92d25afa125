"""Synthetic annotated images generated on the fly: glands (H&E), nuclei (fluorescence), crossing worms.

They stand in for the real data sets, which may not be shipped: sample data in napari, the quick-start
demo and the tests all use them. Each generator is deterministic for a given ``seed`` and fast
(well under a second for 512 x 768). Only numpy, scipy and scikit-image are used.

- :func:`synthetic_glands` imitates GlaS colon histology at its native scale: pink eosin stroma with
  fibres and scattered nuclei; glands as rings of purple epithelium with dark basal nuclei around a pale
  lumen; irregular shapes, some glands touching, white retraction gaps around some.
- :func:`synthetic_nuclei` imitates fluorescence nuclei (DSB 2018): textured grey blobs, many touching.
- :func:`synthetic_worms` imitates BBBC010 brightfield C. elegans: dark worms in a bright well, some
  crossing, with exact per-worm masks.

Examples
--------
>>> rgb, labels = synthetic_glands((128, 128), seed=1)
>>> rgb.shape, rgb.dtype, labels.dtype
((128, 128, 3), dtype('uint8'), dtype('uint16'))
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# Optical densities (R, G, B) of one unit of haematoxylin and eosin, fitted to colours measured on GlaS:
# nuclei ~ (75, 34, 123), stroma ~ (223, 119, 205), epithelial cytoplasm ~ (170, 95, 185).
_HAEMATOXYLIN_OD = np.array([1.0, 1.45, 0.55], np.float32)
_EOSIN_OD = np.array([0.0, 0.55, 0.12], np.float32)
_BRIGHTFIELD = np.array([248.0, 242.0, 248.0], np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma, scale: int = 1) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and unit standard deviation (made at 1/scale resolution)."""
    small = (max(1, -(-shape[0] // scale)), max(1, -(-shape[1] // scale)))
    field = ndi.gaussian_filter(rng.standard_normal(small).astype(np.float32), np.asarray(sigma) / scale)
    field -= field.mean()
    std = float(field.std())
    field = field / std if std > 1e-3 else np.zeros_like(field)  # a tiny image has no smooth variation
    if scale > 1:
        field = ndi.zoom(field, scale, order=1)[: shape[0], : shape[1]]
    return field


def _splat(
    target: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    angles: np.ndarray,
    values: np.ndarray,
    labels: np.ndarray | None = None,
    label_values: np.ndarray | None = None,
) -> None:
    """Draw filled ellipses into ``target`` in place (per-pixel maximum), all at once.

    Parameters
    ----------
    target : np.ndarray
        float32 (H, W).
    centres : np.ndarray
        float (N, 2) row, column.
    radii : np.ndarray
        float (N, 2) semi-axes: along the direction ``angles`` and across it.
    angles : np.ndarray
        float (N,) direction of the first semi-axis, radians from the row axis.
    values : np.ndarray
        float (N,) value inside each ellipse; edges are softened over about one pixel.
    labels, label_values : np.ndarray, optional
        If given, ``labels`` (H, W) receives ``label_values[i]`` where ellipse i is drawn at full value.
    """
    if len(centres) == 0:
        return
    reach = int(np.ceil(radii.max())) + 1
    off = np.arange(-reach, reach + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    rows = np.round(centres[:, 0]).astype(np.intp)[:, None] + dy.ravel()[None]
    cols = np.round(centres[:, 1]).astype(np.intp)[:, None] + dx.ravel()[None]
    fy = rows - centres[:, :1]
    fx = cols - centres[:, 1:]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    along = fy * cos + fx * sin
    across = -fy * sin + fx * cos
    rho = np.sqrt((along / radii[:, :1]) ** 2 + (across / radii[:, 1:]) ** 2)
    edge = np.clip((1.0 - rho) * radii[:, 1:] + 0.5, 0.0, 1.0)  # ~1 px soft edge
    inside = (edge > 0) & (rows >= 0) & (rows < target.shape[0]) & (cols >= 0) & (cols < target.shape[1])
    value = (edge * values[:, None])[inside]
    np.maximum.at(target, (rows[inside], cols[inside]), value.astype(target.dtype))
    if labels is not None:
        solid = inside & (edge >= 0.5)
        ids = np.broadcast_to(label_values[:, None], rows.shape)
        labels[rows[solid], cols[solid]] = ids[solid]


def _star_partition(shape: tuple[int, int], shapes: list[dict]) -> np.ndarray:
    """Label image of irregular star-shaped objects; overlaps go to the object whose shape is nearest.

    Each object is an ellipse (centre, semi-axes ``a``, ``b``, ``angle``) whose radius is modulated by
    a few harmonics; where objects overlap, the pixel goes to the object with the smallest normalised
    radius, so overlapping objects end up touching along a shared border.
    """
    height, width = shape
    best = np.full(shape, np.inf, np.float32)
    labels = np.zeros(shape, np.uint16)
    for index, s in enumerate(shapes, start=1):
        extent = max(s["a"], s["b"]) * (1.0 + sum(abs(c) for c, _ in s["harmonics"])) + 2
        r0, r1 = int(max(0, s["cy"] - extent)), int(min(height, s["cy"] + extent + 1))
        c0, c1 = int(max(0, s["cx"] - extent)), int(min(width, s["cx"] + extent + 1))
        if r0 >= r1 or c0 >= c1:
            continue
        yy, xx = np.ogrid[r0:r1, c0:c1]
        dy, dx = yy - s["cy"], xx - s["cx"]
        cos, sin = np.cos(s["angle"]), np.sin(s["angle"])
        u = (dx * cos + dy * sin) / s["a"]
        v = (-dx * sin + dy * cos) / s["b"]
        phi = np.arctan2(v, u)
        modulation = 1.0 + sum(c * np.cos(k * phi + p) for k, (c, p) in enumerate(s["harmonics"], start=2))
        rho = (np.sqrt(u * u + v * v) / modulation).astype(np.float32)
        window = best[r0:r1, c0:c1]
        take = (rho < 1.0) & (rho < window)
        window[take] = rho[take]
        labels[r0:r1, c0:c1][take] = index
    return labels


def _relabel_sequential(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop objects smaller than ``min_size`` pixels (and stray fragments); renumber 1..N in raster order."""
    counts = np.bincount(labels.ravel())
    keep = counts >= min_size
    keep[0] = False
    # A pixel fragment cut off from its object by a neighbour: keep only each object's largest piece.
    pieces, n = ndi.label(labels > 0)
    if n:
        piece_size = np.bincount(pieces.ravel())
        owner = np.zeros(n + 1, np.int64)
        owner[pieces.ravel()] = labels.ravel()
        largest = np.zeros(counts.size, np.int64)
        np.maximum.at(largest, owner[1:], piece_size[1:])
        small_piece = piece_size < largest[owner]
        small_piece[0] = False
        labels = np.where(small_piece[pieces], 0, labels)
    keep &= np.bincount(labels.ravel(), minlength=counts.size) >= min_size
    _, first = np.unique(labels.ravel(), return_index=True)
    order = labels.ravel()[np.sort(first)]
    mapping = np.zeros(counts.size, np.uint16)
    kept = [v for v in order if v and keep[v]]
    mapping[kept] = np.arange(1, len(kept) + 1, dtype=np.uint16)
    return mapping[labels]


def _place(rng: np.random.Generator, shape, sizes, coverage: float, spacing, margin: float, tries: int = 400):
    """Random centres and radii with a soft minimum spacing; stops at the target area coverage."""
    height, width = shape
    placed: list[tuple[float, float, float]] = []
    area = 0.0
    for _ in range(tries):
        if area >= coverage * height * width:
            break
        r = rng.uniform(*sizes)
        cy = rng.uniform(-margin * r, height + margin * r)
        cx = rng.uniform(-margin * r, width + margin * r)
        factor = rng.uniform(*spacing)
        if all(np.hypot(cy - y, cx - x) >= factor * (r + q) for y, x, q in placed):
            placed.append((cy, cx, r))
            visible_h = min(height, cy + r) - max(0, cy - r)
            visible_w = min(width, cx + r) - max(0, cx - r)
            area += max(0.0, visible_h) * max(0.0, visible_w) * np.pi / 4
    return placed


def _gland_shapes(rng: np.random.Generator, shape: tuple[int, int]) -> list[dict]:
    shapes = []
    for cy, cx, r in _place(rng, shape, sizes=(32, 105), coverage=0.5, spacing=(0.82, 1.15), margin=0.6):
        elongation = rng.uniform(1.0, 1.7)
        shapes.append(
            {
                "cy": cy,
                "cx": cx,
                "a": r * np.sqrt(elongation),
                "b": r / np.sqrt(elongation),
                "angle": rng.uniform(0, np.pi),
                "harmonics": [(rng.uniform(0, 0.12) / k, rng.uniform(0, 2 * np.pi)) for k in range(2, 6)],
            }
        )
    return shapes


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
    labels = _relabel_sequential(_star_partition(shape, shapes), min_size=120)
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
    low = _smooth_noise(rng, shape, 14, scale=4)
    epithelium_depth = thickness[labels] * np.clip(1.0 + 0.3 * low, 0.5, 1.6)
    lumen = gland & (depth > epithelium_depth)
    epithelium = gland & ~lumen

    # Stain concentrations.
    fibres_a = _smooth_noise(rng, shape, (0.8, 5.0))
    fibres_b = _smooth_noise(rng, shape, (5.0, 0.8))
    mix = 1.0 / (1.0 + np.exp(-2.0 * _smooth_noise(rng, shape, 30, scale=4)))
    fibres = mix * fibres_a + (1 - mix) * fibres_b
    grain = rng.standard_normal(shape).astype(np.float32)
    patches = _smooth_noise(rng, shape, 20, scale=4)
    eosin = np.clip(0.72 + 0.14 * patches + 0.1 * fibres + 0.05 * grain, 0.2, None)
    haem = 0.13 + 0.03 * patches + 0.02 * fibres + 0.03 * grain
    # White spaces: soft-edged holes in the stroma and sharp retraction gaps around some glands.
    pale = np.clip((_smooth_noise(rng, shape, 5, scale=2) - 1.6) / 0.3, 0, 1)
    pale[(outside > 0) & (outside <= gap[nearest_gland])] = 1.0
    eosin *= 1 - 0.92 * pale
    haem *= 1 - 0.9 * pale
    holes = pale > 0.5

    eosin[epithelium] = (0.5 + 0.05 * grain[epithelium]) * purple[labels[epithelium]]
    haem[epithelium] = (0.42 + 0.05 * grain[epithelium]) * purple[labels[epithelium]]
    lumen_texture = np.clip(_smooth_noise(rng, shape, 2.0), 0, None)
    lumen_eosin = np.where(debris[labels], 0.12 + 0.2 * lumen_texture, 0.04 + 0.02 * lumen_texture)
    eosin[lumen] = lumen_eosin[lumen]
    haem[lumen] = 0.03

    # Goblet cells: pale vacuoles in the middle of the epithelium of some glands.
    goblet_map = np.zeros(shape, np.float32)
    middle = epithelium & goblets[labels] & (depth > 0.45 * epithelium_depth) & (depth < 0.9 * epithelium_depth)
    centres, radii, angles = _ellipse_field(rng, middle.sum() / 110, middle, (4, 8), (3.5, 6))
    _splat(goblet_map, centres, radii, angles, rng.uniform(0.6, 0.9, len(centres)))
    eosin *= 1 - goblet_map
    haem *= 1 - goblet_map

    # Nuclei: crowded, elongated perpendicular to the basement membrane in the epithelium; sparse and
    # round or spindle-shaped in the stroma.
    nuclei = np.zeros(shape, np.float32)
    gy, gx = (g[1:-1, 1:-1] for g in np.gradient(np.pad(ndi.gaussian_filter(depth, 2.0), 1, mode="edge")))
    basal = epithelium & (depth >= 1.0) & (depth < np.minimum(0.55 * epithelium_depth, 14))
    centres, radii, angles = _ellipse_field(rng, basal.sum() / 40, basal, (5.5, 9), (2.6, 3.8), np.arctan2(gx, gy))
    _splat(nuclei, centres, radii, angles, rng.uniform(0.8, 1.1, len(centres)))
    stroma = ~gland & ~holes
    centres, radii, angles = _ellipse_field(rng, stroma.sum() / 260, stroma, (2.3, 6.5), (1.8, 3.2))
    _splat(nuclei, centres, radii, angles, rng.uniform(0.8, 1.3, len(centres)))
    chromatin = 0.85 + 0.15 * _smooth_noise(rng, shape, 0.7)
    haem += 1.15 * nuclei * chromatin
    eosin += 0.25 * nuclei

    density = haem[..., None] * _HAEMATOXYLIN_OD + eosin[..., None] * _EOSIN_OD
    rgb = _BRIGHTFIELD * np.exp(-np.clip(density, 0, None))
    rgb = ndi.gaussian_filter(rgb, (0.7, 0.7, 0)) + rng.normal(0, 2.5, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels


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
    shapes = []
    for cy, cx, r in _place(rng, shape, sizes=(6, 13), coverage=0.3, spacing=(0.7, 1.2), margin=0.3):
        elongation = rng.uniform(1.0, 1.6)
        shapes.append(
            {
                "cy": cy,
                "cx": cx,
                "a": r * np.sqrt(elongation),
                "b": r / np.sqrt(elongation),
                "angle": rng.uniform(0, np.pi),
                "harmonics": [(rng.uniform(0, 0.06), rng.uniform(0, 2 * np.pi)) for _ in range(2)],
            }
        )
    labels = _relabel_sequential(_star_partition(shape, shapes), min_size=15)
    n = int(labels.max())
    brightness = rng.uniform(0.45, 1.0, n + 1).astype(np.float32)
    brightness[0] = 0
    texture = 0.85 + 0.15 * _smooth_noise(rng, shape, 1.2)
    signal = ndi.gaussian_filter(brightness[labels] * texture, 1.0)
    background = 0.06 + 0.02 * _smooth_noise(rng, shape, 40, scale=4)
    image = 255 * (background + 0.8 * signal) + rng.normal(0, 3.0, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


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
    light *= 1 + 0.01 * _smooth_noise(rng, shape, 60, scale=8)
    transmission = np.ones(shape, np.float32)
    for mask, rel in zip(masks, relative):
        absorb = np.where(mask, absorption + 0.2 * rel**2, 0.0)
        transmission *= 1.0 - absorb
    transmission = ndi.gaussian_filter(transmission, 0.8)
    image = 95 + light * transmission + rng.normal(0, 15, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels, masks
