"""Results on the tissue: one small view per task that recolours the spots layer.

- imputation: a gene, raw or imputed, on the same contrast limits (so the switch compares like
  with like);
- integration: clusters of the batch-corrected latent space (``obs['spatialdl_clusters']``);
- deconvolution: one cell type's proportion (colour bar) or the dominant cell type (legend); all
  proportions are kept in the layer's features, so hovering a spot shows them;
- annotation: the predicted type (legend), the confidence as opacity or as its own map, and the
  'unassigned' spots pale grey with a dark rim.

Colouring goes through :func:`._viewer.color_spots` and the docked legend
(:func:`._legend.ensure_legend`); everything here runs on the main thread.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._constants import (
    CELL_TYPE_KEY,
    CONFIDENCE_KEY,
    IMPUTED_LAYER,
    LATENT_KEY,
    PROPORTIONS_KEY,
    UNASSIGNED,
    UNS_KEY,
)

CLUSTERS_KEY = "spatialdl_clusters"
DOMINANT_KEY = "spatialdl_dominant_cell_type"
UNASSIGNED_COLOR = "#e6e6e6"
UNASSIGNED_BORDER = "#404040"


def color_by(viewer: Any, layer: Any, key: str, **kwargs: Any) -> Any:
    """Recolour ``layer`` by ``key`` (:func:`._viewer.color_spots`) and show the legend."""
    from ._legend import ensure_legend
    from ._viewer import color_spots

    _reset_borders(layer)
    info = color_spots(layer, key, **kwargs)
    if viewer is not None and getattr(viewer, "window", None) is not None:
        legend = ensure_legend(viewer, layer)
        _fit_dock_height(viewer, legend)
    return info


def _fit_dock_height(viewer: Any, widget: QWidget, cap: int = 260) -> None:
    """Keep a docked legend about as tall as its content, so the task panels keep their room."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = getattr(viewer.window, "_qt_window", None)
    if dock is None or window is None or dock.isFloating():
        return
    height = min(cap, max(80, widget.sizeHint().height() + 30))
    if dock.height() <= height + 10:
        return
    area = window.dockWidgetArea(dock)
    others = [d for d in window.findChildren(QDockWidget)
              if d is not dock and d.isVisible() and not d.isFloating()
              and window.dockWidgetArea(d) == area]
    spare = (dock.height() - height) / max(1, len(others))
    try:  # give the legend's spare height to the docks beside it (e.g. the task panels)
        window.resizeDocks([dock, *others], [height, *[int(d.height() + spare) for d in others]],
                           Qt.Orientation.Vertical)
    except (RuntimeError, TypeError):  # a closed dock: nothing to fit
        pass


_BORDER_META = "spatialdl_default_border"


def _save_borders(layer: Any) -> None:
    """Remember the spots' own rims (from the layer factory) before marking some spots."""
    if _BORDER_META not in layer.metadata:
        layer.metadata[_BORDER_META] = (np.array(layer.border_width, dtype=float),
                                        np.array(layer.border_color, dtype=float),
                                        bool(layer.border_width_is_relative))


def _warm_imports(result: Any = None) -> None:
    """Import what colouring needs, in the worker: the first categorical colours import scanpy
    (its palettes), which takes seconds and would freeze the GUI on the main thread."""
    from ..layers import default_palette

    default_palette(1)


def _reset_borders(layer: Any) -> None:
    """Put back the rims :func:`_save_borders` remembered (undo the 'unassigned' marks)."""
    saved = layer.metadata.pop(_BORDER_META, None)
    if saved is None or len(saved[0]) != len(layer.data):
        return
    widths, colors, relative = saved
    layer.border_width_is_relative = relative
    layer.border_width = widths
    layer.border_color = colors


def _run_params(adata: Any, task: str) -> dict:
    entry = adata.uns.get(UNS_KEY, {}).get(task, {}) if isinstance(adata.uns.get(UNS_KEY), dict) else {}
    params = entry.get("params", {}) if isinstance(entry, dict) else {}
    return dict(params) if isinstance(params, dict) else {}


