"""Run core work off the GUI thread and turn its outcome into callbacks and notifications.

A :class:`Job` wraps a core progress generator (see :mod:`..core.progress`) in napari's
``create_worker``. Every exception is caught inside the worker and handed to the GUI thread as an
outcome, so a failure becomes a napari notification (never a traceback dialog) and the widget always
gets its ``on_finished`` call to re-enable its buttons.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from ..core.errors import Cancelled, InstanceTunerError
from ..core.progress import CancelToken, Progress

logger = logging.getLogger(__name__)

Work = Callable[[CancelToken], Generator[Progress, None, Any]]


def notify_error(message: str) -> None:
    """Show ``message`` as a napari error notification."""
    from napari.utils import notifications

    notifications.show_error(message)


def error_message(exc: BaseException) -> str:
    """A one-line message for a user: ours as they are, others prefixed with their type."""
    if isinstance(exc, InstanceTunerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def as_work(function: Callable[[], Any]) -> Work:
    """Wrap a plain function as a progress generator that yields nothing."""

    def work(cancel: CancelToken) -> Generator[Progress, None, Any]:
        result = function()
        return result
        yield  # unreachable: makes this function a generator

    return work


class Job:
    """One piece of core work in a napari thread worker.

    Parameters
    ----------
    work : callable
        ``work(cancel_token)`` returns a generator that yields :class:`Progress` and returns the result.
    on_result : callable
        Called on the GUI thread with the result when the work succeeds.
    on_error : callable, optional
        Called with the exception when the work fails; default: a napari error notification.
    on_cancelled : callable, optional
        Called when the work stopped because :meth:`cancel` was called.
    on_finished : callable, optional
        Called last, whatever the outcome.
    progress : str, optional
        Description of a napari progress bar showing the yielded done / total; no bar if None.
    """

    def __init__(
        self,
        work: Work,
        *,
        on_result: Callable[[Any], Any],
        on_error: Callable[[BaseException], Any] | None = None,
        on_cancelled: Callable[[], Any] | None = None,
        on_finished: Callable[[], Any] | None = None,
        progress: str | None = None,
    ) -> None:
        from napari.qt.threading import create_worker

        self.token = CancelToken()
        self._work = work
        self._on_result = on_result
        self._on_error = on_error or (lambda exc: notify_error(error_message(exc)))
        self._on_cancelled = on_cancelled
        self._on_finished = on_finished
        self._bar = None
        self._progress = progress
        self.done = False
        self.worker = create_worker(self._body, _start_thread=False)
        self.worker.yielded.connect(self._show_progress)
        self.worker.returned.connect(self._finish)

    def start(self) -> Job:
        """Start the worker thread; returns self."""
        if self._progress is not None:
            from napari.utils import progress

            self._bar = progress(total=0, desc=self._progress)
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the work to stop at its next cancellation check."""
        self.token.cancel()

    def _body(self) -> Generator[Progress, None, tuple[str, Any]]:
        try:
            result = yield from self._work(self.token)
        except Cancelled:
            return "cancelled", None
        except Exception as exc:  # every failure becomes a notification, never a crash
            logger.debug("background work failed", exc_info=True)
            return "error", exc
        if self.token.cancelled:
            return "cancelled", None
        return "ok", result

    def _show_progress(self, item: Progress) -> None:
        bar = self._bar  # a local: updating the bar may process events, which may close it
        if bar is None or not isinstance(item, Progress):
            return
        if item.total and bar.total != item.total:
            bar.total = item.total
            bar.update(item.done - bar.n)  # a new stage with its own count (e.g. tiles, then pyramid chunks)
        elif item.done > bar.n:
            bar.update(item.done - bar.n)
        if item.message:
            bar.set_description(f"{self._progress}: {item.message}")

    def _finish(self, outcome: tuple[str, Any]) -> None:
        status, value = outcome
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        try:
            if status == "ok":
                self._on_result(value)
            elif status == "cancelled":
                if self._on_cancelled is not None:
                    self._on_cancelled()
            else:
                self._on_error(value)
        except Exception as exc:  # a failing GUI update must not leave the widget busy
            logger.debug("handling a job outcome failed", exc_info=True)
            notify_error(error_message(exc))
        finally:
            self.done = True
            on_finished = self._on_finished
            # napari may keep a finished worker (and so this job) referenced for a while: drop the work
            # and callbacks, whose closures hold results and cached maps, so those can be freed now.
            self._work = self._on_result = self._on_error = self._on_cancelled = self._on_finished = None
            if on_finished is not None:
                on_finished()


class FileWriter:
    """Writes files in a background job, one at a time; ``job`` is None while idle.

    Parameters
    ----------
    on_written : callable
        Called with what the write function returned (the path written).
    on_finished : callable
        Called when a job ends, whatever the outcome.
    """

    #: Start of the notification shown when writing fails.
    failure = "could not write the file"

    def __init__(self, on_written: Callable[[Any], Any], on_finished: Callable[[], Any]) -> None:
        self._on_written, self._on_finished = on_written, on_finished
        self.job: Job | None = None

    def _start(self, write: Callable[[], Any]) -> bool:
        """Run ``write()`` in a job; True (started)."""
        self.job = Job(as_work(write), on_result=self._on_written, on_error=self._failed, on_finished=self._done)
        self.job.start()
        return True

    def _failed(self, exc: BaseException) -> None:
        notify_error(f"{self.failure}: {error_message(exc)}")

    def _done(self) -> None:
        self.job = None
        self._on_finished()
