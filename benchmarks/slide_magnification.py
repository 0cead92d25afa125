"""Same objects at 20x and 40x: GlaS images (0.62 µm/px) turned into Aperio-style slides, segmented by predict.

For each image: segment it as a plain image at the model's scale (``predict --format geojson``), then write it
upsampled as a 0.25 µm/px (40x) and a 0.5 µm/px (20x) SVS (tiled JPEG pyramid, ``MPP`` and ``AppMag`` in the
description), run ``predict --model three-branch-glas --format geojson`` on each slide, rasterise the slide's
level-0 GeoJSON back at the model's scale and match its objects with the plain run's at IoU > 0.5. Also runs
QuPath's import rules (tests/tools/qupath_geojson_check.py) on every GeoJSON written.

    python benchmarks/slide_magnification.py --data ../shared/data/glas/testA --images 4 --work /tmp/slides
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np

from napari_instance_tuner.cli import main as cli
from napari_instance_tuner.core.io.geojson import objects_to_labels, read_geojson
from napari_instance_tuner.core.io.slides import write_svs

MODEL_UM = 0.62
CHECKER = Path(__file__).resolve().parents[1] / "tests" / "tools" / "qupath_geojson_check.py"


def f1_at_iou(pred: np.ndarray, ref: np.ndarray, iou: float = 0.5) -> tuple[float, int, int]:
    """(object F1 at IoU > ``iou``, predicted objects, reference objects)."""
    pairs = np.stack([pred.ravel(), ref.ravel()], 1).astype(np.int64)
    both = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0)]
    keys, inter = np.unique(both, axis=0, return_counts=True)
    area_p, area_r = np.bincount(pred.ravel().astype(np.int64)), np.bincount(ref.ravel().astype(np.int64))
    tp = int((inter / (area_p[keys[:, 0]] + area_r[keys[:, 1]] - inter) > iou).sum())
    n_p, n_r = np.count_nonzero(area_p[1:]), np.count_nonzero(area_r[1:])
    return (2 * tp / (n_p + n_r) if n_p + n_r else 1.0), n_p, n_r


def predict(path: Path, out: Path) -> Path:
    if cli(["predict", "--model", "three-branch-glas", "--format", "geojson", "--out", str(out), "--quiet",
            "--overwrite", str(path)]) != 0:
        raise SystemExit(f"predict failed on {path}")
    return out / f"{path.stem}.geojson"


def checker_ok(path: Path) -> bool:
    return subprocess.run([sys.executable, str(CHECKER), str(path)], capture_output=True, check=False).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="GlaS split folder with images/")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--work", default="slide_magnification")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print("| image | magnification | slide size | objects (plain / slide) | F1 @ IoU 0.5 | seconds | QuPath check |")
    print("|---|---|---|---|---|---|---|")
    for source in sorted(Path(args.data, "images").glob("*.png"))[: args.images]:
        rgb = iio.imread(source)[..., :3]
        plain = work / f"{source.stem}.png"
        iio.imwrite(plain, rgb)
        ref = objects_to_labels(read_geojson(predict(plain, work / "plain")), rgb.shape[:2])
        for um, mag in ((0.25, 40), (0.5, 20)):
            f = MODEL_UM / um
            big = cv2.resize(rgb, (round(rgb.shape[1] * f), round(rgb.shape[0] * f)), interpolation=cv2.INTER_CUBIC)
            slide = write_svs(work / f"{source.stem}_{mag}x.svs", big, um, mag)
            start = time.perf_counter()
            geo = predict(slide, work / f"{mag}x")
            seconds = time.perf_counter() - start
            found = objects_to_labels(read_geojson(geo), None, f)
            padded = np.zeros_like(ref)
            h, w = min(found.shape[0], ref.shape[0]), min(found.shape[1], ref.shape[1])
            padded[:h, :w] = found[:h, :w]
            score, n_p, n_r = f1_at_iou(padded, ref)
            print(f"| {source.stem} | {mag}x ({um} µm/px) | {big.shape[1]}x{big.shape[0]} | {n_r} / {n_p} | "
                  f"{score:.3f} | {seconds:.0f} | {'pass' if checker_ok(geo) else 'FAIL'} |", flush=True)


if __name__ == "__main__":
    main()
