"""The fine-tuning loss plot of the Correct & learn section: training loss (line) and
held-out loss (dots), with labelled axes. Paints itself with QPainter (no plotting library)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPalette, QPen
from qtpy.QtWidgets import QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """A small live plot of the training loss (line) and the held-out loss (dots), with
    labelled axes: step on x, loss on y, the min / max of each as tick labels."""

    X_TITLE, Y_TITLE = "step", "loss"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(96)
        self.train: list[float] = []
        self.held_out: list[tuple[int, float]] = []

    def clear(self) -> None:
        self.train, self.held_out = [], []
        self.update()

    def add_step(self, loss: float, repaint: bool = True) -> None:
        self.train.append(loss)
        if repaint:
            self.update()

    def add_held_out(self, loss: float, repaint: bool = True) -> None:
        self.held_out.append((len(self.train), loss))
        if repaint:
            self.update()

    def _limits(self) -> tuple[float, float, int] | None:
        values = self.train + [v for _, v in self.held_out]
        if not values:
            return None
        lo, hi = min(values), max(values)
        return lo, (hi if hi > lo else lo + 1e-6), max(1, len(self.train), *(i for i, _ in self.held_out))

    def axis_labels(self) -> dict[str, Any]:
        """What the axes show: titles and (low, high) tick labels (empty before the first step)."""
        limits = self._limits()
        if limits is None:
            return {"x": self.X_TITLE, "y": self.Y_TITLE, "x_ticks": ("", ""), "y_ticks": ("", "")}
        lo, hi, n = limits
        return {"x": self.X_TITLE, "y": self.Y_TITLE, "x_ticks": ("1", str(n)),
                "y_ticks": (f"{lo:.3g}", f"{max(self.train + [v for _, v in self.held_out]):.3g}")}

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        font = painter.font()
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        text_h = metrics.height()
        labels = self.axis_labels()
        y_ticks, x_ticks = labels["y_ticks"], labels["x_ticks"]
        left = 6 + max(metrics.horizontalAdvance(t) for t in (*y_ticks, labels["y"]))
        top = 1.5 * text_h + 4  # the title row, then half a tick label above the plot area
        plot = QRectF(left, top, self.width() - left - 8, self.height() - top - text_h - 4)
        text_colour = self.palette().color(QPalette.WindowText)  # readable in napari's dark and light themes
        axis_pen = QPen(QColor(150, 150, 150), 1)
        text_pen = QPen(text_colour, 1)
        painter.setPen(axis_pen)
        painter.drawLine(plot.bottomLeft(), plot.topLeft())
        painter.drawLine(plot.bottomLeft(), plot.bottomRight())
        painter.setPen(text_pen)
        # axis titles: "loss" above the y axis, "step" under the middle of the x axis
        painter.drawText(QRectF(0, 0, left + 40, text_h), Qt.AlignLeft | Qt.AlignVCenter, labels["y"])
        below = QRectF(plot.left(), plot.bottom() + 2, plot.width(), text_h)
        painter.drawText(below, Qt.AlignHCenter | Qt.AlignTop, labels["x"])
        # legend, top right
        legend = QRectF(left + 40, 0, self.width() - left - 48, text_h)
        painter.setPen(QPen(QColor(255, 190, 60), 1))
        painter.drawText(legend, Qt.AlignRight | Qt.AlignVCenter, "\u25cf held-out")
        held_w = metrics.horizontalAdvance("\u25cf held-out") + 10
        painter.setPen(QPen(QColor(90, 170, 255), 1))
        painter.drawText(legend.adjusted(0, 0, -held_w, 0), Qt.AlignRight | Qt.AlignVCenter, "\u2014 training")
        limits = self._limits()
        painter.setPen(text_pen)
        if limits is None:
            painter.drawText(plot, Qt.AlignCenter, "the loss appears here during fine-tuning")
            return
        # tick labels: max at the top and min at the bottom of y; first and last step on x
        painter.drawText(QRectF(0, plot.top() - text_h / 2, left - 4, text_h), Qt.AlignRight | Qt.AlignVCenter,
                         y_ticks[1])
        painter.drawText(QRectF(0, plot.bottom() - text_h / 2, left - 4, text_h), Qt.AlignRight | Qt.AlignVCenter,
                         y_ticks[0])
        painter.drawText(below, Qt.AlignLeft | Qt.AlignTop, x_ticks[0])
        painter.drawText(below, Qt.AlignRight | Qt.AlignTop, x_ticks[1])
        lo, hi, n = limits

        def point(step: float, v: float) -> QPointF:  # step counts from 1
            x = plot.left() + plot.width() * ((step - 1) / (n - 1) if n > 1 else 0.5)
            return QPointF(x, plot.bottom() - plot.height() * (v - lo) / (hi - lo))

        painter.setPen(QPen(QColor(90, 170, 255), 1.5))
        for i in range(1, len(self.train)):
            painter.drawLine(point(i, self.train[i - 1]), point(i + 1, self.train[i]))
        painter.setPen(QPen(QColor(255, 190, 60), 5))
        for i, v in self.held_out:
            painter.drawPoint(point(max(1, i), v))
