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

from napari_instance_tuner.core.autotune import autotune
from napari_instance_tuner.core.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.data import load_split, read_groups
from napari_instance_tuner.core.jobs import evaluate_samples, summarise
from napari_instance_tuner.core.params import params_to_dict
from napari_instance_tuner.core.progress import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the training data folder the checkpoint was trained on")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", help="new model name (default: keep)")
    args = parser.parse_args()
    loaded = load_model(args.checkpoint)
    meta, family = dict(loaded.meta), loaded.family
    names = set(meta["training"]["val_images"])
    samples = [s for s in load_split(args.data) if s.name in names]
    if len(samples) != len(names):
        raise SystemExit(f"found {len(samples)} of the {len(names)} validation images in {args.data}")
    maps = [run(family.predict_maps(loaded.model, s.image, meta)) for s in samples]
    params, before, after = run(autotune(family.postprocess, maps, [s.reference for s in samples],
                                         family.default_params(meta), family.score))
    meta["postprocess"] = params_to_dict(params)
    meta["training"]["autotune"] = {"score_before": before, "score_after": after, "on": "validation split"}
    rows = run(evaluate_samples(loaded, samples, params))
    meta["metrics"] = {"validation": summarise(rows, read_groups(args.data))}
    if args.name:
        meta["name"] = args.name
    save_checkpoint(args.out, loaded.model.state_dict(), meta, half=True)
    print(f"score {before:.4f} -> {after:.4f}; saved {args.out}")


if __name__ == "__main__":
    main()
