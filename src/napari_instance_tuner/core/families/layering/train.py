"""Training options, crops and the two training phases of the layering family (paper sections 3.1-3.2).

The targets (object masks, adjacency, copy-paste crossings, the fixed stack S) are in :mod:`.targets`.
Phase 1 trains L_foreground + L_layering; phase 2 continues from the best phase-1 weights with
L_overlap added. Deliberate differences from the paper: Adam instead of RMSprop (the optimiser of the
core training loop), epochs of a fixed number of random crops and early stopping on validation mean AP
instead of 1000 + 500 full epochs, and no elastic deformation (flips, 90-degree rotations, scale,
gamma in (0.5, 2), blur and noise are used).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from ...errors import InstanceTunerError
from ...evaluation.scoring import make_validator
from ...inference.image import DEFAULT_NORMALISATION, normalise, rescale, to_channels_last
from ...io.checkpoint import read_checkpoint
from ...progress import CancelToken, Progress
from ...training.augment import AugmentConfig, photometric, random_corner, random_scale, random_symmetry
from ...training.data import Sample
from ...training.loop import TrainConfig, TrainResult, fit, read_resume, seed_everything
from ...training.options import option
from .. import init_weights_option
from ..unet import UNetTrainOptions
from .targets import ADJACENCY_DISTANCE, adjacency, load_or_assign_layers, object_masks, paste_crossing


@dataclass
class LayeringTrainOptions(UNetTrainOptions):
    """Training options of the layering family (the CLI's ``--layers`` ... ``--phase2-epochs``).

    ``sparse_weight`` (lambda of the sparsity term, the paper's 0.1) is an option of the Python API only.
    """

    layers: int = option(8, "--layers", "layering: N output layers", type=int, range=(1, 64), architecture=True)
    head_channels: int = option(64, "--head-channels", "layering: features of the two head convolutions", type=int,
                                range=(1, 1024), architecture=True)
    phase1_epochs: int | None = option(None, "--phase1-epochs", "layering: epochs of layering training "
                                       "(default 2/3 of --epochs)", type=int, range=(0, 100_000))
    phase2_epochs: int | None = option(None, "--phase2-epochs", "layering: epochs of overlap completion "
                                       "(default the rest)", type=int, range=(0, 100_000))
    paste_crossings: float | None = option(None, "--paste-crossings", "layering: probability of pasting an object "
                                           "across another in a training crop", type=float, range=(0.0, 1.0))
    overlap_targets: str = option(
        "argmax", "--overlap-targets", "layering, phase 2: each object's target layer is its arg-max layer as in "
        "the paper (argmax), or adjacent objects get different layers (separated)", choices=("argmax", "separated"))
    target_layers: str = option(
        "per-batch", "--target-layers", "layering, phase 2: derive each object's target layer from the current "
        "model on every batch (per-batch), or once per whole training image from the model that starts phase 2, "
        "kept for all of phase 2 as in the paper (fixed)", choices=("per-batch", "fixed"))
    layer_bce: float = option(0.0, "--layer-bce", "layering, phase 2: add WEIGHT x cross-entropy between the "
                              "layering logits and the target stack S (default 0: the paper's loss only)", type=float,
                              metavar="WEIGHT")
    init_weights: str | None = init_weights_option()
    sparse_weight: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.layer_bce) and self.layer_bce >= 0):
            raise InstanceTunerError(f"--layer-bce must be a finite number >= 0, got {self.layer_bce}")

    def architecture(self) -> dict:
        """The U-Net keys, ``n_layers`` and ``head_channels``."""
        return {**super().architecture(), "n_layers": self.layers, "head_channels": self.head_channels}

@dataclass
class PreparedSample:
    """A training image at network scale.

    Attributes
    ----------
    image : np.ndarray
        float32 (C, H, W) normalised.
    masks : np.ndarray
        bool (K, H, W) object masks.
    adjacency : np.ndarray
        bool (K, K).
    region : np.ndarray or None
        bool (H, W): train only here (fine-tuning on checked regions).
    layers : np.ndarray or None
        int64 (K,): each object's fixed layer in phase 2's target stack (:func:`fixed_layers`), or None.
    """

    image: np.ndarray
    masks: np.ndarray
    adjacency: np.ndarray
    region: np.ndarray | None = None
    layers: np.ndarray | None = None


def prepare_samples(
    samples: list[Sample], in_channels: int, pixel_scale: float, normalisation: dict | None = None,
    regions: list[np.ndarray | None] | None = None,
) -> list[PreparedSample]:
    """Normalise and rescale samples to network scale; object masks and their adjacency."""
    prepared = []
    for i, s in enumerate(samples):
        image = normalise(to_channels_last(s.image, in_channels), normalisation or DEFAULT_NORMALISATION)
        image = rescale(image, pixel_scale).transpose(2, 0, 1).copy()
        masks = object_masks(s)
        if masks.shape[0]:
            masks = np.stack([rescale(m.view(np.uint8), pixel_scale, order=0) for m in masks]).astype(bool)
            masks = masks[masks.any(axis=(1, 2))]
        else:
            masks = np.zeros((0, *image.shape[1:]), bool)
        region = None
        if regions is not None and regions[i] is not None:
            region = rescale(np.asarray(regions[i]).astype(np.uint8), pixel_scale, order=0).astype(bool)
        prepared.append(PreparedSample(image, masks, adjacency(masks, ADJACENCY_DISTANCE * pixel_scale), region))
    return prepared


def _resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """(K, h, w) -> (K, size, size) with OpenCV (at most 128 channels per call)."""
    if a.shape[1] == size and a.shape[2] == size:
        return a
    if a.shape[0] == 0:
        return np.zeros((0, size, size), a.dtype)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    parts = []
    for start in range(0, a.shape[0], 128):
        chunk = np.ascontiguousarray(a[start : start + 128].transpose(1, 2, 0))
        out = cv2.resize(chunk, (size, size), interpolation=interp)
        parts.append(out.reshape(size, size, -1).transpose(2, 0, 1))
    return np.concatenate(parts)


@dataclass
class BatchMaker:
    """Random augmented crops with their object masks and adjacency (a ``next_batch`` for ``fit``).

    Attributes
    ----------
    samples : list[PreparedSample]
    crop : int
        Crop edge at network scale (a multiple of the network's size divisor).
    batch_size : int
    augment : AugmentConfig
    p_gamma : float
        Probability of a random gamma correction, gamma in (0.5, 2) (the paper's augmentation).
    p_paste : float
        Probability of pasting one more object (see :func:`paste_crossing`) so that it crosses an object of
        the crop: BBBC010 has few overlapping worms, so overlaps are rare in training otherwise.
    adjacency_distance : float
        The adjacency threshold t at network scale (for pasted objects).
    """

    samples: list[PreparedSample]
    crop: int = 256
    batch_size: int = 4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    p_gamma: float = 0.5
    p_paste: float = 0.0
    adjacency_distance: float = ADJACENCY_DISTANCE

    def one(self, rng: np.random.Generator, index: int):
        """One crop: image float32 (C, c, c), masks bool (k, c, c), adjacency bool (k, k), valid float32 (1, c, c),
        fixed layers int64 (k,) (-1 where none: the sample has none, or a pasted object)."""
        s = self.samples[index]
        c = self.crop
        src = max(8, round(c / random_scale(rng, self.augment)))
        image, masks = s.image, s.masks
        valid = np.ones(image.shape[1:], np.uint8) if s.region is None else s.region.view(np.uint8)
        pad_h, pad_w = max(0, src - image.shape[1]), max(0, src - image.shape[2])
        if pad_h or pad_w:
            image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
            masks = np.pad(masks, ((0, 0), (0, pad_h), (0, pad_w)))
            valid = np.pad(valid, ((0, pad_h), (0, pad_w)))
        y, x = random_corner(rng, image.shape[1:], src, valid if s.region is not None else None)
        window = (slice(y, y + src), slice(x, x + src))
        inside = masks[(slice(None), *window)]
        keep = np.flatnonzero(inside.any(axis=(1, 2)))
        crop_masks = _resize(inside[keep].view(np.uint8), c, nearest=True).astype(bool)
        crop_image = _resize(image[(slice(None), *window)], c, nearest=False)
        crop_valid = _resize(valid[window][None], c, nearest=True)
        crop_image, crop_masks, crop_valid = random_symmetry(rng, crop_image, crop_masks, crop_valid)
        present = crop_masks.any(axis=(1, 2))
        keep, crop_masks = keep[present], crop_masks[present]
        adj = s.adjacency[np.ix_(keep, keep)]
        layers = s.layers[keep] if s.layers is not None else np.full(keep.size, -1, np.int64)
        if self.p_paste > 0 and rng.random() < self.p_paste:
            donor = self.samples[int(rng.integers(len(self.samples)))]
            if donor.masks.shape[0]:
                obj = int(rng.integers(donor.masks.shape[0]))
                crop_image, crop_masks, adj = paste_crossing(
                    rng, crop_image, crop_masks, adj, donor.image, donor.masks, obj,
                    self.adjacency_distance * c / src, valid=crop_valid[0] > 0,
                )
                layers = np.concatenate([layers, np.full(crop_masks.shape[0] - layers.size, -1, np.int64)])
        crop_image = photometric(rng, crop_image, self.augment)
        if self.augment.enabled and rng.random() < self.p_gamma:
            crop_image = np.clip(crop_image, 0, None) ** np.float32(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        return crop_image.astype(np.float32), crop_masks, adj, crop_valid.astype(np.float32), layers

    def __call__(self, rng: np.random.Generator):
        """x float32 (B, C, c, c), :class:`~.loss.LayeringTargets`, valid float32 (B, 1, c, c) as tensors.

        The targets carry fixed layers when the samples have them (:func:`fixed_layers`), else None.
        """
        import torch  # deferred: torch

        from .loss import LayeringTargets  # deferred: torch

        parts = [self.one(rng, int(i)) for i in rng.integers(0, len(self.samples), self.batch_size)]
        k = max(1, max(p[1].shape[0] for p in parts))
        c = self.crop
        objects = np.zeros((len(parts), k, c, c), bool)
        adj = np.zeros((len(parts), k, k), bool)
        layers = np.full((len(parts), k), -1, np.int64)
        for b, (_, m, a, _, lay) in enumerate(parts):
            objects[b, : m.shape[0]] = m
            adj[b, : a.shape[0], : a.shape[0]] = a
            layers[b, : lay.size] = lay
        x = torch.from_numpy(np.stack([p[0] for p in parts]))
        valid = torch.from_numpy(np.stack([p[3] for p in parts]))
        fixed = torch.from_numpy(layers) if any(s.layers is not None for s in self.samples) else None
        return x, LayeringTargets(torch.from_numpy(objects), torch.from_numpy(adj), fixed), valid


def train_layering(
    family,
    train_samples: list[Sample],
    val_samples: list[Sample],
    meta: dict,
    options,
    *,
    resume_path=None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, tuple[object, TrainResult]]:
    """Build the model described by ``meta`` and train it in two phases; returns (best model, result).

    ``family`` is the :class:`~.family.LayeringFamily` (it builds, validates and steps the model);
    ``options`` is a :class:`~...training.jobs.TrainOptions` whose ``family_options`` (:class:`LayeringTrainOptions`)
    set ``phase1_epochs`` and ``phase2_epochs`` (default: ``options.train.epochs`` split 2:1 as the paper's
    1000:500), ``sparse_weight`` (lambda, default 0.1), ``paste_crossings`` (copy-paste crossings, see
    :func:`~.targets.paste_crossing`; default 0), ``overlap_targets`` ("separated": phase 2's S keeps adjacent
    objects in different layers, see :func:`~.loss.layer_assignment`; default "argmax", the paper's),
    ``layer_bce`` (phase 2: weight of a cross-entropy between the layering logits and S, see
    :func:`~.loss.layer_cross_entropy`; default 0, the paper's), ``target_layers`` ("fixed": phase 2's S is
    assigned once per whole training image by the model that starts phase 2 and kept, the paper's way, see
    :func:`~.targets.fixed_layers`; default "per-batch": S is derived from the current model on every batch)
    and ``init_weights`` (a checkpoint of the same architecture to start from, e.g. to continue a run on
    another machine); ``meta["training"]["layering"]`` records them. ``options.train.max_minutes`` is shared
    between the phases in the same proportion. Each phase has its own resume file; a
    finished phase 1 is not repeated when phase 2 resumes. The history records carry ``"phase"``.
    """
    from .loss import LayeringLoss  # deferred: torch

    config: TrainConfig = options.train
    if config.lr_decay_from is not None:  # which phase's epoch would it be? Refused rather than guessed
        raise InstanceTunerError("--lr-decay-from is not available for the layering family: it trains in two "
                                 "phases, each at a constant learning rate")
    extra: LayeringTrainOptions = options.family_options
    phase1 = extra.phase1_epochs if extra.phase1_epochs is not None else max(1, round(config.epochs * 2 / 3))
    phase2 = extra.phase2_epochs if extra.phase2_epochs is not None else max(0, config.epochs - phase1)
    sparse_weight = float(extra.sparse_weight)
    paste = float(extra.paste_crossings or 0.0)
    separate = extra.overlap_targets == "separated"
    fixed = extra.target_layers == "fixed"
    layer_bce = float(extra.layer_bce)
    init = extra.init_weights
    # A wall-time limit is shared between the phases in proportion to their epochs.
    minutes1 = minutes2 = None
    if config.max_minutes is not None:
        minutes1 = config.max_minutes * phase1 / max(1, phase1 + phase2)
        minutes2 = config.max_minutes - minutes1
    meta["training"]["layering"] = {
        "phase1_epochs": phase1, "phase2_epochs": phase2, "sparse_weight": sparse_weight,
        "adjacency_distance_px": ADJACENCY_DISTANCE, "optimiser_note": f"{config.optimizer} (paper: RMSprop 1e-4)",
        "paste_probability": paste, "separate_targets": separate, "layer_bce_weight": layer_bce,
        "fixed_targets": fixed,
        "init_weights": str(init) if init else None,
    }
    seed_everything(config.seed)
    model = family.build_model(meta["architecture"])
    if init:
        state, _ = read_checkpoint(init)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    prepared = prepare_samples(train_samples, meta["in_channels"], meta["pixel_scale"], meta.get("normalisation"))
    batches = BatchMaker(prepared, crop=options.crop, batch_size=options.batch_size,
                         augment=AugmentConfig(enabled=options.augment), p_paste=paste,
                         adjacency_distance=ADJACENCY_DISTANCE * meta["pixel_scale"])
    validate = None
    if val_samples:
        from ...evaluation.metrics import aggregated_jaccard_index, average_precision  # deferred: scipy/scikit-image

        metrics = {"mean_ap": lambda p, r: average_precision(p, r)["mean_ap"], "aji": aggregated_jaccard_index}
        validate = make_validator(family, val_samples, meta, family.default_params(meta), metrics, "mean_ap",
                                  options.device)
    resume_path = Path(resume_path) if resume_path else None
    resume1 = resume2 = None
    if resume_path is not None:
        resume1 = resume_path.with_name(resume_path.stem + ".phase1.pt")
        resume2 = resume_path.with_name(resume_path.stem + ".phase2.pt")
    history: list[dict] = []
    wall = 0.0
    if not (resume2 is not None and resume2.is_file()):
        result1 = yield from fit(model, batches, partial(family.training_step, loss_fn=LayeringLoss(1, sparse_weight)),
                                 validate,
                                 replace(config, epochs=phase1, max_minutes=minutes1), device=options.device, resume_path=resume1,
                                 cancel=cancel)
        history += [{**r, "phase": 1} for r in result1.history]
        wall += result1.wall_seconds
        if result1.stopped == "cancelled" or phase2 == 0:
            return model, replace(result1, history=history)
    else:
        saved = read_resume(resume1) if resume1.is_file() else None
        if saved is not None:
            history += [{**r, "phase": 1} for r in saved["state"]["history"]]
            wall += saved["state"]["elapsed"]
    # Phase 2 starts from the best phase-1 weights (fit leaves them in the model) with fresh optimiser state.
    if fixed:
        yield Progress(0, 1, "phase 2: assigning each training object its layer")
        model.to(options.device or "cpu")
        layers_path = resume_path.with_name(resume_path.stem + ".phase2-layers.npz") if resume_path else None
        resuming = resume2 is not None and resume2.is_file()
        for s, lay in zip(prepared, load_or_assign_layers(model, prepared, separate, options.device or "cpu",
                                                             layers_path, resuming)):
            s.layers = lay
    result2 = yield from fit(model, batches, partial(family.training_step,
                                                     loss_fn=LayeringLoss(2, sparse_weight, separate, layer_bce)),
                             validate,
                             replace(config, epochs=phase2, seed=config.seed + 1, max_minutes=minutes2), device=options.device,
                             resume_path=resume2, cancel=cancel)
    history += [{**r, "phase": 2} for r in result2.history]
    return model, replace(result2, history=history, wall_seconds=wall + result2.wall_seconds)


def finetune_batches(model, meta: dict, pairs: list, settings) -> BatchMaker:
    """Batches for fine-tuning on corrected images (``CorrectedImage``), only inside checked regions."""
    samples = [Sample(f"pair{i}", p.image, np.asarray(p.labels).astype(np.int32), getattr(p, "masks", None))
               for i, p in enumerate(pairs)]
    prepared = prepare_samples(samples, meta["in_channels"], meta["pixel_scale"], meta.get("normalisation"),
                               regions=[p.region for p in pairs])
    largest = max(max(s.image.shape[1:]) for s in prepared)
    crop = -(-min(settings.crop, largest) // model.size_divisor) * model.size_divisor
    return BatchMaker(prepared, crop=crop, batch_size=settings.batch_size,
                      augment=AugmentConfig(enabled=settings.augment))
