"""What every dock widget of the plugin shares: the viewer's sessions, one background job, layer events.

A :class:`DockWidget` holds the viewer, the viewer's session registry (:func:`._sessions.sessions_of`), its
one running :class:`._worker.Job` (start, cancel, busy), the layer-list connections it drops when the dock
closes, the layer choices of its combo boxes and its notifications. A widget built on it reads its
controls, makes one core call through :meth:`DockWidget.start_job` and writes a layer.

Layout (:meth:`DockWidget.stack`): the controls scroll inside the dock, so that the plugin's docks fit a
1920x1080 screen together (they are tabbed: :mod:`._docking`); below them, always visible, the job's
progress line (:class:`._progress.ProgressPanel`: what runs, done/total, time left, Cancel). A job started on
an image or labels layer (``subject``) is cancelled, with a notification, when that layer is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from ._docking import tab_with_siblings
from ._progress import ProgressPanel
from ._sessions import Sessions, sessions_of, unwrap
from ._worker import Job, Work, error_message, notify_error

__all__ = ["DockWidget", "error_message", "notify_error"]


def notify_warning(message: str) -> None:
    """Show ``message`` as a napari warning notification."""
    from napari.utils import notifications

    notifications.show_warning(message)


def _disconnect(events: Any, callbacks: tuple, emitters: tuple[str, ...]) -> None:
    for callback in callbacks:
        for name in emitters:
            getattr(events, name).disconnect(callback)


class VerticalScroll(QScrollArea):
    """Scrolls its content up and down, never sideways: it is as wide as the content's minimum width (and the
    scroll bar), which follows the content as its controls change (e.g. another model's parameters)."""

    def __init__(self, content: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        content.installEventFilter(self)

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        content = self.widget()
        width = max(content.minimumSizeHint().width(), content.minimumWidth()) + self.verticalScrollBar().sizeHint().width()
        return QSize(max(hint.width(), width), hint.height())

    def eventFilter(self, obj: Any, event: QEvent) -> bool:
        if event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's minimum width may have changed
        return super().eventFilter(obj, event)


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
        self._subject: Any = None  # the layer the job works on: closing it cancels the job
        self._job_title = ""
        self.progress_panel = ProgressPanel(on_cancel=self._cancel_pressed)
        self.viewer.layers.events.removed.connect(self._subject_removed)
        self.destroyed.connect(partial(_disconnect, self.viewer.layers.events, (self._subject_removed,), ("removed",)))

    # -- the background job -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while the widget's job runs."""
        return self._job is not None

    def start_job(self, work: Work, *, on_result: Callable[[Any], Any], on_error: Callable | None = None,
                  on_cancelled: Callable[[], Any] | None = None, on_finished: Callable[[], Any] | None = None,
                  on_yielded: Callable[[Any], Any] | None = None, progress: str | None = None,
                  subject: Any = None, cancellable: bool = True) -> Job:
        """Run ``work`` (a core progress generator) in a thread worker as the widget's job.

        ``on_finished`` is called after the job slot is cleared, whatever the outcome; ``on_yielded`` gets each
        progress item on the GUI thread. ``progress`` titles the dock's progress line; ``cancellable`` offers
        Cancel there; closing the layer ``subject`` cancels the job. No napari activity bar is opened: the
        dock's line shows the same, and the activity dock's animated indicator repaints the whole window for as
        long as a bar is open (about half a CPU on a software-OpenGL canvas; docs/benchmarks.md, session 12).
        """

        def finished() -> None:
            self._job, self._subject = None, None
            self.progress_panel.finish()
            if on_finished is not None:
                on_finished()

        self._job = Job(work, on_result=on_result, on_error=on_error, on_cancelled=on_cancelled,
                        on_finished=finished, progress=None)
        self._subject = None if subject is None else unwrap(subject)
        self._job_title = progress or "Working"
        self.progress_panel.start(self._job_title, cancellable=cancellable)
        self._job.worker.yielded.connect(self.progress_panel.show_progress)
        if on_yielded is not None:
            self._job.worker.yielded.connect(on_yielded)
        self._job.start()
        return self._job

    def cancel_job(self) -> None:
        """Ask the running job to stop at its next cancellation check."""
        if self._job is not None:
            self._job.cancel()
            self.progress_panel.cancelling()

    def cancel(self) -> None:
        """Stop the widget's work at its next check (what the progress line's Cancel does)."""
        self.cancel_job()

    def _cancel_pressed(self) -> None:
        self.cancel()

    def _subject_removed(self, event: Any) -> None:
        if not self.busy or self._subject is None or unwrap(event.value) is not self._subject:
            return
        self.cancel()
        notify_warning(f"{event.value.name!r} was closed: {self._job_title[:1].lower()}{self._job_title[1:]} "
                       "was cancelled, nothing was written")

    # -- layers -------------------------------------------------------------------------------------

    def watch_layers(self, *callbacks: Callable, emitters: tuple[str, ...] = ("inserted", "removed"),
                     events: Any = None) -> None:
        """Connect ``callbacks`` to the viewer's layer-list events (or to ``events``: e.g. the layer selection's);
        a closed dock disconnects them."""
        events = self.viewer.layers.events if events is None else events
        for callback in callbacks:
            for name in emitters:
                getattr(events, name).connect(callback)
        self.destroyed.connect(partial(_disconnect, events, callbacks, emitters))

    def follow_signal(self, signal: Any, callback: Callable) -> None:
        """Connect ``callback`` to a psygnal ``signal`` (of the registry); a closed dock disconnects it."""
        signal.connect(callback)
        self.destroyed.connect(lambda *_: signal.disconnect(callback))

    def layers_of(self, kind: str) -> list[tuple[str, Any]]:
        """(name, layer) of the viewer's layers of napari type ``kind`` ("Image", "Labels", "Shapes")."""
        import napari.layers  # deferred: napari internals

        cls = getattr(napari.layers, kind)
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, cls)]

    def stack(self, *parts: Any, stretch: bool = True) -> QVBoxLayout:
        """Lay out ``parts`` (magicgui widgets or QWidgets) top to bottom (a stretch below) in a scroll area,
        the progress line under it; returns the layout of the parts."""
        content = QWidget()
        layout = QVBoxLayout(content)
        for part in parts:
            layout.addWidget(getattr(part, "native", part))
        if stretch:
            layout.addStretch(1)
        self.scroll_area = VerticalScroll(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll_area, 1)
        outer.addWidget(self.progress_panel)
        return layout

    def content_height(self) -> int:
        """Height (px) the controls ask for without scrolling (their size hint)."""
        return self.scroll_area.widget().sizeHint().height() + self.progress_panel.sizeHint().height()

    # -- docking --------------------------------------------------------------------------------------

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            # napari docks the widget after building it: tab it beside the plugin's other docks once docked.
            QTimer.singleShot(0, self, self._tab_with_siblings)
        return super().event(event)

    def _tab_with_siblings(self) -> None:
        try:
            tab_with_siblings(self, DockWidget)
        except RuntimeError:  # the widget was closed before the timer fired
            pass
