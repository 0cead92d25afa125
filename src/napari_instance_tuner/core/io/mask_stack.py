"""Mask-stack files: per-object masks that may overlap, which one label image cannot hold.

Layout written (``"layout": "packed-planes"``, version 2): the objects are packed into a few label planes by
greedy colouring of their overlap graph (:meth:`~..sparse_masks.SparseMasks.planes`: objects that share a
pixel are on different planes), so the file grows with the depth of the overlaps, not with the number of
objects.

- ``.npz``: ``planes`` uint32 (P, H, W), object k is the pixels of value k + 1 (on exactly one plane);
  ``labels`` uint32 (N,) the object ids (default 1..N); ``scores`` float32 (N,) when given; ``layout``
  the string ``"packed-planes"``.
- ``.tif``: the planes as a zlib-compressed uint32 stack (one page per plane), ImageJ-free tifffile metadata
  ``{"axes": "QYX", "layout": "packed-planes", "labels": [...]}``.

Version 1 files (``masks`` bool (N, H, W) in an ``.npz``; a uint8 0/255 page per object in a ``.tif``) are
still read by :func:`read_mask_stack`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import numpy as np

from ..sparse_masks import SparseMasks
from .safe_write import ExportError, write_atomic

__all__ = ["LAYOUT", "read_mask_stack", "write_mask_stack"]

#: The ``layout`` value of the files written here.
LAYOUT = "packed-planes"


def write_mask_stack(
    path: str | os.PathLike,
    objects: SparseMasks | np.ndarray,
    scores: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write per-object masks (boxes and crops, or a bool (N, H, W) stack) as packed label planes.

    Parameters
    ----------
    path : path-like
        ``.npz`` or ``.tif`` / ``.tiff`` (see the module docstring for both layouts).
    objects : SparseMasks or np.ndarray
        The N objects; a dense bool (N, H, W) stack is accepted (and converted) for callers that have one.
        Empty objects are left out (with their ids and scores).
    scores : np.ndarray, optional
        float (N,) per-object scores (``.npz`` only).
    ids : np.ndarray, optional
        (N,) object ids; default 1..N.
    overwrite : bool
    """
    if not isinstance(objects, SparseMasks):
        objects = np.asarray(objects, bool)
        if objects.ndim != 3:
            raise ExportError(f"a mask stack must be (N, H, W); got shape {objects.shape}")
        objects = SparseMasks.from_dense(objects)
    ids = np.arange(1, len(objects) + 1) if ids is None else np.asarray(ids)
    present = objects.areas() > 0  # an empty object has no pixel to hold its id: it is left out
    if not present.all():
        objects, ids = objects.select(present), ids[present]
        scores = None if scores is None else np.asarray(scores)[present]
    planes = objects.to_planes()
    if str(path).lower().endswith((".tif", ".tiff")):
        meta = {"axes": "QYX", "layout": LAYOUT, "labels": [int(i) for i in ids]}

        def write(fh: IO[bytes]) -> None:
            import tifffile

            tifffile.imwrite(fh, planes, compression="zlib", metadata=meta)
    else:
        arrays = {"planes": planes, "labels": ids.astype(np.uint32), "layout": np.array(LAYOUT)}
        if scores is not None:
            arrays["scores"] = np.asarray(scores, np.float32)

        def write(fh: IO[bytes]) -> None:
            np.savez_compressed(fh, **arrays)

    return write_atomic(path, write, overwrite)


def read_mask_stack(path: str | os.PathLike) -> tuple[SparseMasks, np.ndarray, np.ndarray | None]:
    """Read a mask-stack file of either layout.

    Returns
    -------
    objects : SparseMasks
        The N objects, in file order.
    ids : np.ndarray
        uint32 (N,) object ids (1..N where the file has none).
    scores : np.ndarray or None
        float32 (N,) where the file has them.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
        data = data[None] if data.ndim == 2 else data
        if meta.get("layout") == LAYOUT:
            objects = SparseMasks.from_labels(data)
            ids = np.asarray(meta.get("labels", np.arange(1, len(objects) + 1)), np.uint32)
        else:  # version 1: one 0/255 page per object
            objects = SparseMasks.from_dense(data > 0)
            ids = np.arange(1, len(objects) + 1, dtype=np.uint32)
        return objects, ids, None
    with np.load(path) as npz:
        files = set(npz.files)
        if "planes" in files:
            objects = _from_planes(npz["planes"])
        elif "masks" in files:  # version 1: bool (N, H, W)
            masks = npz["masks"]
            if masks.ndim != 3:
                raise ExportError(f"{path.name!r} holds masks of shape {masks.shape}; expected (N, H, W)")
            objects = SparseMasks.from_dense(masks)
        else:
            raise ExportError(f"{path.name!r} holds neither 'planes' nor 'masks': not a mask stack")
        ids = npz["labels"].astype(np.uint32) if "labels" in files else np.arange(1, len(objects) + 1, dtype=np.uint32)
        scores = npz["scores"].astype(np.float32) if "scores" in files else None
    return objects, ids, scores


def _from_planes(planes: np.ndarray) -> SparseMasks:
    """Objects of packed planes: value k + 1 is object k (values are 1..N, as :func:`write_mask_stack` writes)."""
    planes = np.asarray(planes)
    if planes.ndim != 3:
        raise ExportError(f"mask-stack planes must be (P, H, W); got shape {planes.shape}")
    return SparseMasks.from_labels(planes)

