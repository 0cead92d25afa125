"""Quick start: ``napari-instance-tuner demo`` opens napari with the Segment widget docked and a sample
segmented by a shipped model.

With ``--screenshot`` (or ``--no-show``, or on a machine without a display) it writes a screenshot of
the window, dock included, and the labels as a TIFF, prints the paths and exits. Without a display it
starts a virtual one (Xvfb) when it can; napari then draws through Qt's xcb platform and Mesa's software
OpenGL. Where neither a display nor Xvfb (or Qt's xcb libraries) is available it says so, segments
without napari and writes a plain rendering of the labels over the image instead (see :mod:`._render`).
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

from ._render import render_overlay
from ._sample_data import SAMPLES
from .core.io.checkpoint import load_model, model_card, shipped_models
from .core.io.export import write_label_tiff
from .core.progress import run

#: Words that tie a shipped model's card to a sample (searched in its "trained_on" and "name").
SAMPLE_WORDS = {"glands": ("gland", "glas"), "nuclei": ("nucle", "dsb"), "worms": ("worm", "bbbc010", "elegans")}


def model_for_sample(sample: str, fallback: bool = True) -> str | None:
    """Name of the first shipped model whose model card suits ``sample``.

    A card suits a sample when its ``"sample"`` field names it (of several, the one that is a default for a kind
    of image, ``"default_for"``), or when its ``"trained_on"`` or
    ``"name"`` mentions the data (e.g. "GlaS" for glands). With ``fallback``, the first shipped model is
    returned when none suits; None when nothing is shipped.
    """
    names = list(shipped_models())
    cards = {name: model_card(name) for name in names}
    named = [name for name in names if cards[name].get("sample") == sample]
    for name in sorted(named, key=lambda name: not cards[name].get("default_for")):  # a default model first
        return name
    for name in names:
        text = f"{cards[name].get('trained_on', '')} {cards[name].get('name', name)}".lower()
        if any(word in text for word in SAMPLE_WORDS.get(sample, ())):
            return name
    return names[0] if names and fallback else None


def has_display() -> bool:
    """True where a window can be shown (always on Windows and macOS; X11 or Wayland on Linux)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def start_virtual_display(timeout: float = 10.0, size: str = "1600x1000") -> bool:
    """Start Xvfb (a ``size`` screen, "WxH") and point DISPLAY at it; False if Xvfb is missing or did not start.

    Xvfb picks a free display number and reports it once it accepts connections (``-displayfd``). It
    lives until this process ends (a small shell loop watches our process id), so that nothing in Qt or
    OpenGL loses its X connection while Python shuts down.
    """
    if shutil.which("Xvfb") is None or shutil.which("sh") is None:
        return False
    script = (
        f"Xvfb -displayfd 1 -screen 0 {size}x24 -nolisten tcp 2>/dev/null & x=$!; "
        f"while kill -0 {os.getpid()} 2>/dev/null && kill -0 $x 2>/dev/null; do sleep 0.5; done; "
        "kill $x 2>/dev/null"
    )
    watcher = subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    ready, _, _ = select.select([watcher.stdout], [], [], timeout)
    number = watcher.stdout.readline().strip() if ready else ""
    if not number.isdigit():
        watcher.kill()
        return False
    os.environ["DISPLAY"] = f":{number}"
    return True


