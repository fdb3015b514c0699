"""A session the way a biologist runs the plugin (under xvfb-run, window 1280 x 800).

    xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest tests/test_gui_session.py

Open the synthetic sample from napari's File > Open Sample, open Deconvolve and Annotate from the
Plugins menu (``add_plugin_dock_widget``), run each from its panel with few epochs set in the
parameter editors, then a second deconvolution beside the first, then the tabbed Spatial DL dock.
After each step: at most one legend, the window within the screen, the canvas at least about half
the window's width, the result's key written, and the canvas colours differ from the plain tissue
image where the spots are. Full-window screenshots are saved (see ``gui_helpers.SHOTS``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)"),
]


def test_sample_deconvolve_annotate_second_result(make_napari_viewer, qtbot):
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
    from napari.layers import Points
    from qtpy.QtCore import Qt

    from napari_spatialdl.tasks import get_method

    viewer = plugin_viewer(make_napari_viewer)
    viewer.open_sample("napari-spatialdl", "synthetic_tissue")
    spots = next(lyr for lyr in viewer.layers if isinstance(lyr, Points))
    adata = spots.metadata["adata"]

    # ---- Deconvolve from the Plugins menu: inputs found, Run ready
    deconv = add_panel(viewer, "Deconvolve")
    assert deconv.inputs["reference"].value() is spots.metadata["reference"]
    assert deconv.inputs["labels_key"].currentText() == "cell_type"
    native = get_method("deconvolve", "spatialdl")
    assert deconv.method.currentText() == native.label  # plain words; the technical line as tooltip
    assert deconv.method.itemData(deconv.method.currentIndex(), Qt.ItemDataRole.ToolTipRole) == native.description
    deconv.params.fields["max_epochs"].widget.value = 5  # through the editor
    viewer.reset_view()
    plain = plain_image(viewer, spots)
    click_run(qtbot, deconv)
    assert "spatialdl_proportions" in adata.obsm
    assert_layout(viewer, deconv)
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    legend = spots.metadata["spatialdl_legend"]
    ct = deconv.results.cell_type.currentText()
    assert legend.kind == "numeric" and legend.label == f"{ct} proportion"
    assert legend.key == f"spatialdl_proportions:{ct}"
    assert "Stopped" in deconv.controls.loss.status or "Done" in deconv.controls.loss.status
    save_window(viewer, "session_1_deconvolve")
    # the dominant type: categories, no numeric limits
    deconv.results.view.setCurrentText(deconv.results.DOMINANT)
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "categorical" and legend.limits is None and legend.label == "Dominant cell type"
    props = adata.obsm["spatialdl_proportions"]
    np.testing.assert_array_equal(adata.obs["spatialdl_dominant_cell_type"].astype(str).to_numpy(),
                                  np.asarray(props.columns)[props.to_numpy().argmax(axis=1)])

    # ---- Annotate: learn the regions from the spots themselves, at a threshold so high that most
    # spots stay unassigned: the view says why and offers the fix
    ann = add_panel(viewer, "Annotate")
    assert len(legend_docks(viewer)) == 1
    picker = ann.inputs["reference"]
    picker.combo.setCurrentIndex(picker.combo.findText(f"'{spots.name}' itself (its own labels)"))
    assert picker.is_self
    ann.set_labels_key("region")
    ann.params.set(max_epochs=3, n_members=2, threshold=0.99)
    click_run(qtbot, ann)
    labels = adata.obs["spatialdl_cell_type"].astype(str)
    assert (labels == "unassigned").mean() > 0.5
    view = ann.results
    assert view.fix_button.isVisible() and "highest confidence" in view.status.text()
    qtbot.mouseClick(view.fix_button, Qt.MouseButton.LeftButton)  # "Use threshold ... and run again"
    qtbot.waitUntil(lambda: ann.last_run.done, timeout=180_000)
    assert ann.last_run.error is None, ann.last_run.error
    labels = adata.obs["spatialdl_cell_type"].astype(str)
    assert (labels == "unassigned").mean() < 0.5
    assert_layout(viewer, ann)
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "categorical" and legend.label == "Predicted cell type"
    assert set(legend.categories) <= {*adata.obs["region"].cat.categories, "unassigned"}
    conf = adata.obs["spatialdl_confidence"].to_numpy(dtype=float)
    alpha = np.asarray(spots.face_color)[:, 3]
    assigned = (labels != "unassigned").to_numpy()
    assert np.corrcoef(alpha[assigned], conf[assigned])[0, 1] > 0.9  # opacity follows the confidence
    save_window(viewer, "session_2_annotate")

    # ---- a second deconvolution (another method) sits beside the first
    deconv.set_method("nnls")
    assert "max_epochs" not in deconv.params.fields
    click_run(qtbot, deconv)
    assert {"spatialdl_proportions", "spatialdl_proportions_nnls"} <= set(adata.obsm)
    assert deconv.results.which.count() == 2 and deconv.results.which.isVisible()
    legend = spots.metadata["spatialdl_legend"]  # the view stays on the dominant type, now of nnls
    assert legend.key == "spatialdl_dominant_cell_type_nnls" and legend.label == "Dominant cell type (nnls)"
    deconv.results.view.setCurrentText(deconv.results.PROPORTION)
    legend = spots.metadata["spatialdl_legend"]
    assert legend.key.startswith("spatialdl_proportions_nnls:") and legend.label.endswith("proportion (nnls)")
    assert_layout(viewer, deconv)
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    save_window(viewer, "session_3_second_result")

    # ---- the tabbed dock sees both results (read from the run records) and keeps the layout
    dock = add_panel(viewer, "Spatial DL")
    dock.show_task("deconvolve")
    assert dock.deconvolve.results.which.count() == 2
    assert_layout(viewer, dock)
    save_window(viewer, "session_4_tabbed_dock")


def test_reopened_file_offers_its_results(make_napari_viewer, qtbot, tmp_path):
    """A saved .h5ad opened again: each panel finds the results already there (from the run
    records) and shows them on request; Annotate does not default to the spots as reference."""
    from gui_helpers import add_panel, assert_layout, plugin_viewer
    from qtpy.QtCore import Qt

    import napari_spatialdl as sdl

    spatial, reference = sdl.datasets.synthetic_tissue(0, n_spots=300, n_genes=80, n_cell_types=4,
                                                       n_reference_cells=300, image_size=400)
    sdl.deconvolve(spatial, reference, "cell_type", method="nnls")
    sdl.annotate(spatial, reference, "cell_type", method="logreg")
    from napari_spatialdl.io import write_h5ad

    path = write_h5ad(spatial, tmp_path / "tissue.h5ad")

    viewer = plugin_viewer(make_napari_viewer)
    viewer.open(str(path), plugin="napari-spatialdl")
    deconv = add_panel(viewer, "Deconvolve")
    view = deconv.results
    assert "is in the data" in view.status.text() and view.show_button.isEnabled()
    assert not view.which.isVisible()  # one result: nothing to choose
    qtbot.mouseClick(view.show_button, Qt.MouseButton.LeftButton)
    spots = deconv.spots_layer
    assert spots.metadata["spatialdl_legend"].key.startswith("spatialdl_proportions:")
    ann = add_panel(viewer, "Annotate")
    assert ann.results.show_button.isEnabled() and "is in the data" in ann.results.status.text()
    assert not ann.inputs["reference"].is_self and ann.inputs["reference"].value() is None
    assert "Choose a reference" in ann.controls.reason.text()
    assert_layout(viewer, ann)


def test_whole_workflow_from_the_sample_to_a_reopened_file(make_napari_viewer, qtbot, tmp_path):
    """One sitting: the sample, all four tasks (two from the tabbed dock, two from their own docks),
    one run cancelled, the spots saved through napari's writer, everything closed, the file opened
    again (results offered, the colouring back), and a task run again on it. After every step: one
    legend at most, the window within the screen, the canvas keeps its room, the result written
    and visible on the tissue."""
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
    from napari.layers import Points
    from qtpy.QtCore import Qt

    from napari_spatialdl._widgets._viewer import find_spots_layer

    viewer = plugin_viewer(make_napari_viewer)
    viewer.open_sample("napari-spatialdl", "synthetic_tissue")
    spots = next(lyr for lyr in viewer.layers if isinstance(lyr, Points))
    adata = spots.metadata["adata"]
    viewer.reset_view()
    plain = plain_image(viewer, spots)

    def check(widget, key_present: bool, name: str) -> None:
        assert key_present
        assert len(legend_docks(viewer)) <= 1
        assert_layout(viewer, widget)
        assert changed_at_spots(viewer, find_spots_layer(viewer), plain, canvas_shot(viewer)) > 0.5
        save_window(viewer, name)

    # ---- tabbed dock: Integrate (the sections preselected) and Impute
    dock = add_panel(viewer, "Spatial DL")
    integ = dock.show_task("integrate")
    assert integ.inputs["batch_key"].currentText() == "section"
    integ.params.set(max_epochs=5)
    click_run(qtbot, integ)
    check(dock, "X_spatialdl" in adata.obsm, "workflow_1_integrate")
    imp = dock.show_task("impute")
    imp.params.set(max_epochs=3)
    click_run(qtbot, imp)
    check(dock, "spatialdl_imputed" in adata.layers, "workflow_2_impute")

    # ---- own docks: Deconvolve, one run cancelled (nothing written), then run to the end; Annotate
    deconv = add_panel(viewer, "Deconvolve")
    deconv.params.set(max_epochs=100_000)
    qtbot.mouseClick(deconv.run_button, Qt.MouseButton.LeftButton)
    run = deconv.last_run
    qtbot.waitUntil(lambda: len(run.events) >= 2, timeout=120_000)
    qtbot.mouseClick(deconv.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: run.done, timeout=60_000)
    assert run.cancelled and "spatialdl_proportions" not in adata.obsm
    assert "Cancelled" in deconv.controls.loss.status
    deconv.params.set(max_epochs=5)
    click_run(qtbot, deconv)
    check(deconv, "spatialdl_proportions" in adata.obsm, "workflow_3_deconvolve")
    ann = add_panel(viewer, "Annotate")
    ann.params.set(max_epochs=3, n_members=2)
    click_run(qtbot, ann)
    check(ann, "spatialdl_cell_type" in adata.obs, "workflow_4_annotate")
    shown = np.asarray(spots.face_color).copy()
    legend_key = spots.metadata["spatialdl_legend"].key
    drawn_size = float(np.median(spots.size))

    # ---- save through napari's writer, close everything, open the file again
    path = tmp_path / "session.h5ad"
    viewer.layers.selection.active = spots
    viewer.layers.save(str(path), selected=True, plugin="napari-spatialdl")
    assert path.exists()
    viewer.layers.clear()
    viewer.open(str(path), plugin="napari-spatialdl")
    reopened = find_spots_layer(viewer)
    back = reopened.metadata["adata"]
    assert {"X_spatialdl", "spatialdl_proportions"} <= set(back.obsm) and "spatialdl_imputed" in back.layers
    # the spots come back coloured as they were saved, with their legend
    assert reopened.metadata["spatialdl_legend"].key == legend_key
    # (the colours; the Annotate view's opacity-by-confidence is redrawn by 'Show on the tissue')
    np.testing.assert_allclose(np.asarray(reopened.face_color)[:, :3], shown[:, :3], atol=1e-6)
    assert len(legend_docks(viewer)) <= 1
    # ... at the size they were drawn at (larger than their true size, to be read), the image dimmed
    assert float(np.median(reopened.size)) == pytest.approx(drawn_size, rel=1e-3)
    image = next(lyr for lyr in viewer.layers if lyr.metadata.get("spatialdl_image"))
    assert image.opacity < 0.5
    # every panel offers the result already in the file
    for widget in (deconv, ann, dock.show_task("integrate"), dock.show_task("impute")):
        widget.refresh()
        assert widget.results.show_button.isEnabled(), widget.title
        assert "in the data" in widget.results.status.text(), (widget.title, widget.results.status.text())
    assert_layout(viewer, deconv)
    save_window(viewer, "workflow_5_reopened")

    # ---- and a task runs again on the reopened data: a second deconvolution needs a reference,
    # which a file does not carry, so integrate again (another method, beside the first)
    integ = dock.show_task("integrate")
    integ.set_method("pca")
    click_run(qtbot, integ)
    assert {"X_spatialdl", "X_spatialdl_pca"} <= set(back.obsm)
    assert integ.results.which.count() == 2
    assert len(legend_docks(viewer)) <= 1
    assert_layout(viewer, dock)
    save_window(viewer, "workflow_6_run_again")
