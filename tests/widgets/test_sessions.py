"""The viewer's session registry: one per viewer (proxies included), sessions keyed by image layer, released
when the layer closes, and the plugin's Labels layers found from either side."""

from __future__ import annotations

import gc
import weakref

import pytest

pytestmark = pytest.mark.gui


def test_one_registry_per_viewer_through_proxies(viewer, segment):
    from napari.utils._proxies import PublicOnlyProxy

    from napari_instance_tuner.widgets._sessions import sessions_of

    assert sessions_of(viewer) is sessions_of(PublicOnlyProxy(viewer)) is segment.sessions
    assert sessions_of(viewer).current is None and sessions_of(viewer).segmented() == []


def test_a_run_fills_the_session_and_closing_the_image_releases_it(with_image, viewer, run, errors):
    widget = with_image
    image = widget.image.value
    assert widget.sessions.current is image and widget.sessions.model is widget.current_model
    assert run(widget) == "ok", errors
    session = widget.sessions.get(image)
    labels = viewer.layers["img instances"]
    assert session is widget.current_session and widget.sessions.segmented() == [image]
    assert session.model is widget.current_model and session.params == widget.params.params()
    assert widget.sessions.labels_layer(image) is labels and widget.sessions.image_of(labels) is image
    assert widget.sessions.track(labels).layer is labels
    assert labels.metadata["napari_instance_tuner"]["weights_sha256"] == session.model.sha256
    released = weakref.ref(session)
    del session
    viewer.layers.remove(image)
    gc.collect()
    assert released() is None and widget.sessions.get(image) is None and widget.sessions.current is None


def test_a_closed_segment_widget_leaves_no_current_image(with_image, viewer, qtbot):
    sessions = with_image.sessions
    assert sessions.current is not None
    viewer.window.remove_dock_widget(with_image)
    with_image.deleteLater()
    qtbot.waitUntil(lambda: sessions.current is None, timeout=5_000)
    assert sessions.model is None and not sessions.running
