"""Inference throughput (megapixels of input image per second) of a model on this machine.

Usage: python benchmarks/inference_speed.py [--model three-branch-glas] [--size 1024] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_instance_tuner.core.inference.predict import choose_device, device_description
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="three-branch-glas")
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flips", type=int, help="override the model's test-time flips (1, 2 or 4)")
    args = parser.parse_args()
    loaded = load_model(args.model)
    if args.flips:
        loaded.meta["test_time_flips"] = args.flips
    device = choose_device(args.device)
    print(f"{loaded.name} on {device_description(device)}; pixel scale {loaded.meta.get('pixel_scale')}, "
          f"test-time flips {loaded.meta.get('test_time_flips', 1)}")
    print(f"{'image':>12}{'seconds':>10}{'MP/s':>8}")
    rng = np.random.default_rng(0)
    for size in map(int, args.sizes.split(",")):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device=device))  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device=device))
            times.append(time.perf_counter() - start)
        t = float(np.median(times))
        print(f"{size:>5}x{size:<6}{t:>10.2f}{size * size / 1e6 / t:>8.2f}")


if __name__ == "__main__":
    main()
