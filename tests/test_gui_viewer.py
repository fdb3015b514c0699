"""A real napari viewer (run under xvfb-run): spots drawn on the tissue, recolouring, legend, hover.

    xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest tests/test_gui_viewer.py

Screenshots are saved to $SPATIALDL_SHOTS (default /tmp/spatialdl_screenshots) to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)"),
]

SHOTS = Path(os.environ.get("SPATIALDL_SHOTS", "/tmp/spatialdl_screenshots"))


def _save(name: str, rgba: np.ndarray) -> None:
    import imageio.v3 as iio

    SHOTS.mkdir(parents=True, exist_ok=True)
    iio.imwrite(SHOTS / f"{name}.png", np.asarray(rgba)[..., :3])


def _process_events() -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(3):
        QApplication.processEvents()


def _canvas_shot(viewer) -> np.ndarray:
    _process_events()
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))


def _world_to_shot(viewer, shot: np.ndarray, rc: np.ndarray) -> np.ndarray:
    """(row, col) world coordinates -> integer pixel (row, col) of a canvas screenshot."""
    canvas_hw = np.asarray(viewer.canvas.size, dtype=float)  # (height, width)
    shot_hw = np.asarray(shot.shape[:2], dtype=float)
    center = np.asarray(viewer.camera.center[-2:], dtype=float)
    px = (np.asarray(rc, dtype=float) - center) * viewer.camera.zoom + canvas_hw / 2
    return np.round(px * shot_hw / canvas_hw - 0.5).astype(int)


def _to_world(layer, rc) -> np.ndarray:
    """(row, col) data coordinates of ``layer`` -> world (µm when the pixel size is known)."""
    from napari_spatialdl._widgets._regions_geometry import to_world

    return to_world(layer, np.asarray(rc, dtype=float))[:, -2:]


def _spot_pixels(viewer, layer, shot):
    px = _world_to_shot(viewer, shot, _to_world(layer, layer.data))
    inside = (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] < shot.shape[0]) & (px[:, 1] < shot.shape[1])
    assert inside.mean() > 0.95, "spots fall outside the canvas: the view does not show the tissue"
    return px, inside


def _fraction_matching(shot, px, inside, colors, tol=30) -> float:
    got = shot[px[inside, 0], px[inside, 1], :3].astype(float)
    want = np.asarray(colors)[inside, :3] * 255
    return float(np.mean(np.abs(got - want).max(axis=1) <= tol))


@pytest.fixture(scope="module")
def tissue():
    from napari_spatialdl.datasets import synthetic_tissue

    spatial, reference = synthetic_tissue(0, n_spots=400, n_genes=120, n_reference_cells=300,
                                          image_size=700)
    return spatial, reference


def _show(viewer, adata, **kwargs):
    from napari_spatialdl import show
    from napari_spatialdl._widgets._viewer import find_spots_layer

    out = show(adata, viewer, **kwargs)
    assert out is viewer
    viewer.window.resize(1400, 1000)
    _process_events()
    viewer.reset_view()
    return find_spots_layer(viewer, adata)


def test_spots_drawn_on_the_tissue_and_recoloured(make_napari_viewer, tissue):
    from napari.layers import Image

    from napari_spatialdl._widgets._viewer import color_spots

    spatial, _ = tissue
    viewer = make_napari_viewer(show=True)
    layer = _show(viewer, spatial, color="region")
    image_layer = next(lyr for lyr in viewer.layers if isinstance(lyr, Image))
    assert image_layer.rgb and layer.size[0] > 3  # spot diameter in image pixels
    shot = _canvas_shot(viewer)
    _save("synthetic_region", shot)

    # every spot centre shows the spot's colour
    px, inside = _spot_pixels(viewer, layer, shot)
    assert _fraction_matching(shot, px, inside, layer.face_color) > 0.95

    # away from the spots the tissue image shows through unchanged
    img = np.asarray(image_layer.data)
    rng = np.random.default_rng(0)
    cand = rng.uniform([0, 0], img.shape[:2], size=(4000, 2))
    dist = np.min(np.linalg.norm(cand[:, None, :] - layer.data[None, :, :], axis=2), axis=1)
    far = cand[dist > 1.5 * layer.size[0]][:200]
    assert len(far) >= 50
    fpx = _world_to_shot(viewer, shot, _to_world(image_layer, far))
    on_canvas = (fpx >= 0).all(1) & (fpx[:, 0] < shot.shape[0]) & (fpx[:, 1] < shot.shape[1])
    got = shot[fpx[on_canvas, 0], fpx[on_canvas, 1], :3].astype(float)
    want = img[far[on_canvas, 0].astype(int), far[on_canvas, 1].astype(int), :3].astype(float)
    if want.max() <= 1.0:
        want = want * 255
    assert np.median(np.abs(got - want).max(axis=1)) < 20

    # colour by a gene: the screenshot changes where the spots are, to the new colours
    gene = spatial.var_names[int(np.argmax(np.asarray(spatial.X.sum(0)).ravel()))]
    info = color_spots(layer, gene, cmap="magma")
    assert info.kind == "numeric"
    shot2 = _canvas_shot(viewer)
    _save("synthetic_gene", shot2)
    assert _fraction_matching(shot2, px, inside, layer.face_color) > 0.95
    changed = np.abs(shot2[px[inside, 0], px[inside, 1], :3].astype(int)
                     - shot[px[inside, 0], px[inside, 1], :3].astype(int)).max(axis=1) > 30
    assert changed.mean() > 0.8
    # napari's colour bar on the canvas (top right) shows the colormap now
    assert layer.face_colorbar.visible


def test_hover_shows_barcode_and_value(make_napari_viewer, tissue):
    from napari_spatialdl._widgets._viewer import color_spots

    spatial, _ = tissue
    viewer = make_napari_viewer(show=True)
    layer = _show(viewer, spatial)
    key = "total_counts"
    color_spots(layer, key)
    assert list(layer.features.columns) == ["barcode", key]
    assert list(layer.features["barcode"]) == list(spatial.obs_names)
    i = 7
    viewer.layers.selection.active = layer
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(_to_world(layer, layer.data[i : i + 1])[0])
    viewer.update_status_from_cursor()
    status = viewer.status if isinstance(viewer.status, str) else str(viewer.status)
    assert spatial.obs_names[i] in status
    assert f"{key}: {int(spatial.obs[key].iloc[i])}" in status  # counts shown as integers


def test_real_mouse_hover_updates_status(make_napari_viewer, tissue, qtbot):
    """A real mouse move over a spot: napari's status bar shows its barcode and value."""
    from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
    from qtpy.QtGui import QEnterEvent, QMouseEvent
    from qtpy.QtWidgets import QApplication

    spatial, _ = tissue
    viewer = make_napari_viewer(show=True)
    layer = _show(viewer, spatial, color="region")
    viewer.layers.selection.active = layer
    shot = _canvas_shot(viewer)
    i = 11
    r, c = _world_to_shot(viewer, shot, _to_world(layer, layer.data[i : i + 1]))[0]
    from napari_spatialdl._widgets._compat import gl_canvas, main_window

    native = gl_canvas(main_window(viewer))
    ratio = shot.shape[1] / native.width()
    local = QPointF(c / ratio, r / ratio)
    glob = QPointF(native.mapToGlobal(QPoint(int(local.x()), int(local.y()))))
    QApplication.sendEvent(native, QEnterEvent(local, local, glob))
    move = QMouseEvent(QEvent.Type.MouseMove, local, glob, Qt.MouseButton.NoButton,
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(native, move)
    # make_napari_viewer stops napari's status thread; compute the status from the moved cursor
    viewer.update_status_from_cursor()
    qtbot.waitUntil(lambda: spatial.obs_names[i] in str(viewer.status), timeout=5000)
    assert f"region: {spatial.obs['region'].iloc[i]}" in str(viewer.status)


def test_color_widget_legend_visible_in_window(make_napari_viewer, tissue):
    from qtpy.QtCore import QPoint

    from napari_spatialdl._widgets._color import ColorSpotsWidget

    spatial, _ = tissue
    viewer = make_napari_viewer(show=True)
    layer = _show(viewer, spatial)
    widget = ColorSpotsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Colour spots", area="right")
    assert widget.spots_layer is layer
    widget.set_key("region")
    _process_events()

    categories = [str(c) for c in spatial.obs["region"].cat.categories]
    legend = widget.legend
    assert legend.mode == "categorical" and legend.entries() == categories
    assert legend.isVisible()
    window = widget.window()
    grab = window.grab().toImage()
    SHOTS.mkdir(parents=True, exist_ok=True)
    grab.save(str(SHOTS / "window_legend_categories.png"))
    # each swatch is drawn, in its category's colour, in the window grab
    swatches = [legend._grid.itemAtPosition(r, 0).widget() for r in range(len(categories))]
    colors = spatial.uns["region_colors"]
    ratio = grab.width() / window.width()
    for swatch, color in zip(swatches, colors):
        assert swatch.isVisible()
        p = swatch.mapTo(window, QPoint(swatch.width() // 2, swatch.height() // 2))
        pixel = grab.pixelColor(int(p.x() * ratio), int(p.y() * ratio))
        want = tuple(int(color.lstrip("#")[k : k + 2], 16) for k in (0, 2, 4))
        assert max(abs(pixel.red() - want[0]), abs(pixel.green() - want[1]), abs(pixel.blue() - want[2])) < 12

    # the spots took the same colours as the legend
    from matplotlib.colors import to_rgba

    codes = spatial.obs["region"].cat.codes.to_numpy()
    np.testing.assert_allclose(layer.face_color, np.array([to_rgba(c) for c in colors])[codes], atol=1e-3)

    # a number: colour bar with min and max, in the window
    widget.set_key("total_counts")
    _process_events()
    lo, hi = spatial.obs["total_counts"].min(), spatial.obs["total_counts"].max()
    assert legend.mode == "numeric" and legend.limits == pytest.approx((lo, hi))
    assert legend._bar.isVisible() and legend.min_label.text() and legend.max_label.text()
    grab = window.grab().toImage()
    grab.save(str(SHOTS / "window_legend_colorbar.png"))
    bar = legend._bar
    left = bar.mapTo(window, QPoint(3, bar.height() // 2))
    right = bar.mapTo(window, QPoint(bar.width() - 4, bar.height() // 2))
    lpx = grab.pixelColor(int(left.x() * ratio), int(left.y() * ratio))
    rpx = grab.pixelColor(int(right.x() * ratio), int(right.y() * ratio))
    # viridis: dark purple on the left, yellow on the right
    assert lpx.blue() > lpx.green() and rpx.red() > 180 and rpx.green() > 180 and rpx.blue() < 120

    # gene values from a layer, manual limits
    widget.set_key(spatial.var_names[0], source="genes")
    widget.adata_layer_combo.setCurrentIndex(widget.adata_layer_combo.findText("counts"))
    assert layer.metadata["spatialdl_color"]["layer"] == "counts"
    values = np.asarray(spatial.layers["counts"][:, 0].todense()).ravel()
    assert legend.limits == pytest.approx((values.min(), values.max()))
    widget.auto_limits.setChecked(False)
    widget.low.setValue(0.0)
    widget.high.setValue(1.0)
    assert legend.limits == pytest.approx((0.0, 1.0))
    assert layer.metadata["spatialdl_color"]["contrast_limits"] == pytest.approx((0.0, 1.0))
    # above the upper limit -> the top colour of the colormap
    import matplotlib

    top = np.flatnonzero(values >= 1.0)
    np.testing.assert_allclose(layer.face_color[top], np.tile(matplotlib.colormaps["viridis"](1.0), (len(top), 1)),
                               atol=1e-3)


def test_legend_follows_recolouring_by_other_code(make_napari_viewer, tissue):
    """Task widgets recolour through color_spots; the legend dock follows."""
    from napari_spatialdl._widgets._legend import ensure_legend
    from napari_spatialdl._widgets._viewer import color_spots

    spatial, _ = tissue
    from napari_spatialdl import show
    from napari_spatialdl._widgets._viewer import find_spots_layer

    viewer = make_napari_viewer(show=True)
    # no viewer given (as from napari's console): adds to the current one; color= docks a legend
    assert show(spatial, color="region") is viewer
    layer = find_spots_layer(viewer)
    assert "Spots legend" in viewer.window.dock_widgets
    legend = ensure_legend(viewer)
    assert legend.mode == "categorical"
    assert ensure_legend(viewer) is legend  # not docked twice
    legend.parent().hide()  # the user closed the dock: it comes back, still one
    assert ensure_legend(viewer) is legend and not legend.parent().isHidden()
    color_spots(layer, "true_proportions:Astrocyte")
    assert legend.mode == "numeric" and legend.title.text() == "Astrocyte proportion (simulated truth)"


def test_real_visium_he_with_spots(make_napari_viewer, shared_data):
    from napari.layers import Image

    from napari_spatialdl.io import read_visium

    adata = read_visium(shared_data / "visium_spaceranger_1.0.0")
    viewer = make_napari_viewer(show=True)
    with pytest.warns(UserWarning, match="hires"):
        layer = _show(viewer, adata, color="array_row")
    image_layer = next(lyr for lyr in viewer.layers if isinstance(lyr, Image))
    assert image_layer.data.shape[:2] == (600, 600)
    shot = _canvas_shot(viewer)
    _save("visium_real_he", shot)
    px, inside = _spot_pixels(viewer, layer, shot)
    assert _fraction_matching(shot, px, inside, layer.face_color) > 0.9
    # the H&E is drawn: the canvas holds tissue-coloured (pink/purple, not black, not white) pixels
    rgb = shot[..., :3].astype(int)
    pinkish = (rgb[..., 0] > 120) & (rgb[..., 2] > 100) & (rgb[..., 1] < rgb[..., 0] - 15)
    assert pinkish.mean() > 0.02
    # spots sit on tissue: the image under the spot centres is darker than the slide corners
    img = np.asarray(image_layer.data)[..., :3].astype(float).mean(axis=2)
    img = img * 255 if img.max() <= 1 else img
    r, c = np.round(layer.data).astype(int).T
    assert np.median(img[r, c]) < np.median(img[:20, :20]) - 20


def test_gui_demo_opens_viewer_with_proportions(make_napari_viewer, monkeypatch):
    """``napari-spatialdl demo`` (GUI part): dominant type + proportions on hover + colour panel."""
    from napari_spatialdl.tasks import list_methods

    if "spatialdl" not in [m.name for m in list_methods("deconvolve")]:
        pytest.skip("native deconvolution not registered yet")
    from napari_spatialdl import cli
    from napari_spatialdl._widgets._viewer import find_spots_layer

    viewer = make_napari_viewer(show=True)
    out = cli.demo(gui=True, n_spots=300, seed=1)
    assert out is viewer
    layer = find_spots_layer(viewer)
    props = layer.metadata["adata"].obsm["spatialdl_proportions"]
    cols = [f"spatialdl_proportions:{c}" for c in props.columns]
    assert set(cols) <= set(layer.features.columns)
    assert "spatialdl_dominant_cell_type" in layer.features.columns
    assert "Colour spots" in viewer.window.dock_widgets
    _save("demo_gui", _canvas_shot(viewer))
