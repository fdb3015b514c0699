"""The input pickers of the task panels, one per role of the task spec's inputs.

- the data: a spots layer (a Points layer with an AnnData in ``metadata['adata']``);
- a reference: :class:`._reference.ReferencePicker`;
- a batch or labels column of one of them: only the columns that
  ``tasks._validate.column_problem`` accepts for that kind, narrowed to the plausible ones
  (``tasks._validate.offered_columns``), are offered;
- a layer of one of them (``None``: ``X``), with a check that it holds raw counts.

No task is named here: the panel reads the roles from ``tasks.get_spec(task)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from anndata import AnnData

NO_SPOTS = ("Open spots first: File > Open Sample > Spatial DL > Synthetic tissue, or open a Space "
            "Ranger folder or an .h5ad file (File > Open).")
X_TEXT = "X (main matrix)"
#: column names preselected when several columns fit (a convention, never the only criterion)
LABELS_NAMES = ("cell_type", "celltype", "cell_types", "cell type", "labels", "annotation")
BATCH_NAMES = ("batch", "sample", "section", "library_id", "donor", "slide", "sample_id", "batch_id",
               "replicate", "capture_area")


def spots_layers(viewer: Any) -> list[Any]:
    """Points layers carrying an AnnData in ``metadata['adata']``, in the viewer's order.

    Spots layers of napari-spatialdl, and napari-spatialdata's layers of circles or points that a
    table annotates, adopted (our AnnData built from their SpatialData, see
    :mod:`._spatialdata_layers`); those it cannot adopt are left out (:func:`not_offered_reason`
    says why).
    """
    from anndata import AnnData
    from napari.layers import Points

    from ._spatialdata_layers import ensure_spots_layer

    out = []
    for layer in viewer.layers:
        if not isinstance(layer, Points):
            continue
        if ensure_spots_layer(layer) or ("sdata" not in layer.metadata and
                                         isinstance(layer.metadata.get("adata"), AnnData)):
            out.append(layer)
    return out


def not_offered_reason(viewer: Any) -> str:
    """Why napari-spatialdata's layers in ``viewer`` are not offered as spots ('' when none is left out)."""
    from ._spatialdata_layers import not_offered

    return " ".join(not_offered(viewer))


#: widest a panel makes itself (wider content scrolls sideways rather than squeeze the canvas)
MAX_PANEL_WIDTH = 380


class NarrowPanel(QWidget):
    """A panel that asks its dock for no more width than it needs, so the canvas keeps its room."""

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt)
        return QSize(self.minimumWidth() + 8, super().sizeHint().height())

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        if getattr(self, "scroll_area", None) is not None:
            fit_width(self)  # fonts and styles are final once shown
        if not getattr(self, "_shown_once", False) and self._top_of_dock():
            self._shown_once = True  # the new dock took room from the canvas: fit the data again
            viewer = getattr(self, "viewer", None)
            if viewer is not None:
                QTimer.singleShot(0, viewer.reset_view)
        super().showEvent(event)

    def _top_of_dock(self) -> bool:
        """Docked by itself (not a tab of another panel)."""
        from qtpy.QtWidgets import QDockWidget

        parent = self.parentWidget()
        while parent is not None:
            if isinstance(parent, QDockWidget):
                return True
            if isinstance(parent, NarrowPanel):
                return False
            parent = parent.parentWidget()
        return False

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        super().resizeEvent(event)
        scroll = getattr(self, "scroll_area", None)
        if scroll is not None:  # content wider than the view (it grew): widen up to MAX_PANEL_WIDTH
            over = scroll.widget().minimumSizeHint().width() - scroll.viewport().width()
            if over > 0 and self.minimumWidth() < MAX_PANEL_WIDTH:
                self.setMinimumWidth(min(MAX_PANEL_WIDTH, self.minimumWidth() + over))


def scrolled_layout(owner: QWidget, min_width: int = 0) -> QVBoxLayout:
    """Give ``owner`` a vertically scrolling body and return the body's layout.

    A panel then never makes napari's window taller than the screen: the dock keeps the height
    the window gives it and the content scrolls.
    """
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # only past MAX_PANEL_WIDTH
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    outer.addWidget(scroll)
    body = QWidget()
    scroll.setWidget(body)
    owner.scroll_area = scroll
    owner.setMinimumHeight(60)  # docks can be squeezed (the body scrolls), so seven still fit
    if min_width:
        owner.setMinimumWidth(min_width)
    return QVBoxLayout(body)


def fit_width(owner: QWidget) -> None:
    """As wide as the scrolled body needs (up to ``MAX_PANEL_WIDTH``), so that nothing is cut off."""
    body = owner.scroll_area.widget()
    bar = owner.scroll_area.verticalScrollBar().sizeHint().width()
    owner.setMinimumWidth(min(MAX_PANEL_WIDTH, body.minimumSizeHint().width() + bar + 2 * owner.scroll_area.frameWidth() + 4))


