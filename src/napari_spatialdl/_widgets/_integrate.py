"""The Integrate panel and its result view: clusters of the batch-corrected space, or the batches."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QSpinBox

from .._constants import CLUSTERS_KEY, LATENT_KEY
from ..tasks._derived import cluster_latent, derived_key
from ._overlay import ResultView, color_by, warm_imports
from ._panel import TaskWidget
from ._spatialdata_layers import spots_adata


class IntegrateView(ResultView):
    """Clusters of the integrated latent space on the tissue (or the batches, to check mixing)."""

    task = "integrate"

    def _build(self) -> None:
        self.n_clusters = QSpinBox()
        self.n_clusters.setRange(2, 60)
        self.n_clusters.setValue(8)
        self.n_clusters.setToolTip("Number of k-means clusters (Leiden, when installed, picks its own).")
        row = QHBoxLayout()
        row.addWidget(self.n_clusters)
        self.recluster = QPushButton("Recluster")
        row.addWidget(self.recluster)
        self.form.addRow("clusters", row)
        self.color = QComboBox()
        self.color.setToolTip("Colour by the clusters of the integrated data, or by batch (well mixed "
                              "batches: each cluster holds spots of every batch).")
        self.form.addRow("colour by", self.color)
        self.recluster.clicked.connect(self._recluster)
        self.color.currentIndexChanged.connect(self.redraw)
        self.method_used = ""

    @property
    def latent_key(self) -> str:
        return self.keys.get("latent", LATENT_KEY)

    @property
    def clusters_key(self) -> str:
        return derived_key(CLUSTERS_KEY, LATENT_KEY, self.latent_key)

    def worker_postprocess(self) -> Any:
        n_clusters = self.n_clusters.value()

        def cluster(result: Any) -> None:  # in the worker: sklearn/scanpy import and fit
            warm_imports()
            key = (result.keys or {}).get("obsm", LATENT_KEY)
            result.info["display_clusters"] = cluster_latent(result.adata, latent_key=key, n_clusters=n_clusters)

        return cluster

    def _prepare(self, layer: Any, result: Any) -> None:
        done = getattr(result, "info", {}).get("display_clusters") if result is not None else None
        adata = spots_adata(layer)
        if done and self.clusters_key in adata.obs:
            self.method_used = done
        else:
            self.method_used = cluster_latent(adata, latent_key=self.latent_key, n_clusters=self.n_clusters.value())

    def _recluster(self) -> None:
        adata = self.adata
        if adata is None or self.record is None:
            return
        self.method_used = cluster_latent(adata, latent_key=self.latent_key, n_clusters=self.n_clusters.value())
        self.color.setCurrentIndex(0)
        self.redraw()

    def _fill(self, adata: Any) -> None:
        items = [self.clusters_key]
        batch = self.record["params"].get("batch_key") if self.record else None
        batch = batch or self.context.get("batch_key")
        if batch and batch in adata.obs:
            items.append(str(batch))
        keep = self.color.currentText()
        self.color.blockSignals(True)
        self.color.clear()
        self.color.addItems(items)
        if keep in items:
            self.color.setCurrentText(keep)
        self.color.blockSignals(False)

    def redraw(self, *_: Any) -> None:
        adata = self.adata
        if self._updating or adata is None or self.record is None:
            return
        if self.clusters_key not in adata.obs:
            self.method_used = cluster_latent(adata, latent_key=self.latent_key, n_clusters=self.n_clusters.value())
        key = self.color.currentText() or self.clusters_key
        color_by(self.viewer, self.layer, key)
        n = adata.obs[self.clusters_key].nunique()
        how = {"leiden": "Leiden", "kmeans": "k-means"}.get(self.method_used, "")
        shown = "the clusters" if key == self.clusters_key else f"the batches ({key})"
        self.status.setText(f"{n} clusters{f' ({how})' if how else ''} of the integrated data, in "
                            f"obs['{self.clusters_key}']; showing {shown}.")


class IntegrateWidget(TaskWidget):
    """Integrate: a batch-corrected latent space (``obsm['X_spatialdl']``) and its clusters."""

    task = "integrate"
    title = "Integrate"
    blurb = ("Remove batch effects between sections, donors or protocols: a model learns a "
             "batch-corrected representation of every spot; its clusters are drawn on the tissue.")
    view_class = IntegrateView


__all__ = ["IntegrateView", "IntegrateWidget"]
