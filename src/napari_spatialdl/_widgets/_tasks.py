"""One widget per task: Impute, Integrate, Deconvolve, Annotate.

Each panel picks its inputs from what is open in the viewer (the spots layer's AnnData in
``layer.metadata['adata']``; a reference from a file, the reference a spots layer carries in
``metadata['reference']``, or another spots layer), offers the registered methods of the task,
builds the method's parameter editors from its signature, and runs it through the shared
:class:`~napari_spatialdl._widgets._runner.TaskRun` (worker thread, progress, live loss,
cancel). Results are drawn on the tissue by the task's result view (:mod:`._overlay`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._runner import ParamPanel, RunControls, TaskRun

if TYPE_CHECKING:
    import napari
    from anndata import AnnData

#: parameters the widgets fill themselves (never shown in the generated panel)
HANDLED_PARAMS = ("device", "copy", "progress")
NO_SPOTS = ("no spots layer with an AnnData: open a Visium folder or an .h5ad, or "
            "File > Open Sample > Synthetic tissue")


# ----------------------------------------------------------------------------- helpers
def spots_layers(viewer: napari.Viewer) -> list[Any]:
    """Points layers that carry an AnnData in ``metadata['adata']``, in the viewer's order."""
    from anndata import AnnData
    from napari.layers import Points

    return [layer for layer in viewer.layers
            if isinstance(layer, Points) and isinstance(layer.metadata.get("adata"), AnnData)]


#: integer obs columns with these words in their name are categories (batches, clusters)
_CATEGORY_WORDS = ("batch", "sample", "donor", "section", "slide", "replicate", "library", "cluster",
                   "leiden", "louvain", "label", "type", "region", "patient", "condition")


def label_columns(adata: AnnData, *, allow_missing: bool = True, max_categories: int = 200) -> list[str]:
    """obs columns usable as labels/batches: categorical-like with at least two distinct values.

    Categorical, string and boolean columns qualify; integer columns only when their name says
    they are categories (e.g. 'batch', 'leiden'), so that counts and array rows are not offered.
    """
    out = []
    for col in adata.obs.columns:
        values = adata.obs[col]
        dtype = values.dtype
        categorical = (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype)
                       or pd.api.types.is_string_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
        named = any(word in str(col).lower() for word in _CATEGORY_WORDS)
        if not categorical and not (pd.api.types.is_integer_dtype(dtype) and named):
            continue
        if not allow_missing and values.isna().any():
            continue
        n = values.dropna().nunique()
        if 2 <= n <= max_categories and n < max(3, adata.n_obs):
            out.append(str(col))
    return out


