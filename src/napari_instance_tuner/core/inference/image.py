"""Input validation, channel handling, normalisation and rescaling of 2D images.

Every image entering a network goes through :func:`prepare_image`, so training and inference see
the same normalisation. The normalisation recipe is stored in the checkpoint's metadata.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputImageError

#: Default normalisation: per-channel percentiles mapped to [0, 1]. Robust to 8/16-bit and to stain
#: intensity differences between slides.
DEFAULT_NORMALISATION = {"kind": "percentile", "low": 1.0, "high": 99.8}

_MAX_PIXELS_FOR_PERCENTILE = 4_000_000


def to_channels_last(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Validate a 2D image and return it as float32 (H, W, in_channels).

    Accepts (H, W) grey, (H, W, C) with C in 1..4 (RGBA drops alpha), and channel-first (C, H, W)
    with C in 1..4 when the last axis is clearly spatial. Grey is repeated for RGB models; RGB is
    averaged for grey models.

    Parameters
    ----------
    image : np.ndarray
        Real-valued array (bool, integer or float of any width).
    in_channels : int
        Channels the model expects (1 or 3).

    Raises
    ------
    InputImageError
        For complex or object dtypes, empty images, 3D stacks, unsupported channel counts, NaN or Inf.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputImageError(f"image dtype {arr.dtype} is not supported; use an integer or float image")
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim == 3:
        if arr.shape[-1] > 4 and arr.shape[0] <= 4:
            arr = np.moveaxis(arr, 0, -1)  # channel-first input
        if arr.shape[-1] > 4:
            raise InputImageError(
                f"image of shape {image.shape} looks like a 3D stack, not a 2D image with channels; "
                "segment it slice by slice"
            )
    else:
        raise InputImageError(
            f"image of shape {np.shape(image)} has {arr.ndim} dimensions; expected (H, W) or (H, W, C)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputImageError(f"image of shape {np.shape(image)} is empty")
    channels = arr.shape[-1]
    if channels == 4:
        arr = arr[..., :3]  # RGBA: alpha carries no tissue information
        channels = 3
    if channels == 2:
        raise InputImageError("images with 2 channels are not supported; expected grey (1) or RGB (3)")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputImageError("image contains NaN or infinite values")
    if channels == in_channels:
        return arr
    if in_channels == 3 and channels == 1:
        return np.repeat(arr, 3, axis=-1)
    if in_channels == 1 and channels == 3:
        return arr.mean(axis=-1, keepdims=True)
    raise InputImageError(f"the model expects {in_channels} channels; the image has {channels}")


def normalise(image: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """Map each channel of a float (H, W, C) image to roughly [0, 1].

    Parameters
    ----------
    image : np.ndarray
        float32 (H, W, C).
    spec : dict, optional
        ``{"kind": "percentile", "low": 1.0, "high": 99.8}`` (default) or ``{"kind": "none"}``.

    Returns
    -------
    np.ndarray
        float32 (H, W, C). A constant channel becomes 0.
    """
    spec = spec or DEFAULT_NORMALISATION
    if spec["kind"] == "none":
        return image.astype(np.float32, copy=False)
    if spec["kind"] != "percentile":
        raise InputImageError(f"unknown normalisation {spec['kind']!r}")
    flat = image.reshape(-1, image.shape[-1])
    step = max(1, flat.shape[0] // _MAX_PIXELS_FOR_PERCENTILE)  # a subsample suffices for percentiles
    lo, hi = np.percentile(flat[::step], [spec["low"], spec["high"]], axis=0)
    scale = np.where(hi - lo > 1e-6 * np.maximum(1.0, np.abs(hi)), hi - lo, np.inf)
    return ((image - lo) / scale).astype(np.float32)


def rescale(image: np.ndarray, scale: float, order: int = 1) -> np.ndarray:
    """Resize (H, W[, C]) by ``scale`` (anti-aliased when shrinking); ``order=0`` for label images."""
    shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    return resize_to(image, shape, order=order)


def resize_to(image: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resize (H, W[, C]) to ``shape``; ``order=0`` keeps label values (nearest neighbour).

    Linear interpolation is anti-aliased when shrinking, so a downscaled image matches what a
    microscope at the lower magnification would record.
    """
    if tuple(image.shape[:2]) == tuple(shape):
        return image
    if order == 0:
        rows = ((np.arange(shape[0]) + 0.5) * image.shape[0] / shape[0]).astype(np.intp)
        cols = ((np.arange(shape[1]) + 0.5) * image.shape[1] / shape[1]).astype(np.intp)
        return image[rows][:, cols]
    from skimage.transform import resize

    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(image, tuple(shape) + image.shape[2:], order=order, anti_aliasing=shrinking, preserve_range=True)
    return out.astype(image.dtype, copy=False)


def prepare_image(image: np.ndarray, meta: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Validate, convert channels, normalise and rescale an image as the checkpoint says.

    Parameters
    ----------
    image : np.ndarray
        (H, W) or (H, W, C), any real dtype.
    meta : dict
        Checkpoint metadata with ``in_channels``, ``normalisation`` and ``pixel_scale`` (the factor the
        image is resized by before the network; 0.5 = half resolution).

    Returns
    -------
    prepared : np.ndarray
        float32 (h, w, C) at network resolution.
    shape : tuple of int
        (H, W) of the input image, to which maps are resized back.
    """
    arr = to_channels_last(image, int(meta.get("in_channels", 3)))
    shape = arr.shape[:2]
    arr = normalise(arr, meta.get("normalisation"))
    return rescale(arr, float(meta.get("pixel_scale", 1.0))), shape
