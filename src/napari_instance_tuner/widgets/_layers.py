"""Layer bookkeeping: the plugin writes only its own layers and never overwrites a user's edits.

Every layer the plugin adds carries a metadata tag (:data:`TAG`). A :class:`SegmentResult` remembers,
for one image layer, the cached maps, the map layers and the Labels layer it wrote, and a digest of
the labels as written. Before the labels are replaced, a layer the user painted on (napari's ``paint``
event), replaced (``data`` event) or changed in place (digest mismatch) is renamed "<name> (edited)",
loses the tag, and a new Labels layer is written instead.

Map layers: the maps a family names in ``family.map_names`` (foreground, boundary, ...) follow the
widget's "show maps" box; any further maps (the layering family's "layer_1" ... "layer_N") are added
hidden, each with its own colormap, for the user to switch on in the layer list.

Overlapping objects: for a 2D image of a family whose ``postprocess`` returns per-object ``masks``
(layering, Mask R-CNN), the Labels layer's ``metadata[TAG]`` also holds ``"masks"`` (bool (K, H, W)) and
``"scores"`` (float32 (K,) or None), the very arrays behind the labels shown (references, not copies),
and ``"labels_digest"``, so the Export widget can tell whether the labels were edited since.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.stack import StackInstances, StackMaps

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


def source_images(viewer: Any) -> list:
    """The viewer's Image layers that a user could segment (not the plugin's own map layers)."""
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image) and not is_plugin_layer(layer)]


def forget_layer(results: dict, layer: Any) -> None:
    """Drop what ``results`` (image layer -> :class:`SegmentResult`) knows about a removed layer.

    A removed image loses its result, which releases its cached maps; a removed plugin layer is
    forgotten, so the next run writes a new one. Layers are compared with ``==``, as napari may hand
    plugins proxies of them.
    """
    results.pop(layer, None)
    for result in results.values():
        result.map_layers = {name: kept for name, kept in result.map_layers.items() if kept != layer}
        if result.labels_layer == layer:
            result.labels = None


def digest(data: Any) -> str:
    """Short content hash of an array (cheap bookkeeping: about 1 GB/s)."""
    array = np.ascontiguousarray(np.asarray(data))
    return hashlib.blake2b(array.view(np.uint8).ravel(), digest_size=16).hexdigest() + str(array.shape)


@dataclass
class SegmentResult:
    """Everything the widget keeps about one segmented image layer.

    Attributes
    ----------
    image : napari.layers.Image
    model : LoadedModel
        The model whose maps these are; post-processing uses its family.
    maps : StackMaps
        Cached network outputs: sliders re-run only post-processing on them.
    params : Any
        Parameters of the labels currently shown.
    count : int
        Number of instances shown.
    device : str
        The torch device the maps were computed on.
    image_shape : tuple of int
        Shape of the image data that was segmented.
    masks : np.ndarray or None
        bool (K, H, W) per-object masks of the labels shown, for families whose objects may overlap
        (2D images only, see :class:`..core.stack.StackInstances`); None otherwise.
    scores : np.ndarray or None
        float32 (K,) per-object scores of the labels shown, where the family has them.
    """

    image: Any
    model: Any
    maps: StackMaps
    params: Any
    count: int = 0
    device: str = "cpu"
    image_shape: tuple = ()
    map_layers: dict[str, Any] = field(default_factory=dict)
    labels: LabelsTrack | None = None
    masks: np.ndarray | None = None
    scores: np.ndarray | None = None

    def set_instances(self, params: Any, instances: StackInstances) -> None:
        """Record ``instances`` (made with ``params``) as the ones shown: params, count, masks and scores."""
        self.params, self.count = params, instances.count
        self.masks, self.scores = instances.masks, instances.scores

    @property
    def labels_layer(self) -> Any:
        """The plugin's Labels layer for this image, or None."""
        return self.labels.layer if self.labels is not None else None

    @property
    def family(self) -> Any:
        """The model family that made the maps."""
        return self.model.family


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


def main_maps(result: SegmentResult) -> set[str]:
    """The maps "show maps" shows: those the family names in ``map_names`` (all, if it names none).

    Other maps (the layering family's "layer_1" ... "layer_N") stay hidden until the user shows them.
    """
    arrays = result.maps.slices[0].arrays
    names = set(getattr(result.family, "map_names", ()))
    return {name for name in arrays if name in names} or set(arrays)


