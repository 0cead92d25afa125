"""Three-branch post-processing variants on GlaS, tuned on validation patients, scored per grade.

Issue 20: large irregular malignant glands are cut into pieces by the paper's boundary subtraction and
centroid filter. This compares, for one model, post-processing variants that each get their own auto-tuning
on the model's validation images (whole patients held out of training, ``meta["training"]["val_images"]``),
then reports GlaS object F1 / object Dice / object Hausdorff per grade on:

- the validation images (tuned there: optimistic, shown for reference);
- ``--second-val`` (e.g. GlaS testA), never used for tuning or training of this model: the ranking figure.

Variants:
  paper        boundary subtraction + centroid filter (+ grow-back), the paper's five steps;
  fg-only      foreground branch alone (Table V of the paper);
  ws-markers   watershed over the boundary map from centroid markers; fg components without a marker dropped;
  ws-keep      the same, fg components without a marker kept whole.

Maps are predicted once per image and cached under ``--cache`` (git-ignored ``checkpoints/`` by default).

Usage: python benchmarks/glas_postprocess.py --model three-branch-glas --data ../shared/data/glas/train \
           --second-val ../shared/data/glas/testA [--variants paper,ws-keep] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_instance_tuner.cli import format_table
from napari_instance_tuner.core.evaluation.autotune import autotune
from napari_instance_tuner.core.evaluation.metrics import evaluate
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split, read_groups
from napari_instance_tuner.core.training.jobs import summarise

TUNABLE = {
    "paper": ["fg_threshold", "boundary_threshold", "centroid_threshold", "boundary_erosion", "centroid_erosion",
              "open_radius", "min_size", "grow_back"],
    "fg-only": ["fg_threshold", "close_radius", "open_radius", "min_size"],
    "ws-markers": ["fg_threshold", "centroid_threshold", "centroid_erosion", "open_radius", "min_size"],
    "ws-keep": ["fg_threshold", "centroid_threshold", "centroid_erosion", "open_radius", "min_size"],
}


#: Prefix of the cached ``Maps.extra`` entries (see :func:`cached_maps`).
EXTRA = "extra__"


def variant_params(name: str, base):
    """The starting parameters of a variant (its switches set, the model's tuned values otherwise)."""
    if name == "paper":
        return replace(base, watershed=False, subtract_boundaries=True, require_centroid=True)
    if name == "fg-only":
        return replace(base, watershed=False, subtract_boundaries=False, require_centroid=False, grow_back=0)
    if name == "ws-markers":
        return replace(base, watershed=True, require_centroid=True)
    if name == "ws-keep":
        return replace(base, watershed=True, require_centroid=False)
    raise SystemExit(f"unknown variant {name!r}; choose among {', '.join(TUNABLE)}")


def cached_maps(loaded, samples, cache: Path) -> list[Maps]:
    """Predict (or reload) the maps of each sample; the cache key is the weights' hash and the image name.

    The maps are stored as float16, and a family's ``extra`` (Mask R-CNN's detections) as it is, under keys
    prefixed ``EXTRA``; a family without extra stores what it stored before."""
    key = hashlib.sha256(Path(loaded.path).read_bytes()).hexdigest()[:12] if loaded.path else loaded.name
    out = []
    for s in samples:
        path = cache / f"{key}-{s.name}.npz"
        if path.exists():
            with np.load(path) as f:
                out.append(Maps(arrays={k: f[k] for k in f.files if not k.startswith(EXTRA)},
                                extra={k[len(EXTRA):]: f[k] for k in f.files if k.startswith(EXTRA)}))
            continue
        maps = run(loaded.family.predict_maps(loaded.model, s.image, loaded.meta))
        # stored as float16: hand on the stored values, so that a first run and a cached re-run see the same maps
        stored = {k: v.astype(np.float16) for k, v in maps.arrays.items()}
        extra = {k: np.asarray(v) for k, v in maps.extra.items()}
        cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **stored, **{EXTRA + k: v for k, v in extra.items()})
        out.append(Maps(arrays=stored, extra=extra))
    return [Maps(arrays={k: v.astype(np.float32) for k, v in m.arrays.items()}, extra=m.extra) for m in out]


def score_split(family, maps, samples, params, groups) -> dict:
    rows = [{"name": s.name, **evaluate(family.postprocess(m, params).labels, s.labels)} for s, m in zip(samples, maps)]
    return summarise(rows, groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="three-branch-glas")
    parser.add_argument("--data", required=True, help="split holding the model's validation images")
    parser.add_argument("--second-val", help="a split never used for this model's training or tuning")
    parser.add_argument("--variants", default=",".join(TUNABLE))
    parser.add_argument("--cache", default="checkpoints/maps-cache")
    parser.add_argument("--json")
    args = parser.parse_args()
    loaded = load_model(args.model)
    val_names = loaded.meta.get("training", {}).get("val_images") or []
    if not val_names:
        raise SystemExit(f"{args.model} records no validation images")
    val = load_split(args.data, names=val_names)
    groups = {**read_groups(args.data)}
    val_maps = cached_maps(loaded, val, Path(args.cache))
    second, second_maps = [], []
    if args.second_val:
        second = load_split(args.second_val)
        groups.update(read_groups(args.second_val))
        second_maps = cached_maps(loaded, second, Path(args.cache))
    base = loaded.family.default_params(loaded.meta)
    report = {}
    for name in args.variants.split(","):
        start = variant_params(name, base)
        best, before, after = run(autotune(loaded.family.postprocess, val_maps, [s.labels for s in val], start,
                                           loaded.family.score, names=TUNABLE[name]))
        entry = {"params": {k: getattr(best, k) for k in TUNABLE[name]}, "tuned_score": after,
                 "validation": score_split(loaded.family, val_maps, val, best, groups)}
        print(f"\n## {name}: tuned on {len(val)} validation images ({before:.3f} -> {after:.3f}); {entry['params']}")
        print(format_table(entry["validation"]))
        if second:
            entry["second_val"] = score_split(loaded.family, second_maps, second, best, groups)
            print(f"### {name} on {args.second_val} ({len(second)} images, not tuned there)")
            print(format_table(entry["second_val"]))
        report[name] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
