"""The Segment dock widget: pick a model and an image, run, tune the post-processing live.

Run computes the network maps once in a background thread (:func:`..core.stack.predict_stack`); every
change of a post-processing control re-runs only ``family.postprocess`` on the cached maps, one job at
a time with the latest values (:class:`._params.ParamsPanel` coalesces rapid changes). The widget
holds no array maths: it reads values, starts one core call, and writes layers through
:mod:`._layers`.

Large images: a 2D image of more than :data:`STREAM_PIXELS` pixels, or any multiscale (pyramid) image, is
streamed instead (:func:`..core.streaming.stream_segment`: tile by tile, objects stitched across tile
borders, labels written to a zarr group in a temporary folder, whose smaller pyramid levels the same worker
then writes chunk by chunk: :func:`..core.pyramid.write_label_pyramid`); the result is a multiscale Labels
layer of those stored levels (written through :mod:`._streamed`). No maps are cached for such an image, so
the controls change nothing until the next Run; the widget says so.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..core.errors import InstanceTunerError
from ..core.pyramid import LEVEL0, needs_streaming, write_label_pyramid
from ..core.registry import get_family
from ..core.stack import postprocess_stack, predict_stack, slice_count
from ..core.streaming import StreamSettings
from ._layers import (
    SegmentResult,
    adopt,
    forget_layer,
    labels_edited,
    set_maps_visible,
    source_images,
    write_labels,
    write_maps,
)
from ._models import ModelPicker
from ._params import ParamsPanel
from ._pixel_size import describe, layer_pixel_size, level_data
from ._region import region_choices, region_roi
from ._streamed import StreamedResult, discard, forget_streamed, stream_target, write_streamed_labels
from ._worker import Job, as_work, error_message, notify_error

#: (label, torch device) choices; "auto" picks CUDA, then Apple MPS, then the CPU.
DEVICES = [("auto", "auto"), ("CPU", "cpu"), ("CUDA", "cuda"), ("MPS", "mps")]
#: 2D images with more pixels (H * W) than this are streamed tile by tile, as are all multiscale images.
STREAM_PIXELS = 4096 * 4096
#: How a streamed image is cut: the CLI's defaults (2048 px tiles, 256 px halo).
STREAM_SETTINGS = StreamSettings()
#: The smallest level of a streamed Labels layer has no side longer than this (pixels).
PYRAMID_MIN_SIZE = 512


def _disconnect(events: Any, *callbacks: Any) -> None:
    for callback in callbacks:
        for emitter in (events.inserted, events.removed):
            emitter.disconnect(callback)


class SegmentWidget(QWidget):
    """Segment the selected image layer with an instance-segmentation model and tune the result.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers the widget reads and writes.

    Attributes
    ----------
    results : dict[int, SegmentResult]
        image layer -> cached maps and the layers written for it. Layers are compared with ``==``, never
        ``is``: napari may hand a plugin proxies of its layers.
    streamed : dict[int, StreamedResult]
        image layer -> its last streamed run (large and multiscale images; no maps).
    """

    #: Emitted when a run ends, with "ok", "cancelled" or "error".
    run_finished = Signal(str)
    #: Emitted after the plugin wrote a Labels layer (a run or a parameter change).
    labels_updated = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.results: dict[Any, SegmentResult] = {}
        self.streamed: dict[Any, StreamedResult] = {}
        self._run_job: Job | None = None
        self._pp_job: Job | None = None
        self._pp_again = False
        self._pending_run = False
        self._status = "ok"
        self._params_family: str | None = None
        self._touched = False

        self.models = ModelPicker(on_loaded=self._model_loaded, on_busy=self._model_busy)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.device.tooltip = "auto picks CUDA, then Apple MPS, then the CPU"
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
        if hasattr(self.note.native, "setWordWrap"):
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
        device = Container(widgets=[self.device], labels=True)
        image = Container(widgets=[self.image, self.count, self.pixel_size, self.pixel_info, self.region],
                          labels=True)
        self.count.label = "instances"
        parts = (self.models.widget, device, self.device_used, image, self.note, self.show_maps, buttons,
                 self.params.widget)
        layout = QVBoxLayout(self)
        for part in parts:
            layout.addWidget(part.native)
        layout.addStretch(1)
        self.setMinimumWidth(400)  # room for the slider read-outs

        napari_viewer.layers.events.inserted.connect(self._layer_inserted)
        napari_viewer.layers.events.removed.connect(self._layer_removed)
        # A closed dock widget must stop reacting to the viewer's layers.
        callbacks = (self._layer_inserted, self._layer_removed)
        self.destroyed.connect(partial(_disconnect, napari_viewer.layers.events, *callbacks))
        for layer in napari_viewer.layers:
            layer.events.name.connect(self._refresh_images)
        self._build_params()
        self._update_controls()

    # -- public actions -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a model loads, a run is under way or labels are being re-computed."""
        return self._pending_run or self._run_job is not None or self._pp_job is not None or self.models.loading

    @property
    def current_model(self) -> Any:
        """The loaded :class:`~..core.checkpoint.LoadedModel` in use, or None (read-only)."""
        return self.models.loaded

    @property
    def current_result(self) -> SegmentResult | None:
        """Cached maps and layers of the selected image layer, or None if it was not segmented."""
        return self.results.get(self.image.value)

    def keeps_no_maps(self, layer: Any) -> bool:
        """Whether ``layer`` was, or would be, streamed tile by tile: such an image has no cached maps."""
        if layer in self.streamed:
            return True
        return layer is not None and layer not in self.results and self.will_stream(layer)

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
        streamed = self.streamed.get(image)
        if streamed is not None:
            layer, track = streamed.labels_layer, streamed.labels
            if layer is None or layer not in self.viewer.layers or track.edited:
                return None
            layer.name = f"{layer.name} ({suffix})"
            streamed.labels = None
            return layer
        result = self.results.get(image)
        layer = None if result is None else result.labels_layer
        if layer is None or layer not in self.viewer.layers or labels_edited(self.viewer, result):
            return None
        layer.name = f"{layer.name} ({suffix})"
        result.labels = None
        return layer

    def load_weights(self, path: str) -> None:
        """Load a checkpoint file in the background and select it (what "Load weights…" does)."""
        self.models.load(str(path))

    def run(self) -> None:
        """Segment the selected image layer: network maps in a worker, then labels and map layers."""
        if self._pending_run or self._run_job is not None:
            return
        layer = self.image.value
        if layer is None:
            notify_error("no image layer to segment: open an image first")
            return
        try:
            slice_count(tuple(layer.data[0].shape if layer.multiscale else layer.data.shape), layer.rgb)
        except InstanceTunerError as exc:
            notify_error(error_message(exc))
            return
        key = self.models.selected
        if key is None:
            notify_error("no model selected: choose a shipped model or use “Load weights…”")
            return
        self._pending_run = True
        self._status = "ok"
        if self.models.loading:
            pass  # _model_loaded starts the run
        elif self.models.loaded is None or self.models.loaded_key != key:
            self.models.load(key)
        else:
            self._start_run()
        self._update_controls()

    def cancel(self) -> None:
        """Stop the run at its next tile; the layers stay as they were before it."""
        if self._run_job is not None:
            self._run_job.cancel()
        elif self._pending_run:
            self._pending_run = False
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
        result = self.results.get(self.image.value)
        if result is None or result.family.name != self._params_family:
            return
        if self._pp_job is not None:
            self._pp_again = True  # the latest values run when the current job ends
            return
        try:
            params = self.params.params()
        except InstanceTunerError as exc:
            notify_error(error_message(exc))
            return
        work = as_work(lambda: postprocess_stack(result.family, result.maps, params))
        self._pp_job = Job(work, on_result=partial(self._show_labels, result, params), on_finished=self._pp_finished)
        self._pp_job.start()

    # -- runs -------------------------------------------------------------------------------------

    def _start_run(self) -> None:
        layer, loaded = self.image.value, self.models.loaded
        if layer is None or loaded is None:
            self._finish_run("error")
            return
        try:
            params = self.params.params()
        except InstanceTunerError as exc:
            notify_error(error_message(exc))
            self._finish_run("error")
            return
        try:
            streaming = self._streams(layer)
        except InstanceTunerError as exc:
            notify_error(error_message(exc))
            self._finish_run("error")
            return
        if streaming:
            self._start_stream(layer, loaded, params)
            return
        data = layer.data[0] if layer.multiscale else layer.data
        rgb, device = layer.rgb, self.device.value

        def work(cancel):
            from ..core.inference import choose_device, device_description

            used = choose_device(device)
            family = loaded.family
            maps = yield from predict_stack(family, loaded.model, data, rgb, loaded.meta, device=used, cancel=cancel)
            cancel.check()
            return used, device_description(used), maps, postprocess_stack(family, maps, params)

        self._run_job = Job(
            work,
            on_result=partial(self._run_done, layer, loaded, params),
            on_error=self._run_failed,
            on_cancelled=lambda: setattr(self, "_status", "cancelled"),
            on_finished=lambda: self._finish_run(self._status),
            progress=f"Segmenting {layer.name}",
        )
        self._run_job.start()
        self._update_controls()

    def _run_done(self, layer: Any, loaded: Any, params: Any, value: tuple) -> None:
        device, described, maps, instances = value
        if layer not in self.viewer.layers:
            self._status = "cancelled"  # the image was closed during the run
            return
        shape = tuple(np.shape(layer.data[0] if layer.multiscale else layer.data))
        result = SegmentResult(layer, loaded, maps, params, device=device, image_shape=shape)
        result.set_instances(params, instances)
        adopt(result, self.results.get(layer))
        write_maps(self.viewer, result, self.show_maps.value)
        write_labels(self.viewer, result, instances.labels)
        self.results[layer] = result
        self.streamed.pop(layer, None)  # an earlier streamed run of this layer (its data changed since)
        self.device_used.value = f"ran on {described}"
        self._show_count()
        self._show_note()
        self.labels_updated.emit()
        if self._params_family == loaded.family.name and self._current_params() != params:
            self.refresh_labels()  # the controls moved while the network ran

    def _start_stream(self, layer: Any, loaded: Any, params: Any) -> None:
        """Stream ``layer`` tile by tile into a new zarr group, then write its pyramid levels (no maps are kept)."""
        from ..core.slide_segment import source_from_levels

        # Read lazily from the level nearest the model's pixel size, resampled to it (level 0 when unknown).
        source = source_from_levels(level_data(layer), layer_pixel_size(layer, self.pixel_size.value))
        out, settings, device = stream_target(layer.name), STREAM_SETTINGS, self.device.value
        roi = region_roi(self.region.value, self.viewer, layer)
        min_size = PYRAMID_MIN_SIZE
        slide = len(source.levels) > 1  # a slide's glass is found on its coarsest level and never run

        def work(cancel):
            from ..core.inference import choose_device, device_description
            from ..core.slide_segment import segment_at_model_scale

            used = choose_device(device)
            result = yield from segment_at_model_scale(loaded, source, params, roi=roi, out=out / LEVEL0,
                                                       settings=settings, device=used, cancel=cancel,
                                                       skip_background=slide)
            # napari needs 2 levels; written here once, so drawing never reads all of level 0
            levels = yield from write_label_pyramid(out, min_size, min_levels=2, cancel=cancel)
            return used, device_description(used), result, levels

        def cancelled() -> None:
            self._status = "cancelled"
            discard(out)

        def failed(exc: BaseException) -> None:
            discard(out)
            self._run_failed(exc)

        self._run_job = Job(
            work,
            on_result=partial(self._stream_done, layer, loaded, params, out, settings),
            on_error=failed,
            on_cancelled=cancelled,
            on_finished=lambda: self._finish_run(self._status),
            progress=f"Segmenting {layer.name} (streamed)",
        )
        self._run_job.start()
        self._update_controls()

    def _stream_done(self, layer: Any, loaded: Any, params: Any, out: Any, settings: Any, value: tuple) -> None:
        device, described, stream, levels = value
        if layer not in self.viewer.layers:
            self._status = "cancelled"  # the image was closed during the run
            discard(out)
            return
        shape = tuple(np.shape(layer.data[0] if layer.multiscale else layer.data))
        result = StreamedResult(layer, loaded, params, count=stream.count, tiles=stream.tiles, path=out,
                                settings=settings, device=device, image_shape=shape, factor=stream.frame.factor,
                                offset=stream.frame.offset)
        write_streamed_labels(self.viewer, result, self.streamed.get(layer), levels)
        self.streamed[layer] = result
        self.results.pop(layer, None)  # cached maps of an earlier, smaller version of this layer
        self.device_used.value = f"ran on {described}"
        self._show_count()
        self._show_note()
        self.labels_updated.emit()

    def _run_failed(self, exc: BaseException) -> None:
        self._status = "error"
        notify_error(f"segmentation failed: {error_message(exc)}")

    def _finish_run(self, status: str) -> None:
        self._run_job = None
        self._pending_run = False
        self._update_controls()
        self.run_finished.emit(status)

    # -- post-processing ----------------------------------------------------------------------

    def _params_changed(self) -> None:
        self._touched = True
        self.refresh_labels()

    def _show_labels(self, result: SegmentResult, params: Any, instances: Any) -> None:
        if self.results.get(result.image) is not result:
            return  # a newer run replaced these maps, or the image was closed
        result.set_instances(params, instances)  # the masks recorded on the layer are those of these labels
        write_labels(self.viewer, result, instances.labels)
        self._show_count()
        self.labels_updated.emit()

    def _pp_finished(self) -> None:
        self._pp_job = None
        if self._pp_again:
            self._pp_again = False
            self.refresh_labels()

    def _streams(self, layer: Any) -> bool:
        """Whether Run streams ``layer`` (large or multiscale 2D image); raises InstanceTunerError for bad shapes."""
        from ..core.resample import model_pixel_size, scale_factor

        shape = tuple(np.shape(layer.data[0] if layer.multiscale else layer.data))
        loaded = self.models.loaded
        resample = loaded is not None and slice_count(shape, layer.rgb) is None and scale_factor(
            layer_pixel_size(layer, self.pixel_size.value), model_pixel_size(loaded.meta)) != 1.0
        region = self.region.value is not None and slice_count(shape, layer.rgb) is None
        return resample or region or needs_streaming(shape, layer.multiscale, STREAM_PIXELS, rgb=layer.rgb)

    def _show_note(self) -> None:
        """Say, for a large (streamed) image, that the controls apply on the next Run; empty otherwise."""
        layer = self.image.value
        streamed = self.streamed.get(layer)
        if streamed is not None:
            tiles = f"{streamed.tiles} tile{'s' if streamed.tiles != 1 else ''}"
            note = f"large image: streamed in {tiles}; parameter changes apply on the next Run"
            if self._params_family == streamed.model.family.name and self._current_params() != streamed.params:
                note += " (the labels shown were made with other values)"
        elif layer is not None and layer not in self.results and self.will_stream(layer):
            note = "large image: Run streams it tile by tile (no cached maps); parameter changes apply on the next Run"
        else:
            note = ""
        self.note.value = note

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
        if loaded.family.name != self._params_family:
            self._build_params()
        elif not self._touched:
            self.params.set_values(self._default_params())
        if self._pending_run:
            self._start_run()

    def _model_busy(self, busy: bool) -> None:
        if not busy and self._pending_run and self._run_job is None:
            self._finish_run("error")  # the model did not load; its error is already shown
        self._update_controls()

    # -- layers ---------------------------------------------------------------------------------

    def _image_choices(self, *_: Any) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in source_images(self.viewer)]

    def _refresh_images(self, *_: Any) -> None:
        self.image.reset_choices()
        self.region.reset_choices()
        self._update_controls()

    def _layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_images)
        self._refresh_images()

    def _layer_removed(self, event: Any) -> None:
        event.value.events.name.disconnect(self._refresh_images)
        forget_layer(self.results, event.value)  # a closed image's cached maps are released here
        forget_streamed(self.streamed, event.value)
        self._refresh_images()
        self._show_count()
        self._show_note()

    def _image_selected(self, *_: Any) -> None:
        if self.image.value is not None:
            self.models.propose(bool(getattr(self.image.value, "rgb", False)))
        result = self.results.get(self.image.value) or self.streamed.get(self.image.value)
        if result is not None and result.model.family.name == self._params_family:
            self.params.set_values(result.params)
        self._show_count()
        self._show_note()
        self._update_controls()

    def _toggle_maps(self, visible: bool) -> None:
        for result in self.results.values():
            set_maps_visible(result, visible)

    def _show_count(self) -> None:
        result = self.results.get(self.image.value) or self.streamed.get(self.image.value)
        self.count.value = "–" if result is None else str(result.count)

    def _update_controls(self) -> None:
        running = self._pending_run or self._run_job is not None
        self.pixel_info.value = describe(self.models.loaded, self.image.value, self.pixel_size.value)
        self.run_button.enabled = not running and self.image.value is not None
        self.cancel_button.enabled = running
        self.models.combo.enabled = self.models.browse.enabled = not running