def compact_combos(widget: QWidget, min_chars: int = 12) -> None:
    """Let drop-downs shrink with the dock (long entries are elided, not widening the panel)."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(min_chars)


def _set_items(combo: QComboBox, items: list[tuple[str, Any]], keep: Any = None,
               fallback_first: bool = True) -> None:
    """Refill a combo box with (text, data) items, keeping the current choice when possible.

    Without a choice to keep, the first item is selected (or none when ``fallback_first`` is
    False: the user has to choose).
    """
    current = combo.currentText() if keep is None else keep
    combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    index = combo.findText(current) if current else -1
    combo.setCurrentIndex(index if index >= 0 else (0 if items and fallback_first else -1))
    combo.blockSignals(False)


# ----------------------------------------------------------------------------- base
class TaskWidget(QWidget):
    """What every task panel shares: spots, method, parameters, run controls, results."""

    task: ClassVar[str] = ""
    title: ClassVar[str] = ""
    blurb: ClassVar[str] = ""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.last_run: TaskRun | None = None
        self.params: ParamPanel | None = None
        self._panel_key: tuple | None = None
        self._refreshing = False

        layout = QVBoxLayout(self)
        intro = QLabel(self.blurb)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.form = QFormLayout()
        layout.addLayout(self.form)
        self.spots = QComboBox()
        self.spots.setToolTip("The spots (a Points layer made from an AnnData) to run on.")
        self.form.addRow("spots", self.spots)
        self._add_inputs()
        self.method = QComboBox()
        self.method.setToolTip("The model or baseline that does the work (from the task's registry).")
        self.form.addRow("method", self.method)
        self.method_info = QLabel()
        self.method_info.setWordWrap(True)
        self.method_info.setStyleSheet("color: gray;")
        self.form.addRow(self.method_info)

        self.params_box = QGroupBox("Parameters")
        self.params_layout = QVBoxLayout(self.params_box)
        layout.addWidget(self.params_box)

        self.controls = RunControls()
        layout.addWidget(self.controls)
        self.run_button = self.controls.run_button
        self.cancel_button = self.controls.cancel_button

        from ._overlay import result_view_for

        self.results = result_view_for(self.task, self.viewer)
        self.results_box = QGroupBox("Results on the tissue")
        QVBoxLayout(self.results_box).addWidget(self.results)
        layout.addWidget(self.results_box)
        layout.addStretch(1)

        self._fill_methods()
        compact_combos(self)
        self.spots.currentIndexChanged.connect(self._on_spots_changed)
        self.method.currentIndexChanged.connect(lambda *_: self.refresh())
        self.controls.run_clicked.connect(self.start)
        self.controls.cancel_clicked.connect(self.cancel)
        self._connect_viewer()
        self.refresh()

    # ------------------------------------------------------------- task-specific hooks
    def _add_inputs(self) -> None:
        """Add the task's own input drop-downs to ``self.form``."""

    def _inputs_reason(self, adata: AnnData) -> str:
        """Why the task's own inputs are not valid yet ('' when they are)."""
        return ""

    def _task_args(self, adata: AnnData) -> tuple:
        """The positional inputs of the task (after the AnnData)."""
        return (adata,)

    def _refresh_inputs(self, adata: AnnData | None) -> None:
        """Refill the task's own drop-downs for the chosen spots."""

    def _reference(self) -> AnnData | None:
        return None

    def _input_param_names(self) -> tuple[str, ...]:
        return ()

    # ---------------------------------------------------------------- viewer wiring
    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)

    def _on_layers_changed(self, event: Any = None) -> None:
        value = getattr(event, "value", None)
        if event is not None and getattr(event, "type", "") == "inserted" and value is not None:
            value.events.name.connect(self._on_layers_changed)
        self.refresh()

    def _on_spots_changed(self, *_: Any) -> None:
        self.refresh()
        layer = self.spots_layer
        if layer is not None:
            self.results.set_target(layer)

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        """Refresh when shown: obs columns may have changed (e.g. regions were assigned)."""
        self.refresh()
        super().showEvent(event)

    # -------------------------------------------------------------------- state
    @property
    def spots_layer(self) -> Any:
        name = self.spots.currentText()
        for layer in spots_layers(self.viewer):
            if layer.name == name:
                return layer
        return None

    @property
    def adata(self) -> AnnData | None:
        layer = self.spots_layer
        return None if layer is None else layer.metadata["adata"]

    @property
    def method_name(self) -> str | None:
        return self.method.currentData()

    def _fill_methods(self) -> None:
        from ..tasks import list_methods

        items = []
        for m in list_methods(self.task, available_only=True):
            text = m.name + (" (native)" if m.native else "")
            items.append((text, m.name))
        _set_items(self.method, items)
        native = [i for i, (_, name) in enumerate(items) if name == "spatialdl"]
        if native:
            self.method.setCurrentIndex(native[0])

    def set_method(self, name: str) -> None:
        """Choose the method by its registry name."""
        index = self.method.findData(name)
        if index < 0:
            raise ValueError(f"No {self.task} method {name!r} in the list.")
        self.method.setCurrentIndex(index)
        self.refresh()

    def set_spots(self, layer: Any) -> None:
        """Choose the spots layer (by layer or name)."""
        name = getattr(layer, "name", layer)
        index = self.spots.findText(str(name))
        if index < 0:
            raise ValueError(f"{name!r} is not a spots layer with an AnnData.")
        self.spots.setCurrentIndex(index)
        self.refresh()

    def refresh(self) -> None:
        """Refill drop-downs from what is open and say whether Run can start."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            layers = spots_layers(self.viewer)
            _set_items(self.spots, [(layer.name, layer.name) for layer in layers])
            adata = self.adata
            self._refresh_inputs(adata)
            self._rebuild_params()
            if adata is not None:
                self.results.set_target(self.spots_layer, quiet=True)
            self.controls.set_reason(self.why_not())
        finally:
            self._refreshing = False

    def _rebuild_params(self) -> None:
        from ..tasks import get_method

        name = self.method_name
        if name is None:
            return
        method = get_method(self.task, name)
        adata, reference = self.adata, self._reference()
        skip = (*HANDLED_PARAMS, *self._input_param_names())
        choices = self._param_choices(method.func, adata, reference, skip)
        key = (name, id(adata), id(reference), repr(choices))
        if key == self._panel_key:
            return
        old = {}
        if self.params is not None:
            for pname, field in self.params.fields.items():
                try:
                    old[pname] = field.value()
                except ValueError:
                    pass
            self.params_layout.removeWidget(self.params.native)
            self.params.native.setParent(None)
            self.params.native.deleteLater()
        self.method_info.setText(method.description)
        self.params = ParamPanel(method.func, skip=skip, choices=choices)
        for pname, value in old.items():
            if pname in self.params.fields:
                try:
                    self.params.set(**{pname: value})
                except (ValueError, TypeError, KeyError):
                    pass
        self.params.changed_connect(lambda: self.controls.set_reason(self.why_not()))
        compact_combos(self.params.native)
        self.params_layout.addWidget(self.params.native)
        self._panel_key = key

    @staticmethod
    def _param_choices(func, adata, reference, skip) -> dict[str, list]:
        """Drop-downs for parameters that name AnnData layers or obs columns."""
        choices: dict[str, list] = {}
        for name, par in inspect.signature(func).parameters.items():
            if name in skip or par.default is inspect.Parameter.empty:
                continue
            target = reference if name.startswith(("reference", "ref_")) else adata
            if target is None:
                continue
            if name == "layer" or name.endswith("_layer"):
                choices[name] = [None, *map(str, target.layers.keys())]
            elif name.endswith("_key") and par.default is None:
                choices[name] = [None, *label_columns(target)]
        return choices

    def why_not(self) -> str:
        """Why Run is disabled ('' when everything needed is there)."""
        if self.last_run is not None and self.last_run.running:
            return "running…"
        adata = self.adata
        if adata is None:
            return NO_SPOTS
        if self.method_name is None:
            return f"no {self.task} method is available"
        reason = self._inputs_reason(adata)
        if reason:
            return reason
        try:
            if self.params is not None:
                self.params.values()
        except ValueError as exc:
            return str(exc)
        return ""

    # ----------------------------------------------------------------------- run
    def run_params(self) -> dict[str, Any]:
        """The keyword parameters for the method: the panel's values plus the device."""
        from ..tasks import get_method

        params = self.params.values() if self.params is not None else {}
        signature = inspect.signature(get_method(self.task, self.method_name).func).parameters
        if "device" in signature:
            params["device"] = self.controls.device_value
        return params

    def start(self) -> TaskRun | None:
        """Run the task with the current choices (what the Run button does)."""
        why = self.why_not()
        if why:
            from napari.utils.notifications import show_warning

            show_warning(f"{self.title}: cannot run: {why}")
            return None
        adata = self.adata
        layer = self.spots_layer
        args = self._task_args(adata)
        params = self.run_params()
        context = self._result_context()
        self.controls.loss.clear(self.title)
        run = TaskRun(self.task, args, self.method_name, params,
                      on_event=self.controls.loss.add_event,
                      on_result=lambda result: self._on_result(layer, result, context),
                      on_finish=self._on_finish,
                      postprocess=self.results.worker_postprocess())
        self.last_run = run
        self.controls.set_running(True)
        self.spots.setEnabled(False)
        run.start()
        return run

    def cancel(self) -> None:
        """Stop the running task at its next progress event; nothing is written."""
        if self.last_run is not None:
            self.last_run.cancel()

    def _result_context(self) -> dict[str, Any]:
        """What the result view needs besides the result (reference, keys)."""
        return {}

    def _on_result(self, layer: Any, result: Any, context: dict[str, Any]) -> None:
        self.results.show_result(layer, result, **context)

    def _on_finish(self, run: TaskRun) -> None:
        self.spots.setEnabled(True)
        self.controls.set_running(False)
        if run.cancelled:
            self.controls.loss.status = "cancelled: nothing was written"
            self.controls.loss.update()
        self.controls.set_reason(self.why_not())


