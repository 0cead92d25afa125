"""The npe2 manifest: valid, importable, found by the package, and cheap to load (no torch)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "napari.yaml"


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_file(MANIFEST)


def _resolve(python_name: str):
    module, _, attr = python_name.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def test_manifest_validates_and_names_the_plugin(manifest):
    npe2.PluginManifest.model_validate(manifest.model_dump())  # the same checks as `npe2 validate`
    assert manifest.name == "napari-instance-tuner" and manifest.display_name == "Instance Tuner"


def test_the_package_ships_the_same_manifest():
    packaged = ROOT / "src" / "napari_instance_tuner" / "napari.yaml"
    assert packaged.is_symlink() and packaged.resolve() == MANIFEST.resolve()
    # What the entry point `napari_instance_tuner:napari.yaml` points at:
    from importlib.resources import files

    assert files("napari_instance_tuner").joinpath("napari.yaml").read_text() == MANIFEST.read_text()


def test_every_python_name_imports_and_resolves(manifest):
    names = [c.python_name for c in manifest.contributions.commands]
    assert len(names) >= 4
    for name in names:
        assert callable(_resolve(name)), name


def test_contributions_point_at_declared_commands(manifest):
    commands = {c.id for c in manifest.contributions.commands}
    widgets = manifest.contributions.widgets
    assert [(w.display_name, w.autogenerate) for w in widgets][:1] == [("Segment", False)]
    assert {w.command for w in widgets} <= commands
    assert {s.command for s in manifest.contributions.sample_data} <= commands
    segment_menu = manifest.contributions.menus["napari/layers/segment"]
    assert [item.command for item in segment_menu] == ["napari-instance-tuner.segment"]


def test_segment_menu_is_one_napari_accepts():
    from napari._app_model.constants._menus import is_menu_contributable

    assert is_menu_contributable("napari/layers/segment")


def test_sample_data_gives_an_image_and_its_ground_truth(manifest):
    for contribution in manifest.contributions.sample_data:
        command = next(c for c in manifest.contributions.commands if c.id == contribution.command)
        layers = _resolve(command.python_name)()
        (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = layers
        assert (image_kind, labels_kind) == ("image", "labels")
        spatial = image.shape[:2]
        assert labels.shape == spatial and labels.max() >= 3 and np.issubdtype(labels.dtype, np.integer)
        assert labels_meta["name"] == f"{image_meta['name']} ground truth"


def test_importing_the_plugin_does_not_import_torch():
    code = (
        "import sys, napari_instance_tuner, napari_instance_tuner.widgets, napari_instance_tuner._sample_data\n"
        "import napari_instance_tuner.widgets.segment\n"
        "from npe2 import PluginManifest\n"
        f"PluginManifest.from_file({str(MANIFEST)!r})\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'safetensors') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_importing_the_cli_imports_neither_torch_nor_scipy():
    """``napari-instance-tuner --help`` starts fast: the command modules defer torch and the metrics' scipy."""
    code = (
        "import sys, napari_instance_tuner.cli\n"
        "print(','.join(sorted(m for m in ('torch', 'torchvision', 'scipy', 'skimage') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
