"""Three-branch family: registry entry point tying model, inference and post-processing together."""

from __future__ import annotations

from ...family import Instances, Maps
from ...io.bioimageio_network import PackageNetwork
from .. import UNET_CITATION, unet_package
from ..unet import UNetFamily
from .postprocess import ThreeBranchParams, postprocess
from .train import ThreeBranchTrainOptions, finetune_batches, train_three_branch


class ThreeBranchFamily(UNetFamily):
    """Foreground + boundary + centroid U-Net (three-branch-glas paper)."""

    name = "three-branch"
    map_names = ("foreground", "boundary", "centroid")
    Params = ThreeBranchParams
    TrainOptions = ThreeBranchTrainOptions
    keeps_overlaps = False
    example_model = "three-branch-glas"
    elastic_augmentation = True
    package_callable = "ThreeBranchMaps"
    citations = (
        {"text": "Malík P. et al. Instance segmentation model created from three semantic segmentations of mask, "
                 "boundary and centroid pixels verified on GlaS dataset.",
         "url": "https://scholar.google.com/scholar?q=Instance+segmentation+model+created+from+three+semantic+"
                "segmentations+of+mask+boundary+and+centroid+pixels+verified+on+GlaS+dataset"},
        UNET_CITATION,
    )

    def network_classes(self):
        """:class:`~.model.ThreeBranchConfig` and :class:`~.model.ThreeBranchUNet`."""
        from .model import ThreeBranchConfig, ThreeBranchUNet  # deferred: torch

        return ThreeBranchConfig, ThreeBranchUNet

    def out_channels(self, model) -> int:
        """One channel per branch."""
        return len(model.config.branches)

    def maps_from_stack(self, model, stack) -> Maps:
        """float32 (H, W) maps named after the model's branches (``meta["test_time_flips"]``: 1, 2 or 4
        mirrored copies averaged, see :func:`~...inference.predict.predict_image`)."""
        return Maps(arrays=dict(zip(model.config.branches, stack)))

    def package_network(self, meta: dict) -> PackageNetwork:
        """The U-Net with a sigmoid: one output channel per branch, probabilities in [0, 1]."""
        config_class, _ = self.network_classes()
        config = config_class.from_dict(meta["architecture"])
        return unet_package(
            "napari_instance_tuner.core.families.three_branch.model",
            "ThreeBranchUNet(ThreeBranchConfig.from_dict(architecture))", self.package_callable, config,
            tuple(config.branches),
            notes="Any bioimage.io consumer (bioimageio.core, deepImageJ, ilastik) can run the network and get the "
                  "foreground, boundary and centroid probability maps. Instances need the five-step "
                  "post-processing of napari-instance-tuner, whose parameters are in `config.napari_instance_tuner`.",
            dependencies=("napari_instance_tuner.core.families.efficientnet_lite",),
        )

    def train(self, train_samples, val_samples, meta, options, *, resume_path=None, cancel=None):
        """Train on GlaS-style samples (see :func:`.train.train_three_branch`); records the target widths."""
        return (yield from train_three_branch(
            self, train_samples, val_samples, meta, options.train, crop=options.crop, batch_size=options.batch_size,
            targets=options.family_options.targets(), augment=options.augment_config(),
            encoder_weights=options.family_options.encoder_weights, device=options.device,
            resume_path=resume_path, cancel=cancel,
        ))

    def default_loss(self):
        """Weighted binary cross-entropy per branch (:func:`.loss.weighted_bce`)."""
        from .loss import weighted_bce  # deferred: torch

        return weighted_bce

    def finetune_batches(self, model, meta, pairs, settings):
        """Crops of the corrected images with their foreground/boundary/centroid targets."""
        return finetune_batches(model, meta, pairs, settings)

    def frozen_part(self, model):
        """The encoder fine-tuning keeps fixed; of an ensemble (``config.members`` > 1), every member's."""
        if model.config.members == 1:
            return model.encoder
        from torch import nn  # deferred: torch

        return nn.ModuleList(member.encoder for member in model.members)

    def postprocess(self, maps: Maps, params: ThreeBranchParams) -> Instances:
        """See :func:`.postprocess.postprocess`."""
        return postprocess(maps, params)
