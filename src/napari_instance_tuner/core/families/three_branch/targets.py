"""Training targets from instance labels: foreground, boundary and centroid maps.

Section IV of the three-branch paper: boundaries are found with Canny on the annotation and dilated;
centroids are the centres of the objects' tight bounding boxes, dilated. The paper found widths of about
11 px (boundary) and 14 px (centroid) best at its 256x256 input scale (images downscaled ~3x). Widths
here are given at that reference scale and converted to the training pixel scale, so a model trained at
half resolution gets proportionally wider targets.

Deliberate differences: the boundary of each object is taken from the label image directly (pixels
whose 4-neighbourhood contains another label), which is what Canny finds on a piecewise-constant label
map, without Canny's smoothing. A bounding-box centre can fall outside a non-convex gland, so
``centroid_mode="inside"`` uses the object's pixel of maximum distance to its border instead.

Optional, not in the paper: ``centroid_mode="skeleton"`` replaces the centroid disk by the skeleton-aware
distance transform (SDT) of Lin et al. 2023 (arXiv 2310.05262), a float map in [0, 1] per object:
``(d_B / (d_B + d_S)) ** alpha`` with d_B the distance to the object's border and d_S the distance to its
skeleton: 1 along the skeleton, falling to ~0 at the border. Thresholded, it gives every gland one core that
follows its shape, however long or irregular, and touching glands cores that stay apart (the SDT paper's
testB figures: F1 0.866, Dice 0.851). The skeleton is taken of the Gaussian-smoothed object mask, as the
authors' code does (pytorch_connectomics; there with a fixed width, here a tenth of the object's half-width, at
least 1 px), so that small bumps of the outline do not grow branches. Deliberate differences from the SDT paper:
its network predicts the SDT as its only output, with a loss of its own; here it replaces the centroid branch's
target and is learned with that branch's weighted binary cross-entropy on soft targets, so the architecture,
the other two branches and the post-processing (the centroid filter, or the watershed from centroid markers)
stay as they are. Measured on GlaS in session 22 (docs/benchmarks.md, issue 20): fewer missed
glands and false positives, more merged ones; not adopted for the shipped gland model.

Optional, not in the paper (off by default): the *separation weight* of the U-Net paper (Ronneberger et al.
2015, eq. 2), ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` with d1, d2 the distances to the nearest and
second-nearest object, added to the foreground branch's loss weight on background pixels. It makes the thin
stroma between crowded glands count, where the shipped glands models merge neighbours (docs/benchmarks.md,
issue 20, session 16).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

#: The paper's input scale relative to GlaS' native resolution: 775x522 images were resized to 256x256,
#: so we take the geometric mean of the two axes' factors (~0.40).
PAPER_SCALE = (256 / 775 * 256 / 522) ** 0.5


@dataclass(frozen=True)
class TargetConfig:
    """How targets are drawn.

    Attributes
    ----------
    boundary_width : float
        Boundary band width in pixels at :data:`PAPER_SCALE` (paper: ~11).
    centroid_width : float
        Centroid disk diameter in pixels at :data:`PAPER_SCALE` (paper: ~14).
    centroid_mode : str
        ``"bbox"`` (paper: centre of the tight bounding box), ``"inside"`` (maximum of the distance
        transform, always inside the object) or ``"skeleton"`` (the skeleton-aware distance transform, a
        float map; ``centroid_width`` is then unused).
    separation_weight : float
        U-Net's w0: peak extra foreground loss weight between two objects (0: off, the paper's loss).
    separation_sigma : float
        U-Net's sigma, in pixels at :data:`PAPER_SCALE`.
    skeleton_alpha : float
        The SDT's exponent alpha (``centroid_mode="skeleton"`` only; the SDT paper's 0.8).
    """

    boundary_width: float = 11.0
    centroid_width: float = 14.0
    centroid_mode: str = "bbox"
    separation_weight: float = 0.0
    separation_sigma: float = 4.0
    skeleton_alpha: float = 0.8

    def widths_at(self, pixel_scale: float) -> tuple[float, float]:
        """(boundary, centroid) widths in pixels at a training pixel scale (1.0 = native)."""
        factor = pixel_scale / PAPER_SCALE
        return self.boundary_width * factor, self.centroid_width * factor

    def separation_sigma_at(self, pixel_scale: float) -> float:
        """:attr:`separation_sigma` in pixels at a training pixel scale (1.0 = native)."""
        return self.separation_sigma * pixel_scale / PAPER_SCALE

    def to_dict(self) -> dict:
        """JSON-able dict (``skeleton_alpha`` only in skeleton mode, so older metadata stays as it was)."""
        out = asdict(self)
        if self.centroid_mode != "skeleton":
            del out["skeleton_alpha"]
        return out


def boundary_pixels(labels: np.ndarray) -> np.ndarray:
    """bool (H, W): object pixels with a 4-neighbour of a different label (background included)."""
    lab = np.pad(labels, 1, mode="edge")
    centre = lab[1:-1, 1:-1]
    edge = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= lab[dy : dy + labels.shape[0], dx : dx + labels.shape[1]] != centre
    return edge & (centre > 0)


def centre_points(labels: np.ndarray, mode: str = "bbox") -> np.ndarray:
    """int (N, 2) row/col of one centre point per object (``"bbox"`` or ``"inside"``)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros((0, 2), int)
    slices = ndi.find_objects(labels)
    points = []
    for i in ids:
        sl = slices[i - 1]
        if mode == "bbox":
            points.append(((sl[0].start + sl[0].stop - 1) // 2, (sl[1].start + sl[1].stop - 1) // 2))
        elif mode == "inside":
            mask = np.pad(labels[sl] == i, 1)
            dist = ndi.distance_transform_edt(mask)
            r, c = np.unravel_index(np.argmax(dist), dist.shape)
            points.append((sl[0].start + r - 1, sl[1].start + c - 1))
        else:
            raise ValueError(f"centroid_mode {mode!r} is not 'bbox', 'inside' or 'skeleton'")
    return np.asarray(points, int)


def make_targets(labels: np.ndarray, config: TargetConfig, pixel_scale: float) -> np.ndarray:
    """Build the three target maps for one label image at training resolution.

    Parameters
    ----------
    labels : np.ndarray
        Integer (H, W) instance labels at training resolution, 0 = background.
    config : TargetConfig
    pixel_scale : float
        Scale of ``labels`` relative to the data's native resolution.

    Returns
    -------
    np.ndarray
        uint8 (3, H, W): foreground, boundary, centroid (0 or 1); float32 in [0, 1] when
        ``config.centroid_mode`` is ``"skeleton"`` (the centroid channel is then the SDT).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int32, copy=False)
    b_width, c_width = config.widths_at(pixel_scale)
    fg = labels > 0
    # A band of the requested total width centred on the boundary line: distance < width / 2.
    edge = boundary_pixels(labels)
    boundary = ndi.distance_transform_edt(~edge) < b_width / 2 if edge.any() else np.zeros_like(fg)
    if config.centroid_mode == "skeleton":
        centroid = skeleton_distance(labels, config.skeleton_alpha)
        return np.stack([fg.astype(np.float32), boundary.astype(np.float32), centroid])
    centroid = np.zeros_like(fg)
    pts = centre_points(labels, config.centroid_mode)
    if len(pts):
        seeds = np.ones(labels.shape, bool)
        seeds[pts[:, 0], pts[:, 1]] = False
        centroid = ndi.distance_transform_edt(seeds) < c_width / 2
    return np.stack([fg, boundary, centroid]).astype(np.uint8)


def skeleton_distance(labels: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """The skeleton-aware distance transform of every object (Lin et al. 2023): float32 (H, W) in [0, 1].

    Parameters
    ----------
    labels : np.ndarray
        Integer (H, W) instance labels, 0 = background.
    alpha : float
        Exponent of ``d_B / (d_B + d_S)``; below 1 it widens the high plateau around the skeleton.

    Returns
    -------
    np.ndarray
        float32 (H, W): 1 on each object's skeleton, ``(d_B / (d_B + d_S)) ** alpha`` elsewhere inside it
        (d_B: distance to the nearest pixel outside the object, so at least 1, the image's edge counting as
        outside; d_S: distance to the skeleton),
        0 on the background. An object too thin to keep a skeleton after smoothing gets its pixel of maximum
        ``d_B`` as skeleton.
    """
    from skimage.morphology import skeletonize  # deferred: scikit-image

    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.float32)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = np.pad(labels[box] == index, 1)
        d_border = ndi.distance_transform_edt(mask)
        # Smoothing with sigma ~ a tenth of the object's half-width prunes the outline's small bumps.
        sigma = max(1.0, 0.1 * float(d_border.max()))
        skeleton = skeletonize(ndi.gaussian_filter(mask.astype(np.float32), sigma) > 0.5) & mask
        if not skeleton.any():
            skeleton = np.zeros_like(mask)
            skeleton[np.unravel_index(np.argmax(d_border), mask.shape)] = True
        d_skeleton = ndi.distance_transform_edt(~skeleton)
        energy = (d_border / (d_border + d_skeleton)) ** alpha
        inner = mask[1:-1, 1:-1]
        out[box][inner] = energy[1:-1, 1:-1][inner]
    return out


def separation_weights(labels: np.ndarray, weight: float, sigma: float) -> np.ndarray:
    """U-Net's separation weight: float32 (H, W), ``weight * exp(-(d1 + d2)**2 / (2 sigma**2))`` on background.

    Parameters
    ----------
    labels : np.ndarray
        Integer (H, W) instance labels, 0 = background.
    weight, sigma : float
        Peak weight (w0) and width (pixels of ``labels``).

    Returns
    -------
    np.ndarray
        float32 (H, W); 0 on objects, and wherever fewer than two objects lie within ``4 sigma``.

    Notes
    -----
    Each object's distance map is computed in its bounding box widened by ``4 sigma`` only (pixels farther
    away get ``weight * exp(-8)`` or less, taken as 0), so the cost grows with the objects' area, not with
    their number times the image's.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.float32)
    if weight <= 0 or sigma <= 0 or labels.max() <= 0:
        return out
    reach = int(np.ceil(4 * sigma))
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(slice(max(0, b.start - reach), min(n, b.stop + reach)) for b, n in zip(box, labels.shape))
        dist = ndi.distance_transform_edt(labels[window] != index).astype(np.float32)
        dist[dist > reach] = np.inf
        near, second = d1[window], d2[window]
        second[...] = np.minimum(second, np.maximum(near, dist))
        near[...] = np.minimum(near, dist)
    gap = (labels == 0) & np.isfinite(d2)
    out[gap] = weight * np.exp(-((d1[gap] + d2[gap]) ** 2) / (2 * sigma**2))
    return out
