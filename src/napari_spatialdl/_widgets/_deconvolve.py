"""The Deconvolve panel and its result view: one cell type's proportion, or the dominant type."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtWidgets import QComboBox

from .._constants import DOMINANT_KEY, PROPORTIONS_KEY
from ..tasks._derived import derived_key, dominant_cell_type
from ._overlay import ResultView, color_by
from ._panel import TaskWidget
from ._spatialdata_layers import spots_adata


class DeconvolveView(ResultView):
    """One cell type's proportion (colour bar) or the dominant type of every spot (legend)."""

    task = "deconvolve"
    DOMINANT = "dominant cell type"
    PROPORTION = "proportion of one cell type"

    def _build(self) -> None:
        self.view = QComboBox()
        self.view.addItems([self.PROPORTION, self.DOMINANT])
        self.cell_type = QComboBox()
        self.cell_type.setToolTip("The cell type whose proportion is mapped.")
        self.form.addRow("show", self.view)
        self.form.addRow("cell type", self.cell_type)
        self.view.currentIndexChanged.connect(self.redraw)
        self.cell_type.currentIndexChanged.connect(self.redraw)

    @property
    def proportions_key(self) -> str:
        return self.keys.get("proportions", PROPORTIONS_KEY)

    @property
    def dominant_key(self) -> str:
        return derived_key(DOMINANT_KEY, PROPORTIONS_KEY, self.proportions_key)

    def proportions(self, adata: Any) -> pd.DataFrame:
        props = adata.obsm[self.proportions_key]
        return props if isinstance(props, pd.DataFrame) else pd.DataFrame(np.asarray(props))

    def _prepare(self, layer: Any, result: Any) -> None:
        dominant_cell_type(spots_adata(layer), proportions_key=self.proportions_key,
                           reference=self.context.get("reference"), labels_key=self.context.get("labels_key"))

    def _fill(self, adata: Any) -> None:
        props = self.proportions(adata)
        types = [str(c) for c in props.columns]
        keep = self.cell_type.currentText()
        self.cell_type.blockSignals(True)
        self.cell_type.clear()
        self.cell_type.addItems(types)
        if keep in types:
            self.cell_type.setCurrentText(keep)
        else:  # the type with the most spatial variation
            self.cell_type.setCurrentIndex(int(np.argmax(props.to_numpy(dtype=float).std(axis=0))))
        self.cell_type.blockSignals(False)

    def redraw(self, *_: Any) -> None:
        adata = self.adata
        if self._updating or adata is None or self.record is None:
            return
        props = self.proportions(adata)
        key = self.proportions_key
        hover = [f"{key}:{c}" for c in props.columns]
        dominant = self.view.currentText() == self.DOMINANT
        self.cell_type.setEnabled(not dominant)
        if dominant:
            if self.dominant_key not in adata.obs:
                dominant_cell_type(adata, proportions_key=key, reference=self.context.get("reference"),
                                   labels_key=self.context.get("labels_key"))
            color_by(self.viewer, self.layer, self.dominant_key, features=hover)
            self.status.setText(f"The cell type with the largest proportion in each spot "
                                f"(in obs['{self.dominant_key}']). Hover a spot for all its proportions.")
            return
        ct = self.cell_type.currentText()
        values = props[ct].to_numpy(dtype=float) if ct in props.columns else props.iloc[:, 0].to_numpy(dtype=float)
        hi = max(float(np.nanpercentile(values, 99.5)), 0.05)
        color_by(self.viewer, self.layer, f"{key}:{ct}", cmap="magma", contrast_limits=(0.0, min(1.0, hi)),
                 features=hover)
        self.status.setText(f"Proportion of {ct} in each spot (mean {np.nanmean(values):.2f}, "
                            f"highest {np.nanmax(values):.2f}). Hover a spot for all its proportions.")


class DeconvolveWidget(TaskWidget):
    """Deconvolve: cell-type proportions per spot from an annotated reference."""

    task = "deconvolve"
    title = "Deconvolve"
    blurb = ("Estimate which cell types make up each spot, from an annotated single-cell reference. "
             "Then map one cell type's proportion, or the dominant type of every spot.")
    view_class = DeconvolveView


__all__ = ["DeconvolveView", "DeconvolveWidget"]