class ResultView(QWidget):
    """Base: follows one spots layer; ``show_result`` after a run, ``set_target`` for existing results."""

    task = ""

    def __init__(self, viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.layer: Any = None
        self.context: dict[str, Any] = {}
        self._updating = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.form = QFormLayout()
        layout.addLayout(self.form)
        self.status = QLabel("Run the task to see its results here.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self._build()
        self.setEnabled(False)

    @property
    def adata(self) -> Any:
        return None if self.layer is None else self.layer.metadata.get("adata")

    def _build(self) -> None:
        """Add the view's controls to ``self.form``."""

    def has_result(self, adata: Any) -> bool:
        return False

    def set_target(self, layer: Any, quiet: bool = False) -> None:
        """Follow ``layer``; enable the controls when its AnnData holds results (drawn unless ``quiet``)."""
        if layer is self.layer and quiet:
            return
        self.layer = layer
        adata = self.adata
        ok = adata is not None and self.has_result(adata)
        self.setEnabled(ok)
        if ok:
            self._updating = True
            try:
                self._fill(adata)
            finally:
                self._updating = False
            if not quiet:
                self.redraw()
        else:
            self.status.setText("Run the task to see its results here.")

    def show_result(self, layer: Any, result: Any, **context: Any) -> None:
        """After a run: fill the controls from ``result`` and draw it on ``layer``."""
        self.context.update(context)
        self.layer = None
        self._prepare(layer, result)
        self.set_target(layer, quiet=False)

    def _prepare(self, layer: Any, result: Any) -> None:
        """Derive what the view needs from a fresh result (main thread, after the run)."""

    def worker_postprocess(self) -> Any:
        """A function of the ``TaskResult`` for the worker thread: heavy, Qt-free preparation of
        the display (settings read from the controls now)."""
        return _warm_imports

    def _fill(self, adata: Any) -> None:
        """Fill the drop-downs from ``adata``."""

    def redraw(self, *_: Any) -> None:
        """Recolour the spots according to the controls."""


# ------------------------------------------------------------------------------ imputation
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
        self.which = QComboBox()
        self.which.addItems(["imputed", "raw"])
        self.which.setToolTip("Raw counts or the model's imputed expression, on the same colour scale.")
        self.form.addRow("gene", self.gene)
        self.form.addRow("show", self.which)
        self.gene.currentIndexChanged.connect(self.redraw)
        self.which.currentIndexChanged.connect(self.redraw)

    def has_result(self, adata: Any) -> bool:
        return IMPUTED_LAYER in adata.layers

    def worker_postprocess(self) -> Any:
        def suggest(result: Any) -> None:  # in the worker: scan every gene once
            _warm_imports()
            result.info["display_gene"] = self.default_gene(result.adata)

        return suggest

    def _prepare(self, layer: Any, result: Any) -> None:
        gene = getattr(result, "info", {}).get("display_gene") if result is not None else None
        if gene:  # a fresh result: show its most variable gene
            self.gene.blockSignals(True)
            self.gene.setCurrentText("")
            self.gene.blockSignals(False)
            self._suggested = str(gene)

    def raw_layer(self, adata: Any) -> str | None:
        layer = _run_params(adata, "impute").get("layer")
        return str(layer) if layer and layer in adata.layers else None

    def _fill(self, adata: Any) -> None:
        genes = [str(g) for g in adata.var_names]
        keep = self.gene.currentText()
        suggested = getattr(self, "_suggested", None)
        self._suggested = None
        self.gene.blockSignals(True)
        self.gene.clear()
        self.gene.addItems(genes)
        if keep not in genes:
            keep = suggested if suggested in genes else self.default_gene(adata)
        self.gene.setCurrentIndex(genes.index(keep))
        self.gene.blockSignals(False)

    @staticmethod
    def default_gene(adata: Any) -> str:
        """The gene whose imputed expression is most spatially structured (what a tissue view shows
        best): the highest Moran's I of log1p(imputed) over each spot's 6 nearest neighbours,
        among genes expressed above the median; the most variable gene without coordinates."""
        imputed = adata.layers[IMPUTED_LAYER]
        dense = imputed.toarray() if sp.issparse(imputed) else np.asarray(imputed)
        logged = np.log1p(np.clip(np.asarray(dense, dtype=float), 0, None))
        expressed = logged.mean(axis=0) >= np.median(logged.mean(axis=0))
        score = logged.var(axis=0)
        xy = adata.obsm.get("spatial") if hasattr(adata, "obsm") else None
        if xy is not None and adata.n_obs > 7:
            from scipy.spatial import cKDTree

            xy = np.asarray(xy, dtype=float)[:, :2]
            _, nn = cKDTree(xy).query(xy, k=7)
            z = logged - logged.mean(axis=0)
            sd = z.std(axis=0)
            z = z / np.where(sd > 0, sd, 1.0)
            lagged = z[nn[:, 1:]].mean(axis=1)  # mean of the neighbours
            score = np.where(sd > 0, (z * lagged).mean(axis=0), -np.inf)  # Moran's I (row-standardised)
        score = np.where(expressed, score, -np.inf)
        return str(adata.var_names[int(np.argmax(score))])

    def limits(self, adata: Any, gene: str) -> tuple[float, float]:
        """Shared contrast limits of raw and imputed values of ``gene``: 0 to the larger 99th percentile."""
        index = adata.var_names.get_loc(gene)
        raw_layer = self.raw_layer(adata)
        raw = _gene_column(adata.layers[raw_layer] if raw_layer else adata.X, index)
        imputed = _gene_column(adata.layers[IMPUTED_LAYER], index)
        hi = max(float(np.nanpercentile(raw, 99)), float(np.nanpercentile(imputed, 99)))
        lo = min(0.0, float(np.nanmin(raw)), float(np.nanmin(imputed)))
        return lo, hi if hi > lo else lo + 1.0

    def redraw(self, *_: Any) -> None:
        adata = self.adata
        if self._updating or adata is None or not self.has_result(adata):
            return
        gene = self.gene.currentText()
        if gene not in adata.var_names:
            return
        imputed = self.which.currentText() == "imputed"
        layer_key = IMPUTED_LAYER if imputed else self.raw_layer(adata)
        lims = self.limits(adata, gene)
        color_by(self.viewer, self.layer, gene, layer_key=layer_key, cmap="magma", contrast_limits=lims)
        where = f"adata.layers['{IMPUTED_LAYER}']" if imputed else (
            f"adata.layers['{layer_key}']" if layer_key else "adata.X")
        self.status.setText(f"{gene}, {'imputed' if imputed else 'raw'} ({where}); colour scale "
                            f"{lims[0]:.3g}–{lims[1]:.3g} for both.")


# ----------------------------------------------------------------------------- integration
def cluster_latent(adata: Any, *, n_clusters: int = 8, resolution: float = 1.0,
                   key: str = CLUSTERS_KEY, seed: int = 0) -> str:
    """Cluster ``obsm['X_spatialdl']`` into ``obs[key]``: Leiden when installed, else k-means.

    Returns the method used (``'leiden'`` or ``'kmeans'``).
    """
    latent = np.asarray(adata.obsm[LATENT_KEY], dtype=float)
    if importlib.util.find_spec("leidenalg") and importlib.util.find_spec("igraph"):
        import scanpy as sc
        from anndata import AnnData

        tmp = AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names))
        tmp.obsm[LATENT_KEY] = latent
        sc.pp.neighbors(tmp, use_rep=LATENT_KEY, n_neighbors=min(15, adata.n_obs - 1), random_state=seed)
        sc.tl.leiden(tmp, resolution=resolution, key_added="c", random_state=seed,
                     flavor="igraph", n_iterations=2, directed=False)
        labels = tmp.obs["c"].astype(int).to_numpy()
        method = "leiden"
    else:
        from sklearn.cluster import KMeans

        k = int(max(2, min(n_clusters, adata.n_obs - 1)))
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(latent)
        method = "kmeans"
    # number clusters by size (1 = largest) so colours are stable
    order = pd.Series(labels).value_counts().index.tolist()
    rank = {lab: i + 1 for i, lab in enumerate(order)}
    names = [str(rank[lab]) for lab in labels]
    cats = [str(i + 1) for i in range(len(order))]
    adata.obs[key] = pd.Categorical(names, categories=cats)
    if f"{key}_colors" in adata.uns:
        del adata.uns[f"{key}_colors"]
    return method


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
        self.color.setToolTip("Colour by the clusters of the latent space, or by batch.")
        self.form.addRow("colour by", self.color)
        self.recluster.clicked.connect(self._recluster)
        self.color.currentIndexChanged.connect(self.redraw)

    def has_result(self, adata: Any) -> bool:
        return LATENT_KEY in adata.obsm

    def worker_postprocess(self) -> Any:
        n_clusters = self.n_clusters.value()

        def cluster(result: Any) -> None:  # in the worker: sklearn/scanpy import and fit
            _warm_imports()
            result.info["display_clusters"] = cluster_latent(result.adata, n_clusters=n_clusters)

        return cluster

    def _prepare(self, layer: Any, result: Any) -> None:
        adata = layer.metadata["adata"]
        done = getattr(result, "info", {}).get("display_clusters") if result is not None else None
        if done and CLUSTERS_KEY in adata.obs:
            self.method_used = done
        else:
            self.method_used = cluster_latent(adata, n_clusters=self.n_clusters.value())

    def _recluster(self) -> None:
        adata = self.adata
        if adata is None or not self.has_result(adata):
            return
        self.method_used = cluster_latent(adata, n_clusters=self.n_clusters.value())
        self.color.setCurrentIndex(0)
        self.redraw()

    def _fill(self, adata: Any) -> None:
        items = []
        if CLUSTERS_KEY in adata.obs:
            items.append(CLUSTERS_KEY)
        batch = _run_params(adata, "integrate").get("batch_key") or self.context.get("batch_key")
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
        if self._updating or adata is None or not self.has_result(adata):
            return
        if CLUSTERS_KEY not in adata.obs:
            self.method_used = cluster_latent(adata, n_clusters=self.n_clusters.value())
            self._fill(adata)
        key = self.color.currentText() or CLUSTERS_KEY
        color_by(self.viewer, self.layer, key)
        n = adata.obs[CLUSTERS_KEY].nunique()
        how = getattr(self, "method_used", "kmeans")
        self.status.setText(f"{n} clusters ({how}) of adata.obsm['{LATENT_KEY}'] in "
                            f"adata.obs['{CLUSTERS_KEY}']; showing {key}.")


