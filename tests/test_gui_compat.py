"""Every entry of ``_widgets/_compat.py`` still finds what it reaches for on the running napari.

These fail loudly when a napari release changes one of them (the plugin itself then turns the
feature off with a warning instead of breaking): update ``_compat`` and its ``TESTED`` ranges.
"""

from __future__ import annotations

import os

import pytest

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)"),
]


def test_running_napari_is_in_the_tested_ranges():
    import napari

    from napari_spatialdl._widgets import _compat

    for entry, (low, high) in _compat.TESTED.items():
        assert low <= _compat.napari_version() < high, (
            f"napari {napari.__version__} is outside the range {entry!r} was checked with: check it, "
            "then widen _compat.TESTED")
        assert _compat.supported(entry)


def test_public_replacements_exist():
    """What replaced private access: napari's public API, present on this napari."""
    import numpy as np
    from napari.layers import Image, Layer, Points

    from napari_spatialdl._widgets._legend import is_spots_layer
    from napari_spatialdl._widgets._regions_geometry import to_world

    assert callable(Layer.data_to_world)  # replaced layer._data_to_world
    points = Points(np.array([[1.0, 2.0], [3.0, 5.0]]), scale=(2.0, 3.0), translate=(10.0, 20.0),
                    metadata={"spatialdl_spots": True})
    np.testing.assert_allclose(to_world(points, points.data), [[12.0, 26.0], [16.0, 35.0]])
    # isinstance replaced layer._type_string
    assert is_spots_layer(points)
    assert not is_spots_layer(Image(np.zeros((4, 4)), metadata={"spatialdl_spots": True}))
    from napari._qt.qt_main_window import Window

    assert hasattr(Window, "dock_widgets")  # the legend is found through it
    assert hasattr(Window, "add_plugin_dock_widget")


def test_compat_entries_on_a_real_window(make_napari_viewer):
    import napari
    from napari.utils._proxies import PublicOnlyProxy
    from qtpy.QtWidgets import QApplication, QMainWindow

    from napari_spatialdl._widgets import _compat

    viewer = make_napari_viewer(show=True)
    QApplication.processEvents()
    # main_window: without any dock napari has no public handle -> Window._qt_window
    assert hasattr(viewer.window, "_qt_window"), "napari removed Window._qt_window"
    main = _compat.main_window(viewer)
    assert isinstance(main, QMainWindow) and main is viewer.window._qt_window
    # activity indicator: napari's status bar holds an animated QMovie
    movies = _compat.activity_indicators(main)
    assert movies, "napari's activity indicator (a QLabel with a QMovie) is no longer in the window"
    # the OpenGL canvas and its renderer string
    assert _compat.gl_canvas(main) is not None
    assert isinstance(_compat.gl_renderer_of(main), str) and _compat.gl_renderer_of(main)
    # proxy: napari hands plugin widgets a PublicOnlyProxy; real() gives the viewer behind it
    proxy = PublicOnlyProxy(viewer)
    assert _compat.real(proxy) is viewer and _compat.real(viewer) is viewer
    assert isinstance(_compat.real(proxy), napari.Viewer)
    # with a docked widget the public route finds the same window
    _, widget = viewer.window.add_plugin_dock_widget("napari-spatialdl", "Colour spots")
    assert _compat.main_window(proxy) is main is widget.window()
