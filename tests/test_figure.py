"""Readable results by default: world coordinates in µm (scale bar), and one figure with the legend.

The scale part needs no display; the figure tests run a real viewer (under xvfb-run)::

    xvfb-run -a -s "-screen 0 1600x1200x24" python -m pytest tests/test_figure.py

The saved figures are kept in $SPATIALDL_SHOTS (default /tmp/spatialdl_screenshots) to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

gui = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)"),
]


def _gui(test):
    for mark in gui:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def small():
    from napari_spatialdl.datasets import synthetic_tissue

    spatial, _ = synthetic_tissue(0, n_spots=300, n_genes=60, n_cell_types=4, n_reference_cells=200,
                                  image_size=500)
    return spatial


def _neighbour_distances(yx: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(yx).query(yx, k=2)
    return dist[:, 1]


# ----------------------------------------------------------------------------- µm (no display)
def test_microns_per_pixel_from_the_visium_grid(small):
    from napari_spatialdl.datasets._synthetic import SPOT_PITCH_FULLRES
    from napari_spatialdl.io._microns import microns_per_pixel

    assert microns_per_pixel(small) == pytest.approx(100.0 / SPOT_PITCH_FULLRES, rel=1e-9)


def test_microns_per_pixel_from_space_ranger_files(shared_data):
    """Real Space Ranger output: 100 µm between neighbouring spot centres, from the grid or, without
    it, from spot_diameter_fullres (a 65 µm spot as Space Ranger defines it)."""
    import anndata as ad

    from napari_spatialdl.io import read_visium
    from napari_spatialdl.io._microns import microns_per_pixel

    adata = read_visium(shared_data / "visium_spaceranger_1.0.0")
    um = microns_per_pixel(adata)
    positions = shared_data / "visium_spaceranger_1.0.0" / "spatial" / "tissue_positions_list.csv"
    import pandas as pd

    table = pd.read_csv(positions, header=None)
    full = table[[4, 5]].to_numpy(float)  # all 4992 barcodes: (row, col) full-resolution pixels
    assert np.median(_neighbour_distances(full)) * um == pytest.approx(100.0, abs=1.0)

    subset = ad.read_h5ad(shared_data / "mouse_brain_visium_subset" / "test_data.h5ad")
    assert "array_row" not in subset.obs  # the diameter is all there is
    um = microns_per_pixel(subset)
    lib = next(iter(subset.uns["spatial"]))
    assert um == pytest.approx(65.0 / subset.uns["spatial"][lib]["scalefactors"]["spot_diameter_fullres"])
    assert np.median(_neighbour_distances(subset.obsm["spatial"].astype(float))) * um == pytest.approx(100, abs=2)


def test_microns_per_pixel_unknown_or_not_visium(small):
    from napari_spatialdl.io._microns import microns_per_pixel

    lib = next(iter(small.uns["spatial"]))
    explicit = small.copy()
    explicit.uns["spatial"][lib]["scalefactors"]["microns_per_pixel"] = 0.5
    assert microns_per_pixel(explicit) == 0.5  # written by Space Ranger HD: taken as it is

    bare = small.copy()
    del bare.obs["array_row"]
    del bare.uns["spatial"][lib]["scalefactors"]["spot_diameter_fullres"]
    assert microns_per_pixel(bare) is None  # nothing says the physical size

    touching = small.copy()  # bins or cells: objects as large as their spacing are no Visium spots
    del touching.obs["array_row"]
    touching.uns["spatial"][lib]["scalefactors"]["spot_diameter_fullres"] = 160.0
    assert microns_per_pixel(touching) is None

    square = small.copy()  # a square grid (Visium HD bins) is not the hexagonal Visium lattice
    xy = square.obsm["spatial"]
    square.obs["array_col"] = np.round(xy[:, 0] / 50).astype(int)
    square.obs["array_row"] = np.round(xy[:, 1] / 50).astype(int)
    del square.uns["spatial"][lib]["scalefactors"]["spot_diameter_fullres"]
    assert microns_per_pixel(square) is None

    linked = small.copy()  # a SpatialData keeps its coordinate system
    linked.uns["spatialdl_spatialdata"] = {"coordinate_system": "global"}
    assert microns_per_pixel(linked) is None


def test_layers_are_in_microns(small):
    """Image and spots carry the same µm scale: neighbouring spots 100 µm apart in world units,
    spots as wide as the synthetic spot (0.55 of the pitch: 55 µm), the image under them."""
    from napari.layers import Image, Points

    from napari_spatialdl.layers import spatial_layers

    (img, img_kw, _), (data, pts_kw, _) = spatial_layers(small, color="region")
    assert pts_kw["units"] == img_kw["units"] == ("um", "um")
    assert pts_kw["scale"] == img_kw["scale"]
    points, image = Points(data, **pts_kw), Image(img, **img_kw)
    world = np.array([points.data_to_world(p) for p in points.data])
    assert np.median(_neighbour_distances(world)) == pytest.approx(100.0, abs=1e-6)
    assert float(points.size[0]) * points.scale[-1] == pytest.approx(55.0, rel=1e-6)
    # the same world point is the same place on the image: spot 0's image pixel
    pixel = image.world_to_data(world[0])
    np.testing.assert_allclose(pixel, data[0], atol=1e-6)


# ----------------------------------------------------------------------------- the viewer
def _process(n: int = 4) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()


@pytest.fixture
def sample(make_napari_viewer):
    """The synthetic sample (File > Open Sample) with the Colour spots panel from the Plugins menu."""
    from gui_helpers import add_panel, plugin_viewer
    from napari.layers import Points

    viewer = plugin_viewer(make_napari_viewer)
    viewer.open_sample("napari-spatialdl", "synthetic_tissue")
    spots = next(lyr for lyr in viewer.layers if isinstance(lyr, Points))
    panel = add_panel(viewer, "Colour spots")
    _process()
    return viewer, spots, panel


def _keep(path) -> None:
    from gui_helpers import SHOTS

    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / f"figure_{path.name}")


def _read(path) -> tuple[np.ndarray, tuple[float, float] | None]:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")), im.info.get("dpi")


def _hex_rgb(color: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.round(np.asarray(to_rgb(color)) * 255)


def _pixels_of(region: np.ndarray, rgb: np.ndarray, tol: float = 3) -> int:
    return int((np.abs(region.astype(float) - rgb).max(axis=2) <= tol).sum())


def _fill_canvas(viewer) -> None:
    """Zoom in so that the tissue image covers the whole canvas (nothing for the figure to crop)."""
    viewer.reset_view()
    viewer.camera.zoom = viewer.camera.zoom * 1.6
    _process()


@_gui
def test_scale_bar_visible_in_microns(sample):
    viewer, spots, _ = sample
    assert viewer.scale_bar.visible
    assert str(viewer.layers.units[-1]) == "micrometer"
    world = spots.data_to_world(spots.data[0]), spots.data_to_world(spots.data[1])
    yx = np.array([spots.data_to_world(p) for p in spots.data])
    assert np.median(_neighbour_distances(yx)) == pytest.approx(100.0, abs=1e-6)  # Visium pitch
    assert np.linalg.norm(np.subtract(*world)) > 0
    image = next(lyr for lyr in viewer.layers if lyr is not spots)
    np.testing.assert_allclose(image.scale, spots.scale)
    np.testing.assert_allclose(image.world_to_data(yx[5]), spots.data[5], atol=1e-6)


@_gui
def test_figure_categorical_from_the_legend_button(sample, tmp_path, monkeypatch):
    """The legend's "Save figure…" button: the canvas, a legend with every category's swatch
    and a scale bar of the right length, at 300 dpi."""
    from napari_spatialdl._widgets._figure import _nice_length

    viewer, spots, panel = sample
    panel.set_key("region")
    _process()
    legend = panel.legend
    assert legend.save_button.isEnabled()
    _fill_canvas(viewer)
    canvas = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    out = tmp_path / "regions.png"
    asked = []
    monkeypatch.setattr(legend, "ask_figure_path", lambda suggested: asked.append(suggested) or str(out))
    legend.save_button.click()
    assert asked and asked[0].endswith("Region.png")  # default name from the legend's title
    assert out.is_file(), legend.save_status.text()
    assert legend.save_status.text() == "Saved regions.png"
    assert legend.save_button.isVisible() and legend.save_status.isVisible()
    from gui_helpers import save_window

    save_window(viewer, "figure_legend_button")
    _keep(out)

    fig, dpi = _read(out)
    assert dpi is not None and dpi[0] == pytest.approx(300, abs=0.5)
    # the tissue panel is the canvas at 3x (300 dpi / 100), with a legend beside it
    panel_h, panel_w = 3 * canvas.shape[0], 3 * canvas.shape[1]
    assert fig.shape[0] >= panel_h and fig.shape[1] > panel_w + 300
    pad = round(0.15 * 300)
    tissue = fig[pad:pad + panel_h, pad:pad + panel_w]
    legend_area = fig[:, pad + panel_w + 10:]
    info = spots.metadata["spatialdl_legend"]
    for name, color in info.categories.items():
        # a swatch is about 12 pt square at this size: hundreds of pixels of exactly its colour
        assert _pixels_of(legend_area, _hex_rgb(color)) > 300, name
    # the panel shows what the canvas shows (same view, 3x the pixels)
    small = tissue.reshape(canvas.shape[0], 3, canvas.shape[1], 3, 3).mean(axis=(1, 3))
    core = (slice(20, -60), slice(20, -60))  # away from the scale bars in the corners
    assert np.median(np.abs(small[core] - canvas[..., :3][core].astype(float))) < 12

    # the scale bar: a black bar in the lower right corner, as long as its length in µm says
    um_per_px = viewer.canvas.size[1] / viewer.camera.zoom / panel_w  # world (µm) across / pixels
    length = _nice_length(0.2 * panel_w * um_per_px)
    corner = tissue[-panel_h // 4:, -panel_w // 2:]
    black = (corner.max(axis=2) < 40)
    longest = max(_longest_run(row) for row in black)
    assert longest == pytest.approx(length / um_per_px, abs=4)


def _longest_run(row: np.ndarray) -> int:
    best = run = 0
    for v in row:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


@_gui
def test_figure_numeric_png_pdf_svg_tiff(sample, tmp_path):
    import matplotlib

    import napari_spatialdl as sdl

    viewer, spots, panel = sample
    adata = spots.metadata["adata"]
    gene = adata.var_names[int(np.argmax(np.asarray(adata.X.sum(0)).ravel()))]
    panel.set_key(gene)
    _process()
    info = spots.metadata["spatialdl_legend"]
    assert info.kind == "numeric"
    _fill_canvas(viewer)
    size = (420, 560)
    out = sdl.save_figure(viewer, tmp_path / "gene.png", dpi=150, size=size)
    assert out == tmp_path / "gene.png"
    _keep(out)
    fig, dpi = _read(out)
    assert dpi[0] == pytest.approx(150, abs=0.5)
    assert fig.shape[0] >= size[0] and fig.shape[1] > size[1] + 100
    pad = round(0.15 * 150)
    legend_area = fig[:, pad + size[1] + 5:]
    cmap = matplotlib.colormaps[info.cmap]
    for q in (0.02, 0.5, 0.98):  # the colour bar runs through the colormap
        rgb = np.round(np.asarray(cmap(q)[:3]) * 255)
        assert _pixels_of(legend_area, rgb, tol=6) > 20, q
    # napari's own canvas colour bar and scale bar are not drawn into the panel (the figure has its own)
    assert viewer.scale_bar.visible and spots.face_colorbar.visible  # and they are back on the canvas

    pdf = sdl.save_figure(viewer, tmp_path / "gene.pdf", size=size)
    head = pdf.read_bytes()
    assert head.startswith(b"%PDF") and b"/Subtype /Image" in head
    # the tissue is embedded at its rendered pixels (not resampled), the page a little wider (legend)
    import re

    widths = [int(w) for w in re.findall(rb"/Width (\d+)", head)]
    assert max(widths) >= 0.8 * size[1]
    page_w = float(re.search(rb"/MediaBox \[ 0 0 ([\d.]+)", head).group(1)) / 72  # inches
    assert page_w > max(widths) / 300 + 0.5
    svg = sdl.save_figure(viewer, tmp_path / "gene.svg", dpi=100)
    assert b"<svg" in svg.read_bytes()[:2000] and b"<image" in svg.read_bytes()
    tif = sdl.save_figure(viewer, tmp_path / "gene.tiff", dpi=200, size=size)
    image, tif_dpi = _read(tif)
    assert tif_dpi[0] == pytest.approx(200, abs=0.5) and image.shape[1] > size[1]
    _keep(pdf)


@_gui
def test_figure_errors(make_napari_viewer, small, tmp_path):
    from gui_helpers import plugin_viewer

    import napari_spatialdl as sdl
    from napari_spatialdl._widgets._figure import FigureError
    from napari_spatialdl._widgets._legend import ensure_legend

    viewer = plugin_viewer(make_napari_viewer)
    with pytest.raises(FigureError, match="no spots layer"):
        sdl.save_figure(viewer, tmp_path / "a.png")
    sdl.show(small, viewer)  # plain spots
    with pytest.raises(ValueError, match="Colour the spots first"):
        sdl.save_figure(viewer, tmp_path / "a.png")
    legend = ensure_legend(viewer)
    assert not legend.save_button.isEnabled()
    with pytest.raises(FigureError, match=r"\.png, \.pdf, \.svg, \.tif, \.tiff"):
        sdl.save_figure(viewer, tmp_path / "a.bmp")
    with pytest.raises(FigureError, match="does not exist"):
        sdl.save_figure(viewer, tmp_path / "missing" / "a.png")
    from napari_spatialdl._widgets._viewer import color_spots, find_spots_layer

    spots = find_spots_layer(viewer)
    color_spots(spots, "region")
    _process()
    assert legend.save_button.isEnabled()
    with pytest.raises(FigureError, match="dpi"):
        sdl.save_figure(viewer, tmp_path / "a.png", dpi=0)
    with pytest.raises(FigureError, match="size"):
        sdl.save_figure(viewer, tmp_path / "a.png", size=(10.5, 20))
    spots.visible = False
    with pytest.raises(FigureError, match="hidden"):
        sdl.save_figure(viewer, tmp_path / "a.png")
    assert not list(tmp_path.iterdir())  # nothing written on failure
    spots.visible = True
    # the button reports a failure in the dock instead of raising
    legend.ask_figure_path = lambda suggested: str(tmp_path / "a.jpeg")
    legend.save_button.click()
    assert "not supported" in legend.save_status.text() and legend.save_status.isVisible()


def test_save_figure_is_lazy_and_qt_free_to_import():
    code = ("import sys, napari_spatialdl as s; f = s.save_figure; "
            "assert f.__module__ == 'napari_spatialdl._widgets._figure'; "
            "assert not any(m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'napari') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
