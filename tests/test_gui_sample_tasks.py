"""Every task runs on the synthetic sample from its panel, without code (under xvfb-run).

    xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest tests/test_gui_sample_tasks.py

A first-time user opens File > Open Sample > Spatial DL > Synthetic tissue and then each panel
from the Plugins menu (``add_plugin_dock_widget``): Integrate finds the spots' two sections and
preselects them as the batch column, Deconvolve and Annotate the reference the spots carry and
its cell-type column, Impute the counts. Each runs (few epochs, set in the parameter editors),
writes its result, colours the spots, and opens its result view on the choice the docs quote.
Full-window screenshots are saved (see ``gui_helpers.SHOTS``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)"),
]


def combo_items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def other_batch_among_neighbours(latent: np.ndarray, batch: np.ndarray, k: int = 15) -> float:
    """Mean fraction of each observation's k nearest neighbours (in ``latent``) from another batch."""
    from scipy.spatial import cKDTree

    _, nn = cKDTree(latent).query(latent, k=k + 1)
    return float((batch[nn[:, 1:]] != batch[:, None]).mean())


@pytest.fixture
def sample(make_napari_viewer):
    from gui_helpers import plugin_viewer
    from napari.layers import Points

    viewer = plugin_viewer(make_napari_viewer)
    viewer.open_sample("napari-spatialdl", "synthetic_tissue")
    spots = next(lyr for lyr in viewer.layers if isinstance(lyr, Points))
    return viewer, spots, spots.metadata["adata"], spots.metadata["reference"]


def test_integrate_runs_on_the_sample_with_its_sections_preselected(sample, qtbot):
    from gui_helpers import (
        add_panel,
        assert_layout,
        canvas_shot,
        changed_at_spots,
        click_run,
        plain_image,
        save_window,
    )

    import napari_spatialdl as sdl

    viewer, spots, adata, _ = sample
    widget = add_panel(viewer, "Integrate")
    # the only plausible batch column is offered, and preselected: no grid coordinates, counts or
    # regions among the choices
    assert combo_items(widget.inputs["batch_key"]) == ["section"]
    assert widget.inputs["batch_key"].currentText() == "section"
    assert widget.run_button.isEnabled(), widget.controls.reason.text()
    widget.params.set(max_epochs=15)
    viewer.reset_view()
    plain = plain_image(viewer, spots)
    click_run(qtbot, widget)
    assert "X_spatialdl" in adata.obsm and adata.uns["spatialdl"]["integrate"]["params"]["batch_key"] == "section"
    # the integrated space mixes the two sections; the uncorrected PCA keeps them apart
    section = adata.obs["section"].astype(str).to_numpy()
    mixed = other_batch_among_neighbours(np.asarray(adata.obsm["X_spatialdl"]), section)
    pca = sdl.integrate(adata, "section", method="pca", copy=True)
    apart = other_batch_among_neighbours(np.asarray(pca.adata.obsm[pca.keys["obsm"]]), section)
    assert apart < 0.05 < 0.3 < mixed, (apart, mixed)
    clusters = adata.obs["spatialdl_clusters"]
    assert clusters.nunique() >= 2
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "categorical" and legend.label == "Clusters of the integrated data"
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    assert_layout(viewer, widget)
    save_window(viewer, "sample_integrate")
    # the view offers the batches too, to check the mixing by eye
    assert combo_items(widget.results.color) == ["spatialdl_clusters", "section"]
    widget.results.color.setCurrentText("section")
    assert spots.metadata["spatialdl_legend"].label == "Section"
    save_window(viewer, "sample_integrate_sections")


def test_deconvolve_annotate_impute_run_on_the_sample(sample, qtbot):
    from gui_helpers import (
        add_panel,
        assert_layout,
        canvas_shot,
        changed_at_spots,
        click_run,
        plain_image,
        save_window,
    )

    from napari_spatialdl.tasks._derived import suggested_gene

    viewer, spots, adata, reference = sample
    viewer.reset_view()
    plain = plain_image(viewer, spots)

    # ---- Deconvolve: the carried reference and its only cell-type column, preselected
    deconv = add_panel(viewer, "Deconvolve")
    assert deconv.inputs["reference"].value() is reference
    assert combo_items(deconv.inputs["labels_key"]) == ["cell_type"]  # not batch, not total_counts
    assert deconv.inputs["labels_key"].currentText() == "cell_type"
    deconv.params.set(max_epochs=10)
    click_run(qtbot, deconv)
    props = adata.obsm["spatialdl_proportions"]
    # the view opens on the type whose proportion varies most across the tissue
    most_variable = str(props.columns[int(np.argmax(props.to_numpy(dtype=float).std(axis=0)))])
    assert deconv.results.cell_type.currentText() == most_variable
    assert spots.metadata["spatialdl_legend"].label == f"{most_variable} proportion"
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    assert_layout(viewer, deconv)
    save_window(viewer, "sample_deconvolve")
    deconv_colors = np.array(spots.face_color)

    # ---- Annotate: the same reference and column, preselected
    ann = add_panel(viewer, "Annotate")
    assert ann.inputs["reference"].value() is reference
    assert ann.inputs["labels_key"].currentText() == "cell_type"
    ann.params.set(max_epochs=5)
    click_run(qtbot, ann)
    labels = adata.obs["spatialdl_cell_type"].astype(str)
    assert set(labels) <= {*reference.obs["cell_type"].cat.categories, "unassigned"}
    assert (labels != "unassigned").mean() > 0.5
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "categorical" and legend.label == "Predicted cell type"
    assert np.abs(np.array(spots.face_color) - deconv_colors).max() > 0.05
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    assert_layout(viewer, ann)
    save_window(viewer, "sample_annotate")

    # ---- Impute: the counts in X, preselected; the view opens on the most structured gene
    imp = add_panel(viewer, "Impute")
    assert imp.inputs["layer"].currentText() == "X (main matrix)"
    imp.params.set(max_epochs=5)
    plain_colors = np.array(spots.face_color)
    click_run(qtbot, imp)
    assert adata.layers["spatialdl_imputed"].shape == adata.shape
    gene = imp.results.gene.currentText()
    assert gene == suggested_gene(adata)
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "numeric" and legend.label == f"{gene}, imputed"
    assert np.abs(np.array(spots.face_color) - plain_colors).max() > 0.05
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    assert_layout(viewer, imp)
    save_window(viewer, "sample_impute")