# ---------------------------------------------------------------------------- deconvolution
def dominant_cell_type(adata: Any, *, key: str = DOMINANT_KEY, colors: dict[str, str] | None = None) -> None:
    """``obs[key]``: the cell type with the largest proportion in each spot (categorical)."""
    props = adata.obsm[PROPORTIONS_KEY]
    frame = props if isinstance(props, pd.DataFrame) else pd.DataFrame(np.asarray(props))
    cats = [str(c) for c in frame.columns]
    values = np.asarray(frame.to_numpy(dtype=float))
    adata.obs[key] = pd.Categorical(np.asarray(cats)[values.argmax(axis=1)], categories=cats)
    if colors:
        adata.uns[f"{key}_colors"] = [colors.get(c, "#808080") for c in cats]


def _reference_colors(reference: Any, labels_key: str | None) -> dict[str, str] | None:
    if reference is None or not labels_key or labels_key not in reference.obs:
        return None
    colors = reference.uns.get(f"{labels_key}_colors")
    if colors is None:
        return None
    col = reference.obs[labels_key]
    cats = list(col.cat.categories) if hasattr(col, "cat") else sorted(col.dropna().unique(), key=str)
    colors = list(np.asarray(colors).ravel())
    if len(colors) < len(cats):
        return None
    return {str(c): str(colors[i]) for i, c in enumerate(cats)}


