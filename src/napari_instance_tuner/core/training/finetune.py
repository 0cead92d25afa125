"""Fine-tune a loaded model on user-corrected labels (optionally only inside checked regions).

The family's own targets are generated from the corrected labels; batch-norm statistics stay fixed and
the encoder can be frozen, so a few corrected objects teach the model without wrecking what it knew.
The result is a new checkpoint whose metadata records its parent (sha256), the data it was tuned on,
the settings and the loss history; the parent file is never overwritten.

A *held-out* region of a pair (:attr:`CorrectedImage.holdout`) is kept out of training and scored
every ``validate_every`` steps with the family's selection metric (:meth:`~..family.Family.score`), so the
user sees whether the corrections generalise, and the best-scoring weights are the ones returned.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstanceTunerError, WeightsError
from ..evaluation.scoring import scorable
from ..inference.image import DEFAULT_NORMALISATION, normalise, to_channels_last
from ..io.checkpoint import LoadedModel, save_checkpoint
from ..params import params_to_dict
from ..progress import CancelToken, Progress, run
from .inside import mostly_inside
from .loop import TrainConfig, TrainResult, fit, refuse_amp

#: Context (network pixels) predicted around a held-out region's bounding box, so that its objects are
#: not cut by the crop's edge and the network sees what it would see in the whole image.
VALIDATION_MARGIN = 32


@dataclass(frozen=True)
class FinetuneSettings:
    """What the user chooses in the fine-tune widget or on the command line.

    Attributes
    ----------
    steps, lr, batch_size, crop, augment, freeze_encoder, seed
        Optimiser steps, Adam learning rate, crops per step, crop edge (network pixels), random
        augmentation, whether the encoder stays frozen, random seed.
    amp : bool
        Mixed precision: bfloat16 forward passes (:attr:`.loop.TrainConfig.amp`).
    validate_every : int
        With a held-out region: score it every this many steps (a shorter run: at its last step).
    patience : int or None
        With a held-out region: stop after this many steps without a better held-out score (at least
        ``validate_every + 1`` are waited); None trains all ``steps``. The best-scoring weights are
        returned either way.
    seconds : float or None
        Time budget: stop after the step that passes it (None: all ``steps``; the widget's default: 60).
    """

    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 4
    crop: int = 256
    augment: bool = True
    freeze_encoder: bool = True
    seed: int = 0
    validate_every: int = 10
    patience: int | None = None
    amp: bool = False
    seconds: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InstanceTunerError(f"steps must be a whole number >= 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise InstanceTunerError(f"the learning rate must be a finite number >= 0, got {self.lr}")
        if self.batch_size < 1 or self.crop < 16:
            raise InstanceTunerError(f"batch_size must be >= 1 and crop >= 16, got {self.batch_size} and {self.crop}")
        if self.validate_every < 1:
            raise InstanceTunerError(f"validate_every must be at least 1, got {self.validate_every}")
        if self.patience is not None and self.patience < 1:
            raise InstanceTunerError(f"patience must be at least 1 step (or None), got {self.patience}")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise InstanceTunerError(f"the time budget must be a number of seconds > 0 (or None), got {self.seconds}")



@dataclass
class CorrectedImage:
    """One training pair: the image, its corrected labels, and optionally where they were checked.

    Attributes
    ----------
    image : np.ndarray
        (H, W) or (H, W, C), any real dtype.
    labels : np.ndarray
        Integer (H, W) corrected instance labels.
    region : np.ndarray or None
        bool (H, W): True where the labels were checked; training uses only these pixels.
    holdout : np.ndarray or None
        bool (H, W): a held-out validation region. Its pixels are never trained on (the training region
        is ``region AND NOT holdout``); the checked part of it (``holdout AND region``) is scored during
        fine-tuning. A pair may be held out entirely if another pair leaves pixels to train on.
    """

    image: np.ndarray
    labels: np.ndarray
    region: np.ndarray | None = None
    holdout: np.ndarray | None = None


@dataclass
class FinetuneResult(TrainResult):
    """:class:`~.loop.TrainResult` plus, with held-out regions, what validation used and found.

    Attributes
    ----------
    validation : dict or None
        ``{"every", "start_score", "best_score", "best_step", "params", "held_out"}``: the steps between
        validations, the held-out score of the starting model, the best score and its step (0: no
        validation finished), the post-processing parameters, and per held-out pair its number, pixels
        and scored reference objects. None without held-out regions.
    """

    validation: dict | None = None


@dataclass
class _HeldOut:
    """One pair's validation crop: normalised image, reference objects and the held-out mask in it."""

    pair: int
    image: np.ndarray  # float32 (h, w, C), normalised like the whole image
    reference: np.ndarray  # int32 (h, w): only objects mostly inside the held-out region
    inside: np.ndarray  # bool (h, w): the held-out (and checked) pixels
    pixels: int
    objects: int


def _check(pairs: list[CorrectedImage]) -> None:
    if not pairs:
        raise InstanceTunerError("choose at least one (image, corrected labels) pair to fine-tune on")
    for i, p in enumerate(pairs):
        shape = np.shape(p.labels)
        if shape != np.shape(p.image)[:2]:
            raise InstanceTunerError(
                f"pair {i + 1}: labels of shape {shape} do not match the image's {np.shape(p.image)[:2]}"
            )
        if p.region is not None and not np.any(p.region):
            raise InstanceTunerError(f"pair {i + 1}: the checked region is empty")
        if p.holdout is not None:
            if np.shape(p.holdout) != shape:
                raise InstanceTunerError(f"pair {i + 1}: the held-out region of shape {np.shape(p.holdout)} does "
                                         f"not match the labels' {shape}")
            if not np.any(p.holdout):
                raise InstanceTunerError(f"pair {i + 1}: the held-out region is empty")
            if p.region is not None and not np.any(np.logical_and(p.holdout, p.region)):
                raise InstanceTunerError(f"pair {i + 1}: the held-out region does not overlap the checked region")


def split_holdout(pair: CorrectedImage) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Where a pair is trained on and where it is validated.

    Returns
    -------
    train : np.ndarray or None
        bool (H, W) ``region AND NOT holdout``; the pair's ``region`` (None: everywhere) without a holdout.
    validate : np.ndarray or None
        bool (H, W) ``holdout AND region`` (the checked held-out pixels); None without a holdout.

    Examples
    --------
    >>> holdout = np.zeros((2, 4), bool); holdout[:, 3:] = True
    >>> train, val = split_holdout(CorrectedImage(np.zeros((2, 4)), np.zeros((2, 4), int), holdout=holdout))
    >>> train.sum(), val.sum()
    (np.int64(6), np.int64(2))
    """
    if pair.holdout is None:
        return pair.region, None
    holdout = np.asarray(pair.holdout, bool)
    checked = np.ones(holdout.shape, bool) if pair.region is None else np.asarray(pair.region, bool)
    return checked & ~holdout, checked & holdout


def _held_out(index: int, pair: CorrectedImage, val: np.ndarray, meta: dict) -> _HeldOut:
    """The crop around a held-out region's bounding box (plus :data:`VALIDATION_MARGIN` of context)."""
    labels = np.asarray(pair.labels)
    reference = mostly_inside(labels, val)
    objects = int(np.unique(reference).size - (reference.min() == 0))
    if objects == 0:
        raise InstanceTunerError(
            f"pair {index + 1}: no corrected object lies mostly inside the held-out region, so there is nothing "
            "to validate on; draw it around some objects"
        )
    margin = int(np.ceil(VALIDATION_MARGIN / float(meta.get("pixel_scale", 1.0))))
    rows, cols = np.flatnonzero(val.any(1)), np.flatnonzero(val.any(0))
    box = (slice(max(rows[0] - margin, 0), rows[-1] + 1 + margin),
           slice(max(cols[0] - margin, 0), cols[-1] + 1 + margin))
    # Normalised over the whole image, as the Segment widget would, then cropped: percentiles of the
    # crop alone would shift the intensities the network sees.
    image = normalise(to_channels_last(pair.image, int(meta.get("in_channels", 3))),
                      meta.get("normalisation") or DEFAULT_NORMALISATION)
    return _HeldOut(index + 1, np.ascontiguousarray(image[box]), reference[box].astype(np.int32), val[box],
                    int(np.count_nonzero(val)), objects)


def make_validator(loaded: LoadedModel, held_out: list[_HeldOut], params: Any, device: str):
    """``validate(model) -> {"score": ...}``: the mean family score over the held-out crops.

    Each crop is predicted (network + post-processing with ``params``) and scored with
    ``loaded.family.score`` against the reference objects mostly inside its held-out region; predicted
    objects are kept likewise (see :func:`mostly_inside`), so objects cut by the crop's edge count for
    neither side.
    """
    family = loaded.family
    meta = {**loaded.meta, "normalisation": {"kind": "none"}}  # the crops are normalised already

    def validate(model) -> dict:
        scores = []
        for h in held_out:
            maps = run(family.predict_maps(model, h.image, meta, device=device))
            pred = mostly_inside(scorable(family.postprocess(maps, params)), h.inside)
            scores.append(float(family.score(pred, h.reference)))
        return {"score": float(np.mean(scores))}

    return validate


def finetune(
    loaded: LoadedModel,
    pairs: list[CorrectedImage],
    settings: FinetuneSettings,
    *,
    device: str = "cpu",
    cancel: CancelToken | None = None,
    params: Any = None,
) -> Generator[Progress, None, tuple[object, FinetuneResult]]:
    """Fine-tune a copy of ``loaded.model``; yields progress per step; returns (new model, result).

    Parameters
    ----------
    loaded : LoadedModel
        The model to start from; it is left untouched, so cancelling keeps the user's model valid.
    pairs : list of CorrectedImage
        Training pairs; those with a ``holdout`` are also validated there (see :class:`CorrectedImage`).
    settings : FinetuneSettings
    device : str
    cancel : CancelToken, optional
        Stops after the current step.
    params : optional
        Post-processing parameters for validation (the family's ``Params``); None: the checkpoint's.

    Yields
    ------
    Progress
        One per step (``info["loss"]``), one per finished step with its history record (``"epoch"`` is
        the step, ``"val_score"`` after a validation) and, with held-out regions, first one with the
        starting model's score (``{"epoch": 0, "val_score": ...}``).

    Returns
    -------
    model : torch.nn.Module
        The tuned copy, on the CPU. Without held-out regions: the weights of the last completed step.
        With them: the weights of the best-scoring validation (:func:`~.loop.fit` keeps them), which
        are the starting weights if the run was cancelled before its first validation.
    result : FinetuneResult

    Raises
    ------
    InstanceTunerError
        For no pairs, mismatched shapes, an empty checked or held-out region, a held-out region outside
        the checked one or without objects mostly inside it, or held-out regions covering every checked
        pixel (nothing left to train on).

    Notes
    -----
    The loss never sees a held-out pixel. The network may still see held-out *image* pixels as context
    around training crops, and targets next to the held-out region may depend on objects crossing it.
    The held-out score of the starting model is measured for reference but is not a candidate for the
    best weights.
    """
    _check(pairs)
    refuse_amp(loaded.family, settings.amp)
    splits = [split_holdout(p) for p in pairs]
    train_pairs = [
        p if p.holdout is None else CorrectedImage(p.image, p.labels, train)
        for p, (train, _) in zip(pairs, splits)
        if train is None or train.any()  # a pair held out entirely is only validated on
    ]
    if not train_pairs:
        raise InstanceTunerError(
            "the held-out regions cover every checked pixel, so nothing is left to train on; hold out a smaller part"
        )
    # A run shorter than validate_every is validated at its end (else fit would return the start).
    every = max(1, min(settings.validate_every, settings.steps))
    validate, validation = None, None
    if any(val is not None for _, val in splits):
        held_out = [_held_out(i, p, val, loaded.meta) for i, (p, (_, val)) in enumerate(zip(pairs, splits))
                    if val is not None]
        params = params if params is not None else loaded.family.default_params(loaded.meta)
        validate = make_validator(loaded, held_out, params, device)
        validation = {"every": every, "params": _params_dict(params),
                      "held_out": [{"pair": h.pair, "pixels": h.pixels, "objects": h.objects} for h in held_out]}
    model = copy.deepcopy(loaded.model)
    if validate is not None:
        import torch  # deferred: torch

        with torch.no_grad():
            validation["start_score"] = validate(model)["score"]
        yield Progress(0, settings.steps, "validated the starting model",
                       {"epoch": 0, "val_score": validation["start_score"]})
    batches, training_step, trainable = loaded.family.finetune_setup(model, loaded.meta, train_pairs, settings)
    # fit counts patience from step -1 until the first validation: never stop before one.
    patience = settings.steps + 1 if settings.patience is None else max(settings.patience, every + 1)
    config = TrainConfig(epochs=settings.steps, steps_per_epoch=1, lr=settings.lr, seed=settings.seed,
                         patience=patience, validate_every=every,
                         checkpoint_every_s=float("inf"), freeze_batchnorm=True, amp=settings.amp,
                         max_minutes=None if settings.seconds is None else settings.seconds / 60)
    result = yield from fit(model, batches, training_step, validate, config, device=device, cancel=cancel, params=trainable)
    model.requires_grad_(True)
    if validation is not None:
        validated = result.best_epoch > 0
        validation["best_score"] = float(result.best_score) if validated else None
        validation["best_step"] = max(result.best_epoch, 0)
    return model.cpu(), FinetuneResult(**vars(result), validation=validation)


def _params_dict(params: Any) -> dict:
    return params_to_dict(params)


def save_finetuned(
    path: str | Path, parent: LoadedModel, model, result: TrainResult, pairs: list[CorrectedImage],
    settings: FinetuneSettings,
) -> Path:
    """Write the fine-tuned model as a new checkpoint recording its parent; never overwrites the parent.

    ``meta["finetune"]`` records the settings, the data (shapes, objects, checked and held-out pixels),
    the history (loss per step, ``val_score`` where validated) and, with held-out regions,
    ``result.validation`` (starting and best held-out score, best step, post-processing parameters).
    """
    path = Path(path)
    if path.resolve() == Path(parent.path).resolve():
        raise WeightsError(f"refusing to overwrite the loaded weights {parent.path.name!r}; choose a new file name")
    meta = copy.deepcopy(parent.meta)
    meta.pop("format_version", None)
    meta["name"] = path.stem
    meta["parent"] = {"name": parent.name, "file": parent.path.name, "sha256": parent.sha256}
    meta["finetune"] = {
        "settings": asdict(settings),
        "data": [
            {"shape": list(np.shape(p.image)), "objects": int(len(np.unique(p.labels)) - 1),
             "region_pixels": None if p.region is None else int(np.count_nonzero(p.region)),
             "holdout_pixels": None if p.holdout is None else int(np.count_nonzero(p.holdout))}
            for p in pairs
        ],
        "history": result.history,
        "validation": getattr(result, "validation", None),
        "stopped": result.stopped,
        "seconds": round(result.wall_seconds, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return save_checkpoint(path, model.state_dict(), meta, half=False)
