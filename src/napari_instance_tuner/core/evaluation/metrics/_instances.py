"""Input parsing and validation of the metrics, and the per-object crops.

Holds :class:`_Instances` (validated instances: a contiguous label image or a stack of non-empty
masks), :class:`_Object` (one object's bounding box and cropped mask, with the boundary pixels,
KD-tree and extreme pixels that the Hausdorff distance needs), the checks that raise
:class:`~napari_instance_tuner.core.errors.InputImageError`, and the public :func:`to_stack`. The
accepted inputs are described in the package docstring (:mod:`napari_instance_tuner.core.evaluation.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.spatial import cKDTree

from ...errors import InputImageError
from ...sparse_masks import SparseMasks

# --------------------------------------------------------------------------------------------
# Input parsing
# --------------------------------------------------------------------------------------------


@dataclass
class _Instances:
    """Validated instances: a contiguous label image (labels 1..n) or a stack of non-empty masks."""

    shape: tuple[int, int]
    n: int
    areas: np.ndarray  # int64 (n,)
    labels: np.ndarray | None = None  # int32 (H, W), values 0..n
    masks: np.ndarray | None = None  # bool (n, H, W), every mask non-empty
    sparse: SparseMasks | None = None  # boxes and crops (a family's overlapping objects), every object non-empty
    _coo: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _objects: list[_Object] | None = field(default=None, repr=False)

    def foreground(self) -> np.ndarray:
        """Union of all objects, bool (H, W)."""
        if self.labels is not None:
            return self.labels > 0
        if self.sparse is not None:
            return self.sparse.union()
        assert self.masks is not None
        if self.n == 0:
            return np.zeros(self.shape, dtype=bool)
        return self.masks.any(axis=0)

    def coo(self) -> tuple[np.ndarray, np.ndarray]:
        """(object index, flat pixel index) of every object pixel, both intp, grouped by object."""
        if self._coo is None:
            if self.sparse is not None:
                obj, pix = self.sparse.coords()
            elif self.masks is not None:
                obj, pix = np.nonzero(self.masks.reshape(self.n, self.shape[0] * self.shape[1]))
            else:
                assert self.labels is not None
                flat = self.labels.ravel()
                pix = np.flatnonzero(flat)
                obj = flat[pix].astype(np.intp) - 1
            self._coo = (obj.astype(np.intp, copy=False), pix.astype(np.intp, copy=False))
        return self._coo

    def objects(self) -> list[_Object]:
        """Per-object bounding box and cropped mask (for the Hausdorff distance)."""
        if self._objects is None:
            objs: list[_Object] = []
            if self.labels is not None:
                for k, sl in enumerate(ndimage.find_objects(self.labels, max_label=self.n)):
                    if sl is None:  # cannot happen: labels are contiguous
                        raise AssertionError("missing label")
                    objs.append(_Object(sl[0].start, sl[1].start, self.labels[sl] == k + 1))
            elif self.sparse is not None:
                for y0, x0, m in self.sparse.crops():  # boxes need not be tight: crop to the pixels
                    rows = np.flatnonzero(m.any(axis=1))
                    cols = np.flatnonzero(m.any(axis=0))
                    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                    objs.append(_Object(int(y0 + r0), int(x0 + c0), m[r0:r1, c0:c1].copy()))
            else:
                assert self.masks is not None
                for m in self.masks:
                    rows = np.flatnonzero(m.any(axis=1))
                    cols = np.flatnonzero(m.any(axis=0))
                    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                    objs.append(_Object(int(r0), int(c0), m[r0:r1, c0:c1].copy()))
            self._objects = objs
        return self._objects


def _fail(name: str, msg: str) -> InputImageError:
    return InputImageError(f"{name}: {msg}")


def _check_numeric(a: np.ndarray, name: str) -> None:
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        return
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not np.isfinite(a).all():
            n_nan = int(np.isnan(a).sum())
            what = f"{n_nan} NaN value(s)" if n_nan else "infinite value(s)"
            raise _fail(name, f"contains {what}; labels and masks must be finite")
        return
    raise _fail(name, f"unsupported dtype {a.dtype}; expected an integer label image or a boolean stack")


def _relabel(a: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Map the labels of a non-negative integer (H, W) array to 1..n (order kept). Returns (labels, areas)."""
    flat = a.ravel()
    if flat.size == 0:
        return np.zeros(a.shape, np.int32), np.zeros(0, np.int64)
    lo = flat.min()
    if lo < 0:
        raise _fail(name, f"label image has negative label {lo}; labels must be >= 0 (0 = background)")
    hi = int(flat.max())
    if hi == 0:
        return np.zeros(a.shape, np.int32), np.zeros(0, np.int64)
    if hi <= max(4 * flat.size, 1 << 16):
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=hi + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        areas = counts[ids].astype(np.int64)
        if ids.size == hi:  # already 1..n
            return a.astype(np.int32, copy=False), areas
        lut = np.zeros(hi + 1, np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        return lut[flat.astype(np.intp, copy=False)].reshape(a.shape), areas
    ids, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if ids[0] == 0:
        return inv.astype(np.int32).reshape(a.shape), counts[1:].astype(np.int64)
    return (inv + 1).astype(np.int32).reshape(a.shape), counts.astype(np.int64)


def _parse(x: Any, name: str, *, allow_binary: bool = False) -> _Instances:
    if isinstance(x, _Instances):
        return x
    if isinstance(x, SparseMasks):
        areas = x.areas()
        if not (areas > 0).all():
            x = x.select(areas > 0)
            areas = areas[areas > 0]
        return _Instances(x.shape, int(areas.size), areas, sparse=x)
    try:
        a = np.asarray(x)
    except Exception as exc:  # any conversion failure is a bad input
        raise _fail(name, f"cannot be converted to an array ({exc})") from exc
    _check_numeric(a, name)
    if a.ndim == 2:
        if a.dtype == bool:
            if not allow_binary:
                raise _fail(
                    name,
                    "is a 2-D boolean mask, not instances; pass a label image "
                    "(e.g. skimage.measure.label(mask)) or a (N, H, W) boolean stack",
                )
            lab = a.astype(np.int32)
            areas = np.array([int(lab.sum())], np.int64) if lab.any() else np.zeros(0, np.int64)
            return _Instances((a.shape[0], a.shape[1]), int(areas.size), areas, labels=lab)
        if np.issubdtype(a.dtype, np.floating):
            if a.size and not np.array_equal(a, np.floor(a)):
                raise _fail(name, "label image has non-integer values; labels must be whole numbers")
            if a.size and float(np.abs(a).max()) > 2.0**53:  # python float: float16 cannot hold 2**53
                raise _fail(name, "label image has float labels above 2**53 that are not exact integers")
            a = a.astype(np.int64)
        lab, areas = _relabel(a, name)
        return _Instances((a.shape[0], a.shape[1]), int(areas.size), areas, labels=lab)
    if a.ndim == 3:
        if a.dtype != bool:
            if a.size and not np.isin(a, (0, 1)).all():
                raise _fail(
                    name,
                    f"a 3-D array must be an instance stack (N, H, W) of booleans or 0/1 values; "
                    f"got dtype {a.dtype} with other values",
                )
            a = a.astype(bool)
        n0 = a.shape[0]
        areas = a.reshape(n0, a.shape[1] * a.shape[2]).sum(axis=1, dtype=np.int64)
        keep = areas > 0
        if not keep.all():
            a = a[keep]
            areas = areas[keep]
        return _Instances((a.shape[1], a.shape[2]), int(areas.size), areas, masks=np.ascontiguousarray(a))
    raise _fail(
        name,
        f"has shape {a.shape}; expected a label image (H, W) or an instance stack (N, H, W)",
    )


def _parse_pair(pred: Any, gt: Any, *, allow_binary: bool = False) -> tuple[_Instances, _Instances]:
    p = _parse(pred, "pred", allow_binary=allow_binary)
    g = _parse(gt, "gt", allow_binary=allow_binary)
    if p.shape != g.shape:
        raise InputImageError(
            f"pred and gt differ in spatial shape: pred is {p.shape[0]}x{p.shape[1]}, "
            f"gt is {g.shape[0]}x{g.shape[1]} (H x W)"
        )
    return p, g


def to_stack(x: ArrayLike) -> np.ndarray:
    """Convert instances to a boolean instance stack.

    Parameters
    ----------
    x : array_like or SparseMasks
        Label image, integer (H, W), 0 = background; or instance stack, bool (N, H, W)
        (integer/float 0/1 also accepted); or per-object boxes and crops.

    Returns
    -------
    np.ndarray
        bool array of shape (N, H, W), one non-empty mask per object, objects of a label image in
        increasing label order; all-False masks of an input stack are dropped.

    Raises
    ------
    InputImageError
        For wrong dimensionality, negative, non-integer or NaN labels, or a 2-D boolean mask.
    """
    inst = _parse(x, "x")
    if inst.sparse is not None:
        return inst.sparse.to_dense()
    if inst.masks is not None:
        return inst.masks.copy() if inst.masks is x else inst.masks
    assert inst.labels is not None
    out = np.zeros((inst.n, *inst.shape), dtype=bool)
    for k, obj in enumerate(inst.objects()):
        h, w = obj.mask.shape
        out[k, obj.r0 : obj.r0 + h, obj.c0 : obj.c0 + w] = obj.mask
    return out

# --------------------------------------------------------------------------------------------
# One object: bounding box and cropped mask
# --------------------------------------------------------------------------------------------


@dataclass
class _Object:
    """One object: top-left corner of its bounding box and the cropped mask (bool (h, w))."""

    r0: int
    c0: int
    mask: np.ndarray
    _boundary: np.ndarray | None = field(default=None, repr=False)
    _tree: cKDTree | None = field(default=None, repr=False)
    _extremes: np.ndarray | None = field(default=None, repr=False)

    @property
    def r1(self) -> int:
        return self.r0 + self.mask.shape[0]

    @property
    def c1(self) -> int:
        return self.c0 + self.mask.shape[1]

    def boundary(self) -> np.ndarray:
        """The object's inner 4-boundary pixels, global (row, col), float (K, 2).

        The pixel of a set B nearest to any pixel outside B always lies on B's inner 4-boundary
        (otherwise its 4-neighbour towards the query would be in B and closer), so distances to
        the boundary are exact distances to B for points outside B.
        """
        if self._boundary is None:
            if min(self.mask.shape) <= 2:  # every pixel touches the bounding box edge
                rr, cc = np.nonzero(self.mask)
            else:
                inner = ndimage.binary_erosion(self.mask, border_value=0)
                rr, cc = np.nonzero(self.mask & ~inner)
            self._boundary = np.column_stack((rr + self.r0, cc + self.c0)).astype(np.float64)
        return self._boundary

    def boundary_tree(self) -> cKDTree:
        """KD-tree of :meth:`boundary`."""
        if self._tree is None:
            self._tree = cKDTree(self.boundary())
        return self._tree

    def extremes(self) -> np.ndarray:
        """Four object pixels (top, bottom, left, right-most), float (4, 2), for lower bounds."""
        if self._extremes is None:
            m = self.mask
            top = (0, int(np.argmax(m[0])))
            bottom = (m.shape[0] - 1, int(np.argmax(m[-1])))
            left = (int(np.argmax(m[:, 0])), 0)
            right = (int(np.argmax(m[:, -1])), m.shape[1] - 1)
            self._extremes = np.array([top, bottom, left, right], np.float64) + (self.r0, self.c0)
        return self._extremes

    def minus(self, other: _Object) -> np.ndarray:
        """Cropped mask of the pixels of self that are not in other, bool (h, w) (maybe a view)."""
        sub = self.mask
        ir0, ir1 = max(self.r0, other.r0), min(self.r1, other.r1)
        ic0, ic1 = max(self.c0, other.c0), min(self.c1, other.c1)
        if ir0 < ir1 and ic0 < ic1:
            sub = sub.copy()
            sub[ir0 - self.r0 : ir1 - self.r0, ic0 - self.c0 : ic1 - self.c0] &= ~other.mask[
                ir0 - other.r0 : ir1 - other.r0, ic0 - other.c0 : ic1 - other.c0
            ]
        return sub
