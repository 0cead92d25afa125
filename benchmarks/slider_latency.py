"""Slider-to-canvas latency in the real Segment widget at 1024x1024, per family, on real images (issue 23 item 5).

Usage: env -u QT_QPA_PLATFORM xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/slider_latency.py
       --data ../shared/data [--busy] [--families three-branch-glas-v3,layering-bbbc010,maskrcnn-dsb2018]
       [--repeats 20] [--warmup 2] [--size 1024]

Images (mirror-tiled to ``--size`` squared; pixel size unchanged, so nothing is resampled):

- three-branch-glas-v3: ``glas/testA/images/testA_1.png`` (H&E glands, 522x775 RGB);
- layering-bbbc010: ``bbbc010/train/images/A01.tif`` (C. elegans, 520x696 uint16);
- maskrcnn-dsb2018: the first ``dsb2018/train/images`` image that looks like fluorescence (dark background,
  grey) - DSB nuclei, 256x256, tiled 4x4.

A shown napari viewer with the Segment widget segments the image once; then each repeat moves one of the
family's first two slider parameters through the widget's own control (between its value and a nearby one)
and runs a QEventLoop until the canvas has drawn the new labels. ``--busy`` starts one other busy process (a
Python loop on one core) for the whole run: the loaded-machine mode of the issue.

Rows (milliseconds, medians and 90th percentiles, warm-up repeats excluded):

- change -> drawn: the value set on the slider -> the vispy canvas' next ``draw`` event after the labels
  changed (the goal: median <= 100 ms at 1024x1024 with one other busy process);
- where the time goes, as consecutive parts: the coalescing timer (change -> refresh), the hop to the worker
  thread, post-processing (``SegmentSession.postprocess``), the hop back to the GUI thread, writing the Labels
  layer (``_show_labels``: digests, ``layer.data``, the layer's own refresh), and layer written -> drawn
  (the draw itself, contour and colour mapping included: napari does those on draw).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import tiled

FAMILIES = ("three-branch-glas-v3", "layering-bbbc010", "maskrcnn-dsb2018")
PARTS = ("coalescing", "to worker", "postprocess", "to GUI", "layer write", "written -> drawn")


def family_image(family: str, data: Path, size: int) -> tuple[np.ndarray, bool, str]:
    """(image, rgb, description) of the real image used for ``family``."""
    import imageio.v3 as iio

    if family.startswith("three-branch"):
        path = data / "glas/testA/images/testA_1.png"
        return tiled(np.asarray(iio.imread(path))[..., :3], size), True, f"GlaS {path.name}"
    if family.startswith("layering"):
        path = data / "bbbc010/train/images/A01.tif"
        return tiled(np.asarray(iio.imread(path)), size), False, f"BBBC010 {path.name}"
    for path in sorted((data / "dsb2018/train/images").glob("*.png")):
        rgb = np.asarray(iio.imread(path))[..., :3]
        if rgb.mean() < 60 and np.ptp(rgb.astype(int), axis=-1).mean() < 2:  # grey, dark: fluorescence
            return tiled(rgb[..., 0], size), False, f"DSB2018 {path.name[:12]}… {rgb.shape[:2]}"
    raise SystemExit("no fluorescence image found in dsb2018/train/images")


def wait_loop(setup, timeout_ms: int = 30000) -> None:
    """Run a QEventLoop that ``setup(loop.quit)`` arranges to end (a safety timeout aside)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(timeout_ms, loop.quit)
    setup(loop.quit)
    loop.exec()


