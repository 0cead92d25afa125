"""What a prediction is scored by while training, auto-tuning and fine-tuning.

:func:`scorable` picks what metrics see from :class:`~..family.Instances`; :func:`selection_score` is the
default model-selection score; :func:`make_validator` builds the ``validate(model)`` of
:func:`~..training.loop.fit`. Both :mod:`..family` and :mod:`..training.loop` import from here (neither imports the other).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..progress import run


def selection_score(f1: float, dice: float) -> float:
    """The validation score that training and auto-tuning maximise: mean of object F1 and object Dice."""
    return 0.5 * (f1 + dice)


#: Auto-tuning objectives (:func:`tuning_objective`): how the images of a trial make its score.
OBJECTIVES: tuple[str, ...] = ("image-mean", "pooled")


def pooled_selection_score(per_image: list[dict]) -> float:
    """:func:`selection_score` of the pooled (data-set) GlaS object F1 and object Dice of
    :func:`~.metrics.glas_terms` results: the figures the GlaS challenge reports."""
    from .metrics import pooled_f1_dice  # deferred: scipy/scikit-image

    return selection_score(*pooled_f1_dice(per_image))


def tuning_objective(family, objective: str = "image-mean") -> tuple[Callable, Callable | None]:
    """``(score, combine)`` for :func:`~.autotune.autotune` by objective name.

    ``"image-mean"``: the family's score of each image (:meth:`Family.score`), averaged over the images (the
    default; every image weighs the same, a one-gland image as much as a crowded one). ``"pooled"``: the mean of
    the object F1 and object Dice pooled over the images as GlaS pools them (TP, FP and FN summed; object Dice
    weighted by object area over the data set), so each object weighs the same, as in the figures judged.

    Raises
    ------
    ValueError
        For another name.
    """
    if objective == "image-mean":
        return family.score, None
    if objective == "pooled":
        from .metrics import glas_terms  # deferred: scipy/scikit-image

        return glas_terms, pooled_selection_score
    raise ValueError(f"unknown tuning objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def scorable(instances: Any) -> np.ndarray:
    """What metrics should see of :class:`~..family.Instances`: the per-object masks (a
    :class:`~..sparse_masks.SparseMasks`, boxes and crops) where the family keeps overlaps, else the uint32
    (H, W) labels."""
    return instances.objects if instances.objects is not None else instances.labels


def make_validator(
    family,
    samples: list,
    meta: dict,
    params,
    metrics: dict[str, Callable[[Any, Any], float]],
    score: str | Callable[[dict], float],
    device: str = "cpu",
) -> Callable[[Any], dict]:
    """A ``validate(model) -> dict`` for :func:`~..training.loop.fit`: per-image metrics averaged over ``samples``.

    Parameters
    ----------
    family : Family
    samples : list[Sample]
        Validation images; each is scored against :attr:`~..training.data.Sample.reference`.
    meta : dict
        Checkpoint metadata (normalisation, pixel scale) for ``predict_maps``.
    params : dataclass
        Post-processing parameters.
    metrics : dict
        Name -> ``metric(pred, reference) -> float``; ``pred`` as :func:`scorable` gives it.
    score : str or callable
        The metric name whose mean is ``"score"`` (higher is better), or ``score(means) -> float``.
    device : str

    Returns
    -------
    callable
        ``validate(model)`` returning ``{"score": ..., **mean of every metric}``.
    """

    def validate(model) -> dict:
        values: dict[str, list[float]] = {name: [] for name in metrics}
        for s in samples:
            maps = run(family.predict_maps(model, s.image, meta, device=device))
            pred = scorable(family.postprocess(maps, params))
            for name, metric in metrics.items():
                values[name].append(float(metric(pred, s.reference)))
        means = {name: float(np.mean(v)) for name, v in values.items()}
        return {"score": float(means[score] if isinstance(score, str) else score(means)), **means}

    return validate
