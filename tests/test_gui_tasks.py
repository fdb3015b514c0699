"""The task panels in a real viewer (run under xvfb-run): run, overlay, cancel, errors, scripting.

Every task runs end to end through its panel in the Spatial DL dock with the real registered
methods on a small synthetic tissue; the overlay is checked in the screenshot's pixels where
the spots are. Cancel mid-run must leave the AnnData unchanged and the panel ready to run again;
bad input must show the API's error as a notification and change nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui

from qtpy.QtCore import Qt  # noqa: E402

LEFT = Qt.MouseButton.LeftButton

SCREEN = (1500, 1000)
RUN_TIMEOUT_MS = 120_000


# ------------------------------------------------------------------------------ helpers
def world_spots(layer) -> np.ndarray:
    return np.asarray(layer.data) * np.asarray(layer.scale) + np.asarray(layer.translate)


def canvas_pixels(viewer, shot: np.ndarray, world_yx: np.ndarray) -> np.ndarray:
    """Screenshot pixel (row, col) of world points under the 2D camera."""
    center = np.asarray(viewer.camera.center)[-2:]
    canvas_h = viewer.window._qt_viewer.canvas.size[0]
    scale = shot.shape[0] / canvas_h if canvas_h else 1.0
    rc = (world_yx - center) * viewer.camera.zoom * scale + np.array(shot.shape[:2]) / 2
    rc = np.round(rc).astype(int)
    rc[:, 0] = np.clip(rc[:, 0], 0, shot.shape[0] - 1)
    rc[:, 1] = np.clip(rc[:, 1], 0, shot.shape[1] - 1)
    return rc


def spot_colours(viewer, layer, shot: np.ndarray) -> np.ndarray:
    rc = canvas_pixels(viewer, shot, world_spots(layer))
    return shot[rc[:, 0], rc[:, 1], :3].astype(float) / 255.0


def screenshot(viewer, qtbot, path: str | None = None) -> np.ndarray:
    qtbot.wait(30)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    if path:
        from imageio.v3 import imwrite

        imwrite(path, shot)
    return shot


def snapshot(adata) -> dict:
    """Everything a run could write, to compare before/after."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return {
        "obs": adata.obs.copy(),
        "obsm": sorted(adata.obsm.keys()),
        "layers": sorted(adata.layers.keys()),
        "uns": sorted(adata.uns.keys()),
        "uns_spatialdl": repr(adata.uns.get("spatialdl")),
        "X": X.copy(),
    }


def assert_unchanged(adata, before: dict) -> None:
    after = snapshot(adata)
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    for key in ("obsm", "layers", "uns", "uns_spatialdl"):
        assert after[key] == before[key], key
    np.testing.assert_array_equal(after["X"], before["X"])


def wait_run(qtbot, widget, timeout: int = RUN_TIMEOUT_MS):
    run = widget.last_run
    qtbot.waitUntil(lambda: run.done, timeout=timeout)
    qtbot.wait(20)
    return run


def errors_since(n: int) -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [r.message for r in notification_manager.records[n:]
            if r.severity == NotificationSeverity.ERROR]


def n_records() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


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
def viewer(make_napari_viewer):
    v = make_napari_viewer(show=True)
    v.window._qt_window.resize(*SCREEN)
    return v


@pytest.fixture
def setup(viewer, tissue, qtbot):
    """A viewer with the synthetic tissue (reference carried by the spots) and the dock."""
    from napari_spatialdl._widgets._dock import SpatialDLDock
    from napari_spatialdl._widgets._viewer import show

    spatial, reference = tissue[0].copy(), tissue[1].copy()
    show(spatial, viewer, color="region", legend=False)
    spots = viewer.layers[-1]
    spots.metadata["reference"] = reference
    dock = SpatialDLDock(viewer)
    viewer.window.add_dock_widget(dock, name="Spatial DL", area="right")
    qtbot.wait(100)  # let the window lay out the dock before fitting the view to the canvas
    viewer.reset_view()
    qtbot.wait(30)
    return viewer, dock, spots, spatial, reference


def quick(widget, epochs: int = 4) -> None:
    """Few epochs through the generated parameter panel."""
    if "max_epochs" in widget.params.fields:
        widget.params.set(max_epochs=epochs)


