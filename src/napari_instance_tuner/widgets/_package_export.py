"""“Export bioimage.io package…”: ask for a ``.zip``, write the model's package in a background job.

The package is written by :func:`..core.io.bioimageio_export.export_package`, its test tensors cut from an
image of the viewer. A fine-tuned model is first written as a checkpoint (as “Save fine-tuned weights…”
would, recording its parent) and exported from there, so the package holds what the saved file would.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QWidget

from ..core.io.bioimageio_export import PackageInfo, export_package
from ..core.io.checkpoint import load_model
from ..core.training.finetune import save_finetuned
from ._worker import FileWriter


def ask_package_path(parent: QWidget, suggested: str) -> str | None:
    """Ask for the package's file name with a dialog."""
    path, _ = QFileDialog.getSaveFileName(parent, "Export bioimage.io model package", suggested,
                                          "bioimage.io package (*.zip)")
    return path or None


class PackageExporter(FileWriter):
    """Writes a model (a ``LoadedModel`` or a fine-tuned ``Tuned``) as a bioimage.io package.

    Parameters
    ----------
    ask_path : callable
        ``ask_path(suggested) -> str | None``: the file dialog.
    on_exported : callable
        Called with the package's path.
    on_finished : callable
        Called when an export job ends, whatever the outcome.
    """

    failure = "could not export the bioimage.io package"

    def __init__(self, ask_path: Callable[[str], str | None], on_exported: Callable[[Path], Any],
                 on_finished: Callable[[], Any]) -> None:
        super().__init__(on_exported, on_finished)
        self.ask_path = ask_path

    def export(self, model: Any, sample: Any, sample_name: str) -> bool:
        """Ask for a path and start writing; False if nothing was started.

        ``model`` is a ``LoadedModel`` or a ``Tuned``; ``sample`` an image array (H, W[, C]) of the viewer.
        """
        if self.job is not None:
            return False
        name = model.parent.name + "-finetuned" if hasattr(model, "parent") else model.name
        answer = self.ask_path(str(Path.cwd() / f"{name}.zip"))
        if not answer:
            return False
        path = Path(answer).with_suffix(".zip")

        def write() -> Path:
            info = PackageInfo(sample_name=f"the image {sample_name!r}")
            if not hasattr(model, "parent"):
                return export_package(model, sample, path, info)
            with tempfile.TemporaryDirectory(prefix="napari-instance-tuner-") as folder:
                checkpoint = save_finetuned(Path(folder) / f"{name}.safetensors", model.parent, model.model,
                                            model.result, model.pairs, model.settings)
                return export_package(load_model(checkpoint), sample, path, info)

        return self._start(write)
