"""What kind of image this is, for proposing a model: colour (H&E), dark-background fluorescence or brightfield.

The rule (documented in the user guide, "Which model is proposed"):

1. An RGB(A) image whose colour channels differ is **"rgb"** (a stained section, e.g. H&E): the gland model.
   One whose channels are equal (a grey image saved as RGB, as many DSB2018 PNGs are) counts as grey.
2. A grey image is split into bright and dark pixels (Otsu's threshold). If the bright pixels are separate
   objects (no connected bright region covers :data:`SHEET_FRACTION` of the image) it is **"fluorescence"**
   (bright objects on a dark background: the nuclei model); if one bright region is a sheet around the
   objects it is **"brightfield"** (dark objects on a bright background, as the BBBC010 worms in their
   well: the worm model).

The image is read on a strided grid of at most :data:`SAMPLE_SIDE` x :data:`SAMPLE_SIDE` pixels (a large or
lazy array is never read whole); a stack is judged on its middle slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The image is judged on a strided grid of about this many pixels per side.
SAMPLE_SIDE = 256
#: Colour channels whose mean absolute difference is below this fraction of the range count as equal (grey).
GREY_TOLERANCE = 0.02

#: A connected bright region covering at least this fraction of the image is a background, not an object.
SHEET_FRACTION = 0.2

KINDS = ("rgb", "fluorescence", "brightfield")


def _sample(data: Any, rgb: bool) -> np.ndarray:
    """A small float array (H', W'[, C]) read from ``data`` on a strided grid (middle slice of a stack)."""
    shape = tuple(np.shape(data))
    plane = 3 if rgb else 2
    index: list[Any] = [s // 2 for s in shape[: len(shape) - plane]]
    for side in shape[len(shape) - plane: len(shape) - plane + 2]:
        index.append(slice(None, None, max(1, -(-side // SAMPLE_SIDE))))
    if rgb:
        index.append(slice(0, 3))
    return np.asarray(data[tuple(index)], dtype=np.float32)


def image_kind(data: Any, rgb: bool) -> tuple[str, str]:
    """The kind of an image (one of :data:`KINDS`) and the reason, in a few words for the user.

    Parameters
    ----------
    data : array-like, (..., H, W) or (..., H, W, 3|4)
        The image (NumPy, dask or zarr: only a strided sample is read).
    rgb : bool
        Whether the last axis holds colour channels.

    Returns
    -------
    kind : str
        "rgb", "fluorescence" or "brightfield".
    reason : str
        Why, e.g. "colour image (stained section)".

    Examples
    --------
    >>> import numpy as np
    >>> dark = np.zeros((64, 64), np.uint8); dark[20:30, 20:30] = 200
    >>> image_kind(dark, rgb=False)[0]
    'fluorescence'
    >>> image_kind(255 - dark, rgb=False)[0]
    'brightfield'
    """
    sample = _sample(data, rgb)
    if rgb:
        spread = float(np.ptp(sample)) or 1.0
        differ = np.abs(np.diff(sample, axis=-1)).mean() / spread
        if differ > GREY_TOLERANCE:
            return "rgb", "colour image (stained section)"
        sample = sample.mean(axis=-1)
    if float(np.ptp(sample)) == 0:
        return "fluorescence", "grey image without contrast"
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    regions, _ = ndimage.label(sample > threshold_otsu(sample))
    largest = np.bincount(regions.ravel())[1:].max(initial=0) / regions.size
    if largest < SHEET_FRACTION:
        return "fluorescence", "fluorescence: bright objects on dark"
    return "brightfield", "brightfield: dark objects on bright"
