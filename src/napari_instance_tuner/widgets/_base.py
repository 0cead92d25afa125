"""What every dock widget of the plugin shares: the viewer's sessions, one background job, layer events.

A :class:`DockWidget` holds the viewer, the viewer's session registry (:func:`._sessions.sessions_of`), its
one running :class:`._worker.Job` (start, cancel, busy), the layer-list connections it drops when the dock
closes, the layer choices of its combo boxes and its notifications. A widget built on it reads its
controls, makes one core call through :meth:`DockWidget.start_job` and writes a layer.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtWidgets import QVBoxLayout, QWidget

from ._sessions import Sessions, sessions_of
from ._worker import Job, Work, error_message, notify_error

__all__ = ["DockWidget", "error_message", "notify_error"]


def _disconnect(events: Any, callbacks: tuple, emitters: tuple[str, ...]) -> None:
    for callback in callbacks:
        for name in emitters:
            getattr(events, name).disconnect(callback)


class DockWidget(QWidget):
    """Base of the plugin's dock widgets.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    parent : QWidget, optional

    Attributes
    ----------
    viewer : napari.viewer.Viewer
    sessions : Sessions
        The viewer's image layer -> session registry.
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.sessions: Sessions = sessions_of(napari_viewer)
        self._job: Job | None = None

    # -- the background job -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while the widget's job runs."""
        return self._job is not None

    def start_job(self, work: Work, *, on_result: Callable[[Any], Any], on_error: Callable | None = None,
                  on_cancelled: Callable[[], Any] | None = None, on_finished: Callable[[], Any] | None = None,
                  on_yielded: Callable[[Any], Any] | None = None, progress: str | None = None) -> Job:
        """Run ``work`` (a core progress generator) in a thread worker as the widget's job.

        ``on_finished`` is called after the job slot is cleared, whatever the outcome; ``on_yielded`` gets each
        progress item on the GUI thread.
        """

        def finished() -> None:
            self._job = None
            if on_finished is not None:
                on_finished()

        self._job = Job(work, on_result=on_result, on_error=on_error, on_cancelled=on_cancelled,
                        on_finished=finished, progress=progress)
        if on_yielded is not None:
            self._job.worker.yielded.connect(on_yielded)
        self._job.start()
        return self._job

    def cancel_job(self) -> None:
        """Ask the running job to stop at its next cancellation check."""
        if self._job is not None:
            self._job.cancel()

    # -- layers -------------------------------------------------------------------------------------

    def watch_layers(self, *callbacks: Callable, emitters: tuple[str, ...] = ("inserted", "removed")) -> None:
        """Connect ``callbacks`` to the viewer's layer-list events; a closed dock disconnects them."""
        events = self.viewer.layers.events
        for callback in callbacks:
            for name in emitters:
                getattr(events, name).connect(callback)
        self.destroyed.connect(partial(_disconnect, events, callbacks, emitters))

    def layers_of(self, kind: str) -> list[tuple[str, Any]]:
        """(name, layer) of the viewer's layers of napari type ``kind`` ("Image", "Labels", "Shapes")."""
        import napari.layers  # deferred: napari internals

        cls = getattr(napari.layers, kind)
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, cls)]

    def stack(self, *parts: Any, stretch: bool = True) -> QVBoxLayout:
        """Lay out ``parts`` (magicgui widgets or QWidgets) top to bottom (a stretch below); returns the layout."""
        layout = QVBoxLayout(self)
        for part in parts:
            layout.addWidget(getattr(part, "native", part))
        if stretch:
            layout.addStretch(1)
        return layout
