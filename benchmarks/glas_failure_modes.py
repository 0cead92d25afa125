"""How a gland model fails, per grade: each reference gland of the validation images is matched, merged, split,
under-segmented or missed (GlaS validation patients, the model's own post-processing).

For every reference gland G: *missed* when predictions cover less than 20 % of it; *matched* when the
prediction covering most of it has IoU > 0.5 with it; else *merged* when that prediction also covers more than
30 % of another reference gland, *split* when two or more predictions each cover more than 15 % of G, and
*under* otherwise. Predictions lying mostly (> 50 %) outside every gland count as false positives.

Missed glands are also told apart by the step that lost them (``--why``): *foreground* (less than 20 % of the
gland above the foreground threshold), *denoise* (less than 20 % left after the closing and opening), *no
centroid* (no centroid pixel in the gland after the centroid erosion: its pieces fail the centroid filter),
otherwise *other* (S_min, or pieces cut off by the boundary subtraction).

Maps come from ``glas_postprocess.cached_maps`` (same cache). ``--extra-data`` adds a split none of the models
trained on; ``--cross-fit A B`` takes each image's maps from the one of A, B that never trained on it (as
``glas_lopo_tuning.py``); ``--params MODEL`` segments with that model's parameters instead of ``--model``'s;
``--fold-params JSON`` with the parameters each image's fold was given in a ``glas_lopo_tuning.py --json`` run
(tuned on the other patients: the failures behind that run's honest figures; session 18).

Usage: python benchmarks/glas_failure_modes.py --model three-branch-glas-v3 --data ../shared/data/glas/train
       python benchmarks/glas_failure_modes.py --model checkpoints/glas-levers.safetensors \
           --data ../shared/data/glas/train --extra-data ../shared/data/glas/testA \
           --cross-fit checkpoints/glas-xfitA.safetensors checkpoints/glas-xfitB.safetensors \
           --params three-branch-glas-v6 --why
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from glas_postprocess import cached_maps

from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.params import params_from_dict
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


def why_missed(maps, params, reference: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """Count the missed reference glands (predictions cover < 20 %) by the step that lost them."""
    from napari_instance_tuner.core.inference.morphology import close_open, erode  # deferred: only with --why

    arrays = maps.arrays
    raw = (arrays["foreground"] >= params.fg_threshold).view(np.uint8)
    denoised = close_open(raw, params.close_radius, params.open_radius)
    centroid = erode((arrays["centroid"] >= params.centroid_threshold).view(np.uint8), params.centroid_erosion)
    counts = dict.fromkeys(("foreground", "denoise", "no centroid", "other"), 0)
    for gland in np.unique(reference)[1:]:
        inside = reference == gland
        if (labels[inside] > 0).mean() >= 0.2:
            continue
        if raw[inside].mean() < 0.2:
            counts["foreground"] += 1
        elif denoised[inside].mean() < 0.2:
            counts["denoise"] += 1
        elif not centroid[inside].any():
            counts["no centroid"] += 1
        else:
            counts["other"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="three-branch-glas-v3")
    parser.add_argument("--data", required=True, help="split holding the model's validation images")
    parser.add_argument("--cache", default="checkpoints/maps-cache")
    parser.add_argument("--extra-data", help="a split of images none of the models trained on")
    parser.add_argument("--cross-fit", nargs="*", default=[], help="each image's maps from the model that never "
                                                                  "trained on it")
    parser.add_argument("--also-cross-fit", nargs="+", action="append", default=[], metavar="MODEL",
                        help="a second recipe's models: their cross-fitted maps are averaged in "
                             "(as in glas_lopo_tuning.py; given again, a third recipe's)")
    parser.add_argument("--params", help="model whose post-processing parameters segment (default: --model)")
    parser.add_argument("--fold-params", metavar="JSON",
                        help="segment each image with the parameters of its fold in a glas_lopo_tuning.py --json run "
                             "(tuned on the other folds' patients): the failures behind that run's figures; overrides --params")
    parser.add_argument("--rule", default="all", help="with --fold-params: the run's rule whose parameters segment")
    parser.add_argument("--why", action="store_true", help="tell the missed glands apart by the step that lost them")
    args = parser.parse_args()
    if args.also_cross_fit and not args.cross_fit:
        parser.error("--also-cross-fit needs --cross-fit")
    loaded = load_model(args.model)
    samples = load_split(args.data, names=loaded.meta["training"]["val_images"])
    groups = read_groups(args.data)
    if args.extra_data:
        samples += load_split(args.extra_data)
        groups = {**groups, **read_groups(args.extra_data)}
    if args.cross_fit:
        from glas_lopo_tuning import averaged, cross_fitted  # deferred: only with --cross-fit

        all_maps = cross_fitted([load_model(m) for m in args.cross_fit], samples, Path(args.cache))
        if args.also_cross_fit:
            all_maps = averaged([all_maps] + [cross_fitted([load_model(m) for m in recipe], samples, Path(args.cache))
                                              for recipe in args.also_cross_fit])
    else:
        all_maps = cached_maps(loaded, samples, Path(args.cache))
    source = load_model(args.params) if args.params else loaded
    params = source.family.default_params(source.meta)
    fold_params = {}
    if args.fold_params:
        recorded = json.loads(Path(args.fold_params).read_text())
        fold_params = {patient: params_from_dict(loaded.family.Params, recorded[args.rule]["fold_params"][",".join(fold)])
                       for fold in recorded["folds"] for patient in fold}
    totals: dict[str, dict[str, int]] = {}
    lost: dict[str, dict[str, int]] = {}
    for sample, maps in zip(samples, all_maps):
        if fold_params:
            params = fold_params[groups[sample.name][0]]
        labels = loaded.family.postprocess(maps, params).labels
        counts, false_positives = classify(labels, sample.labels)
        grade = groups.get(sample.name, ("", "?"))[1]
        row = totals.setdefault(grade, dict.fromkeys((*KINDS, "false positives"), 0))
        for kind, n in counts.items():
            row[kind] += n
        row["false positives"] += false_positives
        if args.why:
            for step, n in why_missed(maps, params, sample.labels, labels).items():
                lost.setdefault(grade, {}).setdefault(step, 0)
                lost[grade][step] += n
    print(f"{' + '.join(args.cross_fit) or args.model}: reference glands of {len(samples)} images by outcome")
    print(f"{'grade':<10}{'glands':>7}" + "".join(f"{k:>17}" for k in (*KINDS, "false positives")))
    for grade, row in sorted(totals.items()):
        print(f"{grade:<10}{sum(row[k] for k in KINDS):>7}" + "".join(f"{row[k]:>17}" for k in (*KINDS, "false positives")))
    for grade, steps in sorted(lost.items()):
        print(f"{grade}: missed glands lost at " + ", ".join(f"{k} {n}" for k, n in steps.items()))


if __name__ == "__main__":
    main()
