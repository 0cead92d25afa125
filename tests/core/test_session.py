"""SegmentSession, headless: the network once, post-processing on the cached maps, recipes in and out.

Tiny random-weight models on small synthetic images; no Qt, no napari.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from napari_instance_tuner.core.errors import Cancelled, InstanceTunerError
from napari_instance_tuner.core.io import recipe as rc
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.progress import CancelToken, Progress, run
from napari_instance_tuner.core.session import SegmentSession


@pytest.fixture
def image() -> np.ndarray:
    """A 64 x 96 synthetic H&E image, uint8 (64, 96, 3)."""
    from napari_instance_tuner.core.synthetic import synthetic_glands

    return synthetic_glands((64, 96), seed=0)[0]


@pytest.fixture
def session(image, tiny_checkpoint) -> SegmentSession:
    """A session that ran the tiny model on the image once, with parameters that find objects."""
    s = SegmentSession(image, name="img")
    run(s.run(load_model(tiny_checkpoint), device="cpu"))
    arrays = s.maps.arrays()
    # At the random network's median outputs: dozens of objects (as tests/core/test_recipe.py does).
    s.postprocess(replace(
        s.params, fg_threshold=float(np.median(arrays["foreground"])),
        boundary_threshold=float(np.percentile(arrays["boundary"], 80)),
        centroid_threshold=float(np.median(arrays["centroid"])), boundary_erosion=0, centroid_erosion=0,
        min_size=5, open_radius=0, close_radius=1, grow_back=2))
    return s


@pytest.fixture
def loaded(session):
    """The session's model."""
    return session.model


@pytest.fixture
def no_network(session, monkeypatch) -> None:
    """From here on the network fails the test: only post-processing may run."""
    monkeypatch.setattr(type(session.family), "predict_maps", lambda *a, **k: pytest.fail("the network ran"))


def _direct(loaded, image, params):
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
    return loaded.family.postprocess(maps, params)


def test_run_keeps_model_maps_params_and_labels(session, loaded, image):
    assert session.model is loaded and session.family is loaded.family and session.device == "cpu"
    assert session.maps is not None and not session.maps.stacked and session.has_maps
    assert set(session.maps.arrays()) == {"foreground", "boundary", "centroid"}
    assert all(a.dtype == np.float32 and a.shape == image.shape[:2] for a in session.maps.arrays().values())
    direct = _direct(loaded, image, session.params)
    assert session.labels.dtype == np.uint32 and session.labels.shape == image.shape[:2]
    np.testing.assert_array_equal(session.labels, direct.labels)
    assert session.count == direct.count >= 1 and session.objects is None  # three-branch objects do not overlap
    assert session.image_shape == image.shape and session.streamed is None


def test_postprocess_reruns_only_the_cheap_part(session, loaded, image, no_network):
    count = session.count
    fewer = replace(session.params, min_size=60)
    instances = session.postprocess(fewer)
    assert session.params == fewer and session.instances is instances
    assert instances.count < count and session.count == instances.count
    np.testing.assert_array_equal(instances.labels, loaded.family.postprocess(session.maps.slices[0], fewer).labels)


def test_postprocess_without_maps_says_what_to_do(image):
    with pytest.raises(InstanceTunerError, match="run the network first"):
        SegmentSession(image).postprocess(None)
    with pytest.raises(InstanceTunerError, match="needs an image and a model"):
        run(SegmentSession(image).run())


def test_run_yields_progress_and_a_cancelled_run_leaves_the_session_as_it_was(session, loaded, image):
    maps, labels = session.maps, session.labels
    items = []
    gen = session.run(loaded, device="cpu")
    while True:
        try:
            items.append(next(gen))
        except StopIteration:
            break
    assert items and all(isinstance(p, Progress) for p in items) and session.maps is not maps  # a new run
    maps = session.maps
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        run(session.run(loaded, replace(session.params, min_size=999), device="cpu", cancel=token))
    assert session.maps is maps and session.params.min_size != 999
    np.testing.assert_array_equal(session.labels, labels)


def test_a_stack_is_segmented_slice_by_slice(loaded, image):
    grey = image.mean(-1).astype(np.float32)
    stack = np.stack([grey, grey[::-1]])  # (2, 64, 96)
    s = SegmentSession(stack, rgb=False, name="stack")
    instances = run(s.run(loaded, device="cpu"))
    assert s.maps.stacked and instances.labels.shape == stack.shape and instances.objects is None
    top = int(instances.labels[0].max())
    assert not np.any((instances.labels[1] > 0) & (instances.labels[1] <= top))  # ids unique across slices


def test_get_state_is_the_recipe_of_the_run(session, loaded, image):
    state = session.get_state()
    made = rc.make_recipe(loaded, session.params, "img", image.shape, "cpu")
    from_record = rc.recipe_from_metadata(session.record())
    for recipe in (made, from_record):
        recipe["created"] = state["created"]
        assert rc.recipe_text(recipe) == rc.recipe_text(state)  # byte for byte
    assert session.record()["image_shape"] == list(image.shape) and session.record()["role"] == "instances"


def test_set_state_replays_the_labels_exactly(session, image, tmp_path):
    path = rc.save_recipe(tmp_path / "r.json", session.get_state())
    again = SegmentSession(image, name="img").set_state(rc.load_recipe(path), device="cpu")
    assert again.params == session.params and again.model.sha256 == session.model.sha256 and again.maps is None
    labels = run(again.run()).labels
    np.testing.assert_array_equal(labels, session.labels)
    np.testing.assert_array_equal(labels, rc.replay(rc.load_recipe(path), image, device="cpu"))


def test_a_family_with_overlaps_keeps_its_masks(tmp_path, image, tiny_loaded):
    layering = tiny_loaded("layering", tmp_path)
    s = SegmentSession(image, name="img")
    params = replace(layering.family.default_params(layering.meta), threshold=0.3, min_size=0)
    instances = run(s.run(layering, params, device="cpu"))
    assert s.objects is instances.objects and len(s.objects) == s.count
    assert s.objects.shape == image.shape[:2]
    np.testing.assert_array_equal(s.objects.union(), s.labels > 0)


def test_a_large_image_is_streamed_into_a_label_pyramid(loaded, tmp_path):
    import zarr

    from napari_instance_tuner.core.inference.slide_segment import source_from_levels
    from napari_instance_tuner.core.inference.streaming import StreamSettings

    rgb = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    s = SegmentSession(name="big")
    params = loaded.family.default_params(loaded.meta)
    settings = StreamSettings(tile=32, halo=16)
    done = run(s.run_streamed(loaded, source_from_levels([rgb], None), params, tmp_path / "big.zarr",
                              settings=settings, device="cpu", min_size=16))
    assert s.streamed is done and s.maps is None and s.labels is None and s.count == done.count
    assert done.tiles == 9 and len(done.levels) >= 2 and done.levels[0].shape == (96, 80)
    assert zarr.open_group(str(tmp_path / "big.zarr"), mode="r")["0"].shape == (96, 80)
    assert s.record()["streaming"] == settings.to_dict() and s.record()["tile_size"] is None
    assert s.get_state()["streaming"] == settings.to_dict()
    with pytest.raises(InstanceTunerError):
        s.postprocess(params)  # no cached maps


def test_the_session_module_imports_no_gui():
    code = ("import sys, napari_instance_tuner.core.session, napari_instance_tuner.core.inference.batch; "
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'napari', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
