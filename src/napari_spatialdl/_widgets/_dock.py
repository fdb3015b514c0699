"""One dock for everything: the four task panels and region annotation, as tabs (each scrolls)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from ._annotate import AnnotateWidget
from ._compat import real
from ._deconvolve import DeconvolveWidget
from ._impute import ImputeWidget
from ._inputs import NarrowPanel
from ._integrate import IntegrateWidget
from ._panel import TaskWidget
from ._regions import RegionsWidget

if TYPE_CHECKING:
    import napari


class SpatialDLDock(NarrowPanel):
    """Spatial DL: Impute, Integrate, Deconvolve, Annotate and Regions in one dock (tabs).

    Attributes ``impute``, ``integrate``, ``deconvolve``, ``annotate`` (task panels) and
    ``regions`` give scripts and tests access to each panel.
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer = real(napari_viewer)
        self.tabs = QTabWidget()
        self.tabs.setUsesScrollButtons(True)
        self.impute = ImputeWidget(napari_viewer)
        self.integrate = IntegrateWidget(napari_viewer)
        self.deconvolve = DeconvolveWidget(napari_viewer)
        self.annotate = AnnotateWidget(napari_viewer)
        self.regions = RegionsWidget(napari_viewer)
        for widget in (self.impute, self.integrate, self.deconvolve, self.annotate):
            self.tabs.addTab(widget, widget.title)
        self.tabs.addTab(self.regions, "Regions")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        # regions written to obs become choosable labels in the Annotate panel
        self.regions.assigned.connect(self._regions_assigned)
        # wide enough for every panel (they scroll vertically, never horizontally)
        panels = (*self.task_widgets().values(), self.regions)
        self.setMinimumWidth(max(p.minimumWidth() for p in panels) + 8)
        self._fits_left = 3

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt)
        """When first squeezed under a docked spots legend, shrink the legend to its content."""
        super().resizeEvent(event)
        if self._fits_left > 0 and self.height() < 300:
            self._fits_left -= 1
            QTimer.singleShot(0, self._fit_legend)

    def _fit_legend(self) -> None:
        from ._legend import find_legends
        from ._overlay import fit_dock_height

        for legend in find_legends(self.viewer):
            if legend.isVisible():
                fit_dock_height(legend)

    def _regions_assigned(self, key: str) -> None:
        for widget in self.task_widgets().values():
            widget.refresh()

    def task_widgets(self) -> dict[str, TaskWidget]:
        """The task panels by task name."""
        return {"impute": self.impute, "integrate": self.integrate,
                "deconvolve": self.deconvolve, "annotate": self.annotate}

    def show_task(self, task: str) -> TaskWidget:
        """Bring a task's tab to the front and return its panel."""
        widgets = {**self.task_widgets()}
        if task == "regions":
            self.tabs.setCurrentIndex(4)
            return self.regions  # type: ignore[return-value]
        widget = widgets[task]
        self.tabs.setCurrentIndex(list(widgets).index(task))
        return widget


__all__ = ["SpatialDLDock"]