def compact_combos(widget: QWidget, min_chars: int = 10) -> None:
    """Let drop-downs shrink with the dock (long entries are elided, not widening the panel)."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(min_chars)


def set_items(combo: QComboBox, items: list[tuple[str, Any]], keep: str | None = None,
              fallback_first: bool = True) -> None:
    """Refill a combo box with (text, data) items, keeping the current choice when it is still there.

    Without one to keep, the first item is selected, or none when ``fallback_first`` is False.
    """
    current = combo.currentText() if keep is None else keep
    combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    index = combo.findText(current) if current else -1
    combo.setCurrentIndex(index if index >= 0 else (0 if items and fallback_first else -1))
    combo.blockSignals(False)


# ----------------------------------------------------------------------------- columns
def column_problem(adata: AnnData, key: str, kind: str, min_values: int = 2) -> str | None:
    """Why ``adata.obs[key]`` cannot be a ``kind`` column (None when it can): the task layer's rule."""
    from ..tasks._validate import column_problem as problem

    return problem(adata, key, kind, min_values=min_values)


def fitting_columns(adata: AnnData | None, kind: str, min_values: int = 2) -> list[str]:
    """The obs columns of ``adata`` a ``kind`` ('batch' or 'labels') drop-down offers, in their order.

    Those that ``column_problem`` accepts and whose kind fits (``tasks._validate.offered_columns``):
    no grid coordinates, QC measurements or napari-spatialdl results as batches, and no cell-type,
    cluster or region column either while another column fits; no numeric, batch or section
    columns as labels.
    """
    if adata is None:
        return []
    from ..tasks._validate import offered_columns

    return offered_columns(adata, kind, min_values=min_values)


def preferred_column(columns: list[str], kind: str, previous: str | None = None) -> str | None:
    """The column to preselect among the offered ``columns``: the one used last time, else the only
    labels column, else one with a conventional name (``cell_type``..., ``batch``, ``sample``,
    ``section``...); ``None`` for a batch column with a name that says nothing."""
    if previous in columns:
        return previous
    if kind == "labels" and len(columns) == 1:
        return columns[0]
    names = LABELS_NAMES if kind == "labels" else BATCH_NAMES
    for name in names:
        for col in columns:
            if col.lower() == name:
                return col
    return None


# ----------------------------------------------------------------------------- counts
_COUNTS_CACHE: dict[int, tuple[Any, str]] = {}


def matrix_kind(X: Any) -> str:
    """``'counts'`` (non-negative whole numbers), ``'normalised'``, ``'negative'`` or ``'none'``."""
    if X is None:
        return "none"
    cached = _COUNTS_CACHE.get(id(X))
    if cached is not None and cached[0] is X:
        return cached[1]
    values = X.data if sp.issparse(X) else np.asarray(X)
    if values.dtype.kind not in "iuf":
        kind = "none"
    elif values.size and values.min() < 0:
        kind = "negative"
    elif values.dtype.kind == "f" and values.size and not (
            np.isfinite(values).all() and np.all(np.mod(values, 1) == 0)):
        kind = "normalised"
    else:
        kind = "counts"
    if len(_COUNTS_CACHE) > 64:
        _COUNTS_CACHE.clear()
    _COUNTS_CACHE[id(X)] = (X, kind)
    return kind


def counts_layers(adata: AnnData) -> list[str | None]:
    """Where ``adata`` holds raw counts: ``None`` for X, then layer names."""
    out: list[str | None] = [None] if matrix_kind(adata.X) == "counts" else []
    return out + [str(k) for k in adata.layers.keys() if matrix_kind(adata.layers[k]) == "counts"]


def counts_reason(adata: AnnData, layer: str | None, what: str, field: str) -> str:
    """Why the chosen matrix of ``adata`` cannot be used as raw counts, in plain words ('' if it can).

    ``what`` names the data ("the spots of 'tissue'"), ``field`` the drop-down to change.
    """
    X = adata.X if layer is None else adata.layers.get(layer)
    kind = matrix_kind(X)
    if kind == "counts":
        return ""
    where = X_TEXT.split(" ")[0] if layer is None else f"layer '{layer}'"
    state = {"normalised": "normalised, not raw counts", "negative": "scaled (some are negative), not raw counts",
             "none": "not numbers"}[kind]
    others = [X_TEXT if c is None else f"'{c}'" for c in counts_layers(adata)]
    if others:
        return (f"The values in {where} of {what} are {state}: choose {' or '.join(others)} "
                f"under '{field}'.")
    return (f"The values in {where} of {what} are {state}, and {what} has no raw counts: open a file "
            "that holds them (e.g. the Space Ranger output folder), or choose a method that works on "
            "normalised values.")


def layer_items(adata: AnnData | None) -> list[tuple[str, Any]]:
    """Drop-down items for a layer input: X, then the layers."""
    if adata is None:
        return []
    return [(X_TEXT, None), *[(str(k), str(k)) for k in adata.layers.keys()]]


def preferred_layer(adata: AnnData, needs_counts: bool) -> str | None:
    """X when it holds counts (or counts are not needed), else the first layer with counts."""
    if not needs_counts:
        return None
    found = counts_layers(adata)
    return found[0] if found else None


__all__ = ["NO_SPOTS", "NarrowPanel", "column_problem", "compact_combos", "counts_layers",
           "counts_reason", "fit_width", "fitting_columns", "layer_items", "matrix_kind", "not_offered_reason",
           "preferred_column", "preferred_layer", "scrolled_layout", "set_items", "spots_layers"]
