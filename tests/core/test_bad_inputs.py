"""Property-based bad-input tests: every input either works or raises InstanceTunerError, never anything else."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_instance_tuner.core.errors import InstanceTunerError

DTYPES = [np.bool_, np.uint8, np.uint16, np.uint32, np.int32, np.int64, np.float16, np.float32, np.float64]
SHAPES = [(1, 1), (1, 9), (9, 1), (0, 5), (12, 17), (12, 17, 1), (12, 17, 2), (12, 17, 3), (12, 17, 4),
          (3, 12, 17), (4, 12, 17), (5, 12, 17), (2, 3, 12, 17), (7,), ()]
CONTENTS = ["zeros", "constant", "random", "nan", "inf", "-inf", "huge"]
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def make_array(dtype, shape, content, seed=0):
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape)) if shape else 1
    if content == "random":
        values = rng.random(size) * 200
    elif content == "constant":
        values = np.full(size, 7.0)
    elif content == "huge":
        values = np.full(size, 1e30)
    elif content in ("nan", "inf", "-inf"):
        values = rng.random(size)
        if size:
            values[size // 2] = float(content)
    else:
        values = np.zeros(size)
    with np.errstate(all="ignore"):
        if np.issubdtype(dtype, np.integer):
            values = np.nan_to_num(values, nan=0, posinf=0, neginf=0)
            values = np.clip(values, np.iinfo(dtype).min, np.iinfo(dtype).max)
        return values.astype(dtype).reshape(shape)


inputs = st.tuples(st.sampled_from(DTYPES), st.sampled_from(SHAPES), st.sampled_from(CONTENTS))


@pytest.fixture(scope="module", params=["three-branch", "layering", "maskrcnn"])
def loaded(request, tmp_path_factory, tiny_loaded):
    return tiny_loaded(request.param, tmp_path_factory.mktemp("m"))


@SETTINGS
@given(case=inputs)
def test_predict_and_postprocess_work_or_raise_one_error_type(loaded, case):
    from napari_instance_tuner.core.progress import run

    image = make_array(*case)
    try:
        maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
    except InstanceTunerError as exc:
        assert str(exc)  # a message the user can read
        return
    instances = loaded.family.postprocess(maps, loaded.family.default_params(loaded.meta))
    labels = instances.labels
    assert labels.dtype == np.uint32 and labels.ndim == 2
    if instances.masks is not None:
        assert instances.masks.dtype == bool and instances.masks.shape[1:] == labels.shape
    assert all(np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1 for a in maps.arrays.values())


@SETTINGS
@given(pred=inputs, gt=inputs)
def test_metrics_work_or_raise_one_error_type(pred, gt):
    from napari_instance_tuner.core.evaluation.metrics import evaluate

    try:
        result = evaluate(make_array(*pred), make_array(*gt, seed=1))
    except InstanceTunerError as exc:
        assert str(exc)
        return
    assert 0.0 <= result["object_f1"] <= 1.0 and 0.0 <= result["aji"] <= 1.0


@SETTINGS
@given(case=inputs)
def test_exporters_work_or_raise_one_error_type(tmp_path_factory, case):
    from napari_instance_tuner.core.io.export import geojson_features, measurements, write_geojson, write_label_tiff

    labels = make_array(*case)
    folder = tmp_path_factory.mktemp("x")
    try:
        write_label_tiff(folder / "l.tif", labels)
        table = measurements(labels)
        write_geojson(folder / "l.geojson", geojson_features(labels, table))
    except InstanceTunerError as exc:
        assert str(exc)


def test_huge_label_ids_are_measured_without_huge_allocations_and_empty_labels_are_refused(tmp_path):
    """Regressions found by the properties above (a MemoryError and a tifffile warning)."""
    from napari_instance_tuner.core.io.export import measurements, write_label_tiff

    labels = np.zeros((4, 4), np.uint32)
    labels[1:3, 1:3] = np.iinfo(np.uint32).max
    table = measurements(labels)
    assert table["label"].tolist() == [np.iinfo(np.uint32).max] and table["area"].tolist() == [4]
    with pytest.raises(InstanceTunerError, match="empty"):
        write_label_tiff(tmp_path / "e.tif", np.zeros((0, 5), np.uint16))
    assert list(tmp_path.iterdir()) == []
