"""Run controls every task panel shares: device, Run and Cancel, why Run is off, errors, loss.

Why Run is disabled is said under the buttons in plain words with the way out; a failed run's
message is shown there too, word-wrapped in the panel (napari's notification toasts are clipped
by the canvas), and stays until the next run.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..models import available_devices
from ._loss_plot import LossPlot

REASON_STYLE = "color: #e0a040;"
ERROR_STYLE = ("color: #ffffff; background-color: #8c2a2a; border-radius: 3px; padding: 4px;")


def _message_label(style: str) -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(style)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label


class RunControls(QWidget):
    """Device choice, Run/Cancel, why Run is disabled, the last error, and the live loss plot."""

    run_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.device = QComboBox()
        self.device.addItems(["auto", *available_devices()])
        self.device.setToolTip("Where the model trains: 'auto' picks a GPU when there is one.")
        form.addRow("device", self.device)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.reason = _message_label(REASON_STYLE)
        layout.addWidget(self.reason)
        self.error = _message_label(ERROR_STYLE)
        layout.addWidget(self.error)
        self.loss = LossPlot()
        layout.addWidget(self.loss)
        self.run_button.clicked.connect(self.run_clicked)
        self.cancel_button.clicked.connect(self.cancel_clicked)
        self._running = False
        self._why = ""

    def set_reason(self, why: str) -> None:
        """Enable Run when ``why`` is empty; otherwise disable it and show ``why``."""
        self._why = why
        self._refresh()

    def set_running(self, running: bool) -> None:
        self._running = running
        if running:
            self.show_error("")
        self._refresh()

    def show_error(self, message: str) -> None:
        """Show a failed run's message in the panel ('' hides it)."""
        self.error.setText(message)
        self.error.setVisible(bool(message))

    def _refresh(self) -> None:
        self.run_button.setEnabled(not self._running and not self._why)
        self.cancel_button.setEnabled(self._running)
        self.reason.setText("Running…" if self._running else self._why)
        self.reason.setVisible(bool(self._running or self._why))

    @property
    def device_value(self) -> str:
        return self.device.currentText()


__all__ = ["RunControls"]
