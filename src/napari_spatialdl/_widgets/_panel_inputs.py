"""A task panel's inputs: whose data each belongs to, what Run gets, what is checked first.

:class:`PanelInputs` is mixed into :class:`._panel.TaskWidget`: ``owner`` finds the AnnData an
input belongs to (the spec's ``of=``), ``run_inputs`` collects the inputs by their API names,
``why_not`` says in plain words why Run is disabled and the way out, naming only layers and
columns that exist; the setters choose inputs by their API argument names
(``set_input('labels_key', 'cell_type')``).
"""

from __future__ import annotations

from typing import Any

from ..tasks._spec import BATCH, DATA, LABELS, LAYER, REFERENCE
from . import _inputs as I

ROW_LABELS = {DATA: "spots", REFERENCE: "reference", LABELS: "labels column", BATCH: "batch column"}


class PanelInputs:
    """Inputs, Run's preconditions and the scripting setters of a task panel (on ``TaskWidget``'s state)."""

    def owner(self, of: str | None) -> Any:
        """The AnnData an input belongs to (``of`` names a data input; None: the task's data)."""
        name = of or self.spec.data_input.name
        inp = self.spec.input(name)
        return self.adata if inp.role == DATA else self.inputs[name].value()

    def owner_words(self, of: str | None) -> str:
        name = of or self.spec.data_input.name
        if self.spec.input(name).role == DATA:
            return f"the spots of '{self.spots.currentText()}'"
        text = self.inputs[name].combo.currentText()
        return "the reference " + (text[len("file: "):] if text.startswith("file: ") else f"({text})")

    def _visible(self, inp: Any) -> bool:
        method = self.method_obj
        if inp.role == REFERENCE:
            return method is None or inp.name not in method.refuses
        if inp.of is not None and self.spec.input(inp.of).role == REFERENCE:
            return self._visible(self.spec.input(inp.of)) and self.owner(inp.of) is not None
        return True

    def _previous(self, name: str) -> Any:
        from ._overlay import results_of

        adata = self.adata
        records = results_of(adata, self.task) if adata is not None else []
        return records[-1]["params"].get(name) if records else None

    def run_inputs(self) -> dict[str, Any]:
        """The task's inputs by argument name, as the panel has them."""
        out: dict[str, Any] = {}
        for inp in self.spec.inputs:
            widget = self.inputs[inp.name]
            if not self._visible(inp):
                continue
            if inp.role == DATA:
                value = self.adata
            elif inp.role == REFERENCE:
                value = widget.value()
            elif inp.role == LAYER:
                value = widget.currentData()
            else:
                value = widget.currentText() or None
            if value is not None or inp.required:
                out[inp.name] = value
        return out

    def why_not(self) -> str:
        """Why Run is disabled, in plain words with the way out ('' when it can run)."""
        if self.last_run is not None and self.last_run.running:
            return "Running…"
        if self.adata is None:
            return I.NO_SPOTS
        method = self.method_obj
        if method is None:
            return f"No {self.task} method is installed."
        for inp in self.spec.inputs:
            if not self._visible(inp):
                continue
            reason = self._input_reason(inp, method)
            if reason:
                return reason
        if self.params is not None:
            try:
                self.params.values()
            except ValueError as exc:
                return f"{str(exc)[:1].upper()}{str(exc)[1:]}."
        return ""

    def _input_reason(self, inp: Any, method: Any) -> str:
        widget = self.inputs[inp.name]
        if inp.role == REFERENCE:
            if widget.value() is None and (inp.required or inp.name in method.needs):
                return ("Choose a reference: open an annotated .h5ad file (Open… beside 'reference'), "
                        "or pick a spots layer that carries one.")
            return ""
        owner = self.owner(inp.of)
        if owner is None:
            return ""
        what = self.owner_words(inp.of)
        if inp.role in (BATCH, LABELS):
            if widget.count() == 0:
                return self._no_column_reason(inp, what)
            if not widget.currentText():
                return f"Choose the {ROW_LABELS[inp.role]} of {what}: {inp.doc}."
        if inp.role == LAYER and method.counts:
            return I.counts_reason(owner, widget.currentData(), what, self._row_label(inp))
        return ""

    def _no_column_reason(self, inp: Any, what: str) -> str:
        if inp.role == BATCH:
            return (f"{what[:1].upper()}{what[1:]} have no batch column: an obs column saying which "
                    "section or sample each spot comes from (at least two, each with several spots). "
                    "Open data from several sections, or add such a column.")
        ref = self.inputs.get(inp.of) if inp.of else None
        if getattr(ref, "is_self", False):
            return ("The spots have no labels yet: draw and assign regions first (Annotate regions), "
                    "or choose another reference.")
        return (f"{what[:1].upper()}{what[1:]} has no column of cell types (an obs column naming at least "
                "two cell types): choose another reference.")

    # ---------------------------------------------------------------- scripting
    def set_method(self, name: str) -> None:
        """Choose the method by its registry name."""
        index = self.method.findData(name)
        if index < 0:
            raise ValueError(f"No {self.task} method {name!r} in the list.")
        self.method.setCurrentIndex(index)

    def set_spots(self, layer: Any) -> None:
        """Choose the spots layer (by layer or name)."""
        index = self.spots.findText(str(getattr(layer, "name", layer)))
        if index < 0:
            raise ValueError(f"{layer!r} is not a spots layer with an AnnData.")
        self.spots.setCurrentIndex(index)

    def set_input(self, name: str, value: str | None) -> None:
        """Choose a column or layer input by its argument name (``labels_key``, ``layer``)."""
        combo = self.inputs[name]
        text = I.X_TEXT if value is None and self.spec.input(name).role == LAYER else str(value)
        index = combo.findText(text)
        if index < 0:
            offered = [combo.itemText(i) for i in range(combo.count())]
            raise ValueError(f"{value!r} is not offered for {name} (offered: {offered}).")
        combo.setCurrentIndex(index)
        self._update_reason()

    def set_reference(self, reference: Any, labels_key: str | None = None, name: str = "reference") -> None:
        """Choose the reference: an AnnData, or a path to an .h5ad; optionally its labels column."""
        from anndata import AnnData

        picker = next(self.inputs[i.name] for i in self.spec.inputs if i.role == REFERENCE)
        if isinstance(reference, AnnData):
            picker.add(name, reference)
        else:
            picker.load(reference)
        if labels_key is not None:
            self.set_labels_key(labels_key)

    def set_labels_key(self, key: str) -> None:
        self.set_input(next(i.name for i in self.spec.inputs if i.role == LABELS), key)

    def set_batch_key(self, key: str) -> None:
        self.set_input(next(i.name for i in self.spec.inputs if i.role == BATCH), key)



__all__ = ["ROW_LABELS", "PanelInputs"]
