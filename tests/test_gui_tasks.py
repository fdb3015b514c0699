"""The task panels in a real viewer (run under xvfb-run): inputs by role, reasons, runs, cancel, errors.

The panels are opened as napari opens them (``add_plugin_dock_widget``, the tabbed "Spatial DL"
dock) on a small synthetic tissue. What the panel offers comes from the task spec: batch and
labels drop-downs list only columns that ``column_problem`` accepts, layer drop-downs the layers
of the input's own object; Run is disabled with a reason in plain words that names only layers
that exist. Impute and Integrate run end to end (Deconvolve and Annotate run in
``test_gui_session.py``); cancel leaves the AnnData unchanged; a failing run shows the API's
message in the panel, unclipped.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)"),
]


from qtpy.QtCore import Qt  # noqa: E402

LEFT = Qt.MouseButton.LeftButton


# ------------------------------------------------------------------------------ helpers
def snapshot(adata) -> dict:
    """Everything a run could write, to compare before/after."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return {"obs": adata.obs.copy(), "obsm": sorted(adata.obsm.keys()), "layers": sorted(adata.layers.keys()),
            "uns": sorted(adata.uns.keys()), "uns_spatialdl": repr(adata.uns.get("spatialdl")), "X": X.copy()}


def assert_unchanged(adata, before: dict) -> None:
    after = snapshot(adata)
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    for key in ("obsm", "layers", "uns", "uns_spatialdl"):
        assert after[key] == before[key], key
    np.testing.assert_array_equal(after["X"], before["X"])


def errors_since(n: int) -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [r.message for r in notification_manager.records[n:] if r.severity == NotificationSeverity.ERROR]


def n_records() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def combo_items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tissue():
    from napari_spatialdl.datasets import synthetic_tissue

    spatial, reference = synthetic_tissue(0, n_spots=300, n_genes=80, n_cell_types=4,
                                          n_reference_cells=400, image_size=400)
    rows = spatial.obs["array_row"].to_numpy()
    spatial.obs["section"] = pd.Categorical(np.where(rows < np.median(rows), "A", "B"))
    return spatial, reference


@pytest.fixture
def setup(make_napari_viewer, tissue):
    """The synthetic tissue (its reference carried by the spots) and the tabbed dock, plugin-style."""
    from gui_helpers import add_panel, plugin_viewer

    from napari_spatialdl._widgets._viewer import show

    viewer = plugin_viewer(make_napari_viewer)
    spatial, reference = tissue[0].copy(), tissue[1].copy()
    show(spatial, viewer, color="region", legend=False)
    spots = viewer.layers[-1]
    spots.metadata["reference"] = reference
    dock = add_panel(viewer, "Spatial DL")
    viewer.reset_view()
    return viewer, dock, spots, spatial, reference