# --------------------------------------------------------------------------------- tests
def test_inputs_and_reasons(viewer, tissue, qtbot):
    from napari_spatialdl._widgets._dock import SpatialDLDock
    from napari_spatialdl._widgets._tasks import NO_SPOTS
    from napari_spatialdl._widgets._viewer import show
    from napari_spatialdl.models import available_devices

    dock = SpatialDLDock(viewer)
    viewer.window.add_dock_widget(dock, name="Spatial DL")
    for widget in dock.task_widgets().values():
        assert not widget.run_button.isEnabled()
        assert widget.controls.reason.text() == NO_SPOTS
        devices = [widget.controls.device.itemText(i) for i in range(widget.controls.device.count())]
        assert devices == ["auto", *available_devices()]
        assert widget.method_name == "spatialdl"

    spatial, reference = tissue[0].copy(), tissue[1].copy()
    spatial.obs = spatial.obs.rename(columns={"section": "half"})  # a name that says nothing
    show(spatial, viewer, legend=False)
    spots = viewer.layers[-1]
    assert dock.impute.run_button.isEnabled()
    # the parameter panel comes from the method's signature: layer choices from the AnnData
    layer_field = dock.impute.params.fields.get("layer")
    assert layer_field is not None and "counts" in [c for c in layer_field.widget.choices]
    assert "max_epochs" in dock.deconvolve.params.fields
    assert "device" not in dock.impute.params.fields and "copy" not in dock.impute.params.fields
    # integration: a batch column has to be chosen (none is named like one); counts such as
    # array_row are not offered
    dock.integrate.refresh()
    assert not dock.integrate.run_button.isEnabled()
    assert "batch" in dock.integrate.controls.reason.text()
    offered = [dock.integrate.batch_key.itemText(i) for i in range(dock.integrate.batch_key.count())]
    assert "half" in offered and "array_row" not in offered and "n_cells" not in offered
    dock.integrate.set_batch_key("half")
    assert dock.integrate.run_button.isEnabled()
    # deconvolution: no reference yet
    assert not dock.deconvolve.run_button.isEnabled()
    assert "reference" in dock.deconvolve.controls.reason.text()
    # a reference whose only candidate column has a single value: no labels column
    one = reference.copy()
    one.obs = pd.DataFrame({"tissue": ["brain"] * one.n_obs}, index=one.obs_names)
    dock.deconvolve.set_reference(one, name="one_label.h5ad")
    assert not dock.deconvolve.run_button.isEnabled()
    assert dock.deconvolve.controls.reason.text().startswith("choose a reference with a labels column")
    # the reference the sample carries, found in the layer's metadata
    spots.metadata["reference"] = reference
    dock.deconvolve.refresh()
    dock.deconvolve.reference.combo.setCurrentIndex(
        dock.deconvolve.reference.combo.findText(f"reference of '{spots.name}'"))
    assert dock.deconvolve.labels_key.currentText() == "cell_type"
    assert dock.deconvolve.run_button.isEnabled(), dock.deconvolve.controls.reason.text()
    # an invalid number in the panel disables Run and says which parameter
    dock.deconvolve.params.fields["lr"].widget.value = "fast"
    assert not dock.deconvolve.run_button.isEnabled()
    assert "lr" in dock.deconvolve.controls.reason.text()


def test_impute_through_widget(setup, qtbot):
    viewer, dock, spots, adata, _ = setup
    widget = dock.show_task("impute")
    quick(widget)
    before = screenshot(viewer, qtbot)
    qtbot.mouseClick(widget.run_button, LEFT)
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    run = wait_run(qtbot, widget)
    assert run.error is None, run.error
    assert "spatialdl_imputed" in adata.layers
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert len(widget.controls.loss.train) >= 1  # the live loss curve got points
    view = widget.results
    gene = view.gene.currentText()
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "numeric" and legend.label.startswith(gene)
    after = screenshot(viewer, qtbot, "/tmp/sdl_gui_impute.png")
    changed = np.abs(spot_colours(viewer, spots, after) - spot_colours(viewer, spots, before)).max(1) > 0.1
    assert changed.mean() > 0.5
    # raw vs imputed: same contrast limits, different colours
    imputed_limits = legend.limits
    imputed_rgba = np.array(spots.face_color)
    view.which.setCurrentText("raw")
    raw_legend = spots.metadata["spatialdl_legend"]
    assert raw_legend.limits == imputed_limits
    assert np.abs(np.array(spots.face_color) - imputed_rgba).max() > 0.05


