"""The Export dock widget: write a Labels layer as TIFF, PNG, CSV, QuPath GeoJSON and a mask stack.

The widget reads its controls, asks before replacing files, and runs one core call
(:func:`..core.io.export.export_instances`) in a background job. When the Segment widget made the Labels
layer, the layer's ``metadata["napari_instance_tuner"]`` records the run's weights, parameters and image
(see :data:`..core.io.recipe.LAYER_KEYS`: the user's record, kept with the layer) and a replayable recipe is
written beside the export.

For families whose objects may overlap (layering, Mask R-CNN) the viewer's session registry (:mod:`._sessions`)
knows the per-object masks and scores behind the labels the plugin wrote: the CSV and GeoJSON then have one
object per mask and the NPZ mask stack keeps the overlaps. Once the labels were edited after the run (their
digest differs from ``"labels_digest"``) those masks no longer describe them, and everything is exported from
the labels.

Defaults follow the image in hand (the Segment widget's image, :attr:`._sessions.Sessions.current`): the
labels are that image's labels (the plugin's layer of its last run, else a Labels layer named after it) and
the folder is the image's own folder when napari knows the file it came from (``layer.source.path``), else
the working folder; a folder or base name the user typed is kept.

A multiscale Labels layer (the labels of a large, streamed image: a zarr array that may not fit in memory)
is handed to the core as it is, never copied: its TIFF is written tile by tile, and the recipe records the
streaming settings (``"streaming"``: tile, halo) of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, PushButton
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QMessageBox, QWidget

from .._writers import pixel_size
from ..core.errors import InstanceTunerError
from ..core.io.export import OBJECT_TYPES, ExportOptions, check_target, export_instances, export_targets
from ..core.io.recipe import recipe_from_metadata
from ._base import DockWidget, error_message, notify_error
from ._file_names import safe_name
from ._layers import TAG, digest, is_plugin_layer
from ._worker import as_work

#: Checkbox label -> export format.
FORMATS = {
    "label image (TIFF)": "tiff",
    "label image (16-bit PNG)": "png",
    "measurements (CSV)": "csv",
    "QuPath GeoJSON": "geojson",
    "per-object mask stack (NPZ)": "masks",
}


def image_folder(image: Any) -> Path:
    """The folder of the file ``image`` (a napari layer) was opened from; the working folder if unknown."""
    path = getattr(getattr(image, "source", None), "path", None)
    if path:
        parent = Path(path).parent
        if parent.is_dir():
            return parent
    return Path.cwd()


def ask_overwrite(parent: QWidget, paths: list[Path]) -> bool:
    """Ask the user whether to replace ``paths``; True if they agree."""
    names = "\n".join(p.name for p in paths)
    answer = QMessageBox.question(
        parent, "Replace files?", f"These files exist in {paths[0].parent}:\n\n{names}\n\nReplace them?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


class ExportWidget(DockWidget):
    """Export a Labels layer (and its measurements on a chosen image) to files other tools open.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    confirm_overwrite : callable, optional
        ``confirm_overwrite(paths) -> bool``, asked before existing files are replaced; a dialog by default
        (tests pass their own answer).
    """

    #: Emitted when an export ends: "ok", "error" or "declined" (the user kept existing files).
    export_finished = Signal(str)

    def __init__(
        self,
        napari_viewer: Any,
        parent: QWidget | None = None,
        confirm_overwrite: Callable[[list[Path]], bool] | None = None,
    ) -> None:
        super().__init__(napari_viewer, parent)
        self.confirm_overwrite = confirm_overwrite or (lambda paths: ask_overwrite(self, paths))
        self._outcome = "error"
        self._auto_name = ""
        self._note = ""

        self.labels = ComboBox(label="labels", choices=lambda *_: self.layers_of("Labels"))
        self.labels.changed.connect(self._labels_selected)
        self.image = ComboBox(label="intensities", choices=self._image_choices)
        self.image.tooltip = "Image layer whose per-channel intensities the CSV and GeoJSON measure"
        self.formats = {fmt: CheckBox(text=text, value=fmt in ("tiff", "csv")) for text, fmt in FORMATS.items()}
        self.object_type = ComboBox(label="objectType", choices=list(OBJECT_TYPES), value="detection")
        self.object_type.tooltip = "QuPath object type of the GeoJSON features"
        self.classification = LineEdit(label="classification", value="")
        self.classification.tooltip = "QuPath class name of the GeoJSON features (empty: unclassified)"
        self.recipe = CheckBox(text="write the recipe (JSON) when Segment made the labels", value=True)
        self._auto_folder = str(image_folder(self.sessions.current))
        self.folder = FileEdit(label="folder", mode="d", value=self._auto_folder)
        self.base_name = LineEdit(label="base name", value="")
        self.export_button = PushButton(text="Export")
        self.export_button.changed.connect(lambda *_: self.export())
        self.status = Label(value="")
        self.status.native.setWordWrap(True)

        layers = Container(widgets=[self.labels, self.image], labels=True)
        formats = Container(widgets=list(self.formats.values()), labels=False)
        qupath = Container(widgets=[self.object_type, self.classification], labels=True)
        target = Container(widgets=[self.folder, self.base_name], labels=True)
        self.stack(layers, formats, qupath, self.recipe, target, self.export_button, self.status)
        self.watch_layers(self._refresh)
        self.follow_signal(self.sessions.current_changed, self._follow_image)
        self.follow_signal(self.sessions.changed, self._image_changed)
        self._labels_selected()
        self._follow_image(self.sessions.current)

    def export(self) -> None:
        """Write the chosen formats; asks before replacing files, reports problems as notifications."""
        if self._job is not None:
            return
        layer = self.labels.value
        if layer is None:
            self._fail("no Labels layer to export: segment an image or open labels first")
            return
        info = layer.metadata.get(TAG)
        info = info if isinstance(info, dict) else {}
        edited = self._edited(layer, info)
        try:
            options = self._options(layer)
            recipe = self._recipe(info, edited) if self.recipe.value else None
            targets = export_targets(options, recipe is not None)
            for path in targets.values():
                check_target(path, overwrite=True)  # a missing or read-only folder fails before any question
        except InstanceTunerError as exc:
            self._fail(error_message(exc))
            return
        if not options.formats and recipe is None:
            self._fail("choose at least one format to export")
            return
        existing = [p for p in targets.values() if p.exists()]
        if existing:
            if not self.confirm_overwrite(existing):
                self.status.value = "not exported: existing files kept"
                self.export_finished.emit("declined")
                return
            options.overwrite = True
        self._note = ""
        labels, image, extra = self._data(layer, info, edited)
        self._outcome = "error"
        work = as_work(lambda: export_instances(labels, options, image=image, recipe=recipe, **extra))
        self.export_button.enabled = False
        self.start_job(work, on_result=self._written, on_error=self._failed, on_finished=self._finished,
                       progress=f"Exporting {layer.name}", cancellable=False)

    # -- reading the controls and layers ---------------------------------------------------------------

    def _options(self, layer: Any) -> ExportOptions:
        size, unit = pixel_size({"scale": layer.scale, "units": getattr(layer, "units", None)})
        return ExportOptions(
            folder=Path(self.folder.value), base_name=self.base_name.value,
            formats=tuple(fmt for fmt, box in self.formats.items() if box.value),
            object_type=self.object_type.value, classification=self.classification.value.strip() or None,
            pixel_size=size, unit=unit,
        )

    @staticmethod
    def _edited(layer: Any, info: dict) -> bool | None:
        """Whether the labels changed since Segment wrote them; None when the layer has no digest."""
        if not info.get("labels_digest"):
            return None

        return digest(layer.data[0] if layer.multiscale else layer.data) != info["labels_digest"]

    @staticmethod
    def _recipe(info: dict, edited: bool | None) -> dict | None:
        recipe = recipe_from_metadata(info) if info else None
        if recipe is not None and edited is not None:
            # Hand edits after the run: the recipe reproduces the labels as segmented, not as edited.
            recipe["labels_edited"] = edited
        return recipe

    def _data(self, layer: Any, info: dict, edited: bool | None) -> tuple[Any, Any, dict]:
        """(labels, intensity image or None, ``masks``/``scores`` keywords for the core export).

        The labels of an ordinary layer are a NumPy copy (painting may go on) and the image a NumPy array. A
        multiscale layer, which nobody can paint, gives its level 0 as it is (a zarr array for streamed labels)
        and the image's level 0 too: the core reads them block by block, or whole only for the formats that
        need it.
        """
        source = self.image.value
        if layer.multiscale:
            labels = layer.data[0]
            image = None if source is None else (source.data[0] if source.multiscale else source.data)
        else:
            labels = np.array(layer.data)  # a copy: painting may go on
            image = None if source is None else np.asarray(source.data[0] if source.multiscale else source.data)
        extra = {}
        track = self.sessions.track(layer) if is_plugin_layer(layer) else None
        masks = None if track is None else track.objects
        # The objects describe the labels as Segment wrote them: unusable once the labels were edited.
        if masks is not None and not edited and tuple(masks.shape) == tuple(labels.shape):
            extra = {"masks": masks, **({} if track.scores is None else {"scores": track.scores})}
        elif masks is not None:
            self._note = " (labels edited after segmentation: exported from the labels, overlaps not kept)"
        return labels, image, extra

    # -- outcomes ----------------------------------------------------------------------------------------

    def _written(self, paths: list[Path]) -> None:
        from napari.utils import notifications

        written = f"wrote {', '.join(p.name for p in paths)} to {paths[0].parent}" if paths else ""
        self.status.value = written + self._note
        notifications.show_info(f"exported {len(paths)} file(s) to {paths[0].parent}" if paths else "nothing written")
        self._outcome = "ok"

    def _failed(self, exc: BaseException) -> None:
        self._fail(f"export failed: {error_message(exc)}", emit=False)
        self._outcome = "error"

    def _fail(self, message: str, emit: bool = True) -> None:
        self.status.value = message
        notify_error(message)
        if emit:
            self.export_finished.emit("error")

    def _finished(self) -> None:
        self.export_button.enabled = True
        self.export_finished.emit(self._outcome)

    # -- layer lists -------------------------------------------------------------------------------------

    def _image_choices(self, *_: Any) -> list[tuple[str, Any]]:
        return [("(none)", None), *self.layers_of("Image")]

    def _refresh(self, *_: Any) -> None:
        self.labels.reset_choices()
        self.image.reset_choices()

    def _image_changed(self, image: Any) -> None:
        if image is not None and image is self.sessions.current:
            self._follow_image(image)  # a run wrote (new) labels of the image in hand

    def _follow_image(self, image: Any) -> None:
        """Propose the labels and the folder of ``image`` (the image in hand)."""
        if image is None:
            return
        self.labels.reset_choices()
        labels = self.sessions.labels_layer(image)
        if labels is None:  # labels not written by the plugin (opened, or taken over): named after the image
            named = [layer for name, layer in self.layers_of("Labels") if name.startswith(image.name)]
            labels = named[0] if named else None
        if labels is not None and labels in self.viewer.layers:
            self.labels.value = labels
        folder = str(image_folder(image))
        if str(self.folder.value) in ("", ".", self._auto_folder):  # follow the image until the user chooses
            self.folder.value = folder
        self._auto_folder = folder

    def _labels_selected(self, *_: Any) -> None:
        layer = self.labels.value
        name = safe_name(layer.name) if layer is not None else ""
        if self.base_name.value in ("", self._auto_name):  # follow the layer until the user types a name
            self.base_name.value = name
        self._auto_name = name
        source = self.sessions.image_of(layer) if layer is not None else None
        info = layer.metadata.get(TAG) if layer is not None else None
        image_name = info.get("image_name") if isinstance(info, dict) else None  # labels recorded elsewhere
        for _, candidate in self._image_choices():
            if candidate is not None and (candidate == source or source is None and candidate.name == image_name):
                self.image.value = candidate  # the image the labels were segmented from
