"""Per-object masks that may overlap, stored as integer boxes and cropped masks (never a full-image stack).

:class:`SparseMasks` holds N objects of an (H, W) image: object k is its box ``boxes[k]`` = (y0, x0, y1, x1)
(pixels y0 <= y < y1, x0 <= x < x1, inside the image) and a bool crop of shape (y1 - y0, x1 - x0). All crops
lie, row-major, one after another in one flat bool buffer, so memory grows with the objects' total box area,
never with N x H x W. The box holds the object but need not be tight (Mask R-CNN's crops are its pasted
boxes). Object k is "label k + 1" wherever objects are numbered.

Vectorised helpers: :meth:`SparseMasks.areas`, :meth:`~SparseMasks.coords` (object, flat pixel) pairs,
:meth:`~SparseMasks.to_labels` (flattened; which object wins an overlapping pixel is an argument),
:meth:`~SparseMasks.planes` (greedy colouring of the overlap graph: objects that share a pixel go to different
planes, so a few label planes hold every object whole), :meth:`~SparseMasks.to_planes`, and the constructors
:meth:`~SparseMasks.from_crops`, :meth:`~SparseMasks.from_labels` (a label image or a stack of label planes)
and :meth:`~SparseMasks.from_dense` (a bool (N, H, W) stack, for inputs that already are one).
:meth:`~SparseMasks.to_dense` exists for small images and tests only: it allocates N x H x W.

Example
-------
>>> labels = np.zeros((4, 5), np.uint32); labels[1:3, 1:3] = 1; labels[0, 4] = 2
>>> objs = SparseMasks.from_labels(labels)
>>> objs.boxes.tolist(), objs.areas().tolist()
([[1, 1, 3, 3], [0, 4, 1, 5]], [4, 1])
>>> bool((objs.to_labels() == labels).all())
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SparseMasks"]


@dataclass(eq=False)
class SparseMasks:
    """N possibly overlapping objects of an (H, W) image as boxes and cropped bool masks.

    Attributes
    ----------
    shape : tuple of int
        (H, W) of the image.
    boxes : np.ndarray
        int64 (N, 4): y0, x0, y1, x1 of each object's box (half-open, inside the image).
    data : np.ndarray
        bool (sum of box areas,): the crops, each row-major, in object order.
    offsets : np.ndarray
        int64 (N + 1,): crop k is ``data[offsets[k]:offsets[k + 1]]``.
    """

    shape: tuple[int, int]
    boxes: np.ndarray
    data: np.ndarray
    offsets: np.ndarray
    _plane: np.ndarray | None = field(default=None, repr=False)  # planes(), computed once (the objects never change)

    # -- constructors -----------------------------------------------------------------------------------------

    @classmethod
    def empty(cls, shape: Sequence[int]) -> SparseMasks:
        """No objects in an image of ``shape`` (H, W)."""
        return cls((int(shape[0]), int(shape[1])), np.zeros((0, 4), np.int64), np.zeros(0, bool), np.zeros(1, np.int64))

    @classmethod
    def from_crops(cls, crops: Sequence[tuple[int, int, np.ndarray]], shape: Sequence[int]) -> SparseMasks:
        """Objects from (y0, x0, bool (h, w) crop) triplets; each crop must lie inside the image."""
        if not len(crops):
            return cls.empty(shape)
        boxes = np.array([(y0, x0, y0 + c.shape[0], x0 + c.shape[1]) for y0, x0, c in crops], np.int64)
        sizes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        offsets = np.zeros(len(crops) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        data = np.concatenate([np.asarray(c, bool).ravel() for _, _, c in crops])
        out = cls((int(shape[0]), int(shape[1])), boxes, data, offsets)
        out._check()
        return out

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> SparseMasks:
        """One object per label id present in an integer (H, W) label image or (P, H, W) stack of label planes.

        Objects come in increasing id order (a label id found on several planes is one object: the union).
        :meth:`to_planes` output reads back to the same objects in the same order.
        """
        from scipy import ndimage  # deferred: scipy (importing the CLI loads no scipy)

        arr = np.asarray(labels)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"labels must be (H, W) or (P, H, W); got shape {arr.shape}")
        shape = arr.shape[1:]
        ids = np.unique(arr[arr > 0]) if arr.size else np.zeros(0, arr.dtype)
        if ids.size == 0:
            return cls.empty(shape)
        dense = np.searchsorted(ids, arr).astype(np.int64) + 1
        dense[arr == 0] = 0
        flat = dense.max(axis=0) if arr.shape[0] == 1 else None
        crops = []
        if flat is not None:
            for k, box in enumerate(ndimage.find_objects(flat, max_label=ids.size)):
                crops.append((box[0].start, box[1].start, flat[box] == k + 1))
            return cls.from_crops(crops, shape)
        found = [ndimage.find_objects(plane, max_label=ids.size) for plane in dense]
        for k in range(ids.size):
            boxes = [(p, b) for p, per in enumerate(found) if (b := per[k]) is not None]
            y0, x0 = min(b[0].start for _, b in boxes), min(b[1].start for _, b in boxes)
            y1, x1 = max(b[0].stop for _, b in boxes), max(b[1].stop for _, b in boxes)
            crop = np.zeros((y1 - y0, x1 - x0), bool)
            for p, _ in boxes:
                crop |= dense[p, y0:y1, x0:x1] == k + 1
            crops.append((y0, x0, crop))
        return cls.from_crops(crops, shape)

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> SparseMasks:
        """Objects of a bool (N, H, W) stack, in stack order, with tight boxes (all-False masks are kept, empty)."""
        masks = np.asarray(masks, bool)
        if masks.ndim != 3:
            raise ValueError(f"a mask stack must be (N, H, W); got shape {masks.shape}")
        crops = []
        for m in masks:
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if rows.size:
                crops.append((int(rows[0]), int(cols[0]), m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))
            else:
                crops.append((0, 0, np.zeros((0, 0), bool)))
        return cls.from_crops(crops, masks.shape[1:]) if crops else cls.empty(masks.shape[1:])

    def _check(self) -> None:
        b = self.boxes
        if b.size and (b[:, 0].min() < 0 or b[:, 1].min() < 0 or b[:, 2].max() > self.shape[0]
                       or b[:, 3].max() > self.shape[1] or (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any()):
            raise ValueError(f"object boxes must lie inside the {self.shape} image")

    # -- per object -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the boxes, crops and offsets."""
        return int(self.boxes.nbytes + self.data.nbytes + self.offsets.nbytes)

    def crop(self, k: int) -> np.ndarray:
        """bool (h, w) view of object ``k``'s mask in its box."""
        y0, x0, y1, x1 = self.boxes[k]
        return self.data[self.offsets[k] : self.offsets[k + 1]].reshape(int(y1 - y0), int(x1 - x0))

    def crops(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(y0, x0, bool (h, w) view) of every object, in order."""
        for k in range(len(self)):
            yield int(self.boxes[k, 0]), int(self.boxes[k, 1]), self.crop(k)

    def select(self, index: np.ndarray | Sequence[int]) -> SparseMasks:
        """The objects ``index`` (int indices or a bool (N,) selection), in that order."""
        index = np.arange(len(self))[np.asarray(index)] if len(self) else np.zeros(0, np.intp)
        return SparseMasks.from_crops([(int(self.boxes[k, 0]), int(self.boxes[k, 1]), self.crop(k)) for k in index],
                                      self.shape)

    def areas(self) -> np.ndarray:
        """int64 (N,): pixels of each object."""
        total = np.zeros(self.data.size + 1, np.int64)
        np.cumsum(self.data, out=total[1:])
        return total[self.offsets[1:]] - total[self.offsets[:-1]]

    # -- vectorised views of all objects ----------------------------------------------------------------------

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(object index, flat pixel index y * W + x) of every object pixel, both intp, grouped by object."""
        hit = np.flatnonzero(self.data)
        obj = np.repeat(np.arange(len(self), dtype=np.intp), np.diff(self.offsets))[hit]
        local = hit - self.offsets[obj]
        width = np.maximum(self.boxes[:, 3] - self.boxes[:, 1], 1)
        rows, cols = np.divmod(local, width[obj])
        start = self.boxes[:, 0] * self.shape[1] + self.boxes[:, 1]  # flat index of each box's corner
        return obj, (start[obj] + rows * self.shape[1] + cols).astype(np.intp)

    def to_labels(self, winner: str = "last", dtype: type = np.uint32) -> np.ndarray:
        """Flatten to a label image: object k is label k + 1.

        Parameters
        ----------
        winner : {"last", "first"}
            Which object an overlapping pixel shows: the later one in object order, or the earlier one.
        dtype : numpy dtype
            Integer dtype of the result.

        Returns
        -------
        np.ndarray
            ``dtype`` (H, W), 0 = background.
        """
        if winner not in ("last", "first"):
            raise ValueError(f"winner must be 'last' or 'first', not {winner!r}")
        obj, pix = self.coords()
        kind = np.int32 if len(self) < 2**31 - 1 else np.int64
        flat = np.zeros(self.shape[0] * self.shape[1], kind)
        if winner == "last":
            np.maximum.at(flat, pix, (obj + 1).astype(kind))
        else:
            flat[pix] = len(self) + 1
            np.minimum.at(flat, pix, (obj + 1).astype(kind))
        return flat.reshape(self.shape).astype(dtype, copy=False)

    def union(self) -> np.ndarray:
        """bool (H, W): pixels of any object."""
        flat = np.zeros(self.shape[0] * self.shape[1], bool)
        flat[self.coords()[1]] = True
        return flat.reshape(self.shape)

    def overlap_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, shared pixels) of every pair of objects i < j that share a pixel, intp, intp, int64."""
        from scipy import sparse  # deferred: scipy (importing the CLI loads no scipy)

        obj, pix = self.coords()
        if obj.size == 0:
            e = np.zeros(0, np.intp)
            return e, e, np.zeros(0, np.int64)
        # objects x (pixels covered more than once) incidence; the product counts shared pixels
        depth = np.zeros(self.shape[0] * self.shape[1], np.uint16)
        np.add.at(depth, pix, np.uint16(1))
        shared = depth[pix] > 1
        if not shared.any():
            e = np.zeros(0, np.intp)
            return e, e, np.zeros(0, np.int64)
        cols, col_of = np.unique(pix[shared], return_inverse=True)
        inc = sparse.csr_matrix((np.ones(col_of.size, np.int64), (obj[shared], col_of)), shape=(len(self), cols.size))
        prod = sparse.triu(inc @ inc.T, k=1).tocoo()
        return prod.row.astype(np.intp), prod.col.astype(np.intp), prod.data.astype(np.int64)

    def planes(self) -> np.ndarray:
        """int64 (N,): a plane per object so that objects sharing a pixel never share a plane.

        Greedy colouring of the overlap graph in object order: each object takes the lowest plane that none of
        its earlier overlapping neighbours holds. Objects that overlap nothing are on plane 0; the number of
        planes is at most one more than the largest number of neighbours of an object. Computed once and kept
        (read-only): the display and mask-stack files both use it.
        """
        if self._plane is None:
            self._plane = self._colour()
            self._plane.flags.writeable = False
        return self._plane

    def _colour(self) -> np.ndarray:
        plane = np.zeros(len(self), np.int64)
        i, j, _ = self.overlap_pairs()
        if i.size == 0:
            return plane
        neighbours: dict[int, list[int]] = {}
        for a, b in zip(i.tolist(), j.tolist()):
            neighbours.setdefault(b, []).append(a)  # a < b: a is coloured first
        for b in sorted(neighbours):
            taken = {int(plane[a]) for a in neighbours[b]}
            plane[b] = next(p for p in range(len(taken) + 1) if p not in taken)
        return plane

    def to_planes(self, plane: np.ndarray | None = None, dtype: type = np.uint32) -> np.ndarray:
        """Pack the objects into a few label planes: ``dtype`` (P, H, W), object k is label k + 1 on its plane.

        ``plane`` is :meth:`planes` unless given. Every object lies whole on one plane; P >= 1.
        """
        plane = self.planes() if plane is None else np.asarray(plane, np.int64)
        n_planes = int(plane.max()) + 1 if plane.size else 1
        out = np.zeros((n_planes, self.shape[0] * self.shape[1]), dtype)
        obj, pix = self.coords()
        out[plane[obj], pix] = (obj + 1).astype(dtype)  # no two objects of a plane share a pixel
        return out.reshape(n_planes, *self.shape)

    def to_dense(self) -> np.ndarray:
        """bool (N, H, W) stack. Allocates N x H x W bytes: small images and tests only."""
        out = np.zeros((len(self), self.shape[0] * self.shape[1]), bool)
        obj, pix = self.coords()
        out[obj, pix] = True
        return out.reshape(len(self), *self.shape)
