"""Layering family: registry entry point tying model, inference, post-processing and training together."""

from __future__ import annotations

from ...family import Instances, Maps
from ...io.bioimageio_network import PackageNetwork
from .. import UNET_CITATION, unet_package
from ..unet import UNetFamily
from .postprocess import LayeringParams, postprocess
from .train import LayeringTrainOptions, finetune_batches, train_layering


class LayeringFamily(UNetFamily):
    """U-Net with a foreground output and N layering outputs (layering paper)."""

    name = "layering"
    map_names = ("foreground", "layers")
    Params = LayeringParams
    TrainOptions = LayeringTrainOptions
    keeps_overlaps = True
    train_example = "--family layering --data worms/train --out worms.safetensors"
    package_callable = "LayeringMaps"
    citations = (
        {"text": "Chen et al. Instance segmentation of dense and overlapping objects via layering.",
         "url": "https://scholar.google.com/scholar?q=Instance+segmentation+of+dense+and+overlapping+objects+via+"
                "layering"},
        UNET_CITATION,
    )

    def network_classes(self):
        """:class:`~.model.LayeringConfig` and :class:`~.model.LayeringUNet`."""
        from .model import LayeringConfig, LayeringUNet  # deferred: torch

        return LayeringConfig, LayeringUNet

    def out_channels(self, model) -> int:
        """The foreground and N layers."""
        return 1 + int(model.config.n_layers)

    def maps_from_stack(self, model, stack) -> Maps:
        """``arrays``: ``"foreground"`` and ``"layer_1"`` ... ``"layer_N"``, float32 (H, W) in [0, 1] at the
        input image's size; ``extra["layers"]`` is the same layers as one (N, H, W) array.

        Mirroring is off unless the checkpoint asks for it: a layer may encode orientation (the paper's
        figure 5), so averaging mirrored predictions can mix layers. Measured on BBBC010 validation
        (benchmarks/layering_tta.py): even with each copy's layers matched to the unmirrored copy's first,
        averaging 4 flips lowers mean AP from 0.638 to 0.565.
        """
        arrays = {"foreground": stack[0]}
        arrays.update({f"layer_{k + 1}": stack[k + 1] for k in range(len(stack) - 1)})
        return Maps(arrays=arrays, extra={"layers": stack[1:]})

    def package_network(self, meta: dict) -> PackageNetwork:
        """The U-Net with a sigmoid: channel 0 the foreground, channels 1..N the layers."""
        config_class, _ = self.network_classes()
        config = config_class.from_dict(meta["architecture"])
        return unet_package(
            "napari_instance_tuner.core.families.layering.model",
            "LayeringUNet(LayeringConfig.from_dict(architecture))",
            self.package_callable, config, ("foreground",) + tuple(f"layer_{k + 1}" for k in range(config.n_layers)),
            notes="Any bioimage.io consumer can run the network and get the foreground and the N layer "
                  "probability maps; instances are the connected components of each thresholded layer (the "
                  "paper's Algorithm 1), which napari-instance-tuner computes with the parameters in "
                  "`config.napari_instance_tuner`, keeping overlapping objects whole.",
        )

    def postprocess(self, maps: Maps, params: LayeringParams) -> Instances:
        """Algorithm 1, see :func:`.postprocess.postprocess`."""
        return postprocess(maps, params)

    def score(self, pred, reference) -> float:
        """Mean AP over IoU 0.5..0.9 (the paper's model-selection and headline metric)."""
        from ...evaluation.metrics import average_precision  # deferred: scipy/scikit-image

        return float(average_precision(pred, reference)["mean_ap"])

    def train(self, train_samples, val_samples, meta, options, *, resume_path=None, cancel=None):
        """Two-phase training, see :func:`.train.train_layering`."""
        return (yield from train_layering(self, train_samples, val_samples, meta, options, resume_path=resume_path,
                                          cancel=cancel))

    def default_loss(self):
        """Phase 1 of equation (1): L_foreground + L_layering (:class:`.loss.LayeringLoss`)."""
        from .loss import LayeringLoss  # deferred: torch

        return LayeringLoss(phase=1)

    def finetune_loss(self):
        """The phase-2 loss (equation 1 with L_overlap)."""
        from .loss import LayeringLoss  # deferred: torch

        return LayeringLoss(phase=2)

    def finetune_batches(self, model, meta, pairs, settings):
        """Crops of the corrected images with their object masks."""
        return finetune_batches(model, meta, pairs, settings)
