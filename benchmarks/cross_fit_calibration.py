"""Do networks of one recipe give alike maps? A check of the assumption behind cross-fitted tuning.

``scripts/retune_checkpoint.py --cross-fit`` tunes a network trained on every image with the maps of its siblings
(same recipe, complementary data). This compares them on images that all of them trained on: the foreground map's
mean, the fraction above 0.5, the mean confidence |p - 0.5|, and the object F1 / Dice with one set of parameters
(by default the first model's own). It is a check, not a validation: every image here is a training image.

Usage: python benchmarks/cross_fit_calibration.py --data ../shared/data/glas/train \
           --models checkpoints/glas-all.safetensors checkpoints/glas-xfitA.safetensors checkpoints/glas-xfitB.safetensors \
           --params three-branch-glas-v6 --every 7 --count 10
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_instance_tuner.core.evaluation.metrics import evaluate
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split
from napari_instance_tuner.core.training.ensemble import trained_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="split holding images every model trained on")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--params", help="model whose post-processing parameters are used (default: the first)")
    parser.add_argument("--every", type=int, default=7, help="take every k-th shared training image, by name")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    models = [load_model(m) for m in args.models]
    shared = sorted(set.intersection(*(trained_images(m.meta) for m in models)))
    names = shared[:: args.every][: args.count]
    samples = load_split(args.data, names=set(names))
    source = load_model(args.params) if args.params else models[0]
    params = source.family.default_params(source.meta)
    print(f"{len(samples)} images every model trained on ({', '.join(names)}); parameters of {source.name}")
    print(f"{'model':<16} {'fg mean':>8} {'fg>0.5':>8} {'|p-0.5|':>8} {'F1':>7} {'Dice':>7}")
    for model in models:
        stats, f1, dice = [], [], []
        for s in samples:
            maps = run(model.family.predict_maps(model.model, s.image, model.meta))
            fg = maps.arrays["foreground"]
            stats.append((fg.mean(), (fg > 0.5).mean(), np.abs(fg - 0.5).mean()))
            scores = evaluate(model.family.postprocess(maps, params).labels, s.labels)
            f1.append(scores["object_f1"])
            dice.append(scores["object_dice"])
        mean = np.mean(stats, axis=0)
        print(f"{model.name:<16} {mean[0]:8.3f} {mean[1]:8.3f} {mean[2]:8.3f} {np.mean(f1):7.3f} {np.mean(dice):7.3f}")


if __name__ == "__main__":
    main()
