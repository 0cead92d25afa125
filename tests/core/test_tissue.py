"""Tissue detection on a coarse level: background tiles of a slide never reach the network; objects in tissue
are found as without the filter."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.family import Maps
from napari_instance_tuner.core.inference.slide_segment import open_source, segment_at_model_scale
from napari_instance_tuner.core.inference.streaming import StreamSettings
from napari_instance_tuner.core.inference.tissue import thumbnail, tissue_filter, tissue_mask
from napari_instance_tuner.core.io.slides import write_svs
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import get_family
from napari_instance_tuner.core.synthetic import synthetic_glands

MODEL_UM = 0.62
SHAPE = (768, 1280)
PATCHES = ((40, 60), (400, 860))  # (y, x) of two 320 x 384 tissue patches on white glass


def _glass_with_tissue(seed: int = 3) -> np.ndarray:
    rgb = np.full(SHAPE + (3,), 242, np.uint8)
    rgb += np.random.default_rng(0).integers(0, 6, rgb.shape, dtype=np.uint8)  # glass is not perfectly flat
    patch, _ = synthetic_glands((320, 384), seed=seed)
    for y, x in PATCHES:
        rgb[y : y + 320, x : x + 384] = patch
    return rgb


def test_mask_finds_tissue_not_glass():
    rgb = _glass_with_tissue()
    mask = tissue_mask(rgb[::8, ::8])
    truth = np.zeros(SHAPE, bool)
    for y, x in PATCHES:
        truth[y : y + 320, x : x + 384] = True
    truth = truth[::8, ::8]
    assert mask[truth].mean() > 0.95  # the patches
    assert mask[~truth].mean() < 0.05  # glass (the dilation reaches 2 thumbnail pixels beyond)
    assert not tissue_mask(np.full((50, 60, 3), 240, np.uint8)).any()  # glass only
    assert tissue_mask(rgb[40:360:8, 60:444:8]).mean() > 0.9  # tissue only
    assert tissue_mask(rgb[::8, ::8, 0]).all()  # grey images are not filtered


def test_filter_maps_tiles_through_scale_and_offset():
    mask = np.zeros((10, 10), bool)
    mask[6, 6] = True  # thumbnail pixel (6, 6) = level-0 pixels 96..112 at downsample 16
    keep = tissue_filter(mask, 1 / 16)
    assert keep((64, 64, 128, 128)) and not keep((0, 0, 64, 64)) and not keep((112, 112, 160, 160))
    assert keep((0, 0, 64, 64)) is False and tissue_filter(mask, 1 / 16, margin=40)((0, 0, 64, 64))
    shifted = tissue_filter(mask, 1 / 8, offset=(4, 4))  # a half-scale view of a region at level-0 (64, 64)
    assert shifted((0, 0, 32, 32)) and not shifted((32, 32, 64, 64))


def test_thumbnail_of_a_large_single_level_is_read_with_a_stride():
    image = np.arange(3000 * 2000, dtype=np.uint32).reshape(3000, 2000)
    thumb, down = thumbnail([image], [1.0], max_side=500)
    assert down == 6 and np.array_equal(thumb, image[::6, ::6])


class DarkStain:
    """A stand-in network: foreground (and centroid) = dark pixels of the window; the real post-processing."""

    def __init__(self) -> None:
        self.family = get_family("three-branch")
        self.name, self.windows = self.family.name, []

    def predict_maps(self, model, window, meta, *, device=None, tile_size=None, cancel=None):
        yield from ()
        self.windows.append(window.shape)
        fg = (window.mean(axis=-1) < 150).astype(np.float32)
        return Maps(arrays={"foreground": fg, "boundary": np.zeros_like(fg), "centroid": fg})

    def postprocess(self, maps, params):
        return self.family.postprocess(maps, params)


class Loaded:
    def __init__(self) -> None:
        self.family, self.model, self.name = DarkStain(), None, "dark-stain"
        self.meta = {"in_channels": 3, "normalisation": {"kind": "none"}, "pixel_size_um": MODEL_UM}


@pytest.mark.parametrize("threads", [1, 2])
def test_slide_background_tiles_are_never_run(tmp_path, threads):
    loaded = Loaded()
    params = loaded.family.family.Params(min_size=20, grow_back=0)
    path = write_svs(tmp_path / "glass.svs", _glass_with_tissue(), MODEL_UM, 20, levels=3)
    source = open_source(path)
    settings = StreamSettings(tile=256, halo=64, threads=threads)
    try:
        full = run(segment_at_model_scale(loaded, source, params, settings=settings))
        assert full.tiles == len(loaded.family.windows) == 15
        loaded.family.windows.clear()
        skipped = run(segment_at_model_scale(loaded, source, params, settings=settings, skip_background=True))
    finally:
        source.close()
    # Tiles whose core (plus the halo) is glass only never reached the network: 4 or 5 of 15 (the two corner
    # tiles far from both patches at least; the mask is dilated and the tile grown by the halo).
    assert len(loaded.family.windows) == skipped.tiles and 8 <= skipped.tiles <= 11
    assert any("tissue found" in n for n in skipped.notes)
    labels, reference = np.asarray(skipped.labels), np.asarray(full.labels)
    assert skipped.count == full.count >= 10  # every object (all in tissue) found
    assert np.array_equal(labels, reference)
