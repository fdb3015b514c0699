"""The reference picker: an ``.h5ad`` file, the reference a spots layer carries, another spots
layer, the spots themselves (where the task allows it) or nothing (where it is optional)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from ._inputs import set_items, spots_layers

if TYPE_CHECKING:
    from anndata import AnnData


class ReferencePicker(QWidget):
    """Where a reference comes from: a file, what a spots layer carries, another spots layer,
    the spots themselves (``allow_self``) or nothing (``optional``)."""

    def __init__(self, viewer: Any, on_change: Any, *, allow_self: bool = False, optional: bool = False):
        super().__init__()
        self.viewer = viewer
        self.allow_self = allow_self
        self.optional = optional
        self.files: dict[str, AnnData] = {}
        self._on_change = on_change
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setToolTip(
            "The annotated reference (single cells with a cell-type column): an .h5ad file, the "
            "reference a sample carries, or another spots layer"
            + (", or the spots themselves (labels drawn as regions)" if allow_self else "") + ".")
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Open an annotated reference (.h5ad file).")
        row.addWidget(self.combo, 1)
        row.addWidget(self.open_button)
        self.open_button.clicked.connect(self._choose_file)
        self.combo.currentIndexChanged.connect(lambda *_: self._on_change())

    def refill(self, spots_layer: Any) -> None:
        items: list[tuple[str, Any]] = [("(none)", None)] if self.optional else []
        preferred = None
        if spots_layer is not None:
            if spots_layer.metadata.get("reference") is not None:
                preferred = f"reference of '{spots_layer.name}'"
                items.append((preferred, ("carried", spots_layer.name)))
            if self.allow_self:
                items.append((f"'{spots_layer.name}' itself (its own labels)", ("self", spots_layer.name)))
        for layer in spots_layers(self.viewer):
            if spots_layer is None or layer.name != spots_layer.name:
                items.append((f"spots of '{layer.name}'", ("layer", layer.name)))
        items += [(f"file: {name}", ("file", name)) for name in self.files]
        texts = [t for t, _ in items]
        keep = self.combo.currentText() if self.combo.currentText() in texts else preferred
        set_items(self.combo, items, keep=keep, fallback_first=self.optional)

    def load(self, path: str | Path) -> AnnData:
        """Read an .h5ad reference and select it (a reference needs no coordinates: no warning)."""
        from ..io import read_h5ad

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*has no spot coordinates", category=UserWarning)
            adata = read_h5ad(path)
        self.add(Path(path).name, adata)
        return adata

    def add(self, name: str, adata: AnnData) -> None:
        """Offer an in-memory AnnData as a reference (for scripts), and select it."""
        self.files[name] = adata
        self._on_change()
        self.combo.setCurrentIndex(self.combo.findText(f"file: {name}"))

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Annotated reference", "", "AnnData (*.h5ad)")
        if not path:
            return
        try:
            self.load(path)
        except Exception as exc:  # any reader failure: said in a notification, the panel stays usable
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
        for layer in spots_layers(self.viewer):
            if layer.name == name:
                return layer.metadata.get("reference") if kind == "carried" else layer.metadata["adata"]
        return None


__all__ = ["ReferencePicker"]
