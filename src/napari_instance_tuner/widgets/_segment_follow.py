"""The Segment widget follows the data: its image box the layer in hand, its model the kind of image.

:class:`SegmentFollow` is mixed into :class:`.segment.SegmentWidget`. The image box takes the image layer
selected in napari's layer list (or the image behind a selected plugin Labels or map layer), and so a newly added image,
which napari selects. For the image in hand the model picker proposes the shipped model made the default for
its kind (:func:`..core.inference.image_kind.image_kind`: colour → glands, fluorescence → nuclei, brightfield →
worms) and shows why.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.inference.image_kind import image_kind
from ._layers import source_images
from ._sessions import unwrap

logger = logging.getLogger(__name__)


class SegmentFollow:
    """The image box and the proposed model follow the data (a mixin of :class:`.segment.SegmentWidget`)."""

    def _start_following(self) -> None:
        """Follow the layer list's selection from now on, starting with the layer selected now."""
        self.watch_layers(self._follow_selection, events=self.viewer.layers.selection.events, emitters=("active",))
        self._follow_selection()
        if self.image.value is not None:
            self._propose_model(self.image.value)

    def _follow_selection(self, *_: Any) -> None:
        """Take the layer selected in the layer list as the image in hand (if it is, or shows, an image)."""
        active = self.viewer.layers.selection.active
        image = None if active is None else self._image_for(active)
        if image is None or (self.image.value is not None and unwrap(self.image.value) is unwrap(image)):
            return
        self.image.reset_choices()
        if any(unwrap(choice) is unwrap(image) for _, choice in self._image_choices()):
            self.image.value = image

    def _image_for(self, layer: Any) -> Any:
        """``layer`` if it is an image the widget segments; the image of a plugin Labels layer; else None."""
        if any(unwrap(choice) is unwrap(layer) for _, choice in self._image_choices()):
            return layer
        return self.sessions.image_of(layer)

    def _propose_model(self, image: Any) -> None:
        """Propose the shipped model for ``image``'s kind (never replacing the user's choice)."""
        data = image.data[-1] if image.multiscale else image.data  # the smallest level is enough to judge
        try:
            kind, reason = image_kind(data, bool(getattr(image, "rgb", False)))
        except (ValueError, TypeError, IndexError):  # an odd layer (empty, complex...): propose nothing
            logger.debug("could not judge the kind of %s", image.name, exc_info=True)
            return
        self.models.propose(kind, reason)
        self._build_params()  # the proposed model's controls (its family's), before it is loaded

    # -- the layer list ---------------------------------------------------------------------------

    def _image_choices(self, *_: Any) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in source_images(self.viewer)]

    def _refresh_images(self, *_: Any) -> None:
        self.image.reset_choices()
        self.region.reset_choices()
        self._update_controls()

    def _layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_images)
        self._refresh_images()

    def _layer_removed(self, event: Any) -> None:
        event.value.events.name.disconnect(self._refresh_images)
        self._refresh_images()  # the registry released a closed image's session
        self._show_count()
        self._show_note()
