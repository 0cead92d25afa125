"""Whole-slide images (SVS, NDPI, SCN, MRXS, pyramidal TIFF and OME-TIFF) as lazy multiscale arrays.

TIFF-based slides are read with ``tiffslide`` (tifffile + zarr: a slice decodes only the tiles it touches);
formats it lacks (MRXS, and TIFF files it cannot parse) with ``openslide-python`` and its ``openslide-bin``
library. Opening reads headers only; the pixel size (µm/px) and objective power come from the file's
metadata.

Example
-------
>>> slide = open_slide("case.svs")  # doctest: +SKIP
>>> slide.shape, slide.pixel_size_um, [lvl.shape for lvl in slide.levels]  # doctest: +SKIP
((80000, 100000), 0.2525, [(80000, 100000, 3), (20000, 25000, 3), (5000, 6250, 3)])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputImageError

__all__ = ["SLIDE_SUFFIXES", "Slide", "SlideError", "is_slide", "open_slide"]

#: File names the slide reader claims outright; ``.tif``/``.tiff`` only when the file is a tiled pyramid.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".mrxs", ".bif", ".btf")
_TIFF_SUFFIXES = (".tif", ".tiff")


class SlideError(InputImageError):
    """A slide cannot be opened: missing, truncated, of an unknown format, or without a needed pixel size."""


@dataclass
class Slide:
    """A whole-slide image: its pyramid levels (lazy) and physical pixel size.

    Attributes
    ----------
    path : Path
    levels : list of dask.array.Array
        uint8 (H_k, W_k, 3) RGB levels, largest first; nothing is read until sliced and computed.
    downsamples : list of float
        Level-0 pixels per level-k pixel (1.0 for level 0).
    pixel_size_um : float or None
        µm per level-0 pixel (x; slides have square pixels), None when the file does not say.
    magnification : float or None
        Objective power (e.g. 20 or 40) when the file records it.
    vendor : str
        The format detected (``aperio``, ``hamamatsu``, ``leica``, ``generic tiff``, ``mirax`` ...).
    properties : dict
        The reader's metadata, as strings.
    """

    path: Path
    levels: list[Any]
    downsamples: list[float]
    pixel_size_um: float | None
    magnification: float | None = None
    vendor: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    closer: Any = field(default=None, repr=False)

    def close(self) -> None:
        """Release the file (the levels cannot be read afterwards)."""
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> Slide:  # noqa: PYI034 - typing.Self is Python 3.11+, and 3.10 is supported
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of level 0."""
        return int(self.levels[0].shape[0]), int(self.levels[0].shape[1])

    def level_pixel_size(self, level: int) -> float | None:
        """µm per pixel of ``level`` (None when the slide's pixel size is unknown)."""
        return None if self.pixel_size_um is None else self.pixel_size_um * self.downsamples[level]

    def level_for_pixel_size(self, target_um: float) -> int:
        """The coarsest level whose pixels are no larger than ``target_um`` (x 1.05): read it, then shrink.

        Never a level coarser than the target (that would lose detail the model was trained with); level 0
        when the slide's pixel size is unknown or already coarser than the target.
        """
        if self.pixel_size_um is None:
            return 0
        fine = [k for k in range(len(self.levels)) if self.level_pixel_size(k) <= target_um * 1.05]
        return max(fine) if fine else 0

    def metadata(self) -> dict:
        """What a napari layer keeps in its ``metadata``: path, vendor, pixel size, levels."""
        return {"path": str(self.path), "vendor": self.vendor, "pixel_size_um": self.pixel_size_um,
                "magnification": self.magnification, "downsamples": list(self.downsamples),
                "level_shapes": [tuple(int(n) for n in lvl.shape[:2]) for lvl in self.levels]}


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _check_complete(tif: Any, path: Path) -> None:
    """Raise when a tile or strip of any level lies beyond the end of the file (a truncated copy)."""
    size = path.stat().st_size
    for series in tif.series:
        for level in getattr(series, "levels", [series]):
            page = level.keyframe
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
            if ends and max(ends) > size:
                raise SlideError(f"{path.name!r} is truncated: its pixel data needs {max(ends)} bytes, the file "
                                 f"has {size} (copy it again)")


