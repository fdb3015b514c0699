"""Display of many observations: vectorised recolouring, in-place hover table, no dense copy of X,
the overview/detail level of detail, Visium HD bins as squares of their true size.

    xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest tests/test_display_scale.py

The level of detail is tested on a few hundred spots with a lowered threshold
(``_overview.MAX_DRAWN``); its timings are measured by ``benchmarks/scale.py --display``.
Screenshots go to $SPATIALDL_SHOTS (default /tmp/spatialdl_screenshots).
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

gui = pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)")


class NoDenseCSR(sp.csr_matrix):
    """A CSR matrix that refuses to become dense (any such conversion fails the test)."""

    def toarray(self, *args, **kwargs):
        raise AssertionError("toarray() called on X: a dense copy of the matrix")

    def todense(self, *args, **kwargs):
        raise AssertionError("todense() called on X: a dense copy of the matrix")

    def __array__(self, *args, **kwargs):
        raise AssertionError("np.asarray(X): a dense copy of the matrix")


def _grid_adata(side: int = 20, n_genes: int = 30, seed: int = 0, *, squares: bool = False,
                matrix=sp.csr_matrix):
    """side x side observations on a grid (pitch 10 full-res px), sparse NB counts, categories,
    an image whose pixels are full-res pixels / 2."""
    from anndata import AnnData

    rng = np.random.default_rng(seed)
    n = side * side
    dense = rng.negative_binomial(1, 0.6, (n, n_genes)).astype(np.float32)
    dense[rng.random((n, n_genes)) < 0.7] = 0
    row, col = np.divmod(np.arange(n), side)
    xy = (np.stack([col, row], 1).astype(float) + 0.5) * 10.0
    obs = pd.DataFrame({
        "domain": pd.Categorical.from_codes((row // 5 + col // 5) % 4, ["a", "b", "c", "d"]),
        "depth": dense.sum(1),
    }, index=[f"bc{i}" for i in range(n)])
    adata = AnnData(matrix(dense), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]))
    adata.obsm["spatial"] = xy
    yy, xx = np.mgrid[0 : side * 5, 0 : side * 5]
    img = np.stack([200 + (xx % 40), 170 + (yy % 50), 210 + 0 * xx], axis=2).astype(np.uint8)  # pale tissue
    adata.uns["spatial"] = {"lib": {"images": {"hires": img},
                                    "scalefactors": {"tissue_hires_scalef": 0.5, "spot_diameter_fullres": 10.0}}}
    if squares:
        adata.uns["spatialdl_spatialdata"] = {"shape": "square"}
        adata.obs["spatialdl_size_fullres"] = 10.0
    return adata, dense


def _reference(values, kind, cmap="viridis", colors=None):
    """Colours as the former code made them (matplotlib's colormap call; a palette lookup)."""
    if kind == "categorical":
        lut = matplotlib.colors.to_rgba_array(list(colors))
        return lut[np.asarray(values.codes)].astype(np.float32)
    x = np.asarray(values, float)
    lo, hi = np.nanmin(x), np.nanmax(x)
    scaled = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)
    return np.asarray(matplotlib.colormaps[cmap](scaled), dtype=np.float32)


# ---------------------------------------------------------------------------- no display needed


def test_matrix_column_formats_without_densifying():
    from napari_spatialdl import layers as L

    adata, dense = _grid_adata(8, 12)
    X = sp.csr_matrix(dense)
    for matrix in (NoDenseCSR(dense), X.tocsc(), sp.csr_array(X), sp.csc_array(X), dense, X.tolil()):
        for j in (0, 5, 11):
            np.testing.assert_array_equal(L.matrix_column(matrix, j), dense[:, j].astype(np.float64))
    # the block scan and its threads give the same column
    old = (L._SCAN_BLOCK, L._PARALLEL_SCAN)
    try:
        L._SCAN_BLOCK, L._PARALLEL_SCAN = 7, 10
        for j in (0, 5, 11):
            np.testing.assert_array_equal(L.matrix_column(NoDenseCSR(dense), j), dense[:, j])
    finally:
        L._SCAN_BLOCK, L._PARALLEL_SCAN = old
    # blocks of whole rows: empty rows, a row longer than a block, several threads
    rng = np.random.default_rng(2)
    wide = rng.random((60, 25)) * (rng.random((60, 25)) < 0.3)
    wide[[0, 7, 8, 30, 59]] = 0.0
    wide[12] = rng.random(25) + 1.0
    try:
        for block, parallel in ((1 << 20, 1 << 30), (5, 0), (3, 0), (40, 0)):
            L._SCAN_BLOCK, L._PARALLEL_SCAN = block, parallel
            for j in range(25):
                np.testing.assert_array_equal(L.matrix_column(NoDenseCSR(wide), j), wide[:, j])
    finally:
        L._SCAN_BLOCK, L._PARALLEL_SCAN = old
    # duplicate entries are summed, as toarray() would
    dup = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([1, 1, 2]), np.array([0, 2, 3])), shape=(2, 4))
    np.testing.assert_array_equal(L.matrix_column(dup, 1), [3.0, 0.0])


