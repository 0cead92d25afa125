"""Dense mosaics of real nuclei images (DSB2018 layout) for the network-speed benchmarks.

The densest images of a split (most labelled nuclei per pixel) are cut into 256 x 256 crops and laid
side by side, so a 1024 x 1024 mosaic holds 16 crops of real nuclei at their own magnification. Only
the images' pixels are used (no labels enter the benchmarks' figures); nothing is written to disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def densest_images(data_dir: str | Path, count: int = 48) -> list[Path]:
    """The ``count`` images of ``data_dir/images`` whose label TIFF has the most objects per pixel."""
    import tifffile

    data_dir = Path(data_dir)
    rated = []
    for lab in sorted((data_dir / "labels").glob("*.tif")):
        labels = tifffile.imread(lab)
        if min(labels.shape) < 256:
            continue
        rated.append(((len(np.unique(labels)) - 1) / labels.size, lab.stem))
    rated.sort(reverse=True)
    images = {p.stem: p for p in (data_dir / "images").iterdir()}
    return [images[stem] for _, stem in rated[:count] if stem in images]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    if image.dtype != np.uint8:
        lo, hi = np.percentile(image, (0.5, 99.5))
        image = np.clip((image - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return image


def nuclei_mosaic(data_dir: str | Path, size: int = 1024, seed: int = 0, crop: int = 256,
                  with_labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A uint8 (size, size, 3) mosaic of ``crop``-pixel crops of the densest images of ``data_dir``.

    With ``with_labels``, also the int32 (size, size) mosaic of their label TIFFs (objects renumbered,
    those cut by a crop's edge kept as their visible part), as ``(image, labels)``.

    Each seed draws other images and crop positions. Only dark-background (fluorescence) images are used,
    as most of DSB2018 is, so that one normalisation suits the whole mosaic.
    """
    import tifffile
    from skimage.io import imread

    rng = np.random.default_rng(seed)
    paths = [p for p in densest_images(data_dir, 80) if _as_rgb(imread(p)).mean() < 80][:40]
    n = size // crop
    out = np.zeros((size, size, 3), np.uint8)
    labels = np.zeros((size, size), np.int32)
    for i in range(n):
        for j in range(n):
            path = paths[int(rng.integers(len(paths)))]
            image = _as_rgb(imread(path))
            y = int(rng.integers(0, image.shape[0] - crop + 1))
            x = int(rng.integers(0, image.shape[1] - crop + 1))
            cell = np.s_[i * crop : (i + 1) * crop, j * crop : (j + 1) * crop]
            out[cell] = image[y : y + crop, x : x + crop]
            if with_labels:
                lab = tifffile.imread(path.parent.parent / "labels" / f"{path.stem}.tif")[y : y + crop, x : x + crop]
                _, inverse = np.unique(lab, return_inverse=True)
                labels[cell] = np.where(lab > 0, inverse.reshape(lab.shape) + labels.max(), 0)
    return (out, labels) if with_labels else out
