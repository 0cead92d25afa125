"""The learning rate of each optimiser step: constant, or constant then a cosine decay to zero.

The three-branch paper trains with a constant Adam learning rate, and so does ``train`` by default. With
``TrainConfig.lr_decay_from`` E, the rate stays at ``lr`` until epoch E, then follows half a cosine down to zero
at the last epoch: the annealing of SGDR (Loshchilov & Hutter, ICLR 2017) without restarts, over the last epochs
only, so that a run resumed from another run's resume file (the cross-fit halves of issue 20 continue a base run
from its epoch 239) can decay over its own epochs. The rate is a function of the step's index over the whole run,
so a run stopped and resumed takes the same rates as one that ran through.
"""

from __future__ import annotations

import math


def learning_rate(lr: float, step: int, steps_per_epoch: int, epochs: int, decay_from: int | None) -> float:
    """The learning rate of optimiser step ``step``.

    Parameters
    ----------
    lr : float
        The base (constant) learning rate.
    step : int
        0-based index of the step over the whole run (epoch * steps_per_epoch + step within the epoch).
    steps_per_epoch, epochs : int
        The run's length: it ends after ``epochs * steps_per_epoch`` steps.
    decay_from : int or None
        The epoch at which the decay starts (None: constant ``lr``).

    Returns
    -------
    float
        ``lr`` before epoch ``decay_from``; then ``lr * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 at the
        decay's first step towards 1 at the end of the run (the last step's rate is small but not zero).
    """
    if decay_from is None:
        return lr
    start, end = decay_from * steps_per_epoch, epochs * steps_per_epoch
    if step < start:
        return lr
    t = min(1.0, (step - start) / max(1, end - start))
    return lr * 0.5 * (1.0 + math.cos(math.pi * t))
