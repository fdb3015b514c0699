"""Results on the tissue: what every task's result view shares.

A :class:`ResultView` follows one spots layer and one result of its task in that layer's AnnData
(the run records in ``uns['spatialdl']`` say where each result is, so a reopened ``.h5ad`` shows
its results, and results of several methods side by side can each be chosen). The per-task
views live in the panel modules (``_impute``, ``_integrate``, ``_deconvolve``, ``_annotate``);
what they derive (clusters, dominant type, suggested gene) is computed by
:mod:`napari_spatialdl.tasks._derived`. Colouring goes through :func:`color_by`: the spots are
recoloured (:func:`._viewer.color_spots`), the one legend dock follows, and the tissue image is
dimmed so that the colours stand out from the stain.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..layers import DIMMED_IMAGE_OPACITY
from ..layers import META_DIMMED as _DIMMED
from ..tasks import get_spec, list_methods, run_records
from ._compat import real
from ._spatialdata_layers import spots_adata

_BORDER_META = "spatialdl_default_border"
NO_RESULT = "No result yet: press Run above."


def dim_images(viewer: Any) -> None:
    """Dim napari-spatialdl's tissue images once (a later change of opacity by the user is kept)."""
    from napari.layers import Image

    for layer in viewer.layers:
        if isinstance(layer, Image) and layer.metadata.get("spatialdl_image") and not layer.metadata.get(_DIMMED):
            layer.metadata[_DIMMED] = True
            layer.opacity = min(layer.opacity, DIMMED_IMAGE_OPACITY)


#: smallest on-screen diameter (screen pixels, at the zoom a result is first shown at) at which a
#: spot's colour reads; smaller spots are drawn larger, up to touching their neighbours
MIN_SPOT_SCREEN_PX = 8.0
_ENLARGED = "spatialdl_true_size"  # = _napari._npe2.TRUE_SIZE (a saved file keeps the enlargement)


def readable_spot_size(viewer: Any, layer: Any, min_px: float = MIN_SPOT_SCREEN_PX) -> float | None:
    """Draw ``layer``'s spots at least ``min_px`` screen pixels wide at the current zoom, but never
    wider than the spacing of their centres (then they touch, as a filled map), once per layer.

    Many spots on a canvas beside the docks come out a few pixels wide at their true size, and a
    colour on a 4-pixel dot over a stained image cannot be read. The true size is kept in
    ``layer.metadata['spatialdl_true_size']`` (the point-size slider changes it back at will).
    Returns the new size (data units), or None when the spots were left as they are.
    """
    if layer.metadata.get(_ENLARGED) is not None or len(layer.data) < 2:
        return None
    sizes = np.asarray(layer.size, dtype=float).ravel()
    size = float(np.median(sizes)) if sizes.size else 0.0
    scale = float(np.mean(np.abs(np.asarray(layer.scale, dtype=float)[-2:])))
    zoom = float(viewer.camera.zoom)  # screen pixels per world unit
    if size <= 0 or scale <= 0 or zoom <= 0 or size * scale * zoom >= min_px:
        return None
    from scipy.spatial import cKDTree

    points = np.asarray(layer.data, dtype=float)[:, -2:]
    rng = np.random.default_rng(0)
    probe = points[rng.choice(len(points), min(len(points), 2000), replace=False)]
    distances, _ = cKDTree(points).query(probe, k=2)
    spacing = float(np.median(distances[:, 1]))
    new = min(spacing, min_px / (scale * zoom))
    if not np.isfinite(new) or new <= size:
        return None
    layer.metadata[_ENLARGED] = size
    layer.size = new
    return new


def color_by(viewer: Any, layer: Any, key: str, **kwargs: Any) -> Any:
    """Recolour ``layer`` by ``key`` (:func:`._viewer.color_spots`), show the legend, dim the image,
    and draw too-small spots at a size that reads (:func:`readable_spot_size`)."""
    from ._legend import ensure_legend
    from ._viewer import color_spots

    reset_borders(layer)
    info = color_spots(layer, key, **kwargs)
    if viewer is not None and getattr(viewer, "window", None) is not None:
        from qtpy.QtCore import QTimer

        dim_images(viewer)
        readable_spot_size(viewer, layer)
        legend = ensure_legend(viewer, layer)
        fit_dock_height(legend)
        QTimer.singleShot(0, lambda: _fit_later(legend))  # again once its layout has settled
    return info


