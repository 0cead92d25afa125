"""The three-branch post-processing with grow-back, before and after session 27's change, timed interleaved.

Until session 27 the live post-processing relabelled the objects that survive the centroid filter (a full-image
lookup), then grew them back into the foreground with a full-image lookup of the nearest object's label, then
relabelled again after S_min. Now :func:`~napari_instance_tuner.core.inference.morphology.grow_labels` takes the
``keep`` flags itself (the dropped objects are background to the growth) and gathers labels only for the pixels
that change; one relabel at the end drops what is left. The labels must be the same: this script checks that on
the benchmark maps for every shipped three-branch model's parameters, then times both versions alternately in one
process (``--repeats`` pairs; this machine's timings drift, so pairs are compared, not two separate runs).

    python benchmarks/grow_back_speed.py [--size 1024] [--repeats 150] [--image PATH --model NAME]

``--image`` and ``--model``: the model's maps of that image mirror-tiled to ``--size`` squared (as
``slider_latency.py`` shows it) instead of the synthetic gland maps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import add_maps_arguments, maps_from_args

from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams, postprocess
from napari_instance_tuner.core.family import Instances, Maps
from napari_instance_tuner.core.inference.morphology import close_open, connected_components, erode, relabel
from napari_instance_tuner.core.io.checkpoint import read_metadata, shipped_models
from napari_instance_tuner.core.params import params_from_dict


def _grow_before(labels: np.ndarray, mask: np.ndarray, max_distance: float) -> np.ndarray:
    """``grow_labels`` as it was before session 27 (full-image label lookup)."""
    objects = labels > 0
    if max_distance <= 0 or not objects.any() or objects.all():
        return labels
    dist, nearest = cv2.distanceTransformWithLabels(
        (~objects).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
    )
    lut = np.concatenate([[0], labels[objects]]).astype(np.uint32)
    grown = lut[nearest]
    grown[(mask == 0) | (dist > max_distance)] = 0
    grown[objects] = labels[objects]
    return grown


def postprocess_before(maps: Maps, params: ThreeBranchParams) -> Instances:
    """The post-processing before session 27, for the parameters the shipped gland models use (boundary
    subtraction on, no split radius, no watershed: refused otherwise)."""
    if params.watershed or params.split_radius or not params.subtract_boundaries:
        raise ValueError("only the shipped gland models' path is kept here")
    arrays = maps.arrays
    fg = close_open((arrays["foreground"] >= params.fg_threshold).view(np.uint8), params.close_radius,
                    params.open_radius)
    boundary = erode((arrays["boundary"] >= params.boundary_threshold).view(np.uint8), params.boundary_erosion)
    labels, n = connected_components(fg & (1 - boundary))
    keep = np.ones(n, bool)
    if params.require_centroid:
        centroid = erode((arrays["centroid"] >= params.centroid_threshold).view(np.uint8), params.centroid_erosion)
        has_centroid = np.bincount(labels[centroid.view(bool)], minlength=n) > 0
        if params.keep_large_without_centroid > 0:
            has_centroid |= np.bincount(labels.ravel(), minlength=n) >= params.keep_large_without_centroid
        keep &= has_centroid
    if params.grow_back > 0:
        labels = _grow_before(relabel(labels, keep), fg, params.grow_back)
        n = int(labels.max()) + 1
        keep = np.ones(n, bool)
    keep &= np.bincount(labels.ravel(), minlength=n) >= params.min_size
    return Instances(labels=relabel(labels, keep))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_maps_arguments(parser)
    parser.add_argument("--repeats", type=int, default=150)
    args = parser.parse_args()
    maps = Maps(maps_from_args(args))
    shape = maps.arrays["foreground"].shape
    print(f"three-branch post-processing on {shape[0]}x{shape[1]} maps, {os.cpu_count()} CPUs, {args.repeats} "
          "interleaved pairs")
    print(f"{'parameters':<26}{'same labels':>12}{'before ms':>11}{'now ms':>9}{'paired diff ms':>16}")
    for name, path in shipped_models().items():
        meta = read_metadata(path)
        if meta["family"] != "three-branch" or not meta["postprocess"].get("grow_back"):
            continue
        params = params_from_dict(ThreeBranchParams, meta["postprocess"])
        try:
            same = np.array_equal(postprocess_before(maps, params).labels, postprocess(maps, params).labels)
        except ValueError:
            continue
        times: dict[str, list[float]] = {"before": [], "now": []}
        for i in range(args.repeats + 3):
            order = (("before", postprocess_before), ("now", postprocess))
            for label, function in (order if i % 2 else order[::-1]):
                start = time.perf_counter()
                function(maps, params)
                if i >= 3:  # warm-up pairs excluded
                    times[label].append((time.perf_counter() - start) * 1e3)
        before, now = np.array(times["before"]), np.array(times["now"])
        print(f"{name:<26}{'yes' if same else 'NO':>12}{np.median(before):>11.1f}{np.median(now):>9.1f}"
              f"{np.median(before - now):>16.1f}")


if __name__ == "__main__":
    main()
