"""ONNX Runtime for the dense families: the same maps and labels as torch, a cache exported once and replaced
when corrupt, the runtime choice, and a command line that never imports torch once the cache exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_instance_tuner
from napari_instance_tuner.cli import main
from napari_instance_tuner.core.errors import InstanceTunerError
from napari_instance_tuner.core.inference import onnx_runtime, runtime
from napari_instance_tuner.core.inference.batch import recipe_key
from napari_instance_tuner.core.inference.onnx_runtime import OnnxNetwork, cache_path
from napari_instance_tuner.core.inference.runtime import choose_runtime, load_for_runtime
from napari_instance_tuner.core.progress import run


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(onnx_runtime.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def exports(monkeypatch):
    """Counts the exports (``runtime.load_for_runtime`` imports ``export_onnx`` on each call)."""
    calls = []
    real = onnx_runtime.export_onnx

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_runtime, "export_onnx", counted)
    return calls


def _maps(loaded, image):
    return run(loaded.family.predict_maps(loaded.model, image, loaded.meta, device="cpu", tile_size=32))


def _gap_threshold(maps, margin: float) -> float:
    """A threshold among the middle values of the foreground that no map value comes within ``margin`` of.

    A threshold within float32 rounding of a map value would let the rounding decide a pixel, which no
    runtime can promise.
    """
    values = np.unique(np.concatenate([a.ravel() for a in maps.arrays.values()]))
    low, high = np.percentile(maps.arrays["foreground"], [10, 90])
    values = values[(values >= low) & (values <= high)]
    gap = int(np.argmax(np.diff(values)))
    assert values[gap + 1] - values[gap] > 2 * margin
    return float(values[gap] + values[gap + 1]) / 2


def _contrasted(family: str, arch: dict, folder):
    """A tiny random model of ``family`` whose convolution weights are doubled: maps spread over ~0.15, not
    1e-4 as the plain tiny models' do, so that thresholds fall between map values."""
    import torch

    from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
    from napari_instance_tuner.core.registry import get_family

    torch.manual_seed(0)
    state = {k: v * 2 if v.ndim == 4 else v for k, v in get_family(family).build_model(arch).state_dict().items()}
    meta = {"family": family, "architecture": dict(arch), "in_channels": 3, "pixel_scale": 1.0,
            "normalisation": {"kind": "percentile", "low": 1.0, "high": 99.8}, "postprocess": {}}
    return load_model(save_checkpoint(folder / f"{family}.safetensors", state, meta))


@pytest.mark.parametrize("family", ["three-branch", "layering"])
def test_onnx_maps_and_labels_equal_torch(family, tiny_archs, tmp_path, fresh_cache):
    """A 70x101 image in 32-px tiles (overlapping, padded at the edges): maps within 1e-4, labels identical."""
    loaded = _contrasted(family, tiny_archs[family], tmp_path)
    onnx = load_for_runtime(loaded.path, "onnx")
    assert isinstance(onnx.model, OnnxNetwork) and onnx.sha256 == loaded.sha256 and onnx.meta == loaded.meta
    assert onnx.model.size_divisor == loaded.model.size_divisor
    assert onnx.family.out_channels(onnx.model) == onnx.family.out_channels(loaded.model)
    image = (np.random.default_rng(1).random((70, 101, 3)) * 255).astype(np.uint8)
    torch_maps, onnx_maps = _maps(loaded, image), _maps(onnx, image)
    assert list(onnx_maps.arrays) == list(torch_maps.arrays)
    differences = []
    for name, array in torch_maps.arrays.items():
        assert onnx_maps.arrays[name].shape == (70, 101)
        differences.append(np.abs(onnx_maps.arrays[name] - array).max())
        assert differences[-1] <= 1e-4, name
    # A threshold inside the maps' range, so that objects exist, and not on a map value.
    threshold = _gap_threshold(torch_maps, max(differences))
    params = loaded.family.default_params(loaded.meta)
    if family == "three-branch":
        params = replace(params, fg_threshold=threshold, subtract_boundaries=False, require_centroid=False, min_size=4)
    else:
        params = replace(params, threshold=threshold, min_size=4)
    torch_labels = loaded.family.postprocess(torch_maps, params).labels
    assert torch_labels.max() > 0
    np.testing.assert_array_equal(loaded.family.postprocess(onnx_maps, params).labels, torch_labels)


