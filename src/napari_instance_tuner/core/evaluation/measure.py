"""Per-object measurements with scikit-image ``regionprops_table``, for label images and overlapping masks.

Coordinates are array indices as in napari and scikit-image: pixel ``(row, col)`` has its centre at
``(y, x) = (row, col)``, so a square of rows 2..5 has ``centroid_y`` 3.5. Bounding boxes are half-open
(``bbox_y1`` is one past the last row). Lengths and areas are in pixels.
"""

from __future__ import annotations

import numpy as np

from ..errors import InstanceTunerError
from ..sparse_masks import SparseMasks

_SHAPE_PROPS = ("label", "area", "perimeter", "centroid", "bbox", "eccentricity", "solidity",
                "axis_major_length", "axis_minor_length")
_INTENSITY_PROPS = ("intensity_mean", "intensity_min", "intensity_max")
_RENAME = {
    "centroid-0": "centroid_y", "centroid-1": "centroid_x",
    "bbox-0": "bbox_y0", "bbox-1": "bbox_x0", "bbox-2": "bbox_y1", "bbox-3": "bbox_x1",
    "axis_major_length": "major_axis_length", "axis_minor_length": "minor_axis_length",
}
_SHIFT_Y = ("centroid_y", "bbox_y0", "bbox_y1")
_SHIFT_X = ("centroid_x", "bbox_x0", "bbox_x1")


def _intensity_name(column: str, channels: int) -> str:
    # "intensity_mean-1" -> "mean_intensity_ch1"; a single channel keeps a plain "mean_intensity".
    stat, _, channel = column.partition("-")
    name = f"{stat.split('_')[1]}_intensity"
    return f"{name}_ch{channel}" if channels > 1 and channel else name


