"""Checks on input files before any work: image headers (size, decompression bombs), label values, channels.

Every check reads headers or the arrays already in memory; none decodes a whole image. Each failure is an
:class:`~..errors.InputImageError` naming the file and what to do.

Limits
------
* :data:`MAX_WHOLE_PIXELS`: an image processed in one piece (not streamed) may have at most this many pixels
  (64 megapixels, e.g. 8000 x 8000); larger ones are streamed tile by tile (predict's default).
* :data:`MAX_DECODED_PIXELS`: a PNG/JPEG/BMP is decoded whole, so it may have at most this many pixels.
* A TIFF may declare at most :data:`MAX_STREAM_PIXELS`, and a large one must hold at least one byte per
  :data:`MAX_EXPANSION` bytes it declares (a tiny file declaring a gigantic image is a decompression bomb).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InputImageError

MAX_WHOLE_PIXELS = 64_000_000
MAX_DECODED_PIXELS = 256_000_000
MAX_STREAM_PIXELS = 50_000_000_000
MAX_EXPANSION = 2000
_TIFF = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".btf")
#: Largest label id a label file may hold (label images are read as int32).
MAX_LABEL_ID = np.iinfo(np.int32).max


def header_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The array shape an image file declares, from its header alone (nothing is decoded).

    Raises
    ------
    InputImageError
        If the file cannot be read or is not an image of its kind (a text file named ``.png``...).
    """
    path = Path(path)
    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warnings about odd headers: the checks below say what matters
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise InputImageError(f"{path.name!r} holds no image")
                return tuple(int(n) for n in tif.series[0].shape)
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
            bands = len(im.getbands())
        return (height, width) if bands == 1 else (height, width, bands)
    except InputImageError:
        raise
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise InputImageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        raise InputImageError(f"{path.name!r} is not a readable {path.suffix or 'image'} file "
                              f"({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - every decoder has its own exception types
        raise InputImageError(f"{path.name!r} is not a readable {path.suffix or 'image'} file "
                              f"({_first_line(exc)})") from None
    finally:
        quiet.setLevel(level)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def spatial(shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of an image shape; channel-first (C, H, W) with C <= 4 included."""
    if len(shape) == 3 and shape[-1] > 4 and shape[0] <= 4:
        return shape[1], shape[2]
    return (shape[0], shape[1]) if len(shape) >= 2 else (shape[0] if shape else 0, 0)


def check_image_file(path: str | os.PathLike, *, streamed: bool = False) -> tuple[int, int]:
    """Check an image file's header before it is read; returns its (H, W).

    Parameters
    ----------
    path : path-like
    streamed : bool
        Whether the image will be read tile by tile (a TIFF in a streamed run); otherwise it must be no
        larger than :data:`MAX_WHOLE_PIXELS`.

    Raises
    ------
    InputImageError
        An unreadable file, an empty image, more than 2 dimensions plus channels, or a size beyond the limits.
    """
    path = Path(path)
    shape = header_shape(path)
    if len(shape) < 2 or len(shape) > 3:
        raise InputImageError(f"{path.name!r} has shape {shape}; expected a 2D image (H, W) or (H, W, C)")
    height, width = spatial(shape)
    if height == 0 or width == 0:
        raise InputImageError(f"{path.name!r} is empty ({height} x {width} pixels)")
    pixels = height * width
    tiff = path.suffix.lower() in _TIFF
    if tiff:
        declared = int(np.prod(shape))
        size = path.stat().st_size
        if pixels > MAX_STREAM_PIXELS or (declared > MAX_WHOLE_PIXELS and declared > MAX_EXPANSION * size):
            raise InputImageError(f"{path.name!r} declares {height} x {width} pixels but holds only {size} bytes: "
                                  "refused as a decompression bomb or a corrupt header")
    elif pixels > MAX_DECODED_PIXELS:
        raise InputImageError(f"{path.name!r} has {height} x {width} pixels, more than the "
                              f"{MAX_DECODED_PIXELS // 1_000_000} megapixels a {path.suffix} file may have "
                              "(it is decoded whole); save it as a tiled TIFF to stream it")
    if not (streamed and tiff) and pixels > MAX_WHOLE_PIXELS:
        raise InputImageError(f"{path.name!r} has {height} x {width} pixels, more than the "
                              f"{MAX_WHOLE_PIXELS // 1_000_000} megapixels processed in one piece; stream it "
                              "in tiles (predict --tile 2048, the default) or crop it")
    return height, width


def checked_labels(labels: np.ndarray, name: str, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A label image as int32 after checking that its values are usable instance ids.

    Raises
    ------
    InputImageError
        For non-integer values (NaN, fractions), negative ids, ids beyond :data:`MAX_LABEL_ID` (they would
        wrap), a shape other than (H, W), or one that differs from the image's.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputImageError(f"label file {name!r} has shape {arr.shape}; expected (H, W) instance ids")
    if image_shape is not None and arr.shape != tuple(spatial(tuple(image_shape))):
        raise InputImageError(f"label file {name!r} is {arr.shape[0]} x {arr.shape[1]}, its image "
                              f"{image_shape[0]} x {image_shape[1]}")
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise InputImageError(f"label file {name!r} holds non-integer values (NaN or fractions); "
                                  "labels must be whole-number instance ids")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputImageError(f"label file {name!r} has dtype {arr.dtype}; labels must be integer instance ids")
    if arr.size and arr.min() < 0:
        raise InputImageError(f"label file {name!r} holds negative ids (min {arr.min()}); ids must be >= 0")
    if arr.size and arr.max() > MAX_LABEL_ID:
        raise InputImageError(f"label file {name!r} holds ids up to {arr.max()}, beyond {MAX_LABEL_ID}; "
                              "renumber them (e.g. skimage.segmentation.relabel_sequential)")
    return arr.astype(np.int32)


def channel_note(shape: tuple[int, ...], in_channels: int) -> str | None:
    """What happens to an image's channels for a model of ``in_channels``: a note, or None when they match.

    Raises
    ------
    InputImageError
        For channel counts other than 1, 3 and 4 (RGBA), naming the count the model expects.
    """
    channel_first = len(shape) == 3 and shape[-1] > 4 and shape[0] <= 4
    channels = 1 if len(shape) == 2 else (shape[0] if channel_first else shape[-1])
    expected = "grey (1 channel)" if in_channels == 1 else "RGB (3 channels)"
    if channels not in (1, 3, 4):
        raise InputImageError(f"the image has {channels} channels; the model expects {expected} "
                              "(RGBA and grey images are converted)")
    notes = []
    if channels == 4:
        notes.append("RGBA image: the alpha channel is dropped")
        channels = 3
    if channels != in_channels:
        notes.append(f"{'grey' if channels == 1 else 'RGB'} image converted to "
                     f"{'RGB' if in_channels == 3 else 'grey'} for a model trained on {expected}")
    return "; ".join(notes) or None
