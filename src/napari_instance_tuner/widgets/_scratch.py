"""The Fine-tune widget's scratch folder: made on first use, removed when the widget goes, never with unsaved weights.

A finished fine-tune is written to a scratch checkpoint so that the Segment widget can load it. When the
Fine-tune dock is closed or the viewer's window closes (:class:`CloseWatch`: the dock's parent goes, or the
window gets its close event, while the application is still whole), the user is asked whether to save
fine-tuned weights that were not saved, and the folder is removed. When the widget is destroyed or Python
exits without that question (a ``weakref.finalize``), the folder is removed unless unsaved weights are in it:
then it is kept and its path printed, so they are never lost silently.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QMessageBox, QWidget

from ..core.io.user_weights import user_weights_dir
from ..core.training.finetune import save_finetuned
from ._worker import error_message, notify_error


def ask_keep_weights(name: str) -> bool:
    """Ask "save the fine-tuned weights?" with a dialog; True for Save."""
    answer = QMessageBox.question(
        None, "Unsaved fine-tuned weights",
        f"The fine-tuned weights {name!r} were not saved and will be deleted. Save them?",
        QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard, QMessageBox.StandardButton.Save,
    )
    return answer == QMessageBox.StandardButton.Save


class CloseWatch(QObject):
    """Calls ``on_close()`` when ``widget``'s dock is closed (its parent goes) or its window gets a close event.

    The window is watched from the widget's first show (a dock widget gets its window when it is docked).
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], Any]) -> None:
        super().__init__(widget)
        self._widget, self._window, self._on_close = widget, None, on_close
        widget.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # Qt's name
        kind = event.type()
        if obj is self._window and kind == QEvent.Type.Close:
            self._on_close()
            self._follow(None)  # holds no reference to a closing window
        elif obj is self._widget and kind == QEvent.Type.ParentChange and self._widget.parent() is None:
            if self._window is not None:  # undocked: the dock was closed
                self._on_close()
            self._follow(None)
        elif kind in (QEvent.Type.ParentChange, QEvent.Type.Show) and obj in (self._widget, self._window):
            self._follow(self._widget.window())  # docked, or the dock went into the main window
        return False

    def _follow(self, window: QWidget | None) -> None:
        window = None if window is self._widget else window
        if window is not self._window:
            if self._window is not None:
                self._window.removeEventFilter(self)
            self._window = window
            if window is not None:
                window.installEventFilter(self)


def _remove(folder: Path, state: dict) -> None:
    """At exit: remove ``folder`` unless unsaved weights are in it (then say where they are)."""
    if state.get("unsaved") is not None:
        print(f"napari-instance-tuner: unsaved fine-tuned weights kept in {folder}", file=sys.stderr)
        return
    shutil.rmtree(folder, ignore_errors=True)


class Scratch:
    """A lazily made temporary folder for fine-tuned checkpoints, and the last tuned weights not yet saved.

    Parameters
    ----------
    ask_keep : callable
        ``ask_keep(name) -> bool``: asked when unsaved weights would be deleted.
    ask_path : callable
        ``ask_path(suggested) -> str | None``: where to save them.

    Attributes
    ----------
    unsaved : Tuned or None
        Fine-tuned weights that no "Save" wrote yet.
    """

    def __init__(self, ask_keep: Callable[[str], bool], ask_path: Callable[[str], str | None]) -> None:
        self.ask_keep, self.ask_path = ask_keep, ask_path
        self.folder: Path | None = None
        self._state: dict = {"unsaved": None}
        self._finalizer: weakref.finalize | None = None
        self._files = 0

    @property
    def unsaved(self) -> Any:
        return self._state["unsaved"]

    @unsaved.setter
    def unsaved(self, tuned: Any) -> None:
        self._state["unsaved"] = tuned

    def file(self, stem: str) -> Path:
        """A new checkpoint path ``<folder>/<stem>[-N].safetensors`` (the folder is made on first use)."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="napari-instance-tuner-"))
            self._finalizer = weakref.finalize(self, _remove, self.folder, self._state)
        self._files += 1
        suffix = "" if self._files == 1 else f"-{self._files}"
        return self.folder / f"{stem}{suffix}.safetensors"

    def release(self) -> None:
        """Remove the folder now, unless unsaved weights are in it (then keep it and print where)."""
        if self._finalizer is not None:
            self._finalizer()

    def close(self) -> None:
        """Offer to save unsaved weights, then remove the folder (kept if saving them failed)."""
        tuned = self.unsaved
        if tuned is not None and self.ask_keep(f"{tuned.parent.name}-finetuned"):
            answer = self.ask_path(str(user_weights_dir(create=True) / f"{tuned.parent.name}-finetuned.safetensors"))
            if answer:
                try:
                    save_finetuned(Path(answer).with_suffix(".safetensors"), tuned.parent, tuned.model,
                                   tuned.result, tuned.pairs, tuned.settings)
                except Exception as exc:  # noqa: BLE001 - any failure: keep the scratch copy, say where
                    notify_error(f"could not save the fine-tuned weights ({error_message(exc)}); "
                                 f"they stay in {self.folder}")
                    return
            elif self.folder is not None and tuned.scratch is not None:
                notify_error(f"no file chosen: the fine-tuned weights stay in {tuned.scratch}")
                return
        self.unsaved = None
        if self._finalizer is not None:
            self._finalizer()  # removes the folder now, once
        self.folder, self._finalizer, self._files = None, None, 0  # a later fine-tune makes a new one
