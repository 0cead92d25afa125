"""Drawing helpers shared by the synthetic scenes (:mod:`.`): smooth noise, filled ellipses,
star-shaped instances placed without overlap, sequential relabelling.

numpy and scipy only; every function draws from the ``rng`` it is given, in a fixed order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma, scale: int = 1) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and unit standard deviation (made at 1/scale resolution)."""
    small = (max(1, -(-shape[0] // scale)), max(1, -(-shape[1] // scale)))
    field = ndi.gaussian_filter(rng.standard_normal(small).astype(np.float32), np.asarray(sigma) / scale)
    field -= field.mean()
    std = float(field.std())
    field = field / std if std > 1e-3 else np.zeros_like(field)  # a tiny image has no smooth variation
    if scale > 1:
        field = ndi.zoom(field, scale, order=1)[: shape[0], : shape[1]]
    return field


def splat(
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


def star_partition(shape: tuple[int, int], shapes: list[dict]) -> np.ndarray:
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


def relabel_sequential(labels: np.ndarray, min_size: int) -> np.ndarray:
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


def place_disks(rng: np.random.Generator, shape, sizes, coverage: float, spacing, margin: float, tries: int = 400):
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


def random_stars(
    rng: np.random.Generator, placed: list, max_elongation: float, amplitude: float, orders
) -> list[dict]:
    """Star-shaped outlines for :func:`star_partition`, one per disk from :func:`place_disks`.

    Each disk (cy, cx, r) becomes an ellipse of the same area, elongated up to ``max_elongation`` at a random
    angle, with one random harmonic per entry of ``orders``: amplitude uniform in [0, ``amplitude``) divided by
    that entry, and a random phase. The random draws are made in a fixed order (elongation, angle, then the
    harmonics), so a seed gives the same shapes.
    """
    shapes = []
    for cy, cx, r in placed:
        elongation = rng.uniform(1.0, max_elongation)
        shapes.append(
            {
                "cy": cy,
                "cx": cx,
                "a": r * np.sqrt(elongation),
                "b": r / np.sqrt(elongation),
                "angle": rng.uniform(0, np.pi),
                "harmonics": [(rng.uniform(0, amplitude) / k, rng.uniform(0, 2 * np.pi)) for k in orders],
            }
        )
    return shapes
