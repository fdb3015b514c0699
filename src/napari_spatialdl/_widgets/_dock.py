"""One dock for everything: the four task panels and region annotation, as tabs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from ._regions import RegionsWidget
from ._tasks import AnnotateWidget, DeconvolveWidget, ImputeWidget, IntegrateWidget, TaskWidget

if TYPE_CHECKING:
    import napari


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(widget)
    return area


class SpatialDLDock(QWidget):
    """Spatial DL: Impute, Integrate, Deconvolve, Annotate and Regions in one dock (tabs).

    Attributes ``impute``, ``integrate``, ``deconvolve``, ``annotate`` (task panels) and
    ``regions`` give scripts and tests access to each panel.
    """

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.tabs = QTabWidget()
        self.tabs.setUsesScrollButtons(True)
        self.impute = ImputeWidget(napari_viewer)
        self.integrate = IntegrateWidget(napari_viewer)
        self.deconvolve = DeconvolveWidget(napari_viewer)
        self.annotate = AnnotateWidget(napari_viewer)
        self.regions = RegionsWidget(napari_viewer)
        for widget in (self.impute, self.integrate, self.deconvolve, self.annotate):
            self.tabs.addTab(_scrolled(widget), widget.title)
        self.tabs.addTab(_scrolled(self.regions), "Regions")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        # regions written to obs become choosable labels in the Annotate panel
        self.regions.assigned.connect(self._regions_assigned)
        # wide enough for every panel (its scroll area shows no horizontal bar)
        panels = (*self.task_widgets().values(), self.regions)
        self.setMinimumWidth(max(p.minimumSizeHint().width() for p in panels) + 30)
        self._fits_left = 3

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt)
        """When first squeezed under a docked spots legend, shrink the legend to its content."""
        super().resizeEvent(event)
        if self._fits_left > 0 and self.height() < 300:
            self._fits_left -= 1
            QTimer.singleShot(0, self._fit_legend)

    def _fit_legend(self) -> None:
        from ._legend import _LIVE_LEGENDS
        from ._overlay import _fit_dock_height

        for legend in list(_LIVE_LEGENDS):
            try:
                if legend.viewer is self.viewer and legend.isVisible():
                    _fit_dock_height(self.viewer, legend)
            except RuntimeError:  # a deleted legend
                continue

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
