"""How the Fine-tune, Auto-tune and Evaluate widgets reach the Segment widget: explicitly, never a global.

A widget built in code is given the Segment widget (``segment=``). One opened from napari's plugin menu
gets only the viewer; it then looks the Segment widget up, each time it needs it, among the widgets
docked in that viewer (napari's public ``viewer.window.dock_widgets``), so a Segment widget docked later
is found too.
"""

from __future__ import annotations

from typing import Any


def find_segment(viewer: Any) -> Any:
    """The Segment widget docked in ``viewer``'s window, or None."""
    from .segment import SegmentWidget

    window = getattr(viewer, "window", None)
    docked = getattr(window, "dock_widgets", None)
    if docked is None:
        return None
    try:
        widgets = list(docked.values())
    except RuntimeError:  # a dock being closed while we look
        return None
    # napari may hand plugins proxies; the Segment widget is ours, so work with the object itself.
    widgets = [getattr(w, "__wrapped__", w) for w in widgets]
    return next((w for w in widgets if isinstance(w, SegmentWidget)), None)


class SegmentLink:
    """The Segment widget a tool widget works with.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    segment : SegmentWidget, optional
        Given explicitly (tests, scripts); otherwise looked up in ``viewer`` on each access.
    """

    def __init__(self, viewer: Any, segment: Any = None) -> None:
        self._viewer = viewer
        self._segment = segment

    @property
    def widget(self) -> Any:
        """The Segment widget, or None when there is none."""
        return self._segment if self._segment is not None else find_segment(self._viewer)

    @property
    def model(self) -> Any:
        """The Segment widget's loaded model, or None."""
        segment = self.widget
        return None if segment is None else segment.current_model
