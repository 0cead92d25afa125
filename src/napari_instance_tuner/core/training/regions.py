"""Checked regions and corrected pairs: from a user's shapes and layers to fine-tuning input.

Users rarely correct a whole slide; they draw rectangles (or polygons) around the parts they checked.
:func:`rasterise` turns those shapes into a bool mask, :func:`to_pixels` maps shape vertices drawn in
one layer's coordinates into another layer's pixel grid, and :func:`corrected_pair` validates an
(image, labels, region) triple as a :class:`~.finetune.CorrectedImage`. Headless: numpy and
scikit-image only.

Pixel convention (napari's): pixel ``(r, c)`` covers ``[r - 0.5, r + 0.5] x [c - 0.5, c + 0.5]``; it
belongs to a shape when its centre lies inside the shape or on its edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InstanceTunerError
from .finetune import CorrectedImage

#: Shape types that enclose an area (napari's names).
AREA_TYPES = ("rectangle", "polygon", "ellipse")


def to_pixels(
    vertices: np.ndarray,
    src_scale: Sequence[float] = (1.0, 1.0),
    src_translate: Sequence[float] = (0.0, 0.0),
    dst_scale: Sequence[float] = (1.0, 1.0),
    dst_translate: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
    """Map (N, D) vertices from a source layer's data coordinates to a 2D target layer's pixels.

    Only the last two axes (row, column) are kept: shapes drawn on a stack carry a slice coordinate
    first. Scales and translates are the layers' own (napari ``layer.scale`` / ``layer.translate``);
    their last two entries are used. Rotation, shear and affine are not supported.

    Returns
    -------
    np.ndarray
        float64 (N, 2) row, column in the target's pixel coordinates.

    Examples
    --------
    >>> to_pixels(np.array([[10.0, 20.0]]), src_scale=(2, 2), dst_scale=(4, 4)).tolist()
    [[5.0, 10.0]]
    """
    v = np.asarray(vertices, np.float64)[:, -2:]
    world = v * np.asarray(src_scale, float)[-2:] + np.asarray(src_translate, float)[-2:]
    return (world - np.asarray(dst_translate, float)[-2:]) / np.asarray(dst_scale, float)[-2:]


def _ellipse_mask(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # napari stores an ellipse as the 4 corners of its (possibly rotated) bounding box.
    centre = vertices.mean(axis=0)
    u, v = vertices[1] - vertices[0], vertices[2] - vertices[1]
    a, b = np.linalg.norm(u) / 2, np.linalg.norm(v) / 2
    mask = np.zeros(shape, bool)
    if a == 0 or b == 0:
        return mask
    lo = np.clip(np.floor(vertices.min(axis=0)).astype(int), 0, shape)
    hi = np.clip(np.ceil(vertices.max(axis=0)).astype(int) + 1, 0, shape)
    rr, cc = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]]
    d = np.stack([rr - centre[0], cc - centre[1]], -1)
    inside = (d @ (u / (2 * a))) ** 2 / a**2 + (d @ (v / (2 * b))) ** 2 / b**2 <= 1.0 + 1e-9
    mask[lo[0] : hi[0], lo[1] : hi[1]] = inside
    return mask


def rasterise(shapes: Sequence[np.ndarray], shape_types: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """Union of shapes as a bool mask of the target's pixel grid.

    Parameters
    ----------
    shapes : sequence of np.ndarray
        (N, 2) vertices per shape, in the target's pixel coordinates (see :func:`to_pixels`).
    shape_types : sequence of str
        napari's type of each shape: ``"rectangle"``, ``"polygon"`` or ``"ellipse"``.
    shape : tuple of int
        (H, W) of the mask.

    Returns
    -------
    np.ndarray
        bool (H, W): True where a pixel centre is inside (or on the edge of) at least one shape.

    Raises
    ------
    InstanceTunerError
        For lines and paths (they enclose no area) or a vertex count that does not fit the type.

    Examples
    --------
    >>> square = np.array([[0.5, 0.5], [0.5, 2.5], [2.5, 2.5], [2.5, 0.5]])
    >>> rasterise([square], ["rectangle"], (4, 4)).sum()
    np.int64(4)
    """
    from skimage.draw import polygon2mask

    if len(shapes) != len(shape_types):
        raise InstanceTunerError(f"{len(shapes)} shapes but {len(shape_types)} shape types")
    mask = np.zeros(shape, bool)
    for i, (vertices, kind) in enumerate(zip(shapes, shape_types)):
        vertices = np.asarray(vertices, np.float64)
        if kind not in AREA_TYPES:
            raise InstanceTunerError(
                f"shape {i + 1} is a {kind}, which marks no area; draw rectangles or polygons around the checked regions"
            )
        if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) < 3 or (kind != "polygon" and len(vertices) != 4):
            raise InstanceTunerError(f"shape {i + 1} ({kind}) has vertices of shape {vertices.shape}")
        mask |= _ellipse_mask(vertices, shape) if kind == "ellipse" else polygon2mask(shape, vertices)
    return mask


def check_pair_shapes(image_shape: Sequence[int], rgb: bool, labels_shape: Sequence[int]) -> tuple[int, int]:
    """Check that an image layer and a Labels layer can form a 2D training pair; return (H, W).

    Raises
    ------
    InstanceTunerError
        If the labels are not 2D, the image is a stack, or their (H, W) differ.
    """
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    channels = rgb or (len(image_shape) == 3 and image_shape[-1] <= 4)
    if len(labels_shape) != 2 or len(image_shape) != (3 if channels else 2):
        raise InstanceTunerError(
            f"fine-tuning takes 2D images and 2D labels; got an image of shape {image_shape} and labels of "
            f"shape {labels_shape}"
        )
    if image_shape[:2] != labels_shape:
        raise InstanceTunerError(f"labels of shape {labels_shape} do not match the image's {image_shape[:2]}")
    return labels_shape


def corrected_pair(image, labels, rgb: bool = False, region: np.ndarray | None = None):
    """Validate one (image, corrected labels, checked region) triple as a fine-tuning pair.

    Parameters
    ----------
    image : array-like
        (H, W) or (H, W, C) image (numpy, dask...; read into memory here).
    labels : array-like
        Integer (H, W) corrected instance labels.
    rgb : bool
        Whether the image's last axis holds colour channels.
    region : np.ndarray or None
        bool (H, W) mask of the checked region (see :func:`rasterise`); None: the whole image.

    Returns
    -------
    CorrectedImage

    Raises
    ------
    InstanceTunerError
        On mismatched shapes, non-integer labels or an empty region.
    """
    image, labels = np.asarray(image), np.asarray(labels)
    shape = check_pair_shapes(image.shape, rgb, labels.shape)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InstanceTunerError(f"labels must be integers, got {labels.dtype}")
    if region is not None:
        if region.shape != shape:
            raise InstanceTunerError(f"the checked region of shape {region.shape} does not match the labels' {shape}")
        if not region.any():
            raise InstanceTunerError("the checked region does not overlap the image: draw its shapes on the image")
    return CorrectedImage(image, labels, region)
