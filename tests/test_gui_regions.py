"""Region annotation in a real viewer (run under xvfb-run): shapes on the tissue -> adata.obs labels.

Spots inside each drawn shape must get its name, checked against an independent
matplotlib.path computation in world coordinates; spots outside stay missing; the spots on
screen take the region colours.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.path import Path as MplPath

pytestmark = pytest.mark.gui

SCREEN = (1280, 800)


def to_data(layer, world_yx: np.ndarray) -> np.ndarray:
    """World (y, x) -> the data coordinates of ``layer`` (shapes are added in data coordinates)."""
    from napari_spatialdl._widgets._regions_geometry import to_data as _to_data

    return _to_data(layer, np.asarray(world_yx, dtype=float))


def world_spots(layer) -> np.ndarray:
    """Spot centres in world (y, x), from scale/translate alone (independent of napari's transforms)."""
    return np.asarray(layer.data) * np.asarray(layer.scale) + np.asarray(layer.translate)


def expected_regions(spots_yx: np.ndarray, polygons_world: list[np.ndarray], names: list[str]) -> np.ndarray:
    out = np.full(len(spots_yx), None, dtype=object)
    for poly, name in zip(polygons_world, names):  # later shapes on top
        out[MplPath(poly[:, ::-1]).contains_points(spots_yx[:, ::-1])] = name
    return out


def canvas_pixels(viewer, shot: np.ndarray, world_yx: np.ndarray) -> np.ndarray:
    """Screenshot pixel (row, col) of world points (2D camera: centre + zoom)."""
    center = np.asarray(viewer.camera.center)[-2:]
    zoom = viewer.camera.zoom
    h, w = shot.shape[:2]
    canvas_h = viewer.canvas.size[0]  # (height, width) in logical pixels
    scale = h / canvas_h if canvas_h else 1.0
    rc = (world_yx - center) * zoom * scale + np.array([h / 2, w / 2])
    return np.round(rc).astype(int)


def colour_at(shot: np.ndarray, rc: np.ndarray) -> np.ndarray:
    r = np.clip(rc[:, 0], 0, shot.shape[0] - 1)
    c = np.clip(rc[:, 1], 0, shot.shape[1] - 1)
    return shot[r, c, :3].astype(float) / 255.0


@pytest.fixture
def viewer(make_napari_viewer):
    v = make_napari_viewer(show=True)
    v.window.resize(*SCREEN)
    return v


@pytest.fixture
def small_tissue():
    from napari_spatialdl.datasets import synthetic_tissue

    spatial, reference = synthetic_tissue(0, n_spots=300, n_genes=60, n_cell_types=4,
                                          n_reference_cells=200, image_size=400)
    return spatial, reference


def test_regions_on_synthetic_tissue(viewer, qtbot, small_tissue):
    from gui_helpers import add_panel

    from napari_spatialdl._widgets._viewer import show

    spatial, _ = small_tissue
    show(spatial, viewer, legend=False)
    spots = viewer.layers[-1]
    widget = add_panel(viewer, "Annotate regions")  # as napari's Plugins menu opens it
    assert widget.spots_layer is spots
    layer = widget.new_regions_layer()
    assert layer.mode == "add_polygon"
    yx = world_spots(spots)
    lo, hi = yx.min(axis=0), yx.max(axis=0)
    mid = (lo + hi) / 2 + 3.1  # off the lattice: no spot centre exactly on an edge
    lo = lo - 2.3
    # region 1: a concave polygon over the upper-left quarter; named before drawing (default name)
    widget.name.setText("upper left")
    tri = np.array([[lo[0], lo[1]], [lo[0], mid[1]], [mid[0] * 0.8 + lo[0] * 0.2, (lo[1] + mid[1]) / 2],
                    [mid[0], mid[1]], [mid[0], lo[1]]])
    layer.add_polygons([to_data(layer, tri)])
    # region 2: a rectangle on the right, named afterwards in the table
    widget.name.setText("placeholder")
    rect = np.array([[mid[0] - 30, mid[1] + 20], [hi[0] - 10, hi[1] - 5]])
    layer.add_rectangles([to_data(layer, rect)])
    assert widget.table.rowCount() == 2
    assert widget.table.item(0, 1).text() == "upper left"
    widget.table.item(1, 1).setText("right block")  # the user edits the name in the table
    assert list(layer.features["region"]) == ["upper left", "right block"]

    viewer.reset_view()
    qtbot.wait(50)
    before = viewer.screenshot(canvas_only=True, flash=False)
    widget.key.setText("drawn_region")
    widget.assign_button.click()
    adata = spatial
    assert "drawn_region" in adata.obs
    col = adata.obs["drawn_region"]
    assert col.dtype.name == "category"

    rect_world = np.array([[rect[0, 0], rect[0, 1]], [rect[0, 0], rect[1, 1]],
                           [rect[1, 0], rect[1, 1]], [rect[1, 0], rect[0, 1]]])
    expect = expected_regions(yx, [tri, rect_world], ["upper left", "right block"])
    got = np.array([None if pd.isna(v) else v for v in col], dtype=object)
    assert (got == expect).all()
    assert (expect == "upper left").sum() > 5 and (expect == "right block").sum() > 5
    assert col.isna().sum() == (expect == None).sum() > 0  # noqa: E711
    assert "upper left: " in widget.summary.text() and "unlabelled" in widget.summary.text()

    # the spots now show the region colours where they are
    qtbot.wait(50)
    after = viewer.screenshot(canvas_only=True, flash=False)
    rc = canvas_pixels(viewer, after, yx)
    from imageio.v3 import imwrite

    imwrite("/tmp/sdl_regions_synthetic.png", after)
    legend = spots.metadata["spatialdl_legend"]
    for name in ("upper left", "right block"):
        target = np.asarray(to_rgb(legend.categories[name]))
        inside = expect == name
        seen = colour_at(after, rc[inside])
        close = np.abs(seen - target).max(axis=1) < 0.12
        assert close.mean() > 0.7, f"{name}: {close.mean():.2f} of its spots show its colour"
    # unlabelled spots turn grey (the missing-value colour); before, they were not
    outside = expect == None  # noqa: E711
    grey = np.asarray(to_rgb(legend.na_color))
    assert (np.abs(colour_at(after, rc[outside]) - grey).max(axis=1) < 0.12).mean() > 0.7
    assert (np.abs(colour_at(before, rc[outside]) - grey).max(axis=1) < 0.12).mean() < 0.1


def test_regions_follow_layer_transforms(viewer, small_tissue):
    """A Shapes layer with its own scale/translate is compared in world coordinates."""
    from gui_helpers import add_panel

    from napari_spatialdl._widgets._viewer import show

    spatial, _ = small_tissue
    show(spatial, viewer, legend=False)
    spots = viewer.layers[-1]
    spots.translate = (7.0, -3.0)
    yx = world_spots(spots)
    lo, hi = yx.min(axis=0) + 2.9, yx.max(axis=0) - 1.7  # no spot exactly on an edge
    scale, translate = np.array([2.0, 2.0]), np.array([10.0, -20.0])
    poly_world = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], (lo[1] + hi[1]) / 2]])
    shapes = viewer.add_shapes([(poly_world - translate) / scale], shape_type="polygon",
                               scale=scale, translate=translate,
                               features=pd.DataFrame({"region": ["wedge"]}), name="hand drawn")
    widget = add_panel(viewer, "Annotate regions")
    widget.shapes.setCurrentText(shapes.name)
    assert widget.shapes_layer is shapes
    col = widget.assign("wedge_region")
    expect = expected_regions(yx, [poly_world], ["wedge"])
    np.testing.assert_array_equal(col.notna().to_numpy(), expect == "wedge")
    assert 0 < (expect == "wedge").sum() < len(yx)


