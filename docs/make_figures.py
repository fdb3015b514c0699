"""Make every screenshot of the documentation by driving a real napari viewer.

Each figure opens napari, loads data the way a user does (File > Open Sample, File > Open), opens
the plugin's panels as the Plugins menu does (``viewer.window.add_plugin_dock_widget``: napari
hands them a proxy of the viewer, as in a session), sets their inputs through the panels' own
controls, presses **Run**, waits for the worker while Qt processes events, and takes a screenshot
of the whole window (``viewer.screenshot(canvas_only=False)``). Nothing is drawn by hand: what you
see is what the widgets show, at the settings the GUI opens with unless the page around the
figure says otherwise. No private napari attribute is used here; the menu pictures reach the Qt
menu bar through ``napari_spatialdl._widgets._compat.main_window``.

Run it from the repository root under a virtual X server::

    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_figures.py
    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_figures.py --only deconvolve regions
    # the same figures in a larger window, to check the layout (written to /tmp, not the docs)
    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_figures.py --size 1600x1200

The real-H&E figures read ``../shared/data/visium_spaceranger_1.0.0`` (next to the repository) and
are skipped with a message when it is absent. PNGs are written to ``docs/images/`` (the window is
``WINDOW``, 1280 x 800, as in the GUI tests), palette-quantised when that keeps them faithful.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
SHARED_HNE = ROOT.parent / "shared" / "data" / "visium_spaceranger_1.0.0"
PLUGIN = "napari-spatialdl"
SAMPLE = "synthetic_tissue"
#: window size in logical pixels (the GUI tests' size)
WINDOW = (1280, 800)
#: PNGs wider than this are scaled down (the window's width: screenshots are written 1:1)
MAX_WIDTH = WINDOW[0]
RUN_TIMEOUT_S = 1800.0
#: opacity of the tissue image in the multi-panel figures (what the tutorials say they used)
PANEL_IMAGE_OPACITY = 0.4
#: factor on the real H&E spots' point size in the region figures (display only; regions.md says so)
HNE_POINT_SIZE = 2.0


@dataclass
class Settings:
    """Where the figures go, at which window size and how wide at most (``--size``, ``--out``).

    ``out=None`` means ``IMAGES`` (looked up when a file is written).
    """

    size: tuple[int, int] = WINDOW
    out: Path | None = None
    max_width: int = MAX_WIDTH

    @property
    def folder(self) -> Path:
        return IMAGES if self.out is None else self.out


SETTINGS = Settings()
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


def new_viewer() -> Any:
    import napari

    viewer = napari.Viewer(show=True, title="napari")
    viewer.window.resize(*SETTINGS.size)
    settle(0.3)
    return viewer


def close(viewer: Any) -> None:
    viewer.close()
    settle(0.2)


def add_panel(viewer: Any, name: str, shot: str | None = None) -> Any:
    """Plugins > Spatial DL > ``name``, opened as napari opens it; returns the panel.

    With ``shot``, the open Plugins menu is saved as that figure first (then closed).
    """
    if shot:
        open_menu(viewer, "Plugins", "Spatial DL", name)
        screen_shot(shot, menu_box(viewer))
        close_menus(viewer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        settle(0.3)
    private = [str(w.message) for w in caught if "Private attribute access" in str(w.message)]
    if private:
        raise RuntimeError(f"{name}: the panel reached napari's private attributes: {private}")
    return widget


def close_panel(viewer: Any, widget: Any) -> None:
    """Close a docked panel (the x button of its dock)."""
    viewer.window.remove_dock_widget(widget)
    settle(0.2)


def legend_docks(viewer: Any) -> list[str]:
    return [name for name in viewer.window.dock_widgets if "legend" in name.lower()]


def check_layout(viewer: Any, name: str) -> None:
    """What every window figure must satisfy: one legend at most, the window at its size."""
    from napari_spatialdl._widgets._legend import find_legends

    legends = legend_docks(viewer)
    if len(legends) > 1 or len([lg for lg in find_legends(viewer) if lg.isVisible()]) > 1:
        raise RuntimeError(f"{name}: more than one legend: {list(viewer.window.dock_widgets)}")
    height = viewer.canvas.size[0]
    if height < 0.5 * SETTINGS.size[1]:
        raise RuntimeError(f"{name}: the canvas is only {height} px tall")


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def fit(viewer: Any) -> None:
    """Back to the standard window size, then fit the view to the layers."""
    viewer.window.resize(*SETTINGS.size)
    settle(0.3)
    viewer.reset_view(margin=0.02)
    settle(0.2)


def zoom_to(viewer: Any, layer: Any, margin: float = 0.1) -> None:
    """Standard window size, then centre and zoom the camera on ``layer``'s spots (the mouse wheel)."""
    from napari_spatialdl._widgets._regions_geometry import spots_world_yx

    viewer.window.resize(*SETTINGS.size)
    settle(0.3)
    yx = spots_world_yx(layer)
    lo, hi = yx.min(axis=0), yx.max(axis=0)
    height, width = viewer.canvas.size
    camera(viewer).center = tuple((lo + hi) / 2)
    camera(viewer).zoom = (1 - margin) * min(height / max(hi[0] - lo[0], 1e-9), width / max(hi[1] - lo[1], 1e-9))
    settle(0.2)