def _as_intensity(image: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray | None, int]:
    if image is None:
        return None, 0
    arr = np.asarray(image)
    if arr.ndim == len(shape) + 1 and arr.shape[0] <= 4 and arr.shape[1:] == tuple(shape):
        arr = np.moveaxis(arr, 0, -1)  # channel-first
    if arr.shape[: len(shape)] != tuple(shape) or arr.ndim > len(shape) + 1:
        raise InstanceTunerError(
            f"the source image of shape {np.shape(image)} does not match the labels of shape {tuple(shape)}"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InstanceTunerError(f"the source image has dtype {arr.dtype}; intensities need a numeric image")
    return arr.astype(np.float64, copy=False), (arr.shape[-1] if arr.ndim == len(shape) + 1 else 1)


def _table(labels: np.ndarray, intensity: np.ndarray | None, channels: int) -> dict[str, np.ndarray]:
    from skimage.measure import regionprops_table
    from skimage.segmentation import relabel_sequential

    props = _SHAPE_PROPS + (_INTENSITY_PROPS if intensity is not None else ())
    # Sequential ids first: regionprops allocates per label value, and ids may be as large as 2**32 - 1.
    sequential, _, inverse = relabel_sequential(labels)
    raw = regionprops_table(sequential, intensity_image=intensity, properties=props)
    out = {}
    for key, values in raw.items():
        name = _intensity_name(key, channels) if key.startswith("intensity_") else _RENAME.get(key, key)
        out[name] = np.asarray(values)
    if "label" in out:
        out["label"] = np.asarray(inverse[out["label"]], dtype=labels.dtype)
    return out


def measure_labels(labels: np.ndarray, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Measurements of every object of a 2D label image, one row per label, sorted by label.

    Parameters
    ----------
    labels : np.ndarray
        Non-negative integer (H, W); 0 is background.
    image : np.ndarray, optional
        Source image (H, W), (H, W, C) or (C, H, W) with C <= 4, for per-channel intensity statistics.

    Returns
    -------
    dict[str, np.ndarray]
        Column name -> values: ``label, area, perimeter, centroid_y, centroid_x, bbox_y0, bbox_x0, bbox_y1,
        bbox_x1, eccentricity, solidity, major_axis_length, minor_axis_length`` and, with an image,
        ``mean_intensity, min_intensity, max_intensity`` (suffixed ``_ch0``, ``_ch1``... for several channels).

    Examples
    --------
    >>> lab = np.zeros((8, 24), np.uint16); lab[2:6, 10:20] = 7
    >>> t = measure_labels(lab); (int(t["label"][0]), float(t["area"][0]), float(t["centroid_x"][0]))
    (7, 40.0, 14.5)
    """
    labels = _check_labels(labels, 2)
    intensity, channels = _as_intensity(image, labels.shape)
    return _table(labels, intensity, channels)


def measure_masks(masks: SparseMasks | np.ndarray, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Measurements of possibly overlapping objects, one row per non-empty object, labelled 1..N by position.

    Parameters
    ----------
    masks : SparseMasks or np.ndarray
        The objects as boxes and crops, or a bool (N, H, W) stack. Each object is measured in its own box
        (padded by one pixel), never on a full-image canvas.
    image : np.ndarray, optional
        As for :func:`measure_labels`.
    """
    if not isinstance(masks, SparseMasks):
        masks = np.asarray(masks, bool)
        if masks.ndim != 3:
            raise InstanceTunerError(f"a mask stack must be (N, H, W); got shape {masks.shape}")
        masks = SparseMasks.from_dense(masks)
    height, width = masks.shape
    intensity, channels = _as_intensity(image, masks.shape)
    rows = []
    for index, (by, bx, mask) in enumerate(masks.crops(), start=1):
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if ys.size == 0:
            continue
        # Measure the tight box padded by one pixel (perimeter needs the border), then shift back to the image.
        ty0, ty1, tx0, tx1 = by + ys[0], by + ys[-1] + 1, bx + xs[0], bx + xs[-1] + 1
        y0, y1, x0, x1 = max(ty0 - 1, 0), min(ty1 + 1, height), max(tx0 - 1, 0), min(tx1 + 1, width)
        crop = np.zeros((y1 - y0, x1 - x0), np.int32)
        crop[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] * index
        table = _table(crop, None if intensity is None else intensity[y0:y1, x0:x1], channels)
        for key in _SHIFT_Y:
            table[key] = table[key] + y0
        for key in _SHIFT_X:
            table[key] = table[key] + x0
        rows.append(table)
    if not rows:
        return _table(np.zeros((1, 1), np.int32), None if intensity is None else intensity[:1, :1], channels)
    return {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}


def add_scores(table: dict[str, np.ndarray], scores: np.ndarray | None) -> dict[str, np.ndarray]:
    """Add a ``score`` column: object ``label`` gets ``scores[label - 1]`` (the :class:`Instances` order).

    Raises
    ------
    InstanceTunerError
        If a label has no score.
    """
    if scores is None:
        return table
    scores = np.asarray(scores, np.float64).ravel()
    labels = table["label"].astype(np.int64)
    if labels.size and labels.max() > scores.size:
        raise InstanceTunerError(f"{scores.size} scores for objects labelled up to {int(labels.max())}")
    return {**table, "score": scores[labels - 1]}


def measure_stack(labels: np.ndarray, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Measurements of a label image (H, W) or, slice by slice, a stack (Z, H, W) with a ``slice`` column."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return measure_labels(labels, image)
    if labels.ndim != 3:
        raise InstanceTunerError(f"labels of shape {labels.shape} cannot be measured; expected (H, W) or (Z, H, W)")
    tables = []
    for z in range(labels.shape[0]):
        table = measure_labels(labels[z], None if image is None else np.asarray(image)[z])
        tables.append({"slice": np.full(table["label"].shape, z, np.int64), **table})
    return {key: np.concatenate([t[key] for t in tables]) for key in tables[0]}


def _check_labels(labels: np.ndarray, ndim: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != ndim:
        raise InstanceTunerError(f"expected a {ndim}D label image; got shape {arr.shape}")
    if arr.size == 0:
        raise InstanceTunerError(f"the label image is empty (shape {arr.shape})")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InstanceTunerError(f"a label image must hold integers; got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InstanceTunerError("a label image must not hold negative labels")
    return arr


def to_csv(table: dict[str, np.ndarray]) -> str:
    """Format a measurement table as CSV text (header row, integers as integers, floats round-trippable)."""
    columns = list(table)
    lines = [",".join(columns)]
    for i in range(len(table[columns[0]]) if columns else 0):
        cells = []
        for c in columns:
            value = table[c][i]
            cells.append(str(int(value)) if np.issubdtype(table[c].dtype, np.integer) else repr(float(value)))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
