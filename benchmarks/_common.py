"""Helpers shared by the benchmark scripts (timing, realistic synthetic maps)."""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage as ndi


def median_ms(fn, repeats: int = 30, warmup: int = 3) -> tuple[float, float]:
    """(median, 90th percentile) wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times)), float(np.percentile(times, 90))


def gland_like_maps(size: int = 1024, n_objects: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """Blurred target maps of random touching blobs: the structure a trained model predicts."""
    from napari_instance_tuner.core.families.three_branch.targets import TargetConfig, make_targets

    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    pts = rng.integers(0, size, (n_objects, 2))
    seeds[pts[:, 0], pts[:, 1]] = np.arange(1, n_objects + 1)
    dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    labels = np.where(dist < size / np.sqrt(n_objects) * 0.45, seeds[iy, ix], 0)
    t = make_targets(labels, TargetConfig(), 0.5).astype(np.float32)
    noisy = [np.clip(ndi.gaussian_filter(m, 2) + rng.normal(0, 0.05, m.shape), 0, 1).astype(np.float32) for m in t]
    return dict(zip(("foreground", "boundary", "centroid"), noisy))


def worm_like_layer_maps(size: int = 1024, n_layers: int = 8, seed: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """Soft foreground and layering maps of crossing synthetic worms, adjacent worms in different layers.

    Returns (maps, number of worms). Each worm goes to the lowest layer not used by a worm closer than
    15 px (greedy colouring of the adjacency graph), as a trained layering model would place it.
    """
    from napari_instance_tuner.core.families.layering.targets import adjacency
    from napari_instance_tuner.core.synthetic import synthetic_worms

    rng = np.random.default_rng(seed)
    _, _, masks = synthetic_worms((size, size), seed=seed)
    adj = adjacency(masks, 15.0)
    layer_of: list[int] = []
    for i in range(len(masks)):
        used = {layer_of[j] for j in range(i) if adj[i, j]}
        layer_of.append(next(k for k in range(n_layers) if k not in used) if len(used) < n_layers else i % n_layers)
    layers = np.zeros((n_layers, size, size), np.float32)
    for mask, k in zip(masks, layer_of):
        layers[k][mask] = 1.0
    soft = lambda m: np.clip(ndi.gaussian_filter(m, 1.5) + rng.normal(0, 0.05, m.shape), 0, 1).astype(np.float32)
    maps = {"foreground": soft(masks.any(0).astype(np.float32))}
    maps.update({f"layer_{k + 1}": soft(layers[k]) for k in range(n_layers)})
    return maps, len(masks)
