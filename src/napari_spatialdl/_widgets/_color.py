"""The "Colour spots" widget: colour the spots by a gene, an obs column or an obsm column."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QWidget,
)

from ..layers import META_ADATA, META_COLOR, colorable_keys
from ._compat import real
from ._inputs import NarrowPanel, fit_width, scrolled_layout
from ._legend import SpotsLegend, is_spots_layer
from ._viewer import color_spots

SOURCES = {"genes": "Gene", "obs": "Observation (obs column)", "obsm": "obsm column (e.g. proportions)"}
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "cividis", "turbo", "Reds", "Blues",
             "Greens", "Purples", "coolwarm", "RdBu_r")
X_LABEL = "X"


class ColorSpotsWidget(NarrowPanel):
    """Choose a spots layer and what colours it; shows the legend or colour bar.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer = real(napari_viewer)
        self._keys: dict[str, list[str]] = {"genes": [], "obs": [], "obsm": []}
        self._busy = False

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The spots layer to colour (made by the napari-spatialdl reader or show).")
        self.source_combo = QComboBox()
        for source, text in SOURCES.items():
            self.source_combo.addItem(text, source)
        self.search = QLineEdit()
        self.search.setPlaceholderText("search...")
        self.search.setClearButtonEnabled(True)
        self.key_list = QListWidget()
        self.key_list.setUniformItemSizes(True)
        self.key_list.setMinimumHeight(140)
        self.key_list.setMinimumWidth(160)
        self.count_label = QLabel("")
        self.adata_layer_combo = QComboBox()
        self.adata_layer_combo.setToolTip("Gene values from adata.X or one of adata.layers.")
        self.cmap_combo = QComboBox()
        self.cmap_combo.addItems(list(COLORMAPS))
        self.auto_limits = QCheckBox("auto")
        self.auto_limits.setToolTip("Limits from the values' minimum and maximum.")
        self.auto_limits.setChecked(True)
        self.low = QDoubleSpinBox()
        self.high = QDoubleSpinBox()
        for box in (self.low, self.high):
            box.setRange(-1e12, 1e12)
            box.setDecimals(3)
            box.setKeyboardTracking(False)
            box.setEnabled(False)
            box.setMinimumWidth(60)
            box.setMaximumWidth(110)  # the +-1e12 range would otherwise make the dock very wide
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.legend = SpotsLegend(napari_viewer)

        self.limits_row = QWidget()
        limits = QHBoxLayout(self.limits_row)
        limits.setContentsMargins(0, 0, 0, 0)
        limits.addWidget(self.auto_limits)
        limits.addWidget(self.low)
        limits.addWidget(self.high)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.form = form
        form.addRow("Spots layer", self.layer_combo)
        form.addRow("Colour by", self.source_combo)
        form.addRow("Find", self.search)
        form.addRow(self.key_list)
        form.addRow(self.count_label)
        form.addRow("Gene values from", self.adata_layer_combo)
        form.addRow("Colormap", self.cmap_combo)
        form.addRow("Limits", self.limits_row)
        layout = scrolled_layout(self)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(self.legend)
        layout.addStretch(1)

        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.source_combo.currentIndexChanged.connect(self._fill_keys)
        self.search.textChanged.connect(self._fill_keys)
        self.key_list.currentTextChanged.connect(self._on_key_chosen)
        self.adata_layer_combo.currentIndexChanged.connect(self._reapply)
        self.cmap_combo.currentIndexChanged.connect(self._reapply)
        self.auto_limits.toggled.connect(self._on_auto_toggled)
        self.low.valueChanged.connect(self._reapply)
        self.high.valueChanged.connect(self._reapply)
        napari_viewer.layers.events.inserted.connect(self._refresh_layers)
        napari_viewer.layers.events.removed.connect(self._refresh_layers)
        napari_viewer.layers.events.moved.connect(self._refresh_layers)
        napari_viewer.layers.selection.events.active.connect(self._on_active_layer)
        self._refresh_layers()
        fit_width(self)

    # ------------------------------------------------------------------ state
    @property
    def spots_layer(self) -> Any:
        """The spots layer chosen in the drop-down (None when there is none)."""
        return self.layer_combo.currentData()

    @property
    def source(self) -> str:
        """``"genes"``, ``"obs"`` or ``"obsm"``."""
        return self.source_combo.currentData()

    @property
    def current_key(self) -> str | None:
        """The key selected in the list."""
        item = self.key_list.currentItem()
        return item.text() if item is not None else None

    def _spots_layers(self) -> list[Any]:
        return [lyr for lyr in self.viewer.layers if is_spots_layer(lyr)]

    # ------------------------------------------------------------------ events
    def _refresh_layers(self, event: Any = None) -> None:
        current = self.spots_layer
        layers = self._spots_layers()
        self._busy = True
        try:
            self.layer_combo.clear()
            for lyr in reversed(layers):  # top-most first, as in the layer list
                self.layer_combo.addItem(lyr.name, lyr)
            if current is not None and any(current is lyr for lyr in layers):
                self.layer_combo.setCurrentIndex(self.layer_combo.findText(current.name))
        finally:
            self._busy = False
        if self.spots_layer is not current or event is None:
            self._on_layer_changed()

    def _on_active_layer(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if is_spots_layer(active) and active is not self.spots_layer:
            index = self.layer_combo.findText(active.name)
            if index >= 0:
                self.layer_combo.setCurrentIndex(index)

    def _on_layer_changed(self, index: int | None = None) -> None:
        if self._busy:
            return
        layer = self.spots_layer
        adata = None if layer is None else layer.metadata.get(META_ADATA)
        self._keys = colorable_keys(adata) if adata is not None else {"genes": [], "obs": [], "obsm": []}
        self._busy = True
        try:
            self.adata_layer_combo.clear()
            self.adata_layer_combo.addItem(X_LABEL, None)
            for name in (list(adata.layers) if adata is not None else []):
                self.adata_layer_combo.addItem(name, name)
            state = {} if layer is None else (layer.metadata.get(META_COLOR) or {})
            if state.get("layer"):
                self.adata_layer_combo.setCurrentIndex(max(0, self.adata_layer_combo.findText(state["layer"])))
            if state.get("cmap") in COLORMAPS:
                self.cmap_combo.setCurrentText(state["cmap"])
            key = state.get("key")
            if key is not None:
                source = next((s for s in ("obs", "genes", "obsm") if key in self._keys[s]), None)
                if source is not None:
                    self.source_combo.setCurrentIndex(self.source_combo.findData(source))
        finally:
            self._busy = False
        if layer is not None:
            self.legend.follow(layer)
        self._fill_keys(select=(layer.metadata.get(META_COLOR) or {}).get("key") if layer is not None else None)
        if layer is None:
            self.message.setText("No spots layer: open a Space Ranger folder or .h5ad "
                                 "(File > Open) or a sample (File > Open Sample > napari-spatialdl).")
        else:
            self.message.setText("")

    def _fill_keys(self, *args: Any, select: str | None = None) -> None:
        keys = self._keys.get(self.source or "genes", [])
        text = self.search.text().strip().lower()
        shown = [k for k in keys if text in k.lower()] if text else keys
        self._busy = True
        try:
            self.key_list.clear()
            self.key_list.addItems(shown)
            if select is not None:
                items = self.key_list.findItems(select, Qt.MatchFlag.MatchExactly)
                if items:
                    self.key_list.setCurrentItem(items[0])
        finally:
            self._busy = False
        what = {"genes": "genes", "obs": "columns", "obsm": "columns"}.get(self.source or "genes", "keys")
        if text and not shown:
            self.count_label.setText(f"No {what[:-1]} matches '{self.search.text().strip()}' "
                                     f"(of {len(keys)} {what}).")
        else:
            self.count_label.setText(f"{len(shown)} of {len(keys)} {what}" if text else f"{len(keys)} {what}")
        genes = self.source == "genes"
        self.adata_layer_combo.setVisible(genes)  # only genes have values in X or a layer
        label = self.form.labelForField(self.adata_layer_combo)
        if label is not None:
            label.setVisible(genes)

    def _on_key_chosen(self, key: str) -> None:
        if not self._busy and key:
            self.apply()

    def _on_auto_toggled(self, auto: bool) -> None:
        self.low.setEnabled(not auto)
        self.high.setEnabled(not auto)
        self._reapply()

    def _reapply(self, *args: Any) -> None:
        if not self._busy and self.current_key:
            self.apply()

    def _show_numeric_rows(self, numeric: bool) -> None:
        """Colormap and limits only for numbers (a categorical colouring has neither)."""
        for widget in (self.cmap_combo, self.limits_row):
            widget.setVisible(numeric)
            label = self.form.labelForField(widget)
            if label is not None:
                label.setVisible(numeric)

    # ------------------------------------------------------------------ actions
    def set_key(self, key: str, source: str | None = None) -> None:
        """Select ``key`` (in ``source``, or wherever it is found) and colour the spots by it."""
        if source is None:
            source = next((s for s in ("obs", "genes", "obsm") if key in self._keys[s]), None)
            if source is None:
                raise KeyError(f"{key!r} is not a gene, obs column or obsm column of this layer's AnnData.")
        self._busy = True
        try:
            self.search.clear()
            self.source_combo.setCurrentIndex(self.source_combo.findData(source))
        finally:
            self._busy = False
        self._fill_keys(select=key)
        self.apply()

    def apply(self) -> None:
        """Colour the chosen layer by the selected key with the current options."""
        layer, key = self.spots_layer, self.current_key
        if layer is None or not key:
            return
        layer_key = self.adata_layer_combo.currentData() if self.source == "genes" else None
        limits = None if self.auto_limits.isChecked() else (self.low.value(), min(self.high.value(), 1e12))
        if limits is not None and limits[1] < limits[0]:
            self.message.setText("The upper limit is below the lower one.")
            return
        try:
            info = color_spots(layer, key, layer_key=layer_key, cmap=self.cmap_combo.currentText(),
                               contrast_limits=limits)
        except (KeyError, ValueError) as err:
            self.message.setText(f"<span style='color:#ff7070'>{err}</span>")
            return
        self.message.setText("")
        self._show_numeric_rows(info.kind == "numeric")
        if info.kind == "numeric" and info.limits is not None and self.auto_limits.isChecked():
            self._busy = True
            try:
                self.low.setValue(info.limits[0])
                self.high.setValue(info.limits[1])
            finally:
                self._busy = False
        self.legend.follow(layer)
