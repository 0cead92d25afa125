import numpy as np
import pytest

from napari_instance_tuner.core.errors import InputImageError
from napari_instance_tuner.core.inference.image import normalise, prepare_image, rescale, resize_to, to_channels_last


@pytest.mark.parametrize(
    "shape,dtype,channels,expected",
    [
        ((10, 12), np.uint8, 3, (10, 12, 3)),
        ((10, 12), np.uint16, 1, (10, 12, 1)),
        ((10, 12, 3), np.uint8, 3, (10, 12, 3)),
        ((10, 12, 4), np.uint8, 3, (10, 12, 3)),
        ((3, 10, 12), np.float32, 3, (10, 12, 3)),
        ((10, 12, 3), np.float64, 1, (10, 12, 1)),
        ((10, 12), bool, 3, (10, 12, 3)),
    ],
)
def test_to_channels_last_shapes(shape, dtype, channels, expected):
    out = to_channels_last(np.ones(shape, dtype), channels)
    assert out.shape == expected and out.dtype == np.float32


def test_rgb_to_grey_is_mean_and_grey_to_rgb_repeats():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 30
    assert np.allclose(to_channels_last(rgb, 1), 10)
    grey = np.arange(4, dtype=np.uint16).reshape(2, 2)
    out = to_channels_last(grey, 3)
    assert np.array_equal(out[..., 0], out[..., 2]) and out[1, 1, 1] == 3


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros((4, 4, 2)), "2 channels"),
        (np.zeros((10, 12, 20)), "3D stack"),
        (np.zeros((2, 3, 4, 5)), "4 dimensions"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
        (np.zeros((3, 3), complex), "dtype"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_bad_images_raise_clear_errors(image, match):
    with pytest.raises(InputImageError, match=match):
        to_channels_last(image, 3)


def test_normalise_percentiles_and_constant_image():
    img = np.linspace(0, 1000, 1000, dtype=np.float32).reshape(10, 100, 1)
    out = normalise(img)
    assert out.min() == pytest.approx(-0.01 / 0.988, abs=2e-3) and out.max() == pytest.approx(1.0, abs=3e-3)
    assert np.all(normalise(np.full((4, 4, 3), 7.0, np.float32)) == 0)


def test_16bit_and_8bit_versions_normalise_alike():
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    img16 = img8.astype(np.uint16) * 257
    a = normalise(to_channels_last(img8, 1))
    b = normalise(to_channels_last(img16, 1))
    assert np.allclose(a, b, atol=1e-5)


def test_rescale_and_nearest_resize_keep_labels():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 10:30] = 5
    half = rescale(labels, 0.5, order=0)
    assert half.shape == (20, 30) and set(np.unique(half)) == {0, 5}
    back = resize_to(half, (40, 60), order=0)
    assert (back == labels).mean() > 0.97
    prepared, shape = prepare_image(np.zeros((40, 60, 3), np.uint8), {"in_channels": 3, "pixel_scale": 0.5})
    assert prepared.shape == (20, 30, 3) and shape == (40, 60)