# --------------------------------------------------------------------------------- tests
def test_inputs_offered_by_role_and_reasons(make_napari_viewer, tissue):
    from gui_helpers import add_panel, plugin_viewer

    from napari_spatialdl._widgets._inputs import NO_SPOTS
    from napari_spatialdl._widgets._viewer import show
    from napari_spatialdl.models import available_devices
    from napari_spatialdl.tasks import get_method, method_params
    from napari_spatialdl.tasks._validate import column_problem, offered_columns

    viewer = plugin_viewer(make_napari_viewer)
    dock = add_panel(viewer, "Spatial DL")
    for widget in dock.task_widgets().values():
        assert not widget.run_button.isEnabled() and widget.controls.reason.text() == NO_SPOTS
        assert combo_items(widget.controls.device) == ["auto", *available_devices()]
        assert widget.method_name == "spatialdl"
        # the parameter editors are the method's signature (tasks.method_params), nothing guessed
        expected = {p.name for p in method_params(get_method(widget.task, "spatialdl"))}
        expected |= {o.name for o in widget.spec.options}
        assert set(widget.params.fields) == expected

    spatial, reference = tissue[0].copy(), tissue[1].copy()
    spatial.obs = spatial.obs.rename(columns={"section": "half"})  # a name that says nothing
    spatial.obs["barcode_copy"] = spatial.obs_names.astype(str)  # an ID: one value per spot
    spatial.X = spatial.X.astype(np.float32) / 3.0  # normalised values in X; counts in layers['counts']
    show(spatial, viewer, legend=False)
    spots = viewer.layers[-1]
    # impute: the counts layer is preselected because X is not counts
    imp = dock.impute
    assert imp.inputs["layer"].currentText() == "counts" and imp.run_button.isEnabled()
    imp.set_input("layer", None)
    assert not imp.run_button.isEnabled()
    reason = imp.controls.reason.text()
    assert "normalised, not raw counts" in reason and "'counts'" in reason and "lognorm" not in reason
    # ... and a file without any counts says so, naming no layer
    counts = spatial.layers.pop("counts")
    imp.refresh()
    assert "has no raw counts" in imp.controls.reason.text() and "'counts'" not in imp.controls.reason.text()
    spatial.layers["counts"] = counts
    # integrate: batch columns offered by their kind and cardinality, none preselected by a vague name;
    # the regions and cell types fit the rules but are biology: not offered while a batch column exists
    integ = dock.integrate
    offered = combo_items(integ.inputs["batch_key"])
    assert offered == offered_columns(spatial, "batch") == ["half"]
    assert all(column_problem(spatial, c, "batch") is None for c in offered)
    assert column_problem(spatial, "region", "batch") is None and "region" not in offered
    for bad in ("total_counts", "barcode_copy", "in_tissue"):  # a measurement, an ID, one value
        assert bad not in offered, bad
    assert integ.inputs["batch_key"].currentText() == ""
    assert "batch column" in integ.controls.reason.text()
    integ.set_batch_key("half")
    assert "batch" not in integ.controls.reason.text().lower()
    # deconvolve: the reference the layer carries, its only fitting... cell_type preselected
    spots.metadata["reference"] = reference
    dec = dock.deconvolve
    dec.refresh()
    picker = dec.inputs["reference"]
    picker.combo.setCurrentIndex(picker.combo.findText(f"reference of '{spots.name}'"))
    assert dec.inputs["labels_key"].currentText() == "cell_type"
    # the reference layer drop-down lists the reference's own layers
    assert combo_items(dec.inputs["reference_layer"]) == ["X (main matrix)", *reference.layers.keys()]
    # a reference whose only candidate column has one value: no labels column, said in words
    one = reference.copy()
    one.obs = pd.DataFrame({"tissue": ["brain"] * one.n_obs}, index=one.obs_names)
    dec.set_reference(one, name="one_label.h5ad")
    assert not dec.run_button.isEnabled()
    assert "has no column of cell types" in dec.controls.reason.text()
    # the only fitting labels column is preselected, whatever its name
    other = reference.copy()
    other.obs = pd.DataFrame({"kind": other.obs["cell_type"].to_numpy()}, index=other.obs_names)
    dec.set_reference(other, name="renamed.h5ad")
    assert dec.inputs["labels_key"].currentText() == "kind"
    dec.set_input("layer", "counts")
    assert dec.run_button.isEnabled(), dec.controls.reason.text()
    # an invalid number in an editor disables Run and names the parameter in plain words
    dec.params.fields["lr"].widget.value = "fast"
    assert not dec.run_button.isEnabled()
    assert "learning rate" in dec.controls.reason.text()
    # the method drop-down shows plain words; an obs-column parameter of a method gets a drop-down
    assert dec.method.currentText() == get_method("deconvolve", "spatialdl").label


def test_impute_through_the_panel(setup, qtbot):
    from gui_helpers import (
        assert_layout,
        canvas_shot,
        changed_at_spots,
        click_run,
        plain_image,
        save_window,
    )

    viewer, dock, spots, adata, _ = setup
    widget = dock.show_task("impute")
    widget.params.set(max_epochs=4)
    plain = plain_image(viewer, spots)
    run = click_run(qtbot, widget)
    assert run.result is not None and "spatialdl_imputed" in adata.layers
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert len(widget.controls.loss.train) >= 1  # the live loss curve got points
    view = widget.results
    gene = view.gene.currentText()
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "numeric" and legend.label == f"{gene}, imputed"
    assert changed_at_spots(viewer, spots, plain, canvas_shot(viewer)) > 0.5
    assert_layout(viewer, dock)
    save_window(viewer, "tasks_impute")
    # raw vs imputed: same contrast limits, different colours
    imputed_limits, imputed_rgba = legend.limits, np.array(spots.face_color)
    view.values.setCurrentText("raw")
    raw_legend = spots.metadata["spatialdl_legend"]
    assert raw_legend.limits == imputed_limits and raw_legend.label == gene
    assert np.abs(np.array(spots.face_color) - imputed_rgba).max() > 0.05
    # a gene that is not there: said in words
    view.gene.setEditText("NoSuchGene")
    view.redraw()
    assert "No gene is called 'NoSuchGene'" in view.status.text()


