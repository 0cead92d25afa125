"""Two k-fold runs of ``glas_lopo_tuning.py`` on the same images, compared with a paired bootstrap over images.

Sessions 16-19 decide levers on one figure: the mean of the pooled object F1 and object Dice over the malignant
images of the patients GlaS testB also holds (1 and 7: 20 images), guarded by the same mean over all malignant
images. This script prints both figures of each run and their difference with a 95 % interval from a paired
bootstrap: the images of each patient are resampled with replacement (within the patient, so every draw keeps
each patient's share), the same draw for both runs, and the pooled figures recomputed
(``metrics.pooled_f1_dice``, the GlaS conventions). The interval covers which images were drawn, not how a
network's training went (two seeds of one recipe differed by 0.025 in the pooled malignant mean, session 14; a
re-run of v8's recipe moved the first figure by 0.023, session 19), which adds to it: a difference inside the
interval is no evidence for a lever.

    python benchmarks/glas_compare.py runs/kfold-d5-s19.json runs/kfold-d5-flip4-s19.json [--rule all] \\
        [--draws 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_instance_tuner.core.evaluation.metrics import pooled_f1_dice
from napari_instance_tuner.core.training.data import read_groups


def figure(rows: list[dict]) -> float:
    """(object F1 + object Dice) / 2, pooled over ``rows`` (per-image metric rows with the GlaS terms)."""
    return float(np.mean(pooled_f1_dice(rows)))


def paired_bootstrap(a: list[dict], b: list[dict], strata: list[str], draws: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """``figure(b) - figure(a)`` and its 2.5 % and 97.5 % bootstrap quantiles.

    Parameters
    ----------
    a, b : list of dict
        Per-image rows of the same images in the same order.
    strata : list of str
        Each image's stratum (its patient): images are resampled within their stratum.
    draws : int
    seed : int
    """
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(np.asarray(strata) == s) for s in dict.fromkeys(strata)]
    diffs = []
    for _ in range(draws):
        pick = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        diffs.append(figure([b[i] for i in pick]) - figure([a[i] for i in pick]))
    return figure(b) - figure(a), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="the baseline run's JSON (glas_lopo_tuning.py --json)")
    parser.add_argument("second", help="the lever's run's JSON, on the same images")
    parser.add_argument("--rule", default="all", help="the tuning rule whose figures are compared")
    parser.add_argument("--data", default="../shared/data/glas/train", help="a GlaS split with Grade.csv beside")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs = [json.loads(Path(p).read_text())[args.rule]["images"] for p in (args.first, args.second)]
    by_name = [{r["name"]: r for r in rows} for rows in runs]
    if set(by_name[0]) != set(by_name[1]):
        parser.error("the two runs scored different images")
    groups = read_groups(args.data)  # name -> (patient, grade), every GlaS split's images
    testb = {p for name, (p, _) in groups.items() if name.startswith("testB")}
    malignant = sorted(n for n in by_name[0] if groups[n][1] == "malignant")
    subsets = {"malignant, testB's patients": [n for n in malignant if groups[n][0] in testb],
               "malignant, pooled": malignant}
    print(f"{args.first} -> {args.second} ({args.draws} paired draws, images resampled within each patient)")
    for label, names in subsets.items():
        a, b = ([rows[n] for n in names] for rows in by_name)
        diff, low, high = paired_bootstrap(a, b, [groups[n][0] for n in names], args.draws, args.seed)
        print(f"{label} ({len(names)} images): {figure(a):.3f} -> {figure(b):.3f}, "
              f"difference {diff:+.3f} (95 % interval {low:+.3f} to {high:+.3f})")


if __name__ == "__main__":
    main()
