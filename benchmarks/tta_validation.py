"""Does test-time flip averaging help? Measured on the model's own validation images, never on a test split.

For 1 and 4 flips: predict the validation images, auto-tune the post-processing (the same search training
ends with), and print the validation score (mean of object F1 and object Dice) before and after tuning.
With ``--write OUT`` the better setting and its tuned parameters are stored in a copy of the checkpoint.

Usage: python benchmarks/tta_validation.py --model CKPT --val-data ../shared/data/glas/train [--write OUT]
"""

from __future__ import annotations

import argparse
import time

from napari_instance_tuner.core.evaluation.autotune import autotune
from napari_instance_tuner.core.io.checkpoint import load_model, read_checkpoint, save_checkpoint
from napari_instance_tuner.core.params import params_to_dict
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.training.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--val-data", required=True)
    parser.add_argument("--write")
    args = parser.parse_args()
    loaded = load_model(args.model)
    samples = load_split(args.val_data, names=loaded.meta["training"]["val_images"])
    start = loaded.family.default_params(loaded.meta)
    results = {}
    print(f"{'flips':>6}{'seconds/image':>15}{'score (model params)':>22}{'score (re-tuned)':>18}")
    for flips in (1, 4):
        meta = {**loaded.meta, "test_time_flips": flips}
        t0 = time.perf_counter()
        maps = [run(loaded.family.predict_maps(loaded.model, s.image, meta)) for s in samples]
        seconds = (time.perf_counter() - t0) / len(samples)
        best, before, after = run(autotune(loaded.family.postprocess, maps, [s.labels for s in samples], start,
                                           loaded.family.score))
        results[flips] = (after, best)
        print(f"{flips:>6}{seconds:>15.2f}{before:>22.4f}{after:>18.4f}")
    flips = max(results, key=lambda k: results[k][0])
    print(f"better on validation: {flips} flip(s)")
    if args.write:
        state, meta = read_checkpoint(args.model)
        meta.pop("format_version", None)
        meta["test_time_flips"] = flips
        meta["postprocess"] = params_to_dict(results[flips][1])
        meta.setdefault("training", {})["tta_validation"] = {str(k): v[0] for k, v in results.items()}
        save_checkpoint(args.write, state, meta, half=True)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
