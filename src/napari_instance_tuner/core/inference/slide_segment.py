"""Segment an image or whole slide at its model's pixel size, in a region or whole; outputs in level-0 pixels.

:func:`segment_at_model_scale` opens the input (a slide through :mod:`..io.slides`, a TIFF lazily, another
image in memory), picks the pyramid level nearest the model's pixel size (never a coarser one), shows the
model a lazily resampled view of the region (:class:`.resample.ResampledImage`), streams it through the
tiling and stitching of :mod:`.streaming`, and returns labels at the model's scale with the
:class:`~..io.objects.LabelFrame` that maps them to the image's level 0. :func:`write_outputs` writes the
formats asked for (label TIFF, OME-Zarr, QuPath GeoJSON, CSV) in level-0 pixels, block by block.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InstanceTunerError
from ..evaluation.measure import to_csv
from ..io.export import write_geojson, write_label_tiff_tiles
from ..io.objects import LabelFrame, object_boxes, object_features, object_table
from ..io.ome_zarr import write_label_group
from ..io.safe_write import write_text
from ..io.slides import _tiff_pixel_size, is_slide, open_slide
from ..progress import Progress
from .resample import ResampledImage, UpscaledLabels, model_pixel_size, scale_factor
from .streaming import StreamSettings, TiffImage, open_image, stream_segment
from .tissue import is_rgb, thumbnail, tissue_filter, tissue_mask

__all__ = [
    "FORMATS",
    "ScaledResult",
    "SourceImage",
    "needs_model_scale",
    "open_source",
    "parse_roi",
    "segment_at_model_scale",
    "segment_file",
    "source_from_levels",
    "write_outputs",
]

#: Output formats of ``predict --format`` and their file suffixes.
FORMATS = {"tif": ".tif", "zarr": ".zarr", "geojson": ".geojson", "csv": ".csv"}


@dataclass
class SourceImage:
    """An input opened lazily: its levels (level 0 first), their downsamples, and the pixel size of level 0."""

    levels: list[Any]
    downsamples: list[float]
    pixel_size_um: float | None
    closer: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.levels[0].shape[0]), int(self.levels[0].shape[1])

    def level_for(self, target_um: float | None) -> int:
        """The coarsest level no coarser than ``target_um`` (level 0 when anything is unknown)."""
        if target_um is None or self.pixel_size_um is None:
            return 0
        fine = [k for k, d in enumerate(self.downsamples) if self.pixel_size_um * d <= target_um * 1.05]
        return max(fine) if fine else 0

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None


def source_from_levels(levels: list[Any], pixel_size_um: float | None) -> SourceImage:
    """A :class:`SourceImage` of arrays already open (a napari multiscale layer's data, largest first)."""
    height = float(levels[0].shape[0])
    return SourceImage(list(levels), [height / float(lvl.shape[0]) for lvl in levels], pixel_size_um)


def open_source(path: str | os.PathLike, pixel_size_um: float | None = None) -> SourceImage:
    """Open an image or slide lazily; ``pixel_size_um`` (µm per level-0 pixel) overrides the file's."""
    path = Path(path)
    if is_slide(path):
        slide = open_slide(path)
        return SourceImage(slide.levels, slide.downsamples, pixel_size_um or slide.pixel_size_um, slide.close)
    source = open_image(path)
    size = None
    if isinstance(source, TiffImage):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            size = _tiff_pixel_size(tif)
    return SourceImage([source], [1.0], pixel_size_um or size, getattr(source, "close", None))


def parse_roi(text: str) -> tuple[int, int, int, int]:
    """``"X,Y,W,H"`` (level-0 pixels) -> (y, x, h, w).

    Raises
    ------
    InstanceTunerError
        Unless four integers with W, H > 0 and X, Y >= 0.
    """
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise InstanceTunerError(f"--roi must be X,Y,W,H in level-0 pixels (four integers); got {text!r}") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise InstanceTunerError(f"--roi {text!r}: X and Y must be >= 0, W and H > 0")
    return y, x, h, w


@dataclass
class ScaledResult:
    """Labels at the model's scale and where they sit in the image.

    Attributes
    ----------
    labels : array-like
        uint32 (h, w) labels (zarr when written to disk).
    count : int
    frame : LabelFrame
        Level-0 pixels per label pixel, the region's level-0 origin, µm per level-0 pixel.
    region : (int, int, int, int)
        (y, x, h, w) of the segmented region in level-0 pixels.
    view : array-like
        The resampled image the model saw (for intensities), same (h, w) as ``labels``.
    notes : list of str
        What the user should know (e.g. an unknown pixel size).
    tiles : int
    written : list of Path
        Files written by :func:`segment_file`.
    """

    labels: Any
    count: int
    frame: LabelFrame
    region: tuple[int, int, int, int]
    view: Any
    notes: list[str] = field(default_factory=list)
    tiles: int = 1
    written: list[Path] = field(default_factory=list)


def segment_at_model_scale(
    loaded: Any,
    source: SourceImage,
    params: Any,
    *,
    roi: tuple[int, int, int, int] | None = None,
    out: str | os.PathLike | None = None,
    settings: Any = None,
    device: str | None = None,
    cancel: Any = None,
    skip_background: bool = False,
) -> Generator[Progress, None, ScaledResult]:
    """Segment ``source`` (or its ``roi``) at the model's pixel size; yields progress.

    Parameters
    ----------
    loaded : LoadedModel
    source : SourceImage
    params : dataclass
        The family's post-processing parameters.
    roi : (int, int, int, int), optional
        (y, x, h, w) in level-0 pixels (clipped to the image); default the whole image.
    out : path, optional
        Zarr array for the labels at the model's scale (in memory when None).
    settings : StreamSettings, optional
    device : str, optional
    cancel : CancelToken, optional
    skip_background : bool
        Find the tissue on the coarsest level (:mod:`.tissue`, RGB images only) and never run the tiles
        without any; they have no objects.
    """
    h0, w0 = source.shape
    y, x, h, w = roi or (0, 0, h0, w0)
    y, x = min(max(0, y), h0 - 1), min(max(0, x), w0 - 1)
    h, w = min(h, h0 - y), min(w, w0 - x)
    model_um = model_pixel_size(loaded.meta)
    notes = []
    if source.pixel_size_um is None and model_um is not None:
        notes.append(f"the image records no pixel size: segmented as if it had the model's {model_um:g} µm/px")
    elif model_um is None and source.pixel_size_um is not None:
        notes.append("the model records no pixel size: the image is segmented at its own pixel size")
    level = source.level_for(model_um)
    down = source.downsamples[level]
    level_um = None if source.pixel_size_um is None else source.pixel_size_um * down
    factor = scale_factor(level_um, model_um)
    region = (y / down, x / down, h / down, w / down)
    array = source.levels[level]
    whole = level == 0 and factor == 1.0 and (y, x, h, w) == (0, 0, h0, w0)
    view = array if whole else ResampledImage(array, factor, region)
    keep = None
    if skip_background and is_rgb(array):
        yield Progress(0, 0, "finding the tissue")
        thumb, thumb_down = thumbnail(source.levels, source.downsamples)
        mask = tissue_mask(thumb)
        keep = tissue_filter(mask, factor * down / thumb_down, (y / thumb_down, x / thumb_down),
                             margin=(settings or StreamSettings()).halo)
        notes.append(f"tissue found on {mask.mean():.0%} of the slide; tiles without tissue were not run")
    result = yield from stream_segment(loaded, view, params, out=out, settings=settings, device=device,
                                       cancel=cancel, tile_filter=keep)
    frame = LabelFrame(factor * down, (float(y), float(x)), source.pixel_size_um, (float(h), float(w)))
    return ScaledResult(result.labels, result.count, frame, (y, x, h, w), view, notes, result.tiles)


def write_outputs(
    result: ScaledResult,
    formats: list[str],
    out_dir: str | os.PathLike,
    stem: str,
    *,
    model: str | None = None,
    object_type: str = "detection",
    classification: str | None = None,
) -> Generator[Progress, None, list[Path]]:
    """Write ``DIR/<stem>.<ext>`` for each format (``tif``, ``zarr``, ``geojson``, ``csv``) in level-0 pixels.

    The label TIFF and OME-Zarr are the labels seen in level-0 pixels of the region (nearest neighbour),
    written tile by tile; GeoJSON and CSV read one object's box at a time. Files are replaced.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InstanceTunerError(f"unknown format {unknown[0]!r}; valid: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    frame = result.frame
    level0 = UpscaledLabels(result.labels, frame.factor, result.region[2:])
    um = frame.pixel_size_um
    boxes = object_boxes(result.labels) if {"geojson", "csv"} & set(formats) else None
    written = []
    for k, fmt in enumerate(formats):
        yield Progress(k, len(formats), f"writing {stem}{FORMATS[fmt]}")
        path = out_dir / f"{stem}{FORMATS[fmt]}"
        if fmt == "tif":
            write_label_tiff_tiles(path, level0, None if um is None else (um, um), overwrite=True)
        elif fmt == "zarr":
            yield from write_label_group(path, level0, um)
        elif fmt == "geojson":
            collection = object_features(result.labels, frame, image=result.view, object_type=object_type,
                                         classification=classification, model=model, boxes=boxes)
            write_geojson(path, collection, overwrite=True)
        else:
            write_text(path, to_csv(object_table(result.labels, frame, result.view, boxes)), overwrite=True)
        written.append(path)
    return written


def needs_model_scale(path: Path, meta: dict, formats: Any = None, roi: Any = None,
                      pixel_size_um: float | None = None) -> bool:
    """Whether an input is segmented through this module rather than as a plain image at its own pixels.

    True with output ``formats``, a ``roi`` or a ``pixel_size_um`` given, for a slide, and for a TIFF whose
    recorded pixel size differs from the model's (``meta["pixel_size_um"]``).
    """
    if formats is not None or roi is not None or pixel_size_um is not None or is_slide(path):
        return True
    if Path(path).suffix.lower() not in (".tif", ".tiff") or model_pixel_size(meta) is None:
        return False
    source = open_source(path)
    source.close()
    return scale_factor(source.pixel_size_um, model_pixel_size(meta)) != 1.0


def segment_file(
    loaded: Any,
    path: Path,
    params: Any,
    out_dir: Path,
    stem: str,
    *,
    formats: Any = None,
    roi: tuple[int, int, int, int] | None = None,
    pixel_size_um: float | None = None,
    settings: Any = None,
    device: str | None = None,
    skip_background: bool | None = None,
) -> Generator[Progress, None, ScaledResult]:
    """Open ``path``, segment it at the model's scale and write ``formats`` (default ``tif``) to ``out_dir``.

    ``skip_background`` (see :func:`segment_at_model_scale`) defaults to True for slides, False otherwise.
    The labels at the model's scale live in a scratch zarr beside the outputs (removed afterwards); returns
    the :class:`ScaledResult` with ``written`` set to the paths written.
    """
    import shutil
    import tempfile

    skip = is_slide(path) if skip_background is None else skip_background
    source = open_source(path, pixel_size_um)
    scratch = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
    try:
        result = yield from segment_at_model_scale(loaded, source, params, roi=roi, out=scratch / "labels",
                                                   settings=settings, device=device, skip_background=skip)
        result.written = yield from write_outputs(result, list(formats or ("tif",)), out_dir, stem,
                                                  model=loaded.name)
    finally:
        source.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return result
