"""Layer bookkeeping for streamed runs: images too large to keep their network maps in memory.

A streamed run (:func:`..core.streaming.stream_segment`) writes its labels to array "0" of a zarr group in a
temporary folder of this session (:func:`stream_target`; the folder is removed when Python exits), and its
worker then writes the smaller levels "1", "2", ... (:func:`..core.pyramid.write_label_pyramid`). The Labels
layer "<image> instances" shows those stored levels as a multiscale layer (chunks are read only when napari
draws them). No maps are cached, so the sliders cannot update these labels: a new Run does.

The rules of :mod:`._layers` hold: the plugin replaces only its own, unedited Labels layer (napari does not
let anyone paint on a multiscale layer; replacing its ``data`` counts as an edit); an edited layer is
renamed "<name> (edited)" and kept. Each run writes a new zarr group, so a cancelled or failed run leaves
the layer shown before it intact; the group of a run that made no layer is deleted.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._layers import LabelsTrack, is_plugin_layer, place_labels, run_record

_DIR: Path | None = None


def stream_dir() -> Path:
    """This session's folder for streamed labels (made on first use, removed when Python exits)."""
    global _DIR
    if _DIR is None or not _DIR.is_dir():
        _DIR = Path(tempfile.mkdtemp(prefix="napari-instance-tuner-"))
        atexit.register(shutil.rmtree, _DIR, True)
    return _DIR


def safe_name(name: str) -> str:
    """``name`` reduced to letters, digits, ``.``, ``_`` and ``-`` (for a file name); "image" if nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"


def stream_target(name: str) -> Path:
    """A zarr group path that does not exist yet: "<dir>/<safe name>.zarr", else "<safe name>-2.zarr", ..."""
    folder, stem = stream_dir(), safe_name(name)
    path, n = folder / f"{stem}.zarr", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.zarr"
    return path


def discard(path: Path | None) -> None:
    """Delete the zarr group of a run that made no layer (nothing shows it)."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class StreamedResult:
    """What the Segment widget keeps about one streamed image layer (no maps: there are none).

    Attributes
    ----------
    image : napari.layers.Image
    model : LoadedModel
    params : Any
        Post-processing parameters of the labels shown.
    count : int
        Number of instances.
    tiles : int
        Number of tiles the run took.
    path : Path
        The zarr group behind the Labels layer: level k of the pyramid, uint32 of shape
        (ceil(H / 2**k), ceil(W / 2**k)), is its array "k" (level 0: the labels at full resolution).
    settings : StreamSettings
        How the image was cut (tile, halo).
    device : str
    image_shape : tuple of int
        Shape of the image data segmented (level 0 of a multiscale layer).
    labels : LabelsTrack or None
        The plugin's Labels layer of this image.
    factor : float
        Image (level-0) pixels per label pixel: the labels are at the model's pixel size.
    offset : (float, float)
        (y, x) of the segmented region's origin in the image's level-0 pixels.
    """

    image: Any
    model: Any
    params: Any
    count: int
    tiles: int
    path: Path
    settings: Any
    device: str = "cpu"
    image_shape: tuple = ()
    labels: LabelsTrack | None = None
    factor: float = 1.0
    offset: tuple = (0.0, 0.0)

    @property
    def labels_layer(self) -> Any:
        """The plugin's Labels layer for this image, or None."""
        return self.labels.layer if self.labels is not None else None


def streamed_metadata(result: StreamedResult) -> dict:
    """``metadata[TAG]`` of a streamed Labels layer.

    The run record of :func:`._layers.run_record` (so Export can write a recipe) plus ``"streamed"`` (True),
    ``"zarr_path"`` (the pyramid's zarr group), ``"model"`` (its name), ``"streaming"`` (tile, halo and amp:
    :meth:`~..core.streaming.StreamSettings.to_dict`), ``"tiles"``, ``"count"`` and ``"labels_digest"``
    (None: the labels are not hashed, they may be huge).
    """
    record = run_record(result.model, result.params, result.device, result.settings.network_tile, result.image,
                        result.image_shape)
    return {
        **record,
        "streamed": True,
        "zarr_path": str(result.path),
        "model": result.model.name,
        "streaming": result.settings.to_dict(),
        "tiles": int(result.tiles),
        "count": int(result.count),
        "labels_digest": None,
    }


def write_streamed_labels(viewer: Any, result: StreamedResult, previous: Any, levels: list) -> Any:
    """Show ``levels`` (a label pyramid, largest first) as the multiscale Labels layer "<image> instances".

    ``previous`` is the :class:`StreamedResult` of the image's last streamed run, or None: its layer is
    updated in place if it is still the plugin's and unedited, else kept as "(edited)" and a new layer added
    (:func:`._layers.place_labels`). Returns the layer.
    """
    track = getattr(previous, "labels", None)
    edited = (track is not None and track.edited and track.layer in viewer.layers
              and is_plugin_layer(track.layer))
    result.labels = place_labels(viewer, track, levels, streamed_metadata(result), result.image, edited=edited,
                                 multiscale=True, factor=result.factor, offset=result.offset)
    return result.labels.layer


def forget_streamed(streamed: dict, layer: Any) -> None:
    """Drop what ``streamed`` (image layer -> :class:`StreamedResult`) knows about a removed layer."""
    streamed.pop(layer, None)
    for result in streamed.values():
        if result.labels_layer == layer:
            result.labels = None
