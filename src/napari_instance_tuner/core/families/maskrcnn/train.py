"""Training data and loss of the Mask R-CNN family: random augmented crops with box/mask targets.

Training runs through the generic resumable loop :func:`~napari_instance_tuner.core.training.fit`, which
calls ``logits = model(x)`` and then ``loss_fn(logits, y, valid)``. A detector needs its targets inside
the forward pass, so :class:`~.model.InstanceMaskRCNN` returns the images unchanged when called in
training mode without targets, and :class:`DetectionLoss` (which holds the model) runs
``model(images, targets)`` to get torchvision's loss dict. ``y`` is a :class:`TargetBatch` (a list of
torchvision target dicts with a ``.to(device)``). This keeps one training loop (resume files, early
stopping, cancellation, progress) for every family; the model's state-dict keys stay torchvision's.

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
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ...augment import AugmentConfig, photometric, random_scale, random_symmetry
from ...data import Sample
from ...finetune import mostly_inside
from ...image import resize_to
from ...progress import CancelToken, Progress
from ...training import TrainConfig, TrainResult, fit, make_validator, read_resume, seed_everything


@dataclass(frozen=True)
class MaskRCNNTrainOptions:
    """Family-specific training options (``TrainOptions.family_options`` / the CLI's family options).

    Attributes
    ----------
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
    """

    biased_training: bool = False
    mask_loss_alpha: float = 1.5
    biased_fraction: float = 0.3
    min_object_pixels: int = 4
    init_weights: str | None = None
    coco_pretrained: bool = False

    @classmethod
    def from_dict(cls, values: dict | None) -> MaskRCNNTrainOptions:
        """Validated options; raises ValueError on unknown keys or bad values."""
        values = dict(values or {})
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown maskrcnn training options {sorted(unknown)}; valid: {sorted(names)}")
        opts = cls(**values)
        if not (opts.mask_loss_alpha > 0 and 0 <= opts.biased_fraction <= 1 and opts.min_object_pixels >= 1):
            raise ValueError("need mask_loss_alpha > 0, 0 <= biased_fraction <= 1, min_object_pixels >= 1")
        if opts.init_weights and opts.coco_pretrained:
            raise ValueError("give init_weights or coco_pretrained, not both")
        return opts

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return asdict(self)


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


class TargetBatch:
    """torchvision detection targets of a batch, movable like a tensor (``fit`` calls ``y.to(device)``).

    Attributes
    ----------
    dicts : list of dict
        Per image ``boxes`` float32 (N, 4), ``labels`` int64 (N,), ``masks`` uint8 (N, c, c).
    """

    def __init__(self, dicts: list[dict]) -> None:
        self.dicts = dicts

    def to(self, device) -> TargetBatch:
        return TargetBatch([{k: v.to(device) for k, v in d.items()} for d in self.dicts])


def targets_from_instances(instances: np.ndarray, min_pixels: int = 4) -> dict[str, np.ndarray]:
    """Boxes, class labels and masks of the objects in a crop.

    Parameters
    ----------
    instances : np.ndarray
        int (c, c) labels or bool (c, c, N) masks.
    min_pixels : int
        Objects with fewer pixels (e.g. cut by the crop) are dropped.

    Returns
    -------
    dict
        ``boxes`` float32 (N, 4) x1, y1, x2, y2 (exclusive edges); ``labels`` int64 (N,) all 1;
        ``masks`` uint8 (N, c, c).
    """
    if instances.ndim == 2:
        ids = np.unique(instances)
        ids = ids[ids > 0]
        masks = instances[None] == ids[:, None, None] if ids.size else np.zeros((0, *instances.shape), bool)
    else:
        masks = np.moveaxis(instances, -1, 0).astype(bool)
    masks = masks[masks.reshape(len(masks), -1).sum(1) >= min_pixels] if len(masks) else masks
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return {"boxes": boxes, "labels": np.ones(len(masks), np.int64), "masks": masks.astype(np.uint8)}


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
        """A batch for :func:`~napari_instance_tuner.core.training.fit`: x (B, 3, c, c), TargetBatch, valid (B,)."""
        import torch

        parts = [self.one(rng, int(i)) for i in rng.integers(0, len(self.samples), self.batch_size)]
        x = torch.from_numpy(np.stack([p[0] for p in parts]))
        y = TargetBatch([{k: torch.from_numpy(v) for k, v in p[1].items()} for p in parts])
        return x, y, torch.ones(len(parts))


class DetectionLoss:
    """``loss_fn(images, targets, valid)`` for :func:`~napari_instance_tuner.core.training.fit`.

    Runs ``model(images, targets.dicts)`` (torchvision's five losses) and sums them, the mask loss
    weighted by ``alpha`` for the first ``biased_steps`` calls (MaskPlus biased training), then by 1.

    Parameters
    ----------
    model : InstanceMaskRCNN
    alpha : float
    biased_steps : int
        0 turns biased training off.
    start_step : int
        Steps already trained (a resumed run continues the schedule).
    """

    def __init__(self, model, alpha: float = 1.0, biased_steps: int = 0, start_step: int = 0) -> None:
        self.model, self.alpha, self.biased_steps, self.step = model, alpha, biased_steps, start_step

    def __call__(self, images, targets: TargetBatch, valid):
        losses = self.model(images, targets.dicts)
        alpha = self.alpha if self.step < self.biased_steps else 1.0
        self.step += 1
        loss = sum(v for k, v in losses.items() if k != "loss_mask") + alpha * losses["loss_mask"]
        parts = {k: float(v.detach()) for k, v in losses.items()}
        parts["mask_alpha"] = alpha
        return loss, parts


def prepare_samples(samples: list[Sample], meta: dict, config) -> list[PreparedSample]:
    """Normalise (and CLAHE) the images and rescale images and instances to network scale."""
    from .model import network_input

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


def _resumed_steps(resume_path, steps_per_epoch: int) -> int:
    """Optimiser steps already done according to a resume file of ``fit`` (0 without one)."""
    from pathlib import Path

    if not resume_path or not Path(resume_path).is_file():
        return 0
    return int(read_resume(resume_path)["state"]["epoch"]) * steps_per_epoch


def initialise(model, options: MaskRCNNTrainOptions) -> dict | None:
    """Load ``init_weights`` or the COCO weights into a new model; a summary for the metadata, or None."""
    from .weights import load_coco_weights, load_torchvision_state_dict

    if options.init_weights:
        report = load_torchvision_state_dict(model, options.init_weights)
    elif options.coco_pretrained:
        report = load_coco_weights(model)
    else:
        return None
    return {"source": report.source, "file_classes": report.file_classes, "replaced": report.replaced}


def train_maskrcnn(
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

    Returns
    -------
    model, TrainResult
        The model holds the weights of the best validation DSB score (or the last epoch without
        validation images). ``meta["training"]["init"]`` records where the weights started from.
    """
    from .family import MaskRCNNFamily

    options = options or MaskRCNNTrainOptions()
    family = MaskRCNNFamily()
    seed_everything(train_config.seed)
    model = family.build_model(meta["architecture"])
    init = initialise(model, options)
    meta.setdefault("training", {})["init"] = init
    batches = DetectionBatches(
        prepare_samples(train_samples, meta, model.config), crop=crop, batch_size=batch_size,
        augment=augment or AugmentConfig(), min_object_pixels=options.min_object_pixels,
    )
    total = train_config.epochs * train_config.steps_per_epoch
    biased = round(options.biased_fraction * total) if options.biased_training else 0
    done = _resumed_steps(resume_path, train_config.steps_per_epoch)
    loss_fn = DetectionLoss(model, options.mask_loss_alpha, biased, done)
    validate = None
    if val_samples:
        from ...metrics import dsb_score

        validate = make_validator(family, val_samples, meta, family.default_params(meta), {"dsb_score": dsb_score},
                                  "dsb_score", device)
    result = yield from fit(model, batches, loss_fn, validate, train_config, device=device, resume_path=resume_path,
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
