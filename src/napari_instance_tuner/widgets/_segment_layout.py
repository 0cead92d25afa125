"""Pieces of the Segment dock's layout: the folded "More settings" section and the "Next steps" line.

The settings most runs never change (device, pixel size, region, map layers) sit in a collapsed section so
that the dock fits half of a 1920x1080 screen; the "Next steps" line points from a result to the other
widgets of the plugin (correct the labels, then Auto-tune / Evaluate / Fine-tune / Export), each button
opening that widget in a tab beside Segment (:func:`._docking.open_dock`).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget
from superqt import QCollapsible

from ._docking import open_dock

#: Button text -> (the plugin widget it opens, what it is for).
NEXT_STEPS = {
    "Auto-tune": ("Auto-tune", "search the post-processing parameters against your corrected labels"),
    "Evaluate": ("Evaluate", "score labels against a reference: F1, Dice, AJI, AP; false positives/negatives"),
    "Fine-tune": ("Fine-tune", "train the model a little on your corrected labels"),
    "Export": ("Export", "write the labels as TIFF/PNG, CSV, QuPath GeoJSON, masks, with a recipe"),
}
NEXT_TEXT = "<b>Next</b>: correct the labels with napari's Labels tools, then:"
NEXT_TIP = ("Select the Labels layer '<image> instances' and paint, erase or fill; use a new label number (the "
            "'new' button) for a new object")


def folded(title: str, *parts: Any) -> QCollapsible:
    """A collapsed section titled ``title`` holding ``parts`` (magicgui widgets or QWidgets)."""
    section = QCollapsible(title)
    section.setDuration(0)  # no animation: tests and slow machines see the final size at once
    for part in parts:
        section.addWidget(getattr(part, "native", part))
    section.layout().setContentsMargins(0, 0, 0, 0)
    return section


class NextSteps(QWidget):
    """"Next: correct the labels, then:" and one button per widget to open (tabbed beside Segment).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        text = QLabel(NEXT_TEXT)
        text.setWordWrap(True)
        text.setToolTip(NEXT_TIP)
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        self.buttons: dict[str, QPushButton] = {}
        for index, (label, (name, tip)) in enumerate(NEXT_STEPS.items()):
            button = QPushButton(label)
            button.setToolTip(f"Open {name}: {tip}")
            button.clicked.connect(lambda *_, name=name: self.open(name))
            grid.addWidget(button, 0, index)
            self.buttons[label] = button
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 0)
        layout.addWidget(text)
        layout.addLayout(grid)

    def open(self, name: str) -> Any:
        """Open (or bring up) the plugin widget ``name``; returns it."""
        return open_dock(self.viewer, name)
