"""Screenshots of the Visium HD / Xenium tutorial (docs/tutorials/hd_xenium.md), from the real GUI.

The folders written by ``benchmarks/make_hd_xenium.py`` are opened the way File > Open Folder...
opens them (``viewer.open(folder, plugin="napari-spatialdl")``), the panels are docked as the
Plugins menu docks them (``viewer.window.add_plugin_dock_widget``), the reference is the ``.h5ad``
the generator writes (the panel's Open... button), **Run** is pressed and the window is saved
(``viewer.screenshot(canvas_only=False)``) at 1280 x 800, as PNGs in ``docs/images/hd_*.png``.
Nothing is drawn by hand.

Run it from the repository root under a virtual X server::

    python benchmarks/make_hd_xenium.py /tmp/hd_xenium
    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_figures_hd.py /tmp/hd_xenium
    xvfb-run -a -s "-screen 0 1600x1200x24" python docs/make_figures_hd.py /tmp/hd_xenium --only hd \
        --deconvolve-epochs 10

Each step's time is printed (opening the folder, the run), to compare with the tutorial's script.
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
PLUGIN = "napari-spatialdl"
WINDOW = (1280, 800)
REFERENCE = Path("reference") / "hippocampus_reference.h5ad"
RUN_TIMEOUT_S = 3600.0


# ----------------------------------------------------------------------------- Qt helpers
def settle(seconds: float = 0.4) -> None:
    """Process Qt events for a while (layout, painting, queued signals)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def press_run(widget: Any, timeout: float = RUN_TIMEOUT_S) -> float:
    """Click Run (as a user does), process events until the worker is done; the seconds it took."""
    if not widget.run_button.isEnabled():
        raise RuntimeError(f"{widget.title}: Run is disabled: {widget.controls.reason.text()}")
    widget.run_button.click()
    run = widget.last_run
    start = time.perf_counter()
    while not run.done:
        settle(0.05)
        if time.perf_counter() - start > timeout:
            run.cancel()
            raise TimeoutError(f"{widget.title} did not finish within {timeout} s")
    seconds = time.perf_counter() - start
    settle(0.6)
    if run.error is not None:
        raise RuntimeError(f"{widget.title} failed: {run.error}") from run.error
    print(f"  {widget.title}: done in {seconds:.1f} s", flush=True)
    return seconds


def _png_size(img: Any) -> int:
    import io

    buffer = io.BytesIO()
    img.save(buffer, "PNG", optimize=True)
    return buffer.tell()


def save(image: np.ndarray, name: str) -> Path:
    """An RGB(A) array as an optimised PNG in docs/images/ (256-colour palette when that stays faithful)."""
    from PIL import Image

    IMAGES.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    if img.width > WINDOW[0]:
        img = img.resize((WINDOW[0], round(img.height * WINDOW[0] / img.width)), Image.LANCZOS)
    rgb = np.asarray(img, dtype=float)
    best = img
    for method in (Image.Quantize.MEDIANCUT, Image.Quantize.FASTOCTREE):
        candidate = img.quantize(colors=256, method=method, dither=Image.Dither.NONE)
        if np.abs(np.asarray(candidate.convert("RGB"), dtype=float) - rgb).mean() < 2.5:
            best = candidate if best is img or _png_size(candidate) < _png_size(best) else best
    path = IMAGES / f"{name}.png"
    best.save(path, optimize=True)
    print(f"  wrote {path.relative_to(ROOT)} ({img.width} x {img.height}, {path.stat().st_size // 1024} kB)",
          flush=True)
    return path


def new_viewer() -> Any:
    import napari

    viewer = napari.Viewer(show=True, title="napari")
    viewer.window.resize(*WINDOW)
    settle(0.3)
    return viewer


def open_folder(viewer: Any, folder: Path) -> Any:
    """File > Open Folder... on ``folder``; returns the spots (cells/bins) layer, timed."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "No full resolution image found"
        layers = viewer.open(str(folder), plugin=PLUGIN)
    settle(0.5)
    print(f"  opened {folder.name} in {time.perf_counter() - start:.1f} s: "
          f"{[type(layer).__name__ for layer in layers]}", flush=True)
    return layers[-1]


def panel(viewer: Any, name: str) -> Any:
    """Plugins > Spatial DL > ``name``."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    settle(0.3)
    return widget


def fit(viewer: Any) -> None:
    viewer.window.resize(*WINDOW)
    settle(0.2)
    viewer.reset_view(margin=0.02)
    settle(0.3)