def _fit_later(legend: QWidget) -> None:
    try:
        fit_dock_height(legend)
    except RuntimeError:  # the legend was closed meanwhile
        pass


def fit_dock_height(widget: QWidget, cap: int = 260) -> None:
    """Keep a docked legend about as tall as its content, so the task panels keep their room."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = widget.parentWidget()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parentWidget()
    window = dock.parentWidget() if dock is not None else None
    if dock is None or dock.isFloating() or not isinstance(window, QMainWindow):
        return
    height = min(cap, max(80, widget.sizeHint().height() + 30))
    if dock.height() <= height + 10:
        return
    area = window.dockWidgetArea(dock)
    others = [d for d in window.findChildren(QDockWidget)
              if d is not dock and d.isVisible() and not d.isFloating() and window.dockWidgetArea(d) == area]
    spare = (dock.height() - height) / max(1, len(others))
    window.resizeDocks([dock, *others], [height, *[int(d.height() + spare) for d in others]],
                       Qt.Orientation.Vertical)


def save_borders(layer: Any) -> None:
    """Remember the spots' own rims (from the layer factory) before marking some spots."""
    if _BORDER_META not in layer.metadata:
        layer.metadata[_BORDER_META] = (np.array(layer.border_width, dtype=float),
                                        np.array(layer.border_color, dtype=float),
                                        bool(layer.border_width_is_relative))


def reset_borders(layer: Any) -> None:
    """Put back the rims :func:`save_borders` remembered (undo the 'unassigned' marks)."""
    saved = layer.metadata.pop(_BORDER_META, None)
    if saved is None or len(saved[0]) != len(layer.data):
        return
    widths, colors, relative = saved
    layer.border_width_is_relative = relative
    layer.border_width = widths
    layer.border_color = colors


def warm_imports(result: Any = None) -> None:
    """Import what colouring needs, in the worker: the first categorical colours import scanpy
    (its palettes), which takes seconds and would freeze the GUI on the main thread."""
    from ..layers import default_palette

    default_palette(1)


def results_of(adata: Any, task: str) -> list[dict[str, Any]]:
    """The results of ``task`` in ``adata`` (newest last): ``{"name", "method", "keys", "params", "info"}``.

    ``keys`` maps the task's output fields to their keys (from the run record; the default keys
    for records without them), keeping only results whose main output is still in ``adata``.
    """
    spec = get_spec(task)
    out = []
    for name, record in run_records(adata, task).items():
        keys = {}
        for field, where in dict(record.get("keys") or {}).items():
            keys[str(field)] = str(where).split("/", 1)[-1]
        if not keys:
            keys = {o.field: o.key for o in spec.outputs}
        main = next((o for o in spec.outputs if o.field in keys), None)
        if main is None or not _present(adata, main.slot, keys[main.field]):
            continue
        out.append({"name": name, "method": str(record.get("method", "")), "keys": keys,
                    "params": dict(record.get("params") or {}), "info": record, "date": str(record.get("date", ""))})
    return sorted(out, key=lambda r: r["date"])


def _present(adata: Any, slot: str, key: str) -> bool:
    if slot == "obs":
        return key in adata.obs.columns
    if slot == "uns":
        return key in adata.uns
    return key in getattr(adata, slot).keys()


def _method_words(task: str, name: str) -> str:
    found = next((m for m in list_methods(task) if m.name == name), None)
    return (found.label or found.name) if found is not None else name


