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


def tiled(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` mirror-tiled (or cropped) to ``size`` x ``size`` pixels, channels kept."""
    reps = [int(np.ceil(size / n)) for n in image.shape[:2]]
    rows = [image if r % 2 == 0 else image[::-1] for r in range(reps[0])]
    column = np.concatenate(rows, 0)
    cols = [column if c % 2 == 0 else column[:, ::-1] for c in range(reps[1])]
    return np.ascontiguousarray(np.concatenate(cols, 1)[:size, :size])


def model_maps(image_path: str, model: str, size: int) -> dict[str, np.ndarray]:
    """The maps (float32 (size, size) each) of ``model`` on the image at ``image_path`` mirror-tiled to ``size``
    squared, as ``benchmarks/slider_latency.py`` shows it in the widget."""
    import imageio.v3 as iio  # deferred: only for real maps

    from napari_instance_tuner.core.io.checkpoint import load_model
    from napari_instance_tuner.core.progress import run

    loaded = load_model(model)
    image = np.asarray(iio.imread(image_path))
    image = tiled(image[..., :3] if image.ndim == 3 else image, size)
    return dict(run(loaded.family.predict_maps(loaded.model, image, loaded.meta)).arrays)


def add_maps_arguments(parser) -> None:
    """``--size``, ``--image`` and ``--model``: the maps a post-processing benchmark times (see :func:`maps_from_args`)."""
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--image", help="a real image (with --model) instead of the synthetic maps")
    parser.add_argument("--model", default="three-branch-glas-v10")


def maps_from_args(args) -> dict[str, np.ndarray]:
    """The model's maps of ``--image`` mirror-tiled to ``--size`` squared, or the synthetic gland maps."""
    return model_maps(args.image, args.model, args.size) if args.image else gland_like_maps(args.size)
