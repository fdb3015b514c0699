"""Make every screenshot of the documentation by driving a real napari viewer.

Each figure opens napari, loads data the way a user does (File > Open Sample, File > Open Folder),
opens the plugin's panels from the Plugins menu entries (``add_plugin_dock_widget``), sets their
inputs, presses **Run**, waits for the worker while Qt processes events, and takes a screenshot of
the window. Nothing is drawn by hand: what you see is what the widgets show.

Run it from the repository root under a virtual X server::

    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_figures.py
    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_figures.py --only deconvolve regions

The real-H&E figures read ``../shared/data/visium_spaceranger_1.0.0`` (next to the repository) and
are skipped with a message when it is absent. PNGs are written to ``docs/images/``, at most
``MAX_WIDTH`` pixels wide and palette-quantised when that keeps them faithful.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
SHARED_HNE = ROOT.parent / "shared" / "data" / "visium_spaceranger_1.0.0"
PLUGIN = "napari-spatialdl"
#: window size in logical pixels; PNGs wider than MAX_WIDTH are scaled down
WINDOW = (1440, 1100)
MAX_WIDTH = 1280
RUN_TIMEOUT_S = 1800.0
#: opacity of the tissue image in the multi-panel figures (the tip in the tutorials)
PANEL_IMAGE_OPACITY = 0.4
#: factor on the real H&E spots' point size in the region figures (display only)
HNE_POINT_SIZE = 2.0

FIGURES: dict[str, Callable[[], list[Path]]] = {}


def figure(name: str) -> Callable[[Callable[[], list[Path]]], Callable[[], list[Path]]]:
    """Register a figure function under ``name`` (for ``--only``)."""

    def deco(func: Callable[[], list[Path]]) -> Callable[[], list[Path]]:
        FIGURES[name] = func
        return func

    return deco


# ----------------------------------------------------------------------------- Qt helpers
def app() -> Any:
    from qtpy.QtWidgets import QApplication

    return QApplication.instance()


def settle(seconds: float = 0.4) -> None:
    """Process Qt events for a while (layout, painting, queued signals)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app().processEvents()
        time.sleep(0.01)


def new_viewer(size: tuple[int, int] = WINDOW) -> Any:
    import napari

    viewer = napari.Viewer(show=True, title="napari")
    viewer.window._qt_window.resize(*size)
    settle(0.3)
    return viewer


def close(viewer: Any) -> None:
    viewer.close()
    settle(0.2)


def dock(viewer: Any, name: str, shot: str | None = None) -> Any:
    """Plugins > Spatial DL > ``name`` (clicked in the menu); returns the panel.

    With ``shot``, the open menus are saved as that figure first.
    """
    action = open_menu(viewer, "Plugins", "Spatial DL", name)
    if shot:
        screen_shot(shot, menu_box(viewer))
    close_menus(viewer)
    before = set(viewer.window.dock_widgets)
    action.trigger()
    settle(0.3)
    new = [key for key in viewer.window.dock_widgets if key not in before]
    if len(new) != 1:
        raise RuntimeError(f"Plugins > Spatial DL > {name} docked {new}")
    return viewer.window.dock_widgets[new[0]]


def close_dock(viewer: Any, title: str) -> None:
    """Close docked panels whose title starts with ``title`` (the x button of the dock)."""
    for key in [k for k in viewer.window.dock_widgets if k.startswith(title)]:
        viewer.window.remove_dock_widget(viewer.window.dock_widgets[key])
    settle(0.2)


def fit(viewer: Any) -> None:
    """Back to the standard window size, then fit the view to the layers."""
    viewer.window._qt_window.resize(*WINDOW)
    settle(0.3)
    viewer.reset_view(margin=0.02)
    settle(0.2)


def zoom_to(viewer: Any, layer: Any, margin: float = 0.1) -> None:
    """Standard window size, then centre and zoom the camera on ``layer``'s data (the mouse wheel)."""
    viewer.window._qt_window.resize(*WINDOW)
    settle(0.3)
    yx = np.asarray(layer.data)[:, -2:] * np.asarray(layer.scale)[-2:] + np.asarray(layer.translate)[-2:]
    lo, hi = yx.min(axis=0), yx.max(axis=0)
    height, width = viewer.window._qt_viewer.canvas.size
    viewer.camera.center = tuple((lo + hi) / 2)
    viewer.camera.zoom = (1 - margin) * min(height / max(hi[0] - lo[0], 1), width / max(hi[1] - lo[1], 1))
    settle(0.2)


