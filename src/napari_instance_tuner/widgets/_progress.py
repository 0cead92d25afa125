"""The progress line inside every dock: a bar whose text says what runs, how far it is and the time left, and Cancel.

:class:`ProgressPanel` is hidden while its widget is idle. :meth:`ProgressPanel.start` shows it (a busy bar
until the first count arrives), :meth:`ProgressPanel.show_progress` takes the core's
:class:`~..core.progress.Progress` records (tiles, steps, trials, images) and :meth:`ProgressPanel.finish`
hides it. The time left is the elapsed time of the current stage scaled by the fraction still to do; a new
stage (a new total, e.g. tiles then pyramid chunks) starts its own clock; the first one's runs from the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QSizePolicy, QWidget

from ..core.progress import Progress


def clock(seconds: float) -> str:
    """``seconds`` as "m:ss" (or "h:mm:ss").

    Examples
    --------
    >>> clock(75.4), clock(3725)
    ('1:15', '1:02:05')
    """
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def time_left(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left at the pace so far, or None before the first unit is done (or without a total).

    Examples
    --------
    >>> time_left(25, 100, 10.0)
    30.0
    >>> time_left(0, 100, 3.0) is None
    True
    """
    if total <= 0 or done <= 0 or done > total:
        return None
    return elapsed * (total - done) / done


class ProgressPanel(QWidget):
    """A progress bar with its text inside, and a Cancel button; hidden while idle.

    Parameters
    ----------
    on_cancel : callable
        Called when the user presses Cancel.
    parent : QWidget, optional
    """

    def __init__(self, on_cancel: Callable[[], Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.bar.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop at the next tile, step or trial; nothing done so far is lost")
        self.cancel_button.clicked.connect(lambda *_: on_cancel())
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar, 1)
        layout.addWidget(self.cancel_button)
        self._title = ""
        self._total = 0
        self._since = time.monotonic()
        self.setVisible(False)

    @property
    def text(self) -> str:
        """The bar's text as shown ("" while hidden)."""
        return "" if self.isHidden() else self.bar.format()

    def start(self, title: str, cancellable: bool = True) -> None:
        """Show ``title`` on a busy bar (no count yet); ``cancellable`` shows the Cancel button."""
        self._title, self._total, self._since = title, 0, time.monotonic()
        self.bar.setRange(0, 0)  # busy: Qt animates the bar until a count arrives
        self.bar.setFormat(f"{title}…")
        self.cancel_button.setVisible(cancellable)
        self.cancel_button.setEnabled(cancellable)
        self.setVisible(True)

    def show_progress(self, item: Any) -> None:
        """Show one :class:`Progress` record: "<title>: <message> · done/total · m:ss left"."""
        if not isinstance(item, Progress) or self.isHidden():
            return
        if item.total > 0:
            if item.total != self._total:  # a new stage (after the first), with its own count and clock
                if self._total:
                    self._since = time.monotonic()
                self._total = item.total
                self.bar.setRange(0, item.total)
            self.bar.setValue(min(item.done, item.total))
        parts = [f"{self._title}: {item.message}" if item.message else self._title]
        count = f"{item.done}/{item.total}"
        if item.total > 0 and count not in item.message:  # "tile 3/12" says it already
            parts.append(count)
        left = time_left(item.done, item.total, time.monotonic() - self._since)
        if left is not None and item.done < item.total:
            parts.append(f"{clock(left)} left")
        self.bar.setFormat(" · ".join(parts))

    def cancelling(self) -> None:
        """Say that the stop was asked for (the work stops at its next check)."""
        if not self.isHidden():
            self.cancel_button.setEnabled(False)
            self.bar.setFormat(f"{self._title}: cancelling…")

    def finish(self) -> None:
        """Hide the panel (the work ended, whatever the outcome)."""
        self.setVisible(False)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
