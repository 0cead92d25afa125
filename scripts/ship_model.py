"""Copy a trained checkpoint into the package's weights folder and write its model card.

Usage: python scripts/ship_model.py CHECKPOINT --name three-branch-glas --test-json testA.json \
           --trained-on "GlaS train" --summary "..."
The card gathers what the checkpoint's metadata recorded (data, split, command, wall time, validation
metrics) and the held-out test figures measured by benchmarks/glas_accuracy.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from napari_instance_tuner.core.io.checkpoint import WEIGHTS_DIR, file_sha256, read_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--test-json", help="output of benchmarks/glas_accuracy.py --json")
    parser.add_argument("--test-split", default="glas/testA")
    parser.add_argument("--trained-on", required=True)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--sample", help="synthetic sample this model suits (glands, nuclei, worms)")
    args = parser.parse_args()
    _, meta = read_checkpoint(args.checkpoint)
    target = WEIGHTS_DIR / f"{args.name}.safetensors"
    shutil.copyfile(args.checkpoint, target)
    training = meta.get("training", {})
    card = {
        "name": args.name,
        "family": meta["family"],
        "summary": args.summary,
        "trained_on": args.trained_on,
        "sample": args.sample,
        "sha256": file_sha256(target),
        "size_bytes": target.stat().st_size,
        "architecture": meta["architecture"],
        "pixel_scale": meta.get("pixel_scale"),
        "parameters": None,
        "train_images": len(training.get("train_images", [])),
        "validation_images": training.get("val_images", []),
        "command": training.get("command"),
        "train_seconds": training.get("train_seconds"),
        "wall_seconds": training.get("wall_seconds"),
        "best_epoch": training.get("best_epoch"),
        "stopped": training.get("stopped"),
        "postprocess": meta.get("postprocess"),
        "validation": meta.get("metrics", {}).get("validation"),
    }
    from napari_instance_tuner.core.io.checkpoint import load_model

    card["parameters"] = sum(p.numel() for p in load_model(target).model.parameters())
    if args.test_json:
        card["test"] = {"split": args.test_split, **json.loads(Path(args.test_json).read_text())}
    (WEIGHTS_DIR / f"{args.name}.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"shipped {target} ({card['size_bytes'] / 1e6:.1f} MB) and its card")


if __name__ == "__main__":
    main()
