"""core/ never imports Qt, magicgui or napari; the contracts import without torch."""

import pkgutil
import subprocess
import sys

from napari_instance_tuner import core


def _modules_after_import(names: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {n}\n" for n in names) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_imports_no_gui_toolkit():
    names = [m.name for m in pkgutil.walk_packages(core.__path__, "napari_instance_tuner.core.")]
    assert "napari_instance_tuner.core.families.three_branch.model" in names
    loaded = _modules_after_import(names)
    forbidden = {m.split(".")[0] for m in loaded} & {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "napari"}
    assert forbidden == set()


def test_contracts_do_not_import_torch():
    light = ["napari_instance_tuner.core.family", "napari_instance_tuner.core.registry",
             "napari_instance_tuner.core.params", "napari_instance_tuner.core.io.checkpoint",
             "napari_instance_tuner.core.families.three_branch.family", "napari_instance_tuner.cli"]
    assert "torch" not in _modules_after_import(light)
