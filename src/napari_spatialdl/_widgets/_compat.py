"""Everything the plugin needs from napari beyond its public API, in one place, version-gated.

Each entry says what it reaches for and for which napari versions it is known to work
(:data:`TESTED`); outside that range it is not tried (the feature it serves is off, a warning
says so once). ``tests/test_gui_compat.py`` asserts on the running napari that every entry still
finds what it looks for, so a napari upgrade that changes one fails loudly there instead of
silently switching a feature off.

Replaced by public API (no entry here any more): ``layer._type_string`` (``isinstance`` with
:mod:`napari.layers`), ``layer._data_to_world`` (``layer.data_to_world``), the legend's
``viewer.window._qt_window`` comparison (``viewer.window.dock_widgets``), the dock fitting's
main window (the dock's own parent), the canvas of the GL check and the activity indicator
(found with public Qt calls in the main window).
"""

from __future__ import annotations

import warnings
from typing import Any

import napari

#: napari versions (lowest, first untested) each entry was checked with
TESTED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "proxy": ((0, 5, 0), (0, 11, 0)),
    "main_window": ((0, 5, 0), (0, 11, 0)),
    "activity_indicator": ((0, 5, 0), (0, 11, 0)),
    "gl_canvas": ((0, 5, 0), (0, 11, 0)),
    "points_shown_2d": ((0, 9, 0), (0, 11, 0)),
}

_warned: set[str] = set()


def napari_version() -> tuple[int, ...]:
    """``napari.__version__`` as a tuple of its leading integers (``"0.9.2rc1"`` -> ``(0, 9, 2)``)."""
    out = []
    for part in str(napari.__version__).split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits or 0))
    return tuple(out)


def supported(entry: str) -> bool:
    """Whether the running napari is in the range ``entry`` was checked with (warns once if not)."""
    low, high = TESTED[entry]
    ok = low <= napari_version() < high
    if not ok and entry not in _warned:
        _warned.add(entry)
        warnings.warn(f"napari {napari.__version__} is outside the versions napari-spatialdl checked "
                      f"its {entry!r} access with; the feature that needs it is off.", stacklevel=3)
    return ok


def _changed(entry: str, what: str) -> None:
    if entry not in _warned:
        _warned.add(entry)
        warnings.warn(f"napari {napari.__version__} changed {what}; napari-spatialdl turns off what "
                      f"needed it ({entry}).", stacklevel=3)


