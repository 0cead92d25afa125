"""Labels the user corrected are never forked or replaced silently when a slider moves.

Before a parameter change replaces the Segment widget's Labels layer that the user has edited (painted,
filled, erased or replaced: :func:`._layers.labels_edited`), the edits are copied into the session's
``corrections`` slot and the user is asked, once per edited layer:

- **Keep my corrections** (the default): the corrected layer stays as it is, renamed "<name> (edited)", and
  the new labels go to a new "<name>" layer, which later slider moves update;
- **Replace them**: the new labels are written into the same layer (the corrected labels stay in
  ``session.corrections`` until the next correction).

Asking, rather than re-applying the corrections to the new labels, because an object the user drew or
split may no longer match any object of the new labels; only the user can say which should win.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtWidgets import QMessageBox

from ._layers import digest, labels_edited


def ask_keep_corrections(name: str) -> bool:
    """The question, as a dialog: True to keep the corrected layer (new labels in a new layer)."""
    box = QMessageBox(QMessageBox.Icon.Question, "Corrected labels",
                      f"You corrected “{name}”. The new parameters give new labels.")
    box.setInformativeText(f"Keep: your corrections stay in “{name} (edited)” and the new labels go to a new "
                           f"layer.\nReplace: the new labels overwrite your corrections in “{name}”.")
    keep = box.addButton("Keep my corrections", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Replace them", QMessageBox.ButtonRole.DestructiveRole)
    box.setDefaultButton(keep)
    box.exec()
    return box.clickedButton() is keep


class CorrectionsGuard:
    """Asks before new labels replace a corrected layer; one question at a time.

    Parameters
    ----------
    ask : callable
        ``ask(layer_name) -> bool``: True keeps the corrections (:func:`ask_keep_corrections`).
    """

    def __init__(self, ask: Callable[[str], bool]) -> None:
        self.ask = ask
        self._asking = False
        self.last: str | None = None  # "kept" or "replaced": the last answer (for the status line and tests)

    def settle(self, viewer: Any, session: Any, track: Any) -> bool:
        """Record and settle the corrections of ``track``'s layer before new labels are written.

        Returns False while the question is open (the caller tries again with the latest values after it).
        """
        if self._asking:
            return False
        if not labels_edited(viewer, track):
            return True
        session.corrections = np.array(track.layer.data, copy=True)
        self._asking = True
        try:
            keep = self.ask(track.layer.name)
        finally:
            self._asking = False
        if keep:
            self.last = "kept"  # place_labels renames the layer "(edited)" and writes a new one
            return True
        self.last = "replaced"
        track.edited, track.digest = False, digest(track.layer.data)  # written over in place
        return True
