"""Recipes: contents, validation, weights lookup with SHA-256 check, and pixel-exact replay on the CPU."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from napari_instance_tuner.core.errors import WeightsError
from napari_instance_tuner.core.io import recipe as rc
from napari_instance_tuner.core.io.checkpoint import load_model
from napari_instance_tuner.core.io.export import OverwriteError
from napari_instance_tuner.core.params import params_to_dict
from napari_instance_tuner.core.progress import run


@pytest.fixture
def image():
    from napari_instance_tuner.core.synthetic import synthetic_glands

    rgb, _ = synthetic_glands((64, 96), seed=0)
    return rgb


@pytest.fixture
def loaded(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.fixture
def sensitive(loaded, image):
    """Parameters at the random network's median outputs: dozens of objects, and any numeric drift shows."""
    maps = run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu"))
    pct = {name: float(np.median(a)) for name, a in maps.arrays.items()}
    params = replace(
        loaded.family.default_params(loaded.meta), fg_threshold=pct["foreground"],
        boundary_threshold=float(np.percentile(maps.arrays["boundary"], 80)), centroid_threshold=pct["centroid"],
        boundary_erosion=0, centroid_erosion=0, min_size=5, open_radius=0, close_radius=1, grow_back=2,
    )
    labels = loaded.family.postprocess(maps, params).labels
    assert labels.max() >= 10  # a non-trivial result to compare
    return params, labels


def test_recipe_records_weights_parameters_and_versions(loaded, sensitive, image):
    params, _ = sensitive
    recipe = rc.make_recipe(loaded, params, "img", image.shape, "cpu")
    assert recipe["format"] == rc.FORMAT and recipe["format_version"] == 1
    assert recipe["weights"]["file"] == "tiny.safetensors" and recipe["weights"]["sha256"] == loaded.sha256
    assert recipe["weights"]["path"] == str(loaded.path.resolve()) and recipe["weights"]["shipped"] is False
    assert recipe["family"] == "three-branch" and recipe["postprocess"] == params_to_dict(params)
    assert recipe["tiling"] == {"tile_size": 512, "tile_overlap": 64} and recipe["device"] == "cpu"
    assert recipe["normalisation"] == loaded.meta["normalisation"] and recipe["pixel_scale"] == 1.0
    assert recipe["image"] == {"name": "img", "shape": [64, 96, 3]}
    versions = recipe["versions"]
    assert versions["numpy"] == np.__version__ and versions["napari_instance_tuner"]
    assert all(versions[k] for k in ("torch", "scikit-image", "opencv", "python"))
    assert rc.version_differences(recipe) == {}
    # The same recipe from plain values (a Labels layer's metadata), without loading the model:
    plain = rc.build_recipe(weights_path=loaded.path, weights_sha256=loaded.sha256, family="three-branch",
                            params=params_to_dict(params), image_name="img", image_shape=image.shape)
    assert {k: v for k, v in plain.items() if k != "created"} == {k: v for k, v in recipe.items() if k != "created"}


def test_a_streamed_layers_recipe_keeps_its_streaming_settings(loaded):
    info = {"weights_path": str(loaded.path), "weights_sha256": loaded.sha256, "family": "three-branch",
            "params": params_to_dict(loaded.family.default_params(loaded.meta)), "device": "cpu", "tile_size": None,
            "image_name": "slide", "image_shape": [9000, 7000, 3]}
    assert "streaming" not in rc.recipe_from_metadata(info)  # labels segmented whole
    streamed = rc.recipe_from_metadata({**info, "streaming": {"tile": 2048, "halo": 256, "amp": False}})
    assert streamed["streaming"] == {"tile": 2048, "halo": 256, "amp": False}
    assert {k: v for k, v in streamed.items() if k not in ("created", "streaming")} == {
        k: v for k, v in rc.recipe_from_metadata(info).items() if k != "created"}
    assert "streaming" not in rc.recipe_from_metadata({**info, "streaming": "2048"})  # not a record: ignored


