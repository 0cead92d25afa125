import numpy as np
import pytest
import torch

from napari_instance_tuner.core.errors import Cancelled, InputImageError, InstanceTunerError
from napari_instance_tuner.core.inference.predict import choose_device, device_description, predict_tiled
from napari_instance_tuner.core.progress import CancelToken, run
from napari_instance_tuner.core.registry import family_names, get_family


@pytest.fixture(scope="module")
def model(tiny_arch):
    torch.manual_seed(0)
    return get_family("three-branch").build_model(tiny_arch).eval()


def test_tiled_equals_untiled_without_seams(model):
    rng = np.random.default_rng(0)
    image = rng.random((150, 170, 3), dtype=np.float32)
    whole = run(predict_tiled(model, image, out_channels=3, tile_size=512, multiple=4))
    progress = []
    tiled = run(predict_tiled(model, image, out_channels=3, tile_size=64, overlap=24, multiple=4), progress.append)
    assert whole.shape == tiled.shape == (3, 150, 170)
    assert len(progress) > 4 and progress[-1].done == progress[-1].total
    diff = np.abs(whole - tiled)
    # The tiny model's receptive field (~20 px) fits in the overlap: stitched maps match the whole-image pass.
    assert diff.mean() < 1e-3 and diff.max() < 0.05
    # No seam: differences along tile borders are no larger than elsewhere.
    assert np.percentile(diff, 99) < 0.01


def test_small_and_odd_images_are_padded(model):
    for shape in [(1, 1, 3), (5, 3, 3), (33, 17, 3)]:
        out = run(predict_tiled(model, np.zeros(shape, np.float32), out_channels=3, multiple=4))
        assert out.shape == (3,) + shape[:2] and np.all((out >= 0) & (out <= 1))


def test_cancel_stops_between_tiles(model):
    token = CancelToken()
    gen = predict_tiled(model, np.zeros((200, 200, 3), np.float32), out_channels=3, tile_size=64, multiple=4, cancel=token)
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)


def test_family_predict_maps_returns_maps_at_image_size(model, tiny_meta):
    family = get_family("three-branch")
    image = (np.random.default_rng(1).random((60, 90, 3)) * 255).astype(np.uint8)
    maps = run(family.predict_maps(model, image, tiny_meta(pixel_scale=0.5), device="cpu"))
    assert set(maps.arrays) == {"foreground", "boundary", "centroid"} and maps.shape == (60, 90)
    assert all(a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1 for a in maps.arrays.values())
    instances = family.postprocess(maps, family.default_params({}))
    assert instances.labels.shape == (60, 90) and instances.labels.dtype == np.uint32
    grey16 = (np.random.default_rng(2).random((40, 40)) * 60000).astype(np.uint16)
    assert run(family.predict_maps(model, grey16, tiny_meta(), device="cpu")).shape == (40, 40)
    with pytest.raises(InputImageError, match="NaN"):
        run(family.predict_maps(model, np.full((8, 8), np.nan), tiny_meta()))


def test_device_choice():
    assert choose_device(None) in ("cpu", "cuda", "mps")
    assert choose_device("cpu") == "cpu"
    assert device_description("cpu").startswith("CPU")
    with pytest.raises(InstanceTunerError, match="unknown device"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InstanceTunerError, match="no CUDA GPU"):
            choose_device("cuda")


def test_registry_lists_valid_names():
    assert "three-branch" in family_names()
    with pytest.raises(InstanceTunerError, match="valid families: .*three-branch"):
        get_family("nope")


def test_flip_averaging_is_exact_for_a_mirror_symmetric_model_and_reports_progress(model):
    from napari_instance_tuner.core.inference.predict import predict_flips

    rng = np.random.default_rng(3)
    image = rng.random((40, 52, 3), dtype=np.float32)
    single = run(predict_flips(model, image, flips=1, out_channels=3, multiple=4))
    assert np.array_equal(single, run(predict_tiled(model, image, out_channels=3, multiple=4)))
    seen = []
    four = run(predict_flips(model, image, flips=4, out_channels=3, multiple=4), seen.append)
    assert four.shape == single.shape and seen[-1].done == seen[-1].total == 4
    # Averaging over the flips equals averaging the un-flipped predictions of flipped inputs.
    manual = np.mean([
        run(predict_tiled(model, np.ascontiguousarray(image[::a, ::b]), out_channels=3, multiple=4))[:, ::a, ::b]
        for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))
    ], axis=0)
    assert np.allclose(four, manual, atol=1e-6)
    # The flipped image's prediction is the flip of the prediction: flip-averaged maps are flip-equivariant.
    mirrored = run(predict_flips(model, np.ascontiguousarray(image[:, ::-1]), flips=4, out_channels=3, multiple=4))
    assert np.allclose(mirrored[:, :, ::-1], four, atol=1e-5)
    with pytest.raises(InstanceTunerError, match="1, 2 or 4"):
        run(predict_flips(model, image, flips=3, out_channels=3, multiple=4))
