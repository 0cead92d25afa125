"""The single manifest at the repository root reaches napari from a wheel and from an editable install."""

import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_or_source_install_resolves_the_root_manifest():
    (ep,) = [e for e in entry_points(group="napari.manifest") if e.name == "napari-instance-tuner"]
    package, resource = ep.value.split(":")
    import importlib.resources

    manifest = importlib.resources.files(package) / resource
    assert manifest.read_text() == (ROOT / "napari.yaml").read_text()


@pytest.mark.skipif(not (ROOT / "pyproject.toml").is_file(), reason="needs the source tree")
def test_wheel_contains_the_manifest_and_weights(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("napari_instance_tuner-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert zf.read("napari_instance_tuner/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari_instance_tuner:napari.yaml" in zf.read(entry).decode()
    shipped = sorted(p.name for p in (ROOT / "src/napari_instance_tuner/weights").glob("*.safetensors"))
    assert all(f"napari_instance_tuner/weights/{n}" in names for n in shipped)
