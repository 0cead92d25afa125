"""Exact outlines of pixel masks as polygons, and polygons back to masks.

Coordinates follow QuPath (and GeoJSON exported by it): pixel space, ``x`` = column, ``y`` = row, origin at the
top-left *corner* of the image, and pixel ``(row, col)`` covering the unit square ``[col, col + 1] x
[row, row + 1]``. Outlines run along pixel edges, so a polygon covers exactly the pixels of its mask and its
area equals the pixel count. A square of rows 2..5 and columns 10..19 becomes the ring
``(10, 2) (20, 2) (20, 6) (10, 6) (10, 2)``.

Exterior rings are counter-clockwise and holes clockwise by the shoelace formula on the stored coordinates
(the GeoJSON rule of RFC 7946); on screen, with ``y`` pointing down, exteriors look clockwise.
"""

from __future__ import annotations

import numpy as np

#: A ring: list of [x, y] vertices, first == last. A polygon: [exterior, hole, hole, ...].
Ring = list[list[float]]
Polygon = list[Ring]

# Edge directions (dx, dy) on the pixel-corner grid; y points down.
_RIGHT, _DOWN, _LEFT, _UP = (1, 0), (0, 1), (-1, 0), (0, -1)


def _directed_edges(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boundary edges (x0, y0, dx, dy) of a bool mask, with the mask on the right of each edge (screen view)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1]
    edges = []
    # (neighbour is background) -> (start corner, direction): top, right, bottom, left side of the pixel.
    sides = (
        (~m[:-2, 1:-1], (0, 0), _RIGHT),
        (~m[1:-1, 2:], (1, 0), _DOWN),
        (~m[2:, 1:-1], (1, 1), _LEFT),
        (~m[1:-1, :-2], (0, 1), _UP),
    )
    for open_side, (ox, oy), (dx, dy) in sides:
        ys, xs = np.nonzero(inner & open_side)
        edges.extend(zip((xs + ox).tolist(), (ys + oy).tolist(), [dx] * len(xs), [dy] * len(xs)))
    return edges


def _link_rings(edges: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int]]]:
    """Chain directed edges into closed rings of corner vertices (collinear vertices dropped).

    Where two edges leave one corner (two pixels touching only diagonally), the ring turns right, towards
    the mask: each outline then bounds a 4-connected set of pixels. This rule maps every edge to exactly one
    successor, so the rings are the cycles of that map; cycles that visit a corner twice are split there.
    """
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for x, y, dx, dy in edges:
        outgoing.setdefault((x, y), []).append((dx, dy))
    used: set[tuple[int, int, int, int]] = set()
    rings = []
    for first in edges:
        if first in used:
            continue
        ring = []
        edge = first
        while True:
            used.add(edge)
            x, y, dx, dy = edge
            ring.append((x, y))
            x, y = x + dx, y + dy
            options = outgoing[(x, y)]
            right = (-dy, dx)
            step = right if len(options) > 1 and right in options else options[0]
            edge = (x, y, *step)
            if edge == first:
                break
        rings.extend(_drop_collinear(loop + loop[:1]) for loop in _split_loops(ring))
    return rings


def _split_loops(points: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Split a closed path that visits a corner twice into simple loops touching at that corner.

    A hole whose pixels meet only diagonally, or an outline pinched to one corner, visits that corner
    twice; simple rings that touch at a point are valid GeoJSON (OGC) where a self-touching ring is not.
    """
    stack: list[tuple[int, int]] = []
    seen: dict[tuple[int, int], int] = {}
    loops = []
    for point in points:
        if point in seen:
            start = seen[point]
            loops.append(stack[start:])
            for q in stack[start + 1 :]:
                del seen[q]
            del stack[start + 1 :]
        else:
            seen[point] = len(stack)
            stack.append(point)
    return loops + [stack] if len(stack) > 1 else loops


def _drop_collinear(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Remove vertices that lie on a straight run (including the start vertex); keep the ring closed."""
    pts = ring[:-1]
    n = len(pts)
    keep = []
    for i in range(n):
        (ax, ay), (bx, by), (cx, cy) = pts[i - 1], pts[i], pts[(i + 1) % n]
        if (bx - ax) * (cy - by) - (by - ay) * (cx - bx) != 0:
            keep.append((bx, by))
    return keep + keep[:1]


def signed_area(ring: Ring | list[tuple[float, float]]) -> float:
    """Shoelace area of a closed ring: positive for counter-clockwise (in x-right, y-up axes)."""
    arr = np.asarray(ring, float)
    x, y = arr[:, 0], arr[:, 1]
    return float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) / 2.0)


def mask_polygons(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[Polygon]:
    """Outline a bool mask as polygons with holes, one per 4-connected piece.

    Parameters
    ----------
    mask : np.ndarray
        bool (H, W).
    offset : (int, int)
        (row, col) of ``mask[0, 0]`` in the full image (for crops).

    Returns
    -------
    list of polygons
        Each polygon is ``[exterior, hole, ...]``; each ring a closed list of ``[x, y]`` in pixel-edge
        coordinates (see the module docstring). Empty for an empty mask.

    Examples
    --------
    >>> m = np.zeros((8, 24), bool); m[2:6, 10:20] = True
    >>> mask_polygons(m)
    [[[[10, 2], [20, 2], [20, 6], [10, 6], [10, 2]]]]
    """
    from scipy import ndimage

    pieces, _ = ndimage.label(np.asarray(mask, bool))
    polygons = []
    for index, box in enumerate(ndimage.find_objects(pieces), start=1):
        if box is None:
            continue
        piece = pieces[box] == index
        oy, ox = offset[0] + box[0].start, offset[1] + box[1].start
        rings = [[[x + ox, y + oy] for x, y in ring] for ring in _link_rings(_directed_edges(piece))]
        rings = [r for r in rings if len(r) >= 4]
        areas = [signed_area(r) for r in rings]
        # Screen-clockwise edges give a positive shoelace area for the piece's outline, negative for holes.
        outer = int(np.argmax(areas))
        holes = [r for i, r in enumerate(rings) if i != outer]
        polygons.append([rings[outer], *holes])
    return polygons


def geometry(polygons: list[Polygon]) -> dict:
    """A GeoJSON geometry: ``Polygon`` for one piece, ``MultiPolygon`` for several."""
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def rasterise(geom: dict, shape: tuple[int, int]) -> np.ndarray:
    """Fill a GeoJSON ``Polygon``/``MultiPolygon`` in pixel-edge coordinates back into a bool (H, W) mask.

    A pixel belongs to the polygon when its centre ``(col + 0.5, row + 0.5)`` is inside, so the outlines
    from :func:`mask_polygons` give back their masks exactly.
    """
    from skimage.draw import polygon as fill

    out = np.zeros(shape, bool)
    polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
    for poly in polys:
        piece = np.zeros(shape, bool)
        for i, ring in enumerate(poly):
            arr = np.asarray(ring, float)
            # skimage tests pixel centres at integer (row, col): shift pixel-edge coordinates by half a pixel.
            rr, cc = fill(arr[:, 1] - 0.5, arr[:, 0] - 0.5, shape)
            piece[rr, cc] = i == 0
        out |= piece  # a piece inside another's hole must survive that hole
    return out