class DeconvolveView(ResultView):
    """One cell type's proportion (colour bar) or the dominant type of every spot (legend)."""

    task = "deconvolve"
    DOMINANT = "dominant cell type"

    def _build(self) -> None:
        self.view = QComboBox()
        self.view.addItems(["proportion of", self.DOMINANT])
        self.cell_type = QComboBox()
        self.cell_type.setToolTip("The cell type whose proportion is mapped.")
        self.form.addRow("show", self.view)
        self.form.addRow("cell type", self.cell_type)
        self.view.currentIndexChanged.connect(self.redraw)
        self.cell_type.currentIndexChanged.connect(self.redraw)

    def has_result(self, adata: Any) -> bool:
        return PROPORTIONS_KEY in adata.obsm

    def cell_types(self, adata: Any) -> list[str]:
        props = adata.obsm[PROPORTIONS_KEY]
        if isinstance(props, pd.DataFrame):
            return [str(c) for c in props.columns]
        return [str(i) for i in range(np.asarray(props).shape[1])]

    def _prepare(self, layer: Any, result: Any) -> None:
        adata = layer.metadata["adata"]
        colors = _reference_colors(self.context.get("reference"), self.context.get("labels_key"))
        dominant_cell_type(adata, colors=colors)

    def _fill(self, adata: Any) -> None:
        cts = self.cell_types(adata)
        keep = self.cell_type.currentText()
        self.cell_type.blockSignals(True)
        self.cell_type.clear()
        self.cell_type.addItems(cts)
        if keep in cts:
            self.cell_type.setCurrentText(keep)
        else:  # default: the type with the most spatial variation
            props = np.asarray(pd.DataFrame(adata.obsm[PROPORTIONS_KEY]).to_numpy(dtype=float))
            self.cell_type.setCurrentIndex(int(np.argmax(props.std(axis=0))))
        self.cell_type.blockSignals(False)

    def redraw(self, *_: Any) -> None:
        adata = self.adata
        if self._updating or adata is None or not self.has_result(adata):
            return
        cts = self.cell_types(adata)
        hover = [f"{PROPORTIONS_KEY}:{c}" for c in cts]
        self.cell_type.setEnabled(self.view.currentText() != self.DOMINANT)
        if self.view.currentText() == self.DOMINANT:
            if DOMINANT_KEY not in adata.obs:
                dominant_cell_type(adata)
            color_by(self.viewer, self.layer, DOMINANT_KEY, features=hover)
            self.status.setText(f"The cell type with the largest proportion in each spot "
                                f"(adata.obs['{DOMINANT_KEY}']). Hover a spot for all proportions.")
            return
        ct = self.cell_type.currentText()
        key = f"{PROPORTIONS_KEY}:{ct}"
        values = np.asarray(pd.DataFrame(adata.obsm[PROPORTIONS_KEY]).to_numpy(dtype=float))[:, cts.index(ct)]
        hi = max(float(np.nanpercentile(values, 99.5)), 0.05)
        color_by(self.viewer, self.layer, key, cmap="magma", contrast_limits=(0.0, min(1.0, hi)),
                 features=hover)
        self.status.setText(f"Proportion of {ct} per spot (mean {np.nanmean(values):.2f}, "
                            f"max {np.nanmax(values):.2f}). Hover a spot for all proportions.")


