"""The plugin's docks fit a 1920x1080 screen together (tabbed, scrolling) and Segment points to the next steps."""

from __future__ import annotations

import pytest

from napari_instance_tuner.widgets._docking import PLUGIN

NAMES = ["Segment", "Fine-tune", "Auto-tune", "Evaluate", "Export"]


def _open_all(viewer, qtbot, tabify=False):
    """Open the five widgets the way the Plugins menu does (napari stacks them unless told to tab them)."""
    docks = {}
    for name in NAMES:
        docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=tabify)
    window = viewer.window._qt_window
    first = docks["Segment"][0]
    qtbot.waitUntil(lambda: len(window.tabifiedDockWidgets(first)) == len(NAMES) - 1, timeout=5_000)
    return docks


@pytest.mark.parametrize("tabify", [False, True])
def test_all_five_docks_fit_a_1920x1080_screen(viewer, qtbot, tabify):
    docks = _open_all(viewer, qtbot, tabify)
    window = viewer.window._qt_window
    window.resize(1920, 1080)
    hint = window.minimumSizeHint()
    assert hint.width() <= 1920 and hint.height() <= 1080, hint
    assert window.minimumSize().height() <= 1080
    for name, (dock, widget) in docks.items():
        assert dock.minimumSizeHint().height() <= 540, name  # each one fits half the screen (it scrolls)
        assert widget.sizeHint().height() <= 1080 - 100, name
    segment = docks["Segment"][1]
    assert segment.minimumSizeHint().height() <= 540
    # Without scrolling, Segment (with the default model's controls) fits the dock column of a 1080-px screen.
    assert segment.content_height() <= 1080 - 130


def test_a_dock_opened_before_the_others_is_not_tabbed_with_napari_docks(viewer, qtbot):
    dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    qtbot.wait(10)
    assert viewer.window._qt_window.tabifiedDockWidgets(dock) == []  # alone: not put in a tab with the layer list


def test_next_steps_open_the_other_widgets_tabbed(viewer, qtbot):
    dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert set(segment.next_steps.buttons) == {"Auto-tune", "Evaluate", "Fine-tune", "Export"}
    assert "correct the labels" in segment.next_steps.findChild(type(segment.models.card.native)).text()
    segment.next_steps.buttons["Evaluate"].click()
    key = f"Evaluate ({PLUGIN})"
    assert key in viewer.window._wrapped_dock_widgets
    evaluate = viewer.window._wrapped_dock_widgets[key]
    qtbot.waitUntil(lambda: evaluate in viewer.window._qt_window.tabifiedDockWidgets(dock), timeout=5_000)
    segment.next_steps.buttons["Evaluate"].click()  # a second press shows the same dock, not a new one
    assert [k for k in viewer.window._wrapped_dock_widgets if k.startswith("Evaluate")] == [key]


def test_the_rarely_changed_settings_are_folded(viewer):
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert not segment.more.isExpanded()
    folded = segment.more.content()
    for control in (segment.device, segment.pixel_size, segment.region, segment.show_maps):
        assert folded.isAncestorOf(control.native)
    assert folded.maximumHeight() == 0  # collapsed: takes no room
    segment.more.expand(animate=False)
    assert folded.maximumHeight() >= folded.sizeHint().height() > 0