def missing_xcb_libraries() -> list[str]:
    """System libraries that Qt 6's xcb platform needs and this machine lacks (empty if all found)."""
    import ctypes.util

    needed = ("xcb-cursor", "xkbcommon-x11", "xcb-icccm", "xcb-keysyms", "xcb-render-util")
    return [f"lib{name}" for name in needed if ctypes.util.find_library(name) is None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-instance-tuner demo", description=__doc__.splitlines()[0])
    parser.add_argument("--sample", default="glands", choices=sorted(SAMPLES), help="synthetic sample to segment")
    parser.add_argument("--model", help="shipped model name or checkpoint path (default: one that suits the sample)")
    parser.add_argument("--screenshot", help="write a PNG of the window here and exit")
    parser.add_argument("--labels", help="where to write the labels TIFF (default: beside the screenshot)")
    parser.add_argument("--no-show", action="store_true", help="do not stay open: write the files and exit")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return parser


def _paths(args, sample: str) -> tuple[Path, Path]:
    screenshot = Path(args.screenshot or f"instance-tuner-demo-{sample}.png")
    labels = Path(args.labels or screenshot.with_name(f"{screenshot.stem}-labels.tif"))
    for path in (screenshot, labels):
        path.parent.mkdir(parents=True, exist_ok=True)
    return screenshot, labels


def _write_labels(labels, path: Path) -> None:
    write_label_tiff(path, labels, overwrite=True)


def _settle(milliseconds: int = 300) -> None:
    """Let Qt lay out and paint what changed (a one-shot event loop, not a polling loop)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(milliseconds, loop.quit)
    loop.exec()


def _wait(signal, start) -> str:
    """Call ``start`` and run a Qt event loop until ``signal`` fires; returns its first argument."""
    from qtpy.QtCore import QEventLoop

    loop, outcome = QEventLoop(), []
    signal.connect(lambda *args: (outcome.append(args[0] if args else ""), loop.quit()))
    start()
    if not outcome:
        loop.exec()
    return outcome[0]


def run_without_napari(args, model: str) -> int:
    """Segment the sample headlessly and write a software rendering plus the labels."""
    import imageio.v3 as iio

    (image, _, _), _ = SAMPLES[args.sample]()
    loaded = load_model(model)
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device=args.device))
    labels = loaded.family.postprocess(maps, loaded.family.default_params(loaded.meta)).labels
    screenshot, labels_path = _paths(args, args.sample)
    iio.imwrite(screenshot, render_overlay(image, labels))
    _write_labels(labels, labels_path)
    print(f"{len(set(labels[labels > 0].tolist()))} instances (no display and no Xvfb: rendered without napari)")
    print(f"wrote {screenshot}")
    print(f"wrote {labels_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code (0 ok, 2 a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    model = args.model or model_for_sample(args.sample)
    if model is None:
        print("error: no shipped model in this installation; pass --model PATH to a checkpoint", file=sys.stderr)
        return 2
    display = has_display()
    if not display:
        missing = missing_xcb_libraries()
        if missing or not start_virtual_display():
            reason = f"Qt's xcb libraries are missing ({', '.join(missing)})" if missing else "Xvfb is not installed"
            print(f"note: no display and {reason}; napari cannot draw here (apt-get install xvfb "
                  "libxcb-cursor0 libxkbcommon-x11-0 ...)", file=sys.stderr)
            return run_without_napari(args, model)
        # napari's canvas is drawn only by a real platform: offscreen Qt renders it black.
        os.environ.pop("QT_QPA_PLATFORM", None)
    return _run_napari(args, model, keep_open=display and not (args.no_show or args.screenshot))


def _run_napari(args, model: str, keep_open: bool) -> int:
    import imageio.v3 as iio
    import napari

    from .widgets.segment import SegmentWidget  # deferred: napari and Qt, only when a viewer opens

    viewer = napari.Viewer(title="napari-instance-tuner demo")
    viewer.window.resize(1400, 860)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    for data, kwargs, kind in SAMPLES[args.sample]():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image = viewer.layers[args.sample]
    widget.image.value = image
    widget.device.value = args.device
    widget.models.load(model)  # Run waits for it
    print(f"segmenting the {args.sample} sample with {model} ...", flush=True)
    status = _wait(widget.run_finished, widget.run)
    if status != "ok":
        print(f"error: the run ended with status {status!r} (see the message above)", file=sys.stderr)
        viewer.close()
        return 2
    session = widget.sessions.get(image)
    print(f"{session.count} instances; {widget.device_used.value}")
    if keep_open:
        napari.run()
        return 0
    screenshot, labels = _paths(args, args.sample)
    _settle()
    viewer.reset_view()  # fit the whole image in the canvas as laid out now (the dock took its width)
    _settle()
    if viewer.screenshot(canvas_only=True, flash=False)[..., :3].std() < 1:
        print("warning: napari's canvas came out blank (no working OpenGL); the screenshot shows only the "
              "widgets", file=sys.stderr)
    iio.imwrite(screenshot, viewer.screenshot(canvas_only=False, flash=False))
    _write_labels(widget.sessions.labels_layer(image).data, labels)
    print(f"wrote {screenshot}")
    print(f"wrote {labels}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
