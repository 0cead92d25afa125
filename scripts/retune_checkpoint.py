"""Auto-tune a checkpoint's post-processing on its own validation images and record the validation metrics.

What ``train`` does after training, for checkpoints trained with ``--no-autotune`` (for example several
variants trained side by side on a GPU, compared with the default post-processing first):

    python scripts/retune_checkpoint.py checkpoints/gpu2/Mbase.safetensors --data ../shared/data/dsb2018/train \\
        --out checkpoints/maskrcnn-dsb2018.safetensors --name maskrcnn-dsb2018

The validation images are those the checkpoint's metadata names (``training.val_images``); the metric is the
family's selection score (:meth:`Family.score`) averaged over the images, or with ``--objective pooled`` the mean of
the object F1 and object Dice pooled over them as GlaS pools them (each object weighs the same).

A checkpoint trained on every image (``train --val-fraction 0``) has no images left to tune on. ``--cross-fit A B``
tunes it on the maps of models of its recipe trained on complementary parts of the data: each image of ``--data``
(and ``--extra-data``) that not all of them trained on is segmented by the one that never saw it
(``cross_fit_assignment``). The metrics recorded are those of the cross-fitted maps, as ``metrics.cross_fit``:

    python scripts/retune_checkpoint.py checkpoints/glas-all.safetensors --data ../shared/data/glas/train \
        --extra-data ../shared/data/glas/testA --cross-fit checkpoints/glas-xfitA.safetensors \
        checkpoints/glas-xfitB.safetensors --out checkpoints/three-branch-glas-v6.safetensors --name three-branch-glas-v6

An ensemble of two recipes (``make_ensemble.py``, e.g. v9: a U-Net and an EfficientNet-Lite0 network, each trained on
every image) is tuned as ``benchmarks/glas_lopo_tuning.py --also-cross-fit`` validated it: ``--also-cross-fit C D``
names the second recipe's halves, and each image's maps are the mean of both recipes' cross-fitted maps. Every
half must have the architecture of one of the ensemble's members; members of different architectures need one
recipe each, in the members' order.

The search starts from the checkpoint's parameters, or with ``--from-defaults`` from the family's defaults, as
``benchmarks/glas_lopo_tuning.py`` starts each fold (so the shipped tuning is the procedure the k-fold validated);
``--exclude NAME[,NAME]`` leaves parameters at their start value, as that benchmark's option does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_instance_tuner.core.errors import ParamsError
from napari_instance_tuner.core.evaluation.scoring import OBJECTIVES
from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.params import searched_names
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split, read_groups
from napari_instance_tuner.core.training.ensemble import (
    cross_fit_assignment,
    differences,
    trained_images,
)
from napari_instance_tuner.core.training.jobs import tune_and_evaluate


def search_setup(loaded, exclude: list[str] | None = None, from_defaults: bool = False) -> dict:
    """``names`` and ``start`` for :func:`tune_and_evaluate`: every parameter but ``exclude`` is searched, from
    the family's defaults (``from_defaults``) or from the checkpoint's parameters."""
    start = loaded.family.Params() if from_defaults else loaded.family.default_params(loaded.meta)
    try:
        return {"names": searched_names(start, exclude or []), "start": start}
    except ParamsError as exc:
        raise SystemExit(f"--exclude: {exc}") from None


def retune(loaded, data: str, extra: str | None = None, objective: str = "image-mean",
           exclude: list[str] | None = None, from_defaults: bool = False) -> tuple[float, float]:
    """Auto-tune ``loaded``'s post-processing on its validation images found in ``data`` (plus every image of the
    split ``extra``, which the model must never have trained on) and record the metrics on those images, in
    ``loaded.meta``; returns the score before and after tuning. ``exclude``, ``from_defaults``:
    :func:`search_setup`."""
    names = set(loaded.meta["training"]["val_images"])
    samples = load_split(data, names=names)
    if len(samples) != len(names):
        raise SystemExit(f"found {len(samples)} of the {len(names)} validation images in {data}")
    groups = read_groups(data)
    if extra:
        more = load_split(extra)
        seen = sorted({s.name for s in more} & trained_images(loaded.meta))
        if seen:
            raise SystemExit(f"{len(seen)} images of {extra} ({', '.join(seen[:3])}, ...) trained this model: "
                             "they cannot tune it")
        samples += more
        groups = {**groups, **read_groups(extra)}
    run(tune_and_evaluate(loaded, loaded.meta, samples, groups, objective=objective,
                          **search_setup(loaded, exclude, from_defaults)))
    tuned = loaded.meta["training"]["autotune"]
    if extra:
        tuned["on"] = f"validation split + {len(more)} images of {Path(extra).name}"
        loaded.meta["training"]["tuning_images"] = [s.name for s in samples]
    return tuned["score_before"], tuned["score_after"]


def check_recipe(loaded, models: list) -> None:
    """Exit unless each of ``models`` could stand in for a member of ``loaded``: the same pixel scale, input and
    outputs (:func:`differences`), and the architecture of one of its members."""
    archs = loaded.model.config.member_configs()
    for m in models:
        differ = differences(m.meta, loaded.meta)
        if differ:
            raise SystemExit(f"{m.name} differs from {loaded.name} in {', '.join(differ)}: not the same recipe")
        if m.model.config not in archs:
            raise SystemExit(f"{m.name}'s architecture is that of no member of {loaded.name}")


def retune_cross_fit(loaded, models: list, data: str, extra: str | None = None, objective: str = "image-mean",
                     exclude: list[str] | None = None, from_defaults: bool = False,
                     also: list | None = None) -> tuple[float, float]:
    """Auto-tune ``loaded``'s post-processing on the cross-fitted maps of ``models`` (averaged with those of a second
    recipe's halves, ``also``; see the module docstring) and record their metrics in ``loaded.meta``; returns the
    score before and after tuning. ``exclude``, ``from_defaults``: :func:`search_setup`."""
    recipes = [models, *([also] if also else [])]
    for recipe in recipes:  # their maps stand in for the checkpoint's: the same networks, pixel scale and input
        check_recipe(loaded, recipe)
    mixed = loaded.model.config.member_architectures
    if mixed and tuple(r[0].model.config for r in recipes) != mixed:
        raise SystemExit(f"{loaded.name}'s members have {len(mixed)} architectures: give one recipe's halves per "
                         "member, in the members' order (--cross-fit for the first, --also-cross-fit for the second)")
    samples = load_split(data) + (load_split(extra) if extra else [])
    groups = {**read_groups(data), **(read_groups(extra) if extra else {})}
    seen = set().union(*(set.intersection(*(trained_images(m.meta) for m in r)) for r in recipes))
    samples = [s for s in samples if s.name not in seen]
    owners = [cross_fit_assignment([m.meta for m in r], [s.name for s in samples]) for r in recipes]
    per_recipe = [[run(r[o].family.predict_maps(r[o].model, s.image, r[o].meta)) for s, o in zip(samples, owner)]
                  for r, owner in zip(recipes, owners)]
    maps = [Maps(arrays={k: np.mean([m.arrays[k] for m in each], axis=0) for k in each[0].arrays})
            for each in zip(*per_recipe)]
    run(tune_and_evaluate(loaded, loaded.meta, samples, groups, maps=maps, key="cross_fit", objective=objective,
                          **search_setup(loaded, exclude, from_defaults)))
    tuned = loaded.meta["training"]["autotune"]
    halves = " and ".join(", ".join(m.name for m in r) for r in recipes)
    tuned["on"] = (f"cross-fitted maps: {len(samples)} images, each segmented by the one of {halves} that never "
                   "trained on it" + (" (the recipes' maps averaged)" if also else ""))
    loaded.meta["training"]["tuning_images"] = [s.name for s in samples]
    loaded.meta["training"]["cross_fit"] = [
        {"name": m.name, "sha256": m.sha256, "images": [s.name for s, o in zip(samples, owner) if o == k]}
        for r, owner in zip(recipes, owners) for k, m in enumerate(r)]
    return tuned["score_before"], tuned["score_after"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the training data folder the checkpoint was trained on")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", help="new model name (default: keep)")
    parser.add_argument("--extra-data", help="a split the model never trained on, added to the tuning images")
    parser.add_argument("--cross-fit", nargs="+", metavar="MODEL",
                        help="tune on these models' maps of the images each never trained on (module docstring)")
    parser.add_argument("--also-cross-fit", nargs="+", metavar="MODEL",
                        help="a second recipe's halves, whose cross-fitted maps are averaged in (an ensemble of two "
                             "recipes; needs --cross-fit)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="image-mean",
                        help="image-mean: the family's score averaged over the images; pooled: the mean of the "
                             "pooled GlaS object F1 and object Dice (each object weighs the same)")
    parser.add_argument("--exclude", default="", metavar="NAME[,NAME]",
                        help="parameters left at their start value (not searched)")
    parser.add_argument("--from-defaults", action="store_true",
                        help="start the search from the family's default parameters, not the checkpoint's")
    args = parser.parse_args()
    if args.also_cross_fit and not args.cross_fit:
        parser.error("--also-cross-fit needs --cross-fit")
    loaded = load_model(args.checkpoint)
    how = {"exclude": [n for n in args.exclude.split(",") if n], "from_defaults": args.from_defaults}
    if args.cross_fit:
        also = [load_model(m) for m in args.also_cross_fit] if args.also_cross_fit else None
        before, after = retune_cross_fit(loaded, [load_model(m) for m in args.cross_fit], args.data, args.extra_data,
                                         args.objective, also=also, **how)
    else:
        before, after = retune(loaded, args.data, args.extra_data, args.objective, **how)
    if args.name:
        loaded.meta["name"] = args.name
    save_checkpoint(args.out, loaded.model.state_dict(), loaded.meta, half=True)
    print(f"score {before:.4f} -> {after:.4f}; saved {args.out}")


if __name__ == "__main__":
    main()