def test_integrate_through_the_panel(setup, qtbot):
    from gui_helpers import canvas_shot, click_run, spot_pixels
    from matplotlib.colors import to_rgb

    viewer, dock, spots, adata, _ = setup
    widget = dock.show_task("integrate")
    widget.set_batch_key("section")
    widget.params.set(max_epochs=4)
    click_run(qtbot, widget)
    assert "X_spatialdl" in adata.obsm
    clusters = adata.obs["spatialdl_clusters"]
    assert clusters.dtype.name == "category" and clusters.nunique() >= 2
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "categorical" and legend.label == "Clusters of the integrated data"
    shot = canvas_shot(viewer)
    px, inside = spot_pixels(viewer, spots, shot)
    seen = shot[px[:, 0].clip(0, shot.shape[0] - 1), px[:, 1].clip(0, shot.shape[1] - 1), :3] / 255.0
    biggest = (clusters == "1").to_numpy() & inside
    target = np.asarray(to_rgb(legend.categories["1"]))
    assert (np.abs(seen[biggest] - target).max(axis=1) < 0.15).mean() > 0.6  # spots show the legend's colour
    widget.results.color.setCurrentText("section")
    assert spots.metadata["spatialdl_legend"].label == "Section"


def test_cancel_leaves_adata_unchanged(setup, qtbot):
    viewer, dock, spots, adata, _ = setup
    widget = dock.show_task("deconvolve")
    widget.params.set(max_epochs=100_000, refine_signatures=True)
    before = snapshot(adata)
    qtbot.mouseClick(widget.run_button, LEFT)
    run = widget.last_run
    qtbot.waitUntil(lambda: len(run.events) >= 3, timeout=120_000)
    qtbot.mouseClick(widget.cancel_button, LEFT)
    qtbot.waitUntil(lambda: run.done, timeout=30_000)
    assert run.cancelled and run.result is None and run.error is None
    assert max(e.epoch for e in run.events) < 100_000
    assert_unchanged(adata, before)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert "Cancelled" in widget.controls.loss.status
    widget.params.set(max_epochs=5)  # ... and it runs again to the end
    qtbot.mouseClick(widget.run_button, LEFT)
    run2 = widget.last_run
    qtbot.waitUntil(lambda: run2.done, timeout=120_000)
    assert run2 is not run and run2.error is None and not run2.cancelled
    assert "spatialdl_proportions" in adata.obsm


def test_failed_run_shows_the_api_message_in_the_panel(setup, qtbot):
    viewer, dock, spots, adata, reference = setup
    widget = dock.show_task("deconvolve")
    widget.params.set(n_top_genes=5, max_epochs=3)  # the method refuses fewer than 10 genes
    assert widget.run_button.isEnabled()
    before = snapshot(adata)
    n = n_records()
    qtbot.mouseClick(widget.run_button, LEFT)
    qtbot.waitUntil(lambda: widget.last_run.done, timeout=60_000)
    run = widget.last_run
    assert run.error is not None and run.result is None
    assert any("n_top_genes" in m for m in errors_since(n))
    error = widget.controls.error
    assert error.isVisible() and "n_top_genes must be at least 10" in error.text() and error.wordWrap()
    assert error.width() <= widget.width()  # in the panel, wrapped: nothing clipped by the canvas
    assert_unchanged(adata, before)
    assert widget.run_button.isEnabled()