# ----------------------------------------------------------------------- reference
class ReferencePicker(QWidget):
    """Where the annotated reference comes from: a file, a spots layer, or what a layer carries."""

    def __init__(self, owner: TaskWidget, *, allow_self: bool = False):
        super().__init__()
        self.owner = owner
        self.allow_self = allow_self
        self.files: dict[str, AnnData] = {}
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setToolTip(
            "The annotated reference (single cells with a cell-type column): an .h5ad file, the "
            "reference a sample carries, or another spots layer"
            + (", or the spots themselves (labels drawn as regions)" if allow_self else "") + "."
        )
        self.open_button = QPushButton("Open .h5ad…")
        row.addWidget(self.combo, 1)
        row.addWidget(self.open_button)
        self.open_button.clicked.connect(self._choose_file)

    def refill(self, spots_layer: Any) -> None:
        items: list[tuple[str, Any]] = []
        preferred = None
        if spots_layer is not None:
            ref = spots_layer.metadata.get("reference")
            if ref is not None:
                text = f"reference of '{spots_layer.name}'"
                items.append((text, ("carried", spots_layer.name)))
                preferred = text
            if self.allow_self:
                items.append((f"'{spots_layer.name}' itself (its own labels)", ("self", spots_layer.name)))
        for layer in spots_layers(self.owner.viewer):
            if spots_layer is not None and layer.name == spots_layer.name:
                continue
            items.append((f"spots of '{layer.name}'", ("layer", layer.name)))
        for name in self.files:
            text = f"file: {name}"
            items.append((text, ("file", name)))
        keep = self.combo.currentText() if self.combo.currentIndex() >= 0 else preferred
        if keep not in [t for t, _ in items]:
            keep = preferred
        _set_items(self.combo, items, keep=keep)

    def load(self, path: str | Path) -> AnnData:
        """Read an .h5ad reference (``napari_spatialdl.io.read_h5ad``) and select it."""
        from ..io import read_h5ad

        adata = read_h5ad(path)
        name = Path(path).name
        self.files[name] = adata
        self.owner.refresh()
        self.combo.setCurrentIndex(self.combo.findText(f"file: {name}"))
        return adata

    def add(self, name: str, adata: AnnData) -> None:
        """Offer an in-memory AnnData as a reference (for scripts), and select it."""
        self.files[name] = adata
        self.owner.refresh()
        self.combo.setCurrentIndex(self.combo.findText(f"file: {name}"))

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Annotated reference", "", "AnnData (*.h5ad)")
        if not path:
            return
        try:
            self.load(path)
        except Exception as exc:
            from napari.utils.notifications import show_error

            show_error(f"Could not read the reference {Path(path).name}: {exc}")

    @property
    def is_self(self) -> bool:
        data = self.combo.currentData()
        return bool(data) and data[0] == "self"

    def value(self) -> AnnData | None:
        data = self.combo.currentData()
        if not data:
            return None
        kind, name = data
        if kind == "file":
            return self.files.get(name)
        for layer in spots_layers(self.owner.viewer):
            if layer.name == name:
                if kind == "carried":
                    return layer.metadata.get("reference")
                return layer.metadata["adata"]
        return None


