"""bioimage.io packages of the shipped models (issue 25): export, validate, re-import, compare labels.

Usage: python benchmarks/bioimageio_export.py --data-root ../shared/data --out DIR [--images 4]
       [--models three-branch-glas,layering-bbbc010,maskrcnn-dsb2018] [--no-reproduce]

For each shipped model, the first image (sorted by name) of its data set is the package's sample (the test
tensors and cover are cut from it). The package is written to ``DIR/<model>.zip``, validated with
``bioimageio.spec`` and, where ``bioimageio.core`` is installed, its test tensors are reproduced from the
packaged weights (``test_model``: every weight format). It is then re-imported with ``load_model`` and both
the original weights and the package segment the next ``--images`` images of the data set, which the
package has not seen; the table reports how many label images are identical.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_instance_tuner.core.io.bioimageio_check import check_package
from napari_instance_tuner.core.io.bioimageio_export import PackageInfo, export_package
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import list_images, read_image

#: model -> (split folder under --data-root, pixel size in µm of its images or None when the set mixes them)
DATA = {
    "three-branch-glas": ("glas/testA", 0.62005),  # GlaS: rescaled to 0.62005 µm/pixel (20x), Sirinukunwattana 2017
    "layering-bbbc010": ("bbbc010/train", None),
    "maskrcnn-dsb2018": ("dsb2018/train", None),  # DSB2018 mixes microscopes and magnifications
}


def segment(loaded, image: np.ndarray) -> tuple[np.ndarray, dict]:
    """(labels, maps) of one image with the model's own post-processing parameters."""
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta))
    return loaded.family.postprocess(maps, loaded.family.default_params(loaded.meta)).labels, maps.arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=4, help="unseen images compared per model")
    parser.add_argument("--models", default=",".join(DATA))
    parser.add_argument("--no-reproduce", action="store_true", help="skip bioimageio.core's test_model")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        split, pixel_size = DATA[name]
        paths = list_images(Path(args.data_root) / split / "images")
        sample, unseen = paths[0], paths[1 : 1 + args.images]
        loaded = load_model(name)
        start = time.perf_counter()
        package = out / f"{name}.zip"
        package.unlink(missing_ok=True)
        export_package(loaded, read_image(sample), package,
                       PackageInfo(pixel_size=pixel_size, sample_name=f"{split}/{sample.name}"))
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        report = check_package(package, reproduce=not args.no_reproduce)
        check_s = time.perf_counter() - start
        print(f"== {name}: {package} ({package.stat().st_size / 1e6:.1f} MB), sample {split}/{sample.name}")
        print(report.summary(), flush=True)
        again = load_model(package)
        same, max_diff = 0, 0.0
        for path in unseen:
            image = read_image(path)
            labels, maps = segment(loaded, image)
            labels_again, maps_again = segment(again, image)
            same += int(np.array_equal(labels, labels_again))
            max_diff = max(max_diff, max(float(np.abs(maps[k] - maps_again[k]).max()) for k in maps))
        rows.append((name, report.format_status, len(report.errors), len(report.warnings),
                     report.test_status or "not run", again.meta == loaded.meta, f"{same}/{len(unseen)}", max_diff,
                     export_s, check_s))
    header = ("model", "spec", "errors", "warnings", "core test", "meta restored", "same labels", "max map diff",
              "export s", "check s")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]:.1e} | {r[8]:.1f} | "
              f"{r[9]:.1f} |")


if __name__ == "__main__":
    main()
