"""The Impute panel and its result view: a gene on the tissue, raw or imputed, on one colour scale;
or, for genes predicted from a reference, a predicted gene like a measured one."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox

from .._constants import IMPUTED_LAYER
from ..tasks import list_methods
from ..tasks._derived import suggested_gene, suggested_predicted_gene
from ..tasks.gene_prediction import predicted_gene_names
from ._inputs import fit_width, set_items
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

    @property
    def compact_key(self) -> str | None:
        """The latent key of a compact imputation (no dense layer written), else None."""
        keys = self.keys if self.record is not None else {}
        return keys.get("latent") if "imputed" not in keys else None

    def imputed_values(self, adata: Any, gene: str) -> np.ndarray:
        """The imputed values of ``gene``: the dense layer's column, or decoded from the compact form."""
        if self.compact_key:
            from ..layers import spot_values

            return np.asarray(spot_values(adata, f"{self.compact_key}:{gene}")[0], dtype=float)
        return _gene_column(adata.layers[self.imputed_layer], adata.var_names.get_loc(gene))

    @property
    def prediction_key(self) -> str | None:
        """The key of the shown gene prediction (its table, else its factors), None for denoising."""
        keys = self.keys if self.record is not None else {}
        return keys.get("predicted") or keys.get("prediction_factors")

    def worker_postprocess(self) -> Any:
        def suggest(result: Any) -> None:  # in the worker: scores every gene once
            warm_imports()
            keys = result.keys or {}  # slot -> key of what the run wrote
            if "layers" in keys:
                result.info["display_gene"] = suggested_gene(result.adata, layer=keys["layers"])
            elif any(k.startswith("uns_decoder") for k in keys):  # compact: no layer to score
                result.info["display_gene"] = _most_variable_gene(result.adata)
            elif "obsm" in keys and not any(k.startswith("uns_decoder") for k in keys):  # genes predicted from a reference (a table or the compact form)
                result.info["display_gene"] = suggested_predicted_gene(result.adata, keys["obsm"])

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
        key = self.prediction_key
        genes = predicted_gene_names(adata, key) if key else [str(g) for g in adata.var_names]
        keep, suggested, self._suggested = self.gene.currentText(), self._suggested, None
        self.gene.blockSignals(True)
        self.gene.clear()
        self.gene.addItems(genes)
        if keep not in genes:
            if suggested in genes:
                keep = suggested
            elif key:
                keep = suggested_predicted_gene(adata, key)
            elif self.compact_key:
                keep = _most_variable_gene(adata)
            else:
                keep = suggested_gene(adata, layer=self.imputed_layer)
        self.gene.setCurrentIndex(genes.index(keep))
        self.gene.blockSignals(False)
        self.values.blockSignals(True)
        choice = self.values.currentText()
        self.values.clear()
        self.values.addItems(["predicted", "measured"] if key else ["imputed", "raw"])
        self.values.setToolTip("The values predicted from the reference, or the measured ones (for genes the "
                               "data measures)." if key else
                               "Raw counts or the imputed expression, on the same colour scale.")
        if self.values.findText(choice) >= 0:
            self.values.setCurrentText(choice)
        self.values.blockSignals(False)

    def limits(self, adata: Any, gene: str) -> tuple[float, float]:
        """Shared contrast limits of raw and imputed values: 0 to the larger 99th percentile."""
        index = adata.var_names.get_loc(gene)
        raw_layer = self.raw_layer(adata)
        raw = _gene_column(adata.layers[raw_layer] if raw_layer else adata.X, index)
        imputed = self.imputed_values(adata, gene)
        hi = max(float(np.nanpercentile(raw, 99)), float(np.nanpercentile(imputed, 99)))
        lo = min(0.0, float(np.nanmin(raw)), float(np.nanmin(imputed)))
        return lo, hi if hi > lo else lo + 1.0

    def redraw(self, *_: Any) -> None:
        adata = self.adata
        if self._updating or adata is None or self.record is None:
            return
        gene = self.gene.currentText()
        if self.prediction_key:
            self._redraw_prediction(adata, gene)
            return
        if gene not in adata.var_names:
            self.status.setText(f"No gene is called '{gene}' in this data: pick one from the list.")
            return
        imputed = self.values.currentText() == "imputed"
        layer_key = self.imputed_layer if imputed else self.raw_layer(adata)
        lims = self.limits(adata, gene)
        if imputed and self.compact_key:  # decoded for this gene only
            color_by(self.viewer, self.layer, f"{self.compact_key}:{gene}", cmap="magma", contrast_limits=lims)
            where = f"the compact imputation '{self.compact_key}'"
        else:
            color_by(self.viewer, self.layer, gene, layer_key=layer_key, cmap="magma", contrast_limits=lims)
            where = f"layers['{layer_key}']" if layer_key else "X"
        self.status.setText(f"{gene}, {'imputed' if imputed else 'raw'} (from {where}); the colour scale "
                            f"runs from {lims[0]:.3g} to {lims[1]:.3g} for both, so they compare directly.")

    def _redraw_prediction(self, adata: Any, gene: str) -> None:
        key = str(self.prediction_key)
        genes = predicted_gene_names(adata, key)
        if gene not in genes:
            self.status.setText(f"'{gene}' was not predicted ({len(genes)} genes were): pick one from the list, "
                                "or run again with it in 'genes'.")
            return
        measured = gene in adata.var_names
        if self.values.currentText() == "measured":
            if not measured:
                self.status.setText(f"{gene} is not measured in this data (that is why it was predicted): "
                                    "choose 'predicted'.")
                return
            color_by(self.viewer, self.layer, gene, layer_key=self.raw_layer(adata), cmap="magma")
            self.status.setText(f"{gene}, measured (counts in this data).")
            return
        color_by(self.viewer, self.layer, f"{key}:{gene}", cmap="magma")
        self.status.setText(f"{gene}, predicted from the reference (expression per 10^4 transcripts); "
                            + ("this data also measures it: choose 'measured' to compare."
                               if measured else "not measured in this data."))