def test_integrate_through_widget(setup, qtbot):
    viewer, dock, spots, adata, _ = setup
    widget = dock.show_task("integrate")
    widget.set_batch_key("section")
    quick(widget)
    before = screenshot(viewer, qtbot)
    qtbot.mouseClick(widget.run_button, LEFT)
    run = wait_run(qtbot, widget)
    assert run.error is None, run.error
    assert "X_spatialdl" in adata.obsm
    clusters = adata.obs["spatialdl_clusters"]
    assert clusters.dtype.name == "category" and clusters.nunique() >= 2
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "categorical" and legend.label == "spatialdl_clusters"
    after = screenshot(viewer, qtbot, "/tmp/sdl_gui_integrate.png")
    seen = spot_colours(viewer, spots, after)
    changed = np.abs(seen - spot_colours(viewer, spots, before)).max(1) > 0.1
    assert changed.mean() > 0.3
    # spots of the largest cluster show its legend colour
    from matplotlib.colors import to_rgb

    biggest = clusters == "1"
    target = np.asarray(to_rgb(legend.categories["1"]))
    assert (np.abs(seen[biggest.to_numpy()] - target).max(1) < 0.15).mean() > 0.6
    # colour by batch instead
    widget.results.color.setCurrentText("section")
    assert spots.metadata["spatialdl_legend"].label == "section"


def test_deconvolve_through_widget(setup, qtbot):
    viewer, dock, spots, adata, reference = setup
    widget = dock.show_task("deconvolve")
    assert widget.reference.value() is reference
    assert widget.labels_key.currentText() == "cell_type"
    quick(widget, 30)
    before = screenshot(viewer, qtbot)
    qtbot.mouseClick(widget.run_button, LEFT)
    run = wait_run(qtbot, widget)
    assert run.error is None, run.error
    props = adata.obsm["spatialdl_proportions"]
    np.testing.assert_allclose(np.asarray(props).sum(axis=1), 1.0, atol=1e-4)
    legend = spots.metadata["spatialdl_legend"]
    ct = widget.results.cell_type.currentText()
    assert legend.kind == "numeric" and legend.label == f"spatialdl_proportions:{ct}"
    # all proportions are in the layer's features (napari shows them on hover)
    for name in props.columns:
        assert f"spatialdl_proportions:{name}" in spots.features.columns
    after = screenshot(viewer, qtbot, "/tmp/sdl_gui_deconvolve.png")
    seen = spot_colours(viewer, spots, after)
    assert (np.abs(seen - spot_colours(viewer, spots, before)).max(1) > 0.1).mean() > 0.5
    # brighter spots (magma) where the proportion is higher
    values = np.asarray(props[ct])
    brightness = seen.mean(axis=1)
    assert np.corrcoef(values, brightness)[0, 1] > 0.5
    # dominant cell type: categorical with legend
    widget.results.view.setCurrentText("dominant cell type")
    dominant = adata.obs["spatialdl_dominant_cell_type"]
    assert dominant.dtype.name == "category"
    assert spots.metadata["spatialdl_legend"].kind == "categorical"
    np.testing.assert_array_equal(dominant.astype(str).to_numpy(),
                                  np.asarray(props.columns)[np.asarray(props).argmax(axis=1)])
    screenshot(viewer, qtbot, "/tmp/sdl_gui_deconvolve_dominant.png")


def test_annotate_through_widget(setup, qtbot):
    viewer, dock, spots, adata, reference = setup
    widget = dock.show_task("annotate")
    assert widget.reference.value() is reference
    quick(widget, 15)
    widget.params.set(threshold=0.9, n_members=2)
    before = screenshot(viewer, qtbot)
    qtbot.mouseClick(widget.run_button, LEFT)
    run = wait_run(qtbot, widget)
    assert run.error is None, run.error
    labels = adata.obs["spatialdl_cell_type"]
    conf = adata.obs["spatialdl_confidence"].to_numpy(dtype=float)
    legend = spots.metadata["spatialdl_legend"]
    assert legend.kind == "categorical" and legend.label == "spatialdl_cell_type"
    after = screenshot(viewer, qtbot, "/tmp/sdl_gui_annotate.png")
    assert (np.abs(spot_colours(viewer, spots, after) - spot_colours(viewer, spots, before)).max(1)
            > 0.1).mean() > 0.5
    # opacity follows the confidence; unassigned spots have a rim
    alpha = np.array(spots.face_color)[:, 3]
    assigned = (labels.astype(str) != "unassigned").to_numpy()
    assert 2 < assigned.sum() < len(assigned)  # threshold 0.9: some spots stay unassigned
    assert np.corrcoef(alpha[assigned], conf[assigned])[0, 1] > 0.9
    border = np.asarray(spots.border_width)
    assert border[~assigned].min() > border[assigned].max()
    assert "unassigned" in legend.categories
    widget.results.view.setCurrentText("confidence")
    assert spots.metadata["spatialdl_legend"].kind == "numeric"