def test_unnamed_region_is_refused(viewer, small_tissue):
    from gui_helpers import add_panel
    from napari.utils.notifications import notification_manager

    from napari_spatialdl._widgets._viewer import show

    spatial, _ = small_tissue
    show(spatial, viewer, legend=False)
    widget = add_panel(viewer, "Annotate regions")
    layer = widget.new_regions_layer()
    yx = world_spots(widget.spots_layer)
    layer.add_polygons([np.array([yx.min(0), [yx.min(0)[0], yx.max(0)[1]], yx.max(0)])])
    widget.set_region_name(0, "")
    columns = list(spatial.obs.columns)
    n = len(notification_manager.records)
    widget.assign_button.click()
    assert list(spatial.obs.columns) == columns  # nothing written
    messages = [r.message for r in notification_manager.records[n:]]
    assert any("no name" in m for m in messages), messages


def test_regions_on_real_hne(viewer, shared_data):
    """The real Space Ranger 1.0.0 H&E: a rectangle over the upper half of the spots."""
    from gui_helpers import add_panel

    from napari_spatialdl._widgets._viewer import show
    from napari_spatialdl.io import read_visium

    adata = read_visium(shared_data / "visium_spaceranger_1.0.0")
    show(adata, viewer, legend=False)
    spots = viewer.layers[-1]
    image = viewer.layers[-2]
    assert image.rgb
    widget = add_panel(viewer, "Annotate regions")
    layer = widget.new_regions_layer()
    yx = world_spots(spots)
    lo, hi = yx.min(axis=0), yx.max(axis=0)
    mid_y = np.median(yx[:, 0])
    layer.add_rectangles([to_data(layer, np.array([[lo[0] - 5, lo[1] - 5], [mid_y, hi[1] + 5]]))])
    widget.set_region_name(0, "upper tissue")
    col = widget.assign("hne_region")
    rect = np.array([[lo[0] - 5, lo[1] - 5], [lo[0] - 5, hi[1] + 5], [mid_y, hi[1] + 5], [mid_y, lo[1] - 5]])
    expect = expected_regions(yx, [rect], ["upper tissue"])
    np.testing.assert_array_equal(col.notna().to_numpy(), expect == "upper tissue")
    assert 20 < col.notna().sum() < adata.n_obs
    from imageio.v3 import imwrite

    viewer.reset_view()
    imwrite("/tmp/sdl_regions_hne.png", viewer.screenshot(canvas_only=True, flash=False))


