"""Legend (category swatches) and colour bar (min..max) for coloured spots, as Qt widgets.

- :class:`LegendWidget` only displays: ``set_categories``, ``set_colorbar``, ``set_legend``
  (a :class:`napari_spatialdl.layers.LegendInfo`), ``clear``.
- :class:`SpotsLegend` follows the viewer's spots layers: it shows the legend stored in the
  active spots layer's metadata and updates whenever :func:`~._viewer.color_spots` recolours it.
- :func:`ensure_legend` docks one ``SpotsLegend`` in a viewer (or returns the one already there),
  for scripted use and for the task widgets after they colour the spots.
- Its "Save figure…" button writes the canvas with this legend and a scale bar as one figure
  (:func:`napari_spatialdl.save_figure`).
- :func:`show_scale_bar` turns napari's scale bar on when the spots' world is in µm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QDockWidget, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

from ..layers import META_LEGEND
from ._compat import real
from ._legend_widget import LegendWidget, colorbar_pixmap

LEGEND_DOCK_NAME = "Spots legend"


def is_spots_layer(layer: Any) -> bool:
    """A napari Points layer made by :func:`napari_spatialdl.layers.spatial_layers`, or one of
    napari-spatialdata (circles/points of an element a table annotates), adopted on first sight.

    Our AnnData is then in ``metadata['adata']`` (put back when napari-spatialdata's View widget
    replaced it with its table): see :mod:`._spatialdata_layers`.
    """
    from ._spatialdata_layers import ensure_spots_layer

    return ensure_spots_layer(layer)


def _length_units(layer: Any) -> bool:
    units = getattr(layer, "units", None)
    if not units:
        return False
    try:
        return str(units[-1].dimensionality) == "[length]"
    except AttributeError:
        return False


def show_scale_bar(viewer: Any) -> bool:
    """Show napari's scale bar (in a box, readable on the tissue) when spots layers are in µm.

    The layers of :func:`napari_spatialdl.layers.spatial_layers` carry ``units=('um', 'um')``
    when the physical size of a pixel is known; napari's scale bar then reads micrometres.

    Returns
    -------
    bool
        Whether the scale bar is shown (False: no spots layer with a length unit; left as it was).
    """
    viewer = real(viewer)
    if not any(is_spots_layer(lyr) and _length_units(lyr) for lyr in viewer.layers):
        return False
    bar = viewer.scale_bar
    fields = getattr(type(bar), "model_fields", None) or getattr(type(bar), "__fields__", {})
    if "unit" in fields:  # napari < 0.6: the bar's own unit (later versions read the layers' units)
        bar.unit = "um"
    if not bar.visible:
        bar.box = True
        bar.visible = True
    return True


class SpotsLegend(LegendWidget):
    """A legend that follows the viewer's spots: the active spots layer, or the last one coloured.

    Below it, "Save figure…" saves the canvas with this legend and a scale bar
    (:func:`napari_spatialdl.save_figure`, 300 dpi; the format from the file's extension).
    """

    #: dots per inch of the figures the button saves
    FIGURE_DPI = 300

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = real(napari_viewer)
        self.layer: Any = None
        self.last_figure: Path | None = None
        self.save_button = QPushButton("Save figure…")
        self.save_button.setToolTip("Save the canvas with this legend and a scale bar as one image "
                                    "(PNG, PDF, SVG or TIFF, 300 dpi).")
        self.save_button.clicked.connect(self._on_save)
        self.save_status = QLabel("")
        self.save_status.setWordWrap(True)
        self.save_status.hide()
        row = QWidget()
        row_layout = QHBoxLayout(row)
        row_layout.setContentsMargins(0, 0, 0, 0)
        row_layout.addWidget(self.save_button)
        row_layout.addStretch(1)
        layout = self.layout()
        layout.insertWidget(layout.count() - 1, row)  # above the closing stretch
        layout.insertWidget(layout.count() - 1, self.save_status)
        show_scale_bar(self.viewer)
        self.viewer.layers.selection.events.active.connect(self._on_active)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        active = self.viewer.layers.selection.active
        candidates = [active] if is_spots_layer(active) else []
        candidates += [lyr for lyr in reversed(list(self.viewer.layers)) if is_spots_layer(lyr)]
        with_legend = [lyr for lyr in candidates if lyr.metadata.get(META_LEGEND) is not None]
        self.follow((with_legend or candidates or [None])[0])

    def follow(self, layer: Any) -> None:
        """Show (and keep showing) the legend of ``layer``."""
        layer = real(layer)
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
        self.save_button.setEnabled(info is not None)
        self.save_button.setToolTip(
            "Save the canvas with this legend and a scale bar as one image (PNG, PDF, SVG or TIFF, 300 dpi)."
            if info is not None else "Colour the spots first: the figure shows their legend.")

    def ask_figure_path(self, suggested: str) -> str:
        """The file chosen in a save dialog ('' when cancelled); the extension is added from the filter."""
        filters = {"PNG image (*.png)": ".png", "PDF (*.pdf)": ".pdf", "SVG (*.svg)": ".svg",
                   "TIFF image (*.tif *.tiff)": ".tif"}
        path, chosen = QFileDialog.getSaveFileName(self, "Save figure", suggested, ";;".join(filters))
        if path and not Path(path).suffix and chosen in filters:
            path += filters[chosen]
        return path

    def _on_save(self) -> None:
        from ._figure import _default_name, save_figure

        info = None if self.layer is None else self.layer.metadata.get(META_LEGEND)
        if info is None:
            return
        folder = self.last_figure.parent if self.last_figure is not None else Path.home()
        path = self.ask_figure_path(str(folder / f"{_default_name(info)}.png"))
        if not path:
            return
        try:
            self.last_figure = save_figure(self.viewer, path, dpi=self.FIGURE_DPI, layer=self.layer)
        except (ValueError, OSError) as err:
            self.save_status.setStyleSheet("color: #d04040;")
            self.save_status.setText(str(err))
        else:
            self.save_status.setStyleSheet("")
            self.save_status.setText(f"Saved {self.last_figure.name}")
            self.save_status.setToolTip(str(self.last_figure))
        self.save_status.show()

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


def find_legends(viewer: Any) -> list[SpotsLegend]:
    """The spots legends docked in ``viewer``'s window (alone, or inside a panel such as Colour spots).

    Found through napari's public ``viewer.window.dock_widgets`` (not by comparing Qt windows,
    which fails through the proxy napari gives plugin widgets).
    """
    viewer = real(viewer)
    window = getattr(viewer, "window", None)
    if window is None:
        return []
    found: list[SpotsLegend] = []
    for widget in window.dock_widgets.values():
        native = getattr(widget, "native", widget)
        candidates = [native] if isinstance(native, SpotsLegend) else native.findChildren(SpotsLegend)
        found += [c for c in candidates if c.viewer is viewer]
    return found


def ensure_legend(viewer: Any, layer: Any = None) -> SpotsLegend:
    """The one :class:`SpotsLegend` of ``viewer``, following ``layer`` (or the active spots layer).

    A legend already in the window is reused (a visible one first, e.g. inside the Colour spots
    panel; a hidden "Spots legend" dock is shown again); only when there is none is one docked on
    the right.
    """
    viewer = real(viewer)
    legends = find_legends(viewer)
    visible = [c for c in legends if c.isVisible()]
    if visible:
        legend = visible[0]
    elif legends:  # just docked (not painted yet) or hidden by the user: show it again
        legend = legends[0]
        dock = legend.parentWidget()
        if isinstance(dock, QDockWidget):
            dock.show()
            dock.raise_()
    else:
        legend = SpotsLegend(viewer)
        viewer.window.add_dock_widget(legend, name=LEGEND_DOCK_NAME, area="right")
    if layer is not None and legend.layer is not real(layer):
        legend.follow(layer)
    else:
        legend.refresh()
    return legend


__all__ = ["LEGEND_DOCK_NAME", "LegendWidget", "SpotsLegend", "colorbar_pixmap", "ensure_legend",
           "find_legends", "is_spots_layer", "show_scale_bar"]
