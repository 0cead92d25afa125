"""Progress and cancellation protocol for long work.

Long work in core is a generator: it ``yield``s :class:`Progress` records and ``return``s its result.
Widgets run it in napari's ``thread_worker`` (whose ``yielded``/``returned`` signals map one to one);
headless callers use :func:`run`. Cancellation is cooperative: the work checks a :class:`CancelToken`
between steps (a tile, a training step) and raises :class:`~.errors.Cancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import Cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes
    ----------
    done, total : int
        Units of work finished and planned (tiles, steps, images). ``total`` 0 means unknown.
    message : str
        Short human-readable description of the current stage.
    info : dict
        Optional structured values (e.g. ``{"loss": 0.31}``) for live plots.
    """

    done: int
    total: int
    message: str = ""
    info: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Fraction done in [0, 1], or 0 when the total is unknown."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


class CancelToken:
    """A thread-safe flag set by the GUI (or a signal handler) and checked by the work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was asked for."""
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


Work = Generator[Progress, None, T]


def run(work: Generator[Progress, None, T], on_progress: Callable[[Progress], Any] | None = None) -> T:
    """Drive a progress generator to completion and return its result.

    Parameters
    ----------
    work : generator
        Yields :class:`Progress`, returns the result.
    on_progress : callable, optional
        Called with each :class:`Progress` (e.g. to print or update a bar).
    """
    while True:
        try:
            item = next(work)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(item)


def relay(
    work: Generator[Progress, None, T], restate: Callable[[Progress], Progress | None]
) -> Generator[Progress, None, T]:
    """Run a sub-task's progress generator inside another one's: yield ``restate(p)`` for each of its progress
    messages (``None``: not passed on) and return the sub-task's result.

    Examples
    --------
    >>> def part():
    ...     yield Progress(1, 2, "half")
    ...     return "done"
    >>> def whole():
    ...     result = yield from relay(part(), lambda p: Progress(p.done, 4, "part 1: " + p.message))
    ...     return result
    >>> run(whole(), lambda p: print(p.done, p.total, p.message))
    1 4 part 1: half
    'done'
    """
    while True:
        try:
            item = next(work)
        except StopIteration as stop:
            return stop.value
        restated = restate(item)
        if restated is not None:
            yield restated