def test_regions_train_annotation_of_the_rest(viewer, qtbot, small_tissue):
    """Label a few spots per anatomical region by drawing squares, then annotate the rest."""
    from gui_helpers import add_panel

    from napari_spatialdl._widgets._viewer import show

    spatial, _ = small_tissue
    show(spatial, viewer, legend=False)
    spots = viewer.layers[-1]
    dock = add_panel(viewer, "Spatial DL")
    regions = dock.show_task("regions")
    layer = regions.new_regions_layer()
    yx = world_spots(spots)
    half = 0.4 * float(np.mean(spots.size)) * float(spots.scale[-1])  # a square around one spot only (world)
    truth = spatial.obs["region"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    picked = []
    for name in np.unique(truth):
        for i in rng.choice(np.flatnonzero(truth == name), size=4, replace=False):
            layer.add_rectangles([to_data(layer, np.array([yx[i] - half, yx[i] + half]))])
            regions.set_region_name(len(layer.data) - 1, name)
            picked.append(i)
    col = regions.assign("hand_labels")
    assert col.notna().sum() == len(picked)
    np.testing.assert_array_equal(col.astype(object)[picked].to_numpy(), truth[picked])

    annotate = dock.show_task("annotate")
    combo = annotate.inputs["reference"].combo
    combo.setCurrentIndex(combo.findText(f"'{spots.name}' itself (its own labels)"))
    assert annotate.inputs["reference"].value() is spatial
    annotate.set_labels_key("hand_labels")
    annotate.params.set(max_epochs=30)
    assert annotate.run_button.isEnabled(), annotate.controls.reason.text()
    run = annotate.start()
    qtbot.waitUntil(lambda: run.done, timeout=120_000)
    assert run.error is None, run.error
    predicted = spatial.obs["spatialdl_cell_type"].astype(str).to_numpy()
    rest = np.setdiff1d(np.arange(spatial.n_obs), picked)
    assert set(predicted[rest]) <= set(truth)  # every unlabelled spot got one of the drawn names
    # per-region recall, averaged (regions differ a lot in size): well above chance (1/6)
    from sklearn.metrics import balanced_accuracy_score

    balanced = balanced_accuracy_score(truth[rest], predicted[rest])
    assert balanced > 2 / len(np.unique(truth)), balanced
    from imageio.v3 import imwrite

    qtbot.wait(100)
    imwrite("/tmp/sdl_regions_annotated.png", viewer.screenshot(canvas_only=False, flash=False))


def test_regions_and_colouring_survive_saving(make_napari_viewer, qtbot, small_tissue, tmp_path):
    """Draw 2 regions, assign, save through the napari writer, close everything, reopen: the regions
    layer (shapes, names, colours) and the spots' colouring come back, with one legend."""
    from gui_helpers import add_panel, assert_layout, legend_docks, plugin_viewer, save_window
    from matplotlib.colors import to_rgba
    from napari.layers import Points, Shapes

    from napari_spatialdl._widgets._regions_geometry import to_world
    from napari_spatialdl._widgets._viewer import show
    from napari_spatialdl.io import read_h5ad

    viewer = plugin_viewer(make_napari_viewer)
    spatial, _ = small_tissue
    show(spatial, viewer, legend=False)
    spots = viewer.layers[-1]
    widget = add_panel(viewer, "Annotate regions")
    layer = widget.new_regions_layer()
    yx = world_spots(spots)
    lo, hi = yx.min(axis=0) - 2.3, yx.max(axis=0) + 1.9
    mid = (lo + hi) / 2 + 3.1
    widget.name.setText("upper left")
    layer.add_polygons([to_data(layer, np.array([[lo[0], lo[1]], [lo[0], mid[1]], [mid[0], mid[1] - 15],
                                                 [mid[0], lo[1]]]))])
    widget.name.setText("lower right")
    layer.add_rectangles([to_data(layer, np.array([[mid[0] + 5, mid[1] + 5], [hi[0], hi[1]]]))])
    assert list(layer.features["region"]) == ["upper left", "lower right"]
    drawn_world = [to_world(layer, v) for v in layer.data]
    widget.assign("drawn_region")
    categories = list(spatial.obs["drawn_region"].cat.categories)
    region_colour = dict(zip(categories, spatial.uns["drawn_region_colors"]))
    # the shapes now wear their region's colour, as their spots do
    np.testing.assert_allclose(layer.edge_color, [to_rgba(region_colour[n]) for n in ("upper left", "lower right")],
                               atol=1e-6)
    assert spots.metadata["spatialdl_color"]["key"] == "drawn_region"
    colours_before = np.asarray(spots.face_color).copy()
    assert len(np.unique(colours_before.round(3), axis=0)) == 3  # two regions + grey outside
    uns_before = set(spatial.uns)

    path = tmp_path / "with_regions.h5ad"
    viewer.layers.selection = {spots}
    viewer.layers.save(str(path), selected=True, plugin="napari-spatialdl")
    assert path.is_file()
    assert set(spatial.uns) == uns_before  # the record of the colouring went to the file only

    viewer.layers.clear()
    qtbot.wait(50)
    viewer.open(str(path), plugin="napari-spatialdl")
    qtbot.wait(100)
    reopened = [lyr for lyr in viewer.layers if isinstance(lyr, Points)]
    regions = [lyr for lyr in viewer.layers if isinstance(lyr, Shapes)]
    assert len(reopened) == 1 and len(regions) == 1
    spots2, shapes2 = reopened[0], regions[0]
    assert spots2.metadata["adata"] is not spatial
    assert list(shapes2.shape_type) == ["polygon", "rectangle"]
    assert list(shapes2.features["region"]) == ["upper left", "lower right"]
    for got, drawn in zip(shapes2.data, drawn_world):
        np.testing.assert_allclose(to_world(shapes2, got), drawn, atol=1e-6)  # where they were drawn
    np.testing.assert_allclose(shapes2.edge_color, layer.edge_color, atol=1e-6)
    assert (shapes2.face_color[:, 3] < 0.5).all()  # semi-transparent fills
    # the spots are coloured by the region column again, not plain
    assert spots2.metadata["spatialdl_color"]["key"] == "drawn_region"
    np.testing.assert_allclose(np.asarray(spots2.face_color), colours_before, atol=1e-6)
    assert len(legend_docks(viewer)) <= 1
    from napari_spatialdl._widgets._legend import find_legends

    legends = find_legends(viewer)
    assert len(legends) == 1 and legends[0].layer is spots2  # the legend follows the reopened spots
    # the Regions widget takes the restored layer as its regions layer, with its column
    assert widget.spots_layer is spots2 and widget.shapes_layer is shapes2
    assert widget.key.text() == "drawn_region"
    assert widget.table.rowCount() == 2 and widget.table.item(1, 1).text() == "lower right"
    assert_layout(viewer, widget)
    viewer.layers.selection.active = spots2
    viewer.reset_view()
    qtbot.wait(100)
    shot = save_window(viewer, "regions_reopened")
    assert shot.is_file()
    adata2 = spots2.metadata["adata"]
    col = widget.assign()  # assigning again from the restored layer gives the same labels
    np.testing.assert_array_equal(col.astype(object).fillna("-").to_numpy(),
                                  spatial.obs["drawn_region"].astype(object).fillna("-").to_numpy())
    assert adata2.obs["drawn_region"] is not None

    # sdl.show of the read file restores them too
    viewer.layers.clear()
    show(read_h5ad(path), viewer)
    assert [type(lyr).__name__ for lyr in viewer.layers] == ["Image", "Points", "Shapes"]
    np.testing.assert_allclose(np.asarray(viewer.layers[1].face_color), colours_before, atol=1e-6)
    assert len(viewer.layers[2].data) == 2
    assert len(legend_docks(viewer)) <= 1 and len(find_legends(viewer)) == 1
