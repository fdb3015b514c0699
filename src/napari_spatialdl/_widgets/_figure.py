"""One figure of what is on the canvas: the tissue with its coloured spots, the legend, a scale bar.

A canvas screenshot alone has no legend (the legend is a Qt dock, not on the canvas). :func:`save_figure`
renders the canvas at the resolution the figure needs and composes it with matplotlib (Agg or the
vector backends) beside the legend of the coloured spots layer: category swatches with their
names, or a colour bar with its limits, titled in plain words (the layer's
``metadata['spatialdl_legend']``). The scale bar is drawn in the figure from the camera's zoom
and the layers' units (micrometres when the spots carry them, see
:func:`napari_spatialdl.layers.spatial_layers`), so its text stays readable at any dpi; napari's
own canvas scale bar and colour bar are hidden during the render, not to appear twice.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

#: file extension -> matplotlib format
FORMATS: dict[str, str] = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".tif": "tiff", ".tiff": "tiff"}
#: screen pixels per inch assumed for the canvas: by default the tissue panel is as many inches wide
#: as the canvas has pixels / 100, rendered at ``dpi`` (so at 300 dpi with 3x the canvas pixels)
CANVAS_PPI = 100.0
#: longest side rendered (OpenGL render buffers are limited; beyond this the panel is resampled)
MAX_RENDER_SIDE = 6000
#: the scale bar is about this fraction of the panel's width
_SCALE_BAR_FRACTION = 0.2
_PAD_IN = 0.15
_GAP_IN = 0.2


class FigureError(ValueError):
    """A figure that cannot be made as asked: the message says why and what to do."""


def _check_path(path: str | Path) -> tuple[Path, str]:
    path = Path(path).expanduser()
    ext = path.suffix.lower()
    if ext not in FORMATS:
        supported = ", ".join(FORMATS)
        raise FigureError(
            f"Cannot save a figure as {path.name!r}: the extension {ext or '(none)'!r} is not supported. "
            f"Use one of {supported} (e.g. {path.with_suffix('.png').name!r})."
        )
    if not path.parent.is_dir():
        raise FigureError(f"The folder {str(path.parent)!r} does not exist: create it or choose another path.")
    return path, FORMATS[ext]


def _check_dpi(dpi: Any) -> float:
    try:
        value = float(dpi)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value < 10 or value > 2400:
        raise FigureError(f"dpi={dpi!r} is not a resolution from 10 to 2400 dots per inch (e.g. 300 for print).")
    return value


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
        ok = (h, w) == tuple(float(v) for v in size) and 16 <= h <= MAX_RENDER_SIDE and 16 <= w <= MAX_RENDER_SIDE
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise FigureError(
            f"size={size!r} must be (height, width) of the tissue panel in pixels, two integers from 16 "
            f"to {MAX_RENDER_SIDE}; None renders the canvas at dpi / {CANVAS_PPI:g} times its size."
        )
    return h, w


def figure_layer(viewer: Any, layer: Any = None) -> Any:
    """The coloured spots layer a figure shows: ``layer``, else the active one, else the top-most.

    Raises
    ------
    FigureError
        When no visible spots layer is coloured (the message says how to colour one).
    """
    from ..layers import META_LEGEND
    from ._compat import real
    from ._legend import is_spots_layer

    how = ("Colour the spots first: napari_spatialdl.show(adata, color='<gene or obs column>'), "
           "color_spots(layer, key), or the Colour spots panel.")
    if layer is not None:
        layer = real(layer)
        if not is_spots_layer(layer):
            raise FigureError(f"Layer {getattr(layer, 'name', layer)!r} is not a spots layer of napari-spatialdl. {how}")
        if layer.metadata.get(META_LEGEND) is None:
            raise FigureError(f"The spots of {layer.name!r} are not coloured by anything, so there is no legend. {how}")
        if not layer.visible:
            raise FigureError(f"Layer {layer.name!r} is hidden: make it visible (its eye in the layer list) first.")
        return layer
    spots = [lyr for lyr in viewer.layers if is_spots_layer(lyr)]
    if not spots:
        raise FigureError("The viewer has no spots layer: open data with napari_spatialdl.show(adata) or the "
                          "napari-spatialdl reader, then colour the spots.")
    coloured = [lyr for lyr in spots if lyr.metadata.get(META_LEGEND) is not None]
    if not coloured:
        raise FigureError(f"No spots layer is coloured ({', '.join(repr(s.name) for s in spots)}), so a figure "
                          f"would have no legend. {how}")
    shown = [lyr for lyr in coloured if lyr.visible]
    if not shown:
        raise FigureError(f"The coloured spots ({', '.join(repr(s.name) for s in coloured)}) are hidden: make "
                          "them visible (their eye in the layer list) first.")
    active = viewer.layers.selection.active
    return next((lyr for lyr in shown if lyr is active), shown[-1])


def _world_microns(viewer: Any, layer: Any) -> float | None:
    """Micrometres per world unit, when the layers carry a length unit (None: pixels, unknown size)."""
    units = getattr(viewer.layers, "units", None)
    if units is None:
        units = getattr(layer, "units", None)
    if not units:
        return None
    unit = units[-1]
    try:
        value = float((1 * unit).to("micrometer").magnitude)
    except Exception:  # pint: not a length (pixel, dimensionless)
        return None
    return value if math.isfinite(value) and value > 0 else None


def _render(viewer: Any, layer: Any, size: tuple[int, int] | None, dpi: float) -> tuple[np.ndarray, float]:
    """The canvas at the figure's resolution (RGB uint8) and world units per pixel of it.

    The view (camera centre and the world area visible) stays what the canvas shows: the canvas is
    rendered with more pixels and a proportionally larger zoom, both restored afterwards. napari's
    scale bar and the layer's canvas colour bar are hidden meanwhile (the figure draws its own).
    """
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    current = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    shot_h, shot_w = current.shape[:2]
    logical_w = float(viewer.canvas.size[1])
    ratio = shot_w / logical_w if logical_w > 0 else 1.0  # device pixels per canvas pixel
    if size is None:
        k = min(dpi / CANVAS_PPI, MAX_RENDER_SIDE / max(shot_h, shot_w))
        size = (max(16, int(round(shot_h * k))), max(16, int(round(shot_w * k))))
    factor = min(size[0] / shot_h, size[1] / shot_w)  # the whole current view stays in the panel

    camera = viewer.camera
    zoom, center = camera.zoom, tuple(camera.center)
    bar = viewer.scale_bar
    colorbar = getattr(layer, "face_colorbar", None)
    hidden = [(bar, bar.visible)] + ([(colorbar, colorbar.visible)] if colorbar is not None else [])
    try:
        for overlay, _ in hidden:
            overlay.visible = False
        camera.zoom = zoom * factor
        shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False, size=size))
    finally:
        camera.zoom = zoom
        camera.center = center
        for overlay, was in hidden:
            overlay.visible = was
    world_per_px = 1.0 / (zoom * factor * ratio)
    if viewer.dims.ndisplay == 2:
        shot = _crop_to_layers(viewer, shot, center, world_per_px)
    return np.ascontiguousarray(shot[..., :3]), world_per_px


def _crop_to_layers(viewer: Any, shot: np.ndarray, center: tuple, world_per_px: float) -> np.ndarray:
    """``shot`` without the empty canvas around the layers (what lies outside every layer's extent)."""
    from napari.layers import Image, Points

    lows, highs = [], []
    for layer in viewer.layers:
        if not layer.visible:
            continue
        world = np.asarray(layer.extent.world, dtype=float)[:, -2:]
        scale = np.abs(np.asarray(layer.scale, dtype=float)[-2:])
        if isinstance(layer, Image):
            margin = scale / 2  # pixels reach half a pixel past their centres
        elif isinstance(layer, Points) and len(layer.data):
            margin = float(np.max(layer.size)) / 2 * scale
        else:
            margin = np.zeros(2)
        lows.append(world[0] - margin)
        highs.append(world[1] + margin)
    if not lows:
        return shot
    lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return shot
    mid = np.asarray(center, dtype=float)[-2:]
    size = np.asarray(shot.shape[:2], dtype=float)
    first = np.round((lo - mid) / world_per_px + size / 2).astype(int)
    last = np.round((hi - mid) / world_per_px + size / 2).astype(int)
    first = np.clip(first, 0, shot.shape[:2])
    last = np.clip(last, 0, shot.shape[:2])
    if ((last - first) < 16).any():
        return shot
    return shot[first[0]:last[0], first[1]:last[1]]


def _nice_length(target_um: float) -> float:
    """1, 2 or 5 x 10^k µm at or below ``target_um``."""
    exponent = math.floor(math.log10(target_um))
    for step in (5.0, 2.0, 1.0):
        value = step * 10.0**exponent
        if value <= target_um:
            return value
    return 10.0**exponent  # pragma: no cover


def _length_label(um: float) -> str:
    if um >= 1000:
        return f"{um / 1000:g} mm"
    if um >= 1:
        return f"{um:g} µm"
    return f"{um * 1000:g} nm"


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1e4 or a < 1e-3:
        return f"{x:.2e}"
    if a >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def _wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def _draw_legend(fig: Any, info: Any, left: float, top: float, dpi: float, font: float) -> list[Any]:
    """The legend's artists, its top-left corner at (``left``, ``top``) inches from the figure's bottom-left."""
    from matplotlib.patches import Patch

    trans = fig.dpi_scale_trans
    if info.kind == "categorical":
        names = list(info.categories)
        handles = [Patch(facecolor=info.categories[n], edgecolor="#202020", linewidth=0.5) for n in names]
        labels = [str(n) for n in names]
        if info.n_missing:
            handles.append(Patch(facecolor=info.na_color, edgecolor="#202020", linewidth=0.5))
            labels.append(f"no value ({info.n_missing} spots)")
        ncols = max(1, math.ceil(len(labels) / 24))
        legend = fig.legend(
            handles, labels, title=_wrap(info.label or "Categories"), loc="upper left",
            bbox_to_anchor=(left, top), bbox_transform=trans, frameon=False, fontsize=font,
            title_fontproperties={"size": font * 1.1, "weight": "bold"}, alignment="left",
            handlelength=1.2, handleheight=1.2, handletextpad=0.6, labelspacing=0.45, ncols=ncols,
            borderaxespad=0.0, borderpad=0.0,
        )
        return [legend]

    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo, hi = info.limits or (0.0, 1.0)
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        hi = lo + 1.0
    title = fig.text(left, top, _wrap(info.label or "Value"), transform=trans, ha="left", va="top",
                     fontsize=font * 1.1, fontweight="bold")
    renderer = fig.canvas.get_renderer()
    title_h = title.get_window_extent(renderer).height / dpi
    bar_h, bar_w = 2.4 * font / 10.0, 0.22 * font / 10.0
    bar_top = top - title_h - 0.12
    fw, fh = fig.get_size_inches()
    cax = fig.add_axes([left / fw, (bar_top - bar_h) / fh, bar_w / fw, bar_h / fh])
    sm = ScalarMappable(norm=Normalize(lo, hi), cmap=matplotlib.colormaps[info.cmap or "viridis"])
    cbar = fig.colorbar(sm, cax=cax)
    from matplotlib.ticker import MaxNLocator

    inner = [t for t in MaxNLocator(nbins=4).tick_values(lo, hi)
             if lo < t < hi and min(t - lo, hi - t) > 0.12 * (hi - lo)]
    ticks = [lo, *inner, hi]
    cbar.set_ticks(ticks, labels=[_fmt(t) for t in ticks])
    cbar.ax.tick_params(labelsize=font)
    cbar.outline.set_linewidth(0.5)
    artists = [title, cax]
    notes = [n for n in (info.note,) if n]
    if info.n_missing:
        notes.append(f"grey: no value ({info.n_missing} spots)")
    if notes:
        artists.append(fig.text(left, bar_top - bar_h - 0.12, "\n".join(_wrap(n, 34) for n in notes),
                                transform=trans, ha="left", va="top", fontsize=font * 0.9))
    return artists


def _extent_in(fig: Any, artists: list[Any], dpi: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in inches of what ``artists`` cover."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    boxes = []
    for artist in artists:
        box = artist.get_tightbbox(renderer) if hasattr(artist, "get_tightbbox") else None
        boxes.append(box if box is not None else artist.get_window_extent(renderer))
    union = Bbox.union(boxes)
    return union.x0 / dpi, union.y0 / dpi, union.x1 / dpi, union.y1 / dpi


def _figure(width: float, height: float, dpi: float) -> Any:
    """A matplotlib figure on the Agg canvas (no pyplot, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _compose(shot: np.ndarray, info: Any, um_per_px: float | None, dpi: float) -> Any:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    h_px, w_px = shot.shape[:2]
    panel_w, panel_h = w_px / dpi, h_px / dpi
    font = float(np.clip(1.6 * min(panel_w, panel_h), 8.0, 14.0))

    # measure the legend once on a scratch figure, then lay out the real one around it
    scratch = _figure(panel_w + 12, panel_h + 12, dpi)
    x0, y0, x1, y1 = _extent_in(scratch, _draw_legend(scratch, info, 1.0, panel_h + 11, dpi, font), dpi)
    legend_w, legend_h = x1 - 1.0, (panel_h + 11) - y0
    left_overhang = max(0.0, 1.0 - x0)

    fig_w = _PAD_IN + panel_w + _GAP_IN + left_overhang + legend_w + _PAD_IN
    fig_h = _PAD_IN + max(panel_h, legend_h) + _PAD_IN
    fig = _figure(fig_w, fig_h, dpi)
    top = fig_h - _PAD_IN
    ax = fig.add_axes([_PAD_IN / fig_w, (top - panel_h) / fig_h, panel_w / fig_w, panel_h / fig_h])
    ax.imshow(shot, interpolation="none", aspect="auto")
    ax.set_axis_off()
    if um_per_px is not None:
        length_um = _nice_length(_SCALE_BAR_FRACTION * w_px * um_per_px)
        bar = AnchoredSizeBar(
            ax.transData, length_um / um_per_px, _length_label(length_um), loc="lower right",
            pad=0.4, borderpad=0.6, sep=4, color="black", frameon=True,
            size_vertical=max(2.0, 0.006 * h_px), fontproperties={"size": font},
        )
        bar.patch.set(facecolor="white", alpha=0.85, edgecolor="none")
        ax.add_artist(bar)
    _draw_legend(fig, info, _PAD_IN + panel_w + _GAP_IN + left_overhang, top, dpi, font)
    return fig


def _default_name(info: Any) -> str:
    words = re.sub(r"[^\w\-]+", "_", str(info.label or info.key or "figure")).strip("_")
    return (words or "figure")[:60]


def save_figure(
    viewer: Any,
    path: str | Path,
    dpi: float = 300,
    *,
    size: tuple[int, int] | None = None,
    layer: Any = None,
) -> Path:
    """Save the canvas with the legend (or colour bar) and a scale bar as one figure.

    Parameters
    ----------
    viewer
        The napari viewer (as :func:`napari_spatialdl.show` returns it).
    path
        The file to write; the format follows the extension: ``.png``, ``.pdf``, ``.svg``,
        ``.tif``/``.tiff``.
    dpi
        Dots per inch of the figure (written into PNG and TIFF files). The tissue panel is rendered
        at that resolution: by default the canvas, as it is framed now, at ``dpi / 100`` times its
        pixels (a 900-pixel-wide canvas becomes a 9-inch panel, 2700 pixels at 300 dpi).
    size
        ``(height, width)`` of the tissue panel in pixels instead (its inches are those / ``dpi``);
        the view shown on the canvas is kept (fitted inside when the shape differs).
    layer
        The spots layer whose legend to show; default the active spots layer when it is coloured,
        else the top-most visible coloured one.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    FigureError
        A ``ValueError``: unknown extension (the message lists the supported ones), a folder that
        does not exist, a bad ``dpi`` or ``size``, or no visible coloured spots layer (the message
        says how to colour one).

    Notes
    -----
    The scale bar is drawn when the layers carry a length unit (the µm of
    :func:`napari_spatialdl.layers.spatial_layers` for Visium data); without one the panel has no
    scale bar, since its physical size is unknown.
    """
    from ..layers import META_LEGEND
    from ._compat import real

    out, fmt = _check_path(path)
    dpi = _check_dpi(dpi)
    size = _check_size(size)
    viewer = real(viewer)
    if getattr(viewer, "window", None) is None:
        raise FigureError("save_figure needs a napari viewer with a window (napari_spatialdl.show returns one).")
    spots = figure_layer(viewer, layer)
    info = spots.metadata[META_LEGEND]
    shot, world_per_px = _render(viewer, spots, size, dpi)
    microns = _world_microns(viewer, spots)
    um_per_px = None if microns is None else world_per_px * microns
    fig = _compose(shot, info, um_per_px, dpi)
    metadata = {"Title": str(info.label or info.key)} if fmt in ("png", "pdf", "svg") else None
    fig.savefig(out, format=fmt, dpi=dpi, facecolor="white", metadata=metadata)
    return out


__all__ = ["FORMATS", "FigureError", "figure_layer", "save_figure"]
