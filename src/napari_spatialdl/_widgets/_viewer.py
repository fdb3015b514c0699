"""Show an AnnData on its tissue image in napari, find its spots layer, recolour the spots."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..layers import (
    BARCODE,
    META_ADATA,
    META_COLOR,
    META_LEGEND,
    META_PINNED,
    LegendInfo,
    feature_column,
    spatial_layers,
    spot_colors,
    spot_values,
)
from ._compat import real
from ._legend import ensure_legend, is_spots_layer, show_scale_bar


def show(
    adata: Any,
    viewer: Any = None,
    *,
    color: str | None = None,
    library_id: str | None = None,
    image_key: str = "auto",
    name: str | None = None,
    layer: str | None = None,
    cmap: str = "viridis",
    features: Sequence[str] = (),
    legend: bool = True,
) -> Any:
    """Show the tissue image and the spots of ``adata`` in napari.

    Parameters
    ----------
    adata
        Spatial AnnData (``obsm['spatial']``; image and scale factors in ``uns['spatial']``).
    viewer
        The viewer to add to; ``None``: the current napari viewer if there is one (e.g. from
        napari's console), else a new one.
    color
        Colour the spots by a gene, an ``obs`` column or ``"obsm_key:column"``. ``None``: as they
        were coloured when the file was saved (``uns['spatialdl_display']``, with its ``layer``,
        ``cmap`` and limits), if that still applies, else plain.
    library_id, image_key
        Which library and image (``"hires"``, ``"lowres"``, ``"auto"``).
    name
        Base name of the layers.
    layer
        For a gene ``color``: read values from ``adata.layers[layer]`` instead of ``X``.
    cmap
        Colormap for numeric values.
    features
        More keys to show on hover (e.g. ``["spatialdl_proportions:Astrocyte"]``).
    legend
        Dock a legend / colour bar when the spots are coloured.

    Returns
    -------
    napari.Viewer
        From a script, call ``napari.run()`` afterwards to interact with the window. Regions saved
        with the AnnData (``uns['spatialdl_regions']``) are drawn as a Shapes layer over the spots.
        When the µm size of a pixel is known (Visium grid or scale factors) world coordinates are
        µm and napari's scale bar is shown; :func:`napari_spatialdl.save_figure` saves the canvas
        with the legend and a scale bar as one figure.
    """
    import napari

    from ..layers import saved_display
    from ..regions import regions_layer_data

    colouring: dict[str, Any] = {"color": color, "layer": layer, "cmap": cmap}
    if color is None:
        colouring = saved_display(adata) or colouring
    data = spatial_layers(adata, library_id=library_id, image_key=image_key, name=name,
                          features=features, **colouring)
    data += regions_layer_data(adata, data[-1][1])
    viewer = real(viewer) if viewer is not None else (napari.current_viewer() or napari.Viewer())
    added = []
    for layer_data, kwargs, layer_type in data:
        added.append(getattr(viewer, f"add_{layer_type}")(layer_data, **kwargs))
    spots = next(lyr for lyr, (_, _, kind) in zip(added, data) if kind == "points")
    info = spots.metadata.get(META_LEGEND)
    if info is not None and info.kind == "numeric":
        _native_colorbar(spots, info)
    viewer.layers.selection.active = spots
    viewer.reset_view()
    show_scale_bar(viewer)  # world coordinates are µm when the pixel size is known
    if legend and colouring["color"] is not None and hasattr(viewer, "window"):
        ensure_legend(viewer, spots)
    return viewer


def spots_layers(viewer: Any, adata: Any = None) -> list[Any]:
    """All spots layers of ``viewer`` (those made by :func:`show`/the reader), optionally of ``adata``."""
    return [
        lyr for lyr in real(viewer).layers
        if is_spots_layer(lyr) and (adata is None or lyr.metadata.get(META_ADATA) is adata)
    ]


def find_spots_layer(viewer: Any, adata: Any = None) -> Any:
    """The spots layer to work on: the active one if it is a spots layer, else the top-most.

    Parameters
    ----------
    viewer
        A napari viewer.
    adata
        Only layers showing this AnnData (identity).

    Raises
    ------
    LookupError
        When the viewer has no such layer.
    """
    viewer = real(viewer)
    candidates = spots_layers(viewer, adata)
    if not candidates:
        what = "of this AnnData " if adata is not None else ""
        raise LookupError(
            f"The viewer has no spots layer {what}: open a Space Ranger folder / .h5ad with the "
            "napari-spatialdl reader, or call napari_spatialdl.show(adata, viewer)."
        )
    active = viewer.layers.selection.active
    if active is not None and any(active is c for c in candidates):
        return active
    return candidates[-1]


def _native_colorbar(layer: Any, info: LegendInfo | None, visible: bool = True) -> None:
    """Mirror a numeric legend on napari's own canvas colour bar of the layer (visible in screenshots)."""
    colorbar = getattr(layer, "face_colorbar", None)
    if colorbar is None:
        return
    if info is None or info.kind != "numeric" or info.limits is None:
        colorbar.visible = False
        return
    lo, hi = info.limits
    if hi <= lo:
        hi = lo + 1.0
    try:
        layer.face_colormap = info.cmap
        layer.face_contrast_limits = (lo, hi)
    except (KeyError, ValueError, TypeError):  # a colormap napari cannot take: keep the Qt legend only
        colorbar.visible = False
        return
    colorbar.visible = visible


def color_spots(
    layer: Any,
    key: str,
    *,
    layer_key: str | None = None,
    cmap: str = "viridis",
    contrast_limits: tuple[float, float] | None = None,
    features: Sequence[str] = (),
    colorbar: bool = True,
) -> LegendInfo:
    """Recolour a spots layer by ``key``, from the AnnData in ``layer.metadata['adata']``.

    The values go into ``layer.features[key]`` beside the barcode (napari shows both when the
    mouse is over a spot), the legend into ``layer.metadata['spatialdl_legend']``.

    Parameters
    ----------
    layer
        A spots layer (see :func:`find_spots_layer`).
    key
        A gene, an ``obs`` column or ``"obsm_key:column"``.
    layer_key
        For a gene: the ``adata.layers`` entry to read instead of ``X``.
    cmap
        Matplotlib colormap name for numeric values.
    contrast_limits
        Values at the ends of the colormap; default the min and max.
    features
        More keys to keep in ``layer.features`` from now on (shown on hover).
    colorbar
        Also show napari's colour bar on the canvas for numeric values.

    Returns
    -------
    LegendInfo
        What the legend shows.
    """
    adata = layer.metadata.get(META_ADATA)
    if adata is None:
        raise ValueError(
            f"Layer {layer.name!r} has no AnnData in metadata['adata']: it was not made by "
            "napari_spatialdl (use napari_spatialdl.show or its reader)."
        )
    if adata.n_obs != len(layer.data):
        raise ValueError(
            f"Layer {layer.name!r} has {len(layer.data)} points but its AnnData has {adata.n_obs} "
            "spots (points were added or deleted, or the AnnData was subset): show it again."
        )
    rgba, info, values = spot_colors(adata, key, layer=layer_key, cmap=cmap, contrast_limits=contrast_limits)

    pinned = list(layer.metadata.get(META_PINNED, []))
    pinned += [str(k) for k in features if str(k) not in pinned]
    table = pd.DataFrame({BARCODE: np.asarray(adata.obs_names, dtype=object)})
    for extra in pinned:
        if extra != str(key):
            table[extra] = feature_column(spot_values(adata, extra)[0])
    table[str(key)] = feature_column(values)

    layer.metadata[META_PINNED] = pinned
    layer.metadata[META_LEGEND] = info
    layer.metadata[META_COLOR] = {"key": str(key), "layer": layer_key, "cmap": cmap,
                                  "contrast_limits": contrast_limits}
    layer.face_color = rgba  # first: leaves any feature-bound colour mode, so no column is needed
    with warnings.catch_warnings():
        # napari remembers the column an earlier colour mode used and warns when it goes away;
        # the colours are direct RGBA by now, so nothing is lost
        warnings.filterwarnings("ignore", message="property used for", category=RuntimeWarning)
        layer.features = table  # emits layer.events.features: legends following the layer redraw
    _native_colorbar(layer, info, visible=colorbar)
    layer.refresh()
    return info
