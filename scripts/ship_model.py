"""Copy a trained checkpoint into the package's weights folder and write its model card.

Usage: python scripts/ship_model.py CHECKPOINT --name three-branch-glas-v8 --sample glands \
           --card-json scripts/cards/three-branch-glas-v8.json --kfold-json runs/kfold-d5.json \
           --pixel-size-um 0.62 --test-time-flips 1 --default-for rgb

The card gathers what the checkpoint's metadata recorded (data, split, command, wall time, validation
metrics, the targets it trained on), the text fields of ``--card-json`` (summary, data, commands, notes: a
file kept in ``scripts/cards/`` so that a card can be made again), the held-out test figures of
``benchmarks/glas_accuracy.py --json`` (``--test-json``) and the figures by patient of
``benchmarks/glas_lopo_tuning.py --json`` (``--kfold-json``: pooled and per grade, the malignant images of
the patients GlaS testB also holds, each of those patients, and each split alone).

``--default-for KIND`` makes the model the one proposed for images of that kind (``rgb``, ``grey``) and takes
the kind from every other card that had it. An existing model of the same name is replaced only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from napari_instance_tuner.core.io.checkpoint import (
    WEIGHTS_DIR,
    file_sha256,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

GRADES = ("all", "benign", "malignant")


def _figures(metrics: dict) -> dict:
    """Object F1, object Dice (3 decimals) and object Hausdorff (whole pixels) of one metrics dict."""
    return {"object_f1": round(metrics["object_f1"], 3), "object_dice": round(metrics["object_dice"], 3),
            "object_hausdorff": round(metrics["object_hausdorff"])}


def figures_by_patient(kfold: dict, rule: str = "all") -> dict:
    """The card's ``validation_by_patient`` from a ``glas_lopo_tuning.py --json`` result.

    Parameters
    ----------
    kfold : dict
        The JSON the benchmark wrote (keys ``all`` or another rule, ``by_split``).
    rule : str
        The tuning rule whose figures are reported (the one ``train`` uses: ``all``).

    Returns
    -------
    dict
        Per grade (``all``, ``benign``, ``malignant``), ``testB_patients_malignant`` (with its patients),
        ``patient_<id>_malignant`` for each of them, and ``<split>_<grade>`` for the malignant and pooled images
        of each split (``validation_images``, ``testA``); grades without images are left out.
    """
    result = kfold[rule]
    pooled = result["leave_one_patient_out"]
    out = {grade: _figures(pooled[grade]) for grade in GRADES if pooled.get(grade)}
    testb = result.get("testB_patients")
    if testb and testb["figures"].get("malignant"):
        patients = [p for p in testb["patients"] if "malignant" in result["by_patient"].get(p, {})]
        out["testB_patients_malignant"] = {"patients": patients, **_figures(testb["figures"]["malignant"])}
        for patient in patients:
            out[f"patient_{patient}_malignant"] = _figures(result["by_patient"][patient]["malignant"])
    splits = kfold.get("by_split", {}).get(rule, {})
    for split, label in (("validation", "validation_images"), ("extra", "testA")):
        for grade in ("malignant", "all"):
            if splits.get(split, {}).get(grade):
                out[f"{label}_{grade}"] = _figures(splits[split][grade])
    return out


def take_default(weights_dir: Path, name: str, kinds: list[str]) -> list[str]:
    """Remove ``kinds`` from the ``default_for`` of every card but ``name``'s; the names of the cards changed."""
    changed = []
    for path in sorted(weights_dir.glob("*.json")):
        if path.stem == name:
            continue
        card = json.loads(path.read_text())
        kept = [kind for kind in card.get("default_for", []) if kind not in kinds]
        if kept != card.get("default_for", kept):
            if kept:
                card["default_for"] = kept
            else:
                card.pop("default_for")
            path.write_text(json.dumps(card, indent=1) + "\n")
            changed.append(path.stem)
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--card-json", help="JSON object of card text fields (summary, trained_on, command, notes)")
    parser.add_argument("--test-json", help="output of benchmarks/glas_accuracy.py --json")
    parser.add_argument("--test-split", default="glas/testA")
    parser.add_argument("--kfold-json", help="output of benchmarks/glas_lopo_tuning.py --json")
    parser.add_argument("--kfold-rule", default="all", help="its tuning rule whose figures the card gives")
    parser.add_argument("--trained-on", help="what it trained on (else from --card-json)")
    parser.add_argument("--summary", help="one line (else from --card-json)")
    parser.add_argument("--sample", help="synthetic sample this model suits (glands, nuclei, worms)")
    parser.add_argument("--pixel-size-um", type=float, help="µm per pixel of its training images, set in its metadata")
    parser.add_argument("--test-time-flips", type=int, choices=(1, 2, 4), help="flip sets averaged at inference")
    parser.add_argument("--default-for", action="append", default=[], help="image kind it is proposed for (rgb, grey)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--overwrite", action="store_true", help="replace a shipped model of the same name")
    args = parser.parse_args(argv)
    text = json.loads(Path(args.card_json).read_text()) if args.card_json else {}
    for key in ("summary", "trained_on"):
        if getattr(args, key) is not None:
            text[key] = getattr(args, key)
        elif key not in text:
            parser.error(f"--{key.replace('_', '-')} or a {key!r} field in --card-json is required")
    target = args.weights_dir / f"{args.name}.safetensors"
    if target.exists() and not args.overwrite:
        parser.error(f"{target} exists: pass --overwrite to replace it")
    state, meta = read_checkpoint(args.checkpoint)
    changes = {"name": args.name, "pixel_size_um": args.pixel_size_um, "test_time_flips": args.test_time_flips}
    changes = {key: value for key, value in changes.items() if value is not None and meta.get(key) != value}
    if changes:
        save_checkpoint(target, state, {**meta, **changes}, half=True)
        meta.update(changes)
    else:
        shutil.copyfile(args.checkpoint, target)
    training = meta.get("training", {})
    metrics = meta.get("metrics", {})
    card = {
        "name": args.name,
        "family": meta["family"],
        "summary": text.pop("summary"),
        "trained_on": text.pop("trained_on"),
        "sample": args.sample,
        **({"default_for": args.default_for} if args.default_for else {}),
        "sha256": file_sha256(target),
        "size_bytes": target.stat().st_size,
        "architecture": meta["architecture"],
        "pixel_scale": meta.get("pixel_scale"),
        "pixel_size_um": meta.get("pixel_size_um"),
        "parameters": None,
        "train_images": len(training.get("train_images", [])),
        "validation_images": training.get("val_images", []),
        "command": training.get("command"),
        "train_seconds": training.get("train_seconds"),
        "wall_seconds": training.get("wall_seconds"),
        "best_epoch": training.get("best_epoch"),
        "stopped": training.get("stopped"),
        "postprocess": meta.get("postprocess"),
        **({"autotune": training["autotune"]} if "autotune" in training else {}),
        "validation": metrics.get("validation") or metrics.get("cross_fit"),
        "test_time_flips": meta.get("test_time_flips", 1),
        **{key: training[key] for key in ("augment", "targets") if key in training},
    }
    if args.kfold_json:
        card["validation_by_patient"] = figures_by_patient(json.loads(Path(args.kfold_json).read_text()),
                                                           args.kfold_rule)
    if args.test_json:
        card["test"] = {"split": args.test_split, **json.loads(Path(args.test_json).read_text())}
    card.update(text)  # the text file has the last word (e.g. a hand-written command for a resumed run)
    card["parameters"] = sum(p.numel() for p in load_model(target).model.parameters())
    (args.weights_dir / f"{args.name}.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"shipped {target} ({card['size_bytes'] / 1e6:.1f} MB) and its card")
    for other in take_default(args.weights_dir, args.name, args.default_for):
        print(f"{other} is no longer the default for {', '.join(args.default_for)} images")


if __name__ == "__main__":
    main()