def _most_variable_gene(adata: Any, max_obs: int = 20000) -> str:
    """The gene with the largest variance of log1p counts (on at most ``max_obs`` rows, no dense X):
    what a compact imputation opens on (it has no layer to score)."""
    rows = np.arange(min(adata.n_obs, max_obs))
    X = adata.X[rows]
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
        X.data = np.log1p(X.data)
        mean = np.asarray(X.mean(axis=0)).ravel()
        var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
    else:
        var = np.log1p(np.asarray(X, dtype=np.float32)).var(axis=0)
    return str(adata.var_names[int(np.argmax(var))])


#: the Impute panel's two modes: which methods each offers (by whether they need a reference)
MODES = (("Denoise the measured genes", False), ("Predict unmeasured genes from a reference", True))


class ImputeWidget(TaskWidget):
    """Impute: denoise the counts and fill in dropouts (``layers['spatialdl_imputed']``), or predict
    the genes the data did not measure from a reference (``obsm['spatialdl_predicted_genes']``)."""

    task = "impute"
    title = "Impute"
    blurb = ("Denoise the counts and fill in dropouts: a model predicts the expected expression of "
             "every gene in every spot. Or predict the genes your panel did not measure from an "
             "annotated single-cell reference. Then colour the tissue by a gene.")
    view_class = ImputeView

    def _build(self) -> None:
        super()._build()
        self.mode = QComboBox()
        for text, from_reference in MODES:
            self.mode.addItem(text, from_reference)
        self.mode.setToolTip("Denoise: a model of this data's own counts (no reference). From a reference: genes "
                             "missing from this data (a Xenium or MERFISH panel, say) predicted from a "
                             "single-cell reference with all genes, through the genes both measure.")
        self.form.insertRow(0, "mode", self.mode)  # first: it decides which rows follow
        self.mode.currentIndexChanged.connect(self._on_mode)

    def _on_mode(self, *_: Any) -> None:
        self._fill_methods()
        self.refresh()
        fit_width(self)  # other rows and parameters: keep the panel within its dock's width

    @property
    def from_reference(self) -> bool:
        """Whether the panel is in 'from a reference' mode."""
        return bool(self.mode.currentData())

    def set_mode(self, from_reference: bool) -> None:
        """Switch between denoising and prediction from a reference (what the mode drop-down does)."""
        self.mode.setCurrentIndex(1 if from_reference else 0)

    def set_method(self, name: str) -> None:
        """Choose the method by its registry name (switching the mode to the method's)."""
        found = next((m for m in list_methods(self.task) if m.name == name), None)
        if found is not None and ("reference" in found.needs) != self.from_reference:
            self.set_mode("reference" in found.needs)
        super().set_method(name)

    def _fill_methods(self) -> None:
        if not hasattr(self, "mode"):
            return super()._fill_methods()
        methods = [m for m in list_methods(self.task, available_only=True)
                   if ("reference" in m.needs) == self.from_reference]
        set_items(self.method, [(m.title, m.name) for m in methods])
        for i, m in enumerate(methods):
            self.method.setItemData(i, m.description, Qt.ItemDataRole.ToolTipRole)
        native = next((i for i, m in enumerate(methods) if m.native), -1)
        if native >= 0:
            self.method.setCurrentIndex(native)


__all__ = ["MODES", "ImputeView", "ImputeWidget"]
