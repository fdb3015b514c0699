"""Show an AnnData on its tissue image in napari, find its spots layer, recolour the spots."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..io._spatialdata import LINK_KEY, SIZE_KEY
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
from ._compat import real, shown_points_class
from ._legend import ensure_legend, is_spots_layer, show_scale_bar
from ._overview import SQUARE_OVERLAP, attach_overview, needs_overview
from ._spatialdata_layers import napari_spatialdata_links, spots_adata


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
        with the legend and a scale bar as one figure. Visium HD bins are drawn as squares of their
        side. More than 50,000 spots are drawn through an overview image while zoomed out and as
        markers only for the spots in view up close (``napari_spatialdl._widgets._overview``).
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
    points_kwargs = next(kwargs for _, kwargs, kind in data if kind == "points")
    _true_geometry(adata, points_kwargs)
    # what napari-spatialdata's View widget needs to colour the layer from this AnnData (results
    # included); not its SpatialData link, with which the widget would show the table without them
    points_kwargs.setdefault("metadata", {}).update(napari_spatialdata_links(adata, with_sdata=False))
    # many spots: a Points layer that draws only its shown spots, under an overview image
    culled = shown_points_class() if needs_overview(adata.n_obs) else None
    if culled is not None:
        points_kwargs["shown"] = False  # the overview draws them; no million markers on the first frame
    added = []
    for layer_data, kwargs, layer_type in data:
        if layer_type == "points" and culled is not None:
            added.append(viewer.add_layer(culled(layer_data, **kwargs)))
        else:
            added.append(getattr(viewer, f"add_{layer_type}")(layer_data, **kwargs))
    spots = next(lyr for lyr, (_, _, kind) in zip(added, data) if kind == "points")
    info = spots.metadata.get(META_LEGEND)
    if info is not None and info.kind == "numeric":
        _native_colorbar(spots, info)
    overview = attach_overview(viewer, spots) if culled is not None else None
    viewer.layers.selection.active = spots
    viewer.reset_view()
    if overview is not None:
        overview.update_view()
    show_scale_bar(viewer)  # world coordinates are µm when the pixel size is known
    if legend and colouring["color"] is not None and hasattr(viewer, "window"):
        ensure_legend(viewer, spots)
    return viewer


def _true_geometry(adata: Any, points_kwargs: dict) -> None:
    """Squares (Visium HD bins) drawn as squares of their side, without rim or antialiasing (bins tile).

    The SpatialData readers record the shape in ``uns['spatialdl_spatialdata']['shape']`` and
    each observation's size in ``obs['spatialdl_size_fullres']`` (full-resolution pixels); the
    points are in pixels of the image shown (``metadata['scalefactor']`` of full resolution).
    """
    link = adata.uns.get(LINK_KEY) if hasattr(adata, "uns") else None
    if not isinstance(link, dict) or link.get("shape") != "square":
        return
    points_kwargs["symbol"] = "square"
    points_kwargs["border_width"] = 0.0
    points_kwargs["antialiasing"] = 0.0  # antialiased edges leave a seam between adjacent bins
    sizes = None
    if SIZE_KEY in adata.obs:
        scalef = float(points_kwargs.get("metadata", {}).get("scalefactor") or 1.0)
        sizes = adata.obs[SIZE_KEY].to_numpy(dtype=np.float64) * scalef
        if not (len(sizes) and np.isfinite(sizes).all() and (sizes > 0).all()):
            sizes = None
    if sizes is None:
        sizes = np.atleast_1d(np.asarray(points_kwargs.get("size", 1.0), dtype=np.float64))
    # one size for all (a bin size), else each its own; 0.1 % larger than the side, so that
    # adjacent bins leave no seam where the rasteriser rounds a shared edge away from both
    same = np.ptp(sizes) <= 1e-6 * float(sizes.max())
    points_kwargs["size"] = float(sizes[0]) * SQUARE_OVERLAP if same else sizes * SQUARE_OVERLAP


def spots_layers(viewer: Any, adata: Any = None) -> list[Any]:
    """All spots layers of ``viewer`` (those made by :func:`show`/the reader, and napari-spatialdata's
    layers of circles/points that a table annotates: see :func:`._legend.is_spots_layer`), optionally of ``adata``."""
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
        from ._spatialdata_layers import not_offered

        what = "of this AnnData " if adata is not None else ""
        left_out = " ".join(not_offered(viewer)) if adata is None else ""
        raise LookupError(
            f"The viewer has no spots layer {what}: open a Space Ranger folder / .h5ad / SpatialData .zarr "
            "with the napari-spatialdl reader, add circles of a SpatialData with napari-spatialdata, or call "
            "napari_spatialdl.show(adata, viewer)." + (f" {left_out}" if left_out else "")
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
    adata = spots_adata(layer)  # ours, where napari-spatialdata's View widget replaced it
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
    layer.metadata[META_PINNED] = pinned
    layer.metadata[META_LEGEND] = info
    layer.metadata[META_COLOR] = {"key": str(key), "layer": layer_key, "cmap": cmap,
                                  "contrast_limits": contrast_limits}
    layer.face_color = rgba  # first: leaves any feature-bound colour mode, so no column is needed
    _put_features(layer, adata, str(key), values, pinned)
    _native_colorbar(layer, info, visible=colorbar)
    layer.events.features()  # the value column changed: legends following the layer redraw
    return info


def _features_in_place(layer: Any, n_obs: int) -> bool:
    """Whether the layer's features table can take the new value column in place: it is one row
    per spot with the barcode, and no colour or text of the layer is bound to its columns."""
    table = layer.features
    if len(table) != n_obs or BARCODE not in table.columns:
        return False
    if str(layer.border_color_mode) != "direct" or str(layer.face_color_mode) != "direct":
        return False
    text = getattr(layer.text, "string", None)
    return getattr(text, "constant", None) == ""


def _put_features(layer: Any, adata: Any, key: str, values: Any, pinned: Sequence[str]) -> None:
    """``layer.features`` = barcode, the pinned keys, then ``key``'s values (shown on hover).

    The table is built once; a recolour replaces its columns in napari's own table (no new table,
    no copy of the barcodes; the pinned keys' values are read again; the defaults napari uses for
    new points follow). A table that cannot be edited so (another length, no barcode, columns bound
    to colours or text) is replaced once through ``layer.features``.
    """
    column = feature_column(values)
    extras = [k for k in pinned if k != key]
    if not _features_in_place(layer, adata.n_obs):
        table = pd.DataFrame({BARCODE: np.asarray(adata.obs_names, dtype=object)})
        for extra in extras:
            table[extra] = feature_column(spot_values(adata, extra)[0])
        table[key] = column
        with warnings.catch_warnings():
            # napari remembers the column an earlier colour mode used and warns when it goes away;
            # the colours are direct RGBA by now, so nothing is lost
            warnings.filterwarnings("ignore", message="property used for", category=RuntimeWarning)
            layer.features = table
        return
    table = layer.features  # napari's own DataFrame: edited in place
    keep = {BARCODE, *extras}
    for name in [c for c in table.columns if c not in keep]:
        del table[name]
    for extra in extras:  # pinned values read again (a task may have rewritten them)
        table[extra] = feature_column(spot_values(adata, extra)[0])
    table[key] = column
    # napari's defaults for new points: the last row, as napari makes them
    layer.feature_defaults = {name: table[name].iloc[-1] for name in table.columns}
