"""The live loss plot of a run: training and validation loss per epoch, drawn with QPainter.

When a run stops early, the plot marks the epoch it kept (the best validation loss) and says so in
words ("stopped at epoch 77 of 300: the validation loss stopped improving"), so that a run that
ended before its epoch budget does not look like one that broke off.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from ..models import ProgressEvent

#: seconds between repaints of the live loss plot (each repaint recomposites the window)
LOSS_PLOT_INTERVAL = 0.25


class LossPlot(QWidget):
    """A small live plot of the training (and validation) loss per epoch."""

    TRAIN = QColor(31, 119, 180)
    VAL = QColor(255, 127, 14)
    BEST = QColor(44, 160, 44)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(135)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._repaint = QTimer(self)
        self._repaint.setSingleShot(True)
        self._repaint.setInterval(int(LOSS_PLOT_INTERVAL * 1000))
        self._repaint.timeout.connect(self.update)
        self.clear()

    def clear(self, title: str = "") -> None:
        """Forget the curves (a new run starts)."""
        self.title = title
        self.stage = ""
        self.train: list[tuple[float, float]] = []
        self.val: list[tuple[float, float]] = []
        self.n_epochs = 0
        self.status = ""
        self.best_epoch: int | None = None
        self._last_step = -1
        self.setVisible(False)  # shown with the first loss: methods that do not train have none
        self.update()

    def add_event(self, event: ProgressEvent) -> None:
        """Record one progress event (a new point at the end of every epoch)."""
        if event.stage != self.stage:
            self.stage = event.stage
            self.train, self.val = [], []
            self._last_step = -1
        if event.step < self._last_step:
            return  # an older event delivered late
        self._last_step = event.step
        if self.train and 1 <= event.epoch < self.train[-1][0]:
            self.train, self.val = [], []  # a new training run within the same stage
        self.n_epochs = int(event.n_epochs or 0)
        last = self.train[-1][0] if self.train else 0
        if event.train_loss is not None and math.isfinite(event.train_loss) and event.epoch > last:
            self.setVisible(True)
            self.train.append((float(event.epoch), float(event.train_loss)))
            if event.val_loss is not None and math.isfinite(event.val_loss):
                self.val.append((float(event.epoch), float(event.val_loss)))
        parts = [f"epoch {event.epoch} of at most {event.n_epochs}" if event.n_epochs else ""]
        if event.train_loss is not None:
            parts.append(f"training loss {event.train_loss:.4g}")
        if event.val_loss is not None:
            parts.append(f"validation {event.val_loss:.4g}")
        if event.message:
            parts.append(event.message)
        self.status = ", ".join(p for p in parts if p)
        if not self._repaint.isActive():
            self._repaint.start()

    def finish(self, history: Any) -> None:
        """The run ended: say how (early stopping marked at the epoch whose model was kept)."""
        if history is None or not getattr(history, "n_epochs", 0):
            self.status = "done" if self.train or self.status else ""
        elif getattr(history, "stopped_early", False):
            self.best_epoch = int(history.best_epoch) or None
            kept = f"; the model of epoch {self.best_epoch} is kept" if self.best_epoch else ""
            self.status = (f"Stopped at epoch {history.n_epochs} of {self.n_epochs or history.n_epochs}: "
                           f"the validation loss stopped improving{kept}.")
        else:
            self.status = f"Done: {history.n_epochs} epochs."
        self.update()

    def cancelled(self) -> None:
        self.status = "Cancelled: nothing was written."
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect())
        painter.fillRect(rect, self.palette().base())
        text_color = self.palette().text().color()
        font = QFont(painter.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        fm = painter.fontMetrics()
        line = fm.height()
        title = "Loss" + (f" ({self.stage})" if self.stage not in ("", "train") else "")
        if self.title:
            title = f"{self.title}: {title.lower()}"
        painter.setPen(text_color)
        painter.drawText(QRectF(4, 2, rect.width() - 8, line), Qt.AlignmentFlag.AlignLeft, title)
        lx = rect.width() - 150
        for i, (name, color) in enumerate((("training", self.TRAIN), ("validation", self.VAL))):
            x0 = lx + i * 70
            painter.setPen(QPen(color, 2))
            painter.drawLine(QPointF(x0, 2 + line / 2), QPointF(x0 + 12, 2 + line / 2))
            painter.setPen(text_color)
            painter.drawText(QPointF(x0 + 15, 2 + fm.ascent()), name)
        # room for the status in up to three lines ("Stopped at epoch 30 of 60: ... kept")
        status_lines = 3 if fm.horizontalAdvance(self.status or "") > 1.8 * (rect.width() - 8) else 2
        left, right, top = 56.0, rect.width() - 8, line + 6
        bottom = rect.height() - status_lines * line - 8
        plot = QRectF(left, top, max(10.0, right - left), max(10.0, bottom - top))
        frame = text_color.darker(150) if text_color.lightness() > 128 else text_color.lighter(150)
        painter.setPen(QPen(frame, 1))
        painter.drawRect(plot)
        painter.setPen(text_color)
        painter.drawText(QRectF(4, rect.height() - status_lines * line - 2, rect.width() - 8, status_lines * line),
                         Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap, self.status or "not run yet")
        self._draw_curves(painter, plot, left, line, text_color)
        painter.end()

    def _draw_curves(self, painter: QPainter, plot: QRectF, left: float, line: int, text_color: QColor) -> None:
        points = self.train + self.val
        if not points:
            return
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        x_max = max(max(xs), 1.0)
        # ignore the very first epochs when scaling (they dwarf the rest of the curve)
        tail = [p[1] for p in points if p[0] > min(3.0, x_max / 10)] or ys
        y_min, y_max = min(ys), max(tail)
        if y_max - y_min < 1e-12:
            y_min, y_max = y_min - 0.5, y_max + 0.5

        def to_px(x: float, y: float) -> QPointF:
            fx = (x - 1) / max(x_max - 1, 1.0)
            fy = (min(y, y_max) - y_min) / (y_max - y_min)
            return QPointF(plot.left() + fx * plot.width(), plot.bottom() - fy * plot.height())

        for series, color in ((self.train, self.TRAIN), (self.val, self.VAL)):
            if not series:
                continue
            path = QPainterPath(to_px(*series[0]))
            for p in series[1:]:
                path.lineTo(to_px(*p))
            painter.setPen(QPen(color, 1.8))
            painter.drawPath(path)
        if self.best_epoch:
            x = to_px(float(self.best_epoch), y_min).x()
            painter.setPen(QPen(self.BEST, 1.5, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
        painter.setPen(text_color)
        painter.drawText(QRectF(0, plot.top() - 2, left - 4, line), Qt.AlignmentFlag.AlignRight,
                         f"{y_max:.3g}")
        painter.drawText(QRectF(0, plot.bottom() - line + 2, left - 4, line),
                         Qt.AlignmentFlag.AlignRight, f"{y_min:.3g}")


__all__ = ["LossPlot"]