def show_in_panel(widget: Any, child: Any) -> None:
    """Scroll a panel so that ``child`` is in view (the mouse wheel over the panel)."""
    scroll = getattr(widget, "scroll_area", None)
    if scroll is not None:
        scroll.ensureWidgetVisible(child, 0, 0)
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
    settle(0.6)
    if run.error is not None:
        raise RuntimeError(f"{widget.title} failed: {run.error}") from run.error
    print(f"  {widget.title}: done in {time.perf_counter() - start:.1f} s", flush=True)
    return run


def save(image: np.ndarray, name: str) -> Path:
    """Write an RGB(A) array as an optimised PNG in the output folder."""
    from PIL import Image

    SETTINGS.folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    if img.width > SETTINGS.max_width:
        img = img.resize((SETTINGS.max_width, round(img.height * SETTINGS.max_width / img.width)), Image.LANCZOS)
    path = SETTINGS.folder / f"{name}.png"
    # a 256-colour palette keeps screenshots faithful at a third of the size; keep the smallest
    # candidate whose mean error stays below 2.5 (of 255) per channel
    rgb = np.asarray(img, dtype=float)
    best = img
    for method in (Image.Quantize.MEDIANCUT, Image.Quantize.FASTOCTREE):
        candidate = img.quantize(colors=256, method=method, dither=Image.Dither.NONE)
        if np.abs(np.asarray(candidate.convert("RGB"), dtype=float) - rgb).mean() < 2.5:
            best = candidate if best is img or _png_size(candidate) < _png_size(best) else best
    best.save(path, optimize=True)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"  wrote {shown} ({img.width} x {img.height}, {path.stat().st_size // 1024} kB)", flush=True)
    return path


def _png_size(img: Any) -> int:
    import io

    buffer = io.BytesIO()
    img.save(buffer, "PNG", optimize=True)
    return buffer.tell()