class ResultView(QWidget):
    """Base: follows one spots layer and one of its results; ``show_result`` after a run."""

    task = ""

    def __init__(self, viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = real(viewer)
        self.layer: Any = None
        self.record: dict[str, Any] | None = None
        self.context: dict[str, Any] = {}
        self._updating = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.form = QFormLayout()
        layout.addLayout(self.form)
        self.which = QComboBox()
        self.which.setToolTip("Which result to show, when several methods ran (their results are kept side by side).")
        self.form.addRow("result", self.which)
        self.which.currentIndexChanged.connect(self._on_which)
        self.status = QLabel(NO_RESULT)
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.show_button = QPushButton("Show on the tissue")
        self.show_button.setToolTip("Colour the spots by this result.")
        self.show_button.clicked.connect(lambda: self.redraw())
        layout.addWidget(self.show_button)
        self._build()
        self._set_enabled(False)

    @property
    def adata(self) -> Any:
        return spots_adata(self.layer)

    @property
    def keys(self) -> dict[str, str]:
        """Output field -> key of the result shown (the default keys when none is chosen)."""
        if self.record is not None:
            return self.record["keys"]
        return {o.field: o.key for o in get_spec(self.task).outputs}

    def _set_enabled(self, ok: bool) -> None:
        for child in self.findChildren(QWidget):
            if child is not self.status:
                child.setEnabled(ok)
        self.which.setVisible(ok and self.which.count() > 1)
        label = self.form.labelForField(self.which)
        if label is not None:
            label.setVisible(self.which.isVisible())

    def _build(self) -> None:
        """Add the view's controls to ``self.form``."""

    def has_result(self, adata: Any) -> bool:
        return bool(results_of(adata, self.task))

    def set_target(self, layer: Any, quiet: bool = False, name: str | None = None) -> None:
        """Follow ``layer`` and show its result ``name`` (default: the newest) unless ``quiet``."""
        layer = real(layer)
        if layer is self.layer and quiet and name is None and self.record is not None:
            return
        self.layer = layer
        adata = self.adata
        results = results_of(adata, self.task) if adata is not None else []
        self.which.blockSignals(True)
        self.which.clear()
        for r in results:
            self.which.addItem(f"{_method_words(self.task, r['method'])} ({r['name']})", r["name"])
        names = [r["name"] for r in results]
        keep = name or (self.record["name"] if self.record is not None and self.record["name"] in names else None)
        self.which.setCurrentIndex(names.index(keep) if keep in names else len(names) - 1)
        self.which.blockSignals(False)
        self.record = results[self.which.currentIndex()] if results else None
        self._set_enabled(bool(results))
        if not results:
            self.status.setText(NO_RESULT)
            return
        self._updating = True
        try:
            self._fill(adata)
        finally:
            self._updating = False
        if not quiet:
            self.redraw()
        else:
            many = f"{len(results)} results" if len(results) > 1 else "A result"
            self.status.setText(f"{many} of this task {'are' if len(results) > 1 else 'is'} in the data: "
                                "press 'Show on the tissue' to colour the spots by it.")

    def _on_which(self, *_: Any) -> None:
        if self.layer is not None:
            self.set_target(self.layer, quiet=False, name=self.which.currentData())

    def show_result(self, layer: Any, result: Any, **context: Any) -> None:
        """After a run: derive what the view needs from ``result`` and draw it on ``layer``."""
        self.context.update(context)
        layer = real(layer)
        records = results_of(spots_adata(layer), self.task)
        main = next((v for k, v in (result.keys or {}).items() if "_" not in k), None) if result else None
        name = next((r["name"] for r in reversed(records) if main in r["keys"].values()), None)
        self.layer, self.record = None, next((r for r in records if r["name"] == name), None)
        self._prepare(layer, result)
        self.set_target(layer, quiet=False, name=name)

    def _prepare(self, layer: Any, result: Any) -> None:
        """Derive what the view needs from a fresh result (main thread, after the run)."""

    def worker_postprocess(self) -> Any:
        """A function of the ``TaskResult`` for the worker thread: heavy, Qt-free preparation of
        the display (settings read from the controls now)."""
        return warm_imports

    def _fill(self, adata: Any) -> None:
        """Fill the drop-downs from ``adata`` and the chosen result."""

    def redraw(self, *_: Any) -> None:
        """Recolour the spots according to the controls."""


#: the result view of each task, in its panel's module
VIEWS = {"impute": "_impute:ImputeView", "integrate": "_integrate:IntegrateView",
         "deconvolve": "_deconvolve:DeconvolveView", "annotate": "_annotate:AnnotateView"}


def result_view_for(task: str, viewer: Any) -> ResultView:
    """The result view of ``task``."""
    module, _, name = VIEWS[task].partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)(viewer)


def show_task_result(viewer: Any, layer: Any, task: str, result: Any = None, *,
                     view: ResultView | None = None, **context: Any) -> ResultView:
    """Draw a task's result on ``layer`` without a dock (scripts); returns the (hidden) view."""
    view = view or result_view_for(task, viewer)
    view.show_result(layer, result, **context)
    return view


__all__ = ["ResultView", "color_by", "dim_images", "fit_dock_height", "result_view_for", "results_of",
           "show_task_result"]
