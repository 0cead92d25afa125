"""Streaming tiled segmentation: objects on tile seams are stitched into one object, as a whole-image run finds.

The seam tests use each family's *real* post-processing on deterministic maps built from synthetic objects
(a fake ``predict_maps`` reads the maps from the image's channels), so any difference from the whole-image
result comes from tiling and stitching, not from the network seeing different context at a tile border.
A family plugs in by adding a map synthesiser to ``SYNTHESISERS``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_instance_tuner.core.family import Instances, Maps
from napari_instance_tuner.core.inference.stitch import Stitcher, TileGrid, classify, tile_objects
from napari_instance_tuner.core.inference.streaming import StreamSettings, stitched_instances, stream_segment
from napari_instance_tuner.core.progress import run
from napari_instance_tuner.core.registry import family_names, get_family
from napari_instance_tuner.core.sparse_masks import SparseMasks

SHAPE = (200, 232)
TILE, HALO = 64, 32
# Disks (cy, cx, r): on vertical, horizontal and corner seams (at 64, 128, 192), touching pairs, one in a core,
# and one larger than the halo (r=26) that only a single tile sees whole.
DISKS = [(64, 30, 10), (30, 64, 10), (64, 64, 11), (128, 100, 9), (128, 119, 9), (100, 128, 10),
         (160, 192, 12), (96, 96, 8), (180, 30, 9), (150, 60, 26)]
BAR = (4, 8, 10, 220)  # (y, height, x0, x1): a long object across three seams, larger than the halo


def _disks(shape=SHAPE):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    masks = [((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) for cy, cx, r in DISKS]
    bar = np.zeros(shape, bool)
    y, h, x0, x1 = BAR
    bar[y : y + h, x0:x1] = True
    return masks + [bar], yy, xx


def three_branch_maps():
    """fg / boundary / centroid channels: boundaries separate touching disks, centroids mark every object."""
    masks, yy, xx = _disks()
    fg = np.zeros(SHAPE, np.float32)
    boundary = np.zeros(SHAPE, np.float32)
    centroid = np.zeros(SHAPE, np.float32)
    from scipy import ndimage as ndi

    for m, (cy, cx, _) in zip(masks, [(d[0], d[1], d[2]) for d in DISKS] + [(8, 100, 0)]):
        fg[m] = 1
        boundary[m & ~ndi.binary_erosion(m)] = 1
        centroid[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1
    for x in (40, 160):  # the bar has more than one centroid pixel set: still one object
        centroid[6:10, x - 2 : x + 2] = 1
    params = get_family("three-branch").Params(
        fg_threshold=0.5, boundary_threshold=0.5, centroid_threshold=0.5, boundary_erosion=0, centroid_erosion=0,
        close_radius=0, open_radius=0, min_size=20, grow_back=1)
    return np.stack([fg, boundary, centroid], -1), ("foreground", "boundary", "centroid"), params


def layering_maps():
    """fg / layer_1 / layer_2: neighbouring objects in different layers, some overlapping."""
    masks, _, _ = _disks()
    fg = np.zeros(SHAPE, np.float32)
    layers = np.zeros((2,) + SHAPE, np.float32)
    for k, m in enumerate(masks):
        fg[m] = 1
        layers[k % 2][m] = 0.9
    params = get_family("layering").Params(threshold=0.5, min_size=20, allow_overlaps=True)
    return np.stack([fg, layers[0], layers[1]], -1), ("foreground", "layer_1", "layer_2"), params


def maskrcnn_maps():
    """Channel 0 holds object ids; the fake network turns every id seen in a window into a detection
    (its box clipped to the window, a 28 x 28 mask resampled from the window's pixels, score 0.9)."""
    masks, _, _ = _disks()
    ids = np.zeros(SHAPE, np.float32)
    for k, m in enumerate(masks, start=1):
        ids[m] = k
    params = get_family("maskrcnn").Params(score_threshold=0.5, nms_iou=0.5, mask_threshold=0.5, min_size=20,
                                           allow_overlaps=False)
    return np.stack([ids, ids, ids], -1), ("detections",), params


def detections_from_ids(ids: np.ndarray) -> Maps:
    """Mask R-CNN maps (cached detections, see ``maskrcnn.postprocess``) of the objects in an id image."""
    import cv2

    boxes, probs = [], []
    for k in np.unique(ids[ids > 0]):
        mask = ids == k
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        boxes.append([x0, y0, x1, y1])
        probs.append(cv2.resize(mask[y0:y1, x0:x1].astype(np.float32), (28, 28), interpolation=cv2.INTER_LINEAR))
    n = len(boxes)
    extra = {"boxes": np.asarray(boxes, np.float32).reshape(n, 4), "scores": np.full(n, 0.9, np.float32),
             "classes": np.ones(n, np.int32), "mask_probs": np.asarray(probs, np.float16).reshape(n, 28, 28)}
    return Maps(arrays={"score_map": (ids > 0).astype(np.float32)}, extra=extra)


#: family name -> () -> (image (H, W, 3) float32 holding the maps, map names, post-processing parameters)
SYNTHESISERS = {"three-branch": three_branch_maps, "layering": layering_maps, "maskrcnn": maskrcnn_maps}


class MapsFromImage:
    """A family whose ``predict_maps`` reads the maps from the image channels; post-processing is the real one."""

    def __init__(self, family, names):
        self.family, self.names, self.name = family, names, family.name

    def predict_maps(self, model, image, meta, *, device=None, tile_size=None, cancel=None):
        yield from ()
        if self.names == ("detections",):
            return detections_from_ids(np.ascontiguousarray(image[..., 0]))
        return Maps(arrays={n: np.ascontiguousarray(image[..., k]) for k, n in enumerate(self.names)})

    def postprocess(self, maps, params):
        return self.family.postprocess(maps, params)


class FakeLoaded:
    def __init__(self, family):
        self.family, self.model = family, None
        self.meta = {"in_channels": 3, "normalisation": {"kind": "none"}}


def object_set(instances: Instances) -> set:
    """Objects as (box, mask bytes): comparable across id numbering."""
    return {(o.box, o.mask.tobytes()) for o in tile_objects(instances)}


@pytest.mark.parametrize("name", family_names())
def test_seam_objects_match_whole_image(name):
    if name not in SYNTHESISERS:
        pytest.skip(f"no map synthesiser for family {name!r} yet (add one to SYNTHESISERS)")
    image, names, params = SYNTHESISERS[name]()
    fake = MapsFromImage(get_family(name), names)
    whole = fake.postprocess(run(fake.predict_maps(None, image, {})), params)
    assert whole.count == len(DISKS) + 1
    keep = whole.objects is not None
    result = run(stream_segment(FakeLoaded(fake), image, params, settings=StreamSettings(tile=TILE, halo=HALO),
                                keep_objects=keep))
    assert result.tiles == 16
    stitched = stitched_instances(result)
    assert result.count == whole.count
    if name == "maskrcnn":
        # A detector's mask is resampled from 28 x 28 over its box: the bar, wider than the halo, is
        # merged from pieces whose boxes differ from the whole-image box, so only it may differ slightly.
        small = lambda inst: {o for o in object_set(inst) if o[0][3] - o[0][1] < 2 * HALO}
        assert small(stitched) == small(whole) and len(small(whole)) == len(DISKS)
        bar = lambda inst: next(o.mask for o in tile_objects(inst) if o.box[3] - o.box[1] > 150)
        whole_bar, stitched_bar = bar(whole), bar(stitched)
        assert abs(int(stitched_bar.sum()) - int(whole_bar.sum())) < 0.1 * whole_bar.sum()
    else:
        assert object_set(stitched) == object_set(whole)
    if not keep and name != "maskrcnn":  # label families: the label images agree up to the numbering
        assert np.array_equal(stitched.labels > 0, whole.labels > 0)
        pairs = set(zip(stitched.labels.ravel().tolist(), whole.labels.ravel().tolist()))
        assert len(pairs) == whole.count + 1


def test_zarr_output_and_ids_unique(tmp_path):
    import zarr

    image, names, params = three_branch_maps()
    fake = MapsFromImage(get_family("three-branch"), names)
    out = tmp_path / "labels.zarr"
    result = run(stream_segment(FakeLoaded(fake), image, params, out=out, settings=StreamSettings(tile=TILE, halo=HALO)))
    stored = zarr.open_array(str(out), mode="r")
    assert stored.dtype == np.uint32 and stored.shape == SHAPE
    ids = np.unique(stored[:])
    assert ids[0] == 0 and ids.size - 1 == result.count == len(DISKS) + 1


def test_stitcher_is_independent_of_arrival_order():
    image, names, params = three_branch_maps()
    fake = MapsFromImage(get_family("three-branch"), names)
    grid = TileGrid(SHAPE, TILE, HALO)
    results = []
    for i in range(len(grid)):
        y0, x0, y1, x1 = grid.window(i)
        results.append(classify(fake.postprocess(Maps({n: image[y0:y1, x0:x1, k] for k, n in enumerate(names)}),
                                                 params), grid, i))
    outs = []
    for order in (range(len(grid)), reversed(range(len(grid)))):
        labels = np.zeros(SHAPE, np.uint32)
        s = Stitcher(labels, grid)
        for i in order:
            s.add(results[i])
        s.finish()
        outs.append(labels)
    assert np.array_equal(outs[0], outs[1])


def test_constructed_tiles_duplicate_and_halves():
    """Stitching from per-tile Instances alone: a seam object reported whole by two tiles, and halves."""
    grid = TileGrid((64, 128), 64, 16)
    # Tile 0 window: x 0..80; tile 1 window: x 48..128. A small object at x 58..70 is whole in both.
    small = np.zeros((64, 128), bool)
    small[10:20, 58:70] = True
    # A wide object at x 30..100 (wider than the halo): cut in both windows.
    wide = np.zeros((64, 128), bool)
    wide[40:50, 30:100] = True
    results = []
    for i in range(2):
        y0, x0, y1, x1 = grid.window(i)
        masks = np.stack([small[y0:y1, x0:x1], wide[y0:y1, x0:x1]])
        labels = (masks[0] * 1 + masks[1] * 2).astype(np.uint32)
        results.append(classify(Instances(labels=labels, objects=SparseMasks.from_dense(masks)), grid, i))
    assert len(results[0].finals) == 1 and len(results[1].finals) == 0  # centre x=63 lies in tile 0's core
    assert all(len(r.pieces) == 1 for r in results)
    labels = np.zeros((64, 128), np.uint32)
    s = Stitcher(labels, grid, keep_objects=True)
    for r in results:
        s.add(r)
    assert s.finish() == 2
    got = {(o.box, o.mask.tobytes()) for o in s.objects}
    assert got == {(o.box, o.mask.tobytes()) for o in tile_objects(Instances(labels, SparseMasks.from_dense(np.stack([small, wide]))))}


def test_single_tile_equals_whole_image_with_real_network(tmp_path, tiny_loaded):
    """An image that fits in one tile gives exactly the whole-image labels (same ids) with a real model."""
    loaded = tiny_loaded("three-branch", tmp_path)
    rng = np.random.default_rng(0)
    image = (rng.random((96, 80, 3)) * 255).astype(np.uint8)
    params = loaded.family.Params(min_size=5, fg_threshold=0.45, grow_back=0)
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
    whole = loaded.family.postprocess(maps, params)
    result = run(stream_segment(loaded, image, params, device="cpu"))
    assert result.tiles == 1
    assert np.array_equal(result.labels, whole.labels)


@pytest.mark.parametrize("name", ["three-branch", "layering"])
def test_tiled_real_network_runs_every_family(tmp_path, name, tiny_loaded):
    loaded = tiny_loaded(name, tmp_path)
    rng = np.random.default_rng(1)
    image = (rng.random((100, 120, 3)) * 255).astype(np.uint8)
    params = loaded.family.Params(min_size=5)
    result = run(stream_segment(loaded, image, params, device="cpu", keep_objects=True,
                                settings=StreamSettings(tile=64, halo=16)))
    assert result.tiles == 4 and result.labels.shape == (100, 120)
    assert len({o.id for o in result.objects}) == result.count


def test_tiff_input_read_lazily(tmp_path):
    import tifffile

    from napari_instance_tuner.core.inference.streaming import open_image, read_window

    image = (np.random.default_rng(2).random((300, 260, 3)) * 255).astype(np.uint8)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, image, tile=(128, 128))
    with open_image(path) as lazy:
        assert not isinstance(lazy, np.ndarray) and tuple(lazy.shape) == image.shape
        assert np.array_equal(read_window(lazy, (10, 20, 200, 250)), image[10:200, 20:250])
    assert np.array_equal(read_window(open_image([image, image[::2, ::2]]), (0, 0, 5, 5)), image[:5, :5])


