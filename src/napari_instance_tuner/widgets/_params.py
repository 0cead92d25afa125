"""Post-processing controls generated from a family's parameter dataclass.

One slider (float or int) or checkbox per field of ``family.Params``, with its range, step and
description (as tooltip) from :func:`~..core.params.param_specs`; a new parameter therefore needs no
widget code. Changes are coalesced by a single-shot timer, so dragging a slider asks for one update
per pause, never a queue of stale ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import CheckBox, Container, FloatSlider, PushButton, Slider
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QAbstractSpinBox

from ..core.params import ParamSpec, param_specs, params_from_dict, params_to_dict

#: Milliseconds without a change before post-processing re-runs. 0: the changes of one pass of the event
#: loop (several controls set together) make one update, and a drag is coalesced by the Segment widget's
#: one-job-at-a-time rule (the latest values run when the current job ends). A longer pause only added
#: latency: 15 ms nominal measured 40-80 ms on a loaded 2-core machine (docs/benchmarks.md, session 12).
COALESCE_MS = 0



class _ReadoutFit(QObject):
    """Event filter giving a slider read-out's text field the whole read-out.

    Qt 6.12 lays out a spin box whose stylesheet sets a border or padding (magicgui's read-outs and
    napari's theme both do) with a one-pixel text field, so the value is invisible. Harmless where Qt
    lays it out right.
    """

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() in (QEvent.Type.Resize, QEvent.Type.Show, QEvent.Type.StyleChange):
            # Watched: the read-out (a spin box) and its text field, whichever Qt just resized.
            box = obj if isinstance(obj, QAbstractSpinBox) else obj.parent()
            edit = box.lineEdit() if isinstance(box, QAbstractSpinBox) else None
            if edit is not None and edit.width() < box.width() // 2:
                edit.setGeometry(box.rect())
        return False


_FIT = _ReadoutFit()


def _control(spec: ParamSpec):
    label = spec.name.replace("_", " ")
    if spec.kind is bool:
        return CheckBox(name=spec.name, text=label, value=bool(spec.default), tooltip=spec.description)
    cls = Slider if spec.kind is int else FloatSlider
    slider = cls(
        name=spec.name,
        label=label,
        value=spec.default,
        min=spec.low,
        max=spec.high,
        step=spec.step,
        tooltip=spec.description,
    )
    for readout in slider.native.findChildren(QAbstractSpinBox):
        readout.installEventFilter(_FIT)
        readout.lineEdit().installEventFilter(_FIT)
        readout.setMinimumWidth(readout.fontMetrics().horizontalAdvance(f"{spec.high:.2f}") + 8)
    return slider


class ParamsPanel:
    """Controls for one family's parameters.

    Parameters
    ----------
    on_change : callable
        Called (without arguments, on the GUI thread) once changes have paused for
        :data:`COALESCE_MS` milliseconds.
    on_reset : callable
        Called when the user presses "Reset to model defaults".
    """

    def __init__(self, on_change: Callable[[], Any], on_reset: Callable[[], Any]) -> None:
        self.params_class: type | None = None
        self.controls = Container(labels=True)
        self.reset_button = PushButton(text="Reset to model defaults")
        self.reset_button.tooltip = "Set every post-processing parameter to the value stored with the model"
        self.reset_button.changed.connect(lambda *_: on_reset())
        self.widget = Container(widgets=[self.controls, self.reset_button], labels=False)
        self._silent = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(COALESCE_MS)
        self._timer.timeout.connect(on_change)

    def build(self, params_class: type, values: Any) -> None:
        """Replace the controls by those of ``params_class``, showing ``values``."""
        self._timer.stop()
        self.controls.clear()
        self.params_class = params_class
        for spec in param_specs(params_class):
            control = _control(spec)
            control.changed.connect(self._changed)
            self.controls.append(control)
        self.set_values(values)

    def set_values(self, params: Any) -> None:
        """Show ``params`` (an instance of the parameter class) without triggering an update."""
        self._silent = True
        try:
            for name, value in params_to_dict(params).items():
                self.controls[name].value = value
        finally:
            self._silent = False

    def params(self) -> Any:
        """The parameters shown, validated (raises :class:`~..core.errors.ParamsError`)."""
        values = {c.name: c.value for c in self.controls}
        return params_from_dict(self.params_class, values)

    @property
    def pending(self) -> bool:
        """True while a change waits for the coalescing timer."""
        return self._timer.isActive()

    def _changed(self, *_: Any) -> None:
        if not self._silent:
            self._timer.start()  # restarts: only the last of rapid changes fires
