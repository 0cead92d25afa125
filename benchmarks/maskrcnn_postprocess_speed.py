"""Mask R-CNN live post-processing latency on cached detections (budget: median <= 50 ms on 2 cores).

300 synthetic nuclei detections (ellipse masks at the mask head's 28 x 28, random scores) on a
1024 x 1024 image; ``--duplicates 1`` adds a jittered lower-score copy of each, as the permissive cache
of a real model holds.

Usage: python benchmarks/maskrcnn_postprocess_speed.py [--size 1024] [--objects 300] [--duplicates 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import median_ms

from napari_instance_tuner.core.families.maskrcnn.postprocess import MaskRCNNParams, postprocess
from napari_instance_tuner.core.families.maskrcnn.tiling import Detections
from napari_instance_tuner.core.family import Maps


def synthetic_detections(size: int = 1024, n: int = 300, duplicates: int = 0, seed: int = 0) -> Maps:
    """Cached detections of ``n`` nuclei (radius 6..18 px) with soft elliptical 28 x 28 masks."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, size - 20, (n, 2))
    radii = rng.uniform(6, 18, (n, 2))
    boxes = np.concatenate([centres[:, ::-1] - radii[:, ::-1], centres[:, ::-1] + radii[:, ::-1]], 1)
    g = (np.arange(28) + 0.5) / 14 - 1
    r2 = g[:, None] ** 2 + g[None, :] ** 2
    probs = np.clip(1.5 - r2 + rng.normal(0, 0.05, (n, 28, 28)), 0, 1)
    scores = rng.uniform(0.05, 1.0, n)
    det = Detections(boxes.astype(np.float32), scores.astype(np.float32), np.ones(n, np.int32),
                     probs.astype(np.float16))
    parts = [det]
    for _ in range(duplicates):
        jitter = rng.normal(0, 1.5, boxes.shape).astype(np.float32)
        parts.append(Detections(det.boxes + jitter, det.scores * 0.8, det.classes, det.mask_probs))
    det = Detections.concat(parts)
    return Maps({"score_map": np.zeros((size, size), np.float32)}, det.to_extra())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--duplicates", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    maps = synthetic_detections(args.size, args.objects, args.duplicates)
    base = MaskRCNNParams()
    print(f"maskrcnn post-processing, {len(maps.extra['scores'])} cached detections on {args.size}x{args.size}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'setting':<40}{'median ms':>10}{'p90 ms':>10}{'objects':>9}")
    for name, params in [
        ("defaults (score 0.5, NMS 0.6)", base),
        ("all detections (score 0.05, NMS 0.9)", replace(base, score_threshold=0.05, nms_iou=0.9)),
        ("all detections, overlaps kept", replace(base, score_threshold=0.05, nms_iou=0.9, allow_overlaps=True)),
    ]:
        med, p90 = median_ms(lambda p=params: postprocess(maps, p), args.repeats)
        print(f"{name:<40}{med:>10.1f}{p90:>10.1f}{postprocess(maps, params).count:>9d}")


if __name__ == "__main__":
    main()
