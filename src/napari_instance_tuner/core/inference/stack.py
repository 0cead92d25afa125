"""From napari layer data to 2D core calls and back: slice-by-slice maps and labels for stacks.

Headless (numpy only, no Qt): a 2D image, an RGB image, a stack (Z, H, W) or an RGB stack (Z, H, W, C)
becomes a list of 2D images; each runs through ``family.predict_maps`` and ``family.postprocess``;
the per-slice results are stacked back, with object ids made unique across slices.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputImageError
from ..family import Family, Maps
from ..progress import CancelToken, Progress, relay
from ..sparse_masks import SparseMasks

#: A 3D layer whose last axis is longer than 4 but at most this is taken for an image with that many
#: channels (which no model takes), not for a stack of slices that narrow.
MAX_CHANNELS = 16


def slice_count(shape: tuple[int, ...], rgb: bool) -> int | None:
    """How many 2D slices an image layer of this shape holds; None for a single 2D image.

    A 3D layer with a last axis of at most 4 is one image with channels; of 5 to :data:`MAX_CHANNELS`, an
    image with too many channels (refused); longer, a stack (Z, H, W).

    Parameters
    ----------
    shape : tuple of int
        The layer's data shape.
    rgb : bool
        Whether napari shows the last axis as colour channels.

    Raises
    ------
    InputImageError
        For shapes that are neither 2D (with or without channels) nor a stack of 2D images.
    """
    ndim = len(shape)
    if (ndim == 2 and not rgb) or (ndim == 3 and rgb) or (ndim == 3 and shape[-1] <= 4):
        return None
    if ndim == 3 and not rgb and shape[-1] <= MAX_CHANNELS:
        raise InputImageError(
            f"an image layer of shape {tuple(shape)} is not supported: its last axis looks like "
            f"{shape[-1]} channels; expected a 2D image (H, W), an RGB image (H, W, 3|4), a stack (Z, H, W) "
            "or an RGB stack (Z, H, W, 3|4)"
        )
    if (ndim == 3 and not rgb) or (ndim == 4 and rgb):
        return int(shape[0])
    raise InputImageError(
        f"an image layer of shape {tuple(shape)} is not supported; expected a 2D image (H, W), an RGB image "
        "(H, W, 3|4), a stack (Z, H, W) or an RGB stack (Z, H, W, 3|4)"
    )


@dataclass
class StackMaps:
    """The maps of every slice of an image layer.

    Attributes
    ----------
    slices : list[Maps]
        One :class:`~..family.Maps` per 2D slice (a single element for a 2D image).
    stacked : bool
        True when the layer is a stack; arrays and labels then have a leading slice axis.
    """

    slices: list[Maps]
    stacked: bool

    def arrays(self) -> dict[str, np.ndarray]:
        """Map name -> float32 (H, W), or (Z, H, W) for a stack."""
        names = self.slices[0].arrays.keys()
        if not self.stacked:
            return dict(self.slices[0].arrays)
        return {name: np.stack([m.arrays[name] for m in self.slices]) for name in names}


def predict_stack(
    family: Family,
    model: Any,
    data: Any,
    rgb: bool,
    meta: dict,
    *,
    device: str | None = None,
    tile_size: int | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, StackMaps]:
    """Run ``family.predict_maps`` on every 2D slice of layer data; yields progress, returns maps.

    Parameters
    ----------
    family, model, meta
        As for :meth:`~..family.Family.predict_maps`.
    data : array-like
        The layer's data (numpy, dask, zarr...); one slice at a time is read into memory.
    rgb : bool
        Whether the last axis holds colour channels.
    device, tile_size, cancel
        Passed on to ``predict_maps``. ``cancel`` is also checked between slices.

    Yields
    ------
    Progress
        Tiles done / total over the whole stack (slices of one stack have the same size).
    """
    count = slice_count(tuple(np.shape(data)), rgb)
    images = (lambda i: data[i]) if count is not None else (lambda i: data)
    n = count or 1
    slices = []
    for i in range(n):
        if cancel is not None:
            cancel.check()
        image = np.asarray(images(i))
        work = family.predict_maps(model, image, meta, device=device, tile_size=tile_size, cancel=cancel)
        prefix = f"slice {i + 1}/{n}: " if count is not None else ""
        slices.append((yield from relay(
            work, lambda p, i=i, prefix=prefix: Progress(i * p.total + p.done, n * p.total, prefix + p.message, p.info)
        )))
    return StackMaps(slices=slices, stacked=count is not None)


@dataclass
class StackInstances:
    """Post-processed labels of every slice.

    Attributes
    ----------
    labels : np.ndarray
        uint32 (H, W), or (Z, H, W) for a stack; ids are unique across slices.
    count : int
        Number of objects over all slices.
    objects : SparseMasks or None
        For a 2D image of a family whose objects may overlap: the K objects as boxes and crops
        (:class:`~..sparse_masks.SparseMasks`); object ``k`` is labelled ``k + 1`` where it is not covered
        by another (the family's :class:`~..family.Instances` as returned, not copied). None for other
        families and for stacks: a stack keeps only its flattened labels.
    scores : np.ndarray or None
        float32 (K,) per-object confidence of a 2D image, where the family has one; None for stacks.
    """

    labels: np.ndarray
    count: int
    objects: SparseMasks | None = None
    scores: np.ndarray | None = None


def postprocess_stack(family: Family, maps: StackMaps, params: Any) -> StackInstances:
    """Run ``family.postprocess`` on every slice; number objects consecutively across slices.

    A 2D image keeps the family's per-object ``objects`` and ``scores`` (no copy); a stack keeps its labels
    only (see :class:`StackInstances`).
    """
    if not maps.stacked:
        instances = family.postprocess(maps.slices[0], params)
        if instances.objects is not None:
            instances.objects.planes()  # packed here (napari: on the worker), kept for the display and mask stacks
        return StackInstances(
            labels=np.asarray(instances.labels, np.uint32),
            count=instances.count,
            objects=instances.objects,
            scores=instances.scores,
        )
    labels, count, offset = [], 0, 0
    for slice_maps in maps.slices:
        instances = family.postprocess(slice_maps, params)
        slice_labels = np.asarray(instances.labels, np.uint32)
        top = int(slice_labels.max(initial=0))
        if offset:
            slice_labels = np.where(slice_labels > 0, slice_labels + np.uint32(offset), np.uint32(0))
        labels.append(slice_labels)
        count += instances.count
        offset += top
    return StackInstances(labels=np.stack(labels), count=count)
