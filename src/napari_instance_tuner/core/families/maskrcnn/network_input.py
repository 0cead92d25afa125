"""What the Mask R-CNN family's network sees: the image validated, normalised, rescaled, as RGB, optionally CLAHE'd.

Shared by inference (:mod:`.family`) and training (:mod:`.train`); it needs no torch.
"""

from __future__ import annotations

import numpy as np


def network_input(image: np.ndarray, meta: dict, config) -> tuple[np.ndarray, tuple[int, int]]:
    """Validate, normalise and rescale ``image`` as ``meta`` says, as 3 channels, with CLAHE if ``config`` (the
    :class:`~.model.MaskRCNNConfig`) asks for it.

    Returns
    -------
    prepared : np.ndarray
        float32 (h, w, 3) at network scale (``meta["pixel_scale"]``).
    shape : tuple of int
        (H, W) of the input image.
    """
    from ...inference.image import prepare_image  # deferred: image handling, only at inference

    prepared, shape = prepare_image(image, {**meta, "in_channels": 3})
    if config.clahe:
        prepared = clahe(prepared)
    return prepared, shape


def clahe(image: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a float (h, w, 3) image, clipped to [0, 1] first."""
    from skimage.exposure import equalize_adapthist  # deferred: scikit-image

    return equalize_adapthist(np.clip(image, 0.0, 1.0)).astype(np.float32)
