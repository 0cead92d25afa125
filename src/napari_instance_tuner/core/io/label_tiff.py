"""Read back the plugin's own label TIFFs, told from ordinary images by the writer's ``Software`` tag.

:func:`.export_tiff.write_label_tiff` and :func:`.export_tiff.write_label_tiff_tiles` write
:data:`.export_tiff.LABELS_SOFTWARE` into every file; a TIFF without it (a microscope image, a label image
from another program) is left to other readers, so it opens as napari would open it anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InstanceTunerError
from .export_tiff import LABELS_SOFTWARE


def is_label_tiff(path: str | os.PathLike) -> bool:
    """True if ``path`` is a TIFF whose first page names this plugin's label writer (False for any other file)."""
    if not str(path).lower().endswith((".tif", ".tiff")) or not Path(path).is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages.first.tags.get("Software")
            return tag is not None and str(tag.value).startswith(LABELS_SOFTWARE)
    except (tifffile.TiffFileError, OSError, ValueError):
        return False


#: Label images with more pixels than this are opened lazily (a zarr view of the TIFF), not read whole.
LAZY_PIXELS = 2**28


def read_label_tiff(path: str | os.PathLike, lazy_pixels: int = LAZY_PIXELS) -> tuple[object, tuple[float, float] | None]:
    """The labels of a label TIFF and its pixel size.

    Parameters
    ----------
    path : path-like
    lazy_pixels : int
        Above this many pixels (e.g. a whole slide's labels) the labels are a read-only zarr array over the
        file, read tile by tile as napari shows them.

    Returns
    -------
    labels : np.ndarray or zarr.Array
        uint16 or uint32 (H, W) or (Z, H, W), as written.
    pixel_size : (float, float) or None
        (y, x) pixel size from the resolution tags (in the file's unit, µm as the plugin writes it), None
        when the file records none.

    Raises
    ------
    InstanceTunerError
        If the file cannot be read.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            big = int(np.prod(tif.series[0].shape)) > lazy_pixels
            labels = None if big else tif.asarray()
            tags = page.tags
            xres, yres = tags.get("XResolution"), tags.get("YResolution")
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise InstanceTunerError(f"cannot read the label image {Path(path).name!r}: {exc}") from None
    if labels is None:
        import weakref

        import zarr

        store = tifffile.imread(path, aszarr=True)
        labels = zarr.open(store, mode="r")
        weakref.finalize(labels, store.close)  # the file stays open while the labels are shown
    size = None
    if xres is not None and yres is not None:
        (xn, xd), (yn, yd) = xres.value, yres.value
        if xn and yn and (xn, xd) != (1, 1):
            size = (yd / yn, xd / xn)
    return labels, size