def test_cancel_leaves_adata_unchanged(setup, qtbot):
    viewer, dock, spots, adata, _ = setup
    widget = dock.show_task("deconvolve")
    widget.params.set(max_epochs=100_000)
    if "refine_signatures" in widget.params.fields:
        widget.params.set(refine_signatures=True)
    before = snapshot(adata)
    qtbot.mouseClick(widget.run_button, LEFT)
    run = widget.last_run
    qtbot.waitUntil(lambda: len(run.events) >= 3, timeout=RUN_TIMEOUT_MS)
    qtbot.mouseClick(widget.cancel_button, LEFT)
    qtbot.waitUntil(lambda: run.done, timeout=30_000)
    assert run.cancelled and run.result is None and run.error is None
    assert max(e.epoch for e in run.events) < 100_000
    assert_unchanged(adata, before)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert "cancelled" in widget.controls.loss.status
    # ... and it runs again to the end
    widget.params.set(max_epochs=5)
    qtbot.mouseClick(widget.run_button, LEFT)
    run2 = wait_run(qtbot, widget)
    assert run2 is not run and run2.error is None and not run2.cancelled
    assert "spatialdl_proportions" in adata.obsm


def test_bad_input_shows_api_error(setup, qtbot):
    import scanpy as sc

    viewer, dock, spots, adata, reference = setup
    norm = sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)["X"]
    adata.layers["lognorm"] = np.log1p(norm.toarray() if hasattr(norm, "toarray") else norm)
    dock.impute.refresh()
    widget = dock.show_task("impute")
    widget.params.set(layer="lognorm")
    quick(widget)
    before = snapshot(adata)
    n = n_records()
    qtbot.mouseClick(widget.run_button, LEFT)
    run = wait_run(qtbot, widget)
    assert run.error is not None and run.result is None
    messages = errors_since(n)
    assert any("lognorm" in m and "non-integer" in m for m in messages), messages
    assert_unchanged(adata, before)
    assert widget.run_button.isEnabled()


def test_scripted_run(setup, qtbot):
    from napari_spatialdl import run
    from napari_spatialdl.tasks import InputError, TaskResult

    viewer, dock, spots, adata, reference = setup
    result = run(viewer, "deconvolve", reference=reference, labels_key="cell_type", block=True,
                 max_epochs=10)
    assert isinstance(result, TaskResult) and result.adata is adata
    assert spots.metadata["spatialdl_legend"].label.startswith("spatialdl_proportions:")
    # non-blocking: the worker; the overlay arrives when it finishes
    worker = run(viewer, "annotate", labels_key="cell_type", max_epochs=5)
    qtbot.waitUntil(lambda: worker.task_run.done, timeout=RUN_TIMEOUT_MS)
    assert "spatialdl_cell_type" in adata.obs
    assert spots.metadata["spatialdl_legend"].label == "spatialdl_cell_type"
    # a labels column with one value: the API's error, raised in a blocking script run
    one = reference.copy()
    one.obs["tissue"] = "brain"
    before = snapshot(adata)
    with pytest.raises(InputError, match="distinct value"):
        run(viewer, "annotate", reference=one, labels_key="tissue", block=True, max_epochs=3)
    assert_unchanged(adata, before)
    # ... and shown as a notification when not blocking
    n = n_records()
    worker = run(viewer, "annotate", reference=one, labels_key="tissue", max_epochs=3)
    qtbot.waitUntil(lambda: worker.task_run.done, timeout=30_000)
    assert any("distinct value" in m for m in errors_since(n))
    assert_unchanged(adata, before)
