"""The Auto-tune dock widget: search the post-processing parameters against corrected labels.

It works on the cached maps of the session of the image in hand (the viewer's registry, :mod:`._sessions`); a
large image that Segment streams tile by tile has none, and the widget says to tune on a crop instead. One core call,
:func:`..core.evaluation.autotune.autotune` (a coarse pass, then coordinate line searches), runs in a thread worker
with progress and Cancel; only post-processing runs, never the network. The widget shows the metric
before → after and proposes the best parameters through the registry: the Segment widget's sliders move and
the labels are re-computed.

A widget of its own rather than a section of the Segment widget: that file is already at its size
limit, and tuning has its own inputs (reference layer, metric) and its own long-running job.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, PushButton
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget

from ..core.evaluation.autotune import autotune, range_edges
from ..core.evaluation.layer_metrics import TUNABLE, score_function, split_slices
from ._base import DockWidget, error_message, notify_error

#: Metric choices: (display name, key of :data:`..core.evaluation.layer_metrics.TUNABLE`).
METRICS = [(label, key) for key, (label, _) in TUNABLE.items()]
#: Why a large image cannot be tuned: it is streamed tile by tile and keeps no network maps.
STREAMED_MESSAGE = (
    "auto-tune needs the network maps that Segment caches for an image, and large images such as “{name}” "
    "are segmented tile by tile (streamed) without keeping them: auto-tune on a cropped region or a smaller "
    "image (segment it, correct its labels, tune), then select “{name}” and Run Segment again with the tuned "
    "parameters."
)


def edge_note(best: Any, start: Any) -> str:
    """"; at the end of its range: fg_threshold = 0.00 (lowest allowed) …" for the values the search moved
    onto an end of their range ("" if none)."""
    edges = [e for e in range_edges(best) if getattr(start, e[0]) != e[1]]
    if not edges:
        return ""
    listed = ", ".join(f"{name} = {value:.2f} ({end} allowed)" if isinstance(value, float)
                       else f"{name} = {value} ({end} allowed)" for name, value, end in edges)
    return (f"; at the end of its range: {listed}. The best value may lie beyond what the parameter allows: "
            "check the labels (weak maps on this image, or a reference that does not match them)")


class AutotuneWidget(DockWidget):
    """Tune the post-processing parameters of the image in hand to match a reference Labels layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    """

    #: Emitted when a search ends: "ok", "cancelled" or "error".
    tune_finished = Signal(str)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.before: float | None = None
        self.after: float | None = None
        self._outcome = "error"

        self.reference = ComboBox(label="reference labels", choices=lambda *_: self.layers_of("Labels"))
        self.reference.tooltip = "Corrected (or ground-truth) labels of the Segment widget's selected image"
        # Not ``self.metric``: that would shadow QWidget.metric(), which Qt calls while painting.
        self.metric_choice = ComboBox(label="metric", choices=METRICS, value="object_f1")
        self.tune_button = PushButton(text="Auto-tune post-processing")
        self.tune_button.changed.connect(lambda *_: self.tune())
        self.cancel_button = PushButton(text="Cancel")
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.result = Label(value="")
        self.result.native.setWordWrap(True)

        choose = Container(widgets=[self.reference, self.metric_choice], labels=True)
        buttons = Container(widgets=[self.tune_button, self.cancel_button], layout="horizontal", labels=False)
        self.stack(choose, buttons, self.result)  # the dock's progress line shows the trials
        self.watch_layers(lambda *_: self.reference.reset_choices())
        self._update()

    def tune(self) -> None:
        """Search the parameters on the cached maps in a worker; problems become notifications."""
        if self._job is not None:
            return
        image = self.sessions.current
        if image is None:
            notify_error("auto-tune works on the Segment widget's results: open it and segment an image first")
            return
        session = self.sessions.with_maps(image)
        if session is None and self.sessions.would_stream(image):
            notify_error(STREAMED_MESSAGE.format(name=image.name))
            return
        if session is None:
            notify_error("segment the selected image first: auto-tune re-uses its cached network maps")
            return
        reference = self.reference.value
        if reference is None or reference not in self.viewer.layers:
            notify_error("choose the reference Labels layer (the corrected labels of the image)")
            return
        if reference == self.sessions.labels_layer(image):
            notify_error("the reference is the Segment widget's own output; choose the corrected labels")
            return
        params = session.params  # those of the labels shown: the maps' own family
        metric = self.metric_choice.value
        maps, family, data = session.maps, session.family, reference.data
        stacked = maps.stacked

        def work(cancel):
            count = len(maps.slices) if stacked else None
            references = split_slices(data, tuple(maps.slices[0].shape), count)
            search = autotune(family.postprocess, maps.slices, references, params, score_function(metric), cancel=cancel)
            best, before, after = yield from search
            return best, before, after

        self.result.value = "searching…"
        self._outcome = "error"
        self.start_job(work, on_result=partial(self._tuned, image, session, maps, metric, params), on_error=self._failed,
                       on_cancelled=self._cancelled, on_finished=self._finished, on_yielded=self._show_progress,
                       progress=f"Auto-tuning {image.name}", subject=image)
        self._update()

    def cancel(self) -> None:
        """Stop the search at its next trial; the parameters stay as they were."""
        self.cancel_job()

    # -- outcome ----------------------------------------------------------------------------------

    def _show_progress(self, item: Any) -> None:
        if "score" in getattr(item, "info", {}):
            self.result.value = f"searching… best so far {item.info['score']:.3f}"

    def _tuned(self, image: Any, session: Any, maps: Any, metric: str, start: Any, value: tuple) -> None:
        best, before, after = value
        self.before, self.after = before, after
        name = {key: label for label, key in METRICS}[metric]
        self.result.value = f"{name}: {before:.3f} → {after:.3f}" + edge_note(best, start)
        current = self.sessions.get(image)
        model = self.sessions.model
        if current is not session or session.maps is not maps or model is None or \
                model.family.Params is not type(best):
            self.result.value += " (not applied: the image was re-segmented, or the model changed, meanwhile)"
            return
        self.sessions.params_proposed.emit(image, best)  # the Segment widget shows them and post-processes
        self._outcome = "ok"

    def _failed(self, exc: BaseException) -> None:
        self.result.value = "auto-tune failed"
        notify_error(f"auto-tune failed: {error_message(exc)}")

    def _cancelled(self) -> None:
        self.result.value = "cancelled: the parameters are unchanged"
        self._outcome = "cancelled"

    def _finished(self) -> None:
        self._update()
        self.tune_finished.emit(self._outcome)

    def _update(self) -> None:
        self.tune_button.enabled = self._job is None
        self.cancel_button.enabled = self._job is not None

