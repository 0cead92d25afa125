"""Slider-to-labels latency in the real Segment widget on a 1024x1024 RGB image (issue 5: median <= 100 ms).

Usage: env -u QT_QPA_PLATFORM xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/slider_latency.py [--repeats 30]

A shown napari viewer with SegmentWidget docked segments ``synthetic_glands((1024, 1024), seed=0)`` with the
shipped "three-branch-glas" model once; then each repeat moves one slider through the widget's own control
(``fg_threshold`` and ``close_radius`` alternately, each between its current value and a nearby one) and runs a
QEventLoop until the canvas has drawn the new labels. Rows (milliseconds, warm-up repeats excluded):

- change -> labels: value set on the slider -> ``labels_updated`` (Labels layer holds the new data);
  includes the widget's 30 ms coalescing timer, the worker thread hop and ``write_labels``.
- change -> drawn: as above, until the vispy SceneCanvas' next ``draw`` event has run (connected last,
  after napari's own handlers, vispy's GL flush and swap): the scene, new label texture included, was drawn.
- debounce fired -> labels / -> drawn: from the moment the coalescing timer calls ``refresh_labels`` (hooked
  at run time by wrapping the instance attribute; no file edited) to the same two ends, i.e. without the debounce.
- change -> debounce fired: the coalescing timer's share (30 ms nominal, plus event-loop delay).
- direct postprocess + layer write: ``family.postprocess`` on the cached maps plus ``layer.data = labels;
  layer.refresh()`` on the real Labels layer, on the GUI thread, without drawing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def stats(rows: dict, name: str, values: list[float]) -> None:
    rows[name] = (float(np.median(values)), float(np.percentile(values, 90)), len(values))


def wait_loop(setup, timeout_ms: int = 20000) -> None:
    """Run a QEventLoop that ``setup(loop.quit)`` arranges to end (a safety timeout aside)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(timeout_ms, loop.quit)
    setup(loop.quit)
    loop.exec()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import napari

    from napari_instance_tuner.core.synthetic import synthetic_glands
    from napari_instance_tuner.demo import _settle, _wait
    from napari_instance_tuner.widgets.segment import SegmentWidget

    image, *_ = synthetic_glands((1024, 1024), seed=0)
    viewer = napari.Viewer(title="slider latency")
    viewer.window.resize(1400, 860)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    layer = viewer.add_image(image, name="glands", rgb=True)
    widget.image.value = layer
    widget.device.value = "cpu"
    widget.models.load("three-branch-glas")
    status = _wait(widget.run_finished, widget.run)
    assert status == "ok", f"run ended with {status!r}"
    session = widget.sessions.get(layer)
    track = widget.sessions.shown(layer).labels
    labels_layer = track.layer
    _settle(500)

    scene = viewer.window._qt_viewer.canvas._scene_canvas
    marks: dict[str, float] = {}
    original_refresh = widget.refresh_labels

    def hooked_refresh() -> None:  # called by the coalescing timer via _params_changed
        marks.setdefault("fired", time.perf_counter())
        original_refresh()

    widget.refresh_labels = hooked_refresh
    waiting, info = {"quit": None}, {}

    def on_labels() -> None:
        marks["labels"] = time.perf_counter()
        viewer.window._qt_viewer.canvas.native.update()  # make sure a paint is scheduled

    def on_draw(_event) -> None:
        if "renderer" not in info:  # the GL context is current inside a draw
            from vispy.gloo import gl

            info["renderer"] = gl.glGetParameter(gl.GL_RENDERER)
        if "labels" in marks and "drawn" not in marks:
            marks["drawn"] = time.perf_counter()
            waiting["quit"]()

    widget.labels_updated.connect(on_labels)
    scene.events.draw.connect(on_draw, position="last")

    controls = widget.params.controls
    plan = {"fg_threshold": (controls["fg_threshold"].value, round(controls["fg_threshold"].value + 0.1, 2)),
            "close_radius": (controls["close_radius"].value, controls["close_radius"].value + 2)}
    series = {key: [] for key in ("change -> labels", "change -> drawn", "change -> debounce fired",
                                  "debounce fired -> labels", "debounce fired -> drawn")}
    for i in range(args.warmup + args.repeats):
        name = "fg_threshold" if i % 2 == 0 else "close_radius"
        target = plan[name][(i // 2) % 2 == 0]  # each slider: start value -> nearby -> start -> ...
        marks.clear()

        def start(quit_, name=name, target=target) -> None:
            waiting["quit"] = quit_
            marks["change"] = time.perf_counter()
            controls[name].value = target

        wait_loop(start)
        assert {"fired", "labels", "drawn"} <= marks.keys(), f"repeat {i} timed out: {sorted(marks)}"
        if i >= args.warmup:
            ms = {k: 1000 * (v - marks["change"]) for k, v in marks.items()}
            series["change -> labels"].append(ms["labels"])
            series["change -> drawn"].append(ms["drawn"])
            series["change -> debounce fired"].append(ms["fired"])
            series["debounce fired -> labels"].append(ms["labels"] - ms["fired"])
            series["debounce fired -> drawn"].append(ms["drawn"] - ms["fired"])
        _settle(100)

    # Direct measurement on the real layer; ``writing`` keeps the widget from taking it as a user edit.
    family, maps, params = session.family, session.maps.slices[0], widget.params.params()
    direct, pp_only = [], []
    track.writing = True
    try:
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            labels = np.asarray(family.postprocess(maps, params).labels, np.uint32)
            middle = time.perf_counter()
            labels_layer.data = labels
            labels_layer.refresh()
            end = time.perf_counter()
            if i >= args.warmup:
                direct.append(1000 * (end - start))
                pp_only.append(1000 * (middle - start))
    finally:
        track.writing = False

    rows: dict = {}
    for key, values in series.items():
        stats(rows, key, values)
    for name in plan:  # the drawn latency per slider (fg_threshold on even repeats)
        first = 0 if name == "fg_threshold" else 1
        stats(rows, f"change -> drawn, {name} only", series["change -> drawn"][(first - args.warmup) % 2::2])
    stats(rows, "direct postprocess + layer write", direct)
    stats(rows, "  of which family.postprocess", pp_only)
    print(f"slider latency, 1024x1024 RGB, model three-branch-glas, {session.count} instances at the end")
    print(f"device: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
          f"(affinity {len(os.sched_getaffinity(0))}), GL renderer: {info.get('renderer', '?')}")
    print(f"{'measurement':<36}{'median ms':>10}{'p90 ms':>10}{'N':>5}")
    for key, (med, p90, n) in rows.items():
        print(f"{key:<36}{med:>10.1f}{p90:>10.1f}{n:>5d}")
    viewer.close()


if __name__ == "__main__":
    main()