def test_colours_identical_to_matplotlib_and_palette():
    from napari_spatialdl.layers import color_for, default_palette, spot_colors

    rng = np.random.default_rng(3)
    x = np.r_[rng.random(3000) * 9 - 1, 0.0, 8.0, np.nan, -1.0]
    for cmap in ("viridis", "magma", "tab10", "coolwarm"):
        rgba, info = color_for(x, "numeric", cmap=cmap)
        finite = np.isfinite(x)
        want = _reference(np.where(finite, x, np.nanmin(x)), "numeric", cmap)
        np.testing.assert_array_equal(rgba[finite], want[finite])
        np.testing.assert_allclose(rgba[~finite], [matplotlib.colors.to_rgba(info.na_color)])
    adata, _ = _grid_adata(6, 5)
    rgba, info, values = spot_colors(adata, "domain")
    np.testing.assert_array_equal(rgba, _reference(adata.obs["domain"].array, "categorical",
                                                   colors=default_palette(4)))
    # the categories are the obs column's own (no re-encoding), a copy of them
    assert list(values.categories) == ["a", "b", "c", "d"]
    assert values is not adata.obs["domain"].array


def test_shown_points_draw_only_shown_in_2d():
    from napari_spatialdl._widgets._compat import shown_points_class

    Points = shown_points_class()
    assert Points is not None, "napari changed the Points slicing: the level of detail is off"
    layer = Points(np.random.default_rng(0).random((50, 2)) * 100, shown=False)
    layer.refresh(force=True)
    assert len(layer._view_data) == 0
    mask = np.zeros(50, bool)
    mask[[3, 7, 9]] = True
    layer.shown = mask
    np.testing.assert_array_equal(layer._view_data, layer.data[[3, 7, 9]])
    assert layer._type_string == "points"  # napari's writers and controls see a Points layer


def test_overview_hover_finds_the_top_spot_where_spots_share_a_pixel():
    """Overlapping spots (size > spacing): several share an overview pixel; the hover still
    finds the spot napari would (the last one whose box covers the position)."""
    from napari.components import ViewerModel

    from napari_spatialdl._widgets._compat import shown_points_class
    from napari_spatialdl._widgets._overview import SpotsOverview

    rng = np.random.default_rng(5)
    data = rng.random((600, 2)) * 100  # random positions, spots 8 wide: many overlap
    viewer = ViewerModel()
    layer = viewer.add_layer(shown_points_class()(data, size=8.0, shown=False, metadata={"spatialdl_spots": True}))
    ov = SpotsOverview(viewer, layer, max_drawn=10)
    assert ov.mode == "overview" and len(ov._pixels) < len(data)  # some pixels hold several spots
    for pos in rng.random((300, 2)) * 100:
        covering = np.flatnonzero(np.all(np.abs(data - pos) <= 4.0, axis=1))
        want = int(covering.max()) if len(covering) else None
        assert ov.spot_at(layer.data_to_world(pos)) == want
    # the image shows the last spot of each pixel
    pix = np.floor((data - ov.origin) / ov.pitch).astype(int)
    flat = pix[:, 0] * ov.shape[1] + pix[:, 1]
    last = {f: i for i, f in enumerate(flat)}
    img = ov.image.data.reshape(-1, 4)
    for f, i in list(last.items())[:50]:
        np.testing.assert_array_equal(img[f], np.round(layer.face_color[i] * 255).astype(np.uint8))


