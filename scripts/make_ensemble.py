"""Assemble three-branch checkpoints trained apart into one ensemble checkpoint, and auto-tune it.

The members must share the architecture, pixel scale, normalisation and validation images
(:func:`napari_instance_tuner.core.training.ensemble.assemble`); the ensemble's network averages their sigmoid
outputs. Its post-processing is then auto-tuned on the shared validation images as ``train`` does, and the
validation figures are recorded per grade:

    python scripts/make_ensemble.py three-branch-glas-v3 checkpoints/glas-levers.safetensors \\
        checkpoints/glas-long.safetensors checkpoints/glas-control.safetensors \\
        --data ../shared/data/glas/train --out checkpoints/three-branch-glas-v4.safetensors \\
        --name three-branch-glas-v4

Members trained on every image (``--val-fraction 0``) have no validation images left; their ensemble is tuned on the
cross-fitted maps of each member's recipe (``retune_checkpoint.py --cross-fit/--also-cross-fit``), as the k-fold
``benchmarks/glas_lopo_tuning.py --cross-fit A B --also-cross-fit C D`` validated it (v9, session 23):

    python scripts/make_ensemble.py three-branch-glas-v8 checkpoints/glas-effl0-all.safetensors \
        --data ../shared/data/glas/train --extra-data ../shared/data/glas/testA \
        --cross-fit checkpoints/glas-d5-xfitA.safetensors checkpoints/glas-d5-xfitB.safetensors \
        --also-cross-fit checkpoints/glas-effl0-xfitA.safetensors checkpoints/glas-effl0-xfitB.safetensors \
        --from-defaults --exclude split_radius --out checkpoints/three-branch-glas-v9.safetensors \
        --name three-branch-glas-v9
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from retune_checkpoint import retune, retune_cross_fit

from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.training.ensemble import assemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", help="shipped names or checkpoint paths (2 to 8)")
    parser.add_argument("--data", required=True, help="the split holding the members' validation images")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--extra-data", help="a split no member trained on, added to the tuning images")
    parser.add_argument("--cross-fit", nargs="+", metavar="MODEL",
                        help="tune on the cross-fitted maps of the first member's recipe (retune_checkpoint.py)")
    parser.add_argument("--also-cross-fit", nargs="+", metavar="MODEL",
                        help="the second member's recipe's halves, whose cross-fitted maps are averaged in")
    parser.add_argument("--exclude", default="", metavar="NAME[,NAME]", help="parameters the search leaves out")
    parser.add_argument("--from-defaults", action="store_true", help="search from the family's default parameters")
    args = parser.parse_args()
    if args.also_cross_fit and not args.cross_fit:
        parser.error("--also-cross-fit needs --cross-fit")
    loaded = assemble([load_model(m) for m in args.members], args.name)
    how = {"exclude": [n for n in args.exclude.split(",") if n], "from_defaults": args.from_defaults}
    if args.cross_fit:
        also = [load_model(m) for m in args.also_cross_fit] if args.also_cross_fit else None
        before, after = retune_cross_fit(loaded, [load_model(m) for m in args.cross_fit], args.data,
                                         args.extra_data, also=also, **how)
    else:
        before, after = retune(loaded, args.data, args.extra_data, **how)
    save_checkpoint(args.out, loaded.model.state_dict(), loaded.meta, half=True)
    print(f"{len(args.members)} members; tuned score {before:.4f} -> {after:.4f}; saved {args.out}")


if __name__ == "__main__":
    main()
