"""Shared fixtures: small synthetic label images and tiny random-weight checkpoints of every family.

Tests ask for what they need by name: ``tiny_arch`` / ``tiny_archs`` (architectures), ``tiny_meta`` (a
factory of checkpoint metadata), ``disks_labels`` (a factory of label images of disks), ``tiny_loaded`` (a
factory of saved and reloaded tiny models), ``tiny_checkpoint`` (the path of one), ``write_split`` (writes an
annotated split folder). The factories are
session-scoped, so module-scoped fixtures can use them too.
"""

from __future__ import annotations

import numpy as np
import pytest

TINY_ARCH = {"in_channels": 3, "base_channels": 4, "depth": 2, "conv_type": "separable"}
#: Tiny architectures of every trainable family, for tests that run each family.
TINY_ARCHS = {
    "three-branch": TINY_ARCH,
    "layering": {"in_channels": 3, "n_layers": 4, "base_channels": 4, "depth": 2, "head_channels": 8},
    "maskrcnn": {"backbone": "tiny_fpn", "base_channels": 8, "fpn_channels": 32, "representation_size": 64,
                 "mask_head_layers": 2, "mask_head_channels": 16, "rpn_pre_nms_top_n_test": 300,
                 "rpn_post_nms_top_n_test": 300, "box_detections_per_img": 100},
}


@pytest.fixture(autouse=True)
def user_weights(tmp_path_factory, monkeypatch):
    """The user's weights folder (core/io/user_weights.py) is a fresh temporary folder in every test."""
    from napari_instance_tuner.core.io.user_weights import ENV

    folder = tmp_path_factory.mktemp("user-weights")
    monkeypatch.setenv(ENV, str(folder))
    return folder


@pytest.fixture(autouse=True)
def fixed_inference_threads(monkeypatch):
    """Inference runs with a fixed number of threads in every test (core/inference/cpu.py would choose it from
    the machine's load): bfloat16 convolutions round differently with another thread count, so two runs of one
    test under different load could otherwise disagree (it happened in CI). Tests of the choice unset it."""
    from napari_instance_tuner.core.inference.cpu import THREADS_ENV

    monkeypatch.setenv(THREADS_ENV, "2")


@pytest.fixture(scope="session")
def _onnx_cache_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(autouse=True)
def onnx_cache(_onnx_cache_folder, monkeypatch):
    """The cache of exported ONNX networks (core/inference/onnx_runtime.py): one temporary folder for the session
    (tiny models of the same seed share their exports), never the user's; tests that need a fresh one set it."""
    from napari_instance_tuner.core.inference.onnx_runtime import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(_onnx_cache_folder))
    return _onnx_cache_folder


def _tiny_meta(**overrides) -> dict:
    """Metadata of a tiny three-branch checkpoint at native scale."""
    meta = {
        "name": "tiny",
        "family": "three-branch",
        "architecture": dict(TINY_ARCH),
        "in_channels": 3,
        "pixel_scale": 1.0,
        "normalisation": {"kind": "percentile", "low": 1.0, "high": 99.8},
        "postprocess": {},
    }
    meta.update(overrides)
    return meta


def _tiny_family_meta(family: str, **overrides) -> dict:
    """Metadata of a tiny checkpoint of ``family`` (a key of :data:`TINY_ARCHS`)."""
    return _tiny_meta(family=family, architecture=dict(TINY_ARCHS[family]), **overrides)


def _tiny_loaded(family: str, folder, seed: int = 0):
    """A saved and reloaded tiny random-weight model of ``family`` (``LoadedModel``)."""
    import torch

    from napari_instance_tuner.core.io.checkpoint import load_model, save_checkpoint
    from napari_instance_tuner.core.registry import get_family

    torch.manual_seed(seed)
    model = get_family(family).build_model(TINY_ARCHS[family])
    return load_model(save_checkpoint(folder / f"{family}.safetensors", model.state_dict(), _tiny_family_meta(family)))


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Path of a saved tiny random-weight three-branch checkpoint."""
    import torch

    from napari_instance_tuner.core.io.checkpoint import save_checkpoint
    from napari_instance_tuner.core.registry import get_family

    torch.manual_seed(0)
    model = get_family("three-branch").build_model(TINY_ARCH)
    return save_checkpoint(tmp_path / "tiny.safetensors", model.state_dict(), _tiny_meta())


def _disks_labels(shape=(64, 64), centres=((20, 20), (20, 44), (46, 30)), radius=9) -> np.ndarray:
    """int32 label image of disks (touching when centres are close)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


def _script(name: str):
    """The module of ``scripts/<name>.py`` (scripts are not a package), loaded afresh."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def script():
    """``script(name) -> module``: a script of ``scripts/`` (e.g. ``"ship_model"``) loaded as a module."""
    return _script


@pytest.fixture(scope="session")
def tiny_arch() -> dict:
    """The architecture of the tiny three-branch network (do not modify; copy it with ``{**tiny_arch}``)."""
    return TINY_ARCH


@pytest.fixture(scope="session")
def tiny_archs() -> dict:
    """Family name -> the architecture of its tiny network, for every trainable family."""
    return TINY_ARCHS


@pytest.fixture(scope="session")
def tiny_meta():
    """``tiny_meta(**overrides) -> dict``: metadata of a tiny three-branch checkpoint at native scale."""
    return _tiny_meta


@pytest.fixture(scope="session")
def disks_labels():
    """``disks_labels(shape=(64, 64), centres=..., radius=9) -> np.ndarray``: int32 label image of disks
    (touching when centres are close)."""
    return _disks_labels


def _write_split(folder, pairs, image_suffix: str = ".png"):
    """Write ``(name, image, labels)`` triples as ``folder/images/<name><suffix>`` and ``folder/labels/<name>.tif``
    (uint16); returns ``folder``."""
    import imageio.v3 as iio
    import tifffile

    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for name, image, labels in pairs:
        iio.imwrite(folder / "images" / f"{name}{image_suffix}", image)
        tifffile.imwrite(folder / "labels" / f"{name}.tif", np.asarray(labels).astype(np.uint16))
    return folder


@pytest.fixture(scope="session")
def write_split():
    """``write_split(folder, [(name, image, labels), ...], image_suffix=".png") -> folder``: an annotated split
    folder (images/, labels/) as the readers and ``train --data`` expect."""
    return _write_split


@pytest.fixture(scope="session")
def tiny_loaded():
    """``tiny_loaded(family, folder, seed=0) -> LoadedModel``: a tiny random-weight model of ``family``
    (a key of ``tiny_archs``), saved in ``folder`` and loaded back."""
    return _tiny_loaded


@pytest.fixture(scope="session")
def cancel_after():
    """``cancel_after(start, messages=3) -> result``: run the progress generator ``start(token)`` and cancel its
    ``CancelToken`` once it has yielded ``messages + 1`` progress messages; returns what the generator returns."""
    from napari_instance_tuner.core.progress import CancelToken, run

    def cancelled(start, messages: int = 3):
        token = CancelToken()
        work = start(token)
        for i, _ in enumerate(work):
            if i == messages:
                token.cancel()
                break
        return run(work)

    return cancelled
