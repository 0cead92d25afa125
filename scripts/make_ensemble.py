"""Assemble three-branch checkpoints trained apart into one ensemble checkpoint, and auto-tune it.

The members must share the architecture, pixel scale, normalisation and validation images
(:func:`napari_instance_tuner.core.training.ensemble.assemble`); the ensemble's network averages their sigmoid
outputs. Its post-processing is then auto-tuned on the shared validation images as ``train`` does, and the
validation figures are recorded per grade:

    python scripts/make_ensemble.py three-branch-glas-v3 checkpoints/glas-levers.safetensors \\
        checkpoints/glas-long.safetensors checkpoints/glas-control.safetensors \\
        --data ../shared/data/glas/train --out checkpoints/three-branch-glas-v4.safetensors \\
        --name three-branch-glas-v4
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from retune_checkpoint import retune

from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
from napari_instance_tuner.core.training.ensemble import assemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", help="shipped names or checkpoint paths (2 to 8)")
    parser.add_argument("--data", required=True, help="the split holding the members' validation images")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--extra-data", help="a split no member trained on, added to the tuning images")
    args = parser.parse_args()
    loaded = assemble([load_model(m) for m in args.members], args.name)
    before, after = retune(loaded, args.data, args.extra_data)
    save_checkpoint(args.out, loaded.model.state_dict(), loaded.meta, half=True)
    print(f"{len(args.members)} members; tuned score {before:.4f} -> {after:.4f}; saved {args.out}")


if __name__ == "__main__":
    main()
