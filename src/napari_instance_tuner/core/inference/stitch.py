"""Instance stitching across tile borders: one object on a seam stays one object, never two halves or two copies.

The image is cut into *cores* of ``tile`` x ``tile`` pixels that partition it; each tile's network input and
post-processing see the core plus a *halo* of ``halo`` pixels on every side (its *window*, clipped to the
image). Each tile's objects (from :class:`~..family.Instances`: the objects' crops where the family keeps overlaps,
else the labels) are sorted into three kinds by :func:`classify`:

* **final** -- the object does not touch an inner edge of the window (an edge inside the image) and the
  centre of its bounding box lies in this tile's core: the classic *owner tile* rule. Every object whose
  bounding box is smaller than the halo is seen whole by the tile owning its centre, so it is kept exactly
  once, exactly as a whole-image run would give it (when the maps inside the window match those of a
  whole-image run, and the post-processing reaches less far than the halo minus the object).
* **deferred** -- seen whole here but owned by a neighbour whose window does not hold it whole (an object
  larger than the halo). Kept aside; written at the end unless an existing object already covers it.
* **piece** -- cut by an inner window edge and reaching into this tile's core (only objects larger than the
  halo). Pieces not covered by a written object are merged across tiles where their masks agree on the
  tiles' common area (IoU >= ``merge_iou``), and each group is written as one object: the union of the
  pieces' core parts.

Only the last two kinds are kept in memory until the end, and only for objects larger than the halo; finals
are painted into the output label array (numpy or zarr) tile by tile, with globally unique ids.

Limit: objects smaller than the halo are exact; larger ones are merged by the fallback, whose result depends
on the tiles agreeing about the object in their common area.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..family import Instances

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive), image pixels


@dataclass(frozen=True)
class TileGrid:
    """Cores of ``tile`` pixels partitioning an (H, W) image, each read with ``halo`` pixels around it.

    Example
    -------
    >>> grid = TileGrid((300, 200), tile=128, halo=32)
    >>> len(grid), grid.core(0), grid.window(0)
    (6, (0, 0, 128, 128), (0, 0, 160, 160))
    """

    shape: tuple[int, int]
    tile: int
    halo: int

    @property
    def rows(self) -> int:
        """Number of tile rows."""
        return -(-self.shape[0] // self.tile)

    @property
    def cols(self) -> int:
        """Number of tile columns."""
        return -(-self.shape[1] // self.tile)

    def __len__(self) -> int:
        return self.rows * self.cols

    def core(self, index: int) -> Box:
        """(y0, x0, y1, x1) of tile ``index``'s core (raster order)."""
        r, c = divmod(index, self.cols)
        y0, x0 = r * self.tile, c * self.tile
        return y0, x0, min(y0 + self.tile, self.shape[0]), min(x0 + self.tile, self.shape[1])

    def window(self, index: int) -> Box:
        """(y0, x0, y1, x1) the tile reads: its core grown by the halo, clipped to the image."""
        y0, x0, y1, x1 = self.core(index)
        h = self.halo
        return max(0, y0 - h), max(0, x0 - h), min(self.shape[0], y1 + h), min(self.shape[1], x1 + h)

    def owner(self, y: int, x: int) -> int:
        """Index of the tile whose core holds pixel (y, x)."""
        return (y // self.tile) * self.cols + x // self.tile

    def inside(self, box: Box, index: int) -> bool:
        """True if ``box`` lies in tile ``index``'s window without touching an inner (non-image) edge."""
        wy0, wx0, wy1, wx1 = self.window(index)
        y0, x0, y1, x1 = box
        return ((y0 > wy0 or wy0 == 0) and (x0 > wx0 or wx0 == 0) and (y1 < wy1 or wy1 == self.shape[0])
                and (x1 < wx1 or wx1 == self.shape[1]))


@dataclass
class TileObject:
    """One object seen by one tile: global bounding box, bool mask inside it, optional score."""

    box: Box
    mask: np.ndarray
    score: float | None = None
    tile: int = -1

    @property
    def area(self) -> int:
        """Pixels of the mask."""
        return int(self.mask.sum())


@dataclass
class TileResult:
    """What one tile contributes to the stitched image (see the module docstring)."""

    index: int
    finals: list[TileObject] = field(default_factory=list)
    deferred: list[TileObject] = field(default_factory=list)
    pieces: list[TileObject] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def tile_objects(instances: Instances, offset: tuple[int, int] = (0, 0)) -> list[TileObject]:
    """The objects of ``instances`` (masks when present, else labels) with boxes shifted by ``offset``.

    Objects keep the family's order (mask index, or label value).
    """
    oy, ox = offset
    scores = instances.scores
    out = []
    if instances.objects is not None:
        for k, (by, bx, mask) in enumerate(instances.objects.crops()):  # boxes may be loose: tighten them
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if rows.size == 0:
                continue
            y0, y1, x0, x1 = by + rows[0], by + rows[-1] + 1, bx + cols[0], bx + cols[-1] + 1
            score = float(scores[k]) if scores is not None and k < len(scores) else None
            crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
            out.append(TileObject((oy + y0, ox + x0, oy + y1, ox + x1), crop, score))
        return out
    labels = np.asarray(instances.labels)
    for value, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        box = (oy + sl[0].start, ox + sl[1].start, oy + sl[0].stop, ox + sl[1].stop)
        score = float(scores[value - 1]) if scores is not None and value - 1 < len(scores) else None
        out.append(TileObject(box, labels[sl] == value, score))
    return out


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def classify(instances: Instances, grid: TileGrid, index: int) -> TileResult:
    """Sort the objects tile ``index`` found in its window into finals, deferred objects and pieces.

    Parameters
    ----------
    instances : Instances
        Post-processed result of the tile's window (labels uint32 (h, w), objects (boxes and crops) or None).
    grid : TileGrid
    index : int
        The tile.
    """
    wy0, wx0, _, _ = grid.window(index)
    core = grid.core(index)
    result = TileResult(index)
    for obj in tile_objects(instances, (wy0, wx0)):
        obj.tile = index
        y0, x0, y1, x1 = obj.box
        owner = grid.owner((y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2)
        if grid.inside(obj.box, index):
            if owner == index:
                result.finals.append(obj)
            elif not grid.inside(obj.box, owner):
                result.deferred.append(obj)  # larger than the halo: the owner may not see it whole
        elif _overlaps(obj.box, core):
            result.pieces.append(obj)
    return result


def _clip(obj: TileObject, box: Box) -> TileObject | None:
    """``obj`` restricted to ``box`` (None if nothing is left)."""
    y0, x0 = max(obj.box[0], box[0]), max(obj.box[1], box[1])
    y1, x1 = min(obj.box[2], box[2]), min(obj.box[3], box[3])
    if y0 >= y1 or x0 >= x1:
        return None
    oy, ox = obj.box[:2]
    mask = obj.mask[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return TileObject((y0, x0, y1, x1), mask, obj.score, obj.tile) if mask.any() else None


def _iou_on(a: TileObject, b: TileObject, region: Box) -> float:
    """IoU of two objects' masks restricted to ``region``."""
    ca, cb = _clip(a, region), _clip(b, region)
    if ca is None or cb is None:
        return 0.0
    y0, x0 = min(ca.box[0], cb.box[0]), min(ca.box[1], cb.box[1])
    y1, x1 = max(ca.box[2], cb.box[2]), max(ca.box[3], cb.box[3])
    ma, mb = np.zeros((y1 - y0, x1 - x0), bool), np.zeros((y1 - y0, x1 - x0), bool)
    ma[ca.box[0] - y0 : ca.box[2] - y0, ca.box[1] - x0 : ca.box[3] - x0] = ca.mask
    mb[cb.box[0] - y0 : cb.box[2] - y0, cb.box[1] - x0 : cb.box[3] - x0] = cb.mask
    union = np.count_nonzero(ma | mb)
    return np.count_nonzero(ma & mb) / union if union else 0.0


def _intersect(a: Box, b: Box) -> Box:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


@dataclass
class StitchedObject:
    """An object of the stitched image: its id in the label array, box, mask and score."""

    id: int
    box: Box
    mask: np.ndarray
    score: float | None = None


class Stitcher:
    """Paint tile results into a label array with globally unique ids; see the module docstring.

    Tiles may arrive in any order; they are painted in index order, so the ids do not depend on the order in
    which parallel workers finish.

    Parameters
    ----------
    out : array-like
        uint32 (H, W) label array, zero-filled: numpy or zarr (anything with NumPy slicing).
    grid : TileGrid
    keep_objects : bool
        Also keep every object's mask (:attr:`objects`), e.g. for families whose objects overlap.
    merge_iou : float
        IoU on the common area above which pieces of two tiles are the same object.
    cover : float
        Fraction of a deferred object or piece already labelled by one object above which it is a copy.
    """

    def __init__(self, out, grid: TileGrid, *, keep_objects: bool = False, merge_iou: float = 0.5,
                 cover: float = 0.5) -> None:
        self.out, self.grid = out, grid
        self.keep_objects, self.merge_iou, self.cover = keep_objects, merge_iou, cover
        self.objects: list[StitchedObject] = []
        self.count = 0
        self._pending: dict[int, TileResult] = {}
        self._next = 0
        self._deferred: list[TileObject] = []
        self._pieces: list[TileObject] = []

    def add(self, result: TileResult) -> None:
        """Accept one tile's result (painted once every tile before it has arrived)."""
        self._pending[result.index] = result
        while self._next in self._pending:
            self._paint_tile(self._pending.pop(self._next))
            self._next += 1

    def _new_id(self, obj: TileObject) -> int:
        self.count += 1
        if self.keep_objects:
            self.objects.append(StitchedObject(self.count, obj.box, obj.mask, obj.score))
        return self.count

    def _paint(self, objs: list[tuple[int, TileObject]], region: Box, only_background: bool = False) -> None:
        y0, x0, y1, x1 = region
        block = np.asarray(self.out[y0:y1, x0:x1])
        # Larger objects first so that smaller ones stay visible where masks overlap (as the families flatten).
        for ident, obj in sorted(objs, key=lambda item: -item[1].area):
            by0, bx0, by1, bx1 = obj.box
            view = block[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0]
            view[obj.mask & (view == 0) if only_background else obj.mask] = ident
        self.out[y0:y1, x0:x1] = block

    def _paint_tile(self, result: TileResult) -> None:
        if result.finals:
            ids = [(self._new_id(obj), obj) for obj in result.finals]
            self._paint(ids, self.grid.window(result.index))
        self._deferred.extend(result.deferred)
        self._pieces.extend(result.pieces)

    def _covered(self, obj: TileObject) -> bool:
        y0, x0, y1, x1 = obj.box
        values = np.asarray(self.out[y0:y1, x0:x1])[obj.mask]
        values = values[values > 0]
        if values.size == 0:
            return False
        return np.bincount(values).max() >= self.cover * obj.mask.sum()

    def finish(self) -> int:
        """Write the objects larger than the halo (after all tiles); returns the number of objects."""
        if self._next != len(self.grid):
            raise RuntimeError(f"stitching finished with {len(self.grid) - self._next} tiles missing")
        for obj in sorted(self._deferred, key=lambda o: o.tile):
            if not self._covered(obj):  # no tile kept it: the tile that saw it whole writes it
                self._paint([(self._new_id(obj), obj)], obj.box)
        pieces = [p for p in self._pieces if not self._covered(p)]
        parent = list(range(len(pieces)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, a in enumerate(pieces):
            for j in range(i + 1, len(pieces)):
                b = pieces[j]
                if a.tile == b.tile or not _overlaps(a.box, b.box):
                    continue
                common = _intersect(self.grid.window(a.tile), self.grid.window(b.tile))
                if _iou_on(a, b, common) >= self.merge_iou:
                    parent[root(j)] = root(i)
        groups: dict[int, list[TileObject]] = {}
        for i, p in enumerate(pieces):
            part = _clip(p, self.grid.core(p.tile))
            if part is not None:
                groups.setdefault(root(i), []).append(part)
        for parts in groups.values():
            merged = _union(parts)
            self._paint([(self._new_id(merged), merged)], merged.box, only_background=True)
        self._deferred, self._pieces = [], []
        return self.count


def _union(parts: list[TileObject]) -> TileObject:
    y0, x0 = min(p.box[0] for p in parts), min(p.box[1] for p in parts)
    y1, x1 = max(p.box[2] for p in parts), max(p.box[3] for p in parts)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for p in parts:
        mask[p.box[0] - y0 : p.box[2] - y0, p.box[1] - x0 : p.box[3] - x0] |= p.mask
    scores = [p.score for p in parts if p.score is not None]
    return TileObject((y0, x0, y1, x1), mask, float(np.mean(scores)) if scores else None, parts[0].tile)
