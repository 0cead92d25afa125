"""The paper's five post-processing steps, each a parameter, plus an optional grow-back step.

1. threshold the three maps (the paper uses low thresholds, ~0.33, because step 5 removes false objects);
2. erode the boundary and centroid masks (targets were widened by dilation during training);
3. denoise the foreground: closing then opening (the paper: "dilatation and erosion in a sequence");
4. subtract the boundaries from the foreground and label the connected components;
5. drop components without a centroid pixel; drop components smaller than S_min.
Extra (off with radius 0): grow the surviving objects back into the foreground mask, so that subtracting
wide boundaries does not shrink every object (its effect on object Dice is in docs/benchmarks.md).
Extra (off with 0): ``keep_large_without_centroid`` exempts components of at least that many pixels from the
centroid filter of step 5. A long or border-cut malignant gland often gets no centroid blob and was dropped
whole, costing a false negative and its whole area in object Dice (docs/benchmarks.md, issue 20, session 16);
the filter's purpose, removing small fragments left by the boundary subtraction, is kept below that size.
Extra (off with 0): ``split_radius`` opens the separated mask of step 4 before labelling it. Where the predicted
boundary between two touching glands has a gap, the two stay joined through it and are counted as one (the most
frequent failure on malignant glands, docs/benchmarks.md, issue 20, session 18); an opening of radius r cuts
every neck narrower than about 2r. What it trims elsewhere comes back with ``grow_back``.

Extra (off with 0): ``min_mean_foreground`` drops the objects whose mean foreground probability is below it, an
object-level confidence as a detector's score threshold. The pixel threshold of step 1 is tuned low so that
true glands keep their whole area (object Dice), which also lets weak blobs of stroma or debris through as
objects (false positives were the most frequent malignant failure of v10's recipe, docs/benchmarks.md, issue 20,
session 25); the mean over an object tells a confident gland from such a blob without shrinking either.

Optional, instead of steps 4-5 (``watershed``, off by default, a deliberate departure from the paper):
label the centroid mask's components as markers and flood the foreground from them over the boundary
probability (``skimage.segmentation.watershed``). Touching objects are still split where the boundary map
rises between two markers, but a large irregular gland is no longer cut wherever a predicted boundary
crosses it, and its pieces are not dropped for lacking a centroid: every foreground pixel connected to a
marker joins one. Foreground components without any marker are dropped when ``require_centroid`` is on,
kept whole otherwise. Subtracting boundaries and the centroid filter cut malignant glands into pieces
(docs/benchmarks.md, issue 20), which is why this exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...family import Instances, Maps
from ...inference.morphology import close_open, connected_components, erode, grow_labels, relabel
from ...params import param


@dataclass(frozen=True)
class ThreeBranchParams:
    """Post-processing parameters (radii and sizes in pixels of the image)."""

    fg_threshold: float = param(0.33, 0.0, 1.0, "foreground probability above which a pixel is object", 0.01)
    boundary_threshold: float = param(0.33, 0.0, 1.0, "boundary probability above which a pixel is boundary", 0.01)
    centroid_threshold: float = param(0.33, 0.0, 1.0, "centroid probability above which a pixel is centroid", 0.01)
    boundary_erosion: int = param(8, 0, 40, "erosion radius that thins the predicted boundaries")
    centroid_erosion: int = param(6, 0, 40, "erosion radius that shrinks the predicted centroids (removes weak ones)")
    close_radius: int = param(2, 0, 20, "foreground denoise: closing radius (fills small holes and gaps)")
    open_radius: int = param(2, 0, 20, "foreground denoise: opening radius (removes specks)")
    subtract_boundaries: bool = param(True, description="cut the foreground along predicted boundaries")
    require_centroid: bool = param(True, description="drop objects that contain no predicted centroid")
    min_size: int = param(200, 0, 20000, "S_min: drop objects smaller than this many pixels", 10)
    keep_large_without_centroid: int = param(0, 0, 100000, "keep objects without a centroid when at least this "
                                             "many pixels (0: drop them all, as the paper)", 100)
    split_radius: int = param(0, 0, 20, "after subtracting boundaries, an opening of this radius cuts the necks "
                              "a gap in a predicted boundary leaves between touching objects (0 = off)")
    grow_back: int = param(16, 0, 60, "grow objects back into the foreground up to this distance (0 = off)")
    min_mean_foreground: float = param(0.0, 0.0, 1.0, "drop objects whose mean foreground probability is below "
                                       "this (0 = off)", 0.01)
    watershed: bool = param(False, description="split the foreground by a watershed on the boundary map from "
                                               "centroid markers instead of subtracting boundaries")


def postprocess(maps: Maps, params: ThreeBranchParams) -> Instances:
    """Three maps -> uint32 label image (see the module docstring for the steps).

    Parameters
    ----------
    maps : Maps
        ``foreground`` and, for the full model, ``boundary`` and ``centroid``: float32 (H, W) in [0, 1].
        A model without a boundary (centroid) branch skips the steps that need it.
    params : ThreeBranchParams

    Returns
    -------
    Instances
        ``labels`` uint32 (H, W), objects numbered 1..N in raster order.
    """
    arrays = maps.arrays
    fg = (arrays["foreground"] >= params.fg_threshold).view(np.uint8)
    fg = close_open(fg, params.close_radius, params.open_radius)
    if params.watershed and "centroid" in arrays:
        labels = _watershed_from_centroids(arrays, fg, params)
        n = int(labels.max()) + 1
        sizes = np.bincount(labels.ravel(), minlength=n)
        keep = (sizes >= params.min_size) & _confident(labels, sizes, arrays["foreground"], params)
        return Instances(labels=relabel(labels, keep))
    separated = fg
    if params.subtract_boundaries and "boundary" in arrays:
        boundary = erode((arrays["boundary"] >= params.boundary_threshold).view(np.uint8), params.boundary_erosion)
        separated = fg & (1 - boundary)
    if params.split_radius > 0:
        separated = close_open(separated, 0, params.split_radius)
    labels, n = connected_components(separated)
    keep = np.ones(n, bool)
    if params.require_centroid and "centroid" in arrays:
        centroid = erode((arrays["centroid"] >= params.centroid_threshold).view(np.uint8), params.centroid_erosion)
        has_centroid = np.bincount(labels[centroid.view(bool)], minlength=n) > 0
        if params.keep_large_without_centroid > 0:
            has_centroid |= np.bincount(labels.ravel(), minlength=n) >= params.keep_large_without_centroid
        keep &= has_centroid
    if params.grow_back > 0:  # the dropped objects' pixels are grown over or dropped by the relabel below
        labels = grow_labels(labels, fg, params.grow_back, keep=keep)
    sizes = np.bincount(labels.ravel(), minlength=n)
    keep &= (sizes >= params.min_size) & _confident(labels, sizes, arrays["foreground"], params)
    return Instances(labels=relabel(labels, keep))


def _confident(labels: np.ndarray, sizes: np.ndarray, foreground: np.ndarray, params: ThreeBranchParams
               ) -> np.ndarray | bool:
    """bool (N,) per label of uint32 (H, W) ``labels``: its mean ``foreground`` probability (float (H, W)) is at
    least ``params.min_mean_foreground``; True (every label) when that is 0, without any work. ``sizes``: (N,)
    pixel counts of the labels. Label 0 (background) is never kept by :func:`relabel` whatever this says."""
    if params.min_mean_foreground <= 0:
        return True
    flat = labels.ravel()
    inside = flat > 0  # object pixels only: half the work of weighting every pixel where objects cover half the image
    sums = np.bincount(flat[inside], weights=foreground.ravel()[inside], minlength=len(sizes))
    return sums >= params.min_mean_foreground * sizes  # a label without pixels (0 >= 0) is dropped by min_size


def _watershed_from_centroids(arrays: dict, fg: np.ndarray, params: ThreeBranchParams) -> np.ndarray:
    """Flood uint8 (H, W) ``fg`` from centroid markers over the boundary map; uint32 (H, W) labels 1..N.

    Components of ``fg`` without a marker are dropped (``require_centroid``) or kept whole.
    """
    from skimage.segmentation import watershed  # deferred: scikit-image

    centroid = erode((arrays["centroid"] >= params.centroid_threshold).view(np.uint8), params.centroid_erosion)
    markers, _ = connected_components(centroid & fg)
    boundary = arrays.get("boundary")
    # The boundary probability is the relief (touching objects meet on its ridges); without a boundary
    # branch the inverted foreground probability plays that role.
    relief = boundary if boundary is not None else 1.0 - arrays["foreground"]
    relief = np.round(np.clip(relief, 0.0, 1.0) * 255).astype(np.uint8)  # integer relief: faster flooding
    labels = watershed(relief, markers.astype(np.int32), mask=fg.view(bool)).astype(np.uint32)
    if not params.require_centroid:
        rest, _ = connected_components(fg & (labels == 0).view(np.uint8))
        labels[rest > 0] = rest[rest > 0].astype(np.uint32) + labels.max()
    return labels