def zoom_on(viewer: Any, layer: Any, rows: np.ndarray, margin: float = 0.15) -> None:
    """Centre the camera on the observations ``rows`` of ``layer`` (world coordinates of their points)."""
    data = np.asarray(layer.data)[rows]
    world = np.array([layer.data_to_world(p) for p in data])[:, -2:]
    lo, hi = world.min(axis=0), world.max(axis=0)
    height, width = viewer.canvas.size
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9: scene.camera
    camera.center = tuple((lo + hi) / 2)
    camera.zoom = (1 - margin) * min(height / max(hi[0] - lo[0], 1), width / max(hi[1] - lo[1], 1))
    settle(0.4)


def shot(viewer: Any, name: str) -> Path:
    settle(0.5)
    return save(viewer.screenshot(canvas_only=False, flash=False), name)


def truth_rows(data: Path, table: str, key: str, names: Any, column: str, value: str) -> np.ndarray:
    import pandas as pd

    truth = pd.read_parquet(data / "truth" / table).set_index(key).loc[list(names)]
    return np.flatnonzero(truth[column].to_numpy() == value)


def fig_xenium(data: Path, epochs: int | None) -> list[Path]:
    """The Xenium folder as it opens and after Annotate (defaults), both zoomed on the dentate gyrus."""
    viewer = new_viewer()
    cells = open_folder(viewer, data / "xenium")
    adata = cells.metadata["adata"]
    dentate = truth_rows(data, "xenium_cells.parquet", "cell_id", adata.obs_names, "region", "Dentate granule")
    zoom_on(viewer, cells, dentate, margin=0.05)  # the mouse wheel, on the dentate gyrus
    paths = [shot(viewer, "hd_xenium_open")]
    widget = panel(viewer, "Annotate")
    widget.set_reference(str(data / REFERENCE), labels_key="cell_type")
    if epochs:
        widget.params.set(max_epochs=epochs)
    fit(viewer)
    press_run(widget)
    # the whole section: 100,000 cells of ~1.5 screen pixels, hard to see; zoom in
    zoom_on(viewer, cells, dentate, margin=0.05)
    paths.append(shot(viewer, "hd_xenium_annotate"))
    viewer.close()
    settle(0.3)
    return paths


def fig_hd(data: Path, epochs: int | None) -> list[Path]:
    """The Visium HD folder (8 µm bins), Deconvolve, dominant cell type: the dentate gyrus, and 0.4 mm of CA3."""
    viewer = new_viewer()
    bins = open_folder(viewer, data / "visium_hd")
    widget = panel(viewer, "Deconvolve")
    widget.set_reference(str(data / REFERENCE), labels_key="cell_type")
    if epochs:
        widget.params.set(max_epochs=epochs)
    fit(viewer)
    press_run(widget)
    widget.results.view.setCurrentText("dominant cell type")
    adata = bins.metadata["adata"]
    world = np.array([bins.data_to_world(p) for p in np.asarray(bins.data)])[:, -2:]
    side = float(np.median(adata.obs["spatialdl_size_fullres"]))  # a bin's side (8 µm), world units
    # the dentate gyrus and CA3 around it
    dentate = truth_rows(data, "visium_hd_bins.parquet", "barcode", adata.obs_names, "region", "Dentate granule")
    zoom_on(viewer, bins, dentate, margin=0.02)
    paths = [shot(viewer, "hd_visium_deconvolve")]
    # 0.4 mm across, in the middle of CA3: each bin an 8 µm square
    ca3 = truth_rows(data, "visium_hd_bins.parquet", "barcode", adata.obs_names, "region", "CA3 pyramidal")
    centre = world[ca3][np.argmin(np.abs(world[ca3] - np.median(world[ca3], axis=0)).sum(axis=1))]  # on the arc
    near = np.flatnonzero(np.abs(world - centre).max(axis=1) < (200 / 8) * side)
    zoom_on(viewer, bins, near, margin=0.0)
    paths.append(shot(viewer, "hd_visium_deconvolve_zoom"))
    viewer.close()
    settle(0.3)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the folder benchmarks/make_hd_xenium.py wrote")
    parser.add_argument("--only", nargs="*", choices=("xenium", "hd"))
    parser.add_argument("--annotate-epochs", type=int, default=None,
                        help="max_epochs of the Annotate run (default: the panel's default)")
    parser.add_argument("--deconvolve-epochs", type=int, default=None,
                        help="max_epochs of the Deconvolve run (default: the panel's default)")
    args = parser.parse_args(argv)
    figures = {"xenium": lambda: fig_xenium(args.data, args.annotate_epochs),
               "hd": lambda: fig_hd(args.data, args.deconvolve_epochs)}
    failed = []
    for name in args.only or list(figures):
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        try:
            figures[name]()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
