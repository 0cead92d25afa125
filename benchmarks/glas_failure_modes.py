"""How a gland model fails, per grade: each reference gland of the validation images is matched, merged, split,
under-segmented or missed (GlaS validation patients, the model's own post-processing).

For every reference gland G: *missed* when predictions cover less than 20 % of it; *matched* when the
prediction covering most of it has IoU > 0.5 with it; else *merged* when that prediction also covers more than
30 % of another reference gland, *split* when two or more predictions each cover more than 15 % of G, and
*under* otherwise. Predictions lying mostly (> 50 %) outside every gland count as false positives.

Maps come from ``glas_postprocess.cached_maps`` (same cache).

Usage: python benchmarks/glas_failure_modes.py --model three-branch-glas-v3 --data ../shared/data/glas/train
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from glas_postprocess import cached_maps

from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.training.data import load_split, read_groups

KINDS = ("matched", "merged", "split", "under", "missed")


def classify(labels: np.ndarray, reference: np.ndarray) -> tuple[dict[str, int], int]:
    """(count per kind of :data:`KINDS` over the reference glands, false positives) of one image."""
    counts = dict.fromkeys(KINDS, 0)
    for gland in np.unique(reference)[1:]:
        inside = reference == gland
        ids, pixels = np.unique(labels[inside], return_counts=True)
        cover = {int(i): int(n) for i, n in zip(ids, pixels) if i}
        area = int(inside.sum())
        if sum(cover.values()) < 0.2 * area:
            counts["missed"] += 1
            continue
        best = max(cover, key=cover.get)
        predicted = labels == best
        if cover[best] / (area + predicted.sum() - cover[best]) > 0.5:
            counts["matched"] += 1
        elif any(other not in (0, gland) and (reference[predicted] == other).sum() > 0.3 * (reference == other).sum()
                 for other in np.unique(reference[predicted])):
            counts["merged"] += 1
        elif sum(n > 0.15 * area for n in cover.values()) >= 2:
            counts["split"] += 1
        else:
            counts["under"] += 1
    false_positives = sum(int((reference[labels == p] > 0).mean() < 0.5) for p in np.unique(labels)[1:])
    return counts, false_positives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="three-branch-glas-v3")
    parser.add_argument("--data", required=True, help="split holding the model's validation images")
    parser.add_argument("--cache", default="checkpoints/maps-cache")
    args = parser.parse_args()
    loaded = load_model(args.model)
    samples = load_split(args.data, names=loaded.meta["training"]["val_images"])
    groups = read_groups(args.data)
    params = loaded.family.default_params(loaded.meta)
    totals: dict[str, dict[str, int]] = {}
    for sample, maps in zip(samples, cached_maps(loaded, samples, Path(args.cache))):
        counts, false_positives = classify(loaded.family.postprocess(maps, params).labels, sample.labels)
        row = totals.setdefault(groups.get(sample.name, ("", "?"))[1], dict.fromkeys((*KINDS, "false positives"), 0))
        for kind, n in counts.items():
            row[kind] += n
        row["false positives"] += false_positives
    print(f"{args.model}: reference glands of {len(samples)} validation images by outcome")
    print(f"{'grade':<10}{'glands':>7}" + "".join(f"{k:>17}" for k in (*KINDS, "false positives")))
    for grade, row in sorted(totals.items()):
        print(f"{grade:<10}{sum(row[k] for k in KINDS):>7}" + "".join(f"{row[k]:>17}" for k in (*KINDS, "false positives")))


if __name__ == "__main__":
    main()
