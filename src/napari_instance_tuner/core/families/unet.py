"""What the U-Net families (three-branch, layering) share: sigmoid maps from tiled inference, the U-Net
architecture options, and fine-tuning with a frozen encoder."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..family import Family, Maps
from ..inference.predict import predict_image
from ..training.options import option
from . import base_channels_option


@dataclass
class UNetTrainOptions:
    """Architecture options of a U-Net family (``train --base-channels/--depth/--conv-type/--norm``)."""

    base_channels: int = base_channels_option()
    depth: int = option(4, "--depth", "U-Net levels", type=int, range=(1, 8), architecture=True)
    conv_type: str = option("separable", "--conv-type", "convolution type of the U-Net blocks",
                            choices=("standard", "separable", "space_depth_separable"), architecture=True)
    norm: str = option("batch", "--norm", "normalisation layers", choices=("batch", "group"), architecture=True)

    def architecture(self) -> dict:
        """The architecture keys these options set (the family's config class completes them)."""
        return {"base_channels": self.base_channels, "depth": self.depth, "conv_type": self.conv_type,
                "norm": self.norm}


class UNetFamily(Family):
    """A family whose network is a U-Net with one sigmoid output channel per map (see :mod:`.blocks`)."""

    @abstractmethod
    def network_classes(self) -> tuple[type, type]:
        """``(config dataclass, network class)`` of the family's :mod:`model` module."""

    @abstractmethod
    def out_channels(self, model) -> int:
        """Output channels of ``model``."""

    @abstractmethod
    def maps_from_stack(self, model, stack: np.ndarray) -> Maps:
        """:class:`Maps` from the float32 (C, H, W) sigmoid outputs at the image's size."""

    def build_model(self, config: dict):
        """An untrained network for an architecture dict (see the family's config class)."""
        config_class, network = self.network_classes()
        return network(config_class.from_dict(config))

    def architecture(self, options: dict, in_channels: int) -> dict:
        """A complete architecture dict of the family's config class (raises ValueError on bad options)."""
        config_class, _ = self.network_classes()
        return config_class.from_dict({"in_channels": in_channels, **options}).to_dict()

    def network_maps(self, model, image: np.ndarray, meta: dict, **run: Any):
        """Normalise and rescale ``image`` as ``meta`` says, run tiled inference, resize maps back
        (:func:`~..inference.predict.predict_image`); the family names the channels (:meth:`maps_from_stack`)."""
        stack = yield from predict_image(model, image, meta, out_channels=self.out_channels(model), **run)
        return self.maps_from_stack(model, stack)
