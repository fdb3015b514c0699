"""Legend (category swatches) and colour bar (min..max) for coloured spots, as Qt widgets.

- :class:`LegendWidget` only displays: ``set_categories``, ``set_colorbar``, ``set_legend``
  (a :class:`napari_spatialdl.layers.LegendInfo`), ``clear``.
- :class:`SpotsLegend` follows the viewer's spots layers: it shows the legend stored in the
  active spots layer's metadata and updates whenever :func:`~._viewer.color_spots` recolours it.
- :func:`ensure_legend` docks one ``SpotsLegend`` in a viewer (or returns the one already there),
  for scripted use and for the task widgets after they colour the spots.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QDockWidget, QWidget

from ..layers import META_FLAG, META_LEGEND
from ._compat import real
from ._legend_widget import LegendWidget, colorbar_pixmap

LEGEND_DOCK_NAME = "Spots legend"


def is_spots_layer(layer: Any) -> bool:
    """A napari Points layer made by :func:`napari_spatialdl.layers.spatial_layers`."""
    from napari.layers import Points

    return isinstance(layer, Points) and bool(layer.metadata.get(META_FLAG))


class SpotsLegend(LegendWidget):
    """A legend that follows the viewer's spots: the active spots layer, or the last one coloured."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = real(napari_viewer)
        self.layer: Any = None
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
           "find_legends", "is_spots_layer"]
