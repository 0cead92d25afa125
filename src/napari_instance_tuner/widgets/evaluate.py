"""The Evaluate dock widget: score a predicted Labels layer against a reference one.

One core call in a thread worker: :func:`..core.evaluation.layer_metrics.evaluate_labels` (object F1, object Dice,
object Hausdorff, AP@0.5…0.9, mean AP, AJI...) and :func:`..core.evaluation.error_map.error_map`, which the widget
shows as a Labels layer "<prediction> errors": red false positives, cyan false negatives (missed
reference objects), magenta where the two overlap. When either layer's labels change afterwards (a slider
move, a run, a brush stroke), the figures are marked stale (greyed, the summary says so, :attr:`stale`) until
Evaluate is pressed again.
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem, QWidget

from ..core.evaluation.error_map import error_map
from ..core.evaluation.layer_metrics import TABLE_ROWS, evaluate_labels
from ..core.progress import Progress
from ._base import DockWidget, error_message, notify_error
from ._layers import TAG

#: Matching rules of the error layer: (display name, rule of :func:`..core.evaluation.error_map.error_ids`).
RULES = [("GlaS: covers > 50 % of a reference object", "glas"), ("IoU > 0.5", "iou")]
#: Error layer colours by value (1 false positive, 2 false negative, 3 both).
COLORS = {None: "transparent", 0: "transparent", 1: "red", 2: "cyan", 3: "magenta"}
ERROR_NAMES = ["", "false positive", "false negative (missed)", "false positive over a missed object"]


def _unwatch(layers: list, callback: Any) -> None:
    """Disconnect ``callback`` from the data and paint events of ``layers``."""
    for layer in layers:
        for event in (layer.events.data, layer.events.paint):
            event.disconnect(callback)
    layers.clear()


def format_value(value: float) -> str:
    """A metric for the table: counts as integers, scores with 3 decimals, infinity as ∞."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return "∞" if math.isinf(value) else f"{value:.3f}"


