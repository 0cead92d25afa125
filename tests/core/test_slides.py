"""Whole slides: tiled JPEG pyramids with an Aperio description, read lazily with their pixel size; bad files."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from napari_instance_tuner import _readers
from napari_instance_tuner.core.io.slides import SlideError, is_slide, open_slide, write_svs


def tissue(shape=(600, 800), seed=0) -> np.ndarray:
    """A smooth RGB test image (JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 128 + 60 * np.sin(yy / 37.0) * np.cos(xx / 53.0)
    img = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1) + rng.normal(0, 2, (*shape, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def slide_path(tmp_path):
    return write_svs(tmp_path / "case.svs", tissue(), pixel_size_um=0.25, magnification=40)


def test_reader_gives_lazy_levels_with_pixel_size(slide_path):
    with open_slide(slide_path) as slide:
        check_levels(slide)


def check_levels(slide):
    assert slide.shape == (600, 800) and slide.vendor == "aperio"
    assert slide.pixel_size_um == 0.25 and slide.magnification == 40
    assert [lvl.shape for lvl in slide.levels] == [(600, 800, 3), (150, 200, 3), (38, 50, 3)]
    assert slide.downsamples[:2] == [1.0, 4.0]
    assert type(slide.levels[0]).__name__ == "Array"  # dask: nothing read yet
    crop = np.asarray(slide.levels[0][100:140, 200:260].compute())
    assert np.abs(crop.astype(int) - tissue()[100:140, 200:260]).mean() < 4  # JPEG-close to what was written
    assert slide.level_for_pixel_size(0.62) == 0 and slide.level_for_pixel_size(1.0) == 1
    assert slide.level_for_pixel_size(100) == 2 and slide.level_pixel_size(1) == 1.0


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the layer's data keep the file open; freed here
def test_npe2_reader_opens_a_multiscale_layer_scaled_in_micrometres(slide_path, tmp_path):
    reader = _readers.get_slide_reader(str(slide_path))
    assert reader is not None
    (data, kwargs, kind) = reader(str(slide_path))[0]
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [d.shape[:2] for d in data] == [(600, 800), (150, 200), (38, 50)]
    assert kwargs["scale"] == (0.25, 0.25) and kwargs["metadata"]["pixel_size_um"] == 0.25
    plain = tmp_path / "plain.tif"
    import tifffile

    tifffile.imwrite(plain, tissue((64, 64)))
    assert _readers.get_slide_reader(str(plain)) is None  # an ordinary TIFF is left to napari's reader
    assert is_slide(slide_path) and not is_slide(tmp_path / "x.png")
    del data, reader
    gc.collect()


def test_generic_pyramidal_ome_tiff_is_a_slide(tmp_path):
    import tifffile

    img = tissue((512, 512))
    path = tmp_path / "p.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, subifds=1, tile=(128, 128), compression="jpeg", photometric="rgb",
                 metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "axes": "YXS"})
        tw.write(img[::2, ::2], subfiletype=1, tile=(128, 128), compression="jpeg", photometric="rgb")
    assert is_slide(path)
    with open_slide(path) as slide:
        assert [lvl.shape[:2] for lvl in slide.levels] == [(512, 512), (256, 256)]
        assert slide.pixel_size_um == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_bad_slides_give_clear_errors(slide_path, tmp_path):
    truncated = tmp_path / "cut.svs"
    truncated.write_bytes(slide_path.read_bytes()[:20000])
    with pytest.raises(SlideError, match="truncated|cannot be read"):
        open_slide(truncated)
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"hello, not a slide" * 10)
    with pytest.raises(SlideError, match="not a slide format"):
        open_slide(junk)
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")
    bare = write_svs(tmp_path / "bare.svs", tissue((300, 300)), pixel_size_um=None, magnification=None)
    with open_slide(bare) as slide:
        assert slide.pixel_size_um is None
    with pytest.raises(SlideError, match="does not record its pixel size"):
        open_slide(bare, require_pixel_size=True)
    (_, kwargs, _), = _readers.read_slide(str(bare))
    assert "scale" not in kwargs and "no pixel size" in kwargs["metadata"]["note"]
    del kwargs
    gc.collect()


def test_geojson_readers_open_labels_and_shapes(tmp_path):
    from napari_instance_tuner.core.io import export as ex

    lab = np.zeros((50, 60), np.uint32)
    lab[5:15, 5:15] = 1
    lab[20:30, 30:50] = 2
    lab[24:26, 36:40] = 0
    path = ex.write_geojson(tmp_path / "objs.geojson", ex.geojson_features(lab, ex.measurements(lab),
                                                                           classification="Gland"))
    (labels, kwargs, kind), = _readers.get_geojson_labels_reader(str(path))(str(path))
    assert kind == "labels" and labels.shape == (30, 50)
    assert np.array_equal(labels, lab[:30, :50]) and kwargs["metadata"]["classes"] == ["Gland", "Gland"]
    (shapes, skw, skind), = _readers.get_geojson_shapes_reader(str(path))(str(path))
    assert skind == "shapes" and len(shapes) == 2 and skw["features"]["class"] == ["Gland", "Gland"]
    assert _readers.get_geojson_labels_reader(str(tmp_path / "a.csv")) is None