def test_onnx_maps_of_the_efficientnet_encoder_equal_torch(tmp_path, fresh_cache):
    """The ImageNet-initialisable encoder (TensorFlow padding, ReLU6) exports as the U-Net does."""
    arch = {"in_channels": 3, "base_channels": 4, "depth": 5, "conv_type": "separable", "norm": "batch",
            "encoder": "efficientnet_lite0"}
    loaded = _contrasted("three-branch", arch, tmp_path)
    image = (np.random.default_rng(2).random((70, 101, 3)) * 255).astype(np.uint8)
    torch_maps, onnx_maps = _maps(loaded, image), _maps(load_for_runtime(loaded.path, "onnx"), image)
    for name, array in torch_maps.arrays.items():
        assert array.std() > 1e-3, name  # maps that vary: the comparison means something
        assert np.abs(onnx_maps.arrays[name] - array).max() <= 1e-4, name


def test_cache_is_reused_and_a_corrupt_file_replaced(tiny_loaded, tmp_path, fresh_cache, exports):
    loaded = tiny_loaded("three-branch", tmp_path)
    image = (np.random.default_rng(2).random((40, 40, 3)) * 255).astype(np.uint8)
    first = _maps(load_for_runtime(loaded.path, "onnx"), image)
    path = cache_path(loaded.sha256)
    assert path.is_file() and path.parent.parent == fresh_cache and len(exports) == 1
    load_for_runtime(loaded.path, "onnx")
    assert len(exports) == 1  # reused
    path.write_bytes(b"\x08\x07 not a network")
    again = _maps(load_for_runtime(loaded.path, "onnx"), image)
    assert len(exports) == 2 and OnnxNetwork(path).info["sha256"] == loaded.sha256
    np.testing.assert_array_equal(again.arrays["foreground"], first.arrays["foreground"])
    other = cache_path("0" * 64)  # a file of other weights under this name: exported again
    other.write_bytes(path.read_bytes())
    network = onnx_runtime.load_onnx("0" * 64, lambda: onnx_runtime.export_onnx(loaded.model, "0" * 64))
    assert len(exports) == 3 and network.info["sha256"] == "0" * 64


def test_choose_runtime(monkeypatch):
    monkeypatch.setattr(runtime, "may_have_gpu", lambda: False)
    assert choose_runtime("auto", "three-branch", None) == "onnx"
    assert choose_runtime(None, "layering", "cpu") == "onnx"
    assert choose_runtime("auto", "maskrcnn", "cpu") == "torch"
    assert choose_runtime("auto", "three-branch", "cpu", amp=True) == "torch"
    assert choose_runtime("auto", "three-branch", "cuda") == "torch"
    assert choose_runtime("torch", "three-branch", "cpu") == "torch"
    with pytest.raises(InstanceTunerError, match="maskrcnn family runs on torch only"):
        choose_runtime("onnx", "maskrcnn", "cpu")
    with pytest.raises(InstanceTunerError, match="not on 'cuda'"):
        choose_runtime("onnx", "three-branch", "cuda")
    with pytest.raises(InstanceTunerError, match="--amp"):
        choose_runtime("onnx", "three-branch", "cpu", amp=True)
    with pytest.raises(InstanceTunerError, match="unknown runtime 'tensorrt'"):
        choose_runtime("tensorrt", "three-branch", "cpu")
    monkeypatch.setattr(runtime, "may_have_gpu", lambda: True)  # auto device: torch decides, unless asked
    assert choose_runtime("auto", "three-branch", None) == "torch"
    assert choose_runtime("auto", "three-branch", "cpu") == "onnx"
    assert choose_runtime("onnx", "three-branch", "auto") == "onnx"
    monkeypatch.setattr(runtime, "onnxruntime_installed", lambda: False)
    assert choose_runtime("auto", "three-branch", "cpu") == "torch"
    with pytest.raises(InstanceTunerError, match="onnxruntime package is not installed"):
        choose_runtime("onnx", "three-branch", "cpu")


