"""Legend (category swatches) and colour bar (min..max) for coloured spots, as Qt widgets.

- :class:`LegendWidget` only displays: ``set_categories``, ``set_colorbar``, ``set_legend``
  (a :class:`napari_spatialdl.layers.LegendInfo`), ``clear``.
- :class:`SpotsLegend` follows the viewer's spots layers: it shows the legend stored in the
  active spots layer's metadata and updates whenever :func:`~._viewer.color_spots` recolours it.
- :func:`ensure_legend` docks one ``SpotsLegend`` in a viewer (or returns the one already there),
  for scripted use and for the task widgets after they colour the spots.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QDockWidget,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..layers import META_FLAG, META_LEGEND, NA_COLOR, LegendInfo

LEGEND_DOCK_NAME = "Spots legend"
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
        self._scroll.setMinimumHeight(min(320, (min(row, 12)) * (_SWATCH + 6) + 6))

    def set_colorbar(self, cmap: str, limits: tuple[float, float], label: str = "", n_missing: int = 0,
                     na_color: str = NA_COLOR) -> None:
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
        if n_missing:
            self.missing_label.setText(
                f"<span style='color:{na_color}'>&#9632;</span> missing ({n_missing} spots)"
            )
            self.missing_label.show()
        else:
            self.missing_label.hide()

    def set_legend(self, info: LegendInfo | None) -> None:
        """Show a :class:`~napari_spatialdl.layers.LegendInfo` (None clears)."""
        if info is None:
            self.clear()
        elif info.kind == "categorical":
            self.set_categories(info.categories, info.label, info.n_missing, info.na_color)
        else:
            self.set_colorbar(info.cmap or "viridis", info.limits or (0.0, 1.0), info.label,
                              info.n_missing, info.na_color)

    def _clear_rows(self) -> None:
        while self._grid.count():
            item = self._grid.takeAt(0)
            widget = item.widget()
            if widget is not None:
                widget.setParent(None)
                widget.deleteLater()
        for r in range(self._grid.rowCount()):
            self._grid.setRowStretch(r, 0)


def is_spots_layer(layer: Any) -> bool:
    """A napari Points layer made by :func:`napari_spatialdl.layers.spatial_layers`."""
    return getattr(layer, "_type_string", None) == "points" and bool(
        getattr(layer, "metadata", {}).get(META_FLAG)
    )


_LIVE_LEGENDS: weakref.WeakSet[SpotsLegend] = weakref.WeakSet()


class SpotsLegend(LegendWidget):
    """A legend that follows the viewer's spots: the active spots layer, or the last one coloured."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layer: Any = None
        self.viewer.layers.selection.events.active.connect(self._on_active)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        _LIVE_LEGENDS.add(self)
        active = self.viewer.layers.selection.active
        candidates = [active] if is_spots_layer(active) else []
        candidates += [lyr for lyr in reversed(list(self.viewer.layers)) if is_spots_layer(lyr)]
        with_legend = [lyr for lyr in candidates if lyr.metadata.get(META_LEGEND) is not None]
        self.follow((with_legend or candidates or [None])[0])

    def follow(self, layer: Any) -> None:
        """Show (and keep showing) the legend of ``layer``."""
        if self.layer is not None:
            try:
                self.layer.events.features.disconnect(self.refresh)
            except (TypeError, ValueError, RuntimeError):
                pass
        self.layer = layer
        if layer is not None:
            layer.events.features.connect(self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        """Redraw from the followed layer's ``metadata['spatialdl_legend']``."""
        info = None if self.layer is None else self.layer.metadata.get(META_LEGEND)
        if info is None:
            self.clear("Spots not coloured yet." if self.layer is not None else "No spots layer.")
        else:
            self.set_legend(info)

    def _on_active(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        if is_spots_layer(layer) and layer is not self.layer:
            self.follow(layer)

    def _on_inserted(self, event: Any) -> None:
        if self.layer is None and is_spots_layer(event.value):
            self.follow(event.value)

    def _on_removed(self, event: Any) -> None:
        if event.value is self.layer:
            rest = [lyr for lyr in self.viewer.layers if is_spots_layer(lyr)]
            self.follow(rest[-1] if rest else None)


def _in_window(widget: QWidget, viewer: Any) -> bool:
    """``widget`` sits in ``viewer``'s main window or in one of its (floating) docks."""
    top = widget.window()
    main = getattr(getattr(viewer, "window", None), "_qt_window", None)
    return top is main or isinstance(top, QDockWidget)


def ensure_legend(viewer: Any, layer: Any = None) -> SpotsLegend:
    """The :class:`SpotsLegend` of ``viewer``, following ``layer`` (or the active spots layer).

    A visible legend (docked, or inside the Colour spots panel) is reused; a hidden "Spots legend"
    dock is shown again; otherwise one is docked on the right.
    """
    mine = []
    for candidate in list(_LIVE_LEGENDS):
        try:
            if candidate.viewer is viewer and _in_window(candidate, viewer):
                mine.append(candidate)
        except RuntimeError:  # Qt object already deleted
            continue
    visible = [c for c in mine if c.isVisible()]
    standalone = [c for c in mine if isinstance(c.parent(), QDockWidget)]
    if visible:
        legend = visible[0]
    elif standalone:  # just docked (not painted yet) or closed by the user: show it
        legend = standalone[0]
        legend.parent().show()
        legend.parent().raise_()
    else:
        legend = SpotsLegend(viewer)
        viewer.window.add_dock_widget(legend, name=LEGEND_DOCK_NAME, area="right")
    if layer is not None and legend.layer is not layer:
        legend.follow(layer)
    else:
        legend.refresh()
    return legend