def slider_plan(controls) -> list[tuple[str, object, object]]:
    """(name, value, nearby value) of the first two numeric controls."""
    plan = []
    for control in controls:
        name, value = control.name, getattr(control, "value", None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        step = 1 if isinstance(value, int) else 0.05
        high = getattr(control, "max", value + step)
        other = value + step if value + step <= high else value - step
        plan.append((name, value, round(other, 3) if isinstance(other, float) else other))
        if len(plan) == 2:
            break
    return plan


def measure(family: str, data: Path, size: int, repeats: int, warmup: int) -> dict:
    """Segment the family's image in a shown viewer and time ``warmup + repeats`` slider moves."""
    import napari

    from napari_instance_tuner.demo import _settle, _wait
    from napari_instance_tuner.widgets.segment import SegmentWidget

    image, rgb, described = family_image(family, data, size)
    viewer = napari.Viewer(title=f"slider latency: {family}")
    viewer.window.resize(1400, 860)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    layer = viewer.add_image(image, name="img", rgb=rgb)
    widget.image.value = layer
    widget.device.value = "cpu"
    widget.models.load(family)
    status = _wait(widget.run_finished, widget.run)
    assert status == "ok", f"run ended with {status!r}"
    session = widget.sessions.get(layer)
    _settle(500)

    scene = viewer.window._qt_viewer.canvas._scene_canvas
    marks: dict[str, float] = {}
    hooks = {"refresh_labels": "fired", "_show_labels": "write"}
    for attribute, mark in hooks.items():
        original = getattr(widget, attribute)

        def hooked(*args, _original=original, _mark=mark, **kwargs):
            marks.setdefault(_mark, time.perf_counter())
            result = _original(*args, **kwargs)
            marks[f"{_mark} end"] = time.perf_counter()
            return result

        setattr(widget, attribute, hooked)
    postprocess = session.postprocess

    def timed_postprocess(params):
        marks["pp"] = time.perf_counter()
        try:
            return postprocess(params)
        finally:
            marks["pp end"] = time.perf_counter()

    session.postprocess = timed_postprocess
    waiting = {}

    def on_draw(_event) -> None:
        if "write end" in marks and "drawn" not in marks:
            marks["drawn"] = time.perf_counter()
            waiting["quit"]()

    scene.events.draw.connect(on_draw, position="last")
    widget.labels_updated.connect(lambda: viewer.window._qt_viewer.canvas.native.update())
    plan = slider_plan(widget.params.controls)
    series: dict[str, list[float]] = {"change -> drawn": [], **{part: [] for part in PARTS}}
    for i in range(warmup + repeats):
        name, start_value, other = plan[i % len(plan)]
        target = other if (i // len(plan)) % 2 == 0 else start_value
        marks.clear()

        def start(quit_, name=name, target=target) -> None:
            waiting["quit"] = quit_
            marks["change"] = time.perf_counter()
            widget.params.controls[name].value = target

        wait_loop(start)
        assert {"fired", "pp", "write", "drawn"} <= marks.keys(), f"{family}: repeat {i} timed out: {sorted(marks)}"
        if i >= warmup:
            ms = {k: 1000 * (v - marks["change"]) for k, v in marks.items()}
            series["change -> drawn"].append(ms["drawn"])
            bounds = [0.0, ms["fired"], ms["pp"], ms["pp end"], ms["write"], ms["write end"], ms["drawn"]]
            for part, low, high in zip(PARTS, bounds, bounds[1:]):
                series[part].append(high - low)
        _settle(150)
    count = session.count
    viewer.close()
    return {"series": series, "image": described, "instances": count, "sliders": [p[0] for p in plan]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with glas/, bbbc010/ and dsb2018/")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--busy", action="store_true", help="run one other busy process meanwhile")
    args = parser.parse_args()

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    print(f"slider latency, {args.size}x{args.size}, {'one other busy process' if args.busy else 'no busy process'}"
          f"; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    try:
        for family in args.families.split(","):  # each table as soon as it is measured
            result = measure(family, Path(args.data), args.size, args.repeats, args.warmup)
            print(f"\n{family} on {result['image']}, {result['instances']} instances; sliders "
                  f"{', '.join(result['sliders'])}")
            print(f"{'measurement':<24}{'median ms':>10}{'p90 ms':>10}{'N':>5}")
            for key, values in result["series"].items():
                print(f"{key:<24}{np.median(values):>10.1f}{np.percentile(values, 90):>10.1f}{len(values):>5d}")
            print(f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        if busy is not None:
            busy.kill()


if __name__ == "__main__":
    main()
