"""The Run half of the Segment widget: the network in a worker through the image's session, then the layers.

:class:`SegmentRuns` is mixed into :class:`.segment.SegmentWidget` (which holds the controls it reads: image,
model picker, device, parameters, pixel size, region). An image that fits is segmented whole
(:meth:`..core.session.SegmentSession.run`: maps cached for live post-processing); a large or multiscale one is
streamed tile by tile (:meth:`..core.session.SegmentSession.run_streamed`: labels in a zarr pyramid, no maps).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ..core.errors import InstanceTunerError
from ..core.inference.predict import choose_device, device_description
from ..core.inference.slide_segment import source_from_levels
from ._base import error_message, notify_error
from ._layers import write_labels, write_maps
from ._pixel_size import layer_pixel_size, level_data
from ._region import region_roi
from ._streamed import discard, stream_target, write_streamed_labels


def layer_data(layer: Any) -> Any:
    """A layer's data (level 0 of a multiscale layer)."""
    return layer.data[0] if layer.multiscale else layer.data


class SegmentRuns:
    """Run, streamed or whole, for the Segment widget (a mixin of :class:`.segment.SegmentWidget`)."""

    def _start_run(self) -> None:
        layer, loaded = self.image.value, self.models.loaded
        if layer is None or loaded is None:
            self._finish_run("error")
            return
        try:
            params = self.params.params()
            streaming = self._streams(layer)
        except InstanceTunerError as exc:
            notify_error(error_message(exc))
            self._finish_run("error")
            return
        session = self.sessions.open(layer)
        device = self.device.value
        if streaming:
            self._start_stream(layer, session, loaded, params, device)
            return
        session.set_image(layer_data(layer), rgb=bool(layer.rgb), name=layer.name)

        def work(cancel):
            used = choose_device(device)
            yield from session.run(loaded, params, device=used, cancel=cancel)
            return device_description(used)

        self.start_job(work, on_result=partial(self._run_done, layer, session, loaded, params),
                       on_error=self._run_failed, on_cancelled=lambda: setattr(self, "_status", "cancelled"),
                       on_finished=lambda: self._finish_run(self._status), progress=f"Segmenting {layer.name}",
                       subject=layer)
        self._update_controls()

    def _run_done(self, layer: Any, session: Any, loaded: Any, params: Any, described: str) -> None:
        if layer not in self.viewer.layers:
            self._status = "cancelled"  # the image was closed during the run
            return
        shown = self.sessions.shown(layer)
        write_maps(self.viewer, layer, session, shown, self.show_maps.value)
        self.sessions.remember(write_labels(self.viewer, layer, session, shown))
        self._ran(layer, described)
        if self._params_family == loaded.family.name and self._current_params() != params:
            self.refresh_labels()  # the controls moved while the network ran

    def _start_stream(self, layer: Any, session: Any, loaded: Any, params: Any, device: str) -> None:
        """Stream ``layer`` tile by tile into a new zarr group, then write its pyramid levels (no maps are kept)."""
        # Read lazily from the level nearest the model's pixel size, resampled to it (level 0 when unknown).
        source = source_from_levels(level_data(layer), layer_pixel_size(layer, self.pixel_size.value))
        out, settings, min_size = stream_target(layer.name), self.stream_settings(), self.pyramid_min_size()
        roi = region_roi(self.region.value, self.viewer, layer)
        slide = len(source.levels) > 1  # a slide's glass is found on its coarsest level and never run
        session.name = layer.name

        def work(cancel):
            used = choose_device(device)
            yield from session.run_streamed(loaded, source, params, out, roi=roi, settings=settings, device=used,
                                            cancel=cancel, skip_background=slide, min_size=min_size)
            return device_description(used)

        def cancelled() -> None:
            self._status = "cancelled"
            discard(out)

        def failed(exc: BaseException) -> None:
            discard(out)
            self._run_failed(exc)

        self.start_job(work, on_result=partial(self._stream_done, layer, session, out), on_error=failed,
                       on_cancelled=cancelled, on_finished=lambda: self._finish_run(self._status),
                       progress=f"Segmenting {layer.name} (streamed)", subject=layer)
        self._update_controls()

    def _stream_done(self, layer: Any, session: Any, out: Any, described: str) -> None:
        if layer not in self.viewer.layers:
            self._status = "cancelled"  # the image was closed during the run
            discard(out)
            return
        self.sessions.remember(write_streamed_labels(self.viewer, layer, session, self.sessions.shown(layer)))
        self._ran(layer, described)

    def _ran(self, layer: Any, described: str) -> None:
        self.device_used.value = f"ran on {described}"
        self._show_count()
        self._show_note()
        self.labels_updated.emit()
        self.sessions.changed.emit(layer)

    def _run_failed(self, exc: BaseException) -> None:
        self._status = "error"
        notify_error(f"segmentation failed: {error_message(exc)}")

    def _finish_run(self, status: str) -> None:
        self._pending_run, self._subject = False, None
        self._update_controls()
        self.run_finished.emit(status)
