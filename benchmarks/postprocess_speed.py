"""Post-processing latency on 1024x1024 maps (the live-tuning budget: median <= 30 ms on 2 cores).

Usage: python benchmarks/postprocess_speed.py [--size 1024] [--repeats 50] [--image PATH --model NAME]

``--image`` and ``--model``: the model's maps of that image mirror-tiled to ``--size`` squared (as
``slider_latency.py`` shows it) instead of the synthetic gland maps.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import add_maps_arguments, maps_from_args, median_ms

from napari_instance_tuner.core.families.three_branch.postprocess import ThreeBranchParams, postprocess
from napari_instance_tuner.core.family import Instances, Maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_maps_arguments(parser)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    maps = Maps(maps_from_args(args))
    base = ThreeBranchParams()
    print(f"three-branch post-processing on {args.size}x{args.size} maps, {os.cpu_count()} CPUs")
    print(f"{'setting':<36}{'median ms':>10}{'p90 ms':>10}{'objects':>9}")
    from napari_instance_tuner.core.io.checkpoint import read_metadata, shipped_models
    from napari_instance_tuner.core.params import params_from_dict

    shipped = [(f"{name} tuned", params_from_dict(ThreeBranchParams, read_metadata(path)["postprocess"]))
               for name, path in shipped_models().items() if read_metadata(path)["family"] == "three-branch"]
    for name, params in shipped + [
        ("family defaults (grow-back 16)", base),
        ("no grow-back", replace(base, grow_back=0)),
        ("large radii (erosion 20, denoise 6)", replace(base, boundary_erosion=20, centroid_erosion=20,
                                                        close_radius=6, open_radius=6)),
        ("split radius 6 (session 18)", replace(base, split_radius=6)),
        ("v8 tuned + split radius 6", replace(dict(shipped).get("three-branch-glas-v8 tuned", base), split_radius=6)),
        ("v10 tuned + min mean foreground 0.5", replace(dict(shipped).get("three-branch-glas-v10 tuned", base),
                                                        min_mean_foreground=0.5)),
    ]:
        med, p90 = median_ms(lambda params=params: postprocess(maps, params), args.repeats)
        print(f"{name:<36}{med:>10.1f}{p90:>10.1f}{postprocess(maps, params).count:>9d}")
    # the widget counts the objects after each post-processing (core.inference.stack.postprocess_stack)
    labels = postprocess(maps, base).labels
    count, p90 = median_ms(lambda: Instances(labels=labels).count, args.repeats)
    unique, unique_p90 = median_ms(lambda: np.unique(labels[labels > 0]).size, args.repeats)
    print(f"{'object count (Instances.count)':<36}{count:>10.1f}{p90:>10.1f}")
    print(f"{'object count by np.unique (before 27)':<36}{unique:>10.1f}{unique_p90:>10.1f}")


if __name__ == "__main__":
    main()
