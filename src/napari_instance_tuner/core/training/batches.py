"""Where :func:`~.loop.fit` gets its batches: one running random generator, or DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class _IndexedBatches:
    """Map-style dataset: item ``i`` is ``next_batch(default_rng((seed, i)))`` (one whole batch)."""

    def __init__(self, next_batch: Callable, seed: int) -> None:
        self.next_batch = next_batch
        self.seed = seed

    def __getitem__(self, index: int):
        return self.next_batch(np.random.default_rng((self.seed, int(index))))


def _as_made(batch):
    """The batch exactly as ``next_batch`` made it (DataLoader would otherwise convert numpy arrays)."""
    return batch


def batch_stream(next_batch: Callable, rng: np.random.Generator, config, first_step: int):
    """Batches for steps ``first_step, first_step + 1, ...``: from ``rng`` or from DataLoader workers.

    ``config`` is a :class:`~.loop.TrainConfig` (``loader_workers``, ``epochs``, ``steps_per_epoch``, ``seed``).
    """
    if config.loader_workers <= 0:
        while True:
            yield next_batch(rng)
    from torch.utils.data import DataLoader  # deferred: torch

    total = config.epochs * config.steps_per_epoch
    loader = DataLoader(
        _IndexedBatches(next_batch, config.seed), batch_size=None, sampler=range(first_step, total),
        num_workers=config.loader_workers, prefetch_factor=4, collate_fn=_as_made,
    )
    # No worker_init_fn calling cv2.setNumThreads: after fork, reconfiguring OpenCV's thread pool waits
    # forever on threads that were not copied (found on a GPU run; tests/core/test_training.py).
    yield from loader


def to_device(batch: tuple, device: str, memory_format=None) -> tuple:
    """``batch`` on ``device``: every element with a ``.to`` is moved; a 4-D image tensor first element
    (B, C, H, W) also takes ``memory_format`` (channels-last on a CPU)."""
    first, *rest = batch
    first = first.to(device)
    if memory_format is not None and getattr(first, "ndim", 0) == 4:
        first = first.contiguous(memory_format=memory_format)
    return (first, *(r.to(device) if hasattr(r, "to") else r for r in rest))