def test_overview_of_a_grid_one_spot_per_pixel():
    """Bins on a grid (one spot per overview pixel, the usual large layer): every pixel shows its
    spot's colour, the hover finds the spot under the cursor (and none between far-apart spots)."""
    from napari.components import ViewerModel

    from napari_spatialdl._widgets import _overview
    from napari_spatialdl._widgets._compat import shown_points_class

    rng = np.random.default_rng(4)
    side = 30
    row, col = np.divmod(np.arange(side * side), side)
    data = np.stack([row, col], 1) * 10.0 + 5.0
    data = data[rng.permutation(len(data))]  # in no particular order
    colours = rng.random((len(data), 4))
    colours[:, 3] = 1.0
    viewer = ViewerModel()
    layer = viewer.add_layer(shown_points_class()(data, size=10.0, face_color=colours, shown=False))
    old = _overview._RASTER_CHUNK
    try:
        _overview._RASTER_CHUNK = 64  # several chunks
        ov = _overview.SpotsOverview(viewer, layer, max_drawn=10)
    finally:
        _overview._RASTER_CHUNK = old
    assert ov.mode == "overview" and ov.shape == (side, side) and ov._top is not None
    img = ov.image.data
    pix = np.floor((data - ov.origin) / ov.pitch).astype(int)
    np.testing.assert_array_equal(img[pix[:, 0], pix[:, 1]], np.round(colours * 255).astype(np.uint8))
    for i in rng.choice(len(data), 60, replace=False):
        for offset in ((0.0, 0.0), (4.0, -4.0), (-4.5, 4.5)):
            assert ov.spot_at(layer.data_to_world(data[i] + offset)) == i
    assert ov.spot_at(layer.data_to_world(data.min(axis=0) - 30.0)) is None
    # a recolour redraws the image
    layer.face_color = colours[::-1].copy()
    np.testing.assert_array_equal(ov.image.data[pix[:, 0], pix[:, 1]],
                                  np.round(colours[::-1] * 255).astype(np.uint8))


# ---------------------------------------------------------------------------- in a viewer


def _viewer(make_napari_viewer):
    from gui_helpers import plugin_viewer

    return plugin_viewer(make_napari_viewer)


def _status_at(viewer, layer, i):
    viewer.layers.selection.active = layer
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(layer.data_to_world(layer.data[i]))
    viewer.update_status_from_cursor()
    return str(viewer.status)


@gui
def test_recolour_keeps_features_table_and_colours(make_napari_viewer):
    """Gene and category recolours: the colours of before, one value column swapped in napari's table."""
    import napari_spatialdl as sdl
    from napari_spatialdl._widgets._legend import ensure_legend
    from napari_spatialdl._widgets._viewer import color_spots, find_spots_layer
    from napari_spatialdl.layers import default_palette

    adata, dense = _grid_adata(20, 30)
    viewer = _viewer(make_napari_viewer)
    sdl.show(adata, viewer, features=["depth"])
    layer = find_spots_layer(viewer)
    legend = ensure_legend(viewer, layer)
    table = layer.features
    barcodes = table["barcode"].to_numpy()

    color_spots(layer, "G3", cmap="magma")
    np.testing.assert_array_equal(layer.face_color, _reference(dense[:, 3], "numeric", "magma"))
    assert layer.features is table  # the same DataFrame napari holds: no new table
    assert list(table.columns) == ["barcode", "depth", "G3"]
    np.testing.assert_array_equal(table["G3"], dense[:, 3])
    assert table["barcode"].to_numpy() is barcodes or np.array_equal(table["barcode"], barcodes)
    assert legend.mode == "numeric" and legend.limits == pytest.approx((dense[:, 3].min(), dense[:, 3].max()))

    color_spots(layer, "domain")
    np.testing.assert_array_equal(layer.face_color, _reference(adata.obs["domain"].array, "categorical",
                                                               colors=default_palette(4)))
    assert layer.features is table and list(table.columns) == ["barcode", "depth", "domain"]
    assert legend.mode == "categorical" and legend.entries() == ["a", "b", "c", "d"]
    # napari's defaults for new points follow the table (no stale column)
    assert list(layer.feature_defaults.columns) == ["barcode", "depth", "domain"]
    # a pinned value rewritten in the AnnData (a task ran again) is read again at the next recolour
    adata.obs["depth"] = adata.obs["depth"] + 1000
    color_spots(layer, "domain")
    assert layer.features is table
    np.testing.assert_array_equal(table["depth"], adata.obs["depth"].to_numpy())

    # the hover shows the barcode, the pinned value and the current one, read from that table
    status = _status_at(viewer, layer, 57)
    assert "barcode: bc57" in status and f"domain: {adata.obs['domain'].iloc[57]}" in status
    assert f"depth: {int(adata.obs['depth'].iloc[57])}" in status

    # the canvas shows the new colours
    from gui_helpers import canvas_shot, spot_pixels

    shot = canvas_shot(viewer)
    px, inside = spot_pixels(viewer, layer, shot)
    got = shot[px[inside, 0], px[inside, 1], :3].astype(float)
    assert np.mean(np.abs(got - layer.face_color[inside, :3] * 255).max(axis=1) < 30) > 0.95


