"""Regenerate the user guide's screenshots from the code: the WHOLE napari window at 1920x1080 on a real image.

Usage::

    python docs/make_screenshots.py /path/to/glas [--image train_24] [--out docs/images]

``/path/to/glas`` is a GlaS folder (``<split>/images/<id>.png`` and ``<split>/labels/<id>.tif``); the default
image is the first validation image of the default model for RGB images (never trained on); a default model
trained on every image (``three-branch-glas-v6``) has none, so give ``--image`` (and say so in the caption). Without a
display the script starts Xvfb with a 1920x1080 screen itself (or run it under
``xvfb-run -a -s "-screen 0 1920x1080x24"``). The window is shown (canvas shots of a hidden window are black)
with every widget of the plugin docked, as a user would see it; it writes

- ``segment-glands.png``: the image segmented by the proposed model, Segment in front;
- ``evaluate-glands.png``: the same result scored against the ground truth, Evaluate in front.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import imageio.v3 as iio

from napari_instance_tuner.core.io.checkpoint import default_model, model_card
from napari_instance_tuner.demo import _settle, _wait, has_display, start_virtual_display

HERE = Path(__file__).resolve().parent / "images"
SCREEN = (1920, 1080)
WIDGETS = ["Segment", "Fine-tune", "Auto-tune", "Evaluate", "Export"]


def find_image(data: Path, name: str) -> tuple[Path, Path | None]:
    """The image ``<split>/images/<name>.*`` under ``data`` and its label file (None if absent)."""
    images = sorted(p for p in data.glob(f"*/images/{name}.*") if p.suffix.lower() in (".png", ".bmp", ".tif"))
    if not images:
        raise SystemExit(f"no image {name!r} in {data}/*/images/")
    labels = sorted(images[0].parent.parent.glob(f"labels/{name}.*"))
    return images[0], labels[0] if labels else None


def shoot(viewer, path: Path) -> None:
    _settle(500)
    picture = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(path, picture)
    print(f"wrote {path} ({picture.shape[1]}x{picture.shape[0]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="GlaS folder: <split>/images/<id>.png, <split>/labels/<id>.tif")
    parser.add_argument("--image", help="image id (default: the default RGB model's first validation image)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    unseen = model_card(default_model("rgb")).get("validation_images") or []
    if not (args.image or unseen):
        parser.error(f"{default_model('rgb')} trained on every GlaS image it was given: name one with --image")
    name = args.image or unseen[0]
    image_path, labels_path = find_image(args.data, name)
    if not has_display() and not start_virtual_display(size="x".join(map(str, SCREEN))):
        print("error: no display and Xvfb did not start", file=sys.stderr)
        return 2
    os.environ.pop("QT_QPA_PLATFORM", None)  # offscreen Qt draws napari's canvas black
    args.out.mkdir(parents=True, exist_ok=True)

    import napari

    viewer = napari.Viewer(title="napari-instance-tuner")
    window = viewer.window._qt_window
    window.show()
    window.setGeometry(0, 0, *SCREEN)
    docks = {w: viewer.window.add_plugin_dock_widget("napari-instance-tuner", w) for w in WIDGETS}
    (layer,) = viewer.open(str(image_path), plugin="napari")
    if labels_path is not None:
        viewer.add_labels(iio.imread(labels_path).astype("int32"), name=f"{layer.name} ground truth", visible=False)
    dock, segment = docks["Segment"]
    dock.raise_()
    segment.image.value = layer
    print(f"segmenting {image_path.name} with {segment.models.selected} ({segment.models.reason.value}) ...")
    if _wait(segment.run_finished, segment.run) != "ok":
        print("error: the run failed (see the message above)", file=sys.stderr)
        return 2
    viewer.reset_view()
    shoot(viewer, args.out / "segment-glands.png")

    if labels_path is not None:
        dock, evaluate = docks["Evaluate"]
        evaluate.prediction.value = segment.sessions.labels_layer(layer)
        evaluate.reference.value = viewer.layers[f"{layer.name} ground truth"]
        _wait(evaluate.evaluated, evaluate.evaluate)
        dock.raise_()
        shoot(viewer, args.out / "evaluate-glands.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
