"""The task panel, built from the task's spec: one picker per input role, the method, its
parameters, run controls and the result view.

``tasks.get_spec(task)`` says what the task takes (the data, a reference, a batch or labels
column of one of them, a layer of one of them); ``tasks.method_params(method)`` what the chosen
method adds (obs-column parameters by their role get column drop-downs too). Run calls
``tasks.run_task_iter(task, method=..., **inputs, **params)`` — what users call — in a napari
thread worker (:class:`._runner.TaskRun`). The panel scrolls inside its dock, so it never makes
the window taller than the screen.
"""

from __future__ import annotations

from typing import Any, ClassVar

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from ..tasks import get_method, get_spec, list_methods, method_params
from ..tasks._spec import BATCH, DATA, LABELS, LAYER, REFERENCE
from . import _inputs as I
from ._compat import real
from ._controls import RunControls
from ._inputs import NarrowPanel
from ._panel_inputs import ROW_LABELS, PanelInputs
from ._params import NONE_TEXT, ParamPanel
from ._reference import ReferencePicker
from ._runner import TaskRun, error_message
from ._spatialdata_layers import spots_adata


class TaskWidget(PanelInputs, NarrowPanel):
    """A task's panel; subclasses name the task and add its result view (``view_class``)."""

    task: ClassVar[str] = ""
    title: ClassVar[str] = ""
    blurb: ClassVar[str] = ""
    allow_self_reference: ClassVar[bool] = False  # the spots may be their own reference
    view_class: ClassVar[type] = QWidget

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = real(napari_viewer)
        self.spec = get_spec(self.task)
        self.last_run: TaskRun | None = None
        self.params: ParamPanel | None = None
        self._panel_key: tuple | None = None
        self._owners: dict[str, int] = {}
        self._refreshing = False
        self._build()
        self._fill_methods()
        I.compact_combos(self)
        self._connect_viewer()
        self.refresh()
        I.fit_width(self)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = I.scrolled_layout(self)
        intro = QLabel(self.blurb)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.form = QFormLayout()
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        layout.addLayout(self.form)
        self.inputs: dict[str, Any] = {}
        for inp in self.spec.inputs:
            self._add_input(inp)
        self.method = QComboBox()
        self.form.addRow("method", self.method)
        self.params_box = QGroupBox("Parameters")
        self.params_layout = QVBoxLayout(self.params_box)
        layout.addWidget(self.params_box)
        self.options_help = QLabel(" ".join(o.doc for o in self.spec.options if o.doc))
        self.options_help.setWordWrap(True)
        self.options_help.setStyleSheet("color: gray;")
        self.options_help.setVisible(bool(self.options_help.text()))
        self.params_layout.addWidget(self.options_help)
        self.controls = RunControls()
        layout.addWidget(self.controls)
        self.run_button, self.cancel_button = self.controls.run_button, self.controls.cancel_button
        self.results = self.view_class(self.viewer)
        self.results_box = QGroupBox("Results on the tissue")
        QVBoxLayout(self.results_box).addWidget(self.results)
        layout.addWidget(self.results_box)
        layout.addStretch(1)
        self.method.currentIndexChanged.connect(lambda *_: self.refresh())
        self.controls.run_clicked.connect(self.start)
        self.controls.cancel_clicked.connect(self.cancel)

    def _add_input(self, inp: Any) -> None:
        if inp.role == DATA:
            widget = QComboBox()
            widget.setToolTip(f"The spots to run on ({inp.doc}).")
            widget.currentIndexChanged.connect(lambda *_: self._on_spots_changed())
        elif inp.role == REFERENCE:
            widget = ReferencePicker(self.viewer, self.refresh, allow_self=self.allow_self_reference,
                                       optional=not inp.required)
        else:
            widget = QComboBox()
            widget.setToolTip(inp.doc)
            widget.currentIndexChanged.connect(lambda *_: self._update_reason())
        self.inputs[inp.name] = widget
        self.form.addRow(self._row_label(inp), widget)

    def _row_label(self, inp: Any) -> str:
        if inp.role == LAYER:
            return "counts in" if inp.of in (None, self.spec.data_input.name) else "ref. counts in"
        return ROW_LABELS.get(inp.role, inp.name)

    def _set_row_visible(self, name: str, visible: bool) -> None:
        widget = self.inputs[name]
        widget.setVisible(visible)
        label = self.form.labelForField(widget)
        if label is not None:
            label.setVisible(visible)

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

    def _on_spots_changed(self) -> None:
        self.refresh()
        if self.spots_layer is not None:
            self.results.set_target(self.spots_layer, quiet=True)

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        """Refresh when shown: obs columns may have changed (e.g. regions were assigned)."""
        self.refresh()
        super().showEvent(event)

    # -------------------------------------------------------------------- state
    @property
    def spots(self) -> QComboBox:
        return self.inputs[self.spec.data_input.name]

    @property
    def spots_layer(self) -> Any:
        name = self.spots.currentText()
        return next((lyr for lyr in I.spots_layers(self.viewer) if lyr.name == name), None)

    @property
    def adata(self) -> Any:
        layer = self.spots_layer
        return spots_adata(layer)

    @property
    def method_name(self) -> str | None:
        return self.method.currentData()

    @property
    def method_obj(self) -> Any:
        """The chosen method; when it is no longer registered, the list is refilled."""
        if self.method_name is None:
            return None
        try:
            return get_method(self.task, self.method_name)
        except (ValueError, ImportError):  # gone since the list was filled (a plugin uninstalled)
            self._fill_methods()
            return None if self.method_name is None else get_method(self.task, self.method_name)

    def _fill_methods(self) -> None:
        methods = list_methods(self.task, available_only=True)
        I.set_items(self.method, [(m.title, m.name) for m in methods])
        for i, m in enumerate(methods):
            self.method.setItemData(i, m.description, Qt.ItemDataRole.ToolTipRole)
        native = self.method.findData("spatialdl")
        if native >= 0:
            self.method.setCurrentIndex(native)

    def refresh(self) -> None:
        """Refill the pickers from what is open and say whether Run can start."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            I.set_items(self.spots, [(lyr.name, lyr.name) for lyr in I.spots_layers(self.viewer)])
            for inp in self.spec.inputs:
                if inp.role == REFERENCE:
                    self.inputs[inp.name].refill(self.spots_layer)
            for inp in self.spec.inputs:
                self._set_row_visible(inp.name, self._visible(inp))
                if inp.role in (BATCH, LABELS):
                    self._refill_columns(inp.name, inp.role, inp.of)
                elif inp.role == LAYER:
                    self._refill_layer(inp.name, inp.of)
            self._rebuild_params()
            if self.spots_layer is not None:
                self.results.set_target(self.spots_layer, quiet=True)
        finally:
            self._refreshing = False
        self._update_reason()

    def _refill_columns(self, name: str, kind: str, of: str | None) -> None:
        combo = self.inputs[name]
        owner = self.owner(of)
        cols = I.fitting_columns(owner, kind)
        changed = self._owners.get(name) != id(owner)
        self._owners[name] = id(owner)
        keep = combo.currentText() if (combo.currentText() in cols and not changed) else \
            I.preferred_column(cols, kind, self._previous(name))
        I.set_items(combo, [(c, c) for c in cols], keep=keep, fallback_first=False)

    def _refill_layer(self, name: str, of: str | None) -> None:
        combo = self.inputs[name]
        owner = self.owner(of)
        items = I.layer_items(owner)
        changed = self._owners.get(name) != id(owner)
        self._owners[name] = id(owner)
        texts = [t for t, _ in items]
        if combo.currentText() in texts and not changed:
            keep = combo.currentText()
        else:
            method = self.method_obj
            of_data = self.spec.input(of or self.spec.data_input.name).role == DATA
            layer = self._previous(name) if of_data else None
            if layer is None or layer not in [d for _, d in items]:  # no earlier run: what holds counts
                layer = I.preferred_layer(owner, method is None or method.counts) if owner is not None else None
            keep = I.X_TEXT if layer is None else str(layer)
        I.set_items(combo, items, keep=keep)

    def _role_choices(self, params: list[Any]) -> dict[str, list[tuple[str, Any]]]:
        choices = {}
        for p in params:
            if p.role is None:
                continue
            owner = self.owner(p.role.of) if p.role.of in (None, *self.spec.input_names) else None
            cols = I.fitting_columns(owner, p.role.kind, getattr(p.role, "min_values", 2))
            items = [(c, c) for c in cols]
            choices[p.name] = ([(NONE_TEXT, None)] if p.default is None else []) + items
        return choices

    def _rebuild_params(self) -> None:
        method = self.method_obj
        if method is None:
            return
        params = [*self.spec.options, *method_params(method)]
        choices = self._role_choices(params)
        key = (method.name, repr(choices))
        if key == self._panel_key:
            return
        old = {}
        if self.params is not None:
            same_method = self._panel_key is not None and self._panel_key[0] == method.name
            for pname, field in self.params.fields.items():
                try:
                    value = field.value()
                except ValueError:  # an entry being typed: not carried over
                    continue
                # to another method, only what the user changed: its own defaults otherwise
                if same_method or value != getattr(self.params.params.get(pname), "default", value):
                    old[pname] = value
            self.params_layout.removeWidget(self.params.native)
            self.params.native.setParent(None)
            self.params.native.deleteLater()
        self.method.setToolTip(method.description)
        self.params = ParamPanel(params, choices=choices)
        for pname, value in old.items():
            if pname in self.params.fields and (pname not in choices or value in [v for _, v in choices[pname]]):
                self.params.set(**{pname: value})
        self.params.changed_connect(self._update_reason)
        I.compact_combos(self.params.native)
        self.params_layout.insertWidget(0, self.params.native)
        self._panel_key = key
        if getattr(self, "scroll_area", None) is not None:
            I.fit_width(self)

    def _update_reason(self) -> None:
        if not self._refreshing:
            self.controls.set_reason(self.why_not())

    # ----------------------------------------------------------------------- run
    def run_params(self) -> dict[str, Any]:
        """The task's options and the method's parameters from the editors, plus the device."""
        params = self.params.values() if self.params is not None else {}
        params["device"] = self.controls.device_value
        return params

    def start(self) -> TaskRun | None:
        """Run the task with the current choices (what the Run button does)."""
        why = self.why_not()
        if why:
            self.controls.show_error(f"Cannot run: {why}")
            return None
        layer, inputs, params = self.spots_layer, self.run_inputs(), self.run_params()
        context = {k: v for k, v in inputs.items() if k != self.spec.data_input.name}
        self.controls.loss.clear(self.title)
        run = TaskRun(self.task, inputs, self.method_name, params, viewer=self.viewer,
                      on_event=self.controls.loss.add_event,
                      on_result=lambda result: self._on_result(layer, result, context),
                      on_error=lambda exc: self.controls.show_error(error_message(self.task, exc)),
                      on_finish=self._on_finish, postprocess=self.results.worker_postprocess())
        self.last_run = run
        self.controls.set_running(True)
        self.spots.setEnabled(False)
        run.start()
        return run

    def cancel(self) -> None:
        """Stop the running task at its next progress event; nothing is written."""
        if self.last_run is not None:
            self.last_run.cancel()

    def why_not(self) -> str:
        """Why Run is disabled; with no spots, also why napari-spatialdata's layers are not offered."""
        reason = super().why_not()
        if reason == I.NO_SPOTS:
            left_out = I.not_offered_reason(self.viewer)
            if left_out:
                return left_out
        return reason

    def _on_result(self, layer: Any, result: Any, context: dict[str, Any]) -> None:
        from ._spatialdata_layers import ensure_spots_layer

        ensure_spots_layer(layer)  # our AnnData back in metadata['adata'] if napari-spatialdata replaced it
        self.controls.loss.finish(result.history)
        self.results.show_result(layer, result, **context)

    def _on_finish(self, run: TaskRun) -> None:
        self.spots.setEnabled(True)
        self.controls.set_running(False)
        if run.cancelled:
            self.controls.loss.cancelled()
        self.refresh()

__all__ = ["TaskWidget"]
