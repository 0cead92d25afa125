"""An ensemble checkpoint's maps against the mean of its members' maps, and ONNX Runtime's against torch's.

Usage: python benchmarks/ensemble_parity.py IMAGE ENSEMBLE MEMBER [MEMBER ...]

e.g. ``python benchmarks/ensemble_parity.py ../shared/data/glas/train/images/train_1.png three-branch-glas-v10
three-branch-glas-v8 checkpoints/glas-effl2-all.safetensors`` (the check made before v10 shipped; v9 was checked the
same way by hand in session 23). Prints the largest absolute difference of each map; both should be float rounding
(about 1e-6).
"""

from __future__ import annotations

import argparse

import imageio.v3 as iio
import numpy as np

from napari_instance_tuner.core.inference.runtime import load_for_runtime
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import run


def maps_of(loaded, image: np.ndarray) -> dict[str, np.ndarray]:
    """The float32 (H, W) maps of ``loaded`` on ``image``, by name."""
    return run(loaded.family.predict_maps(loaded.model, image, loaded.meta)).arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("ensemble", help="shipped name or checkpoint path")
    parser.add_argument("members", nargs="+", help="its members, shipped names or checkpoint paths, in order")
    args = parser.parse_args()
    image = iio.imread(args.image)
    print(f"{args.image}: {image.shape} {image.dtype}")
    ensemble = maps_of(load_model(args.ensemble), image)
    members = [maps_of(load_model(member), image) for member in args.members]
    onnx = maps_of(load_for_runtime(args.ensemble, "onnx"), image)
    print(f"{'map':<12}{'vs members mean':>18}{'onnx vs torch':>16}")
    for key, value in ensemble.items():
        mean = np.mean([member[key] for member in members], axis=0)
        print(f"{key:<12}{np.abs(value - mean).max():>18.2e}{np.abs(value - onnx[key]).max():>16.2e}")


if __name__ == "__main__":
    main()
