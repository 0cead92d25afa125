"""A live loss curve: a small QWidget painting a polyline with QPainter (no plotting library needed)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

MARGIN = 6


class LossPlot(QWidget):
    """Loss per training step, rescaled to the widget; the last and smallest values are written on it.

    Attributes
    ----------
    values : list of float
        The points shown, in order (non-finite values are skipped when drawing).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float] = []
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training loss per step")

    def add(self, value: float) -> None:
        """Append one point and repaint."""
        self.values.append(float(value))
        self.update()

    def clear(self) -> None:
        """Remove every point."""
        self.values = []
        self.update()

    def points(self) -> list[tuple[float, float]]:
        """The polyline in widget pixel coordinates (what :meth:`paintEvent` draws)."""
        finite = [(i, v) for i, v in enumerate(self.values) if math.isfinite(v)]
        if not finite:
            return []
        low, high = min(v for _, v in finite), max(v for _, v in finite)
        span_y = (high - low) or 1.0
        span_x = max(len(self.values) - 1, 1)
        w, h = self.width() - 2 * MARGIN, self.height() - 2 * MARGIN - 12
        return [(MARGIN + w * i / span_x, MARGIN + 12 + h * (high - v) / span_y) for i, v in finite]

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        painter.setPen(QPen(QColor(text.red(), text.green(), text.blue(), 60), 1))
        painter.drawRect(0, 0, self.width() - 1, self.height() - 1)
        points = self.points()
        if points:
            painter.setPen(QPen(QColor(255, 140, 0), 1.5))
            painter.drawPolyline(QPolygonF([QPointF(x, y) for x, y in points]))
        painter.setPen(text)
        finite = [v for v in self.values if math.isfinite(v)]
        label = f"loss {finite[-1]:.4f} (min {min(finite):.4f}), {len(self.values)} steps" if finite else "loss"
        painter.drawText(MARGIN, MARGIN, self.width() - 2 * MARGIN, 14, Qt.AlignmentFlag.AlignLeft, label)
        painter.end()
