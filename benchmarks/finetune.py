"""Fine-tuning on one corrected image of a new domain (issue 6): metric on *other* images before -> after.

Usage: python benchmarks/finetune.py --data ../shared/data/dsb2018/train [--model three-branch-glas]
       [--seconds 60] [--eval 12] [--seed 0] [--json out.json]

The shipped GlaS gland model meets a domain it never saw: H&E nuclei tiles of DSB2018 (picked by colour:
mean channel spread > 25 and mean brightness > 100, i.e. stained tissue on a bright background). One tile
plays the image the user corrected (its ground truth stands in for the corrections): of ``1 + --eval``
tiles drawn at random, the one with the most nuclei; the ``--eval`` others measure generalisation. Rows:

1. shipped weights, shipped post-processing;
2. shipped weights, post-processing auto-tuned on the corrected image (no network change);
3. fine-tuned weights (stopped at ``--seconds`` of wall time on this machine), post-processing
   auto-tuned on the corrected image again.

Row 3 vs row 2 is the effect of fine-tuning; nothing is tuned on the evaluation tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from napari_instance_tuner.core.evaluation.autotune import autotune
from napari_instance_tuner.core.evaluation.metrics import aggregate, evaluate
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import CancelToken, run
from napari_instance_tuner.core.training.data import load_split
from napari_instance_tuner.core.training.finetune import CorrectedImage, FinetuneSettings, finetune

KEYS = ("object_f1", "object_dice", "aji", "mean_ap")


def he_tiles(split: str) -> list[str]:
    """Names of the H&E-looking RGB images of a split (see the module docstring)."""
    import imageio.v3 as iio

    names = []
    for path in sorted(Path(split, "images").glob("*.png")):
        rgb = iio.imread(path)[..., :3].astype(np.float32)
        if (rgb.max(-1) - rgb.min(-1)).mean() > 25 and rgb.mean() > 100:
            names.append(path.stem)
    return names


def scores(family, maps_list, refs, params) -> dict:
    rows = [evaluate(family.postprocess(m, params).labels, r) for m, r in zip(maps_list, refs)]
    pooled = aggregate(rows)
    return {k: pooled[k] for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dsb2018 split folder (images/, labels/)")
    parser.add_argument("--model", default="three-branch-glas")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--eval", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--freeze-encoder", action="store_true", help="train only the decoders (default: all)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(args.seed)
    names = he_tiles(args.data)
    chosen = list(rng.choice(names, size=1 + args.eval, replace=False))
    samples = {s.name: s for s in load_split(args.data, names=chosen)}
    # The user corrects the busiest tile of the draw (most annotated nuclei); the others are evaluated.
    corrected_name = max(chosen, key=lambda n: int(samples[n].labels.max()))
    eval_names = [n for n in chosen if n != corrected_name]
    corrected = samples[corrected_name]
    evals = [samples[n] for n in eval_names]
    loaded = load_model(args.model)
    family = loaded.family
    score = family.score
    print(f"model {loaded.name}; {len(names)} H&E tiles in {args.data}; corrected: {corrected_name} "
          f"({int(corrected.labels.max())} nuclei); evaluation: {len(evals)} other tiles")

    def all_maps(model):
        return [run(family.predict_maps(model, s.image, loaded.meta, device="cpu")) for s in evals]

    def tune(model, start):
        maps = run(family.predict_maps(model, corrected.image, loaded.meta, device="cpu"))
        best, before, after = run(autotune(family.postprocess, [maps], [corrected.labels], start, score))
        return best, before, after

    refs = [s.labels for s in evals]
    shipped_params = family.default_params(loaded.meta)
    table = {}
    maps_before = all_maps(loaded.model)
    table["shipped weights, shipped post-processing"] = scores(family, maps_before, refs, shipped_params)
    tuned_params, _, _ = tune(loaded.model, shipped_params)
    table["shipped weights, post-processing tuned on the corrected image"] = scores(
        family, maps_before, refs, tuned_params)

    settings = FinetuneSettings(steps=100_000, lr=args.lr, batch_size=4, crop=128, augment=True,
                                freeze_encoder=args.freeze_encoder, seed=args.seed)
    token = CancelToken()
    gen = finetune(loaded, [CorrectedImage(corrected.image, corrected.labels)], settings, cancel=token)
    start = time.monotonic()

    def stop_at_budget(_progress) -> None:
        if time.monotonic() - start > args.seconds:
            token.cancel()

    model, result = run(gen, stop_at_budget)
    seconds = time.monotonic() - start
    ft_params, _, _ = tune(model, tuned_params)
    table[f"fine-tuned {seconds:.0f} s ({len(result.history)} steps), post-processing tuned on it"] = scores(
        family, all_maps(model), refs, ft_params)

    print(f"fine-tuning: lr {args.lr}, batch 4, crop 128, encoder {'frozen' if args.freeze_encoder else 'trained'}, "
          f"loss {result.history[0]['loss']:.3f} -> {result.history[-1]['loss']:.3f}")
    print(f"{'setting':<72}" + "".join(f"{k:>13}" for k in KEYS))
    for name, row in table.items():
        print(f"{name:<72}" + "".join(f"{row[k]:>13.3f}" for k in KEYS))
    if args.json:
        Path(args.json).write_text(json.dumps({"corrected": corrected_name, "eval": eval_names, "table": table,
                                               "seconds": seconds, "steps": len(result.history)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
