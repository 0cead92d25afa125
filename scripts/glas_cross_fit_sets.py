"""Build the GlaS training sets of the cross-fitted recipes (sessions 15-26): ``glas-xfitA``, ``glas-xfitB``, ``glas-all``.

The shipped gland ensembles (v6 on) are validated and tuned on *cross-fitted* maps: two networks of one recipe
each continue the base network's training on run A's 69 images plus half of the 76 k-fold images (glas/train's 16
validation images plus the 60 of glas/testA), split along the k-fold's own patient folds, and each segments the
half it never saw (``benchmarks/glas_lopo_tuning.py --cross-fit``, ``scripts/retune_checkpoint.py --cross-fit``).
Until session 27 the folders were made by a scratch script that a new machine lost; this script makes them again,
from the same rules:

- the 16 validation images: ``core.training.data.validation_split`` of glas/train with ``train``'s default
  fraction (0.18) and split seed 0, whole patients (patients 1, 8, 13, 16);
- the 4 folds of the 76 images: ``core.training.data.patient_folds(..., 4)``, balanced by image count, as
  ``benchmarks/glas_lopo_tuning.py --folds 4`` makes them;
- ``glas-xfitA``: the 69 + folds 3 and 4 (it segments folds 1 and 2); ``glas-xfitB``: the 69 + folds 1 and 2;
  ``glas-all``: every train and testA image (145).

Each set is ``OUT/glas-<set>/train/{images,labels}`` of symbolic links to the data, with ``OUT/glas-<set>/Grade.csv``
holding the Grade.csv rows of its images (``train --data OUT/glas-<set>/train`` reads patients and grades there).
``--check MODEL`` compares the halves with the cross-fit record in a shipped ensemble's metadata (which images each
half segmented); the script exits with status 1 if they differ.

    python scripts/glas_cross_fit_sets.py ../shared/data/glas [--out runs/data] [--check three-branch-glas-v10]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from napari_instance_tuner.core.io.checkpoint import read_metadata, resolve_model_path
from napari_instance_tuner.core.training.data import list_images, patient_folds, read_groups, validation_split

#: ``train``'s default validation fraction and the split seed of every base network of the recipes.
VAL_FRACTION, SPLIT_SEED = 0.18, 0


def _names(split: Path) -> list[str]:
    """The image ids of a split folder in ``load_split``'s order (which the validation split depends on)."""
    return [p.stem for p in list_images(split / "images")]


def cross_fit_sets(glas: Path) -> tuple[dict[str, list[str]], dict[str, list[str]], list[list[str]]]:
    """The training images of each set, the images each half never trained on, and the 4 patient folds.

    Returns
    -------
    sets : dict
        ``{"xfitA": [...], "xfitB": [...], "all": [...]}``: image ids each set trains on.
    unseen : dict
        ``{"xfitA": [...], "xfitB": [...]}``: the k-fold images each half never trained on (the ones it segments).
    folds : list of list of str
        The patient ids of the 4 folds, in ``patient_folds``'s order.
    """
    train, test_a = _names(glas / "train"), _names(glas / "testA")
    groups = {**read_groups(glas / "train"), **read_groups(glas / "testA")}
    run_a, val = validation_split(train, VAL_FRACTION, SPLIT_SEED, read_groups(glas / "train"))
    kfold = val + test_a
    folds = patient_folds(kfold, groups, 4)
    in_folds = lambda which: [n for n in kfold if groups[n][0] in {p for k in which for p in folds[k]}]
    first, second = in_folds((0, 1)), in_folds((2, 3))
    sets = {"xfitA": run_a + second, "xfitB": run_a + first, "all": train + test_a}
    return sets, {"xfitA": first, "xfitB": second}, folds


def seen_patients(glas: Path, sets: dict[str, list[str]], unseen: dict[str, list[str]]) -> str:
    """A line on how far the k-fold is by patient for the networks: the k-fold images whose patient also has
    images in run A (which every network of the recipes trains on), per patient and grade.

    GlaS train and testA share patients, so the post-processing is tuned and validated by patient, but the base
    network has trained on other images of most testA patients (as the shipped networks have on every testB
    patient: testB's patients all have train images).
    """
    groups = {**read_groups(glas / "train"), **read_groups(glas / "testA")}
    kfold = unseen["xfitA"] + unseen["xfitB"]
    run_a = {groups[n][0] for n in set(sets["xfitA"]) & set(sets["xfitB"])}
    seen = [n for n in kfold if groups[n][0] in run_a]
    count: dict[tuple[str, str], int] = {}
    for n in seen:
        count[groups[n]] = count.get(groups[n], 0) + 1
    parts = ", ".join(f"patient {p} {g} {c}" for (p, g), c in sorted(count.items(), key=lambda i: (int(i[0][0]), i[0][1])))
    return f"k-fold images of patients run A also holds: {len(seen)} of {len(kfold)} ({parts})"


def write_set(glas: Path, out: Path, names: list[str]) -> int:
    """Link ``names`` (from glas/train and glas/testA) into ``out/train/{images,labels}``; write ``out/Grade.csv``.

    Links left by an earlier run are replaced, and those of images no longer in the set removed, so the folder
    holds exactly this set; a file that is not a link is never touched (refused where a link must go). Returns the
    number of images linked.
    """
    wanted = set(names)
    stem = lambda path: path.name.split(".")[0].removesuffix("_instances")
    for kind in ("images", "labels"):
        folder = out / "train" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.is_symlink():
                old.unlink()
        for split in ("train", "testA"):
            for src in sorted((glas / split / kind).iterdir()):
                if stem(src) in wanted:
                    if (folder / src.name).exists():
                        raise SystemExit(f"error: {folder / src.name} exists and is not a link; move it away first")
                    (folder / src.name).symlink_to(src.resolve())
    with open(glas / "Grade.csv", newline="") as fh:
        header, *body = list(csv.reader(fh))
    rows = [r for r in body if r and r[0].strip() in wanted]
    with open(out / "Grade.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return len(list((out / "train" / "images").iterdir()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("glas", type=Path, help="the GlaS folder (train/, testA/, Grade.csv)")
    parser.add_argument("--out", type=Path, default=Path("runs/data"))
    parser.add_argument("--check", metavar="MODEL", help="a shipped ensemble whose cross-fit record the halves must match")
    args = parser.parse_args()
    sets, unseen, folds = cross_fit_sets(args.glas)
    print("folds of the 76 k-fold images (patients): " + " | ".join(", ".join(f) for f in folds))
    print(seen_patients(args.glas, sets, unseen))
    for name, names in sets.items():
        count = write_set(args.glas, args.out / f"glas-{name}", names)
        print(f"glas-{name}: {len(names)} images ({count} linked) in {args.out / f'glas-{name}' / 'train'}")
    if args.check:
        records = read_metadata(resolve_model_path(args.check)).get("training", {}).get("cross_fit") or []
        if not records:
            parser.error(f"{args.check} records no cross-fitted tuning")
        half = lambda name: "xfitA" if name.endswith("xfitA") else "xfitB"
        bad = [f"{r['name']}: {len(set(r['images']) ^ set(unseen[half(r['name'])]))} images differ"
               for r in records if set(r["images"]) != set(unseen[half(r["name"])])]
        print(f"--check {args.check}: " + ("; ".join(bad) if bad else
              f"each of its {len(records)} halves segmented the images this split gives it"))
        sys.exit(1 if bad else 0)

if __name__ == "__main__":
    main()