def real(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (what plugin widgets are given), else ``obj``.

    Plugin widgets get the viewer wrapped in a proxy that makes a new wrapper on each attribute
    access, so identity checks (``layer is self.layer``) fail through it. ``__wrapped__`` is the
    proxy's public (wrapt) attribute, not a private napari one.
    """
    if not supported("proxy"):
        return obj
    try:
        from napari.utils._proxies import PublicOnlyProxy  # the class, only to recognise it
    except ImportError:
        _changed("proxy", "napari.utils._proxies.PublicOnlyProxy")
        return obj
    while isinstance(obj, PublicOnlyProxy):
        obj = obj.__wrapped__
    return obj


def main_window(viewer: Any) -> Any:
    """The Qt main window of ``viewer`` (None without one).

    Public route first: the window holding any docked widget. Without docks (a script that only
    showed data) napari offers no public handle, so ``viewer.window._qt_window`` is read.
    """
    from qtpy.QtWidgets import QMainWindow

    window = getattr(real(viewer), "window", None)
    if window is None:
        return None
    for widget in window.dock_widgets.values():
        native = getattr(widget, "native", widget)
        top = native.window() if hasattr(native, "window") else None
        if isinstance(top, QMainWindow):
            return top
    if not supported("main_window"):
        return None
    qt_window = getattr(window, "_qt_window", None)
    if qt_window is None:
        _changed("main_window", "Window._qt_window")
    return qt_window


def activity_indicators(main: Any) -> list[Any]:
    """The animated "in progress" indicators (QMovie) of napari's status bar in ``main``."""
    from qtpy.QtWidgets import QLabel

    if main is None or not supported("activity_indicator"):
        return []
    return [label.movie() for label in main.findChildren(QLabel) if label.movie() is not None]


def gl_canvas(main: Any) -> Any:
    """The OpenGL widget napari's canvas draws into (vispy's QOpenGLWidget), or None."""
    if main is None or not supported("gl_canvas"):
        return None
    try:
        from qtpy.QtOpenGLWidgets import QOpenGLWidget
    except ImportError:  # Qt5 bindings
        from qtpy.QtWidgets import QOpenGLWidget
    found = main.findChildren(QOpenGLWidget)
    return found[0] if found else None


def gl_renderer_of(main: Any) -> str:
    """The OpenGL renderer string of the canvas in ``main`` ('' when unknown)."""
    canvas = gl_canvas(main)
    if canvas is None:
        return ""
    from vispy.gloo import gl

    canvas.makeCurrent()
    try:
        return str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception:  # a driver without the query: unknown (runs do not need it)
        return ""


_SHOWN_POINTS: Any = None


def shown_points_class() -> Any:
    """A napari ``Points`` subclass that draws only its ``shown`` points in 2D too, or None.

    napari slices a 2D Points layer to all its points, whatever ``shown`` says (its slice request
    returns every index when no dimension is sliced), so every point is re-sent to the GPU on
    every colour change and drawn on every frame. The level of detail of large spots layers
    (:mod:`._overview`) needs ``shown`` to limit what is drawn: this subclass wraps the layer's
    slice request (``Points._get_layer_slicing_state``, ``_PointsSlicingState``,
    ``_PointSliceRequest``: private napari classes) to keep the shown points only. Its class name
    is ``Points``, so napari's layer type string (writers, controls) stays ``"points"``.
    """
    global _SHOWN_POINTS
    if _SHOWN_POINTS is not None or not supported("points_shown_2d"):
        return _SHOWN_POINTS
    try:
        import dataclasses

        import numpy as np
        from napari.layers import Points as _NapariPoints
        from napari.layers.points._slice import _PointSliceRequest
        from napari.layers.points.points import _PointsSlicingState
    except ImportError:
        _changed("points_shown_2d", "napari.layers.points._slice / points.points")
        return None
    fields = {f.name for f in dataclasses.fields(_PointSliceRequest)}
    if not {"slice_input", "shown", "size"} <= fields or not hasattr(_NapariPoints, "_get_layer_slicing_state"):
        _changed("points_shown_2d", "the Points slice request")
        return None

    @dataclasses.dataclass(frozen=True)
    class _ShownRequest(_PointSliceRequest):
        def __call__(self) -> Any:
            response = super().__call__()
            if list(self.slice_input.not_displayed):
                return response  # napari applied ``shown`` itself
            shown = np.asarray(self.shown, dtype=bool)
            indices = np.asarray(response.indices)
            if shown.all() or not len(indices):
                return response
            keep = shown[indices]
            size = np.asarray(response.size)
            return dataclasses.replace(response, indices=indices[keep],
                                       size=size[keep] if size.ndim and len(size) == len(keep) else size)

    class _ShownSlicingState(_PointsSlicingState):
        def make_slice_request_internal(self, slice_input: Any, data_slice: Any) -> Any:
            request = super().make_slice_request_internal(slice_input, data_slice)
            return _ShownRequest(**{f.name: getattr(request, f.name) for f in dataclasses.fields(request)
                                    if f.init})

    class Points(_NapariPoints):  # the same name: napari's layer type string stays "points"
        __doc__ = _NapariPoints.__doc__

        def _get_layer_slicing_state(self, data: Any, cache: bool) -> Any:
            return _ShownSlicingState(layer=self, data=data, cache=cache)

    Points.__module__ = __name__
    Points.__qualname__ = "Points"
    _SHOWN_POINTS = Points
    return _SHOWN_POINTS


__all__ = ["TESTED", "activity_indicators", "gl_canvas", "gl_renderer_of", "main_window",
           "napari_version", "real", "shown_points_class", "supported"]