_UNIT_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _tiff_pixel_size(tif: Any) -> float | None:
    """µm per pixel from OME-XML ``PhysicalSizeX`` or the resolution tags (inch / centimetre units)."""
    if tif.is_ome and tif.ome_metadata:
        import re

        found = re.search(r'PhysicalSizeX="([^"]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if found and _float(found.group(1)):
            return _float(found.group(1)) * _UNIT_UM.get(unit.group(1) if unit else "µm", 1.0)
    page = tif.pages.first
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is None or unit is None or int(unit.value) not in (2, 3):
        return None
    num, den = res.value
    per_unit = _float(num / den) if den else None
    return None if per_unit is None else (25400.0 if int(unit.value) == 2 else 10000.0) / per_unit


def _open_tiffslide(path: Path) -> Slide:
    import dask.array as da
    import tiffslide

    try:
        slide = tiffslide.TiffSlide(path)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds; one message for all of them
        raise SlideError(f"{path.name!r} cannot be read as a slide: {exc}") from None
    try:
        _check_complete(slide.ts_tifffile, path)
    except SlideError:
        slide.close()
        raise
    group = slide.zarr_group
    keys = sorted(group.array_keys(), key=int)
    levels = []
    for key in keys:
        arr = group[key]
        if len(arr.shape) == 2:  # greyscale pyramid: shown as RGB like every slide
            arr = da.stack([da.from_zarr(arr)] * 3, axis=-1)
        else:
            arr = da.from_zarr(arr)[..., :3]
        levels.append(arr)
    props = {str(k): str(v) for k, v in slide.properties.items() if v is not None}
    mpp = _float(slide.properties.get("tiffslide.mpp-x")) or _float(slide.properties.get("tiffslide.mpp-y"))
    mpp = mpp or _tiff_pixel_size(slide.ts_tifffile)
    return Slide(path, levels, [float(d) for d in slide.level_downsamples], mpp,
                 _float(slide.properties.get("tiffslide.objective-power")),
                 str(slide.properties.get("tiffslide.vendor") or "tiff"), props, slide.close)


class _OpenSlideLevel:
    """One level of an OpenSlide slide as a lazily sliceable uint8 (H, W, 3) array (for dask)."""

    def __init__(self, osr: Any, level: int) -> None:
        self._osr, self._level = osr, level
        w, h = osr.level_dimensions[level]
        self.shape, self.dtype, self.ndim = (h, w, 3), np.dtype(np.uint8), 3
        self._down = osr.level_downsamples[level]

    def __getitem__(self, key: tuple) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)[(slice(None),) * 2 + key[2:]]
        loc = (round(x0 * self._down), round(y0 * self._down))
        rgba = np.asarray(self._osr.read_region(loc, self._level, (x1 - x0, y1 - y0)))
        rgb = np.where(rgba[..., 3:] == 0, 255, rgba[..., :3]).astype(np.uint8)  # transparent = white glass
        return rgb[(slice(None), slice(None)) + key[2:]]


def _open_openslide(path: Path) -> Slide:
    import dask.array as da
    import openslide

    try:
        osr = openslide.OpenSlide(str(path))
    except Exception as exc:  # noqa: BLE001
        raise SlideError(f"{path.name!r} cannot be read as a slide: {exc}") from None
    levels = [da.from_array(_OpenSlideLevel(osr, k), chunks=(1024, 1024, 3), asarray=False)
              for k in range(osr.level_count)]
    props = dict(osr.properties)
    mpp = _float(props.get(openslide.PROPERTY_NAME_MPP_X))
    return Slide(path, levels, [float(d) for d in osr.level_downsamples], mpp,
                 _float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
                 str(props.get(openslide.PROPERTY_NAME_VENDOR, "openslide")), props, osr.close)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_slide(path: str | os.PathLike) -> bool:
    """Whether the slide reader should open ``path``: a slide suffix, or a tiled TIFF with several levels."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in _TIFF_SUFFIXES or not path.is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return bool(series.keyframe.is_tiled) and len(series.levels) > 1
    except Exception:  # noqa: BLE001 - not ours to judge: napari's other readers try it
        return False


def open_slide(path: str | os.PathLike, *, require_pixel_size: bool = False) -> Slide:
    """Open a whole-slide image lazily (headers only).

    Parameters
    ----------
    path : path-like
        SVS, NDPI, SCN, BIF, generic tiled pyramidal TIFF / OME-TIFF (tiffslide) or MRXS (OpenSlide).
    require_pixel_size : bool
        Raise when the file does not record its pixel size.

    Returns
    -------
    Slide

    Raises
    ------
    SlideError
        For a missing file, a truncated file, a file of no known slide format, or (with
        ``require_pixel_size``) one without a pixel size.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"slide {str(path)!r} does not exist")
    if path.suffix.lower() == ".mrxs":
        slide = _open_openslide(path)
    elif _is_tiff(path):
        slide = _open_tiffslide(path)
    else:
        import openslide

        if openslide.OpenSlide.detect_format(str(path)) is None:
            raise SlideError(f"{path.name!r} is not a slide format this plugin reads (SVS, NDPI, SCN, MRXS, BIF, "
                             "pyramidal TIFF or OME-TIFF)")
        slide = _open_openslide(path)
    if require_pixel_size and slide.pixel_size_um is None:
        slide.close()
        raise SlideError(f"{path.name!r} does not record its pixel size (µm/px); give it explicitly")
    return slide


def write_svs(
    path: str | os.PathLike,
    image: np.ndarray,
    pixel_size_um: float | None = 0.25,
    magnification: float | None = 40,
    levels: int = 3,
    tile: int = 256,
) -> Path:
    """Write an RGB image as an Aperio-style SVS: a tiled, JPEG-compressed pyramid (levels 4x apart).

    For tests, examples and benchmarks: the description holds ``MPP`` and ``AppMag`` as Aperio's scanners
    write them, which tiffslide and OpenSlide read back.

    Parameters
    ----------
    path : path-like
        The file to write (``.svs``).
    image : np.ndarray
        uint8 (H, W, 3) level 0.
    pixel_size_um, magnification : float or None
        Recorded in the description; None leaves the key out (a slide without a pixel size).
    levels : int
        Pyramid levels, each a quarter of the previous in each direction (nearest-neighbour).
    tile : int
        TIFF tile edge (a multiple of 16).
    """
    import tifffile

    img = np.ascontiguousarray(image, np.uint8)
    h, w = img.shape[:2]
    desc = f"Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
    if magnification is not None:
        desc += f"|AppMag = {magnification:g}"
    if pixel_size_um is not None:
        desc += f"|MPP = {pixel_size_um:g}"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(tile, tile), compression="jpeg", photometric="rgb", description=desc, subfiletype=0)
        for k in range(1, levels):
            sub = np.ascontiguousarray(img[:: 4**k, :: 4**k])
            tw.write(sub, tile=(tile, tile), compression="jpeg", photometric="rgb",
                     description=f"{w}x{h} -> {sub.shape[1]}x{sub.shape[0]} - ", subfiletype=1)
    return Path(path)