class _ReferenceTask(TaskWidget):
    """Deconvolution and annotation: spots + annotated reference + labels column."""

    allow_self: ClassVar[bool] = False

    def _add_inputs(self) -> None:
        self.reference = ReferencePicker(self, allow_self=self.allow_self)
        self.form.addRow("reference", self.reference)
        self.labels_key = QComboBox()
        self.labels_key.setToolTip("The reference's obs column holding the cell types.")
        self.form.addRow("labels column", self.labels_key)
        self.reference.combo.currentIndexChanged.connect(lambda *_: self.refresh())
        self.labels_key.currentIndexChanged.connect(lambda *_: self.controls.set_reason(self.why_not()))

    def _input_param_names(self) -> tuple[str, ...]:
        return ("reference", "labels_key")

    def _reference(self) -> AnnData | None:
        return self.reference.value()

    def _refresh_inputs(self, adata: AnnData | None) -> None:
        self.reference.refill(self.spots_layer)
        ref = self.reference.value()
        cols = [] if ref is None else label_columns(ref)
        preferred = next((c for c in cols if c.lower() in ("cell_type", "celltype", "cell_types",
                                                           "labels", "region")), None)
        keep = self.labels_key.currentText() if self.labels_key.currentText() in cols else preferred
        _set_items(self.labels_key, [(c, c) for c in cols], keep=keep, fallback_first=False)

    def _inputs_reason(self, adata: AnnData) -> str:
        ref = self.reference.value()
        if ref is None:
            return "choose a reference: open an annotated .h5ad, or pick a spots layer that carries one"
        if self.labels_key.count() == 0:
            return "choose a reference with a labels column (an obs column with at least two cell types)"
        if not self.labels_key.currentText():
            return "choose the labels column of the reference (its cell types)"
        return ""

    def _task_args(self, adata: AnnData) -> tuple:
        return (adata, self.reference.value(), self.labels_key.currentText())

    def _result_context(self) -> dict[str, Any]:
        return {"reference": self.reference.value(), "labels_key": self.labels_key.currentText()}

    def set_reference(self, reference: AnnData | str | Path, labels_key: str | None = None,
                      name: str = "reference") -> None:
        """Choose the reference: an AnnData, or a path to an .h5ad; optionally its labels column."""
        from anndata import AnnData

        if isinstance(reference, AnnData):
            self.reference.add(name, reference)
        else:
            self.reference.load(reference)
        if labels_key is not None:
            self.set_labels_key(labels_key)

    def set_labels_key(self, labels_key: str) -> None:
        index = self.labels_key.findText(labels_key)
        if index < 0:
            raise ValueError(f"{labels_key!r} is not a labels column of the reference "
                             f"(columns: {[self.labels_key.itemText(i) for i in range(self.labels_key.count())]}).")
        self.labels_key.setCurrentIndex(index)
        self.controls.set_reason(self.why_not())


