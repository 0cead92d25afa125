"""The plugin's docks share one tabbed column, however they are opened, so that all of them fit one screen.

napari stacks dock widgets opened from the Plugins menu one above the other (only ``napari -w`` tabs them):
five of ours would need about 3,000 px of height. :func:`tab_with_siblings` puts a newly docked widget of the
plugin in a tab beside the plugin docks already in the same dock area, and raises it. :func:`open_dock` opens
(or shows) one of the plugin's widgets the way the Plugins menu does, tabbed.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

#: The plugin's name in napari (npe2 manifest).
PLUGIN = "napari-instance-tuner"


def _dock_of(widget: QWidget) -> QDockWidget | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def plugin_docks(window: QMainWindow, kind: type) -> list[QDockWidget]:
    """The docks of ``window`` that hold a widget of class ``kind`` (the plugin's dock widget base)."""
    found = []
    for dock in window.findChildren(QDockWidget):
        inner = dock.widget()
        holds = inner is not None and (isinstance(inner, kind) or inner.findChild(kind) is not None)
        if holds and not dock.isFloating():
            found.append(dock)
    return found


def tab_with_siblings(widget: QWidget, kind: type) -> bool:
    """Tab the dock of ``widget`` with the other docks of class ``kind`` in its area; True if it was tabbed."""
    dock = _dock_of(widget)
    window = None if dock is None else dock.parentWidget()
    if dock is None or not isinstance(window, QMainWindow):
        return False
    area = window.dockWidgetArea(dock)
    siblings = [d for d in plugin_docks(window, kind) if d is not dock and window.dockWidgetArea(d) == area]
    if not siblings or dock in window.tabifiedDockWidgets(siblings[-1]):
        return False
    window.tabifyDockWidget(siblings[-1], dock)
    dock.show()
    dock.raise_()
    return True


def open_dock(viewer: Any, name: str) -> Any:
    """Open the plugin widget ``name`` ("Evaluate", "Fine-tune", ...) in ``viewer``, tabbed, and bring it up.

    Returns the widget (the one already open, if any).
    """
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
    dock.show()
    dock.raise_()
    return widget
