"""The one registry through which the dock widgets share state: image layer -> its segmentation session.

Each viewer has one :class:`Sessions` (:func:`sessions_of`, created on first use). It maps an image layer
to its :class:`~..core.session.SegmentSession` (model, cached maps, parameters, labels) and to the plugin's
layers that show that session (:class:`Shown`). Widgets never reach into each other and never pass masks or
run state through ``layer.metadata``: Fine-tune, Auto-tune and Export ask the registry for the session of
the image in hand (:attr:`Sessions.current`), and ask the Segment widget for work through the registry's
signals (:attr:`Sessions.params_proposed`, :attr:`Sessions.weights_proposed`).

Layers are held weakly; a layer removed from the viewer is forgotten at once (its cached maps are released).
napari may hand plugins proxies of its layers: the registry keys the layers themselves.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal

from ..core.session import SegmentSession
from ._layers import LabelsTrack


def unwrap(obj: Any) -> Any:
    """The object behind a napari proxy (the object itself otherwise)."""
    return getattr(obj, "__wrapped__", obj)


@dataclass
class Shown:
    """The plugin's layers showing one session.

    Attributes
    ----------
    map_layers : dict[str, napari.layers.Image]
        Map name -> its Image layer.
    labels : LabelsTrack or None
        The Labels layer of the (in-memory) labels.
    streamed_labels : LabelsTrack or None
        The multiscale Labels layer of a streamed run.
    plane_layers : list[napari.layers.Labels]
        Where objects overlap: the Labels layers of their packed planes (:func:`._layers.write_planes`).
    """

    map_layers: dict[str, Any] = field(default_factory=dict)
    plane_layers: list = field(default_factory=list)
    labels: LabelsTrack | None = None
    streamed_labels: LabelsTrack | None = None


class Sessions:
    """The sessions of one viewer's image layers.

    Attributes
    ----------
    current : napari.layers.Image or None
        The image in hand (the Segment widget's selected image).
    model : LoadedModel or None
        The model the Segment widget uses for the next run.
    device : str
        The device choice for runs ("auto", "cpu", ...).
    running : bool
        Whether the Segment widget is loading a model or running (it cannot take new weights now).
    """

    #: Emitted with the image layer after its session's labels changed (a run or a parameter change).
    changed = Signal(object)
    #: Emitted with (image layer, params): show these parameters and post-process with them (Auto-tune).
    params_proposed = Signal(object, object)
    #: Emitted with (image layer, weights path, suffix): keep the labels as "<name> (<suffix>)", load the weights
    #: and segment the image again (Fine-tune).
    weights_proposed = Signal(object, str, str)
    #: Emitted with the path after the plugin saved weights (model pickers list them at once).
    weights_saved = Signal(str)
    #: Emitted with the image layer (or None) when the image in hand changes (Export follows it).
    current_changed = Signal(object)

    def __init__(self, viewer: Any) -> None:
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._shown: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._tracks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Labels layer -> LabelsTrack
        self._current: Any = None
        self.model: Any = None
        self.device = "auto"
        self.running = False
        self._stream_rule: Any = None
        viewer.layers.events.removed.connect(self._removed)

    # -- sessions ---------------------------------------------------------------------------------

    def get(self, image: Any) -> SegmentSession | None:
        """The session of ``image``, or None."""
        return None if image is None else self._sessions.get(unwrap(image))

    def open(self, image: Any) -> SegmentSession:
        """The session of ``image``, made (empty) if it has none."""
        key = unwrap(image)
        if key not in self._sessions:
            self._sessions[key] = SegmentSession(name=image.name)
            self._shown[key] = Shown()
        return self._sessions[key]

    def shown(self, image: Any) -> Shown:
        """The plugin's layers showing the session of ``image`` (empty if none)."""
        return self._shown.get(unwrap(image)) or Shown()

    def segmented(self) -> list:
        """The image layers whose sessions hold a run (cached maps or a streamed run)."""
        return [image for image, s in self._sessions.items() if s.maps is not None or s.streamed is not None]

    def with_maps(self, image: Any) -> SegmentSession | None:
        """The session of ``image`` if it holds cached maps (post-processing can run), else None."""
        session = self.get(image)
        return session if session is not None and session.has_maps else None

    @property
    def current(self) -> Any:
        """The image in hand, or None."""
        return self._current() if self._current is not None else None

    @current.setter
    def current(self, image: Any) -> None:
        before = self.current
        self._current = None if image is None else weakref.ref(unwrap(image))
        if self.current is not before:
            self.current_changed.emit(self.current)

    def current_session(self) -> SegmentSession | None:
        """The session of the image in hand, or None."""
        return self.get(self.current)

    def set_stream_rule(self, rule: Any) -> None:
        """Publish ``rule(image) -> bool``, whether Run would stream an image (a bound method, held weakly)."""
        self._stream_rule = weakref.WeakMethod(rule)

    def would_stream(self, image: Any) -> bool:
        """Whether ``image`` was, or a Run would be, streamed tile by tile (no cached maps)."""
        session = self.get(image)
        if session is not None and session.streamed is not None:
            return True
        if session is not None and session.has_maps:
            return False
        rule = None if self._stream_rule is None else self._stream_rule()
        return image is not None and rule is not None and bool(rule(image))

    # -- the plugin's Labels layers ---------------------------------------------------------------

    def remember(self, track: LabelsTrack) -> None:
        """Know ``track.layer`` as a plugin Labels layer with the objects it was written with."""
        self._tracks[unwrap(track.layer)] = track

    def track(self, labels: Any) -> LabelsTrack | None:
        """The plugin's record of a Labels layer it wrote (kept or current), or None."""
        return None if labels is None else self._tracks.get(unwrap(labels))

    def drop(self, labels: Any) -> None:
        """Forget a Labels layer the user took over (renamed "(edited)")."""
        self._tracks.pop(unwrap(labels), None)

    def image_of(self, labels: Any) -> Any:
        """The image layer whose session ``labels`` (or a map layer) shows (now), or None."""
        key = unwrap(labels)
        for image, shown in self._shown.items():
            tracks = (shown.labels, shown.streamed_labels)
            if any(t is not None and unwrap(t.layer) is key for t in tracks):
                return image
            if any(unwrap(layer) is key for layer in shown.map_layers.values()):
                return image
        return None

    def labels_layer(self, image: Any) -> Any:
        """The plugin's Labels layer of the last run of ``image`` (multiscale after a streamed run), or None."""
        session, shown = self.get(image), self.shown(image)
        track = shown.streamed_labels if session is not None and session.streamed is not None else shown.labels
        return None if track is None else track.layer

    def _removed(self, event: Any) -> None:
        layer = unwrap(event.value)
        self._sessions.pop(layer, None)  # a closed image's cached maps are released here
        self._shown.pop(layer, None)
        self._tracks.pop(layer, None)
        if self.current is layer:
            self._current = None
        for shown in self._shown.values():  # a removed plugin layer is forgotten: the next run writes a new one
            shown.map_layers = {name: kept for name, kept in shown.map_layers.items() if unwrap(kept) is not layer}
            if shown.labels is not None and unwrap(shown.labels.layer) is layer:
                shown.labels = None
            if shown.streamed_labels is not None and unwrap(shown.streamed_labels.layer) is layer:
                shown.streamed_labels = None


_REGISTRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sessions_of(viewer: Any) -> Sessions:
    """The :class:`Sessions` of ``viewer`` (one per viewer, made on first use)."""
    key = unwrap(viewer)
    if key not in _REGISTRIES:
        _REGISTRIES[key] = Sessions(key)
    return _REGISTRIES[key]