# --------------------------------------------------------------------------- tasks
class ImputeWidget(TaskWidget):
    """Impute: denoise the counts and fill in dropouts (``layers['spatialdl_imputed']``)."""

    task = "impute"
    title = "Impute"
    blurb = ("Denoise the counts and fill in dropouts: a count autoencoder predicts the expected "
             "expression of every gene in every spot. Then colour the tissue by a gene, raw or imputed.")


class IntegrateWidget(TaskWidget):
    """Integrate: a batch-corrected latent space (``obsm['X_spatialdl']``) and its clusters."""

    task = "integrate"
    title = "Integrate"
    blurb = ("Remove batch effects (sections, donors, protocols): a conditional VAE learns a "
             "batch-corrected latent space; its clusters are drawn on the tissue.")

    def _add_inputs(self) -> None:
        self.batch_key = QComboBox()
        self.batch_key.setToolTip("The obs column saying which batch (sample, section) each spot comes from.")
        self.form.addRow("batch column", self.batch_key)
        self.batch_key.currentIndexChanged.connect(lambda *_: self.controls.set_reason(self.why_not()))

    def _input_param_names(self) -> tuple[str, ...]:
        return ("batch_key",)

    def _refresh_inputs(self, adata: AnnData | None) -> None:
        cols = [] if adata is None else label_columns(adata, allow_missing=False)
        preferred = next((c for c in cols if any(w in c.lower() for w in
                                                 ("batch", "sample", "section", "donor", "slide"))), None)
        keep = self.batch_key.currentText() if self.batch_key.currentText() in cols else preferred
        _set_items(self.batch_key, [(c, c) for c in cols], keep=keep, fallback_first=False)

    def _inputs_reason(self, adata: AnnData) -> str:
        if self.batch_key.count() == 0:
            return ("the spots' AnnData has no batch column: an obs column with at least two batches "
                    "and no missing values")
        if not self.batch_key.currentText():
            return "choose the batch column (which sample or section each spot comes from)"
        return ""

    def _task_args(self, adata: AnnData) -> tuple:
        return (adata, self.batch_key.currentText())

    def _result_context(self) -> dict[str, Any]:
        return {"batch_key": self.batch_key.currentText()}

    def set_batch_key(self, key: str) -> None:
        index = self.batch_key.findText(key)
        if index < 0:
            raise ValueError(f"{key!r} is not a batch column of the spots' AnnData.")
        self.batch_key.setCurrentIndex(index)


class DeconvolveWidget(_ReferenceTask):
    """Deconvolve: cell-type proportions per spot from an annotated reference."""

    task = "deconvolve"
    title = "Deconvolve"
    blurb = ("Estimate which cell types make up each spot, from an annotated single-cell reference. "
             "Then map one cell type's proportion, or the dominant type of every spot.")


class AnnotateWidget(_ReferenceTask):
    """Annotate: a cell type per spot with its confidence, 'unassigned' when unsure."""

    task = "annotate"
    title = "Annotate"
    blurb = ("Transfer labels from an annotated reference to every spot, with a confidence; spots "
             "below the threshold stay 'unassigned'. Choose the spots themselves as reference to "
             "learn from regions you drew and label the rest.")
    allow_self = True


TASK_WIDGETS: dict[str, type[TaskWidget]] = {
    "impute": ImputeWidget,
    "integrate": IntegrateWidget,
    "deconvolve": DeconvolveWidget,
    "annotate": AnnotateWidget,
}

__all__ = ["AnnotateWidget", "DeconvolveWidget", "ImputeWidget", "IntegrateWidget", "TaskWidget",
           "label_columns", "spots_layers"]


