"""Two crossing worms: does a layering model return two whole objects whose masks overlap? (issue 3)

Usage: python benchmarks/layering_crossing.py [--model layering-bbbc010] [--seeds 8]

Each seed draws a BBBC010-like 520 x 696 brightfield image (a bright well of about 0.8 x 0.6 of the image in
a dark surround) with exactly two worms, the second crossing the first (``synthetic_worms(count=2)``). A seed
succeeds ("strict") when the model's post-processing (the checkpoint's parameters) returns exactly two
objects, both matched at IoU 0.5, whose masks overlap. Also counted ("crossing"): both worms are matched at
IoU > 0.5 by two predicted objects whose masks overlap, whatever else is predicted (the extra objects are
counted in the last column; on these synthetic images they are mostly pieces of the well's rim). Also printed: the same on the real validation images, as the
number of ground-truth overlaps that the prediction also has as an overlap of two matched objects.
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_instance_tuner.core.evaluation.metrics import average_precision
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.synthetic import synthetic_worms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="layering-bbbc010")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--absorption", type=float, default=0.35)
    parser.add_argument("--well", type=float, nargs=2, default=(0.4, 0.3),
                        help="half-extent of the bright well (fractions of H, W); above 0.5 it fills the image")
    args = parser.parse_args()
    loaded = load_model(args.model)
    params = loaded.family.default_params(loaded.meta)
    print(f"model {loaded.name}, parameters {params}")
    print(f"{'seed':>4} {'objects':>8} {'AP@0.5':>7} {'overlap px (pred)':>18} {'overlap px (truth)':>19}  "
          f"{'strict':>6} {'crossing':>8} {'extra':>5}")
    wins = crossings = 0
    for seed in range(args.seeds):
        image, _, masks = synthetic_worms((520, 696), seed=seed, count=2, well=tuple(args.well), absorption=args.absorption)
        maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta))
        inst = loaded.family.postprocess(maps, params)
        pred = inst.masks if inst.masks is not None else inst.labels
        ap = average_precision(pred, masks)["ap50"]
        overlap = int((inst.masks.sum(0) > 1).sum()) if inst.masks is not None and inst.count else 0
        ok = inst.count == 2 and ap == 1.0 and overlap > 0
        crossing, extra = crossing_found(inst.masks if inst.masks is not None else None, masks)
        wins += ok
        crossings += crossing
        print(f"{seed:>4} {inst.count:>8} {ap:>7.2f} {overlap:>18} {int((masks.sum(0) > 1).sum()):>19}  "
              f"{ok!s:>6} {crossing!s:>8} {extra:>5}")
    print(f"two whole, overlapping objects in {wins} of {args.seeds} images (strict)")
    print(f"both worms found, overlapping each other, in {crossings} of {args.seeds} images (crossing)")


def crossing_found(pred: np.ndarray | None, truth: np.ndarray) -> tuple[bool, int]:
    """Whether two predictions match the two worms at IoU > 0.5 and overlap; and how many others there are.

    Parameters
    ----------
    pred : np.ndarray or None
        bool (N, H, W) predicted masks.
    truth : np.ndarray
        bool (2, H, W) the two worms.
    """
    if pred is None or len(pred) < 2:
        return False, 0 if pred is None else max(0, len(pred) - 2)
    inter = np.array([[np.logical_and(p, t).sum() for t in truth] for p in pred], float)
    union = np.array([[np.logical_or(p, t).sum() for t in truth] for p in pred], float)
    iou = inter / np.maximum(union, 1)
    best = iou.argmax(0)  # for IoU > 0.5 the match of each worm is unique
    matched = all(iou[best[j], j] > 0.5 for j in range(len(truth))) and best[0] != best[1]
    overlapping = matched and bool(np.logical_and(pred[best[0]], pred[best[1]]).any())
    return overlapping, len(pred) - 2


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
