"""The Auto-tune dock widget: search the post-processing parameters against corrected labels.

It works on the Segment widget's cached maps of its selected image (see :mod:`._link`); a large image that
Segment streams tile by tile has none, and the widget says to tune on a crop instead. One core call,
:func:`..core.autotune.autotune` (a coarse pass, then coordinate line searches), runs in a thread worker
with progress and Cancel; only post-processing runs, never the network. The widget shows the metric
before → after and hands the best parameters to the Segment widget, whose sliders move and whose
labels are re-computed.

A widget of its own rather than a section of the Segment widget: that file is already at its size
limit, and tuning has its own inputs (reference layer, metric) and its own long-running job.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ._link import SegmentLink
from ._worker import Job, error_message, notify_error

#: Metric choices: (display name, key of :data:`..core.evaluation.TUNABLE`).
METRICS = [("object F1", "object_f1"), ("mean AP", "mean_ap"), ("AJI", "aji"), ("object Dice", "object_dice")]
#: Why a large image cannot be tuned: it is streamed tile by tile and keeps no network maps.
STREAMED_MESSAGE = (
    "auto-tune needs the network maps that Segment caches for an image, and large images such as “{name}” "
    "are segmented tile by tile (streamed) without keeping them: auto-tune on a cropped region or a smaller "
    "image (segment it, correct its labels, tune), then select “{name}” and Run Segment again with the tuned "
    "parameters."
)


class AutotuneWidget(QWidget):
    """Tune the Segment widget's post-processing parameters to match a reference Labels layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    segment : SegmentWidget, optional
        The Segment widget to tune; else looked up among the viewer's dock widgets.
    """

    #: Emitted when a search ends: "ok", "cancelled" or "error".
    tune_finished = Signal(str)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None, segment: Any = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.link = SegmentLink(napari_viewer, segment)
        self.before: float | None = None
        self.after: float | None = None
        self._job: Job | None = None
        self._outcome = "error"

        self.reference = ComboBox(label="reference labels", choices=self._labels_choices)
        self.reference.tooltip = "Corrected (or ground-truth) labels of the Segment widget's selected image"
        # Not ``self.metric``: that would shadow QWidget.metric(), which Qt calls while painting.
        self.metric_choice = ComboBox(label="metric", choices=METRICS, value="object_f1")
        self.tune_button = PushButton(text="Auto-tune post-processing")
        self.tune_button.changed.connect(lambda *_: self.tune())
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.progress = ProgressBar(min=0, max=1, value=0)
        self.result = Label(value="")
        self.result.native.setWordWrap(True)

        choose = Container(widgets=[self.reference, self.metric_choice], labels=True)
        buttons = Container(widgets=[self.tune_button, self.cancel_button], layout="horizontal", labels=False)
        layout = QVBoxLayout(self)
        for part in (choose, buttons, self.progress, self.result):
            layout.addWidget(part.native)
        layout.addStretch(1)
        events = napari_viewer.layers.events
        for emitter in (events.inserted, events.removed):
            emitter.connect(self._refresh)
        self.destroyed.connect(partial(_disconnect, events, self._refresh))
        self._update()

    @property
    def busy(self) -> bool:
        """True while a search runs."""
        return self._job is not None

    def tune(self) -> None:
        """Search the parameters on the cached maps in a worker; problems become notifications."""
        if self._job is not None:
            return
        segment = self.link.widget
        if segment is None:
            notify_error("auto-tune works on the Segment widget's results: open it and segment an image first")
            return
        image, result = segment.image.value, segment.current_result
        if result is None and segment.keeps_no_maps(image):
            notify_error(STREAMED_MESSAGE.format(name=image.name))
            return
        if result is None:
            notify_error("segment the selected image first: auto-tune re-uses its cached network maps")
            return
        reference = self.reference.value
        if reference is None or reference not in self.viewer.layers:
            notify_error("choose the reference Labels layer (the corrected labels of the image)")
            return
        if reference == result.labels_layer:
            notify_error("the reference is the Segment widget's own output; choose the corrected labels")
            return
        params = result.params  # those of the labels shown: the maps' own family
        metric = self.metric_choice.value
        maps, family, data = result.maps, result.family, reference.data
        stacked = maps.stacked

        def work(cancel):
            from ..core.autotune import autotune
            from ..core.evaluation import score_function, split_slices

            count = len(maps.slices) if stacked else None
            references = split_slices(data, tuple(maps.slices[0].shape), count)
            search = autotune(family.postprocess, maps.slices, references, params, score_function(metric), cancel=cancel)
            best, before, after = yield from search
            return best, before, after

        self.progress.value = 0
        self.result.value = "searching…"
        self._outcome = "error"
        self._job = Job(
            work,
            on_result=partial(self._tuned, segment, image, result, metric),
            on_error=self._failed,
            on_cancelled=self._cancelled,
            on_finished=self._finished,
            progress="Auto-tuning post-processing",
        )
        self._job.worker.yielded.connect(self._show_progress)
        self._job.start()
        self._update()

    def cancel(self) -> None:
        """Stop the search at its next trial; the parameters stay as they were."""
        if self._job is not None:
            self._job.cancel()

    # -- outcome ----------------------------------------------------------------------------------

    def _show_progress(self, item: Any) -> None:
        if getattr(item, "total", 0):
            self.progress.max, self.progress.value = item.total, item.done
        if "score" in getattr(item, "info", {}):
            self.result.value = f"searching… best so far {item.info['score']:.3f}"

    def _tuned(self, segment: Any, image: Any, result: Any, metric: str, value: tuple) -> None:
        best, before, after = value
        self.before, self.after = before, after
        name = dict((key, label) for label, key in METRICS)[metric]
        self.result.value = f"{name}: {before:.3f} → {after:.3f}"
        if segment.results.get(image) is not result or segment.params.params_class is not type(best):
            self.result.value += " (not applied: the image was re-segmented, or the model changed, meanwhile)"
            return
        if segment.image.value != image:
            segment.image.value = image
        segment.apply_params(best)
        self._outcome = "ok"

    def _failed(self, exc: BaseException) -> None:
        self.result.value = "auto-tune failed"
        notify_error(f"auto-tune failed: {error_message(exc)}")

    def _cancelled(self) -> None:
        self.result.value = "cancelled: the parameters are unchanged"
        self._outcome = "cancelled"

    def _finished(self) -> None:
        self._job = None
        self._update()
        self.tune_finished.emit(self._outcome)

    def _labels_choices(self, *_: Any) -> list:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _refresh(self, *_: Any) -> None:
        self.reference.reset_choices()

    def _update(self) -> None:
        self.tune_button.enabled = self._job is None
        self.cancel_button.enabled = self._job is not None


def _disconnect(events: Any, callback: Any) -> None:
    for emitter in (events.inserted, events.removed):
        emitter.disconnect(callback)