def press_run(widget: Any, timeout: float = RUN_TIMEOUT_S) -> Any:
    """Click Run (as a user does) and process events until the worker is done."""
    if not widget.run_button.isEnabled():
        raise RuntimeError(f"{widget.title}: Run is disabled: {widget.controls.reason.text()}")
    widget.run_button.click()
    run = widget.last_run
    start = time.perf_counter()
    while not run.done:
        app().processEvents()
        time.sleep(0.01)
        if time.perf_counter() - start > timeout:
            run.cancel()
            raise TimeoutError(f"{widget.title} did not finish within {timeout} s")
    settle(0.5)
    if run.error is not None:
        raise RuntimeError(f"{widget.title} failed: {run.error}") from run.error
    print(f"  {widget.title}: done in {time.perf_counter() - start:.1f} s", flush=True)
    return run


def save(image: np.ndarray, name: str, *, max_width: int = MAX_WIDTH) -> Path:
    """Write an RGB(A) array as an optimised PNG in docs/images/."""
    from PIL import Image

    IMAGES.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    path = IMAGES / f"{name}.png"
    # a 256-colour palette keeps screenshots faithful at a third of the size; keep the smallest
    # candidate whose mean error stays below 2.5 (of 255) per channel
    rgb = np.asarray(img, dtype=float)
    best = img
    for method in (Image.Quantize.MEDIANCUT, Image.Quantize.FASTOCTREE):
        candidate = img.quantize(colors=256, method=method, dither=Image.Dither.NONE)
        if np.abs(np.asarray(candidate.convert("RGB"), dtype=float) - rgb).mean() < 2.5:
            best = candidate if best is img or _png_size(candidate) < _png_size(best) else best
    best.save(path, optimize=True)
    print(f"  wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} kB)", flush=True)
    return path


def _png_size(img: Any) -> int:
    import io

    buffer = io.BytesIO()
    img.save(buffer, "PNG", optimize=True)
    return buffer.tell()


def window_shot(viewer: Any, name: str) -> Path:
    """The whole napari window (canvas, layer list, docked panels)."""
    settle(0.3)
    return save(viewer.screenshot(canvas_only=False, flash=False), name)


def canvas_shot(viewer: Any, scale: float = 2.0) -> np.ndarray:
    """The canvas alone, rendered at ``scale`` times the screen resolution (sharper spots)."""
    settle(0.2)
    zoom = viewer.camera.zoom
    viewer.camera.zoom = zoom * scale  # napari's scaled screenshot keeps the zoom: scale it too
    try:
        shot = np.asarray(viewer.screenshot(canvas_only=True, scale=scale, flash=False))
    finally:
        viewer.camera.zoom = zoom
    return shot


def widget_shot(widget: Any, name: str) -> Path:
    """One panel on its own (Qt's grab of the widget)."""
    from qtpy.QtGui import QImage

    settle(0.2)
    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGBA8888)
    ptr = image.constBits()
    ptr.setsize(image.height() * image.bytesPerLine())
    arr = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return save(arr[:, : image.width()].copy(), name)


