"""Training options and data of the Mask R-CNN family: random augmented crops with box/mask targets.

Training runs through the generic resumable loop :func:`~napari_instance_tuner.core.training.loop.fit` like
every family's: each step calls :meth:`~.family.MaskRCNNFamily.training_step`, which runs torchvision's
training-mode forward pass ``model(images, targets)`` (it computes its own losses, see :mod:`.loss`) under
the loop's autocast, so ``--amp`` works here as for the U-Nets. The batch is ``(x, TargetBatch, valid)``
(:mod:`.targets`); the model's state-dict keys stay torchvision's.

Deliberate differences from the papers:

- the optimiser defaults to the loop's Adam, which trains small models from scratch with less tuning;
  ``--optimizer sgd`` (momentum 0.9) or ``adamw`` are there (MaskPlus and torchvision's reference recipe use
  SGD, lr 0.02);
- MaskPlus *biased training* is an option: the mask loss is weighted by alpha (1.5) for the first
  ``biased_fraction`` of the steps, then by 1 (the paper does not say when it switches);
- MaskPlus's quasi-multitask auxiliary masks (14 x 14 and 56 x 56) and its improved boundary refinement
  are architecture options (:mod:`.maskplus`); their losses are summed with weight 1 and are not
  weighted by alpha. Contextual fusion and the deconvolutional pyramid module are not implemented.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np

from ...errors import InstanceTunerError
from ...evaluation.scoring import make_validator
from ...inference.image import resize_to
from ...progress import CancelToken, Progress
from ...training.augment import AugmentConfig, photometric, random_scale, random_symmetry
from ...training.data import Sample
from ...training.inside import mostly_inside
from ...training.loop import TrainConfig, TrainResult, fit, read_resume, seed_everything
from ...training.options import comma_ints, option, training_fields
from .. import base_channels_option, encoder_weights_option, init_weights_option
from .loss import DetectionLoss
from .targets import TargetBatch, targets_from_instances

#: ``--backbone``'s choices (:data:`.model.BACKBONES`, which needs torch to import).
LITE_BACKBONES = ("efficientnet_lite0_fpn", "efficientnet_lite2_fpn")
BACKBONE_CHOICES = ("tiny_fpn", "resnet18_fpn", "resnet50_fpn", *LITE_BACKBONES)


@dataclass(frozen=True)
class MaskRCNNTrainOptions:
    """Training options of the Mask R-CNN family (the CLI's ``--backbone`` ... ``--coco-pretrained``).

    Attributes
    ----------
    base_channels, backbone, anchor_sizes, clahe, aux_masks, boundary_refinement
        Architecture options (:meth:`architecture`; see :class:`~.model.MaskRCNNConfig`); ``anchor_sizes``
        and ``aux_masks`` are comma-separated whole numbers.
    biased_training : bool
        MaskPlus biased training: mask loss weighted by ``mask_loss_alpha`` early on.
    mask_loss_alpha : float
        The early weight (MaskPlus: 1.5).
    biased_fraction : float
        Fraction of all steps trained with the early weight.
    min_object_pixels : int
        Objects cut by a crop to fewer pixels are not targets.
    init_weights : str or None
        A torchvision Mask R-CNN ``.pth`` state_dict to start from (see
        :func:`.weights.load_torchvision_state_dict`).
    coco_pretrained : bool
        Download torchvision's COCO weights (``resnet50_fpn``; needs the internet).
    fpn_channels : int
        FPN width of ``tiny_fpn`` and the EfficientNet-Lite backbones (architecture).
    encoder_weights : str
        The EfficientNet-Lite backbones' trunk starts from these, when ``init_weights`` is not given:
        ``"imagenet"``, ``"none"`` or a ``state_dict`` file (see :func:`..efficientnet_lite.start_from`).
    """

    base_channels: int = base_channels_option()
    backbone: str = option("tiny_fpn", "--backbone", "maskrcnn: backbone (tiny_fpn trains from scratch on a CPU; the "
                           "EfficientNet-Lite ones start from ImageNet weights, see --encoder-weights)",
                           choices=BACKBONE_CHOICES, architecture=True)
    fpn_channels: int = option(64, "--fpn-channels", "maskrcnn: FPN width of tiny_fpn and the EfficientNet-Lite "
                               "backbones", type=int, range=(8, 512), architecture=True)
    anchor_sizes: str | None = option(None, "--anchor-sizes", "maskrcnn: 5 comma-separated anchor sizes in network "
                                      "pixels", architecture=True)
    clahe: bool = option(False, "--clahe", "maskrcnn: CLAHE pre-processing (the nuclei paper)", type=bool,
                         architecture=True)
    aux_masks: str | None = option(None, "--aux-masks", "maskrcnn: MaskPlus quasi-multitask auxiliary mask sizes, "
                                   "e.g. 14,56", architecture=True)
    boundary_refinement: bool = option(False, "--boundary-refinement", "maskrcnn: MaskPlus improved boundary "
                                       "refinement of the mask logits", type=bool, architecture=True)
    biased_training: bool = option(False, "--biased-training", "maskrcnn: MaskPlus biased training (mask-loss "
                                   "weight 1.5 early, then 1)", type=bool)
    mask_loss_alpha: float = 1.5
    biased_fraction: float = 0.3
    min_object_pixels: int = 4
    init_weights: str | None = init_weights_option()
    coco_pretrained: bool = option(False, "--coco-pretrained", "maskrcnn (resnet50_fpn): start from torchvision's "
                                   "COCO weights (downloads; needs internet)", type=bool)
    encoder_weights: str = encoder_weights_option()

    @classmethod
    def from_dict(cls, values: dict | None) -> MaskRCNNTrainOptions:
        """Validated options; raises ValueError on unknown keys or bad values."""
        values = dict(values or {})
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown maskrcnn training options {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**values).checked()

    def checked(self) -> MaskRCNNTrainOptions:
        """These options; raises ValueError on bad values."""
        if not (self.mask_loss_alpha > 0 and 0 <= self.biased_fraction <= 1 and self.min_object_pixels >= 1):
            raise ValueError("need mask_loss_alpha > 0, 0 <= biased_fraction <= 1, min_object_pixels >= 1")
        if self.init_weights and self.coco_pretrained:
            raise ValueError("give init_weights or coco_pretrained, not both")
        if self.coco_pretrained and self.backbone != "resnet50_fpn":
            raise ValueError(f"coco_pretrained needs the resnet50_fpn backbone, not {self.backbone!r}")
        return self

    def architecture(self) -> dict:
        """The architecture keys these options set (:class:`~.model.MaskRCNNConfig` completes them)."""
        arch = {"backbone": self.backbone, "base_channels": self.base_channels, "fpn_channels": self.fpn_channels,
                "clahe": self.clahe}
        if self.anchor_sizes:
            arch["anchor_sizes"] = comma_ints(self.anchor_sizes)
        if self.aux_masks:
            arch["aux_mask_sizes"] = comma_ints(self.aux_masks)
        if self.boundary_refinement:
            arch["boundary_refinement"] = True
        return arch

    def to_dict(self) -> dict:
        """The training (not architecture) options, JSON-able (recorded as ``meta["training"]["maskrcnn"]``)."""
        return training_fields(self)


@dataclass
class PreparedSample:
    """A training image at network scale.

    Attributes
    ----------
    image : np.ndarray
        float32 (h, w, 3).
    instances : np.ndarray
        int32 (h, w) labels, or bool (h, w, N) masks where objects overlap.
    """

    image: np.ndarray
    instances: np.ndarray


@dataclass
class DetectionBatches:
    """Draws random augmented crops (scale, 90-degree rotations, flips, photometric) with their targets."""

    samples: list[PreparedSample]
    crop: int = 256
    batch_size: int = 4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    min_object_pixels: int = 4

    def one(self, rng: np.random.Generator, index: int) -> tuple[np.ndarray, dict]:
        """One crop: image float32 (3, c, c) and its targets (see :func:`targets_from_instances`)."""
        s = self.samples[index]
        scale = random_scale(rng, self.augment)
        c = self.crop
        src = int(np.ceil(c / scale))  # the crop before rescaling
        image, inst = s.image, s.instances
        pad_h, pad_w = max(0, src - image.shape[0]), max(0, src - image.shape[1])
        if pad_h or pad_w:  # pad with the background level, without objects
            fill = np.median(image.reshape(-1, image.shape[-1]), axis=0)
            image = np.concatenate([np.pad(image[..., k], ((0, pad_h), (0, pad_w)), constant_values=fill[k])[..., None]
                                    for k in range(image.shape[-1])], -1)
            inst = np.pad(inst, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (inst.ndim - 2))
        y = int(rng.integers(0, image.shape[0] - src + 1))
        x = int(rng.integers(0, image.shape[1] - src + 1))
        image = resize_to(image[y : y + src, x : x + src], (c, c))
        inst = resize_to(inst[y : y + src, x : x + src], (c, c), order=0)
        chw = image.transpose(2, 0, 1)
        inst_first = inst if inst.ndim == 2 else np.moveaxis(inst, -1, 0)
        chw, inst_first = random_symmetry(rng, chw, inst_first)
        chw = photometric(rng, chw, self.augment)
        inst = inst_first if inst.ndim == 2 else np.moveaxis(inst_first, 0, -1)
        return chw.astype(np.float32), targets_from_instances(inst, self.min_object_pixels)

    def __call__(self, rng: np.random.Generator):
        """A batch for :func:`~napari_instance_tuner.core.training.loop.fit`: x (B, 3, c, c), TargetBatch, valid (B,)."""
        import torch  # deferred: torch

        parts = [self.one(rng, int(i)) for i in rng.integers(0, len(self.samples), self.batch_size)]
        x = torch.from_numpy(np.stack([p[0] for p in parts]))
        y = TargetBatch([{k: torch.from_numpy(v) for k, v in p[1].items()} for p in parts])
        return x, y, torch.ones(len(parts))


def prepare_samples(samples: list[Sample], meta: dict, config) -> list[PreparedSample]:
    """Normalise (and CLAHE) the images and rescale images and instances to network scale."""
    from .network_input import network_input  # deferred: image handling

    prepared = []
    for s in samples:
        image, _ = network_input(s.image, meta, config)
        size = image.shape[:2]
        if s.masks is not None:
            inst = resize_to(np.moveaxis(np.asarray(s.masks, bool), 0, -1), size, order=0)
        else:
            inst = resize_to(np.asarray(s.labels).astype(np.int32), size, order=0)
        prepared.append(PreparedSample(image, inst))
    return prepared


def objects_longer_than(samples: list[PreparedSample], crop: int) -> tuple[int, int, int]:
    """How many objects' bounding boxes are longer than ``crop`` on a side, at network scale.

    A training crop cuts such an object, so the detector never sees it whole, yet it is asked to find it
    whole at inference (the whole image, or a tile larger than the crop). Issue 20, session 30: 34 of
    GlaS train's 769 glands are longer than 256 px at pixel scale 0.5, and the model trained on 256-px
    crops detected neither gland of train_26.

    Returns
    -------
    longer, total, longest : int
        Objects longer than ``crop``, all objects, and the longest side of any object (pixels).
    """
    from ...io.objects import object_boxes  # deferred: scipy

    planes = [p for s in samples for p in ([s.instances] if s.instances.ndim == 2  # a mask per object where they overlap
                                           else np.moveaxis(s.instances, -1, 0).view(np.uint8))]
    boxes = [box for plane in planes for box in object_boxes(plane).values()]
    sides = np.asarray([max(y1 - y0, x1 - x0) for y0, x0, y1, x1 in boxes], int)
    return int((sides > crop).sum()), int(sides.size), int(sides.max(initial=0))


def _resumed_steps(resume_path, steps_per_epoch: int) -> int:
    """Optimiser steps already done according to a resume file of ``fit`` (0 without one)."""
    if not resume_path or not Path(resume_path).is_file():
        return 0
    return int(read_resume(resume_path)["state"]["epoch"]) * steps_per_epoch


def initialise(model, options: MaskRCNNTrainOptions) -> dict | None:
    """Load ``init_weights``, the COCO weights or (EfficientNet-Lite backbones) the trunk's ``encoder_weights`` into
    a new model; a summary for the metadata, or None when every weight stays random.

    Raises
    ------
    InstanceTunerError
        The trunk's weights are missing (package not installed) or are not that trunk's.
    """
    from .weights import load_coco_weights, load_torchvision_state_dict  # deferred: torch

    if options.init_weights:
        report = load_torchvision_state_dict(model, options.init_weights)
    elif options.coco_pretrained:
        report = load_coco_weights(model)
    elif model.config.backbone in LITE_BACKBONES:
        from ..efficientnet_lite import start_from  # deferred: torch

        try:
            return {"source": f"backbone trunk: {start_from([model.backbone.body], options.encoder_weights)}"}
        except (OSError, ValueError) as exc:  # FileNotFoundError included
            raise InstanceTunerError(f"train --encoder-weights {options.encoder_weights}: {exc}") from None
    else:
        return None
    return {"source": report.source, "file_classes": report.file_classes, "replaced": report.replaced}


def train_maskrcnn(
    family,
    train_samples: list[Sample],
    val_samples: list[Sample],
    meta: dict,
    train_config: TrainConfig,
    *,
    options: MaskRCNNTrainOptions | None = None,
    crop: int = 256,
    batch_size: int = 4,
    augment: AugmentConfig | None = None,
    device: str = "cpu",
    resume_path=None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, tuple[object, TrainResult]]:
    """Build the model of ``meta["architecture"]`` (optionally from torchvision weights) and train it.

    ``family`` is the :class:`~.family.MaskRCNNFamily` (it builds, validates and steps the model).

    Returns
    -------
    model, TrainResult
        The model holds the weights of the best validation DSB score (or the last epoch without
        validation images). ``meta["training"]["init"]`` records where the weights started from.
    """
    options = options or MaskRCNNTrainOptions()
    seed_everything(train_config.seed)
    model = family.build_model(meta["architecture"])
    init = initialise(model, options)
    meta.setdefault("training", {})["init"] = init
    prepared = prepare_samples(train_samples, meta, model.config)
    longer, objects, longest = objects_longer_than(prepared, crop)
    if longer:
        yield Progress(0, 0, f"note: {longer} of {objects} training objects are longer than the {crop}-px crop at "
                             f"network scale (the longest: {longest} px); the detector never sees them whole in "
                             f"training, but must find them whole in an image. A --crop of {longest} holds them "
                             "(before scale augmentation).")
    batches = DetectionBatches(prepared, crop=crop, batch_size=batch_size, augment=augment or AugmentConfig(),
                               min_object_pixels=options.min_object_pixels)
    total = train_config.epochs * train_config.steps_per_epoch
    biased = round(options.biased_fraction * total) if options.biased_training else 0
    done = _resumed_steps(resume_path, train_config.steps_per_epoch)
    step = partial(family.training_step, loss_fn=DetectionLoss(options.mask_loss_alpha, biased, done))
    validate = None
    if val_samples:
        from ...evaluation.metrics import dsb_score  # deferred: scipy/scikit-image

        validate = make_validator(family, val_samples, meta, family.default_params(meta), {"dsb_score": dsb_score},
                                  "dsb_score", device)
    result = yield from fit(model, batches, step, validate, train_config, device=device, resume_path=resume_path,
                            cancel=cancel)
    return model, result


def finetune_batches(model, meta: dict, pairs: list, settings) -> DetectionBatches:
    """Crops of corrected images (``CorrectedImage``) for fine-tuning.

    With a checked ``region``, each image is cut to the region's bounding box, pixels outside the region
    are set to the image's background level (so unchecked objects are neither targets nor negatives)
    and only objects mostly inside the region are targets.
    """
    samples = []
    for i, p in enumerate(pairs):
        image, labels = np.asarray(p.image), np.asarray(p.labels).astype(np.int32)
        if p.region is not None:
            region = np.asarray(p.region, bool)
            rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            image, labels, region = image[box].copy(), labels[box].copy(), region[box]
            labels = mostly_inside(labels, region)
            labels[~region] = 0
            fill = np.median(image[region & (labels == 0)], axis=0) if (region & (labels == 0)).any() else 0
            image[~region] = fill
        samples.append(Sample(f"pair{i}", image, labels))
    prepared = prepare_samples(samples, meta, model.config)
    largest = max(max(s.image.shape[:2]) for s in prepared)
    return DetectionBatches(prepared, crop=min(settings.crop, largest), batch_size=settings.batch_size,
                            augment=AugmentConfig(enabled=settings.augment))
