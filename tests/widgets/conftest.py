"""Fixtures for widget tests: a viewer with the Segment widget and a tiny random-weight model loaded.

Each fixture builds on the previous one: ``viewer`` -> ``segment`` (widget, no model) -> ``loaded``
(tiny model loaded) -> ``with_image`` (a small RGB image added). ``errors`` collects napari error
notifications; ``predict_calls`` / ``postprocess_calls`` count calls into the family; ``run(widget)``
presses Run and waits for the outcome.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

TIMEOUT_MS = 30_000


def _captured(monkeypatch, name: str) -> list[str]:
    from napari.utils import notifications

    messages: list[str] = []
    monkeypatch.setattr(notifications, name, lambda message: messages.append(str(message)))
    return messages


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Messages passed to napari's ``show_error`` during the test."""
    return _captured(monkeypatch, "show_error")


@pytest.fixture
def warnings_shown(monkeypatch) -> list[str]:
    """Messages passed to napari's ``show_warning`` during the test."""
    return _captured(monkeypatch, "show_warning")


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def segment(viewer, qtbot, errors):
    """The Segment widget docked in a viewer; waits for its background jobs at teardown."""
    from napari_instance_tuner.widgets.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    yield widget
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


@pytest.fixture
def loaded(segment, tiny_checkpoint, qtbot):
    """The widget with the tiny three-branch checkpoint loaded through "Load weights…"."""
    segment.load_weights(tiny_checkpoint)
    qtbot.waitUntil(lambda: segment.models.loaded is not None and not segment.busy, timeout=TIMEOUT_MS)
    return segment


@pytest.fixture
def image(viewer):
    """A 64 x 96 synthetic H&E image layer named "img"."""
    from napari_instance_tuner.core.synthetic import synthetic_glands

    rgb, _ = synthetic_glands((64, 96), seed=0)
    return viewer.add_image(rgb, name="img", rgb=True)


@pytest.fixture
def with_image(loaded, image):
    loaded.image.value = image
    return loaded


@pytest.fixture
def predict_calls(monkeypatch) -> list[tuple]:
    """Records every call of the three-branch family's ``predict_maps`` (the network)."""
    from napari_instance_tuner.core.families.three_branch.family import ThreeBranchFamily

    calls: list[tuple] = []
    original = ThreeBranchFamily.predict_maps

    def counting(self, model, image, meta, **kwargs):
        calls.append(np.shape(image))
        return (yield from original(self, model, image, meta, **kwargs))

    monkeypatch.setattr(ThreeBranchFamily, "predict_maps", counting)
    return calls


@pytest.fixture
def postprocess_calls(monkeypatch) -> list:
    """Records the parameters of every call of the three-branch family's ``postprocess``."""
    from napari_instance_tuner.core.families.three_branch.family import ThreeBranchFamily

    calls: list = []
    original = ThreeBranchFamily.postprocess

    def counting(self, maps, params):
        calls.append(params)
        return original(self, maps, params)

    monkeypatch.setattr(ThreeBranchFamily, "postprocess", counting)
    return calls


@pytest.fixture
def slow_network(monkeypatch, predict_calls):
    """Makes ``predict_maps`` take ~0.6 s in 12 cancellable steps before the real prediction."""
    from napari_instance_tuner.core.families.three_branch.family import ThreeBranchFamily
    from napari_instance_tuner.core.progress import Progress

    fast = ThreeBranchFamily.predict_maps

    def slow(self, model, image, meta, *, cancel=None, **kwargs):
        for i in range(12):
            time.sleep(0.05)
            if cancel is not None:
                cancel.check()
            yield Progress(i + 1, 13, "slow tile")
        return (yield from fast(self, model, image, meta, cancel=cancel, **kwargs))

    monkeypatch.setattr(ThreeBranchFamily, "predict_maps", slow)
    return predict_calls


@pytest.fixture
def run(qtbot):
    """``run(widget)`` presses Run and waits for the run to end; returns "ok", "cancelled" or "error"."""

    def run_and_wait(widget) -> str:
        with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS) as blocker:
            widget.run()
        return blocker.args[0]

    return run_and_wait


@pytest.fixture(autouse=True)
def never_ask_to_keep_weights(monkeypatch) -> list[str]:
    """A Fine-tune widget destroyed with unsaved weights asks through a dialog: answer "Discard" in tests."""
    from napari_instance_tuner.widgets import finetune

    asked: list[str] = []
    monkeypatch.setattr(finetune, "ask_keep_weights", lambda name: asked.append(name) or False)
    return asked


@pytest.fixture(autouse=True)
def keep_corrections(monkeypatch) -> list[str]:
    """A slider move over corrected labels asks through a dialog: answer "Keep my corrections" in tests."""
    from napari_instance_tuner.widgets import segment

    asked: list[str] = []
    monkeypatch.setattr(segment, "ask_keep_corrections", lambda name: asked.append(name) or True)
    return asked
