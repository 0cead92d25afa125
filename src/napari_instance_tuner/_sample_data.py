"""npe2 sample data: synthetic images generated on the fly, each with its ground truth as a Labels layer.

No data file is shipped: the images come from :mod:`.core.synthetic` with a fixed seed, so every user
sees the same sample.
"""

from __future__ import annotations

from typing import Any

from .core.synthetic import synthetic_glands, synthetic_nuclei, synthetic_worms

LayerDataTuple = tuple[Any, dict, str]

#: Seed of every sample, so the quick start always shows the same image.
SEED = 0


def _ground_truth(labels, name: str) -> LayerDataTuple:
    return labels, {"name": f"{name} ground truth", "opacity": 0.5, "visible": False}, "labels"


def glands() -> list[LayerDataTuple]:
    """H&E colon histology with glands (GlaS-like, 512 x 768 RGB) and the gland labels."""
    rgb, labels = synthetic_glands((512, 768), seed=SEED)
    return [(rgb, {"name": "glands", "rgb": True}, "image"), _ground_truth(labels, "glands")]


def nuclei() -> list[LayerDataTuple]:
    """Fluorescence nuclei, many touching (256 x 256 grey), and the nucleus labels."""
    image, labels = synthetic_nuclei((256, 256), seed=SEED)
    return [(image, {"name": "nuclei", "colormap": "gray"}, "image"), _ground_truth(labels, "nuclei")]


def worms() -> list[LayerDataTuple]:
    """Brightfield C. elegans, some crossing (512 x 768 uint16), and the worm labels (overlaps flattened)."""
    image, labels, _ = synthetic_worms((512, 768), seed=SEED)
    return [(image, {"name": "worms", "colormap": "gray"}, "image"), _ground_truth(labels, "worms")]


SAMPLES = {"glands": glands, "nuclei": nuclei, "worms": worms}