def panels(images: list[np.ndarray], titles: list[str], name: str, *, n_cols: int = 2,
           width: int = 600, gap: int = 8) -> Path:
    """Canvas screenshots in a grid, each resized to ``width`` with a title above (PIL only)."""
    from PIL import Image, ImageDraw, ImageFont

    tiles = []
    for img in images:
        tile = Image.fromarray(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
        tiles.append(tile.resize((width, round(tile.height * width / tile.width)), Image.LANCZOS))
    title_h = 30
    cell_h = max(t.height for t in tiles) + title_h
    n_rows = -(-len(tiles) // n_cols)
    cols = min(n_cols, len(tiles))
    out = Image.new("RGB", (cols * width + (cols - 1) * gap, n_rows * cell_h + (n_rows - 1) * gap),
                    (38, 40, 48))
    draw = ImageDraw.Draw(out)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 18)
    except OSError:
        font = ImageFont.load_default()
    for i, (tile, title) in enumerate(zip(tiles, titles)):
        x, y = (i % n_cols) * (width + gap), (i // n_cols) * (cell_h + gap)
        out.paste(tile, (x, y + title_h))
        draw.text((x + 10, y + 5), title, fill=(235, 235, 235), font=font)
    return save(np.asarray(out), name)


def _menu_text(action: Any) -> str:
    return action.text().replace("&&", "\0").replace("&", "").replace("\0", "&")


def open_menu(viewer: Any, *path: str) -> Any:
    """Open the menu bar entries ``path`` (e.g. "File", "Open Sample", "Spatial DL", ...) as the
    mouse does, leaving them open; returns the last action (``action.trigger()`` clicks it)."""
    bar = viewer.window._qt_window.menuBar()
    actions, parent, action = bar.actions(), bar, None
    for i, text in enumerate(path):
        action = next((a for a in actions if _menu_text(a).startswith(text)), None)
        if action is None:
            raise LookupError(f"no menu entry {text!r} under {path[:i]}: {[_menu_text(a) for a in actions]}")
        parent.setActiveAction(action)
        settle(0.4)
        if action.menu() is not None and i < len(path) - 1:
            parent = action.menu()
            actions = parent.actions()
    return action


def close_menus(viewer: Any) -> None:
    from qtpy.QtWidgets import QMenu

    for menu in viewer.window._qt_window.findChildren(QMenu):
        if menu.isVisible():
            menu.hide()
    settle(0.2)


def screen_shot(name: str, box: tuple[int, int, int, int]) -> Path:
    """The X screen (popup menus included) cropped to ``box`` = (left, top, right, bottom)."""
    from qtpy.QtGui import QImage

    settle(0.2)
    image = app().primaryScreen().grabWindow(0).toImage().convertToFormat(QImage.Format.Format_RGBA8888)
    ptr = image.constBits()
    ptr.setsize(image.height() * image.bytesPerLine())
    arr = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    left, top, right, bottom = box
    return save(arr[top:bottom, left:right, :3].copy(), name)


def menu_box(viewer: Any, pad: int = 12) -> tuple[int, int, int, int]:
    """Screen box around the open menus and the window's top-left corner."""
    from qtpy.QtWidgets import QMenu

    win = viewer.window._qt_window
    origin = win.mapToGlobal(win.rect().topLeft())
    right, bottom = origin.x() + 200, origin.y() + 120
    for menu in win.findChildren(QMenu):
        if menu.isVisible():
            g = menu.geometry()
            right, bottom = max(right, g.right()), max(bottom, g.bottom())
    return origin.x(), origin.y(), right + pad, bottom + pad


def crop_to_spots(viewer: Any, shot: np.ndarray, layer: Any, pad: float = 0.06) -> np.ndarray:
    """Crop a canvas screenshot to the spots' bounding box (plus a margin)."""
    yx = np.asarray(layer.data) * np.asarray(layer.scale) + np.asarray(layer.translate)
    center = np.asarray(viewer.camera.center)[-2:]
    canvas_h = viewer.window._qt_viewer.canvas.size[0]
    scale = shot.shape[0] / canvas_h if canvas_h else 1.0
    rc = (yx - center) * viewer.camera.zoom * scale + np.array(shot.shape[:2]) / 2
    lo, hi = rc.min(axis=0), rc.max(axis=0)
    margin = pad * (hi - lo).max()
    r0, c0 = np.maximum(0, np.floor(lo - margin)).astype(int)
    r1, c1 = np.minimum(shot.shape[:2], np.ceil(hi + margin)).astype(int)
    return shot[r0:r1, c0:c1]


# ----------------------------------------------------------------------------- data
def open_synthetic(viewer: Any, shot: str | None = None) -> Any:
    """File > Open Sample > Spatial DL > Synthetic tissue (clicked in the menu); the spots layer.

    With ``shot``, the open menus are saved as that figure first.
    """
    action = open_menu(viewer, "File", "Open Sample", "Spatial DL", "Synthetic tissue")
    if shot:
        screen_shot(shot, menu_box(viewer))
    close_menus(viewer)
    action.trigger()
    settle(0.3)
    return viewer.layers[-1]


def image_opacity(viewer: Any, opacity: float) -> None:
    """Set the opacity of the tissue image layer(s), as the layer controls' slider does."""
    from napari.layers import Image

    for layer in viewer.layers:
        if isinstance(layer, Image):
            layer.opacity = opacity
    settle(0.1)


def open_hne(viewer: Any) -> Any:
    """File > Open Folder... on the real Space Ranger 1.0.0 output; returns the spots layer."""
    import warnings

    with warnings.catch_warnings():  # the blank hires image: the reader falls back to lowres
        warnings.simplefilter("ignore", UserWarning)
        viewer.open(str(SHARED_HNE), plugin=PLUGIN)
    settle(0.2)
    return viewer.layers[-1]


def with_two_sections(spatial: Any, seed: int = 1, effect: float = 0.6) -> Any:
    """The synthetic tissue split into two 'sections' (left/right halves), the right one with a
    gene-specific batch effect on its counts (each gene scaled by exp(N(0, effect)), Poisson-resampled).
    """
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    out = spatial.copy()
    x = np.asarray(out.obsm["spatial"])[:, 0]
    right = x > np.median(x)
    counts = out.X.toarray() if sp.issparse(out.X) else np.asarray(out.X)
    factor = np.exp(rng.normal(0.0, effect, out.n_vars))
    counts[right] = rng.poisson(counts[right] * factor[None, :])
    if (counts.sum(axis=1) == 0).any():
        raise RuntimeError("the simulated batch effect emptied a spot: use another seed")
    out.X = sp.csr_matrix(counts.astype(np.float32))
    out.layers["counts"] = out.X.copy()
    out.obs["section"] = pd.Categorical(np.where(right, "section B", "section A"))
    return out


# ----------------------------------------------------------------------------- figures
@figure("quickstart")
def fig_quickstart() -> list[Path]:
    """Quick start: the menus, the sample as it opens, the Deconvolve panel before and after Run."""
    viewer = new_viewer()
    open_synthetic(viewer, shot="menu_open_sample")
    fit(viewer)
    paths = [IMAGES / "menu_open_sample.png", window_shot(viewer, "quickstart_sample")]
    widget = dock(viewer, "Deconvolve", shot="menu_plugins")
    paths.append(IMAGES / "menu_plugins.png")
    fit(viewer)
    paths.append(widget_shot(widget, "deconvolve_ready"))  # the panel alone, readable
    press_run(widget)
    widget.results.view.setCurrentText("proportion of")
    widget.results.cell_type.setCurrentText("Hippocampal pyramidal")
    fit(viewer)
    paths.append(window_shot(viewer, "deconvolve_proportion"))
    close(viewer)
    return paths


@figure("deconvolve")
def fig_deconvolve() -> list[Path]:
    """Deconvolution tutorial: dominant type, four proportion maps, Colour spots on the result."""
    viewer = new_viewer()
    spots = open_synthetic(viewer)
    widget = dock(viewer, "Deconvolve")
    fit(viewer)
    press_run(widget)
    widget.results.view.setCurrentText("dominant cell type")
    fit(viewer)
    paths = [window_shot(viewer, "deconvolve_dominant")]
    shots, titles = [], []
    image_opacity(viewer, PANEL_IMAGE_OPACITY)
    widget.results.view.setCurrentText("proportion of")
    for cell_type in ("Excitatory L2-3", "Oligodendrocyte", "Medium spiny neuron", "Astrocyte"):
        widget.results.cell_type.setCurrentText(cell_type)
        shots.append(crop_to_spots(viewer, canvas_shot(viewer), spots))
        titles.append(f"{cell_type} (0 to {spots.metadata['spatialdl_legend'].limits[1]:.2f})")
    # the truth of the simulation, drawn the same way, for comparison
    close_dock(viewer, "Deconvolve")
    close_dock(viewer, "Spots legend")
    color = dock(viewer, "Colour spots")
    color.set_key("true_dominant_cell_type")
    truth = crop_to_spots(viewer, canvas_shot(viewer), spots)
    color.set_key("spatialdl_dominant_cell_type")
    estimate = crop_to_spots(viewer, canvas_shot(viewer), spots)
    paths.append(panels(shots, titles, "deconvolve_four_types"))
    paths.append(panels([estimate, truth], ["estimated dominant cell type", "simulated truth"],
                        "deconvolve_vs_truth"))
    # the Colour spots panel on a gene, viridis, image dimmed (the tip in the tutorial)
    color.cmap_combo.setCurrentText("viridis")
    color.set_key("Mbp")
    color.auto_limits.setChecked(False)  # a few spots with many counts: cap the colour scale
    color.low.setValue(0.0)
    color.high.setValue(6.0)
    fit(viewer)
    paths.append(window_shot(viewer, "color_spots_gene"))
    close(viewer)
    return paths


@figure("annotate")
def fig_annotate() -> list[Path]:
    viewer = new_viewer()
    open_synthetic(viewer)
    widget = dock(viewer, "Annotate")
    widget.params.set(threshold=0.6)
    fit(viewer)
    press_run(widget)
    fit(viewer)
    paths = [window_shot(viewer, "annotate_result")]
    widget.results.view.setCurrentText("confidence")
    settle(0.3)
    paths.append(window_shot(viewer, "annotate_confidence"))
    close(viewer)
    return paths


@figure("impute")
def fig_impute() -> list[Path]:
    viewer = new_viewer()
    spots = open_synthetic(viewer)
    widget = dock(viewer, "Impute")
    if "layer" in widget.params.fields:
        widget.params.set(layer="counts")
    fit(viewer)
    press_run(widget)
    fit(viewer)
    view = widget.results
    view.gene.setCurrentIndex(view.gene.findText("Bcl11b"))  # picked from the drop-down
    view.which.setCurrentText("imputed")
    paths = [window_shot(viewer, "impute_result")]
    image_opacity(viewer, PANEL_IMAGE_OPACITY)
    shots = []
    for which in ("raw", "imputed"):
        view.which.setCurrentText(which)
        shots.append(crop_to_spots(viewer, canvas_shot(viewer), spots))
    paths.append(panels(shots, ["Bcl11b, raw counts", "Bcl11b, imputed (same colour scale)"],
                        "impute_raw_vs_imputed"))
    close(viewer)
    return paths


@figure("integrate")
def fig_integrate() -> list[Path]:
    """Integration tutorial: two 'sections' with a simulated batch effect, before and after."""
    import scanpy as sc

    from napari_spatialdl import show
    from napari_spatialdl._widgets._overlay import cluster_latent
    from napari_spatialdl.datasets import synthetic_tissue

    spatial, _ = synthetic_tissue(0)
    two = with_two_sections(spatial)
    viewer = new_viewer()
    show(two, viewer, color="section", name="Two sections", legend=False)
    widget = dock(viewer, "Integrate")
    widget.set_batch_key("section")
    fit(viewer)
    press_run(widget)
    widget.results.n_clusters.setValue(6)  # the simulation has 6 regions
    widget.results.recluster.click()
    fit(viewer)
    spots = widget.spots_layer
    paths = [window_shot(viewer, "integrate_result")]
    image_opacity(viewer, PANEL_IMAGE_OPACITY)
    after = crop_to_spots(viewer, canvas_shot(viewer), spots)
    # for comparison: the same clustering on the PCA of log-normalised counts, without integration
    plain = two.copy()
    sc.pp.normalize_total(plain, target_sum=1e4)
    sc.pp.log1p(plain)
    sc.pp.pca(plain, n_comps=10, random_state=0)
    plain.obsm["X_spatialdl"] = plain.obsm["X_pca"]
    cluster_latent(plain, n_clusters=widget.results.n_clusters.value(), key="pca_clusters")
    two.obs["pca_clusters"] = plain.obs["pca_clusters"]
    color = dock(viewer, "Colour spots")
    color.set_key("pca_clusters")
    before = crop_to_spots(viewer, canvas_shot(viewer), spots)
    color.set_key("section")
    batches = crop_to_spots(viewer, canvas_shot(viewer), spots)
    color.set_key("region")
    regions = crop_to_spots(viewer, canvas_shot(viewer), spots)
    paths.append(panels([batches, regions, before, after],
                        ["the two sections (batches)", "simulated anatomy (truth)",
                         "clusters without integration (PCA)", "clusters of X_spatialdl"],
                        "integrate_before_after"))
    close(viewer)
    return paths


@figure("regions")
def fig_regions() -> list[Path]:
    """Region annotation on the real H&E: draw, assign, then Annotate trained on the regions."""
    if not SHARED_HNE.is_dir():
        print(f"  skipped: {SHARED_HNE} is absent (the real H&E lives in ../shared/data)", flush=True)
        return []
    viewer = new_viewer()
    spots = open_hne(viewer)
    # real Visium spots are a few pixels of the lowres image: draw them twice as large
    # (the layer controls' point size; display only), as the tutorial suggests
    spots.size = np.asarray(spots.size) * HNE_POINT_SIZE
    regions = dock(viewer, "Annotate regions")
    zoom_to(viewer, spots)
    paths = [window_shot(viewer, "regions_opened")]
    layer = regions.new_regions_layer()
    yx = np.asarray(spots.data)  # image pixels; the regions layer shares the spots' transform
    lo, hi = yx.min(axis=0), yx.max(axis=0)
    span = hi - lo
    polygons = {
        "upper band": np.array([[lo[0] - 8, lo[1] - 8], [lo[0] - 8, hi[1] + 8],
                                [lo[0] + 0.42 * span[0], hi[1] + 8],
                                [lo[0] + 0.30 * span[0], lo[1] + 0.5 * span[1]],
                                [lo[0] + 0.38 * span[0], lo[1] - 8]]),
        "lower left": np.array([[lo[0] + 0.62 * span[0], lo[1] - 8],
                                [lo[0] + 0.58 * span[0], lo[1] + 0.42 * span[1]],
                                [hi[0] + 8, lo[1] + 0.36 * span[1]], [hi[0] + 8, lo[1] - 8]]),
    }
    for name, poly in polygons.items():
        regions.name.setText(name)  # "next region": the name the next shape gets
        layer.add_polygons([poly])
        settle(0.1)
    layer.mode = "pan_zoom"
    paths.append(window_shot(viewer, "regions_drawn"))
    regions.assign_button.click()
    settle(0.3)
    paths.append(window_shot(viewer, "regions_assigned"))
    drawn = crop_to_spots(viewer, canvas_shot(viewer, scale=3.0), spots)
    # next step: the Annotate panel, trained on the regions (the Regions panel closed for room)
    close_dock(viewer, "Annotate regions")
    annotate = dock(viewer, "Annotate")
    index = annotate.reference.combo.findText(f"'{spots.name}' itself (its own labels)")
    annotate.reference.combo.setCurrentIndex(index)
    annotate.set_labels_key(regions.key.text())
    annotate.params.set(threshold=0.6)
    zoom_to(viewer, spots)
    paths.append(window_shot(viewer, "regions_annotate_ready"))
    press_run(annotate)
    layer.visible = False
    zoom_to(viewer, spots)
    paths.append(window_shot(viewer, "regions_annotate_result"))
    predicted = crop_to_spots(viewer, canvas_shot(viewer, scale=3.0), spots)
    paths.append(panels([drawn, predicted], ["regions drawn (grey: outside every region)",
                                             "Annotate trained on them (threshold 0.6)"],
                        "regions_before_after", width=560))
    close(viewer)
    return paths


@figure("home")
def fig_home() -> list[Path]:
    """Home page: the Spatial DL dock with the deconvolution of the synthetic tissue."""
    viewer = new_viewer()
    open_synthetic(viewer)
    main = dock(viewer, "Spatial DL")
    widget = main.show_task("deconvolve")
    fit(viewer)
    press_run(widget)
    widget.results.view.setCurrentText("dominant cell type")
    image_opacity(viewer, 0.5)  # the tip of the quick start: colours stand out on a dimmed image
    fit(viewer)
    paths = [window_shot(viewer, "home")]
    close(viewer)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(FIGURES), help="make only these figures")
    args = parser.parse_args(argv)
    names = args.only or list(FIGURES)
    failed = []
    for name in names:
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        try:
            FIGURES[name]()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