def test_cuda_oom_halves_the_network_tile_and_says_so(tmp_path, tiny_loaded):
    """A model that 'runs out of CUDA memory' above 64 px: the tile is halved, retried, and reported."""
    from types import SimpleNamespace

    import torch
    loaded = tiny_loaded("three-branch", tmp_path)

    class OOMAbove(torch.nn.Module):
        def __init__(self, inner, limit):
            super().__init__()
            self.inner, self.limit = inner, limit
            self.config, self.size_divisor = inner.config, inner.size_divisor

        def forward(self, x):
            if max(x.shape[-2:]) > self.limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return self.inner(x)

    image = (np.random.default_rng(3).random((128, 128, 3)) * 255).astype(np.uint8)
    params = loaded.family.Params(min_size=4, fg_threshold=0.47)
    flaky = SimpleNamespace(family=loaded.family, model=OOMAbove(loaded.model, 64), meta=loaded.meta)
    messages = []
    result = run(stream_segment(flaky, image, params, device="cpu", settings=StreamSettings(network_tile=128)),
                 lambda p: messages.append(p.message))
    assert "CUDA out of memory with network tiles of 128 px; retrying with 64 px" in messages
    expected = run(stream_segment(loaded, image, params, device="cpu", settings=StreamSettings(network_tile=64)))
    assert np.array_equal(result.labels, expected.labels)
    with pytest.raises(Exception, match="even with network tiles of 64 px"):
        run(stream_segment(SimpleNamespace(family=loaded.family, model=OOMAbove(loaded.model, 16), meta=loaded.meta),
                           image, params, device="cpu", settings=StreamSettings(network_tile=128)))


@pytest.mark.parametrize("family", ["three-branch", "layering", "maskrcnn"])
def test_amp_runs_the_network_in_bfloat16_on_a_cpu_that_has_it_and_in_float32_elsewhere(family, tmp_path, monkeypatch,
                                                                                        tiny_loaded):
    from napari_instance_tuner.core.training import loop as training

    loaded = tiny_loaded(family, tmp_path)
    seen = []
    module = loaded.model.backbone if family == "maskrcnn" else loaded.model
    module.register_forward_hook(lambda m, i, out: seen.append(next(iter(out.values())).dtype if isinstance(out, dict)
                                                              else out.dtype))
    image = (np.random.default_rng(0).random((96, 80, 3)) * 255).astype(np.uint8)
    params = loaded.family.default_params(loaded.meta)
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(training, "bfloat16_supported", lambda device, native=native: native)
        seen.clear()
        result = run(stream_segment(loaded, image, params, settings=StreamSettings(amp=True), device="cpu"))
        assert seen and set(seen) == {expected}, (native, seen)
        assert np.asarray(result.labels).shape == image.shape[:2]
