"""predict on slides: --format, --roi and --pixel-size; outputs in level-0 pixels; the unknown-pixel-size note."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_instance_tuner.cli import main
from napari_instance_tuner.core.io.slides import write_svs


@pytest.fixture
def model_and_slide(tmp_path, tiny_loaded):
    from napari_instance_tuner.core.io.checkpoint import read_checkpoint, save_checkpoint

    state, meta = read_checkpoint(tiny_loaded("three-branch", tmp_path).path)
    model = save_checkpoint(tmp_path / "m.safetensors", state, {**meta, "pixel_size_um": 0.5})
    rng = np.random.default_rng(0)
    image = (rng.random((300, 420, 3)) * 255).astype(np.uint8)
    slide = write_svs(tmp_path / "case.svs", image, pixel_size_um=0.25)
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"fg_threshold": 0.475422, "min_size": 4, "grow_back": 0, "require_centroid": False,
                                  "subtract_boundaries": False, "close_radius": 0, "open_radius": 0}))
    return model, slide, params


def test_predict_formats_and_roi_in_level0_pixels(model_and_slide, tmp_path, capsys):
    model, slide, params = model_and_slide
    out = tmp_path / "out"
    args = ["predict", "--model", str(model), "--params", str(params), "--out", str(out), "--quiet"]
    assert main([*args, "--format", "tif,zarr,geojson,csv", str(slide)]) == 0
    assert {p.name for p in out.iterdir()} >= {"case.tif", "case.zarr", "case.geojson", "case.csv"}
    with tifffile.TiffFile(out / "case.tif") as tif:
        assert tif.pages[0].shape == (300, 420)  # level 0, although segmented at half the resolution
    assert json.loads((out / "case.geojson").read_text())["type"] == "FeatureCollection"
    assert main([*args, "--format", "tif", "--roi", "40,30,200,100", "--overwrite", str(slide)]) == 0
    with tifffile.TiffFile(out / "case.tif") as tif:
        assert tif.pages[0].shape == (100, 200)
    assert "done" in capsys.readouterr().out


def test_predict_notes_an_unknown_pixel_size_once(model_and_slide, tmp_path, capsys):
    model, _, params = model_and_slide
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("a", "b"):
        write_svs(folder / f"{name}.svs", np.full((64, 64, 3), 200, np.uint8), pixel_size_um=None)
    assert main(["predict", "--model", str(model), "--params", str(params), "--out", str(tmp_path / "o"),
                 "--quiet", "--format", "geojson", str(folder)]) == 0
    err = capsys.readouterr().err
    assert err.count("records no pixel size") == 1 and "0.5 µm/px" in err


@pytest.mark.parametrize("bad", [["--format", "tif,png"], ["--roi", "1,2,3"], ["--roi", "0,0,0,5"]])
def test_predict_rejects_bad_formats_and_regions(model_and_slide, tmp_path, capsys, bad):
    model, slide, params = model_and_slide
    assert main(["predict", "--model", str(model), "--params", str(params), "--out", str(tmp_path / "o"),
                 *bad, str(slide)]) == 2
    assert bad[0] in capsys.readouterr().err


def test_predict_skips_glass_unless_all_tiles(model_and_slide, tmp_path, capsys):
    model, _, params = model_and_slide
    glass = np.full((512, 640, 3), 240, np.uint8)
    glass[64:192, 96:256] = (np.random.default_rng(1).random((128, 160, 3)) * 200).astype(np.uint8)  # tissue
    slide = write_svs(tmp_path / "glass.svs", glass, pixel_size_um=0.5)
    out = tmp_path / "out"
    args = ["predict", "--model", str(model), "--params", str(params), "--out", str(out), "--tile", "128",
            "--halo", "32", str(slide)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "tiles without tissue were not run" in err
    assert main([*args, "--all-tiles", "--overwrite"]) == 0
    assert "tissue" not in capsys.readouterr().err
    assert json.loads((out / "recipe.json").read_text())["streaming"]["all_tiles"] is True
