"""The rule that proposes a model for an image: colour, fluorescence (bright on dark) or brightfield."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.inference.image_kind import image_kind
from napari_instance_tuner.core.io.checkpoint import default_model, shipped_models


def _blobs(shape=(200, 300), bright_objects=True) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    objects = np.zeros(shape, bool)
    for cy, cx in [(40, 50), (120, 80), (60, 200), (150, 250), (100, 150)]:
        objects |= (yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2
    image = np.where(objects, 200, 20).astype(np.uint8)
    return image if bright_objects else 255 - image


def test_the_samples_and_synthetic_images_get_their_kind():
    from napari_instance_tuner._sample_data import SAMPLES

    kinds = {}
    for name, sample in SAMPLES.items():
        (data, kwargs, _), *_ = sample()
        kinds[name] = image_kind(data, bool(kwargs.get("rgb")))[0]
    assert kinds == {"glands": "rgb", "nuclei": "fluorescence", "worms": "brightfield"}
    assert image_kind(_blobs(), rgb=False)[0] == "fluorescence"
    assert image_kind(_blobs(bright_objects=False), rgb=False)[0] == "brightfield"


def test_a_grey_image_saved_as_rgb_counts_as_grey_and_stacks_use_their_middle_slice():
    grey = _blobs()
    assert image_kind(np.stack([grey] * 3, axis=-1), rgb=True)[0] == "fluorescence"
    stack = np.stack([np.zeros_like(grey), 255 - grey, np.zeros_like(grey)])  # only the middle slice has objects
    assert image_kind(stack, rgb=False)[0] == "brightfield"
    assert image_kind(np.zeros((10, 10), np.uint8), rgb=False)[0] == "fluorescence"  # flat: no crash


def test_only_a_strided_sample_of_a_large_image_is_read():
    reads = []

    class Recording(np.ndarray):
        def __getitem__(self, index):
            reads.append(index)
            return np.asarray(self).__getitem__(index)

    big = np.tile(_blobs(), (20, 20)).view(Recording)  # 4000 x 6000
    assert image_kind(big, rgb=False)[0] == "fluorescence"
    (index,) = reads
    assert all(isinstance(part, slice) and part.step > 1 for part in index)


@pytest.mark.parametrize("kind, family", [("rgb", "three-branch"), ("fluorescence", "maskrcnn"),
                                          ("brightfield", "layering")])
def test_every_kind_has_a_shipped_default_model_of_the_right_family(kind, family):
    from napari_instance_tuner.core.io.checkpoint import model_card

    name = default_model(kind)
    assert name in shipped_models()
    assert model_card(name)["family"] == family


def test_shipped_models_are_listed_in_natural_order_of_their_names():
    names = list(shipped_models())
    assert names.index("three-branch-glas-v2") < names.index("three-branch-glas-v9") < names.index(
        "three-branch-glas-v10")
    assert names.index("layering-bbbc010") < names.index("maskrcnn-dsb2018") < names.index("three-branch-glas")
