"""A tiny live line plot (training loss, validation metric) painted with QPainter.

Light on purpose: no plotting backend to import, redraws in microseconds per event.
"""
from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LivePlot"]

COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8"]


class LivePlot(QWidget):
    """Several named series against a shared x (e.g. step); each series is scaled on its own."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def add(self, name: str, x: float, y: float) -> None:
        self.series.setdefault(name, []).append((float(x), float(y)))
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#262930"))
        left, right, top, bottom = 8, 8, 18, 8
        pw, ph = max(w - left - right, 1), max(h - top - bottom, 1)
        p.setPen(QPen(QColor("#555"), 1))
        p.drawRect(left, top, pw, ph)
        xs = [x for pts in self.series.values() for x, _ in pts]
        if not xs:
            p.setPen(QColor("#aaa"))
            p.drawText(left + 6, top + 16, "loss will appear here")
            p.end()
            return
        x0, x1 = min(xs), max(xs)
        x1 = x0 + 1 if x1 == x0 else x1
        tx = left + 4
        for i, (name, pts) in enumerate(self.series.items()):
            color = QColor(COLORS[i % len(COLORS)])
            ys = [y for _, y in pts]
            y0, y1 = min(ys), max(ys)
            pad = (y1 - y0) * 0.05 or 0.5
            y0, y1 = y0 - pad, y1 + pad
            p.setPen(QPen(color, 1.6))
            line = [QPointF(left + (x - x0) / (x1 - x0) * pw, top + ph - (y - y0) / (y1 - y0) * ph)
                    for x, y in pts]
            for a, b in zip(line, line[1:]):
                p.drawLine(a, b)
            if len(line) == 1:
                p.drawEllipse(line[0], 2, 2)
            label = f"{name} {ys[-1]:.4g}"
            p.drawText(tx, 13, label)
            tx += p.fontMetrics().horizontalAdvance(label) + 12
        p.setPen(Qt.NoPen)
        p.end()