def test_replay_equals_the_direct_pipeline_pixel_for_pixel(loaded, sensitive, image, tmp_path):
    params, expected = sensitive
    path = rc.save_recipe(tmp_path / "run.recipe.json", rc.make_recipe(loaded, params, "img", image.shape, "cpu"))
    recipe = rc.load_recipe(path)
    labels = rc.replay(recipe, image)
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(rc.replay(recipe, image, loaded=loaded, device="cpu"), expected)


def test_cli_predict_with_recipe_reproduces_the_labels(loaded, sensitive, image, tmp_path, capsys):
    import imageio.v3 as iio
    import tifffile

    from napari_instance_tuner.cli import main

    params, expected = sensitive
    iio.imwrite(tmp_path / "img.png", image)
    recipe = rc.save_recipe(tmp_path / "r.json", rc.make_recipe(loaded, params, "img", image.shape, "cpu"))
    assert main(["predict", "--recipe", str(recipe), "--out", str(tmp_path / "out"), str(tmp_path / "img.png")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "img.tif"), expected)
    capsys.readouterr()
    assert main(["predict", "--out", str(tmp_path / "out"), str(tmp_path / "img.png")]) == 2
    assert "--model or --recipe" in capsys.readouterr().err


def test_changed_weights_are_refused(loaded, sensitive, image, tmp_path, tiny_checkpoint, tiny_arch, tiny_meta):
    import torch

    from napari_instance_tuner.core.io.checkpoint import save_checkpoint
    from napari_instance_tuner.core.registry import get_family

    recipe = rc.make_recipe(loaded, sensitive[0], "img", image.shape, "cpu")
    torch.manual_seed(1)
    other = get_family("three-branch").build_model(tiny_arch)
    save_checkpoint(tiny_checkpoint, other.state_dict(), tiny_meta())  # same name, other weights
    with pytest.raises(WeightsError, match="SHA-256.*different weights"):
        rc.replay(recipe, image)


def test_moved_weights_are_found_beside_the_recipe_or_given(loaded, sensitive, image, tmp_path, tiny_checkpoint):
    recipe = rc.make_recipe(loaded, sensitive[0], "img", image.shape, "cpu")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    path = rc.save_recipe(moved / "r.json", recipe)
    weights = tiny_checkpoint.rename(moved / "tiny.safetensors")
    assert rc.resolve_weights(rc.load_recipe(path)) == weights
    assert rc.resolve_weights(recipe, weights) == weights
    weights.rename(tmp_path / "gone.safetensors")
    with pytest.raises(WeightsError, match="not found.*tiny.safetensors"):
        rc.resolve_weights(rc.load_recipe(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "something-else"}), "not a napari-instance-tuner recipe"),
        (json.dumps({"format": rc.FORMAT, "format_version": 99}), "version 99"),
        (json.dumps({"format": rc.FORMAT, "format_version": 1, "family": "three-branch"}), "lacks 'weights'"),
    ],
)
def test_bad_recipe_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(rc.RecipeError, match=message):
        rc.load_recipe(path)


def test_bad_family_or_parameters_and_overwrite(loaded, sensitive, image, tmp_path):
    recipe = rc.make_recipe(loaded, sensitive[0], "img", image.shape, "cpu")
    with pytest.raises(rc.RecipeError, match="unknown model family 'nope'.*three-branch"):
        rc.validate_recipe({**recipe, "family": "nope"})
    with pytest.raises(rc.RecipeError, match="fg_threshold.*outside its range"):
        rc.validate_recipe({**recipe, "postprocess": {**recipe["postprocess"], "fg_threshold": 3.0}})
    with pytest.raises(rc.RecipeError, match="does not exist"):
        rc.load_recipe(tmp_path / "missing.json")
    path = rc.save_recipe(tmp_path / "r.json", recipe)
    with pytest.raises(OverwriteError, match="exists"):
        rc.save_recipe(path, recipe)
    assert "_recipe_dir" not in json.loads(rc.recipe_text(rc.load_recipe(path)))


def test_a_recipe_also_works_as_a_params_file(loaded, sensitive, image, tmp_path):
    from napari_instance_tuner.core.training.jobs import load_params

    params = sensitive[0]
    path = rc.save_recipe(tmp_path / "r.json", rc.make_recipe(loaded, params, "img", image.shape, "cpu"))
    assert load_params(loaded, str(path)) == params