def test_scripted_run(setup, qtbot):
    from napari_spatialdl import run
    from napari_spatialdl.tasks import InputError, TaskResult

    viewer, dock, spots, adata, reference = setup
    result = run(viewer, "deconvolve", reference=reference, labels_key="cell_type", block=True, max_epochs=10)
    assert isinstance(result, TaskResult) and result.adata is adata
    assert spots.metadata["spatialdl_legend"].key.startswith("spatialdl_proportions:")
    worker = run(viewer, "annotate", labels_key="cell_type", max_epochs=5)  # the carried reference
    qtbot.waitUntil(lambda: worker.task_run.done, timeout=120_000)
    assert "spatialdl_cell_type" in adata.obs
    assert spots.metadata["spatialdl_legend"].key == "spatialdl_cell_type"
    one = reference.copy()
    one.obs["tissue"] = "brain"
    before = snapshot(adata)
    with pytest.raises(InputError, match="distinct value"):
        run(viewer, "annotate", reference=one, labels_key="tissue", block=True, max_epochs=3)
    assert_unchanged(adata, before)
    n = n_records()
    worker = run(viewer, "annotate", reference=one, labels_key="tissue", max_epochs=3)
    qtbot.waitUntil(lambda: worker.task_run.done, timeout=30_000)
    assert any("distinct value" in m for m in errors_since(n))
    assert_unchanged(adata, before)
    with pytest.raises(ValueError, match="needs batch_key="):
        run(viewer, "integrate", block=True)


def test_a_method_registered_once_appears_in_its_panel(setup, qtbot):
    """One registration line: the panel lists the method in plain words, builds its editors from
    the signature, gives its obs-column parameter a drop-down of the fitting columns, and runs it
    through the API (the labels column reaches the method as ``data.columns``)."""
    from typing import Literal

    from gui_helpers import click_run

    from napari_spatialdl.models import ProgressEvent
    from napari_spatialdl.tasks import register
    from napari_spatialdl.tasks._registry import REGISTRY
    from napari_spatialdl.tasks._spec import LabelsKey
    from napari_spatialdl.tasks.integration import IntegrationOutput

    seen = {}

    def first_genes(data, *, n_dims: int = 3, scale: Literal["none", "unit"] = "none",
                    labels_key: LabelsKey | None = None):
        """The first genes as the latent space (a toy method for the test).

        Parameters
        ----------
        data
            The prepared inputs.
        n_dims
            How many genes to keep.
        scale
            Scale each dimension to unit variance or not.
        labels_key
            Known cell types of some observations.
        """
        yield ProgressEvent(1, 1, 1, message="toy")
        seen["labels"] = data.columns.get("labels_key")
        dense = data.counts[:, :n_dims]
        dense = dense.toarray() if hasattr(dense, "toarray") else np.asarray(dense)
        return IntegrationOutput(latent=np.asarray(dense, dtype=np.float32))

    # annotations as a method module without ``from __future__ import annotations`` has them
    first_genes.__annotations__ = {"n_dims": int, "scale": Literal["none", "unit"], "labels_key": LabelsKey | None}
    register("integrate", "toy", label="First genes (test toy)", description="technical toy line")(first_genes)
    try:
        viewer, dock, spots, adata, _ = setup
        # a fresh panel (as after a restart) finds the new method
        from gui_helpers import add_panel

        panel = add_panel(viewer, "Integrate")
        panel.set_method("toy")
        assert panel.method.currentText() == "First genes (test toy)"
        assert set(panel.params.fields) == {"n_dims", "scale", "labels_key"}
        assert panel.params.fields["n_dims"].widget.tooltip == "How many genes to keep."
        labels = panel.params.fields["labels_key"].widget
        offered = list(labels.choices)
        assert None in offered and "region" in offered and "total_counts" not in offered
        panel.set_batch_key("section")
        panel.params.set(n_dims=2, labels_key="region")
        click_run(qtbot, panel)
        assert adata.obsm["X_spatialdl"].shape == (adata.n_obs, 2) or "X_spatialdl_toy" in adata.obsm
        assert list(seen["labels"][:5]) == list(adata.obs["region"].astype(str)[:5])
    finally:
        REGISTRY["integrate"].pop("toy", None)
    # the panel notices a method that is gone (a plugin uninstalled) and falls back
    panel.refresh()
    assert panel.method_name == "spatialdl"
