"""A live loss curve, and the held-out score beside it: a small QWidget painting polylines with QPainter.

No plotting library is needed. Both curves share the step axis; each has its own vertical scale (the
loss's from its smallest to its largest value, the score's likewise), written at the top in its colour.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

MARGIN = 6
TEXT = 14
LOSS_COLOUR = (255, 140, 0)
SCORE_COLOUR = (40, 170, 255)


class LossPlot(QWidget):
    """Loss per training step and, when validated, the held-out score; last and best values are written on it.

    Attributes
    ----------
    values : list of float
        The losses shown, one per step from step 1 (non-finite values are skipped when drawing).
    scores : list of tuple[int, float]
        (step, held-out score) in order; step 0 is the starting model.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[float] = []
        self.scores: list[tuple[int, float]] = []
        self.setMinimumHeight(90 + TEXT)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("orange: training loss per step; blue: score of the held-out region (higher is better)")

    def add(self, value: float) -> None:
        """Append one loss and repaint."""
        self.values.append(float(value))
        self.update()

    def add_score(self, step: int, score: float) -> None:
        """Append one held-out score measured after ``step`` steps (0: before training) and repaint."""
        self.scores.append((int(step), float(score)))
        self.update()

    def clear(self) -> None:
        """Remove every point."""
        self.values, self.scores = [], []
        self.update()

    def best_score(self) -> tuple[int, float] | None:
        """(step, score) of the best held-out score after training started (the first on ties), or None."""
        trained = [(s, v) for s, v in self.scores if s > 0 and math.isfinite(v)]
        return max(trained, key=lambda p: (p[1], -p[0])) if trained else None

    def _last_step(self) -> int:
        return max([len(self.values)] + [s for s, _ in self.scores])

    def _polyline(self, steps_values: list[tuple[int, float]], first_step: int) -> list[tuple[float, float]]:
        finite = [(s, v) for s, v in steps_values if math.isfinite(v)]
        if not finite:
            return []
        low, high = min(v for _, v in finite), max(v for _, v in finite)
        span_y = (high - low) or 1.0
        span_x = max(self._last_step() - first_step, 1)
        w, h = self.width() - 2 * MARGIN, self.height() - 2 * MARGIN - 2 * TEXT
        top = MARGIN + 2 * TEXT
        return [(MARGIN + w * (s - first_step) / span_x, top + h * (high - v) / span_y) for s, v in finite]

    def _first_step(self) -> int:
        return 0 if self.scores and self.scores[0][0] == 0 else 1

    def points(self) -> list[tuple[float, float]]:
        """The loss polyline in widget pixel coordinates (what :meth:`paintEvent` draws)."""
        return self._polyline([(i + 1, v) for i, v in enumerate(self.values)], self._first_step())

    def score_points(self) -> list[tuple[float, float]]:
        """The held-out score polyline in widget pixel coordinates."""
        return self._polyline(self.scores, self._first_step())

    def loss_text(self) -> str:
        """The loss line written on the plot."""
        finite = [v for v in self.values if math.isfinite(v)]
        return f"loss {finite[-1]:.4f} (min {min(finite):.4f}), {len(self.values)} steps" if finite else "loss"

    def score_text(self) -> str:
        """The held-out score line written on the plot ("" without validation)."""
        if not self.scores:
            return ""
        text = f"held-out score {self.scores[-1][1]:.3f}"
        best = self.best_score()
        if best is not None:
            text += f" (best {best[1]:.3f} at step {best[0]})"
        return text

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        painter.setPen(QPen(QColor(text.red(), text.green(), text.blue(), 60), 1))
        painter.drawRect(0, 0, self.width() - 1, self.height() - 1)
        for points, colour in ((self.points(), LOSS_COLOUR), (self.score_points(), SCORE_COLOUR)):
            if len(points) == 1:
                painter.setPen(QPen(QColor(*colour), 4))
                painter.drawPoint(QPointF(*points[0]))
            elif points:
                painter.setPen(QPen(QColor(*colour), 1.5))
                painter.drawPolyline(QPolygonF([QPointF(x, y) for x, y in points]))
        painter.setPen(text)
        painter.drawText(MARGIN, MARGIN, self.width() - 2 * MARGIN, TEXT, Qt.AlignmentFlag.AlignLeft, self.loss_text())
        if self.scores:
            painter.setPen(QColor(*SCORE_COLOUR))
            painter.drawText(MARGIN, MARGIN + TEXT, self.width() - 2 * MARGIN, TEXT, Qt.AlignmentFlag.AlignLeft,
                             self.score_text())
        painter.end()
