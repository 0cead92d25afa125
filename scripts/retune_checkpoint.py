"""Auto-tune a checkpoint's post-processing on its own validation images and record the validation metrics.

What ``train`` does after training, for checkpoints trained with ``--no-autotune`` (for example several
variants trained side by side on a GPU, compared with the default post-processing first):

    python scripts/retune_checkpoint.py checkpoints/gpu2/Mbase.safetensors --data ../shared/data/dsb2018/train \\
        --out checkpoints/maskrcnn-dsb2018.safetensors --name maskrcnn-dsb2018

The validation images are those the checkpoint's metadata names (``training.val_images``); the metric is the
family's selection score (:meth:`Family.score`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split, read_groups
from napari_instance_tuner.core.training.ensemble import trained_images
from napari_instance_tuner.core.training.jobs import tune_and_evaluate


def retune(loaded, data: str, extra: str | None = None) -> tuple[float, float]:
    """Auto-tune ``loaded``'s post-processing on its validation images found in ``data`` (plus every image of the
    split ``extra``, which the model must never have trained on) and record the metrics on those images, in
    ``loaded.meta``; returns the score before and after tuning."""
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
    run(tune_and_evaluate(loaded, loaded.meta, samples, groups))
    tuned = loaded.meta["training"]["autotune"]
    if extra:
        tuned["on"] = f"validation split + {len(more)} images of {Path(extra).name}"
        loaded.meta["training"]["tuning_images"] = [s.name for s in samples]
    return tuned["score_before"], tuned["score_after"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the training data folder the checkpoint was trained on")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", help="new model name (default: keep)")
    parser.add_argument("--extra-data", help="a split the model never trained on, added to the tuning images")
    args = parser.parse_args()
    loaded = load_model(args.checkpoint)
    before, after = retune(loaded, args.data, args.extra_data)
    if args.name:
        loaded.meta["name"] = args.name
    save_checkpoint(args.out, loaded.model.state_dict(), loaded.meta, half=True)
    print(f"score {before:.4f} -> {after:.4f}; saved {args.out}")


if __name__ == "__main__":
    main()
