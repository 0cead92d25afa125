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

from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split, read_groups
from napari_instance_tuner.core.training.jobs import tune_and_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the training data folder the checkpoint was trained on")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", help="new model name (default: keep)")
    args = parser.parse_args()
    loaded = load_model(args.checkpoint)
    meta = dict(loaded.meta)
    names = set(meta["training"]["val_images"])
    samples = [s for s in load_split(args.data) if s.name in names]
    if len(samples) != len(names):
        raise SystemExit(f"found {len(samples)} of the {len(names)} validation images in {args.data}")
    run(tune_and_evaluate(loaded, meta, samples, read_groups(args.data)))
    before, after = meta["training"]["autotune"]["score_before"], meta["training"]["autotune"]["score_after"]
    if args.name:
        meta["name"] = args.name
    save_checkpoint(args.out, loaded.model.state_dict(), meta, half=True)
    print(f"score {before:.4f} -> {after:.4f}; saved {args.out}")


if __name__ == "__main__":
    main()
