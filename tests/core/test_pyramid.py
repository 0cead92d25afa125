"""Label pyramids for streamed labels, and the rule that decides when an image is streamed."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instance_tuner.core.errors import InputImageError
from napari_instance_tuner.core.io.pyramid import needs_streaming, pyramid_shapes


def _labels(shape=(300, 200)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 1000, shape, dtype=np.uint32)


def test_levels_halve_until_the_longest_side_fits():
    assert pyramid_shapes((300, 200), min_size=40) == [(300, 200), (150, 100), (75, 50), (38, 25)]
    assert pyramid_shapes((301, 203), min_size=30)[1] == (151, 102)  # odd sides: ceil, as [::2] keeps
    assert pyramid_shapes((64, 80), min_size=80) == [(64, 80)]  # a small image is its own only level
    assert pyramid_shapes((64, 80), min_size=79) == [(64, 80), (32, 40)]
    assert pyramid_shapes((64, 80), min_size=512, min_levels=3) == [(64, 80), (32, 40), (16, 20)]


def test_bad_shapes_and_sizes_are_refused():
    with pytest.raises(InputImageError, match="H, W"):
        pyramid_shapes((2, 8, 8))
    with pytest.raises(ValueError, match="min_size"):
        pyramid_shapes((8, 8), min_size=0)
    with pytest.raises(ValueError, match="min_levels"):
        pyramid_shapes((8, 8), min_levels=0)


@pytest.mark.parametrize(
    ("shape", "multiscale", "rgb", "expected"),
    [
        ((64, 64), False, False, False),  # exactly the limit: whole
        ((64, 65), False, False, True),  # one column more: streamed
        ((100, 100, 3), False, True, True),  # RGB: H * W counts, not the channels
        ((40, 40, 3), False, True, False),
        ((40, 40, 3), False, False, False),  # channels last without rgb
        ((32, 32), True, False, True),  # a multiscale 2D image is always streamed
        ((5, 100, 100), False, False, False),  # stacks run slice by slice in memory
        ((5, 100, 100), True, False, False),
        ((2, 100, 100, 3), False, True, False),
    ],
)
def test_needs_streaming(shape, multiscale, rgb, expected):
    assert needs_streaming(shape, multiscale, 64 * 64, rgb=rgb) is expected


def test_needs_streaming_refuses_unsupported_shapes():
    with pytest.raises(InputImageError, match="not supported"):
        needs_streaming((2, 2, 16, 16), False, 64)


# -- levels written once, chunk by chunk ---------------------------------------------------------------------


def _group_with_level0(path, labels, chunks=(64, 64)):
    """A zarr group at ``path`` whose array "0" holds ``labels`` (what a streamed run leaves)."""
    import zarr

    level0 = zarr.open_array(str(path / "0"), mode="w", shape=labels.shape, chunks=chunks, dtype=labels.dtype,
                             fill_value=0)
    level0[:] = labels
    return level0


def test_written_levels_are_exact_subsamples_stored_on_disk(tmp_path):
    import zarr

    from napari_instance_tuner.core.io.pyramid import pyramid_shapes, write_label_pyramid
    from napari_instance_tuner.core.progress import run

    labels = _labels((301, 203))  # odd sides, several 64 px chunks
    _group_with_level0(tmp_path / "labels.zarr", labels)
    reports = []
    levels = run(write_label_pyramid(tmp_path / "labels.zarr", min_size=40), reports.append)
    assert [lv.shape for lv in levels] == pyramid_shapes(labels.shape, 40) == [(301, 203), (151, 102), (76, 51),
                                                                              (38, 26)]
    assert all(isinstance(level, zarr.Array) for level in levels)  # stored arrays, not views of level 0
    group = zarr.open_group(str(tmp_path / "labels.zarr"), mode="r")
    assert sorted(group.array_keys()) == ["0", "1", "2", "3"]
    for k, level in enumerate(levels):
        assert level.dtype == np.uint32 and level.chunks == (min(64, level.shape[0]), min(64, level.shape[1]))
        assert (tmp_path / "labels.zarr" / str(k)).is_dir()
        np.testing.assert_array_equal(group[str(k)][:], labels[:: 2**k, :: 2**k])  # read back from disk
    # One report per chunk written: 3 x 2 chunks of 64 px in level 1, 2 x 1 in level 2, 1 in level 3.
    assert reports[-1].done == reports[-1].total == 3 * 2 + 2 * 1 + 1
    assert [r.done for r in reports] == list(range(10))
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
    assert datasets[2]["coordinateTransformations"][0]["scale"] == [4.0, 4.0]


def test_written_levels_read_and_write_a_few_chunks_at_a_time(tmp_path, monkeypatch):
    """Memory stays bounded: every read and write touches at most the 2 x 2 chunks behind one output chunk."""
    import zarr

    from napari_instance_tuner.core.io.pyramid import write_label_pyramid
    from napari_instance_tuner.core.progress import run

    labels = _labels((250, 330)).astype(np.uint16)  # larger than a chunk in both directions; dtype kept
    _group_with_level0(tmp_path / "labels.zarr", labels, chunks=(16, 16))
    largest = []
    get, put = zarr.Array.__getitem__, zarr.Array.__setitem__

    def reading(self, key):
        block = get(self, key)
        largest.append(np.size(block))
        return block

    def writing(self, key, value):
        largest.append(np.size(value))
        return put(self, key, value)

    monkeypatch.setattr(zarr.Array, "__getitem__", reading)
    monkeypatch.setattr(zarr.Array, "__setitem__", writing)
    levels = run(write_label_pyramid(zarr.open_group(str(tmp_path / "labels.zarr"), mode="a"), min_size=8))
    monkeypatch.undo()
    assert len(levels) == 7 and levels[-1].shape == (4, 6) and max(largest) <= 16 * 16
    for k, level in enumerate(levels):
        assert level.dtype == np.uint16
        np.testing.assert_array_equal(level[:], labels[:: 2**k, :: 2**k])


def test_rewriting_a_pyramid_drops_deeper_levels_and_min_levels_holds(tmp_path):
    import zarr

    from napari_instance_tuner.core.io.pyramid import write_label_pyramid
    from napari_instance_tuner.core.progress import run

    path = tmp_path / "labels.zarr"
    _group_with_level0(path, _labels((100, 60)), chunks=(32, 32))
    assert len(run(write_label_pyramid(path, min_size=10))) == 5
    levels = run(write_label_pyramid(path, min_size=512, min_levels=2))  # already small: 2 levels for napari
    assert [lv.shape for lv in levels] == [(100, 60), (50, 30)]
    assert sorted(zarr.open_group(str(path), mode="r").array_keys()) == ["0", "1"]


def test_writing_a_pyramid_can_be_cancelled_and_needs_level_0(tmp_path):
    import zarr

    from napari_instance_tuner.core.errors import Cancelled
    from napari_instance_tuner.core.io.pyramid import write_label_pyramid
    from napari_instance_tuner.core.progress import CancelToken, run

    _group_with_level0(tmp_path / "labels.zarr", _labels((128, 128)), chunks=(16, 16))
    token = CancelToken()
    work = write_label_pyramid(tmp_path / "labels.zarr", min_size=16, cancel=token)
    next(work), next(work)
    token.cancel()
    with pytest.raises(Cancelled):
        next(work)
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(InputImageError, match="no array '0'"):
        run(write_label_pyramid(tmp_path / "empty.zarr"))