class EvaluateWidget(DockWidget):
    """Compare a prediction Labels layer with a reference Labels layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    values : dict[str, float]
        The last evaluation (keys of :func:`..core.evaluation.layer_metrics.evaluate_labels`); empty before one.
    error_layer : napari.layers.Labels or None
        The layer showing the last evaluation's false positives and negatives.
    stale : bool
        True when the evaluated layers' labels changed after the figures were computed.
    """

    #: Emitted when an evaluation ends: "ok" or "error".
    evaluated = Signal(str)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.values: dict[str, float] = {}
        self.error_layer: Any = None
        self._outcome = "error"
        self._rows = TABLE_ROWS
        self.stale = False
        self._watched: list = []  # the layers of the figures shown, watched for changes

        self.prediction = ComboBox(label="prediction", choices=self._labels_choices)
        self.reference = ComboBox(label="reference", choices=self._labels_choices)
        self.rule = ComboBox(label="error rule", choices=RULES, value="glas")
        self.rule.tooltip = "When a predicted object counts as matching a reference object in the error layer"
        self.show_errors = CheckBox(text="show false positives / negatives as a layer", value=True)
        self.evaluate_button = PushButton(text="Evaluate")
        self.evaluate_button.changed.connect(lambda *_: self.evaluate())
        self.summary = Label(value="")
        self.table = QTableWidget(len(self._rows), 2)
        self.table.setHorizontalHeaderLabels(["metric", "value"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        for row, (_, name) in enumerate(self._rows):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, QTableWidgetItem("–"))
        self.table.horizontalHeader().setStretchLastSection(True)
        rows = self.table.verticalHeader().defaultSectionSize() * len(self._rows)
        self.table.setMinimumHeight(rows + self.table.horizontalHeader().sizeHint().height() + 4)

        choose = Container(widgets=[self.prediction, self.reference, self.rule], labels=True)
        self.stack(choose, self.show_errors, self.evaluate_button, self.summary, self.table, stretch=False)
        self.watch_layers(self._refresh)
        self._select_defaults()

    def shown(self) -> dict[str, str]:
        """The table as displayed: metric name -> text."""
        return {self.table.item(r, 0).text(): self.table.item(r, 1).text() for r in range(self.table.rowCount())}

    def evaluate(self) -> None:
        """Score the prediction against the reference in a worker; problems become notifications."""
        if self._job is not None:
            return
        pred, ref = self.prediction.value, self.reference.value
        if pred is None or ref is None or pred not in self.viewer.layers or ref not in self.viewer.layers:
            notify_error("choose a prediction and a reference Labels layer to evaluate")
            return
        if pred == ref:
            notify_error("the prediction and the reference are the same layer; choose two different layers")
            return
        pred_data, ref_data, rule, errors = pred.data, ref.data, self.rule.value, self.show_errors.value

        def work(cancel):
            import numpy as np

            stages = 2 if errors else 1
            yield Progress(0, stages, "scoring")
            p, r = np.asarray(pred_data), np.asarray(ref_data)
            values = evaluate_labels(p, r)
            cancel.check()
            if not errors:
                return values, None
            yield Progress(1, stages, "error map")
            return values, error_map(p, r, rule)[0]

        self._outcome = "error"
        self.summary.value = "evaluating…"
        self.start_job(work, on_result=partial(self._show, pred, ref, rule), on_error=self._failed,
                       on_cancelled=lambda: setattr(self.summary, "value", "cancelled"),
                       on_finished=self._finished, progress=f"Evaluating {pred.name}", subject=pred)
        self.evaluate_button.enabled = False

    # -- outcome ----------------------------------------------------------------------------------

    def _show(self, pred: Any, ref: Any, rule: str, value: tuple) -> None:
        values, errors = value
        self.values = values
        for row, (key, _) in enumerate(self._rows):
            self.table.item(row, 1).setText(format_value(values[key]))
        self.summary.value = (f"{pred.name} vs {ref.name}: {int(values['fp'])} false positives, "
                              f"{int(values['fn'])} false negatives")
        self._set_stale(False)
        _unwatch(self._watched, self._mark_stale)
        self._watched[:] = [layer for layer in (pred, ref) if layer in self.viewer.layers]
        for layer in self._watched:
            layer.events.data.connect(self._mark_stale)
            layer.events.paint.connect(self._mark_stale)
        if errors is not None:
            self._write_errors(pred, ref, rule, errors)
        self._outcome = "ok"

    def _write_errors(self, pred: Any, ref: Any, rule: str, errors: Any) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        name = f"{pred.name} errors"
        info = {TAG: {"role": "errors", "prediction": pred.name, "reference": ref.name, "rule": rule}}
        layer = self.error_layer
        if layer is not None and layer in self.viewer.layers:
            layer.data, layer.name, layer.metadata = errors, name, {**layer.metadata, **info}
        else:
            layer = self.viewer.add_labels(
                errors, name=name, metadata=info, opacity=0.6, scale=pred.scale, translate=pred.translate,
                colormap=DirectLabelColormap(color_dict=COLORS),
                features={"index": [0, 1, 2, 3], "error": ERROR_NAMES},
            )
        self.error_layer = layer

    def _mark_stale(self, *_: Any) -> None:
        if not self.stale and self.values:
            self._set_stale(True)

    def _set_stale(self, stale: bool) -> None:
        """Grey the figures and say why (the labels changed), or show them plainly."""
        from qtpy.QtGui import QBrush, QColor

        self.stale = stale
        brush = QBrush(QColor(128, 128, 128)) if stale else QBrush()
        for row in range(self.table.rowCount()):
            self.table.item(row, 1).setForeground(brush)
        note = "STALE: the labels changed since; press Evaluate to recompute. "
        text = self.summary.value.removeprefix(note)
        self.summary.value = note + text if stale else text

    def _failed(self, exc: BaseException) -> None:
        self.summary.value = "evaluation failed"
        notify_error(f"evaluation failed: {error_message(exc)}")

    def _finished(self) -> None:
        self.evaluate_button.enabled = True
        self.evaluated.emit(self._outcome)

    # -- layers -----------------------------------------------------------------------------------

    def _labels_choices(self, *_: Any) -> list:
        def is_error_map(layer: Any) -> bool:
            return getattr(layer, "metadata", {}).get(TAG, {}).get("role") == "errors"

        return [(name, layer) for name, layer in self.layers_of("Labels") if not is_error_map(layer)]

    def _refresh(self, *_: Any) -> None:
        for combo in (self.prediction, self.reference):
            combo.reset_choices()
        if self.error_layer is not None and self.error_layer not in self.viewer.layers:
            self.error_layer = None

    def _select_defaults(self) -> None:
        # A plugin-made layer is most likely the prediction; any other Labels layer the reference.
        choices = [layer for _, layer in self._labels_choices()]
        made = [layer for layer in choices if TAG in getattr(layer, "metadata", {})]
        others = [layer for layer in choices if layer not in made]
        if made:
            self.prediction.value = made[0]
        if others:
            self.reference.value = others[0]

