"""Dense nuclei: Mask R-CNN post-processing per change and ``predict``'s peak memory on real DSB2018 mosaics.

The scene: a mosaic of 256 x 256 crops of real DSB2018 images (flipped and rotated by a seeded generator), by
default from the densest images among the 32 that ``maskrcnn-dsb2018`` held out of its training (its model
card's ``validation_images``: the held-out split of this copy; the dataset's own test split is not in
/work/shared/data). About 70 ground-truth nuclei per crop: ~1 100 at 1024², ~4 500 at 2048².

Measured, with the model's shipped parameters (overlaps kept):

- post-processing per slider change on the cached detections: the first call after the network, then
  ``--changes`` calls that each move one parameter (mask threshold, score threshold) a little;
- the peak RSS of ``napari-instance-tuner predict --model maskrcnn-dsb2018`` on the mosaic written as a TIFF, in
  a fresh subprocess (``/usr/bin/time -v``; ``resource.getrusage`` where it is missing). 4096² is larger than
  ``predict``'s 2048 px tile, so it is streamed (tiles + halo, objects stitched).

The network's detections of each mosaic can be cached (``--cache DIR``) so that timing runs skip the network.

Usage::

    python benchmarks/dense_nuclei.py --data /work/shared/data/dsb2018 [--sizes 1024 2048] [--changes 10]
        [--rss 2048 4096] [--cache /tmp/dense-cache] [--threads 2] [--densest 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

MODEL = "maskrcnn-dsb2018"
CROP = 256


def scene_ids(data: Path, densest: int) -> list[str]:
    """The ``densest`` images (ground-truth nuclei per pixel) among the model's held-out validation images."""
    import tifffile

    from napari_instance_tuner.core.io.checkpoint import shipped_models

    card = json.loads(shipped_models()[MODEL].with_suffix(".json").read_text())
    ids = card.get("validation_images") or [p.stem for p in (data / "train" / "images").iterdir()]
    density = []
    for i in ids:
        labels = tifffile.imread(data / "train" / "labels" / f"{i}.tif")
        if min(labels.shape) >= CROP:
            density.append(((len(np.unique(labels)) - 1) / labels.size, i))
    return [i for _, i in sorted(density, reverse=True)[:densest]]


def mosaic(data: Path, ids: list[str], size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (size, size, 3), uint32 labels) tiled from random flipped / rotated 256² crops of ``ids``."""
    import imageio.v3 as iio
    import tifffile

    rng = np.random.default_rng(seed)
    pool = []
    for i in ids:
        image = np.asarray(iio.imread(data / "train" / "images" / f"{i}.png"))
        image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image[..., :3]
        pool.append((image, tifffile.imread(data / "train" / "labels" / f"{i}.tif").astype(np.uint32)))
    image = np.zeros((size, size, 3), np.uint8)
    labels = np.zeros((size, size), np.uint32)
    top = 0
    for y in range(0, size, CROP):
        for x in range(0, size, CROP):
            src, lab = pool[rng.integers(len(pool))]
            y0, x0 = rng.integers(0, src.shape[0] - CROP + 1), rng.integers(0, src.shape[1] - CROP + 1)
            a, b = src[y0 : y0 + CROP, x0 : x0 + CROP], lab[y0 : y0 + CROP, x0 : x0 + CROP]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            a, b = np.rot90(a, k), np.rot90(b, k)
            if flip:
                a, b = a[:, ::-1], b[:, ::-1]
            ids_here, inverse = np.unique(b, return_inverse=True)
            renumbered = inverse.reshape(b.shape).astype(np.uint32)
            renumbered[renumbered > 0] += top if ids_here[0] == 0 else 0
            image[y : y + CROP, x : x + CROP], labels[y : y + CROP, x : x + CROP] = a, renumbered
            top = int(labels.max())
    return image, labels


def cached_maps(loaded, image: np.ndarray, cache: Path | None, key: str):
    """The network's maps of ``image`` (from ``cache/key.npz`` when there), and the seconds the network took."""
    from napari_instance_tuner.core.family import Maps
    from napari_instance_tuner.core.progress import run

    path = None if cache is None else cache / f"{key}.npz"
    if path is not None and path.is_file():
        with np.load(path) as npz:
            extra = {k[6:]: npz[k] for k in npz.files if k.startswith("extra_")}
            return Maps({"score_map": npz["score_map"]}, extra), float("nan")
    start = time.perf_counter()
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, score_map=maps.arrays["score_map"], **{f"extra_{k}": v for k, v in maps.extra.items()})
    return maps, seconds


