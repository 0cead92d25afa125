"""The Segment dock widget: pick a model and an image, run, tune the post-processing live.

Run computes the network maps once in a background thread (:func:`..core.inference.stack.predict_stack`); every
change of a post-processing control re-runs only ``family.postprocess`` on the cached maps, one job at
a time with the latest values (:class:`._params.ParamsPanel` coalesces rapid changes). The state of
each image lives in its :class:`~..core.session.SegmentSession` (the viewer's registry,
:mod:`._sessions`): Run calls ``session.run``, a control change ``session.postprocess``. The widget holds no
array maths: it reads values, starts one core call, and writes layers through :mod:`._layers`.

Large images: a 2D image of more than :data:`STREAM_PIXELS` pixels, or any multiscale (pyramid) image, is
streamed instead (:func:`..core.inference.streaming.stream_segment`: tile by tile, objects stitched across tile
borders, labels written to a zarr group in a temporary folder, whose smaller pyramid levels the same worker
then writes chunk by chunk: :func:`..core.io.pyramid.write_label_pyramid`); the result is a multiscale Labels
layer of those stored levels (written through :mod:`._streamed`). No maps are cached for such an image, so
the controls change nothing until the next Run; the widget says so.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget

from ..core.errors import InstanceTunerError
from ..core.inference.stack import slice_count
from ..core.inference.streaming import StreamSettings
from ..core.registry import get_family
from ._base import DockWidget, error_message, notify_error
from ._corrections import CorrectionsGuard, ask_keep_corrections
from ._layers import keep_labels, set_maps_visible, write_labels
from ._models import ModelPicker
from ._params import ParamsPanel
from ._pixel_size import describe
from ._region import region_choices
from ._segment_follow import SegmentFollow
from ._segment_layout import NextSteps, folded
from ._segment_note import streamed_note
from ._segment_runs import SegmentRuns, layer_data
from ._sessions import unwrap
from ._streamed import streams
from ._worker import Job, as_work

#: (label, torch device) choices; "auto" picks CUDA, then Apple MPS, then the CPU.
DEVICES = [("auto", "auto"), ("CPU", "cpu"), ("CUDA", "cuda"), ("MPS", "mps")]
#: 2D images with more pixels (H * W) than this are streamed tile by tile, as are all multiscale images.
STREAM_PIXELS = 4096 * 4096
#: How a streamed image is cut: the CLI's defaults (2048 px tiles, 256 px halo).
STREAM_SETTINGS = StreamSettings()
#: The smallest level of a streamed Labels layer has no side longer than this (pixels).
PYRAMID_MIN_SIZE = 512


class SegmentWidget(SegmentRuns, SegmentFollow, DockWidget):
    """Segment the selected image layer with an instance-segmentation model and tune the result.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers the widget reads and writes.

    Attributes
    ----------
    sessions : Sessions
        The viewer's image layer -> :class:`~..core.session.SegmentSession` registry (maps, parameters, labels
        of every segmented image) and the layers showing each.
    """

    #: Emitted when a run ends, with "ok", "cancelled" or "error".
    run_finished = Signal(str)
    #: Emitted after the plugin wrote a Labels layer (a run or a parameter change).
    labels_updated = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self._pp_job: Job | None = None
        self._pp_again = False
        self._pending_run = False
        self._status = "ok"
        self._params_family: str | None = None
        self._touched = False
        self.corrections = CorrectionsGuard(ask_keep_corrections)  # slider moves never fork edits silently

        self.models = ModelPicker(on_loaded=self._model_loaded, on_busy=self._model_busy, sessions=self.sessions)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.device.tooltip = "auto picks CUDA, then Apple MPS, then the CPU"
        self.device.changed.connect(lambda value: setattr(self.sessions, "device", value))
        self.device_used = Label(value="")
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.image.changed.connect(self._image_selected)
        self.show_maps = CheckBox(text="show maps", value=False)
        self.show_maps.tooltip = (
            "Show the network's maps (foreground, boundary, ...) as image layers; per-layer maps "
            "(layer_1, ...) are added hidden: show them in the layer list"
        )
        self.show_maps.changed.connect(self._toggle_maps)
        self.run_button = PushButton(text="Run")
        self.run_button.changed.connect(lambda *_: self.run())
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.count = Label(value="–")
        self.note = Label(value="")  # large images: what the controls do
        self.note.native.setWordWrap(True)
        self.params = ParamsPanel(on_change=self._params_changed, on_reset=self.reset_params)
        self.pixel_size = FloatSpinBox(label="pixel size (µm)", value=0.0, min=0.0, max=1000.0, step=0.01)
        self.pixel_size.tooltip = ("µm per pixel of the image (level 0); 0 = what the slide or the layer's scale "
                                   "says. Images whose pixel size differs from the model's are resampled to it")
        self.pixel_size.changed.connect(lambda *_: self._update_controls())
        self.pixel_info = Label(value="")
        self.region = ComboBox(label="region", choices=lambda *_: region_choices(self.viewer))
        self.region.tooltip = ("whole image, the visible field (what the canvas shows), or the box around the "
                               "selected (else all) shapes of a Shapes layer: "
                               "Run then streams only that region; the labels land at its place")

        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        image = Container(widgets=[self.image, self.count], labels=True)
        self.count.label = "instances"
        more = Container(widgets=[self.device, self.pixel_size, self.region], labels=True)
        self.more = folded("More: device, pixel size, region, maps", more, self.device_used, self.pixel_info,
                           self.show_maps)
        self.next_steps = NextSteps(napari_viewer)
        self.stack(image, self.models.widget, buttons, self.note, self.params.widget, self.more, self.next_steps)
        self.scroll_area.widget().setMinimumWidth(400)  # room for the slider read-outs

        self.watch_layers(self._layer_inserted, emitters=("inserted",))
        self.watch_layers(self._layer_removed, emitters=("removed",))
        self._start_following()
        for layer in napari_viewer.layers:
            layer.events.name.connect(self._refresh_images)
        self.sessions.set_stream_rule(self.will_stream)
        self.sessions.params_proposed.connect(self._params_proposed)
        self.sessions.weights_proposed.connect(self._weights_proposed)
        self.destroyed.connect(partial(_forget_signals, self.sessions, self._params_proposed, self._weights_proposed))
        self.sessions.current = self.image.value
        self._build_params()
        self._update_controls()

    # -- public actions -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a model loads, a run is under way or labels are being re-computed."""
        return self._pending_run or self._job is not None or self._pp_job is not None or self.models.loading

    @property
    def current_model(self) -> Any:
        """The loaded :class:`~..core.io.checkpoint.LoadedModel` in use, or None (read-only)."""
        return self.models.loaded

    @property
    def current_session(self) -> Any:
        """The session of the selected image layer if it holds cached maps, else None."""
        return self.sessions.with_maps(self.image.value)

    def stream_settings(self) -> StreamSettings:
        """How a streamed image is cut (:data:`STREAM_SETTINGS`)."""
        return STREAM_SETTINGS

    def pyramid_min_size(self) -> int:
        """The smallest side of a streamed Labels layer's pyramid (:data:`PYRAMID_MIN_SIZE`)."""
        return PYRAMID_MIN_SIZE

    def will_stream(self, layer: Any) -> bool:
        """Whether Run streams ``layer`` (a large or multiscale 2D image); False for unsupported shapes too."""
        try:
            return self._streams(layer)
        except InstanceTunerError:
            return False

    def apply_params(self, params: Any) -> None:
        """Show ``params`` (of the current family) on the controls and re-run post-processing."""
        self.params.set_values(params)
        self._touched = True
        self.refresh_labels()

    def keep_labels(self, image: Any, suffix: str) -> Any:
        """Detach the Labels layer written for ``image``, renamed "<name> (<suffix>)"; returns it or None.

        The next run or parameter change writes a new layer; the kept one keeps its record of the run.
        A layer the user edited is left to the usual "(edited)" rule (None is returned).
        """
        return keep_labels(self.viewer, self.sessions.get(image), self.sessions.shown(image), suffix)

    def load_weights(self, path: str) -> None:
        """Load a checkpoint file in the background and select it (what "Load weights…" does)."""
        self.models.load(str(path))

    def run(self) -> None:
        """Segment the selected image layer: network maps in a worker, then labels and map layers."""
        if self._pending_run or self._job is not None:
            return
        layer = self.image.value
        if layer is None:
            notify_error("no image layer to segment: open an image first")
            return
        try:
            slice_count(tuple(np.shape(layer_data(layer))), layer.rgb)
        except InstanceTunerError as exc:
            notify_error(error_message(exc))
            return
        key = self.models.selected
        if key is None:
            notify_error("no model selected: choose a shipped model or use “Load weights…”")
            return
        self._pending_run, self._subject, self._job_title = True, unwrap(layer), f"Segmenting {layer.name}"
        self._status = "ok"
        if self.models.loading:
            pass  # _model_loaded starts the run
        elif self.models.loaded is None or self.models.loaded_key != key:
            self.models.load(key, chosen=False)
        else:
            self._start_run()
        self._update_controls()

    def cancel(self) -> None:
        """Stop the run at its next tile; the layers stay as they were before it."""
        if self._job is not None:
            self.cancel_job()
        elif self._pending_run:
            self._pending_run = False
            self.progress_panel.finish()  # the model may go on loading; nothing runs after it
            self._finish_run("cancelled")

    def reset_params(self) -> None:
        """Show the model's default post-processing parameters and update the labels."""
        self.params.set_values(self._default_params())
        self._touched = False
        self.refresh_labels()

    def refresh_labels(self) -> None:
        """Re-run post-processing on the cached maps of the selected image with the controls' values.

        A streamed image has no cached maps: only the note saying that the next Run applies the values changes.
        """
        self._show_note()
        image = self.image.value
        session = self.sessions.with_maps(image)
        if session is None or session.family.name != self._params_family:
            return
        if self._pp_job is not None:
            self._pp_again = True  # the latest values run when the current job ends
            return
        try:
            params = self.params.params()
        except InstanceTunerError as exc:
            notify_error(error_message(exc))
            return
        track = self.sessions.shown(image).labels
        if params == session.params and track is not None and track.layer in self.viewer.layers:
            return  # these values made the labels shown (e.g. a slider dragged back): nothing to redo
        if not self.corrections.settle(self.viewer, session, track):
            self._pp_again = True  # asked about corrected labels: the latest values run after the answer
            return
        maps = session.maps
        self._pp_job = Job(as_work(lambda: session.postprocess(params)), on_result=lambda _: self._show_labels(image, session, maps),
                           on_finished=self._pp_finished)
        self._pp_job.start()

    # -- post-processing ----------------------------------------------------------------------

    def _params_changed(self) -> None:
        self._touched = True
        self.refresh_labels()

    def _show_labels(self, image: Any, session: Any, maps: Any) -> None:
        if self.sessions.get(image) is not session or session.maps is not maps:
            return  # a newer run replaced these maps, or the image was closed
        self.sessions.remember(write_labels(self.viewer, image, session, self.sessions.shown(image)))
        self._show_count()
        self.labels_updated.emit()
        self.sessions.changed.emit(image)

    def _pp_finished(self) -> None:
        self._pp_job = None
        if self._pp_again:
            self._pp_again = False
            self.refresh_labels()

    def _params_proposed(self, image: Any, params: Any) -> None:
        """Auto-tune's result: select ``image``, show ``params`` and post-process with them."""
        if self.params.params_class is not type(params):
            return
        if self.image.value != image:
            self.image.value = image
        self.apply_params(params)

    def _weights_proposed(self, image: Any, path: str, suffix: str) -> None:
        """Fine-tune's result: keep the labels of ``image`` as "(suffix)", load ``path`` and segment again."""
        if self.image.value != image:
            self.image.value = image
        self.keep_labels(image, suffix)
        self.load_weights(path)
        self.run()  # waits for the load, then segments with the new weights

    def _streams(self, layer: Any) -> bool:
        """Whether Run streams ``layer`` (large or multiscale 2D image); raises InstanceTunerError for bad shapes."""
        return streams(layer, self.models.loaded, self.pixel_size.value, self.region.value, STREAM_PIXELS)

    def _show_note(self) -> None:
        """Say, for a large (streamed) image, that the controls apply on the next Run; empty otherwise."""
        layer = self.image.value
        self.note.value = streamed_note(self.sessions.get(layer), self._params_family, self._current_params(),
                                        layer is not None and self.sessions.would_stream(layer))
        self.note.native.setVisible(bool(self.note.value))

    def _current_params(self) -> Any:
        try:
            return self.params.params()
        except InstanceTunerError:
            return None

    # -- models and parameters ----------------------------------------------------------------

    def _default_params(self) -> Any:
        return self.models.default_params(get_family(self._params_family))

    def _build_params(self) -> None:
        name = self.models.family_name()
        if name is None or name == self._params_family:
            return
        try:
            family = get_family(name)
        except InstanceTunerError as exc:
            notify_error(error_message(exc))
            return
        self._params_family = name
        self.params.build(family.Params, self._default_params())
        self._touched = False

    def _model_loaded(self, loaded: Any) -> None:
        self.sessions.model = loaded
        if loaded.family.name != self._params_family:
            self._build_params()
        elif not self._touched:
            self.params.set_values(self._default_params())
        if self._pending_run:
            self._start_run()

    def _model_busy(self, busy: bool) -> None:
        if busy and self._job is None:
            self.progress_panel.start(f"Loading model {self.models.combo.current_choice}")
        elif not busy and self._job is None:
            self.progress_panel.finish()
        if not busy and self._pending_run and self._job is None:
            self._finish_run("error")  # the model did not load; its error is already shown
        self._update_controls()

    # -- layers ---------------------------------------------------------------------------------

    def _image_selected(self, *_: Any) -> None:
        image = self.image.value
        other = image is None or self.sessions.current is not unwrap(image)
        self.sessions.current = image
        if image is not None:
            self._propose_model(image)
        session = self.sessions.get(image)
        # only another image brings its own values: the same image re-announced (the layer list changed while a
        # post-processing job ran) must not put the job's values over the controls the user has just set
        if other and session is not None and session.model is not None and session.family.name == self._params_family:
            self.params.set_values(session.params)
        self._show_count()
        self._show_note()
        self._update_controls()

    def _toggle_maps(self, visible: bool) -> None:
        for image in self.sessions.segmented():
            session = self.sessions.get(image)
            if session.maps is not None:
                set_maps_visible(session, self.sessions.shown(image), visible)

    def _show_count(self) -> None:
        session = self.sessions.get(self.image.value)
        ran = session is not None and (session.maps is not None or session.streamed is not None)
        self.count.value = str(session.count) if ran else "–"

    def _update_controls(self) -> None:
        running = self._pending_run or self._job is not None
        self.sessions.running = running or self.models.loading
        self.pixel_info.value = describe(self.models.loaded, self.image.value, self.pixel_size.value)
        self.run_button.enabled = not running and self.image.value is not None
        self.cancel_button.enabled = running
        self.models.combo.enabled = self.models.browse.enabled = not running


def _forget_signals(sessions: Any, *callbacks: Any) -> None:
    """A closed Segment widget: nothing runs for the other widgets any more."""
    sessions.params_proposed.disconnect(callbacks[0])
    sessions.weights_proposed.disconnect(callbacks[1])
    sessions.current, sessions.model, sessions.running = None, None, False