def map_colormap(name: str, index: int) -> str:
    """Colormap of map ``name``: from :data:`MAP_COLORMAPS`, else the ``index``-th of :data:`EXTRA_COLORMAPS`."""
    return MAP_COLORMAPS.get(name) or EXTRA_COLORMAPS[index % len(EXTRA_COLORMAPS)]


def write_maps(viewer: Any, result: SegmentResult, visible: bool) -> None:
    """Show ``result.maps`` as Image layers "<image> <map>", updating the plugin's own layers in place.

    New layers of the family's main maps are ``visible`` ("show maps"); further maps are added hidden
    (:func:`main_maps`). Existing layers keep the visibility the user gave them.
    """
    arrays = result.maps.arrays()
    main = main_maps(result)
    for name, layer in list(result.map_layers.items()):
        if name not in arrays and layer in viewer.layers and is_plugin_layer(layer):
            viewer.layers.remove(layer)  # a map the new model does not produce
    extra = 0
    layers = {}
    for name, array in arrays.items():
        layer = result.map_layers.get(name)
        if layer is not None and layer in viewer.layers and is_plugin_layer(layer):
            layer.data = array
        else:
            layer = viewer.add_image(
                array,
                name=f"{result.image.name} {name}",
                colormap=map_colormap(name, extra),
                blending="additive",
                contrast_limits=(0.0, 1.0),
                visible=visible and name in main,
                metadata={TAG: {"role": "map", "map": name}},
                **_spatial(result.image),
            )
        layers[name] = layer
        extra += name not in MAP_COLORMAPS
    result.map_layers = layers


def set_maps_visible(result: SegmentResult, visible: bool) -> None:
    """Show the main map layers of one result (:func:`main_maps`), or hide all its map layers."""
    main = main_maps(result)
    for name, layer in result.map_layers.items():
        if not visible or name in main:
            layer.visible = visible


def labels_edited(viewer: Any, result: SegmentResult) -> bool:
    """True if the plugin's Labels layer of ``result`` was changed by someone else since it was written."""
    track = result.labels
    if track is None or track.layer not in viewer.layers or not is_plugin_layer(track.layer):
        return False
    return track.edited or digest(track.layer.data) != track.digest


def run_record(model: Any, params: Any, device: str, tile_size: int | None, image: Any, image_shape: tuple) -> dict:
    """The keys of :data:`~..core.recipe.LAYER_KEYS` (and ``"role"``) for a run: enough to replay it."""
    from ..core.params import params_to_dict

    return {
        "role": "instances",
        "weights_path": str(model.path),
        "weights_sha256": model.sha256,
        "family": model.family.name,
        "params": params_to_dict(params),
        "device": device,
        "tile_size": tile_size,
        "image_name": image.name,
        "image_shape": list(image_shape),
    }


def labels_metadata(result: SegmentResult, labels_digest: str | None = None) -> dict:
    """What the plugin records on its Labels layer: enough to replay the run, and the overlapping masks.

    The keys are :data:`~..core.recipe.LAYER_KEYS` plus ``"role"`` and ``"labels_digest"`` (the
    :func:`digest` of the labels as written); the Export widget turns them into a recipe that reproduces
    the labels headlessly. Where ``result.masks`` is set (families whose objects may overlap), ``"masks"``
    and ``"scores"`` hold the arrays themselves, not copies; other families' layers have neither key.
    """
    extra = {} if result.masks is None else {"masks": result.masks, "scores": result.scores}
    record = run_record(result.model, result.params, result.device, None, result.image, result.image_shape)
    return {**record, "labels_digest": labels_digest, **extra}


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


def write_labels(viewer: Any, result: SegmentResult, labels: np.ndarray) -> Any:
    """Show ``labels`` (made with ``result.params``) in the plugin's Labels layer "<image> instances".

    Returns the layer written (see :func:`place_labels`). The layer's ``metadata[TAG]`` records the run and
    the masks of ``result`` (:func:`labels_metadata`), which must be those of ``labels``.
    """
    written = digest(labels)
    result.labels = place_labels(viewer, result.labels, labels, labels_metadata(result, written), result.image,
                                 edited=labels_edited(viewer, result), digest=written)
    return result.labels.layer


def _watch_edits(track: LabelsTrack) -> None:
    def edited(*_: Any) -> None:
        if not track.writing:
            track.edited = True

    track.layer.events.paint.connect(edited)
    track.layer.events.data.connect(edited)


def adopt(result: SegmentResult, previous: SegmentResult | None) -> None:
    """Let a new result of the same image reuse (and so replace) the layers of the previous one."""
    if previous is not None:
        result.map_layers = previous.map_layers
        result.labels = previous.labels
