"""Three-branch family: registry entry point tying model, inference and post-processing together."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ...family import Family, Instances, Maps
from ...inference import predict_image
from ...io.bioimageio_network import PackageNetwork
from .. import UNET_CITATION, unet_package
from ...progress import CancelToken, Progress
from .postprocess import ThreeBranchParams, postprocess


class ThreeBranchFamily(Family):
    """Foreground + boundary + centroid U-Net (three-branch-glas paper)."""

    name = "three-branch"
    map_names = ("foreground", "boundary", "centroid")
    Params = ThreeBranchParams
    elastic_augmentation = True
    package_callable = "ThreeBranchMaps"
    citations = (
        {"text": "Malík P. et al. Instance segmentation model created from three semantic segmentations of mask, "
                 "boundary and centroid pixels verified on GlaS dataset.",
         "url": "https://scholar.google.com/scholar?q=Instance+segmentation+model+created+from+three+semantic+"
                "segmentations+of+mask+boundary+and+centroid+pixels+verified+on+GlaS+dataset"},
        UNET_CITATION,
    )

    def build_model(self, config: dict):
        """A :class:`~.model.ThreeBranchUNet` for an architecture dict (see ``ThreeBranchConfig``)."""
        from .model import ThreeBranchConfig, ThreeBranchUNet

        return ThreeBranchUNet(ThreeBranchConfig.from_dict(config))

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

        ``meta["test_time_flips"]`` (1, 2 or 4; default 1) averages the maps over mirrored copies.

        Returns
        -------
        Maps
            float32 (H, W) maps named after the model's branches, at the input image's size.
        """
        branches = list(model.config.branches)
        probs = yield from predict_image(model, image, meta, out_channels=len(branches), device=device,
                                         tile_size=tile_size, cancel=cancel)
        arrays = dict(zip(branches, probs))
        return Maps(arrays=arrays)

    def package_network(self, meta: dict) -> PackageNetwork:
        """The U-Net with a sigmoid: one output channel per branch, probabilities in [0, 1]."""
        from .model import ThreeBranchConfig

        config = ThreeBranchConfig.from_dict(meta["architecture"])
        return unet_package(
            "napari_instance_tuner.core.families.three_branch.model",
            "ThreeBranchUNet(ThreeBranchConfig.from_dict(architecture))", self.package_callable, config,
            tuple(config.branches),
            notes="Any bioimage.io consumer (bioimageio.core, deepImageJ, ilastik) can run the network and get the "
                  "foreground, boundary and centroid probability maps. Instances need the five-step "
                  "post-processing of napari-instance-tuner, whose parameters are in `config.napari_instance_tuner`.",
        )

    def architecture(self, options: dict, in_channels: int) -> dict:
        """A complete :class:`~.model.ThreeBranchConfig` dict (raises ValueError on bad options)."""
        from .model import ThreeBranchConfig

        return ThreeBranchConfig.from_dict({"in_channels": in_channels, **options}).to_dict()

    def train(self, train_samples, val_samples, meta, options, *, resume_path=None, cancel=None):
        """Train on GlaS-style samples (see :func:`.train.train_three_branch`); records the target widths."""
        from .targets import TargetConfig
        from .train import train_three_branch

        targets = TargetConfig(**options.targets)
        meta["training"]["targets"] = targets.to_dict()
        return (yield from train_three_branch(
            train_samples, val_samples, meta, options.train, crop=options.crop, batch_size=options.batch_size,
            targets=targets, augment=options.augment_config(), device=options.device,
            resume_path=resume_path, cancel=cancel,
        ))

    def finetune_setup(self, model, meta, pairs, settings):
        """Crops of the corrected images with their foreground/boundary/centroid targets, weighted BCE."""
        from .loss import weighted_bce
        from .train import finetune_batches

        batches = finetune_batches(model, meta, pairs, settings)
        params = None
        if settings.freeze_encoder:
            model.encoder.requires_grad_(False)
            params = [p for p in model.parameters() if p.requires_grad]
        return batches, weighted_bce, params

    def postprocess(self, maps: Maps, params: ThreeBranchParams) -> Instances:
        """See :func:`.postprocess.postprocess`."""
        return postprocess(maps, params)
