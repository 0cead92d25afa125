"""Leave-one-patient-out post-processing tuning on GlaS validation patients: an honest figure for a tuning rule.

The post-processing of a gland model is auto-tuned on its validation images; figures on those same images are
optimistic. Here the tuning *rule* is validated instead: for each validation patient, the parameters are tuned
on the other patients' images and applied to this patient's; the pooled predictions of all patients are then
scored per grade (GlaS object F1 / object Dice / object Hausdorff). Rules compared (``--objectives``):

  all        the family's score (mean of object F1 and Dice per image) averaged over all tuning images (what
             ``train`` does after training);
  malignant  the same score averaged over the malignant tuning images only (the target is mostly malignant);
  pooled     the mean of the object F1 and object Dice pooled over all tuning images as GlaS pools them (TP, FP,
             FN summed; each object weighs the same), i.e. the figures judged (``retune_checkpoint.py
             --objective pooled``; session 17).

``--extra-data SPLIT`` adds a second split's images (e.g. GlaS testA, for models that never trained on it) to
both sides: each patient's images there are also segmented with parameters tuned on the other patients', and the
tuning of every fold uses them, so a rule is validated with 38 malignant images instead of 11. ``--folds K``
groups the patients into K folds (balanced by image count, deterministic) to bound the run time; without it each
patient is a fold. Figures are reported pooled over all images and over each split alone.

Mask R-CNN models (session 28) are tuned and scored as the others (rules ``all`` and ``malignant`` by the mean of
object F1 and Dice, not by the family's DSB score); their detections are cached with the maps, and cannot be
averaged (``--average``, ``--cross-fit``).

``--average MODEL2 [...]`` averages the probability maps of several models (same family) before
post-processing: a test-time ensemble. Maps come from ``glas_postprocess.cached_maps`` (same cache).

``--cross-fit MODEL_A MODEL_B [...]`` takes each image's maps from the one of those models that never trained on
it (``core.training.ensemble.cross_fit_assignment``) instead of from ``--model``, which then only names the
images (its validation images, plus ``--extra-data``). This validates a recipe that trains on some of those
images: the cross-fit halves of ``runs/glas-xfitA.sh`` and ``runs/glas-xfitB.sh`` each train on half of them.
With ``--average`` too, each image's cross-fitted maps are averaged with those models' maps: an ensemble of the
recipe and models that trained on none of the images (refused if one did). ``--also-cross-fit MODEL_C MODEL_D``
averages in a second recipe's cross-fitted maps (each image's from the one of those that never trained on it):
an ensemble of two recipes, e.g. two architectures, each validated on the images its halves did not see; given
again, it adds a third recipe (session 23), each recipe's maps weighing the same.

Per patient: the JSON also holds each image's metrics (``images``), the figures of every patient
(``by_patient``) and of the patients that GlaS testB also holds (``testB_patients``, from ``Grade.csv``: testB
is held back and never read, only its patient ids). Those patients' malignant images are the nearest stand-in
for testB here; pooled figures over all malignant images mix in easier patients.
``--exclude NAME[,NAME]`` leaves parameters at their start value (the family's default) in every search: run
once with a new lever excluded and once without, on the same maps, to measure the lever alone (session 18).
``--fix NAME=VALUE[,NAME=VALUE]`` sets parameters' start values and leaves them out of the search: a
coordinate search that starts with ``watershed`` off never tries a switch that only acts with it on (such as
session 22's ``flood_over_centroid``, measured at commit 44f8f27 and removed), so such a path is measured by
fixing it.
``--fix-from MODEL [--free NAME[,NAME]]`` fixes every parameter at MODEL's shipped values (a parameter its
metadata lacks, newer than it, at the family's default) except those named by ``--free``, which alone are
searched: what adding a lever to a shipped model's parameters would do, the rest of them unchanged (session 31;
``--fix`` given too overrides single values).
``--fold-params JSON`` skips the tuning and re-scores the folds of an earlier run with the parameters its
JSON recorded (how session 16 added per-patient figures to session 15's runs).

Usage: python benchmarks/glas_lopo_tuning.py --model three-branch-glas-v3 --data ../shared/data/glas/train \
           [--average checkpoints/glas-full.safetensors] [--objectives all,malignant] [--json OUT]
       python benchmarks/glas_lopo_tuning.py --model checkpoints/glas-levers.safetensors --average ... \
           --data ../shared/data/glas/train --extra-data ../shared/data/glas/testA --folds 4 --objectives all
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from glas_postprocess import TUNABLE, cached_maps, score_split, variant_params

from napari_instance_tuner.cli import format_table
from napari_instance_tuner.core.errors import ParamsError
from napari_instance_tuner.core.evaluation.autotune import autotune
from napari_instance_tuner.core.evaluation.metrics import evaluate
from napari_instance_tuner.core.evaluation.scoring import tuning_objective
from napari_instance_tuner.core.family import Family, Maps
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.params import params_from_dict, params_to_dict, searched_names
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split, patient_folds, read_groups
from napari_instance_tuner.core.training.ensemble import cross_fit_assignment, trained_images
from napari_instance_tuner.core.training.jobs import summarise


def averaged(maps_lists: list[list[Maps]]) -> list[Maps]:
    """Per image, the mean of each map over models (all at the image's own size); refused for detections."""
    if any(m.extra for maps in maps_lists for m in maps):
        raise SystemExit("--average and --also-cross-fit average maps; a Mask R-CNN's detections cannot be averaged")
    return [Maps(arrays={k: np.mean([m.arrays[k] for m in per_model], axis=0) for k in per_model[0].arrays})
            for per_model in zip(*maps_lists)]


def cross_fitted(models: list, samples, cache: Path) -> list[Maps]:
    """Each sample's maps from the one of ``models`` that never trained on it."""
    owner = cross_fit_assignment([m.meta for m in models], [s.name for s in samples])
    maps: list[Maps | None] = [None] * len(samples)
    for k, model in enumerate(models):
        mine = [i for i, o in enumerate(owner) if o == k]
        for i, m in zip(mine, cached_maps(model, [samples[i] for i in mine], cache)):
            maps[i] = m
    return maps


def tune(family, maps, samples, start, rule: str, groups: dict, names: list[str] | None):
    """Parameters auto-tuned on ``samples`` by ``rule`` (see the module docstring); ``names``: the parameters
    searched (None: all, as ``train`` and ``scripts/retune_checkpoint.py`` do)."""
    keep = [i for i, s in enumerate(samples) if rule != "malignant" or groups.get(s.name, ("", ""))[1] == "malignant"]
    # rules all / malignant tune every family by the base Family.score (mean of object F1 and Dice per image), not
    # by a family's own (Mask R-CNN's is the DSB score of nuclei)
    score, combine = tuning_objective(family, "pooled") if rule == "pooled" else (partial(Family.score, family), None)
    best, _, _ = run(autotune(family.postprocess, [maps[i] for i in keep], [samples[i].labels for i in keep],
                              start, score, names=names, combine=combine))
    return best


def by_patient(scored: list[dict], groups: dict) -> dict:
    """``images`` (per-image metric rows), ``by_patient`` and ``testB_patients`` (pooled over the scored
    images of the patients that ``Grade.csv`` also lists under testB) figures, per grade."""
    patients = sorted({groups[r["name"]][0] for r in scored}, key=lambda p: (len(p), p))
    testb = {p for name, (p, _) in groups.items() if name.startswith("testB")}
    mine = [r for r in scored if groups[r["name"]][0] in testb]
    return {
        "images": [{k: v for k, v in r.items() if np.isscalar(v)} for r in scored],
        "by_patient": {p: summarise([r for r in scored if groups[r["name"]][0] == p], groups) for p in patients},
        "testB_patients": {"patients": sorted({groups[r["name"]][0] for r in mine}, key=lambda p: (len(p), p)),
                           "figures": summarise(mine, groups) if mine else {}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="three-branch-glas-v3")
    parser.add_argument("--average", nargs="*", default=[], help="more models whose maps are averaged in")
    parser.add_argument("--cross-fit", nargs="*", default=[],
                        help="models of one recipe: each image's maps come from the one that never trained on it")
    parser.add_argument("--also-cross-fit", nargs="+", action="append", default=[], metavar="MODEL",
                        help="models of a second recipe (another architecture, say): their cross-fitted maps are "
                             "averaged with those of --cross-fit, an ensemble of the two recipes' halves; given "
                             "again, a third recipe's, and so on (each recipe weighs the same)")
    parser.add_argument("--data", required=True, help="split holding the model's validation images")
    parser.add_argument("--extra-data", help="a split of images none of the models trained on, added to both sides")
    parser.add_argument("--folds", type=int, help="group the patients into this many folds (default: one each)")
    parser.add_argument("--objectives", default="all,malignant")
    parser.add_argument("--search", choices=["shipped", "paper"], default="shipped",
                        help="parameters tuned: shipped = all of them, as train and retune_checkpoint.py tune a "
                             "shipped model (session 15 on); paper = glas_postprocess.TUNABLE['paper'] (sessions "
                             "13-14: closing radius and the switches kept at the defaults)")
    parser.add_argument("--exclude", default="",
                        help="comma-separated parameters the search leaves at their start value (e.g. a new lever, "
                             "to measure the search without it on the same maps)")
    parser.add_argument("--fix", default="", metavar="NAME=VALUE[,...]",
                        help="parameters set to these values and left out of the search (JSON values: true, 3, 0.5)")
    parser.add_argument("--fix-from", metavar="MODEL",
                        help="fix every parameter at this model's shipped post-processing values but those of --free")
    parser.add_argument("--free", default="", metavar="NAME[,...]",
                        help="with --fix-from: the parameters left free, the only ones searched")
    parser.add_argument("--skip-whole", action="store_true", help="skip the (optimistic) tuning on all images")
    parser.add_argument("--cache", default="checkpoints/maps-cache")
    parser.add_argument("--json")
    parser.add_argument("--fold-params", metavar="JSON",
                        help="skip the tuning: segment each fold with the parameters an earlier run of this script "
                             "recorded (its JSON), e.g. to add per-patient figures to an older run")
    args = parser.parse_args()
    loaded = load_model(args.model)
    names = loaded.meta.get("training", {}).get("val_images") or []
    samples = load_split(args.data, names=names)
    groups = read_groups(args.data)
    extra: set[str] = set()
    if args.extra_data:
        more = load_split(args.extra_data)
        samples += more
        extra = {s.name for s in more}
        groups = {**groups, **read_groups(args.extra_data)}
    members = [load_model(m) for m in args.average]
    for name, member in zip(args.average, members):
        if seen := sorted(trained_images(member.meta) & {s.name for s in samples}):
            parser.error(f"--average {name} trained on {len(seen)} of the images ({', '.join(seen[:3])}, ...)")
    if args.also_cross_fit and not args.cross_fit:
        parser.error("--also-cross-fit needs --cross-fit")
    if args.cross_fit:
        maps = cross_fitted([load_model(m) for m in args.cross_fit], samples, Path(args.cache))
        if args.also_cross_fit:
            maps = averaged([maps] + [cross_fitted([load_model(m) for m in recipe], samples, Path(args.cache))
                                      for recipe in args.also_cross_fit])
    else:
        maps = cached_maps(loaded, samples, Path(args.cache))
    if members:
        maps = averaged([maps] + [cached_maps(m, samples, Path(args.cache)) for m in members])
    # the family's defaults, not the model's tuned values (those were tuned on every validation patient)
    start = variant_params("paper", loaded.family.Params()) if loaded.family.name == "three-branch" \
        else loaded.family.Params()
    searched = TUNABLE["paper"] if args.search == "paper" else None
    try:
        fixed = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.fix.split(",") if item)}
        if args.fix_from:
            shipped = params_to_dict(params_from_dict(loaded.family.Params,
                                                      load_model(args.fix_from).meta.get("postprocess", {})))
            free = [n for n in args.free.split(",") if n]
            if unknown := sorted(set(free) - set(shipped)):
                raise ParamsError(f"--free names no parameter of the family: {', '.join(unknown)}")
            fixed = {**{k: v for k, v in shipped.items() if k not in free}, **fixed}
        start = params_from_dict(loaded.family.Params, fixed, start)
    except (ValueError, ParamsError) as exc:  # json.JSONDecodeError and a missing "=" included
        parser.error(f"--fix {args.fix} / --fix-from {args.fix_from}: {exc}")
    excluded = [n for n in args.exclude.split(",") if n] + list(fixed)
    try:
        searched = searched_names(start, excluded, searched)
    except ParamsError as exc:
        parser.error(f"--exclude: {exc}")
    folds = patient_folds([s.name for s in samples], groups, args.folds)
    recorded = json.loads(Path(args.fold_params).read_text()) if args.fold_params else None
    if recorded and recorded["folds"] != folds:
        parser.error(f"--fold-params {args.fold_params} holds other folds: {recorded['folds']}")
    also = [m for recipe in args.also_cross_fit for m in recipe]
    report = {"models": [*(args.cross_fit or [args.model]), *also, *args.average],
              "cross_fit": bool(args.cross_fit), "search": args.search, "excluded": excluded, "fixed": fixed,
              "fixed_from": args.fix_from,
              "patients": [p for f in folds for p in f],
              "folds": folds, "images": [s.name for s in samples], "fold_params_from": args.fold_params}
    print(f"{' + '.join(report['models'])}: {len(samples)} images of patients "
          f"{' | '.join(', '.join(f) for f in folds)} (| between folds)")
    for rule in args.objectives.split(","):
        pooled: list[tuple] = []
        params = {}
        for fold in folds:
            inside = [i for i, s in enumerate(samples) if groups[s.name][0] not in fold]
            held = [i for i, s in enumerate(samples) if groups[s.name][0] in fold]
            if recorded:
                best = params_from_dict(loaded.family.Params, recorded[rule]["fold_params"][",".join(fold)])
            else:
                best = tune(loaded.family, [maps[i] for i in inside], [samples[i] for i in inside], start, rule,
                            groups, searched)
            params[",".join(fold)] = params_to_dict(best)
            pooled += [(samples[i], maps[i], best) for i in held]
        scored = [{"name": s.name, **evaluate(loaded.family.postprocess(m, p).labels, s.labels)} for s, m, p in pooled]
        summary = summarise(scored, groups)
        if extra:
            for label, in_extra in (("validation", False), ("extra", True)):
                report.setdefault("by_split", {}).setdefault(rule, {})[label] = part = summarise(
                    [r for r in scored if (r["name"] in extra) == in_extra], groups)
                print(f"\n## rule {rule!r}, {label} images only")
                print(format_table(part))
        report[rule] = {"leave_one_patient_out": summary, "fold_params": params, **by_patient(scored, groups)}
        if report[rule]["testB_patients"]["figures"]:
            print(f"\n## rule {rule!r}: patients that testB also holds "
                  f"({', '.join(report[rule]['testB_patients']['patients'])})")
            print(format_table(report[rule]["testB_patients"]["figures"]))
        print(f"\n## rule {rule!r}: each patient with parameters tuned on the other patients")
        print(format_table(summary))
        if args.skip_whole:
            continue
        whole = tune(loaded.family, maps, samples, start, rule, groups, searched)
        report[rule].update(params_on_all_patients=params_to_dict(whole),
                            tuned_on_all_patients=score_split(loaded.family, maps, samples, whole, groups))
        print(f"### rule {rule!r} tuned on all {len(samples)} images (optimistic): "
              f"{report[rule]['params_on_all_patients']}")
        print(format_table(report[rule]["tuned_on_all_patients"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
