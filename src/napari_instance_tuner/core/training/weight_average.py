"""Exponential moving average (EMA) of a model's weights for :func:`~.loop.fit`, and the batch-norm
recalibration the average needs before each validation (as ``torch.optim.swa_utils.update_bn`` does for SWA)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .batches import to_device

#: Training batches whose activations recompute the EMA's batch-norm statistics before a validation.
EMA_BN_BATCHES = 8


def make_ema(model, decay: float):
    """An ``AveragedModel`` of ``model`` keeping an exponential moving average of weights and buffers."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn  # deferred: torch

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def recalibrate_batchnorm(model, next_batch: Callable, rng: np.random.Generator, n_batches: int, *,
                          device: str = "cpu", memory_format=None, training_step: Callable | None = None) -> bool:
    """Recompute ``model``'s batch-norm running statistics from ``n_batches`` batches (a plain average).

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place: each ``_BatchNorm`` with running statistics gets the mean and variance of its
        inputs over the batches; the rest of the model is untouched; its train/eval mode is restored.
    next_batch : callable
        ``next_batch(rng) -> (x, ...)``; ``x`` a float tensor (B, C, H, W).
    rng : np.random.Generator
        Drives ``next_batch`` (pass a generator of its own, so the training stream is not consumed).
    n_batches : int
    training_step : callable, optional
        ``training_step(model, batch)`` of the family: the forward pass runs through it (without
        gradients), so models whose forward pass needs targets (detectors) are recalibrated too.
        Without it, ``model(x)`` runs on the batch's first element.

    Returns
    -------
    bool
        False (nothing changed) when the model has no such batch norm or, without ``training_step``,
        the batches are not image tensors (e.g. detection inputs, which are lists).
    """
    import torch  # deferred: torch

    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or n_batches <= 0:
        return False
    batches = [next_batch(rng) for _ in range(n_batches)]
    if training_step is None and not all(isinstance(b[0], torch.Tensor) and b[0].ndim == 4 for b in batches):
        return False
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for batch in batches:
            batch = to_device(batch, device, memory_format)
            if training_step is None:
                model(batch[0])
            else:
                training_step(model, batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return True
