"""The plugin's label TIFFs open as Labels (with their pixel size); other TIFFs are left to napari's readers."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from napari_instance_tuner._readers import get_label_tiff_reader, get_slide_reader
from napari_instance_tuner.core.io.export import write_label_tiff, write_label_tiff_tiles
from napari_instance_tuner.core.io.label_tiff import is_label_tiff, read_label_tiff


@pytest.mark.parametrize("high", [3, 70_000])  # uint16 (ImageJ with a pixel size) and uint32 (OME-TIFF)
def test_label_tiffs_written_by_the_plugin_open_as_labels_with_their_pixel_size(tmp_path, disks_labels, high):
    labels = disks_labels((40, 48)).astype(np.uint32)
    labels[labels == 3] = high
    path = write_label_tiff(tmp_path / "cells.tif", labels, pixel_size=(0.5, 0.25))
    reader = get_label_tiff_reader(str(path))
    assert reader is not None and is_label_tiff(path)
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "labels" and np.array_equal(data, labels) and kwargs["name"] == "cells"
    assert kwargs["scale"] == pytest.approx((0.5, 0.25))
    assert get_label_tiff_reader([str(path)]) is not None  # napari may pass a one-path list


def test_tiled_and_uncalibrated_label_tiffs_and_stacks(tmp_path, disks_labels):
    labels = disks_labels((64, 64))
    tiled = write_label_tiff_tiles(tmp_path / "tiled.tif", labels, tile=16)
    [(data, kwargs, _)] = get_label_tiff_reader(str(tiled))(str(tiled))
    assert np.array_equal(data, labels) and "scale" not in kwargs
    stack = write_label_tiff(tmp_path / "stack.tif", np.stack([labels, labels[::-1]]), pixel_size=(2.0, 2.0))
    data, size = read_label_tiff(stack)
    assert data.shape == (2, 64, 64) and size == pytest.approx((2.0, 2.0))
    [(_, kwargs, _)] = get_label_tiff_reader(str(stack))(str(stack))
    assert kwargs["scale"] == pytest.approx((1.0, 2.0, 2.0))
    lazy, _ = read_label_tiff(tiled, lazy_pixels=100)  # a slide's labels: a zarr view, read as shown
    assert not isinstance(lazy, np.ndarray) and np.array_equal(np.asarray(lazy[:]), labels)
    del lazy  # closes the file
    gc.collect()


def test_ordinary_tiffs_and_other_files_are_not_taken(tmp_path):
    import tifffile

    image = tmp_path / "image.tif"
    tifffile.imwrite(image, np.arange(64, dtype=np.uint16).reshape(8, 8))  # integer, like labels, but unmarked
    other = tmp_path / "labels.tif"
    tifffile.imwrite(other, np.ones((8, 8), np.uint16), software="Fiji")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    for path in (image, other, broken, tmp_path / "missing.tif", tmp_path / "notes.txt"):
        assert get_label_tiff_reader(str(path)) is None and not is_label_tiff(path)
    assert get_label_tiff_reader([str(image), str(other)]) is None


def test_the_slide_reader_does_not_claim_a_small_label_tiff(tmp_path, disks_labels):
    path = write_label_tiff(tmp_path / "small.tif", disks_labels((32, 32)))
    assert get_slide_reader(str(path)) is None