def time_changes(loaded, maps, changes: int) -> tuple[float, list[float], int]:
    """(first call ms, later calls ms, objects) of post-processing with the shipped parameters and small moves."""
    base = loaded.family.default_params(loaded.meta)
    start = time.perf_counter()
    first = loaded.family.postprocess(maps, base)
    first_ms = 1000 * (time.perf_counter() - start)
    later = []
    for c in range(changes):
        step = 0.01 * (c // 2 + 1) * (-1) ** c
        params = (replace(base, mask_threshold=min(max(base.mask_threshold + step, 0.05), 0.95)) if c % 3 != 2
                  else replace(base, score_threshold=min(max(base.score_threshold + step, 0.05), 1.0)))
        start = time.perf_counter()
        loaded.family.postprocess(maps, params)
        later.append(1000 * (time.perf_counter() - start))
    return first_ms, later, first.count


def peak_rss_mb(tiff: Path, out: Path, threads: int) -> tuple[float, float, str]:
    """(peak RSS MB, wall seconds, last output line) of ``predict`` on ``tiff`` in a fresh process."""
    cmd = [sys.executable, "-c", "import sys; from napari_instance_tuner.cli import main; sys.exit(main())",
           "predict", "--model", MODEL, "--out", str(out), str(tiff)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    timer = Path("/usr/bin/time")
    start = time.perf_counter()
    if timer.exists():
        done = subprocess.run([str(timer), "-v", *cmd], capture_output=True, text=True, env=env, check=False)
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        peak = int(found.group(1)) / 1024 if found else float("nan")
    else:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"predict failed ({done.returncode}): {done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return peak, seconds, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the dsb2018 folder (holding train/)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048], help="post-processing timing scenes")
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--rss", type=int, nargs="*", default=[], help="mosaic sizes for predict's peak RSS")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the network's detections")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--densest", type=int, default=4, help="how many of the densest held-out images to tile")
    args = parser.parse_args()

    import torch

    from napari_instance_tuner.core.evaluation.metrics import object_f1
    from napari_instance_tuner.core.io.checkpoint import load_model

    torch.set_num_threads(args.threads)
    ids = scene_ids(args.data, args.densest)
    print(f"scene: mosaics of {CROP}² crops of {', '.join(i[:8] for i in ids)} (held out of {MODEL}'s training); "
          f"{args.threads} torch threads, {os.cpu_count()} CPUs")
    if args.sizes:
        loaded = load_model(MODEL)
        print(f"{'size':>6}{'GT':>7}{'found':>7}{'F1':>6}{'network s':>11}{'first ms':>10}{'median ms':>11}"
              f"{'max ms':>8}")
        for size in args.sizes:
            image, truth = mosaic(args.data, ids, size)
            maps, network_s = cached_maps(loaded, image, args.cache, f"{MODEL}-{size}-{'-'.join(i[:8] for i in ids)}")
            first, later, count = time_changes(loaded, maps, args.changes)
            found = loaded.family.postprocess(maps, loaded.family.default_params(loaded.meta))
            found = found.objects if hasattr(found, "objects") else found.masks  # (before session 12: masks)
            f1 = object_f1(found, truth)["f1"]
            print(f"{size:>6}{int(truth.max()):>7}{count:>7}{f1:>6.2f}{network_s:>11.1f}{first:>10.1f}"
                  f"{np.median(later):>11.1f}{max(later):>8.1f}")
    for size in args.rss:
        import tifffile

        with tempfile.TemporaryDirectory() as tmp:
            image, truth = mosaic(args.data, ids, size)
            tiff = Path(tmp) / f"dense{size}.tif"
            tifffile.imwrite(tiff, image, photometric="rgb", tile=(256, 256))
            peak, seconds, line = peak_rss_mb(tiff, Path(tmp) / "out", args.threads)
            print(f"predict --model {MODEL} on a {size}² mosaic ({int(truth.max())} GT nuclei): peak RSS "
                  f"{peak:.0f} MB, {seconds:.0f} s wall; {line.strip()}")


if __name__ == "__main__":
    main()
