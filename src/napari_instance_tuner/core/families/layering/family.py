"""Layering family: registry entry point tying model, inference, post-processing and training together."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ...family import Family, Instances, Maps
from ...inference import predict_image
from ...io.bioimageio_network import PackageNetwork
from .. import UNET_CITATION, unet_package
from ...progress import CancelToken, Progress
from .postprocess import LayeringParams, postprocess


class LayeringFamily(Family):
    """U-Net with a foreground output and N layering outputs (layering paper)."""

    name = "layering"
    map_names = ("foreground", "layers")
    Params = LayeringParams
    package_callable = "LayeringMaps"
    citations = (
        {"text": "Chen et al. Instance segmentation of dense and overlapping objects via layering.",
         "url": "https://scholar.google.com/scholar?q=Instance+segmentation+of+dense+and+overlapping+objects+via+"
                "layering"},
        UNET_CITATION,
    )

    def build_model(self, config: dict):
        """A :class:`~.model.LayeringUNet` for an architecture dict (see ``LayeringConfig``)."""
        from .model import LayeringConfig, LayeringUNet

        return LayeringUNet(LayeringConfig.from_dict(config))

    def predict_maps(
        self,
        model,
        image: np.ndarray,
        meta: dict,
        *,
        device: str | None = None,
        tile_size: int | None = None,
        cancel: CancelToken | None = None,
    ) -> Generator[Progress, None, Maps]:
        """Normalise and rescale ``image`` as ``meta`` says, run tiled inference, resize maps back.

        Returns
        -------
        Maps
            ``arrays``: ``"foreground"`` and ``"layer_1"`` ... ``"layer_N"``, float32 (H, W) in [0, 1] at the
            input image's size; ``extra["layers"]`` is the same layers as one (N, H, W) array.
        """
        n_layers = int(model.config.n_layers)
        # Mirroring is off unless the checkpoint asks for it: a layer may encode orientation (the paper's
        # figure 5), so averaging mirrored predictions can mix layers. Measured on BBBC010 validation
        # (benchmarks/layering_tta.py): even with each copy's layers matched to the unmirrored copy's first,
        # averaging 4 flips lowers mean AP from 0.638 to 0.565.
        stack = yield from predict_image(model, image, meta, out_channels=1 + n_layers, device=device,
                                         tile_size=tile_size, cancel=cancel)
        arrays = {"foreground": stack[0]}
        arrays.update({f"layer_{k + 1}": stack[k + 1] for k in range(n_layers)})
        return Maps(arrays=arrays, extra={"layers": stack[1:]})

    def package_network(self, meta: dict) -> PackageNetwork:
        """The U-Net with a sigmoid: channel 0 the foreground, channels 1..N the layers."""
        from .model import LayeringConfig

        config = LayeringConfig.from_dict(meta["architecture"])
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
        from ...metrics import average_precision

        return float(average_precision(pred, reference)["mean_ap"])

    def architecture(self, options: dict, in_channels: int) -> dict:
        """A complete :class:`~.model.LayeringConfig` dict (raises ValueError on bad options)."""
        from .model import LayeringConfig

        return LayeringConfig.from_dict({"in_channels": in_channels, **options}).to_dict()

    def train(self, train_samples, val_samples, meta, options, *, resume_path=None, cancel=None):
        """Two-phase training, see :func:`.train.train_layering`."""
        from .train import train_layering

        return (yield from train_layering(train_samples, val_samples, meta, options, resume_path=resume_path,
                                          cancel=cancel))

    def finetune_setup(self, model, meta, pairs, settings):
        """Crops of the corrected images with their object masks; the phase-2 loss (eq. 1 with L_overlap)."""
        from .loss import LayeringLoss
        from .train import finetune_batches

        params = None
        if settings.freeze_encoder:
            model.encoder.requires_grad_(False)
            params = [p for p in model.parameters() if p.requires_grad]
        return finetune_batches(model, meta, pairs, settings), LayeringLoss(phase=2), params
