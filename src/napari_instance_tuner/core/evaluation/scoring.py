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
