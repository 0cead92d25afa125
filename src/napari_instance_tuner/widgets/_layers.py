"""Layer bookkeeping: the plugin writes only its own layers and never overwrites a user's edits.

Every layer the plugin adds carries a metadata tag (:data:`TAG`) whose value records the run (for the user's
files and recipes: :data:`~..core.io.recipe.LAYER_KEYS`, ``"labels_digest"``). For one image's session, the
registry (:mod:`._sessions`) remembers the map layers and the Labels layer written, and a digest of the labels
as written. Before the labels are replaced, a layer the user painted on (napari's ``paint`` event), replaced
(``data`` event) or changed in place (digest mismatch) is renamed "<name> (edited)", loses the tag, and a new
Labels layer is written instead.

Map layers: the maps a family names in ``family.map_names`` (foreground, boundary, ...) follow the
widget's "show maps" box; any further maps (the layering family's "layer_1" ... "layer_N") are added
hidden, each with its own colormap, for the user to switch on in the layer list, and are shown masked by
the foreground (:func:`..core.inference.map_display.display_maps`), not as solid sheets.

Overlapping objects: for a 2D image of a family whose ``postprocess`` returns per-object ``objects``
(layering, Mask R-CNN: boxes and crops, :class:`~..core.sparse_masks.SparseMasks`), the :class:`LabelsTrack` of
the Labels layer holds the ``objects`` and ``scores`` (float32 (K,) or None) behind the labels written (the
session's, not copies), so Export can write them while the labels are unedited. Where objects overlap, the
Labels layer shows the flattened labels and :func:`write_planes` adds a few hidden Labels layers "<image>
objects p/P": the objects packed by greedy colouring of their overlap graph (objects that share a pixel are on
different planes), each object whole on its plane with its own label, so every object can be seen whole
without one layer per object.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.inference.map_display import display_maps

#: Metadata key marking the layers this plugin made.
TAG = "napari_instance_tuner"

#: Colormaps of known map names; others cycle through :data:`EXTRA_COLORMAPS`.
MAP_COLORMAPS = {"foreground": "green", "boundary": "magenta", "centroid": "yellow", "scores": "cyan",
                 "score_map": "cyan"}
#: Eight colormaps rising from black (for additive blending), distinct from those of :data:`MAP_COLORMAPS`:
#: the layering family's eight "layer_k" maps each get their own.
EXTRA_COLORMAPS = ("red", "bop orange", "bop blue", "bop purple", "blue", "fire", "gray", "inferno")


def is_plugin_layer(layer: Any) -> bool:
    """True for layers this plugin wrote (and the user has not taken over)."""
    return TAG in getattr(layer, "metadata", {})


@dataclass
class LabelsTrack:
    """The plugin's Labels layer of one image and what the plugin last wrote into it.

    The edit watchers hold this small object (not the result with its maps), so a replaced result is
    freed.
    """

    layer: Any
    digest: str
    edited: bool = False
    writing: bool = False
    objects: Any = None
    scores: np.ndarray | None = None


def source_images(viewer: Any) -> list:
    """The viewer's Image layers that a user could segment (not the plugin's own map layers)."""
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image) and not is_plugin_layer(layer)]


def digest(data: Any) -> str:
    """Content checksum of an array, to notice edits: CRC-32 of the bytes, dtype and shape (about 2 GB/s).

    Not a cryptographic hash: it only has to change when the user edits the labels, and CRC-32 catches every
    change confined to 32 consecutive bits and all but one in 2**32 others. blake2b took 9 ms per 1024x1024
    write, twice per slider move (docs/benchmarks.md, session 12); this takes 2 ms.
    """
    array = np.ascontiguousarray(np.asarray(data))
    return f"{zlib.crc32(array.view(np.uint8).ravel()):08x}{array.dtype.str}{array.shape}"


def _spatial(image: Any, factor: float = 1.0, offset: tuple = (0.0, 0.0)) -> dict:
    """Scale and translate of labels over ``image`` with ``factor`` image pixels per label pixel.

    Label pixel j covers image pixels [offset + j * factor, offset + (j + 1) * factor): its centre is image
    pixel ``offset + (j + 0.5) * factor - 0.5``.
    """
    scale = np.asarray(image.scale, float)
    if factor == 1.0 and not any(offset):
        return {"scale": image.scale, "translate": image.translate}
    factors, shift = np.ones(scale.size), np.zeros(scale.size)
    factors[-2:], shift[-2:] = factor, offset
    return {"scale": scale * factors,
            "translate": np.asarray(image.translate, float) + (shift + (factors - 1) / 2) * scale}


def main_maps(session: Any) -> set[str]:
    """The maps "show maps" shows: those the family names in ``map_names`` (all, if it names none).

    Other maps (the layering family's "layer_1" ... "layer_N") stay hidden until the user shows them.
    """
    arrays = session.maps.slices[0].arrays
    names = set(getattr(session.family, "map_names", ()))
    return {name for name in arrays if name in names} or set(arrays)


def map_colormap(name: str, index: int) -> str:
    """Colormap of map ``name``: from :data:`MAP_COLORMAPS`, else the ``index``-th of :data:`EXTRA_COLORMAPS`."""
    return MAP_COLORMAPS.get(name) or EXTRA_COLORMAPS[index % len(EXTRA_COLORMAPS)]


def write_maps(viewer: Any, image: Any, session: Any, shown: Any, visible: bool) -> None:
    """Show ``session.maps`` as Image layers "<image> <map>", updating the plugin's own layers in place.

    New layers of the family's main maps are ``visible`` ("show maps"); further maps are added hidden
    (:func:`main_maps`). Existing layers keep the visibility the user gave them. ``shown`` is the
    registry's :class:`._sessions.Shown` of ``image``.
    """
    main = main_maps(session)
    arrays = display_maps(session.maps.arrays(), set(MAP_COLORMAPS) | main)  # "layer_k": masked by the foreground
    for name, layer in list(shown.map_layers.items()):
        if name not in arrays and layer in viewer.layers and is_plugin_layer(layer):
            viewer.layers.remove(layer)  # a map the new model does not produce
    extra = 0
    layers = {}
    for name, array in arrays.items():
        layer = shown.map_layers.get(name)
        if layer is not None and layer in viewer.layers and is_plugin_layer(layer):
            layer.data = array
        else:
            layer = viewer.add_image(
                array,
                name=f"{image.name} {name}",
                colormap=map_colormap(name, extra),
                blending="additive",
                contrast_limits=(0.0, 1.0),
                visible=visible and name in main,
                metadata={TAG: {"role": "map", "map": name}},
                **_spatial(image),
            )
        layers[name] = layer
        extra += name not in MAP_COLORMAPS
    shown.map_layers = layers


def set_maps_visible(session: Any, shown: Any, visible: bool) -> None:
    """Show the main map layers of one session (:func:`main_maps`), or hide all its map layers."""
    main = main_maps(session)
    for name, layer in shown.map_layers.items():
        if not visible or name in main:
            layer.visible = visible


def labels_edited(viewer: Any, track: LabelsTrack | None) -> bool:
    """True if the plugin's Labels layer of ``track`` was changed by someone else since it was written."""
    if track is None or track.layer not in viewer.layers or not is_plugin_layer(track.layer):
        return False
    return track.edited or digest(track.layer.data) != track.digest


def place_labels(
    viewer: Any, track: LabelsTrack | None, data: Any, info: dict, image: Any, *, edited: bool, digest: str = "",
    multiscale: bool = False,
    factor: float = 1.0,
    offset: tuple = (0.0, 0.0),
) -> LabelsTrack:
    """Write ``data`` into the plugin's Labels layer of ``track``, or a new layer "<image> instances".

    An ``edited`` layer is kept: renamed "<name> (edited)" and untagged (which drops its masks), and a new
    layer is added. Otherwise the plugin's own layer (of the same kind, single- or multiscale) is updated in
    place. ``info`` becomes ``metadata[TAG]``; the new layer takes the image's scale and translate (times
    ``factor``, image pixels per label pixel, for labels made at a model's pixel size).
    """
    if track is not None and edited:
        track.layer.name = f"{track.layer.name} (edited)"
        track.layer.metadata = {k: v for k, v in track.layer.metadata.items() if k != TAG}
        track = None
    if (track is not None and track.layer in viewer.layers and is_plugin_layer(track.layer)
            and bool(track.layer.multiscale) == multiscale):
        track.writing = True
        try:
            track.layer.data = data
            for key, value in _spatial(image, factor, offset).items():
                if not np.array_equal(getattr(track.layer, key), value):  # each set refreshes the layer
                    setattr(track.layer, key, value)
            track.layer.metadata = {**track.layer.metadata, TAG: info}
        finally:
            track.writing = False
        track.digest, track.edited = digest, False
        return track
    extra = {"multiscale": True} if multiscale else {}
    layer = viewer.add_labels(data, name=f"{image.name} instances", metadata={TAG: info}, **extra,
                             **_spatial(image, factor, offset))
    track = LabelsTrack(layer=layer, digest=digest)
    _watch_edits(track)
    return track


def write_labels(viewer: Any, image: Any, session: Any, shown: Any) -> LabelsTrack:
    """Show ``session.labels`` in the plugin's Labels layer "<image> instances"; returns its track.

    The layer's ``metadata[TAG]`` records the run (:meth:`~..core.session.SegmentSession.record`) and the
    digest of the labels as written; the track holds the session's objects and scores of these labels.
    Where the objects overlap, :func:`write_planes` shows them whole.
    """
    written = digest(session.labels)
    info = {**session.record(), "labels_digest": written}
    track = place_labels(viewer, shown.labels, session.labels, info, image,
                         edited=labels_edited(viewer, shown.labels), digest=written)
    track.objects, track.scores = session.objects, session.scores
    shown.labels = track
    write_planes(viewer, image, session.objects, shown)
    return track


def write_planes(viewer: Any, image: Any, objects: Any, shown: Any) -> None:
    """Show overlapping ``objects`` as a few hidden Labels layers "<image> objects p/P" (greedy colouring).

    Object k is label k + 1 on its plane, as in the flattened labels, so colours match. Nothing is shown (and
    earlier plane layers of ``shown`` are removed) when there are no objects or none overlap. Plane layers are
    the plugin's own (tagged, role "plane"); existing ones are updated in place and keep the user's visibility.
    """
    planes = objects.to_planes() if objects is not None and len(objects) else None
    wanted = 0 if planes is None or planes.shape[0] < 2 else planes.shape[0]
    layers = []
    for p, layer in enumerate(shown.plane_layers):
        if p >= wanted and layer in viewer.layers and is_plugin_layer(layer):
            viewer.layers.remove(layer)
    for p in range(wanted):
        name = f"{image.name} objects {p + 1}/{wanted}"
        old = shown.plane_layers[p] if p < len(shown.plane_layers) else None
        if old is not None and old in viewer.layers and is_plugin_layer(old):
            old.data, old.name = planes[p], name
            layers.append(old)
        else:
            layers.append(viewer.add_labels(planes[p], name=name, visible=False, opacity=0.6,
                                            metadata={TAG: {"role": "plane", "plane": p}}, **_spatial(image)))
    shown.plane_layers = layers


def _watch_edits(track: LabelsTrack) -> None:
    def edited(*_: Any) -> None:
        if not track.writing:
            track.edited = True

    track.layer.events.paint.connect(edited)
    track.layer.events.data.connect(edited)


def keep_labels(viewer: Any, session: Any, shown: Any, suffix: str) -> Any:
    """Detach the plugin's Labels layer of a session (``shown``: its layers), renamed "<name> (<suffix>)".

    Returns the layer, or None when there is none or the user edited it (the usual "(edited)" rule applies).
    The next run or parameter change writes a new layer; the kept one keeps its record of the run.
    """
    streamed = session is not None and session.streamed is not None
    track = shown.streamed_labels if streamed else shown.labels
    if track is None or track.layer not in viewer.layers:
        return None
    if track.edited if streamed else labels_edited(viewer, track):
        return None
    track.layer.name = f"{track.layer.name} ({suffix})"
    if streamed:
        shown.streamed_labels = None
    else:
        shown.labels = None
    return track.layer
