"""Batch predict: folders and globs, resume by recipe, streamed large images, dask workers == serial."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_instance_tuner.cli import main


@pytest.fixture
def batch_folder(tmp_path, tiny_loaded):
    loaded = tiny_loaded("three-branch", tmp_path)
    folder = tmp_path / "slides"
    (folder / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(folder / f"s{i}.tif", (rng.random((48, 64, 3)) * 255).astype(np.uint8))
    # Larger than --tile 64: streamed in 6 tiles into big.zarr (a tiled TIFF, read lazily).
    tifffile.imwrite(folder / "more" / "big.tif", (rng.random((150, 180, 3)) * 255).astype(np.uint8), tile=(32, 32))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"fg_threshold": 0.475422, "min_size": 4, "grow_back": 0, "require_centroid": False,
                                  "subtract_boundaries": False, "close_radius": 0, "open_radius": 0}))
    return loaded, folder, params


def _predict(loaded, folder, params, out, *extra):
    return main(["predict", "--model", str(loaded.path), "--params", str(params), "--out", str(out), "--tile", "64",
                 "--halo", "16", "--quiet", *extra, str(folder), str(folder / "**" / "big.tif")])


def test_batch_resume_and_summary(batch_folder, tmp_path, capsys):
    loaded, folder, params = batch_folder
    out = tmp_path / "out"
    assert _predict(loaded, folder, params, out, "--workers", "0") == 0
    table = capsys.readouterr().out
    assert "3 images: 3 done, 0 skipped" in table and "big.zarr" in table
    assert (out / "recipe.json").is_file() and (out / "s0.tif").is_file() and (out / "big.zarr").is_dir()
    side = json.loads((out / "big.tuner.json").read_text())
    assert side["tiles"] == 9 and side["outputs"] == ["big.zarr"]
    assert _predict(loaded, folder, params, out, "--workers", "0") == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    params.write_text(json.dumps({"fg_threshold": 0.5, "min_size": 4}))  # another recipe: done again
    assert _predict(loaded, folder, params, out, "--workers", "0") == 0
    assert "3 done, 0 skipped" in capsys.readouterr().out


def test_batch_reports_bad_images_and_continues(batch_folder, tmp_path, capsys):
    loaded, folder, params = batch_folder
    (folder / "broken.tif").write_bytes(b"not a tiff")
    assert _predict(loaded, folder, params, tmp_path / "out", "--workers", "0") == 2
    captured = capsys.readouterr()
    assert "3 done, 0 skipped (same recipe), 1 failed" in captured.out and "broken.tif" in captured.err


def test_distributed_batch_equals_serial(batch_folder, tmp_path, capsys):
    """Two worker processes (LocalCluster, 1 thread each), each loading the model once, give the serial labels."""
    import zarr

    loaded, folder, params = batch_folder
    assert _predict(loaded, folder, params, tmp_path / "serial", "--workers", "0") == 0
    assert _predict(loaded, folder, params, tmp_path / "dask", "--workers", "2", "--threads-per-worker", "1") == 0
    assert "3 done" in capsys.readouterr().out
    for name in ("s0.tif", "s1.tif"):
        assert np.array_equal(tifffile.imread(tmp_path / "serial" / name), tifffile.imread(tmp_path / "dask" / name))
    serial = zarr.open_array(str(tmp_path / "serial" / "big.zarr"), mode="r")[:]
    dask = zarr.open_array(str(tmp_path / "dask" / "big.zarr"), mode="r")[:]
    assert serial.max() > 1 and np.array_equal(serial, dask)


def test_workers_load_the_model_once(batch_folder, tmp_path):
    from napari_instance_tuner.core.inference.batch import BatchJob, run_batch
    from napari_instance_tuner.core.inference.distributed import ModelRef, executor, model_loads
    from napari_instance_tuner.core.inference.streaming import StreamSettings
    from napari_instance_tuner.core.io.recipe import make_recipe
    from napari_instance_tuner.core.progress import run

    loaded, folder, _ = batch_folder
    params = loaded.family.Params(min_size=4)
    recipe = make_recipe(loaded, params, "<batch>", ())
    paths = sorted(folder.glob("*.tif")) * 1
    job = BatchJob(ModelRef(str(loaded.path), loaded.sha256), params, recipe, paths + [folder / "more" / "big.tif"],
                   tmp_path / "o", StreamSettings(tile=64, halo=16), "cpu", threads=1)
    with executor(workers=2, threads_per_worker=1) as ex:
        reports = run(run_batch(job, ex))
        loads = ex.client.run(model_loads)
    assert [r.status for r in reports] == ["done"] * 3
    assert sorted(loads.values()) in ([0, 1], [1, 1])  # 11 tasks, at most one load per worker


def test_predict_with_a_recipe_streams_with_its_tiles_and_halo(batch_folder, tmp_path, capsys):
    loaded, folder, params = batch_folder
    first = tmp_path / "first"
    assert _predict(loaded, folder, params, first, "--workers", "0") == 0
    recipe = json.loads((first / "recipe.json").read_text())
    assert recipe["streaming"]["tile"] == 64 and recipe["streaming"]["halo"] == 16
    again = tmp_path / "again"  # no --tile / --halo: the recipe's are used, so the labels are the same
    assert main(["predict", "--recipe", str(first / "recipe.json"), "--out", str(again), "--quiet", "--workers", "0",
                 str(folder / "more" / "big.tif")]) == 0
    assert json.loads((again / "recipe.json").read_text())["streaming"] == recipe["streaming"]
    assert json.loads((again / "big.tuner.json").read_text())["tiles"] == 9
    import zarr

    assert np.array_equal(zarr.open_array(str(again / "big.zarr"), mode="r")[:],
                          zarr.open_array(str(first / "big.zarr"), mode="r")[:])
