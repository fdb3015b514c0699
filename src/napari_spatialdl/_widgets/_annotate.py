"""The Annotate panel and its result view: the predicted type, its confidence, 'unassigned' grey.

When most spots come out 'unassigned', the view says why (the highest confidence reached and the
threshold) and offers the fix: a button that sets a threshold most spots pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QPushButton

from .._constants import CELL_TYPE_KEY, CONFIDENCE_KEY, UNASSIGNED
from ..layers import default_palette
from ..tasks._derived import reference_colors
from ._overlay import ResultView, color_by, save_borders
from ._panel import TaskWidget
from ._spatialdata_layers import spots_adata

UNASSIGNED_COLOR = "#e6e6e6"
UNASSIGNED_BORDER = "#404040"


class AnnotateView(ResultView):
    """The predicted cell type with legend; confidence as opacity or its own map; 'unassigned' grey."""

    task = "annotate"
    VIEWS = ("cell type (opacity = confidence)", "cell type", "confidence")

    def _build(self) -> None:
        self.view = QComboBox()
        self.view.addItems(list(self.VIEWS))
        self.form.addRow("show", self.view)
        self.view.currentIndexChanged.connect(self.redraw)
        self.fix_button = QPushButton()
        self.fix_button.hide()
        self.fix_button.clicked.connect(self._apply_fix)
        self.layout().addWidget(self.fix_button)
        self.on_fix: Any = None  # set by the panel: called with the suggested threshold
        self._suggested: float | None = None

    @property
    def label_key(self) -> str:
        return self.keys.get("cell_type", CELL_TYPE_KEY)

    @property
    def confidence_key(self) -> str:
        return self.keys.get("confidence", CONFIDENCE_KEY)

    def _prepare(self, layer: Any, result: Any) -> None:
        adata = spots_adata(layer)
        colors = reference_colors(self.context.get("reference"), self.context.get("labels_key"))
        col = adata.obs[self.label_key]
        cats = [str(c) for c in col.cat.categories] if hasattr(col, "cat") else sorted(map(str, col.dropna().unique()))
        palette = default_palette(len(cats))
        adata.uns[f"{self.label_key}_colors"] = [
            UNASSIGNED_COLOR if c == UNASSIGNED else colors.get(c, palette[i]) for i, c in enumerate(cats)]

    def redraw(self, *_: Any) -> None:
        adata = self.adata
        if self._updating or adata is None or self.record is None:
            return
        view, label_key, conf_key = self.view.currentText(), self.label_key, self.confidence_key
        has_conf = conf_key in adata.obs
        labels = adata.obs[label_key].astype(object)
        unassigned = np.asarray(labels == UNASSIGNED)
        if view == "confidence" and has_conf:
            color_by(self.viewer, self.layer, conf_key, cmap="viridis", contrast_limits=(0.0, 1.0),
                     features=[label_key])
            self._mark_unassigned(unassigned)
            self.status.setText(f"Confidence of the predicted cell type (0 to 1); the {int(unassigned.sum())} "
                                f"'{UNASSIGNED}' spots have a dark rim.")
        else:
            color_by(self.viewer, self.layer, label_key, features=[conf_key] if has_conf else [])
            if view == self.VIEWS[0] and has_conf:
                conf = np.clip(adata.obs[conf_key].to_numpy(dtype=float), 0, 1)
                rgba = np.array(self.layer.face_color, dtype=float)
                rgba[:, 3] = np.where(np.isfinite(conf), 0.2 + 0.8 * conf, 1.0)
                self.layer.face_color = rgba
            self._mark_unassigned(unassigned)
            counts = labels[~unassigned].value_counts()
            top = ", ".join(f"{k} {v}" for k, v in counts.head(3).items())
            self.status.setText(f"Predicted cell type of each spot ({top or 'none'}"
                                f"{', …' if len(counts) > 3 else ''}); {int(unassigned.sum())} of {adata.n_obs} "
                                f"'{UNASSIGNED}' (pale grey, dark rim)."
                                + (" Opacity shows the confidence." if view == self.VIEWS[0] else ""))
        self._explain_unassigned(unassigned, adata.obs[conf_key].to_numpy(dtype=float) if has_conf else None)

    def _explain_unassigned(self, unassigned: np.ndarray, conf: np.ndarray | None) -> None:
        """Most spots unassigned: why (highest confidence vs the threshold), and a way out."""
        threshold = self.record["params"].get("threshold") if self.record else None
        if conf is None or threshold is None or unassigned.mean() <= 0.5:
            self._suggested = None
            self.fix_button.hide()
            return
        top = float(np.nanmax(conf))
        # a threshold that 80 % of the spots pass, rounded down to 0.05
        self._suggested = max(0.0, float(np.floor(np.nanpercentile(conf, 20) * 20) / 20))
        self.status.setText(
            self.status.text() + f" Most spots are '{UNASSIGNED}' because their confidence is below the "
            f"threshold {float(threshold):g}; the highest confidence reached is {top:.2f}. A lower "
            f"threshold labels more spots (0 labels every spot).")
        self.fix_button.setText(f"Run again at threshold {self._suggested:g}")
        self.fix_button.setToolTip(f"At {self._suggested:g}, about 80 % of the spots get a label.")
        self.fix_button.setVisible(self.on_fix is not None)

    def _apply_fix(self) -> None:
        if self.on_fix is not None and self._suggested is not None:
            self.on_fix(self._suggested)

    def _mark_unassigned(self, unassigned: np.ndarray) -> None:
        from matplotlib.colors import to_rgba

        from ._overlay import _BORDER_META

        layer = self.layer
        if not unassigned.any():
            return
        rgba = np.array(layer.face_color, dtype=float)
        rgba[unassigned] = to_rgba(UNASSIGNED_COLOR, 0.55)
        layer.face_color = rgba
        save_borders(layer)
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


class AnnotateWidget(TaskWidget):
    """Annotate: a cell type per spot with its confidence, 'unassigned' when unsure."""

    task = "annotate"
    title = "Annotate"
    blurb = ("Transfer labels from an annotated reference to every spot, with a confidence; spots "
             "below the threshold stay 'unassigned'. Choose the spots themselves as reference to "
             "learn from regions you drew and label the rest.")
    allow_self_reference = True
    view_class = AnnotateView

    def __init__(self, napari_viewer: Any, parent: Any = None):
        super().__init__(napari_viewer, parent)
        self.results.on_fix = self._rerun_with_threshold

    def _rerun_with_threshold(self, threshold: float) -> None:
        if self.params is not None and "threshold" in self.params.fields:
            self.params.set(threshold=threshold)
            self.start()


__all__ = ["AnnotateView", "AnnotateWidget"]