@gui
def test_no_dense_copy_of_x(make_napari_viewer):
    import napari_spatialdl as sdl
    from napari_spatialdl._widgets._viewer import color_spots, find_spots_layer

    adata, dense = _grid_adata(12, 20, matrix=NoDenseCSR)
    assert isinstance(adata.X, NoDenseCSR)
    viewer = _viewer(make_napari_viewer)
    sdl.show(adata, viewer, color="G2")
    layer = find_spots_layer(viewer)
    np.testing.assert_array_equal(layer.features["G2"], dense[:, 2])
    color_spots(layer, "G7")
    np.testing.assert_array_equal(layer.face_color, _reference(dense[:, 7], "numeric"))
    assert isinstance(adata.X, NoDenseCSR)  # the user's matrix is left as it was


@gui
def test_overview_far_out_detail_up_close(make_napari_viewer, monkeypatch):
    """More spots than drawn at once: an overview image far out, the spots in view up close."""
    from gui_helpers import canvas_shot, save_window, spot_pixels

    import napari_spatialdl as sdl
    from napari_spatialdl._widgets import _overview
    from napari_spatialdl._widgets._viewer import color_spots, find_spots_layer

    monkeypatch.setattr(_overview, "MAX_DRAWN", 150)
    adata, dense = _grid_adata(30, 20)  # 900 spots
    viewer = _viewer(make_napari_viewer)
    sdl.show(adata, viewer, color="domain")
    layer = find_spots_layer(viewer)
    ov = _overview.overview_of(layer)
    assert ov is not None and ov.mode == "overview"
    assert viewer.layers.index(ov.image) == viewer.layers.index(layer) - 1  # right under the spots
    assert viewer.layers.selection.active is layer
    assert not layer.shown.any() and ov.image.visible

    def pixel_colours():
        pix = np.floor((np.asarray(layer.data) - ov.origin) / ov.pitch).astype(int)
        return ov.image.data[pix[:, 0], pix[:, 1]]

    # every spot's pixel holds its colour (one spot per pixel on this grid)
    np.testing.assert_array_equal(pixel_colours(), np.round(layer.face_color * 255).astype(np.uint8))
    shot = canvas_shot(viewer)
    px, inside = spot_pixels(viewer, layer, shot)
    got = shot[px[inside, 0], px[inside, 1], :3].astype(float)
    assert np.mean(np.abs(got - layer.face_color[inside, :3] * 255).max(axis=1) < 30) > 0.9
    save_window(viewer, "overview_far_out")

    # recolouring far out redraws the image
    color_spots(layer, "G4", cmap="magma")
    np.testing.assert_array_equal(pixel_colours(), np.round(layer.face_color * 255).astype(np.uint8))
    # hover far out: looked up from the spot under the cursor
    i = 431
    status = _status_at(viewer, layer, i)
    assert f"barcode: {adata.obs_names[i]}" in status and f"G4: {int(dense[i, 4])}" in status
    assert ov.spot_at(layer.data_to_world(layer.data[i])) == i
    assert ov.spot_at(layer.data_to_world(layer.data[i] + 0.45 * layer.size[i])) == i
    assert ov.spot_at(layer.data_to_world(layer.data.min(axis=0) - 3 * layer.size[0])) is None

    # up close: the spots in (and around) the view are drawn as markers, the image is hidden
    center = layer.data_to_world(layer.data[i])
    viewer.camera.center = tuple(center)
    viewer.camera.zoom = viewer.camera.zoom * 6
    assert ov.mode == "detail" and not ov.image.visible
    assert 0 < layer.shown.sum() <= 150 and layer.shown[i]
    shot = canvas_shot(viewer)
    px, inside = spot_pixels(viewer, layer, shot)
    assert layer.shown[inside].all()  # every spot on the canvas is shown
    got = shot[px[inside, 0], px[inside, 1], :3].astype(float)
    assert np.mean(np.abs(got - layer.face_color[inside, :3] * 255).max(axis=1) < 30) > 0.9
    save_window(viewer, "overview_up_close")
    status = _status_at(viewer, layer, i)  # napari's own hover on the shown markers
    assert f"barcode: {adata.obs_names[i]}" in status and f"G4: {int(dense[i, 4])}" in status

    # back out: overview again; hiding the spots hides it
    viewer.reset_view()
    assert ov.mode == "overview" and ov.image.visible and not layer.shown.any()
    layer.visible = False
    assert not ov.image.visible
    layer.visible = True
    assert ov.image.visible
    # colours set directly (as the annotation view does) reach the image too
    rgba = np.array(layer.face_color)
    rgba[:10] = [1.0, 0.0, 0.0, 1.0]
    layer.face_color = rgba
    np.testing.assert_array_equal(pixel_colours()[:10], [[255, 0, 0, 255]] * 10)
    # removing the image ends the overview and shows every spot
    viewer.layers.remove(ov.image)
    assert _overview.overview_of(layer) is None and layer.shown.all()


