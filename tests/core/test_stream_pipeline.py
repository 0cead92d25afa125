"""The overlapped streamed loop (thread pool): labels byte-identical to the serial loop, cancel, skipped tiles."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_streaming import FakeLoaded, MapsFromImage, layering_maps, three_branch_maps

from napari_instance_tuner.core.inference.stream_pipeline import auto_threads
from napari_instance_tuner.core.inference.streaming import StreamSettings, stream_segment
from napari_instance_tuner.core.progress import Cancelled, CancelToken, run
from napari_instance_tuner.core.registry import get_family


def _tiled(synthesiser, reps=(2, 2)):
    image, names, params = synthesiser()
    return np.tile(image, reps + (1,)), names, params


@pytest.mark.parametrize("synthesiser", [three_branch_maps, layering_maps])
def test_threads_give_byte_identical_labels(synthesiser):
    image, names, params = _tiled(synthesiser)
    family = get_family("three-branch" if synthesiser is three_branch_maps else "layering")
    loaded = FakeLoaded(MapsFromImage(family, names))
    results = {}
    for threads in (1, 2, 3):
        settings = StreamSettings(tile=96, halo=32, threads=threads)
        results[threads] = run(stream_segment(loaded, image, params, settings=settings, keep_objects=True))
    serial = results[1]
    assert serial.count > 40 and serial.tiles == 25
    for threads in (2, 3):
        assert results[threads].labels.dtype == np.uint32
        assert results[threads].labels.tobytes() == serial.labels.tobytes()
        assert results[threads].count == serial.count
        assert [(o.id, o.box) for o in results[threads].objects] == [(o.id, o.box) for o in serial.objects]


def test_threads_with_a_real_network_match_the_serial_loop(tmp_path, tiny_loaded):
    loaded = tiny_loaded("three-branch", tmp_path)
    image = (np.random.default_rng(1).random((130, 150, 3)) * 255).astype(np.uint8)
    params = loaded.family.Params(min_size=5, fg_threshold=0.45)
    labels = [run(stream_segment(loaded, image, params, device="cpu",
                                 settings=StreamSettings(tile=64, halo=16, threads=t))).labels for t in (1, 2)]
    assert np.array_equal(labels[0], labels[1])


def test_zarr_output_and_progress_reach_every_tile(tmp_path):
    image, names, params = _tiled(three_branch_maps)
    loaded = FakeLoaded(MapsFromImage(get_family("three-branch"), names))
    seen = []
    serial = run(stream_segment(loaded, image, params, settings=StreamSettings(tile=96, halo=32, threads=1)))
    result = run(stream_segment(loaded, image, params, out=tmp_path / "l.zarr",
                                settings=StreamSettings(tile=96, halo=32, threads=2)), seen.append)
    assert np.array_equal(result.labels[:], serial.labels)
    assert seen[-1].done == seen[-1].total == 25


def test_cancel_stops_the_pool():
    image, names, params = _tiled(three_branch_maps)
    token = CancelToken()

    class CancelAfterTwo(MapsFromImage):
        calls = 0

        def predict_maps(self, *args, **kwargs):
            CancelAfterTwo.calls += 1
            if CancelAfterTwo.calls == 3:
                token.cancel()
            return (yield from super().predict_maps(*args, **kwargs))

    loaded = FakeLoaded(CancelAfterTwo(get_family("three-branch"), names))
    before = threading.active_count()
    with pytest.raises(Cancelled):
        run(stream_segment(loaded, image, params, settings=StreamSettings(tile=96, halo=32, threads=2),
                           cancel=token))
    assert CancelAfterTwo.calls == 3
    assert threading.active_count() == before  # the pool's threads are gone


def test_tile_filter_skips_tiles_and_keeps_objects_elsewhere():
    image, names, params = _tiled(three_branch_maps)
    calls = []

    class Counting(MapsFromImage):
        def predict_maps(self, model, window, *args, **kwargs):
            calls.append(window.shape)
            return (yield from super().predict_maps(model, window, *args, **kwargs))

    loaded = FakeLoaded(Counting(get_family("three-branch"), names))
    left = image.shape[1] // 2
    for threads in (1, 2):
        calls.clear()
        settings = StreamSettings(tile=96, halo=32, threads=threads)
        full = run(stream_segment(loaded, image, params, settings=settings))
        calls.clear()
        half = run(stream_segment(loaded, image, params, settings=settings, tile_filter=lambda box: box[1] < left))
        assert len(calls) == half.tiles == 5 * 3  # cores starting right of the middle were never run
        assert half.labels[:, 288 + 32 :].max() == 0
        assert 0 < half.count < full.count
        assert np.array_equal(half.labels[:, : 288 - 96] > 0, full.labels[:, : 288 - 96] > 0)


def test_auto_threads():
    assert auto_threads(3) == 3
    assert 1 <= auto_threads(0) <= 8