def test_predict_onnx_records_runtime_and_replays(tiny_archs, tmp_path, capsys):
    loaded = _contrasted("three-branch", tiny_archs["three-branch"], tmp_path)
    image = tmp_path / "a.tif"
    pixels = (np.random.default_rng(3).random((60, 80, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(image, pixels)
    maps = run(loaded.family.predict_maps(loaded.model, pixels, loaded.meta, device="cpu"))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"fg_threshold": _gap_threshold(maps, 1e-6), "min_size": 4, "grow_back": 0,
                                  "require_centroid": False, "subtract_boundaries": False, "close_radius": 0,
                                  "open_radius": 0}))
    common = ["--model", str(loaded.path), "--params", str(params), "--quiet", str(image)]
    assert main(["predict", "--runtime", "onnx", "--out", str(tmp_path / "onnx"), *common]) == 0
    assert main(["predict", "--runtime", "torch", "--out", str(tmp_path / "torch"), *common]) == 0
    recipes = {r: json.loads((tmp_path / r / "recipe.json").read_text()) for r in ("onnx", "torch")}
    assert recipes["onnx"]["runtime"] == "onnx" and recipes["onnx"]["device"] == "cpu"
    assert recipes["torch"]["runtime"] == "torch"
    assert recipe_key(recipes["onnx"]) != recipe_key(recipes["torch"])
    older = {k: v for k, v in recipes["torch"].items() if k != "runtime"}
    assert recipe_key(older) == recipe_key(recipes["torch"])  # older recipes keep their keys
    labels = tifffile.imread(tmp_path / "onnx" / "a.tif")
    assert labels.max() > 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "torch" / "a.tif"), labels)
    assert main(["predict", "--recipe", str(tmp_path / "onnx" / "recipe.json"), "--out", str(tmp_path / "again"),
                 "--quiet", str(image)]) == 0
    assert json.loads((tmp_path / "again" / "recipe.json").read_text())["runtime"] == "onnx"
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again" / "a.tif"), labels)


def test_predict_onnx_with_maskrcnn_is_a_clear_error(tiny_loaded, tmp_path, capsys):
    loaded = tiny_loaded("maskrcnn", tmp_path)
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.zeros((32, 32, 3), np.uint8))
    assert main(["predict", "--runtime", "onnx", "--model", str(loaded.path), "--out", str(tmp_path / "out"),
                 "--quiet", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runtime onnx cannot run this model: the maskrcnn family runs on torch only")
    assert not (tmp_path / "out").exists()


#: The command line in a fresh process; its last line says whether torch or a family module was imported.
_CLI = ("import sys; from napari_instance_tuner.cli import main; rc = main(sys.argv[1:]); "
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules); sys.exit(rc)")


def _env() -> dict:
    src = str(Path(napari_instance_tuner.__file__).parents[1])  # this checkout, whatever is installed
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def test_cli_predict_onnx_does_not_import_torch_once_cached(tiny_loaded, tmp_path):
    loaded = tiny_loaded("layering", tmp_path)
    load_for_runtime(loaded.path, "onnx")  # the cache exists (the first run exports, importing torch)
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, (np.random.default_rng(4).random((40, 50, 3)) * 255).astype(np.uint8))
    done = subprocess.run([sys.executable, "-c", _CLI, "predict", "--runtime", "onnx", "--model", str(loaded.path),
                           "--out", str(tmp_path / "out"), "--quiet", str(image)], capture_output=True, text=True,
                          env=_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["False", "True"]  # onnxruntime ran, torch was never imported
    assert (tmp_path / "out" / "a.tif").is_file()


def test_building_the_parser_imports_neither_torch_nor_metrics():
    """The help's examples name a model without importing its family; no torch, no scipy.optimize (metrics)."""
    probe = ("import sys; from napari_instance_tuner.core.registry import example_model; example_model(); "
             "print([m for m in sys.modules if m.startswith('napari_instance_tuner.core.families')]); "
             "from napari_instance_tuner.cli import build_parser; build_parser().format_help(); "
             "print(sorted(m for m in ('torch', 'scipy.optimize', 'onnxruntime') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]


def test_example_model_table_matches_the_family():
    from napari_instance_tuner.core.registry import DEFAULT_FAMILY, EXAMPLE_MODEL, example_model, get_family

    assert example_model() == EXAMPLE_MODEL == get_family(DEFAULT_FAMILY).example_model


def test_evaluate_runtime_onnx_equals_torch(tiny_archs, tmp_path, disks_labels, write_split, capsys):
    loaded = _contrasted("layering", tiny_archs["layering"], tmp_path)
    rng = np.random.default_rng(5)
    pairs = [(f"i{i}", (rng.random((48, 64, 3)) * 255).astype(np.uint8),
              disks_labels((48, 64), ((14, 14 + i), (30, 40)), 8)) for i in range(2)]
    split = write_split(tmp_path / "val", pairs, ".tif")
    reports = {}
    for name in ("onnx", "torch"):
        reports[name] = tmp_path / f"{name}.json"
        assert main(["evaluate", "--runtime", name, "--model", str(loaded.path), "--data", str(split), "--quiet",
                     "--json", str(reports[name])]) == 0
    onnx, torch = (json.loads(reports[n].read_text()) for n in ("onnx", "torch"))
    assert onnx == torch and onnx["summary"]["all"]["n_images"] == 2