@gui
def test_visium_hd_bins_are_squares_of_their_size(make_napari_viewer):
    from gui_helpers import canvas_shot, save_window

    import napari_spatialdl as sdl
    from napari_spatialdl._widgets._viewer import find_spots_layer

    adata, _ = _grid_adata(10, 8, squares=True)
    viewer = _viewer(make_napari_viewer)
    sdl.show(adata, viewer, color="domain")
    layer = find_spots_layer(viewer)
    assert {str(s) for s in layer.symbol} == {"square"}
    # the bin side in the layer's data units: 10 full-res px x the image's scale factor 0.5
    # (drawn 0.1 % larger: no seams)
    np.testing.assert_allclose(layer.size, 5.0, rtol=2e-3)
    np.testing.assert_allclose(np.diff(np.unique(layer.data[:, 1])), 5.0)  # pitch = side: bins tile
    assert np.all(layer.border_width == 0)

    # on the canvas a bin is as wide as its side, and adjacent bins leave no gap
    i = 44
    viewer.camera.center = tuple(layer.data_to_world(layer.data[i]))
    world_side = float(layer.data_to_world(np.array([0.0, 5.0]))[1] - layer.data_to_world(np.array([0.0, 0.0]))[1])
    viewer.camera.zoom = 30.0 / world_side  # 30 screen px per bin
    layer.face_color = np.tile([0.9, 0.1, 0.1, 1.0], (len(layer.data), 1))
    shot = canvas_shot(viewer)
    save_window(viewer, "visium_hd_squares")
    h, w = shot.shape[:2]
    ratio = w / viewer.canvas.size[1]
    middle = shot[h // 2, :, :3].astype(int)
    red = (middle[:, 0] > 180) & (middle[:, 1] < 80)
    # the row through bin centres is red across the 10 bins (10 x 30 px), without seams between them
    run = np.flatnonzero(red)
    assert np.all(np.diff(run) == 1), "a gap between adjacent bins"
    assert len(run) / ratio == pytest.approx(10 * 30.0, abs=3.0)
    # one bin alone: its width on screen is its side
    single = np.tile([0.1, 0.1, 0.9, 1.0], (len(layer.data), 1))
    layer.face_color = np.where(np.arange(len(layer.data))[:, None] == i, [0.9, 0.1, 0.1, 1.0], single)
    shot = canvas_shot(viewer)
    middle = shot[h // 2, :, :3].astype(int)
    width = int(((middle[:, 0] > 180) & (middle[:, 2] < 80)).sum()) / ratio
    assert width == pytest.approx(30.0, abs=2.0)


def test_overview_of_long_rows_of_bins_shows_every_bin():
    """Visium HD bins are drawn 0.1 % larger than their side (no seams); across a row of 2,000 bins
    the overview still gives each bin its own pixel, so none is hidden in the image."""
    from napari.components import ViewerModel

    from napari_spatialdl._widgets import _overview
    from napari_spatialdl._widgets._compat import shown_points_class

    cols, rows = 2000, 3
    row, col = np.divmod(np.arange(cols * rows), cols)
    data = np.stack([row, col], 1) * 8.0 + 4.0
    viewer = ViewerModel()
    layer = viewer.add_layer(shown_points_class()(data, size=8.0 * _overview.SQUARE_OVERLAP, symbol="square",
                                                  face_color="red", shown=False))
    ov = _overview.SpotsOverview(viewer, layer, max_drawn=10)
    assert ov.shape == (rows, cols)
    assert len(ov._pixels) == len(data)  # one pixel per bin: none drawn over by its neighbour
