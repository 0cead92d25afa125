"""Accuracy of a three-branch model on an annotated split, with the paper's ablations.

Prints GlaS object F1 / object Dice / object Hausdorff (pooled over the split as the GlaS challenge
does) overall and per grade for:
  - all three branches with the model's tuned post-processing (the product's default);
  - the same without the grow-back step (its effect on Dice);
  - the foreground branch alone (Table V of the three-branch paper: threshold, denoise, components), with
    its own post-processing tuned on the model's validation images (``--val-data``), as fair as the full model.

Usage: python benchmarks/glas_accuracy.py --model three-branch-glas --data ../shared/data/glas/testA \
           --val-data ../shared/data/glas/train [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from napari_instance_tuner.cli import format_table
from napari_instance_tuner.core.evaluation.metrics import evaluate
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split, read_groups
from napari_instance_tuner.core.training.jobs import summarise


def tune_on_validation(loaded, val_data: str, params):
    """Tune the foreground-only post-processing on the model's own validation images (never on the test split)."""
    from napari_instance_tuner.core.evaluation.autotune import autotune

    names = loaded.meta.get("training", {}).get("val_images", [])
    samples = load_split(val_data, names=names)
    maps = [run(loaded.family.predict_maps(loaded.model, s.image, loaded.meta)) for s in samples]
    tunable = ["fg_threshold", "close_radius", "open_radius", "min_size"]
    best, before, after = run(autotune(loaded.family.postprocess, maps, [s.labels for s in samples], params,
                                       loaded.family.score, names=tunable))
    print(f"foreground-only post-processing tuned on {len(samples)} validation images: {before:.3f} -> {after:.3f}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="three-branch-glas")
    parser.add_argument("--data", required=True)
    parser.add_argument("--val-data", help="split holding the model's validation images (for the ablation's tuning)")
    parser.add_argument("--json")
    args = parser.parse_args()
    loaded = load_model(args.model)
    samples = load_split(args.data)
    groups = read_groups(args.data)
    maps = [run(loaded.family.predict_maps(loaded.model, s.image, loaded.meta)) for s in samples]
    tuned = loaded.family.default_params(loaded.meta)
    fg_only = replace(tuned, subtract_boundaries=False, require_centroid=False, grow_back=0)
    if args.val_data:
        fg_only = tune_on_validation(loaded, args.val_data, fg_only)
    variants = {
        "three branches (tuned post-processing)": tuned,
        "three branches, no grow-back": replace(tuned, grow_back=0),
        "foreground branch alone (Table V)": fg_only,
    }
    report = {}
    for title, params in variants.items():
        rows = [{"name": s.name, **evaluate(loaded.family.postprocess(m, params).labels, s.labels)}
                for s, m in zip(samples, maps)]
        summary = summarise(rows, groups)
        report[title] = summary
        print(f"\n## {title} — {loaded.name} on {args.data} ({len(samples)} images)")
        print(format_table(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
