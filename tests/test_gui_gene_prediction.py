"""Impute in 'from a reference' mode, the way a biologist runs it (under xvfb-run, 1280 x 800).

    xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest tests/test_gui_gene_prediction.py

A spatial panel that measures only part of the genes, an annotated reference with all of them:
the Impute panel (from the Plugins menu) switched to 'Predict unmeasured genes from a reference'
offers only the methods that need a reference and shows the reference row; Run predicts the
genes typed into 'genes', a predicted gene is shown on the tissue like a measured one (legend in
plain words), the compact form (``genes='all'``, ``dense=False``) is reconstructed for the gene
chosen, and a saved file reopened shows the prediction again.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)"),
]


@pytest.fixture
def panel_and_reference():
    import napari_spatialdl as sdl

    spatial, reference = sdl.datasets.synthetic_tissue(0, n_spots=400, n_genes=120, n_cell_types=4,
                                                       n_reference_cells=600, image_size=500)
    panel = spatial[:, spatial.var_names[:80]].copy()  # the panel measures 80 of the 120 genes
    return panel, reference


def test_predict_genes_from_reference_in_the_impute_panel(make_napari_viewer, qtbot, tmp_path, panel_and_reference):
    from gui_helpers import (
        add_panel,
        assert_layout,
        canvas_shot,
        changed_at_spots,
        click_run,
        legend_docks,
        plain_image,
        plugin_viewer,
        save_window,
    )
    from qtpy.QtCore import Qt

    import napari_spatialdl as sdl
    from napari_spatialdl.layers import spot_colors
    from napari_spatialdl.tasks.gene_prediction import reconstruct

    panel, reference = panel_and_reference
    unmeasured = [g for g in reference.var_names if g not in panel.var_names]
    viewer = plugin_viewer(make_napari_viewer)
    sdl.show(panel, viewer, name="panel")
    from napari_spatialdl._widgets._viewer import find_spots_layer

    spots = find_spots_layer(viewer, panel)
    imp = add_panel(viewer, "Impute")

    # ---- denoising by default: no reference row, no reference methods
    assert not imp.from_reference and not imp.inputs["reference"].isVisible()
    assert imp.method.findData("transfer") < 0
    # ---- the mode 'from a reference': its methods only, the native one chosen, the reference row shown
    imp.mode.setCurrentIndex(imp.mode.findText("Predict unmeasured genes from a reference"))
    assert imp.method_name == "transfer"
    assert imp.method.findData("spatialdl") < 0 and imp.method.findData("knn_reference") >= 0
    assert imp.inputs["reference"].isVisible()
    # the editors hold the transfer model's own defaults, not the denoiser's values of the same names
    import inspect

    from napari_spatialdl.tasks.gene_prediction import predict_transfer

    defaults = inspect.signature(predict_transfer).parameters
    for name in ("hidden", "mask_rate", "max_epochs"):
        assert imp.params.fields[name].value() == defaults[name].default, name
    assert "Choose a reference" in imp.controls.reason.text() and not imp.run_button.isEnabled()
    imp.set_reference(reference, name="scRNA-seq reference")
    wanted = unmeasured[:4]
    imp.params.set(genes=",".join(wanted), max_epochs=4, finetune_epochs=2)
    viewer.reset_view()
    plain = plain_image(viewer, spots)
    click_run(qtbot, imp)

    table = panel.obsm["spatialdl_predicted_genes"]
    assert list(table.columns) == wanted and table.shape == (panel.n_obs, 4)
    assert np.isfinite(table.to_numpy()).all() and (table.to_numpy() >= 0).all()
    view = imp.results
    assert [view.gene.itemText(i) for i in range(view.gene.count())] == wanted
    assert [view.values.itemText(i) for i in range(view.values.count())] == ["predicted", "measured"]
    legend = spots.metadata["spatialdl_legend"]
    gene = view.gene.currentText()
    assert legend.key == f"spatialdl_predicted_genes:{gene}"
    assert legend.label == f"{gene}, predicted from the reference"
    assert "not measured in this data" in view.status.text()
    expected, _, _ = spot_colors(panel, legend.key, cmap="magma")
    np.testing.assert_allclose(np.asarray(spots.face_color), expected, atol=1e-6)
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    assert_layout(viewer, imp)
    assert len(legend_docks(viewer)) == 1
    # 'measured' for a gene the panel lacks: said, nothing recoloured
    view.values.setCurrentText("measured")
    assert "not measured in this data" in view.status.text()
    save_window(viewer, "gene_prediction_1_predicted")

    # ---- every gene, compact: a chosen gene is reconstructed from factors x loadings
    imp.params.set(genes="all", dense=False)
    click_run(qtbot, imp)
    assert "spatialdl_predicted_genes_factors" in panel.obsm
    assert view.gene.count() == len(unmeasured)
    view.values.setCurrentText("predicted")
    view.gene.setCurrentIndex(view.gene.findText(unmeasured[-1]))
    legend = spots.metadata["spatialdl_legend"]
    assert legend.label == f"{unmeasured[-1]}, predicted from the reference"
    values = reconstruct(panel, unmeasured[-1], key="spatialdl_predicted_genes_factors")[unmeasured[-1]].to_numpy()
    assert values.std() > 0
    expected, _, _ = spot_colors(panel, legend.key, cmap="magma")
    np.testing.assert_allclose(np.asarray(spots.face_color), expected, atol=1e-6)
    # both results offered side by side
    assert view.which.count() == 2 and view.which.isVisible()
    assert_layout(viewer, imp)
    save_window(viewer, "gene_prediction_2_compact")

    # ---- saved, closed, reopened: the panel offers the predictions already in the file
    from napari_spatialdl.io import write_h5ad

    path = write_h5ad(panel, tmp_path / "panel.h5ad")
    viewer.layers.clear()
    viewer.open(str(path), plugin="napari-spatialdl")
    imp.refresh()
    view = imp.results
    assert view.show_button.isEnabled() and "in the data" in view.status.text()
    qtbot.mouseClick(view.show_button, Qt.MouseButton.LeftButton)
    reopened = imp.spots_layer
    legend = reopened.metadata["spatialdl_legend"]
    assert legend.label.endswith("predicted from the reference")
    assert_layout(viewer, imp)
    save_window(viewer, "gene_prediction_3_reopened")


def test_compact_imputation_is_shown_gene_by_gene(make_napari_viewer, qtbot, panel_and_reference):
    """Denoising with ``dense=False`` writes no observations x genes layer: the view decodes the
    chosen gene only, raw and imputed on one scale, and the run is recorded as the task's."""
    from gui_helpers import add_panel, assert_layout, click_run, plugin_viewer, save_window

    import napari_spatialdl as sdl
    from napari_spatialdl._widgets._viewer import find_spots_layer
    from napari_spatialdl.layers import spot_colors
    from napari_spatialdl.tasks import run_records
    from napari_spatialdl.tasks.imputation import reconstruct

    panel, _ = panel_and_reference
    viewer = plugin_viewer(make_napari_viewer)
    sdl.show(panel, viewer, name="panel")
    spots = find_spots_layer(viewer, panel)
    imp = add_panel(viewer, "Impute")
    assert imp.method_name == "spatialdl"
    imp.params.set(max_epochs=3, dense=False)
    click_run(qtbot, imp)
    assert "spatialdl_imputed" not in panel.layers and "spatialdl_imputed_latent" in panel.obsm
    assert "impute" in run_records(panel)
    view = imp.results
    gene = view.gene.currentText()
    assert gene in panel.var_names and view.values.currentText() == "imputed"
    legend = spots.metadata["spatialdl_legend"]
    assert legend.label == f"{gene}, imputed"
    decoded = reconstruct(panel, gene)[gene].to_numpy()
    expected, _, _ = spot_colors(panel, f"spatialdl_imputed_latent:{gene}", cmap="magma",
                                 contrast_limits=view.limits(panel, gene))
    np.testing.assert_allclose(np.asarray(spots.face_color), expected, atol=1e-6)
    assert decoded.std() > 0
    # raw on the same colour scale: other colours
    imputed_rgba = np.asarray(spots.face_color).copy()
    view.values.setCurrentText("raw")
    assert spots.metadata["spatialdl_legend"].limits == legend.limits
    assert not np.allclose(np.asarray(spots.face_color), imputed_rgba)
    assert_layout(viewer, imp)
    save_window(viewer, "impute_compact")
