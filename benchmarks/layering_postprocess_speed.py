"""Layering post-processing (Algorithm 1) latency on 1024x1024 maps with N = 8 layers (budget: median <= 60 ms).

Usage: python benchmarks/layering_postprocess_speed.py [--size 1024] [--layers 8] [--repeats 30]

The maps are soft foreground/layer maps of crossing synthetic worms (see ``_common.worm_like_layer_maps``).
"First call" includes the parameter-independent arg-max over layers, computed once per map set and cached.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(__file__))
from _common import median_ms, worm_like_layer_maps

from napari_instance_tuner.core.families.layering.postprocess import LayeringParams, postprocess
from napari_instance_tuner.core.family import Maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    arrays, n_worms = worm_like_layer_maps(args.size, args.layers)
    print(f"layering post-processing on {args.size}x{args.size} maps, N = {args.layers}, {n_worms} worms, "
          f"{os.cpu_count()} CPUs")
    base = LayeringParams(threshold=0.5, min_size=250, allow_overlaps=True)
    maps = Maps(dict(arrays))
    start = time.perf_counter()
    postprocess(maps, base)
    print(f"{'first call (computes the cached arg-max)':<46}{1000 * (time.perf_counter() - start):>10.1f} ms")
    print(f"{'setting':<46}{'median ms':>10}{'p90 ms':>10}{'objects':>9}")
    for name, params in [
        ("tau 0.5, S_min 250, overlaps (paper)", base),
        ("tau 0.5, S_min 250, no overlaps", replace(base, allow_overlaps=False)),
        ("tau 0.3, S_min 50, overlaps", replace(base, threshold=0.3, min_size=50)),
        ("tau 0.5, S_min 250, overlaps, fill gaps 20", replace(base, fill_gaps=20.0)),
        ("tau 0.3, S_min 800, overlaps, fill gaps 20", replace(base, threshold=0.3, min_size=800, fill_gaps=20.0)),
    ]:
        med, p90 = median_ms(lambda params=params: postprocess(maps, params), args.repeats)
        print(f"{name:<46}{med:>10.1f}{p90:>10.1f}{postprocess(maps, params).count:>9d}")


if __name__ == "__main__":
    main()
