"""Whole jobs behind the CLI: train from a data folder, predict files, evaluate a split.

Each job is a progress generator (see :mod:`..progress`) so the GUI can run it in a worker as well.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ..errors import InstanceTunerError
from ..evaluation.scoring import scorable, tuning_objective
from ..inference.image import DEFAULT_NORMALISATION
from ..io.checkpoint import LoadedModel, load_model, save_checkpoint
from ..params import params_from_dict, params_to_dict, read_params_file
from ..progress import CancelToken, Progress
from ..registry import get_family
from .data import Sample, extra_training_samples, load_split, read_groups, validation_split
from .loop import TrainConfig, refuse_amp


@dataclass
class TrainOptions:
    """Options of ``napari-instance-tuner train``.

    ``family_options`` is an instance of the family's :attr:`~..family.Family.TrainOptions` (None: its
    defaults): its architecture fields, updated with ``architecture`` (further keys, e.g. from ``--arch-json``),
    go to :meth:`~..family.Family.architecture`; the rest to the family's ``train``.
    ``augment_extra`` sets further :class:`~.augment.AugmentConfig` fields (e.g. ``p_stain``,
    ``p_elastic``); ``extra_data`` lists split folders whose images are added to training only, except
    images of validation patients (GlaS ``Grade.csv``), which are left out so validation stays unseen.
    ``split_seed`` draws the validation patients (None: ``train.seed``): runs with other training seeds but the
    same split can be compared and assembled into an ensemble (:func:`.ensemble.assemble`).
    """

    def augment_config(self):
        """The :class:`~.augment.AugmentConfig` these options describe (ValueError on bad values)."""
        from .augment import AugmentConfig  # deferred: cv2/scipy

        return AugmentConfig(enabled=self.augment, **self.augment_extra)

    data: str
    out: str
    family: str = "three-branch"
    architecture: dict = field(default_factory=dict)
    pixel_scale: float = 0.5
    pixel_size_um: float | None = None
    crop: int = 256
    batch_size: int = 8
    val_fraction: float = 0.18
    split_seed: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    family_options: Any = None
    augment: bool = True
    augment_extra: dict = field(default_factory=dict)
    extra_data: list = field(default_factory=list)
    autotune: bool = True
    device: str = "cpu"
    workdir: str = "checkpoints"
    name: str | None = None
    half: bool = True


def evaluate_samples(
    loaded: LoadedModel, samples: list[Sample], params, *, device: str | None = None, cancel: CancelToken | None = None
) -> Generator[Progress, None, list[dict]]:
    """Predict and score each sample with every metric; returns one dict per image (with ``name``)."""
    from ..evaluation.metrics import evaluate  # deferred: scipy/scikit-image

    rows = []
    for i, s in enumerate(samples):
        maps = yield from loaded.family.predict_maps(loaded.model, s.image, loaded.meta, device=device, cancel=cancel)
        pred = scorable(loaded.family.postprocess(maps, params))
        rows.append({"name": s.name, **evaluate(pred, s.reference)})
        yield Progress(i + 1, len(samples), f"evaluated {s.name}")
    return rows


def summarise(rows: list[dict], groups: dict[str, tuple[str, str]] | None = None) -> dict[str, dict]:
    """Aggregate per-image metric rows overall and per grade (GlaS ``Grade.csv``)."""
    from ..evaluation.metrics import aggregate  # deferred: scipy/scikit-image

    out = {"all": aggregate(rows)}
    for grade in sorted({g for _, g in (groups or {}).values()}):
        subset = [r for r in rows if (groups or {}).get(r["name"], ("", ""))[1] == grade]
        if subset:
            out[grade] = aggregate(subset)
    return out


def train_job(options: TrainOptions, cancel: CancelToken | None = None) -> Generator[Progress, None, Path]:
    """Train a model on ``options.data``, auto-tune its post-processing on the validation split, save it.

    The family builds and trains the model (:meth:`~..family.Family.train`); this job splits the data,
    writes the metadata, auto-tunes and evaluates. Returns the checkpoint path. Progress ``info``
    carries the per-epoch history records.
    """
    started = time.time()
    family = get_family(options.family)
    refuse_amp(family, options.train.amp)
    if options.family_options is None:
        options = replace(options, family_options=family.TrainOptions())
    samples = load_split(options.data)
    groups = read_groups(options.data)
    train_names, val_names = validation_split(
        [s.name for s in samples], options.val_fraction,
        options.train.seed if options.split_seed is None else options.split_seed, groups,
    )
    train_samples = [s for s in samples if s.name in set(train_names)]
    val_samples = [s for s in samples if s.name in set(val_names)]
    try:
        augment = options.augment_config()
    except ValueError as exc:
        raise InstanceTunerError(f"train: {exc}") from exc
    if augment.p_elastic > 0 and not family.elastic_augmentation:
        raise InstanceTunerError(f"train: elastic deformation is not implemented for the {family.name} family")
    held_patients = {groups.get(n, ("", ""))[0] for n in val_names} - {""}
    extra = extra_training_samples(options.extra_data, held_patients)
    train_samples += extra
    extra_names = [s.name for s in extra]
    in_channels = 1 if samples[0].image.ndim == 2 else 3
    try:
        arch = family.architecture({**options.family_options.architecture(), **options.architecture}, in_channels)
    except (ValueError, TypeError) as exc:
        raise InstanceTunerError(f"invalid {options.family} architecture: {exc}") from exc
    meta = {
        "name": options.name or Path(options.out).stem,
        "family": options.family,
        "architecture": arch,
        "in_channels": in_channels,
        "normalisation": DEFAULT_NORMALISATION,
        "pixel_scale": options.pixel_scale,
        "pixel_size_um": options.pixel_size_um,  # µm/px of the training images: inference resamples to it
        "tile_size": 512,
        "tile_overlap": 64,
        "postprocess": params_to_dict(family.Params()),
        "training": {
            "data": str(options.data),
            "train_images": train_names + extra_names,
            "extra_data": [str(f) for f in options.extra_data],
            "val_images": val_names,
            "n_train_objects": int(sum(_count_objects(s) for s in train_samples)),
            "augment": augment.to_dict(),
            "optimiser": {"name": options.train.optimizer, **options.train.to_dict()},
            "crop": options.crop,
            "batch_size": options.batch_size,
            "command": " ".join(sys.argv),
        },
        "package_version": __version__,
    }
    resume = Path(options.workdir) / f"{meta['name']}.resume.pt"
    model, result = yield from family.train(
        train_samples, val_samples, meta, options, resume_path=resume, cancel=cancel
    )
    meta["training"].update(
        {"history": result.history, "best_epoch": result.best_epoch, "stopped": result.stopped,
         "train_seconds": round(result.wall_seconds, 1), "torch": _torch_version(), "python": platform.python_version()}
    )
    # The untuned model goes to the work folder: --out appears only once complete (tuned and evaluated).
    untuned = save_checkpoint(Path(options.workdir) / f"{meta['name']}.untuned.safetensors", model.state_dict(),
                              meta, half=options.half)
    loaded = load_model(untuned)
    if val_samples:
        yield from tune_and_evaluate(loaded, meta, val_samples, groups, autotune=options.autotune,
                                     device=options.device, cancel=cancel)
    meta["training"]["wall_seconds"] = round(time.time() - started, 1)
    out = save_checkpoint(options.out, loaded.model.state_dict(), meta, half=options.half)
    untuned.unlink(missing_ok=True)
    return out


def tune_and_evaluate(
    loaded: LoadedModel,
    meta: dict,
    samples: list[Sample],
    groups: dict | None = None,
    *,
    autotune: bool = True,
    device: str | None = None,
    cancel: CancelToken | None = None,
    maps: list | None = None,
    key: str = "validation",
    objective: str = "image-mean",
    names: list[str] | None = None,
    start: Any = None,
) -> Generator[Progress, None, None]:
    """Auto-tune the post-processing on validation ``samples`` (the family's score), then record metrics.

    ``objective`` (:func:`~..evaluation.scoring.tuning_objective`): ``"image-mean"`` averages the family's score
    over the images; ``"pooled"`` maximises the mean of the pooled GlaS object F1 and object Dice.

    The maps of each sample are predicted once and serve both. ``maps`` (one per sample) replaces them with
    maps from elsewhere: cross-fitting (``scripts/retune_checkpoint.py --cross-fit``) tunes a model trained on
    every image with the maps of networks of its recipe that never saw those images.

    ``names`` limits the search to those parameters (None: all); ``start`` (a ``family.Params``) is where the
    search starts, default the parameters in ``meta`` (``family.default_params``).

    Updates ``meta`` in place: ``postprocess`` and ``training.autotune`` (when ``autotune``) and
    ``metrics[key]`` (:func:`summarise` of the per-image metrics, per GlaS grade with ``groups``).
    """
    from ..evaluation.metrics import evaluate  # deferred: scipy/scikit-image

    family = loaded.family
    params = family.default_params(meta) if start is None else start
    if maps is None:
        maps = []
        for s in samples:
            maps.append((yield from family.predict_maps(loaded.model, s.image, meta, device=device, cancel=cancel)))
    if autotune:
        from ..evaluation.autotune import autotune as search  # deferred: scipy/scikit-image

        score, combine = tuning_objective(family, objective)
        params, before, after = yield from search(
            family.postprocess, maps, [s.reference for s in samples], params, score, cancel=cancel, combine=combine,
            names=names,
        )
        meta["postprocess"] = params_to_dict(params)
        meta["training"]["autotune"] = {"score_before": before, "score_after": after, "on": "validation split",
                                        "objective": objective}
        if names is not None:
            meta["training"]["autotune"]["searched"] = list(names)
    rows = [{"name": s.name, **evaluate(scorable(family.postprocess(m, params)), s.reference)}
            for s, m in zip(samples, maps)]
    meta["metrics"] = {key: summarise(rows, groups)}


def _count_objects(sample: Sample) -> int:
    return int(sample.masks.shape[0]) if sample.masks is not None else int(len(np.unique(sample.labels)) - 1)


def _torch_version() -> str:
    import torch  # deferred: torch

    return torch.__version__


def load_params(loaded: LoadedModel, params_file: str | None):
    """The model's default post-processing parameters, overridden by a JSON file if given."""
    base = loaded.family.default_params(loaded.meta)
    if not params_file:
        return base
    return params_from_dict(type(base), read_params_file(params_file), base)


__all__ = ["TrainOptions", "evaluate_samples", "load_params", "summarise", "train_job"]
