"""The display-only legend: category swatches with names, or a colour bar with its limits."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..layers import NA_COLOR, LegendInfo

_SWATCH = 14
_MAX_LISTED = 60  # categories listed before "... and N more"


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1e4 or a < 1e-3:
        return f"{x:.2e}"
    if a >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def colorbar_pixmap(cmap: str, width: int = 200, height: int = 14) -> QPixmap:
    """A horizontal gradient of matplotlib colormap ``cmap`` as a QPixmap."""
    import matplotlib

    lut = (np.asarray(matplotlib.colormaps[cmap](np.linspace(0, 1, width))) * 255).astype(np.uint8)
    arr = np.ascontiguousarray(np.repeat(lut[None, :, :], height, axis=0))
    image = QImage(arr.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
    return QPixmap.fromImage(image.copy())  # copy: the QImage must not outlive arr's buffer


def _swatch(color: str) -> QLabel:
    swatch = QLabel()
    swatch.setFixedSize(_SWATCH, _SWATCH)
    swatch.setStyleSheet(f"background-color: {color}; border: 1px solid #202020;")
    return swatch


class LegendWidget(QWidget):
    """Shows either category swatches with names, or a colour bar with its min and max."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode: str | None = None  # "categorical", "numeric" or None (empty)
        self._categories: dict[str, str] = {}
        self._limits: tuple[float, float] | None = None
        self._cmap: str | None = None

        self.title = QLabel("")
        self.title.setWordWrap(True)
        font = self.title.font()
        font.setBold(True)
        self.title.setFont(font)

        # categories: swatch + name rows in a scroll area
        self._rows = QWidget()
        self._grid = QGridLayout(self._rows)
        self._grid.setContentsMargins(2, 2, 2, 2)
        self._grid.setHorizontalSpacing(6)
        self._grid.setVerticalSpacing(3)
        self._scroll = QScrollArea()
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.Shape.NoFrame)
        self._scroll.setWidget(self._rows)
        self._scroll.setMaximumHeight(320)

        # numbers: gradient + min / max
        self._bar = QLabel()
        self._bar.setScaledContents(True)
        self._bar.setMinimumHeight(14)
        self._bar.setMaximumHeight(16)
        self._bar.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.min_label = QLabel("")
        self.max_label = QLabel("")
        self.max_label.setAlignment(Qt.AlignmentFlag.AlignRight)
        ticks = QHBoxLayout()
        ticks.setContentsMargins(0, 0, 0, 0)
        ticks.addWidget(self.min_label)
        ticks.addStretch(1)
        ticks.addWidget(self.max_label)
        self._numeric = QWidget()
        numeric_layout = QVBoxLayout(self._numeric)
        numeric_layout.setContentsMargins(2, 2, 2, 2)
        numeric_layout.setSpacing(1)
        numeric_layout.addWidget(self._bar)
        numeric_layout.addLayout(ticks)

        self.missing_label = QLabel("")
        self.missing_label.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addWidget(self.title)
        layout.addWidget(self._scroll)
        layout.addWidget(self._numeric)
        layout.addWidget(self.missing_label)
        layout.addStretch(1)
        self._numeric.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(200)
        self.clear()

    # ---- what tests and other widgets read -------------------------------------------------
    def entries(self) -> list[str]:
        """The category names listed (categorical mode), in order."""
        return list(self._categories) if self.mode == "categorical" else []

    def colors(self) -> dict[str, str]:
        """Category -> hex colour shown (categorical mode)."""
        return dict(self._categories) if self.mode == "categorical" else {}

    @property
    def limits(self) -> tuple[float, float] | None:
        """``(min, max)`` of the colour bar (numeric mode)."""
        return self._limits if self.mode == "numeric" else None

    # ---- setters ---------------------------------------------------------------------------
    def clear(self, message: str = "") -> None:
        """Show nothing (or a short message instead)."""
        self.mode = None
        self._categories, self._limits, self._cmap = {}, None, None
        self._clear_rows()
        self.title.setText(message)
        self.title.setVisible(bool(message))
        self._scroll.hide()
        self._numeric.hide()
        self.missing_label.hide()

    def set_categories(self, categories: Mapping[str, str], label: str = "", n_missing: int = 0,
                       na_color: str = NA_COLOR) -> None:
        """Swatches: one row per category (name -> colour), then the missing-value colour."""
        self.mode = "categorical"
        self._categories = {str(k): str(v) for k, v in categories.items()}
        self._limits, self._cmap = None, None
        self._clear_rows()
        items = list(self._categories.items())
        for row, (name, color) in enumerate(items[:_MAX_LISTED]):
            self._grid.addWidget(_swatch(color), row, 0)
            text = QLabel(name)
            text.setToolTip(name)
            self._grid.addWidget(text, row, 1)
        row = min(len(items), _MAX_LISTED)
        if len(items) > _MAX_LISTED:
            self._grid.addWidget(QLabel(f"... and {len(items) - _MAX_LISTED} more"), row, 1)
            row += 1
        if n_missing:
            self._grid.addWidget(_swatch(na_color), row, 0)
            self._grid.addWidget(QLabel(f"missing ({n_missing} spots)"), row, 1)
            row += 1
        self._grid.setColumnStretch(1, 1)
        self._grid.setRowStretch(row, 1)
        self.title.setText(label or "categories")
        self.title.show()
        self._numeric.hide()
        self.missing_label.hide()
        self._scroll.show()
        # fit the rows without scrolling when there are few
        self._scroll.setMinimumHeight(min(row, 10) * (_SWATCH + 6) + 6)  # more rows scroll

    def set_colorbar(self, cmap: str, limits: tuple[float, float], label: str = "", n_missing: int = 0,
                     na_color: str = NA_COLOR, note: str = "") -> None:
        """A colour bar of ``cmap`` from ``limits[0]`` (left) to ``limits[1]`` (right)."""
        self.mode = "numeric"
        self._categories = {}
        self._cmap = cmap
        self._limits = (float(limits[0]), float(limits[1]))
        self._clear_rows()
        self._bar.setPixmap(colorbar_pixmap(cmap))
        self.min_label.setText(_fmt(self._limits[0]))
        self.max_label.setText(_fmt(self._limits[1]))
        self.title.setText(label or "value")
        self.title.show()
        self._scroll.hide()
        self._numeric.show()
        notes = [note] if note else []
        if n_missing:
            notes.append(f"<span style='color:{na_color}'>&#9632;</span> missing ({n_missing} spots)")
        self.missing_label.setText("<br>".join(notes))
        self.missing_label.setVisible(bool(notes))

    def set_legend(self, info: LegendInfo | None) -> None:
        """Show a :class:`~napari_spatialdl.layers.LegendInfo` (None clears)."""
        if info is None:
            self.clear()
        elif info.kind == "categorical":
            self.set_categories(info.categories, info.label, info.n_missing, info.na_color)
        else:
            self.set_colorbar(info.cmap or "viridis", info.limits or (0.0, 1.0), info.label,
                              info.n_missing, info.na_color, info.note)

    def _clear_rows(self) -> None:
        while self._grid.count():
            item = self._grid.takeAt(0)
            widget = item.widget()
            if widget is not None:
                widget.setParent(None)
                widget.deleteLater()
        for r in range(self._grid.rowCount()):
            self._grid.setRowStretch(r, 0)



__all__ = ["LegendWidget", "colorbar_pixmap"]
