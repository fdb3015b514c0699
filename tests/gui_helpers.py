"""Helpers of the GUI tests: widgets opened the way napari opens them, layout and pixel checks.

Widgets are created through ``viewer.window.add_plugin_dock_widget("napari-spatialdl", name)``
(napari then hands them a ``PublicOnlyProxy`` of the viewer), in a window of 1280 x 800 on the
1600 x 1200 Xvfb screen. Full-window screenshots go to $SPATIALDL_SHOTS
(default /tmp/spatialdl_screenshots).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

WINDOW = (1280, 800)
SHOTS = Path(os.environ.get("SPATIALDL_SHOTS", "/tmp/spatialdl_screenshots"))
RUN_TIMEOUT_MS = 180_000


def process_events(n: int = 3) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()


def plugin_viewer(make_napari_viewer, size: tuple[int, int] = WINDOW):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*size)
    process_events()
    return viewer


def add_panel(viewer, name: str):
    """Open a widget from the plugin as napari's Plugins menu does; no private-access warnings."""
    from napari.utils._proxies import PublicOnlyProxy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, widget = viewer.window.add_plugin_dock_widget("napari-spatialdl", name)
        process_events()
    private = [str(w.message) for w in caught if "Private attribute access" in str(w.message)]
    assert not private, private
    assert widget is not None
    # napari handed the widget a proxy of the viewer; the widget works on the viewer behind it
    assert not isinstance(getattr(widget, "viewer", None), PublicOnlyProxy)
    return widget


def legend_docks(viewer) -> list[str]:
    return [name for name in viewer.window.dock_widgets if "legend" in name.lower()]


def assert_layout(viewer, widget, *, min_canvas_fraction: float = 0.45) -> None:
    """At most one legend, the window within the screen, the canvas keeps about half the width."""
    from napari_spatialdl._widgets._legend import find_legends

    process_events()
    assert len(legend_docks(viewer)) <= 1, list(viewer.window.dock_widgets)
    standalone = [lg for lg in find_legends(viewer) if lg.parentWidget() is not None
                  and type(lg.parentWidget()).__name__.endswith("DockWidget")]
    assert len(standalone) <= 1
    main = widget.window()
    frame = main.frameGeometry()
    screen = main.screen().availableGeometry()
    assert screen.contains(frame), (frame, screen)
    assert main.height() <= WINDOW[1] + 8, f"the window grew to {main.height()} px"
    canvas_w = viewer.canvas.size[1]
    assert canvas_w >= min_canvas_fraction * main.width(), (canvas_w, main.width())


def save_window(viewer, name: str) -> Path:
    """A full-window screenshot (docks, legend and canvas), to look at."""
    import imageio.v3 as iio

    process_events()
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    iio.imwrite(path, np.asarray(viewer.window.screenshot(canvas_only=False, flash=False))[..., :3])
    return path


def canvas_shot(viewer) -> np.ndarray:
    process_events()
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))


def spot_pixels(viewer, layer, shot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Screenshot (row, col) of every spot centre, and which of them are on the canvas."""
    from napari_spatialdl._widgets._regions_geometry import spots_world_yx

    canvas_hw = np.asarray(viewer.canvas.size, dtype=float)
    shot_hw = np.asarray(shot.shape[:2], dtype=float)
    center = np.asarray(viewer.camera.center[-2:], dtype=float)
    px = (spots_world_yx(layer) - center) * viewer.camera.zoom + canvas_hw / 2
    px = np.round(px * shot_hw / canvas_hw - 0.5).astype(int)
    inside = (px >= 0).all(axis=1) & (px[:, 0] < shot.shape[0]) & (px[:, 1] < shot.shape[1])
    return px, inside


def plain_image(viewer, spots) -> np.ndarray:
    """The canvas with the spots hidden: the tissue image alone, at the current camera."""
    spots.visible = False
    try:
        return canvas_shot(viewer)
    finally:
        spots.visible = True


def changed_at_spots(viewer, spots, plain: np.ndarray, shot: np.ndarray, tol: int = 40) -> float:
    """Fraction of the visible spot centres whose colour differs from the plain image."""
    px, inside = spot_pixels(viewer, spots, shot)
    assert inside.mean() > 0.8, "most spots are off the canvas: the view does not show the tissue"
    a = shot[px[inside, 0], px[inside, 1], :3].astype(int)
    b = plain[px[inside, 0], px[inside, 1], :3].astype(int)
    return float((np.abs(a - b).max(axis=1) > tol).mean())


def click_run(qtbot, widget, timeout: int = RUN_TIMEOUT_MS):
    from qtpy.QtCore import Qt

    assert widget.run_button.isEnabled(), widget.controls.reason.text()
    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    run = widget.last_run
    qtbot.waitUntil(lambda: run.done, timeout=timeout)
    process_events()
    assert run.error is None, run.error
    return run
