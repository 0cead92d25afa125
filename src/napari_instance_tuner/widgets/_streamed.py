"""Layer bookkeeping for streamed runs: images too large to keep their network maps in memory.

A streamed run (:func:`..core.inference.streaming.stream_segment`) writes its labels to array "0" of a zarr group in a
temporary folder of this session (:func:`stream_target`; the folder is removed when Python exits), and its
worker then writes the smaller levels "1", "2", ... (:func:`..core.io.pyramid.write_label_pyramid`). The Labels
layer "<image> instances" shows those stored levels as a multiscale layer (chunks are read only when napari
draws them). No maps are cached, so the sliders cannot update these labels: a new Run does.

The rules of :mod:`._layers` hold: the plugin replaces only its own, unedited Labels layer (napari does not
let anyone paint on a multiscale layer; replacing its ``data`` counts as an edit); an edited layer is
renamed "<name> (edited)" and kept. Each run writes a new zarr group, so a cancelled or failed run leaves
the layer shown before it intact; the group of a run that made no layer is deleted.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.inference.resample import model_pixel_size, scale_factor
from ..core.inference.stack import slice_count
from ..core.io.pyramid import needs_streaming
from ._file_names import safe_name
from ._layers import LabelsTrack, is_plugin_layer, place_labels
from ._pixel_size import layer_pixel_size

_DIR: Path | None = None


def stream_dir() -> Path:
    """This session's folder for streamed labels (made on first use, removed when Python exits)."""
    global _DIR
    if _DIR is None or not _DIR.is_dir():
        _DIR = Path(tempfile.mkdtemp(prefix="napari-instance-tuner-"))
        atexit.register(shutil.rmtree, _DIR, True)
    return _DIR


def stream_target(name: str) -> Path:
    """A zarr group path that does not exist yet: "<dir>/<safe name>.zarr", else "<safe name>-2.zarr", ..."""
    folder, stem = stream_dir(), "_".join(safe_name(name, "image").split())  # no spaces in scratch paths
    path, n = folder / f"{stem}.zarr", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.zarr"
    return path


def streams(layer: Any, loaded: Any, pixel_size: float, region: Any, stream_pixels: int) -> bool:
    """Whether Run streams ``layer``: a large (more than ``stream_pixels``) or multiscale 2D image, a region of
    one, or one whose pixel size differs from the model's. Raises InstanceTunerError for unsupported shapes."""
    shape = tuple(np.shape(layer.data[0] if layer.multiscale else layer.data))
    resample = loaded is not None and slice_count(shape, layer.rgb) is None and scale_factor(
        layer_pixel_size(layer, pixel_size), model_pixel_size(loaded.meta)) != 1.0
    in_region = region is not None and slice_count(shape, layer.rgb) is None
    return resample or in_region or needs_streaming(shape, layer.multiscale, stream_pixels, rgb=layer.rgb)


def discard(path: Path | None) -> None:
    """Delete the zarr group of a run that made no layer (nothing shows it)."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def streamed_metadata(session: Any) -> dict:
    """``metadata[TAG]`` of a streamed Labels layer.

    The session's run record (:meth:`~..core.session.SegmentSession.record`, with ``"streaming"``: tile, halo
    and amp, so Export can write a recipe) plus ``"streamed"`` (True), ``"zarr_path"`` (the pyramid's zarr
    group), ``"model"`` (its name), ``"tiles"``, ``"count"`` and ``"labels_digest"`` (None: the labels are
    not hashed, they may be huge).
    """
    run = session.streamed
    return {
        **session.record(),
        "streamed": True,
        "zarr_path": str(run.path),
        "model": session.model.name,
        "tiles": int(run.tiles),
        "count": int(run.count),
        "labels_digest": None,
    }


def write_streamed_labels(viewer: Any, image: Any, session: Any, shown: Any) -> LabelsTrack:
    """Show the session's streamed label pyramid (largest level first) as the multiscale Labels layer
    "<image> instances"; returns its track.

    The layer of the image's last streamed run (``shown.streamed_labels``) is updated in place if it is still
    the plugin's and unedited, else kept as "(edited)" and a new layer added (:func:`._layers.place_labels`).
    """
    track, run = shown.streamed_labels, session.streamed
    edited = (track is not None and track.edited and track.layer in viewer.layers
              and is_plugin_layer(track.layer))
    shown.streamed_labels = place_labels(viewer, track, run.levels, streamed_metadata(session), image,
                                         edited=edited, multiscale=True, factor=run.factor, offset=run.offset)
    return shown.streamed_labels