def legend_room(viewer: Any) -> None:
    """Drag the splitter above the Spots legend dock until every entry shows (no scroll bar).

    The dock opens as tall as the window layout gives it; eight categories need a little more
    than that at 1280 x 800, and a user makes room so (the task panel above scrolls).
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    settle(0.2)
    window = _main_window(viewer)
    for name in legend_docks(viewer):
        legend = viewer.window.dock_widgets[name]
        dock = legend.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is None or dock.isFloating() or not legend.isVisible():
            continue
        start_height, start_extra = dock.height(), _overflow(legend)
        extra = start_extra
        for _ in range(4):  # the layout settles over a few passes
            if extra <= 0:
                break
            window.resizeDocks([dock], [dock.height() + extra + 6], Qt.Orientation.Vertical)
            settle(0.3)
            extra = _overflow(legend)
        if extra >= start_extra > 0:  # a taller dock did not give the list more room: put it back
            window.resizeDocks([dock], [start_height], Qt.Orientation.Vertical)
            settle(0.3)
        if extra > 0:
            print(f"  note: the legend's list still scrolls ({extra} px more) in a dock of {dock.height()} px",
                  flush=True)


def _overflow(widget: Any) -> int:
    """How many pixels the visible scroll areas inside ``widget`` hide (0: everything shows)."""
    from qtpy.QtWidgets import QScrollArea

    return sum(a.verticalScrollBar().maximum() for a in widget.findChildren(QScrollArea) if a.isVisible())


def window_shot(viewer: Any, name: str, panel: Any = None) -> Path:
    """The whole napari window (canvas, layer list, docked panels, legend); with ``panel``, that
    panel scrolled to its result (Run, the loss curve and 'Results on the tissue' in view)."""
    legend_room(viewer)
    if panel is not None:
        show_in_panel(panel, panel.results_box)
    settle(0.4)
    check_layout(viewer, name)
    return save(np.asarray(viewer.screenshot(canvas_only=False, flash=False)), name)


def canvas_shot(viewer: Any, scale: float = 2.0) -> np.ndarray:
    """The canvas alone, rendered at ``scale`` times the screen resolution (sharper spots)."""
    settle(0.2)
    zoom = camera(viewer).zoom
    camera(viewer).zoom = zoom * scale  # napari's scaled screenshot keeps the zoom: scale it too
    try:
        shot = np.asarray(viewer.screenshot(canvas_only=True, scale=scale, flash=False))
    finally:
        camera(viewer).zoom = zoom
    return shot


def widget_shot(widget: Any, name: str) -> Path:
    """One panel on its own (Qt's grab of the widget)."""
    from qtpy.QtGui import QImage

    settle(1.0)  # a panel widens itself once its content changed: let the dock follow
    return save(_qimage_array(widget.grab().toImage().convertToFormat(QImage.Format.Format_RGBA8888)), name)


def _qimage_array(image: Any) -> np.ndarray:
    ptr = image.constBits()
    ptr.setsize(image.height() * image.bytesPerLine())
    arr = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return arr[:, : image.width()].copy()


def panels(images: list[np.ndarray], titles: list[str], name: str, *, n_cols: int = 2,
           width: int = 600, gap: int = 8) -> Path:
    """Canvas screenshots in a grid, each resized to ``width`` with a title above (PIL only)."""
    from PIL import Image, ImageDraw, ImageFont

    tiles = [Image.fromarray(np.ascontiguousarray(img[..., :3]).astype(np.uint8)) for img in images]
    # one height for all (the crops differ by a few pixels of rounding): no ragged edges
    height = round(float(np.median([t.height * width / t.width for t in tiles])))
    tiles = [t.resize((width, height), Image.LANCZOS) for t in tiles]
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


def _main_window(viewer: Any) -> Any:
    from napari_spatialdl._widgets._compat import main_window

    window = main_window(viewer)
    if window is None:
        raise RuntimeError("napari's main window is not reachable: the menu figures need it")
    return window


def _menu_text(action: Any) -> str:
    return action.text().replace("&&", "\0").replace("&", "").replace("\0", "&")


def open_menu(viewer: Any, *path: str) -> Any:
    """Open the menu bar entries ``path`` (e.g. "File", "Open Sample", "Spatial DL", ...) as the
    mouse does, leaving them open (to be photographed); returns the last action."""
    bar = _main_window(viewer).menuBar()
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

    for menu in _main_window(viewer).findChildren(QMenu):
        if menu.isVisible():
            menu.hide()
    settle(0.2)


def screen_shot(name: str, box: tuple[int, int, int, int]) -> Path:
    """The X screen (popup menus included) cropped to ``box`` = (left, top, right, bottom)."""
    from qtpy.QtGui import QImage

    settle(0.2)
    image = app().primaryScreen().grabWindow(0).toImage().convertToFormat(QImage.Format.Format_RGBA8888)
    left, top, right, bottom = box
    return save(_qimage_array(image)[top:bottom, left:right, :3].copy(), name)


def menu_box(viewer: Any, pad: int = 12) -> tuple[int, int, int, int]:
    """Screen box around the open menus and the window's top-left corner."""
    from qtpy.QtWidgets import QMenu

    win = _main_window(viewer)
    origin = win.mapToGlobal(win.rect().topLeft())
    right, bottom = origin.x() + 200, origin.y() + 120
    for menu in win.findChildren(QMenu):
        if menu.isVisible():
            g = menu.geometry()
            right, bottom = max(right, g.right()), max(bottom, g.bottom())
    return origin.x(), origin.y(), right + pad, bottom + pad


def crop_to_spots(viewer: Any, shot: np.ndarray, layer: Any, pad: float = 0.06) -> np.ndarray:
    """Crop a canvas screenshot to the spots' bounding box (plus a margin)."""
    from napari_spatialdl._widgets._regions_geometry import spots_world_yx

    yx = spots_world_yx(layer)
    center = np.asarray(camera(viewer).center)[-2:]
    canvas_h = viewer.canvas.size[0]
    scale = shot.shape[0] / canvas_h if canvas_h else 1.0
    rc = (yx - center) * camera(viewer).zoom * scale + np.array(shot.shape[:2]) / 2
    lo, hi = rc.min(axis=0), rc.max(axis=0)
    margin = pad * (hi - lo).max()
    r0, c0 = np.maximum(0, np.floor(lo - margin)).astype(int)
    r1, c1 = np.minimum(shot.shape[:2], np.ceil(hi + margin)).astype(int)
    return shot[r0:r1, c0:c1]


# ----------------------------------------------------------------------------- data
def spots_of(viewer: Any) -> Any:
    """The spots layer (the last Points layer holding an AnnData)."""
    from napari_spatialdl._widgets._viewer import find_spots_layer

    layer = find_spots_layer(viewer)
    if layer is None:
        raise RuntimeError(f"no spots layer among {[lyr.name for lyr in viewer.layers]}")
    return layer


def open_sample(viewer: Any, shot: str | None = None) -> Any:
    """File > Open Sample > Spatial DL > Synthetic tissue; returns the spots layer.

    With ``shot``, the open menus are saved as that figure first (then closed).
    """
    if shot:
        open_menu(viewer, "File", "Open Sample", "Spatial DL", "Synthetic tissue")
        screen_shot(shot, menu_box(viewer))
        close_menus(viewer)
    viewer.open_sample(PLUGIN, SAMPLE)
    settle(0.3)
    return spots_of(viewer)


def open_file(viewer: Any, path: Path) -> Any:
    """File > Open (napari-spatialdl's reader); returns the spots layer."""
    viewer.open(str(path), plugin=PLUGIN)
    settle(0.3)
    return spots_of(viewer)


def image_opacity(viewer: Any, opacity: float) -> None:
    """Set the opacity of the tissue image layer(s), as the layer controls' slider does."""
    from napari.layers import Image

    for layer in viewer.layers:
        if isinstance(layer, Image):
            layer.opacity = opacity
    settle(0.1)


def open_hne(viewer: Any) -> Any:
    """File > Open Folder... on the real Space Ranger 1.0.0 output; returns the spots layer."""
    with warnings.catch_warnings():  # the blank hires image: the reader falls back to lowres
        warnings.simplefilter("ignore", UserWarning)
        return open_file(viewer, SHARED_HNE)


# ----------------------------------------------------------------------------- figures
@figure("quickstart")
def fig_quickstart() -> list[Path]:
    """Quick start: the menus, the sample as it opens, the Deconvolve panel before and after Run."""
    viewer = new_viewer()
    paths = [SETTINGS.folder / "menu_open_sample.png"]
    open_sample(viewer, shot="menu_open_sample")
    fit(viewer)
    paths.append(window_shot(viewer, "quickstart_sample"))
    widget = add_panel(viewer, "Deconvolve", shot="menu_plugins")
    paths.append(SETTINGS.folder / "menu_plugins.png")
    zoom_to(viewer, spots_of(viewer))
    paths.append(widget_shot(widget, "deconvolve_ready"))  # the panel alone, readable
    press_run(widget)
    # quickstart.md: "Here the cell type was changed to Hippocampal pyramidal"
    widget.results.cell_type.setCurrentText("Hippocampal pyramidal")
    zoom_to(viewer, spots_of(viewer))
    paths.append(window_shot(viewer, "deconvolve_proportion", panel=widget))
    close(viewer)
    return paths


@figure("deconvolve")
def fig_deconvolve() -> list[Path]:
    """Deconvolution tutorial: dominant type, four proportion maps, Colour spots on the result."""
    from napari_spatialdl._widgets._deconvolve import DeconvolveView

    viewer = new_viewer()
    spots = open_sample(viewer)
    widget = add_panel(viewer, "Deconvolve")
    zoom_to(viewer, spots_of(viewer))
    press_run(widget)
    opened_on = widget.results.cell_type.currentText()  # what the view opens on
    widget.results.view.setCurrentText(DeconvolveView.DOMINANT)
    zoom_to(viewer, spots_of(viewer))
    paths = [window_shot(viewer, "deconvolve_dominant", panel=widget)]
    shots, titles = [], []
    image_opacity(viewer, PANEL_IMAGE_OPACITY)
    widget.results.view.setCurrentText(DeconvolveView.PROPORTION)
    others = [t for t in ("Excitatory L2-3", "Oligodendrocyte", "Astrocyte", "Hippocampal pyramidal")
              if t != opened_on]
    for cell_type in [opened_on, *others][:4]:
        widget.results.cell_type.setCurrentText(cell_type)
        settle(0.2)
        shots.append(crop_to_spots(viewer, canvas_shot(viewer), spots))
        titles.append(f"{cell_type} (0 to {spots.metadata['spatialdl_legend'].limits[1]:.2f})")
    paths.append(panels(shots, titles, "deconvolve_four_types"))
    # the truth of the simulation, drawn by the Colour spots panel the same way, for comparison
    # (the Deconvolve panel and its legend closed first: Colour spots has its own legend)
    close_panel(viewer, widget)
    for name in legend_docks(viewer):
        close_panel(viewer, viewer.window.dock_widgets[name])
    color = add_panel(viewer, "Colour spots")
    color.set_key("spatialdl_dominant_cell_type")
    estimate = crop_to_spots(viewer, canvas_shot(viewer), spots)
    color.set_key("true_dominant_cell_type")
    truth = crop_to_spots(viewer, canvas_shot(viewer), spots)
    paths.append(panels([estimate, truth], ["estimated dominant cell type", "simulated truth"],
                        "deconvolve_vs_truth"))
    # deconvolution.md: the raw counts of Mbp, viridis, limits 0-6 by hand (auto unticked), image 0.4
    color.set_key("Mbp")
    color.cmap_combo.setCurrentText("viridis")
    color.auto_limits.setChecked(False)
    color.low.setValue(0.0)
    color.high.setValue(6.0)
    zoom_to(viewer, spots)
    paths.append(window_shot(viewer, "color_spots_gene"))
    close(viewer)
    return paths


@figure("annotate")
def fig_annotate() -> list[Path]:
    """Annotation tutorial: the sample's reference, threshold 0.6 (annotation.md says so)."""
    viewer = new_viewer()
    open_sample(viewer)
    widget = add_panel(viewer, "Annotate")
    widget.params.set(threshold=0.6)
    zoom_to(viewer, spots_of(viewer))
    press_run(widget)
    zoom_to(viewer, spots_of(viewer))
    paths = [window_shot(viewer, "annotate_result", panel=widget)]
    widget.results.view.setCurrentText("confidence")
    settle(0.3)
    paths.append(window_shot(viewer, "annotate_confidence", panel=widget))
    close(viewer)
    return paths


@figure("impute")
def fig_impute() -> list[Path]:
    """Imputation tutorial: the counts in X (the default), then Bcl11b typed in (imputation.md)."""
    viewer = new_viewer()
    spots = open_sample(viewer)
    widget = add_panel(viewer, "Impute")
    zoom_to(viewer, spots_of(viewer))
    press_run(widget)
    view = widget.results
    print(f"  the view opened on {view.gene.currentText()}", flush=True)
    view.gene.setCurrentIndex(view.gene.findText("Bcl11b"))  # picked from the drop-down
    view.values.setCurrentText("imputed")
    zoom_to(viewer, spots_of(viewer))
    paths = [window_shot(viewer, "impute_result", panel=widget)]
    image_opacity(viewer, PANEL_IMAGE_OPACITY)
    shots = []
    for which in ("raw", "imputed"):
        view.values.setCurrentText(which)
        settle(0.2)
        shots.append(crop_to_spots(viewer, canvas_shot(viewer), spots))
    paths.append(panels(shots, ["Bcl11b, raw counts", "Bcl11b, imputed (same colour scale)"],
                        "impute_raw_vs_imputed"))
    close(viewer)
    return paths


@figure("integrate")
def fig_integrate() -> list[Path]:
    """Integration tutorial: the sample's two sections, before (PCA) and after integration."""
    viewer = new_viewer()
    spots = open_sample(viewer)
    widget = add_panel(viewer, "Integrate")  # the batch column 'section' is preselected
    if widget.inputs["batch_key"].currentText() != "section":
        raise RuntimeError(f"Integrate did not preselect 'section': {widget.inputs['batch_key'].currentText()!r}")
    zoom_to(viewer, spots_of(viewer))
    press_run(widget)
    view = widget.results
    view.n_clusters.setValue(6)  # integration.md: 6 is the number of simulated regions
    view.recluster.click()
    settle(0.3)
    zoom_to(viewer, spots_of(viewer))
    paths = [window_shot(viewer, "integrate_result", panel=widget)]
    image_opacity(viewer, PANEL_IMAGE_OPACITY)
    after = crop_to_spots(viewer, canvas_shot(viewer), spots)
    view.color.setCurrentText("section")
    settle(0.2)
    batches = crop_to_spots(viewer, canvas_shot(viewer), spots)
    # for comparison: the method 'Principal components, no correction' from the same panel, its
    # latent space clustered the same way (6 clusters)
    widget.set_method("pca")
    press_run(widget)
    view.color.setCurrentIndex(0)  # its clusters
    settle(0.2)
    before = crop_to_spots(viewer, canvas_shot(viewer), spots)
    # the simulated anatomy, from the Colour spots panel (the Integrate panel and its legend closed)
    close_panel(viewer, widget)
    for name in legend_docks(viewer):
        close_panel(viewer, viewer.window.dock_widgets[name])
    color = add_panel(viewer, "Colour spots")
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
    from napari_spatialdl._widgets._regions_geometry import spots_world_yx, to_data

    if not SHARED_HNE.is_dir():
        print(f"  skipped: {SHARED_HNE} is absent (the real H&E lives in ../shared/data)", flush=True)
        return []
    viewer = new_viewer()
    spots = open_hne(viewer)
    # real Visium spots are a few pixels of the lowres image: regions.md says the pictures draw
    # them twice as large (the layer controls' point size; display only)
    spots.size = np.asarray(spots.size) * HNE_POINT_SIZE
    regions = add_panel(viewer, "Annotate regions")
    zoom_to(viewer, spots)
    paths = [window_shot(viewer, "regions_opened")]
    layer = regions.new_regions_layer()
    yx = spots_world_yx(spots)
    lo, hi = yx.min(axis=0), yx.max(axis=0)
    span = hi - lo
    out = 0.02 * span.max()  # a little outside the outermost spots
    polygons = {  # (y, x) corners in world coordinates, as the mouse clicks them
        "upper band": np.array([[lo[0] - out, lo[1] - out], [lo[0] - out, hi[1] + out],
                                [lo[0] + 0.42 * span[0], hi[1] + out],
                                [lo[0] + 0.30 * span[0], lo[1] + 0.5 * span[1]],
                                [lo[0] + 0.38 * span[0], lo[1] - out]]),
        "lower left": np.array([[lo[0] + 0.62 * span[0], lo[1] - out],
                                [lo[0] + 0.58 * span[0], lo[1] + 0.42 * span[1]],
                                [hi[0] + out, lo[1] + 0.36 * span[1]], [hi[0] + out, lo[1] - out]]),
    }
    for name, poly in polygons.items():
        regions.name.setText(name)  # "next region": the name the next shape gets
        layer.add_polygons([to_data(layer, poly)])
        settle(0.1)
    layer.mode = "pan_zoom"
    paths.append(window_shot(viewer, "regions_drawn"))
    regions.assign_button.click()
    settle(0.3)
    paths.append(window_shot(viewer, "regions_assigned"))
    drawn = crop_to_spots(viewer, canvas_shot(viewer, scale=3.0), spots)
    # next step: the Annotate panel, trained on the regions (the Regions panel closed for room)
    close_panel(viewer, regions)
    annotate = add_panel(viewer, "Annotate")
    picker = annotate.inputs["reference"]
    picker.combo.setCurrentIndex(picker.combo.findText(f"'{spots.name}' itself (its own labels)"))
    annotate.set_labels_key(regions.key.text())
    annotate.params.set(threshold=0.6)  # regions.md
    zoom_to(viewer, spots)
    paths.append(window_shot(viewer, "regions_annotate_ready"))
    press_run(annotate)
    layer.visible = False
    zoom_to(viewer, spots)
    paths.append(window_shot(viewer, "regions_annotate_result", panel=annotate))
    predicted = crop_to_spots(viewer, canvas_shot(viewer, scale=3.0), spots)
    paths.append(panels([drawn, predicted], ["regions drawn (grey: outside every region)",
                                             "Annotate trained on them (threshold 0.6)"],
                        "regions_before_after", width=560))
    close(viewer)
    return paths


@figure("gene_prediction")
def fig_gene_prediction() -> list[Path]:
    """Gene prediction: a panel measuring half of the sample's genes, the reference as a file,
    Impute in 'Predict unmeasured genes from a reference' mode, the defaults (every missing gene)."""
    import napari_spatialdl as sdl

    spatial, reference = sdl.datasets.synthetic_tissue(0, n_spot_batches=2)  # the sample's data
    panel = spatial[:, spatial.var_names[: spatial.n_vars // 2]].copy()  # a targeted panel: half the genes
    with tempfile.TemporaryDirectory() as tmp:
        spots_file = sdl.write_h5ad(panel, Path(tmp) / "panel.h5ad")
        reference_file = sdl.write_h5ad(reference, Path(tmp) / "reference.h5ad")
        viewer = new_viewer()
        open_file(viewer, spots_file)
        widget = add_panel(viewer, "Impute")
        widget.set_mode(True)  # "Predict unmeasured genes from a reference"
        settle(0.5)  # the user's pause between two clicks
        widget.set_reference(str(reference_file))  # Open… beside 'reference'
        zoom_to(viewer, spots_of(viewer))
        paths = [widget_shot(widget, "gene_prediction_ready")]  # the panel alone: mode, reference, genes
        press_run(widget)
        view = widget.results
        print(f"  the view opened on {view.gene.currentText()} ({view.gene.count()} genes predicted)", flush=True)
        zoom_to(viewer, spots_of(viewer))
        paths.append(window_shot(viewer, "gene_prediction_result", panel=widget))
        close(viewer)
    return paths


@figure("home")
def fig_home() -> list[Path]:
    """Home page: the Spatial DL dock with the deconvolution of the synthetic tissue."""
    from napari_spatialdl._widgets._deconvolve import DeconvolveView

    viewer = new_viewer()
    open_sample(viewer)
    main = add_panel(viewer, "Spatial DL")
    widget = main.show_task("deconvolve")
    zoom_to(viewer, spots_of(viewer))
    press_run(widget)
    widget.results.view.setCurrentText(DeconvolveView.DOMINANT)  # index.md: the dominant cell type
    image_opacity(viewer, 0.5)  # index.md: image opacity lowered to 0.5
    zoom_to(viewer, spots_of(viewer))
    paths = [window_shot(viewer, "home", panel=widget)]
    close(viewer)
    return paths


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes WIDTHxHEIGHT, e.g. 1600x1200, not {text!r}") from None
    return width, height


def configure(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line into ``SETTINGS``: a window size other than ``WINDOW`` writes to
    ``/tmp/spatialdl_figures_<W>x<H>`` (a layout check, never into the docs) unless ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(FIGURES), help="make only these figures")
    parser.add_argument("--size", type=_size, default=WINDOW,
                        help=f"window size WIDTHxHEIGHT (default {WINDOW[0]}x{WINDOW[1]}); another size "
                             "writes to /tmp/spatialdl_figures_<size> unless --out is given")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default docs/images)")
    args = parser.parse_args(argv)
    SETTINGS.size = args.size
    SETTINGS.max_width = max(MAX_WIDTH, args.size[0])
    if args.out is not None:
        SETTINGS.out = args.out.resolve()
    elif args.size != WINDOW:
        SETTINGS.out = Path("/tmp") / f"spatialdl_figures_{args.size[0]}x{args.size[1]}"
    else:
        SETTINGS.out = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = configure(argv)
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