# ------------------------------------------------------------------------------ annotation
class AnnotateView(ResultView):
    """The predicted cell type with legend; confidence as opacity or its own map; 'unassigned' grey."""

    task = "annotate"
    VIEWS = ("cell type (opacity = confidence)", "cell type", "confidence")

    def _build(self) -> None:
        self.view = QComboBox()
        self.view.addItems(list(self.VIEWS))
        self.form.addRow("show", self.view)
        self.view.currentIndexChanged.connect(self.redraw)

    def has_result(self, adata: Any) -> bool:
        return CELL_TYPE_KEY in adata.obs

    def _prepare(self, layer: Any, result: Any) -> None:
        adata = layer.metadata["adata"]
        colors = _reference_colors(self.context.get("reference"), self.context.get("labels_key")) or {}
        col = adata.obs[CELL_TYPE_KEY]
        cats = list(col.cat.categories) if hasattr(col, "cat") else sorted(col.dropna().unique(), key=str)
        from ..layers import default_palette

        palette = default_palette(len(cats))
        adata.uns[f"{CELL_TYPE_KEY}_colors"] = [
            UNASSIGNED_COLOR if str(c) == UNASSIGNED else colors.get(str(c), palette[i])
            for i, c in enumerate(cats)
        ]

    def redraw(self, *_: Any) -> None:
        adata = self.adata
        if self._updating or adata is None or not self.has_result(adata):
            return
        view = self.view.currentText()
        hover = [CONFIDENCE_KEY] if CONFIDENCE_KEY in adata.obs else []
        labels = adata.obs[CELL_TYPE_KEY].astype(object)
        unassigned = np.asarray(labels == UNASSIGNED)
        n_un = int(unassigned.sum())
        if view == "confidence" and CONFIDENCE_KEY in adata.obs:
            color_by(self.viewer, self.layer, CONFIDENCE_KEY, cmap="viridis", contrast_limits=(0.0, 1.0),
                     features=[CELL_TYPE_KEY])
            self._mark_unassigned(unassigned)
            self.status.setText(f"Confidence of the predicted type (0–1); {n_un} unassigned spots "
                                "have a dark rim.")
            return
        color_by(self.viewer, self.layer, CELL_TYPE_KEY, features=hover)
        if view == self.VIEWS[0] and CONFIDENCE_KEY in adata.obs:
            conf = np.clip(adata.obs[CONFIDENCE_KEY].to_numpy(dtype=float), 0, 1)
            rgba = np.array(self.layer.face_color, dtype=float)
            rgba[:, 3] = np.where(np.isfinite(conf), 0.2 + 0.8 * conf, 1.0)
            self.layer.face_color = rgba
        self._mark_unassigned(unassigned)
        counts = labels[~unassigned].value_counts()
        top = ", ".join(f"{k} {v}" for k, v in counts.head(3).items())
        self.status.setText(f"Predicted cell type per spot ({top}…); {n_un} of {adata.n_obs} "
                            f"'{UNASSIGNED}' (pale grey, dark rim)."
                            + (" Opacity = confidence." if view == self.VIEWS[0] else ""))

    def _mark_unassigned(self, unassigned: np.ndarray) -> None:
        layer = self.layer
        if not unassigned.any():
            return
        from matplotlib.colors import to_rgba

        rgba = np.array(layer.face_color, dtype=float)
        rgba[unassigned] = to_rgba(UNASSIGNED_COLOR, 0.55)
        layer.face_color = rgba
        _save_borders(layer)
        widths, colors, relative = layer.metadata[_BORDER_META]
        if not relative:  # keep the other spots' rims as they were, in relative units
            widths = widths / max(float(np.mean(layer.size)), 1e-6)
        border = colors.copy() if colors.shape == (len(layer.data), 4) else np.tile(
            np.asarray(to_rgba(UNASSIGNED_BORDER)), (len(layer.data), 1))
        border[unassigned] = to_rgba(UNASSIGNED_BORDER)
        layer.border_width_is_relative = True
        layer.border_width = np.where(unassigned, 0.22, np.broadcast_to(widths, unassigned.shape))
        layer.border_color = border
        layer.refresh()


VIEWS: dict[str, type[ResultView]] = {
    "impute": ImputeView,
    "integrate": IntegrateView,
    "deconvolve": DeconvolveView,
    "annotate": AnnotateView,
}


def result_view_for(task: str, viewer: Any) -> ResultView:
    """The result view of ``task``."""
    return VIEWS[task](viewer)


def show_task_result(viewer: Any, layer: Any, task: str, result: Any = None, *,
                     view: ResultView | None = None, **context: Any) -> ResultView:
    """Draw a task's result on ``layer`` without a dock (scripts); returns the (hidden) view."""
    view = view or result_view_for(task, viewer)
    view.show_result(layer, result, **context)
    return view


__all__ = ["CLUSTERS_KEY", "DOMINANT_KEY", "AnnotateView", "DeconvolveView", "ImputeView",
           "IntegrateView", "ResultView", "cluster_latent", "color_by", "dominant_cell_type",
           "result_view_for", "show_task_result"]
