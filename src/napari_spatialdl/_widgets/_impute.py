"""The Impute panel and its result view: a gene on the tissue, raw or imputed, on one colour scale."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from qtpy.QtWidgets import QComboBox

from .._constants import IMPUTED_LAYER
from ..tasks._derived import suggested_gene
from ._overlay import ResultView, color_by, warm_imports
from ._panel import TaskWidget


def _gene_column(matrix: Any, index: int) -> np.ndarray:
    col = matrix[:, index]
    if sp.issparse(col):
        col = col.toarray()
    return np.asarray(col, dtype=float).ravel()


class ImputeView(ResultView):
    """A gene on the tissue, raw or imputed, on shared contrast limits."""

    task = "impute"

    def _build(self) -> None:
        self.gene = QComboBox()
        self.gene.setEditable(True)
        self.gene.setToolTip("The gene to map (type to search).")
        self.values = QComboBox()
        self.values.addItems(["imputed", "raw"])
        self.values.setToolTip("Raw counts or the imputed expression, on the same colour scale.")
        self.form.addRow("gene", self.gene)
        self.form.addRow("values", self.values)
        self.gene.currentIndexChanged.connect(self.redraw)
        self.values.currentIndexChanged.connect(self.redraw)
        self._suggested: str | None = None

    @property
    def imputed_layer(self) -> str:
        return self.keys.get("imputed", IMPUTED_LAYER)

    def worker_postprocess(self) -> Any:
        def suggest(result: Any) -> None:  # in the worker: scores every gene once
            warm_imports()
            key = (result.keys or {}).get("layers", IMPUTED_LAYER)
            result.info["display_gene"] = suggested_gene(result.adata, layer=key)

        return suggest

    def _prepare(self, layer: Any, result: Any) -> None:
        gene = getattr(result, "info", {}).get("display_gene") if result is not None else None
        if gene:  # a fresh result: show its most spatially structured gene
            self.gene.blockSignals(True)
            self.gene.setCurrentText("")
            self.gene.blockSignals(False)
            self._suggested = str(gene)

    def raw_layer(self, adata: Any) -> str | None:
        layer = self.record["params"].get("layer") if self.record else None
        return str(layer) if layer and layer in adata.layers else None

    def _fill(self, adata: Any) -> None:
        genes = [str(g) for g in adata.var_names]
        keep, suggested, self._suggested = self.gene.currentText(), self._suggested, None
        self.gene.blockSignals(True)
        self.gene.clear()
        self.gene.addItems(genes)
        if keep not in genes:
            keep = suggested if suggested in genes else suggested_gene(adata, layer=self.imputed_layer)
        self.gene.setCurrentIndex(genes.index(keep))
        self.gene.blockSignals(False)

    def limits(self, adata: Any, gene: str) -> tuple[float, float]:
        """Shared contrast limits of raw and imputed values: 0 to the larger 99th percentile."""
        index = adata.var_names.get_loc(gene)
        raw_layer = self.raw_layer(adata)
        raw = _gene_column(adata.layers[raw_layer] if raw_layer else adata.X, index)
        imputed = _gene_column(adata.layers[self.imputed_layer], index)
        hi = max(float(np.nanpercentile(raw, 99)), float(np.nanpercentile(imputed, 99)))
        lo = min(0.0, float(np.nanmin(raw)), float(np.nanmin(imputed)))
        return lo, hi if hi > lo else lo + 1.0

    def redraw(self, *_: Any) -> None:
        adata = self.adata
        if self._updating or adata is None or self.record is None:
            return
        gene = self.gene.currentText()
        if gene not in adata.var_names:
            self.status.setText(f"No gene is called '{gene}' in this data: pick one from the list.")
            return
        imputed = self.values.currentText() == "imputed"
        layer_key = self.imputed_layer if imputed else self.raw_layer(adata)
        lims = self.limits(adata, gene)
        color_by(self.viewer, self.layer, gene, layer_key=layer_key, cmap="magma", contrast_limits=lims)
        where = f"layers['{layer_key}']" if layer_key else "X"
        self.status.setText(f"{gene}, {'imputed' if imputed else 'raw'} (from {where}); the colour scale "
                            f"runs from {lims[0]:.3g} to {lims[1]:.3g} for both, so they compare directly.")


class ImputeWidget(TaskWidget):
    """Impute: denoise the counts and fill in dropouts (``layers['spatialdl_imputed']``)."""

    task = "impute"
    title = "Impute"
    blurb = ("Denoise the counts and fill in dropouts: a model predicts the expected expression of "
             "every gene in every spot. Then colour the tissue by a gene, raw or imputed.")
    view_class = ImputeView


__all__ = ["ImputeView", "ImputeWidget"]
