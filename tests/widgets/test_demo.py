"""The quick start: ``napari-instance-tuner demo`` writes a screenshot and the labels of a segmented sample."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("family", ["three-branch", "maskrcnn"])
def test_demo_writes_a_screenshot_and_the_labels(family, tmp_path, tiny_loaded):
    """In a fresh process, as users run it: napari's OpenGL (Mesa's LLVM) is loaded before the model, which
    crashed the Mask R-CNN family when torchvision imported Triton's LLVM (see core/training/llvm_guard.py)."""
    import imageio.v3 as iio
    import tifffile
    checkpoint = tiny_loaded(family, tmp_path).path
    shot, labels = tmp_path / "demo.png", tmp_path / "labels.tif"
    command = [sys.executable, "-m", "napari_instance_tuner.demo", "--model", str(checkpoint)]
    command += ["--screenshot", str(shot), "--labels", str(labels), "--sample", "nuclei"]
    # Like a user's shell: no Qt platform forced, and no display (the demo starts Xvfb itself).
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY")}
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "canvas came out blank" not in out.stderr and "napari cannot draw" not in out.stderr, out.stderr
    assert f"wrote {shot}" in out.stdout and f"wrote {labels}" in out.stdout, out.stdout + out.stderr[-2000:]
    image = iio.imread(shot)
    assert image.shape[0] > 400 and image.shape[1] > 800 and image[..., :3].std() > 10, image.shape
    assert tifffile.imread(labels).shape == (256, 256)


def test_without_any_display_the_demo_renders_the_overlay_itself(tiny_checkpoint, tmp_path):
    import imageio.v3 as iio

    from napari_instance_tuner.demo import run_without_napari

    args = argparse.Namespace(sample="glands", device="cpu", screenshot=str(tmp_path / "s.png"), labels=None)
    assert run_without_napari(args, str(tiny_checkpoint)) == 0
    rendered = iio.imread(tmp_path / "s.png")
    assert rendered.shape == (512, 768, 3) and rendered.std() > 10
    assert (tmp_path / "s-labels.tif").is_file()


def test_model_for_sample_reads_the_model_cards(tmp_path, monkeypatch, tiny_checkpoint):
    import json
    import shutil

    from napari_instance_tuner.core.io import checkpoint
    from napari_instance_tuner.demo import model_for_sample

    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", weights)
    assert model_for_sample("glands") is None
    for name, card in {"a-worms": {"trained_on": "BBBC010"}, "b-glas": {"trained_on": "GlaS train split"}}.items():
        shutil.copy(tiny_checkpoint, weights / f"{name}.safetensors")
        (weights / f"{name}.json").write_text(json.dumps(card))
    assert model_for_sample("glands") == "b-glas" and model_for_sample("worms") == "a-worms"
    assert model_for_sample("nuclei") == "a-worms" and model_for_sample("nuclei", fallback=False) is None
    for name, card in {"c-glands": {"sample": "glands"}, "d-glands": {"sample": "glands", "default_for": ["rgb"]}}.items():
        shutil.copy(tiny_checkpoint, weights / f"{name}.safetensors")
        (weights / f"{name}.json").write_text(json.dumps(card))
    assert model_for_sample("glands") == "d-glands"  # of the cards naming the sample, the default one
