"""Annotate regions by hand: polygons drawn on the tissue become a categorical ``adata.obs`` column.

Draw polygons, rectangles or ellipses in a Shapes layer over the tissue, name each (the name
typed before drawing, or edited in the table), and press *Assign*: every spot inside a shape
gets its name in ``adata.obs[<column>]``; spots outside every shape stay missing (NaN). The
column can then be the labels column of the Annotate panel with the spots themselves as
reference: the model learns from the annotated spots and labels the rest.

Shapes and spots are compared in world coordinates (each layer's scale/translate/affine is
applied), so a Shapes layer drawn over the image lines up with the Points layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..regions import (
    META_REGIONS,
    META_REGIONS_KEY,
    REGION_FACE_ALPHA,
    region_counts,
    write_regions,
)
from ._compat import real
from ._inputs import (
    NarrowPanel,
    compact_combos,
    fit_width,
    scrolled_layout,
    set_items,
    spots_layers,
)
from ._regions_geometry import (
    REGION_FEATURE,
    regions_of_spots,
    shape_names,
    shapes_in_spots_space,
    spots_world_yx,
    to_world,
)
from ._spatialdata_layers import spots_adata

if TYPE_CHECKING:
    import napari


class RegionsWidget(NarrowPanel):
    """Draw regions on the tissue and write them to ``adata.obs`` as training labels."""

    #: emitted with the obs column name after regions were written
    assigned = Signal(str)

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = real(napari_viewer)
        self._syncing = False
        self._shapes_connected: Any = None
        layout = scrolled_layout(self)
        intro = QLabel(
            "Draw regions on the tissue (polygon, rectangle or ellipse tools of the regions layer), "
            "name each one, then press Assign: the spots inside get the region's name in the "
            "chosen obs column; spots outside stay unlabelled. Use that column as labels in "
            "Annotate (reference: the spots themselves) to label the rest of the tissue."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        layout.addLayout(form)
        self.spots = QComboBox()
        form.addRow("spots", self.spots)
        shapes_row = QHBoxLayout()
        self.shapes = QComboBox()
        self.new_button = QPushButton("New layer")
        self.new_button.setToolTip("Add a Shapes layer over the tissue to draw regions in.")
        shapes_row.addWidget(self.shapes, 1)
        shapes_row.addWidget(self.new_button)
        form.addRow("regions layer", shapes_row)
        self.name = QLineEdit("region 1")
        self.name.setToolTip("The name given to the next shape you draw.")
        name_row = QHBoxLayout()
        name_row.addWidget(self.name, 1)
        self.rename_button = QPushButton("Rename")
        self.rename_button.setToolTip("Give the selected shapes this name.")
        name_row.addWidget(self.rename_button)
        form.addRow("next region", name_row)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["shape", "region name"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setMinimumHeight(110)
        layout.addWidget(self.table)
        self.key = QLineEdit("annotated_region")
        self.key.setToolTip("The adata.obs column the regions are written to.")
        form2 = QFormLayout()
        form2.addRow("obs column", self.key)
        layout.addLayout(form2)
        self.assign_button = QPushButton("Assign regions to spots")
        layout.addWidget(self.assign_button)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        layout.addStretch(1)

        compact_combos(self)
        fit_width(self)
        self.new_button.clicked.connect(lambda: self.new_regions_layer())
        self.rename_button.clicked.connect(self.rename_selected)
        self.assign_button.clicked.connect(self._assign_clicked)
        self.name.textChanged.connect(self._update_defaults)
        self.shapes.currentIndexChanged.connect(lambda *_: self._follow_shapes())
        self.table.itemChanged.connect(self._table_edited)
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(self.viewer.layers.events, name, None)
            if emitter is not None:
                emitter.connect(lambda *_: self.refresh())
        self.refresh()

    # ------------------------------------------------------------------------ state
    @property
    def spots_layer(self) -> Any:
        name = self.spots.currentText()
        return next((lyr for lyr in spots_layers(self.viewer) if lyr.name == name), None)

    @property
    def shapes_layer(self) -> Any:
        from napari.layers import Shapes

        name = self.shapes.currentText()
        return next((lyr for lyr in self.viewer.layers if isinstance(lyr, Shapes) and lyr.name == name), None)

    def refresh(self) -> None:
        from napari.layers import Shapes

        set_items(self.spots, [(lyr.name, lyr.name) for lyr in spots_layers(self.viewer)])
        shapes = [lyr for lyr in self.viewer.layers if isinstance(lyr, Shapes)]
        # prefer our own regions layers
        shapes.sort(key=lambda lyr: not lyr.metadata.get(META_REGIONS, False))
        set_items(self.shapes, [(lyr.name, lyr.name) for lyr in shapes])
        self._follow_shapes()
        ok = self.spots_layer is not None and self.shapes_layer is not None
        self.assign_button.setEnabled(ok)
        if self.spots_layer is None:
            self.assign_button.setToolTip("Open spots first (a Points layer with an AnnData).")
        elif self.shapes_layer is None:
            self.assign_button.setToolTip("Make a regions layer and draw on the tissue first.")
        else:
            self.assign_button.setToolTip("")

    # ---------------------------------------------------------------- shapes layer
    def new_regions_layer(self, name: str = "regions") -> Any:
        """Add a Shapes layer over the tissue, in the spots' pixel space, ready to draw polygons."""
        spots = self.spots_layer
        kwargs: dict[str, Any] = {}
        if spots is not None:
            kwargs = {"scale": spots.scale[-2:], "translate": spots.translate[-2:], "units": spots.units[-2:]}
            kwargs["edge_width"] = max(1.0, float(np.mean(spots.size)) * 0.15) if len(spots.data) else 2.0
        layer = self.viewer.add_shapes(
            name=name,
            ndim=2,
            features=pd.DataFrame({REGION_FEATURE: pd.Series([], dtype=object)}),
            feature_defaults={REGION_FEATURE: self.name.text().strip() or "region 1"},
            text={"string": "{" + REGION_FEATURE + "}", "size": 12, "color": "white",
                  "anchor": "center"},
            face_color=[1.0, 1.0, 1.0, 0.12],
            edge_color="yellow",
            metadata={META_REGIONS: True},
            **kwargs,
        )
        self.refresh()
        self.shapes.setCurrentIndex(self.shapes.findText(layer.name))
        self._follow_shapes()
        try:
            layer.mode = "add_polygon"
        except Exception:  # drawing modes need a canvas; scripts can still add shapes
            pass
        return layer

    def _follow_shapes(self) -> None:
        layer = self.shapes_layer
        if layer is self._shapes_connected:
            self._sync_table()
            return
        if self._shapes_connected is not None:
            for emitter in (self._shapes_connected.events.data, self._shapes_connected.events.features):
                try:
                    emitter.disconnect(self._on_shapes_changed)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self._shapes_connected = layer
        if layer is not None:
            saved_key = layer.metadata.get(META_REGIONS_KEY)
            if saved_key:  # a regions layer restored from a file: assign to its column again
                self.key.setText(str(saved_key))
            if REGION_FEATURE not in layer.features.columns:
                features = layer.features.copy()
                features[REGION_FEATURE] = pd.Series([""] * len(layer.data), dtype=object)
                layer.features = features
            layer.events.data.connect(self._on_shapes_changed)
            layer.events.features.connect(self._on_shapes_changed)
            self._update_defaults()
        self._sync_table()

    def _on_shapes_changed(self, event: Any = None) -> None:
        self._next_name_after_draw()
        self._sync_table()

    def _next_name_after_draw(self) -> None:
        """After a shape is drawn with the default name 'region N', offer 'region N+1'."""
        layer = self.shapes_layer
        text = self.name.text().strip()
        if layer is None or not text.startswith("region "):
            return
        suffix = text[len("region "):]
        if suffix.isdigit() and text in shape_names(layer):
            self.name.setText(f"region {int(suffix) + 1}")

    def _update_defaults(self, *_: Any) -> None:
        layer = self.shapes_layer
        if layer is None:
            return
        name = self.name.text().strip()
        if name:
            layer.feature_defaults = {**{c: layer.feature_defaults[c].iloc[0]
                                         for c in layer.feature_defaults.columns},
                                      REGION_FEATURE: name}

    def _sync_table(self) -> None:
        layer = self.shapes_layer
        self._syncing = True
        try:
            if layer is None:
                self.table.setRowCount(0)
                return
            names = shape_names(layer)
            self.table.setRowCount(len(names))
            for i, (kind, name) in enumerate(zip(layer.shape_type, names)):
                item = QTableWidgetItem(f"{i + 1}: {kind}")
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(i, 0, item)
                self.table.setItem(i, 1, QTableWidgetItem(name))
        finally:
            self._syncing = False

    def _table_edited(self, item: QTableWidgetItem) -> None:
        if self._syncing or item.column() != 1:
            return
        self.set_region_name(item.row(), item.text())

    def set_region_name(self, index: int, name: str) -> None:
        """Name shape ``index`` (0-based) of the regions layer."""
        layer = self.shapes_layer
        if layer is None:
            raise ValueError("No regions layer.")
        features = layer.features.copy()
        if REGION_FEATURE not in features.columns:
            features[REGION_FEATURE] = ""
        features[REGION_FEATURE] = features[REGION_FEATURE].astype(object)
        features.loc[features.index[index], REGION_FEATURE] = str(name).strip()
        layer.features = features
        layer.refresh_text()
        self._sync_table()

    def rename_selected(self) -> None:
        """Give the selected shapes the name typed in 'next region'."""
        layer = self.shapes_layer
        name = self.name.text().strip()
        if layer is None or not name:
            return
        for index in sorted(layer.selected_data):
            self.set_region_name(index, name)

    # ------------------------------------------------------------------------ assign
    def _assign_clicked(self) -> None:
        try:
            self.assign()
        except ValueError as exc:
            from napari.utils.notifications import show_error

            show_error(f"Regions: {exc}")

    def assign(self, key: str | None = None) -> pd.Series:
        """Write the region of every spot to ``adata.obs[key]`` and colour the spots by it."""
        points, shapes = self.spots_layer, self.shapes_layer
        if points is None:
            raise ValueError("no spots layer with an AnnData")
        if shapes is None or len(shapes.data) == 0:
            raise ValueError("draw at least one region (polygon, rectangle or ellipse) first")
        key = (key or self.key.text()).strip()
        if not key:
            raise ValueError("type the name of the obs column to write (e.g. 'annotated_region')")
        if key != self.key.text():
            self.key.setText(key)
        adata = spots_adata(points)
        regions = regions_of_spots(points, shapes)
        names = shape_names(shapes)
        column = write_regions(adata, key, regions, shapes=shapes_in_spots_space(points, shapes),
                               names=names, shape_types=list(shapes.shape_type))
        self._color_shapes(shapes, adata, key)
        counts = region_counts(regions)
        parts = [f"{name}: {n}" for name, n in counts.items() if name != "unlabelled"]
        self.summary.setText(
            f"Wrote adata.obs['{key}'] — " + ", ".join(parts)
            + f"; unlabelled: {counts['unlabelled']} of {adata.n_obs} spots."
        )
        from ._overlay import color_by

        color_by(self.viewer, points, key)
        self.assigned.emit(key)
        return column

    @staticmethod
    def _color_shapes(shapes: Any, adata: Any, key: str) -> None:
        """Outline (and lightly fill) every shape in its region's colour, as its spots are shown."""
        from matplotlib.colors import to_rgba_array

        from ..regions import saved_regions

        saved = saved_regions(adata, key)
        if saved is None or len(saved) != len(shapes.data):
            return
        edge = np.asarray(to_rgba_array(saved.colors), dtype=np.float32)
        face = edge.copy()
        face[:, 3] = REGION_FACE_ALPHA
        shapes.edge_color = edge
        shapes.face_color = face
        shapes.metadata[META_REGIONS_KEY] = key


__all__ = ["RegionsWidget", "regions_of_spots", "spots_world_yx", "to_world"]
