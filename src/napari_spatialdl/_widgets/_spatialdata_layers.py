"""Beside napari-spatialdata: its layers as inputs of the panels and of ``sdl.run``, and its links on ours.

napari-spatialdata (``Interactive``, its "SpatialData" dock, its reader) links every layer it adds
to the SpatialData through ``layer.metadata``: ``sdata``, ``name`` (the element), ``table_names``,
``region_key``, ``instance_key``, ``_current_cs``, ``_active_in_cs``, ``indices`` (the instance id
of each point, in layer order), ``_n_indices``, ``_columns_df``, and ``adata``: the table joined to
the element (``spatialdata.join_spatialelement_table``), which its View widget builds again each
time the layer is selected.

- :func:`ensure_spots_layer` *adopts* a Points layer it made (circles or points of an element that
  a table annotates): our AnnData is built from the SpatialData by the reader's own conversion
  (:func:`napari_spatialdl.io._spatialdata._to_anndata`; table ``table_names[0]``, the element, the
  layer's coordinate system), its rows put in the layer's point order (``indices``), and the
  layer gets the keys of :func:`napari_spatialdl.layers.spatial_layers` (``adata``,
  ``spatialdl_spots``, ``library_id``, ``image_key``, ``scalefactor``). Our AnnData is a table in
  napari-spatialdata's sense too (``uns['spatialdata_attrs']``, the region and instance columns,
  rows matching ``indices``), so its widgets keep working; napari-spatialdata's own keys are left
  as they were. The SpatialData is not changed: results go into our AnnData, and
  :func:`napari_spatialdl.write_spatialdata` puts them into the table of the ``.zarr``.
  Our AnnData is also kept in ``metadata['spatialdl_adata']``: when napari-spatialdata's View
  widget puts its joined table back into ``metadata['adata']``, ours is put back the next time a
  panel, ``sdl.run`` or the legend looks for spots (napari-spatialdata's widget keeps its own table).
- :func:`napari_spatialdata_links` is the metadata napari-spatialdata's widgets need on a spots
  layer of an AnnData of :func:`napari_spatialdl.read_spatialdata` / ``read_visium_hd`` /
  ``read_xenium``, with the SpatialData the reader kept
  (:func:`~napari_spatialdl.io._spatialdata.spatialdata_of`), for the layer factories; :func:`link_layer`
  gives a layer already shown (e.g. by :func:`napari_spatialdl.show`) the part of it that can be
  added afterwards, so that napari-spatialdata's View widget colours it from our AnnData.
- :func:`not_offered` says, for each napari-spatialdata layer that is not offered, why and what to do.

Main thread only (layers are touched); nothing here needs napari-spatialdata installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io._spatial import SpatialDataError
from ..io._spatialdata import (
    LINK_KEY,
    MAX_IMAGE_SIDE,
    _affine_xy,
    _listing,
    _to_anndata,
    spatialdata_of,
)
from ..layers import META_ADATA, META_FLAG, META_PINNED

#: our AnnData of a spots layer, put back into ``metadata['adata']`` when another plugin replaced it
META_OURS = "spatialdl_adata"
#: why a napari-spatialdata layer is not offered, with the state it was found for
META_PROBLEM = "spatialdl_not_offered"


def _spatialdata(layer: Any) -> Any | None:
    sdata = layer.metadata.get("sdata")
    if sdata is None:
        return None
    try:
        from spatialdata import SpatialData
    except ImportError:  # pragma: no cover - spatialdata is a dependency
        return None
    return sdata if isinstance(sdata, SpatialData) else None


def _is_ours(adata: Any) -> bool:
    from anndata import AnnData

    return isinstance(adata, AnnData) and LINK_KEY in adata.uns


def _element_kind(sdata: Any, name: str) -> str | None:
    if name in sdata.points:
        return "points"
    if name in sdata.labels:
        return "labels"
    if name in sdata.shapes:
        kinds = set(sdata.shapes[name].geometry.geom_type.unique())
        return "circles" if kinds <= {"Point"} else "polygons"
    if name in sdata.images:
        return "image"
    return None


def _fix_hint(layer: Any, sdata: Any, name: str, table: str) -> str:
    call = (f"napari_spatialdl.show(napari_spatialdl.io.spatialdata_to_anndata(viewer.layers[{layer.name!r}]"
            f".metadata['sdata'], table={table!r}, region={name!r}), viewer)")
    circles = [n for n in _regions(sdata, table) if n != name and n in sdata.shapes
               and _element_kind(sdata, n) == "circles"]
    also = f"; or add its circles element {circles[0]!r} with napari-spatialdata" if circles else ""
    return f" Show them at their centroids instead: in napari's console, {call}{also}."


def _regions(sdata: Any, table: str) -> list[str]:
    from ..io._spatialdata import _table_regions

    return _table_regions(sdata.tables[table]) if table in sdata.tables else []


def _problem(layer: Any, sdata: Any) -> str | None:
    """Why the napari-spatialdata ``layer`` cannot be a spots layer (None: it can)."""
    from napari.layers import Labels, Points, Shapes

    name = layer.metadata.get("name")
    if not isinstance(layer, Points | Shapes | Labels):
        return None  # images: not spots, nothing to say
    if not name or name not in sdata:
        return (f"Layer {layer.name!r} is linked to a SpatialData but to none of its elements (a layer drawn "
                "and linked by hand): save it as an element first (napari-spatialdata: Shift-E).")
    tables = [t for t in (layer.metadata.get("table_names") or []) if t in sdata.tables]
    if not tables:
        annotated = {t: _regions(sdata, t) for t in sdata.tables}
        others = "; ".join(f"table {t!r} annotates {_listing(r, 3)}" for t, r in annotated.items() if r)
        return (f"Layer {layer.name!r} (element {name!r}) has no table of counts annotating it, so there is "
                f"nothing to analyse. {others + ': add that element instead, or l' if others else 'L'}ink a "
                f"table to it (spatialdata.models.TableModel.parse(adata, region={name!r}, region_key=..., "
                "instance_key=...)) and open it again.")
    kind = _element_kind(sdata, name)
    if not isinstance(layer, Points):
        what = "polygons (a Shapes layer)" if isinstance(layer, Shapes) else "labels"
        return (f"Layer {layer.name!r} draws the {what} of element {name!r}; the panels work on spots and cells "
                f"drawn as points.{_fix_hint(layer, sdata, name, tables[0])}")
    if kind not in ("circles", "points"):
        return f"Layer {layer.name!r} shows element {name!r} ({kind}), which is not spots, bins or cells."
    indices = layer.metadata.get("indices")
    if indices is None or len(indices) != len(layer.data):
        return (f"Layer {layer.name!r} has {len(layer.data)} points but its metadata['indices'] names "
                f"{'none' if indices is None else len(indices)}: points were added or removed. Add element "
                f"{name!r} again with napari-spatialdata.")
    return None


def _order(adata: Any, indices: list[Any], instance_key: str, layer: Any, table: str) -> np.ndarray:
    """Rows of ``adata`` in the layer's point order (the instance id of each point in ``indices``)."""
    import pandas as pd

    ids = pd.Index(adata.obs[instance_key])
    wanted = pd.Index(indices)
    pos = ids.get_indexer(wanted) if ids.is_unique else np.full(len(wanted), -1)
    if (pos < 0).any() and ids.is_unique:
        alt = pd.Index(ids.astype(str)).get_indexer(pd.Index(wanted.astype(str)))
        pos = alt if (alt >= 0).sum() > (pos >= 0).sum() else pos
    missing = pos < 0
    if missing.any():
        raise SpatialDataError(
            f"{int(missing.sum())} of the {len(wanted)} points of layer {layer.name!r} have no row in table "
            f"{table!r} (instance ids e.g. {_listing(wanted[missing], 5)}), so they have no counts. Give every "
            "instance of the element a row of the table, or analyse the table's element alone with "
            "napari_spatialdl.io.spatialdata_to_anndata."
        )
    return pos


def _build(layer: Any, sdata: Any, *, images: list | None) -> Any:
    """Our AnnData of the layer's element and table, rows in the layer's point order."""
    md = layer.metadata
    name, table = str(md["name"]), str(md["table_names"][0])
    cs = md.get("_current_cs")
    adata = _to_anndata(sdata, table=table, region=name, coordinate_system=cs, images=images,
                        max_image_side=MAX_IMAGE_SIDE, library_id=None,
                        where=f"the SpatialData of layer {layer.name!r}")
    path = getattr(sdata, "path", None)
    if path is not None:
        from pathlib import Path

        resolved = str(Path(path).resolve())
        adata.uns[LINK_KEY].update(path=resolved, reader="read_zarr", source=resolved)
    pos = _order(adata, list(md["indices"]), str(adata.uns[LINK_KEY]["instance_key"]), layer, table)
    if not np.array_equal(pos, np.arange(adata.n_obs)):
        adata = adata[pos].copy()
    return adata


def _scalefactor(adata: Any, sdata: Any, name: str) -> float:
    """Layer data units (the element's own coordinates) per unit of ``obsm['spatial']``."""
    from spatialdata.transformations import get_transformation

    link = adata.uns[LINK_KEY]
    to_cs = _affine_xy(get_transformation(sdata[name], str(link["coordinate_system"])))
    to_frame = np.linalg.inv(np.asarray(link["frame_to_coordinate_system"], dtype=np.float64)) @ to_cs
    return 1.0 / float(np.sqrt(abs(np.linalg.det(to_frame[:2, :2]))))


def adopt(layer: Any) -> Any:
    """Make napari-spatialdata's Points ``layer`` a spots layer of napari-spatialdl; return our AnnData.

    Raises
    ------
    SpatialDataError
        When it cannot be one (no table annotates the element, points without a table row, ...):
        the message names the layer, the problem and what to do.
    """
    sdata = _spatialdata(layer)
    if sdata is None:
        raise SpatialDataError(f"Layer {layer.name!r} has no SpatialData in metadata['sdata'].")
    problem = _problem(layer, sdata)
    if problem:
        raise SpatialDataError(problem)
    # no images: napari-spatialdata shows them already; obsm['spatial'] is in the coordinate system
    adata = _build(layer, sdata, images=[])
    link = adata.uns[LINK_KEY]
    layer.metadata.update({
        META_ADATA: adata,
        META_OURS: adata,
        META_FLAG: True,
        "library_id": str(link["library_id"]),
        "image_key": None,
        "scalefactor": _scalefactor(adata, sdata, str(link["region"])),
        META_PINNED: list(layer.metadata.get(META_PINNED) or []),
    })
    layer.metadata.pop(META_PROBLEM, None)
    return adata


def _state(layer: Any, sdata: Any) -> tuple:
    md = layer.metadata
    return (id(sdata), md.get("name"), tuple(md.get("table_names") or ()), len(layer.data))


def ensure_spots_layer(layer: Any) -> bool:
    """Whether ``layer`` is a spots layer, with our AnnData in ``metadata['adata']`` (adopting
    napari-spatialdata's layers, putting ours back where its View widget replaced it)."""
    from napari.layers import Points

    if not isinstance(layer, Points):
        return False
    md = layer.metadata
    ours = md.get(META_OURS)
    if ours is not None:
        if md.get(META_ADATA) is not ours:
            md[META_ADATA] = ours  # napari-spatialdata's View widget put its joined table there
        return True
    sdata = _spatialdata(layer)
    if md.get(META_FLAG):
        adata = md.get(META_ADATA)
        if sdata is None or _is_ours(adata):
            md[META_OURS] = adata
            link_layer(layer)
            return True
        # a layer of our reader whose AnnData napari-spatialdata replaced before a panel saw it:
        # built again as the reader built it (no result is lost: none was computed on it yet)
        try:
            rebuilt = _build(layer, sdata, images=None)
        except (SpatialDataError, KeyError, IndexError) as err:
            md[META_PROBLEM] = (_state(layer, sdata), f"Layer {layer.name!r}: {err}")
            return False
        md[META_ADATA] = md[META_OURS] = rebuilt
        return True
    if sdata is None:
        return False
    cached = md.get(META_PROBLEM)
    if cached is not None and cached[0] == _state(layer, sdata):
        return False
    try:
        adopt(layer)
    except SpatialDataError as err:
        md[META_PROBLEM] = (_state(layer, sdata), str(err))
        return False
    return True


def spots_adata(layer: Any) -> Any | None:
    """Our AnnData of a spots ``layer`` (None when it is not one), put back first where
    napari-spatialdata's View widget replaced ``metadata['adata']`` with its table."""
    if layer is None:
        return None
    ensure_spots_layer(layer)
    return layer.metadata.get(META_ADATA)


def not_offered(viewer: Any) -> list[str]:
    """Why each napari-spatialdata layer of ``viewer`` with spots-like content is not a spots layer."""
    out = []
    for layer in viewer.layers:
        sdata = _spatialdata(layer)
        if sdata is None or ensure_spots_layer(layer):
            continue
        cached = layer.metadata.get(META_PROBLEM)
        reason = cached[1] if cached is not None else _problem(layer, sdata)
        if reason:
            out.append(reason)
    return out


def napari_spatialdata_links(adata: Any, sdata: Any | None = None, *, with_sdata: bool = True) -> dict[str, Any]:
    """napari-spatialdata's metadata keys for a spots layer showing ``adata`` (rows = points).

    ``indices`` (the instance id of each row), ``instance_key``, ``region_key``, ``_n_indices``,
    ``_columns_df``: what its View widget needs to colour the layer from ``adata`` itself. With
    ``with_sdata`` and a SpatialData (``sdata``, else the one the reader kept:
    :func:`~napari_spatialdl.io._spatialdata.spatialdata_of`) also ``sdata``, ``name``,
    ``table_names``, ``_current_cs``, ``_active_in_cs``, as its own layers have them: to be given
    when the layer is made, so that napari-spatialdata registers the layer as it is added.
    Empty when ``adata`` was not read from a SpatialData.
    """
    link = adata.uns.get(LINK_KEY) if hasattr(adata, "uns") else None
    if not isinstance(link, dict) or "instance_key" not in link or "spatialdata_attrs" not in adata.uns:
        return {}
    instance_key = str(link["instance_key"])
    if instance_key not in adata.obs.columns:
        return {}
    out: dict[str, Any] = {
        "region_key": str(link["region_key"]),
        "instance_key": instance_key,
        "_n_indices": adata.n_obs,
        "indices": adata.obs[instance_key].tolist(),
        "_columns_df": None,
    }
    sdata = sdata if sdata is not None else spatialdata_of(adata) if with_sdata else None
    region, table = str(link["region"]), str(link["table"])
    if with_sdata and sdata is not None and region in sdata and table in sdata.tables:
        cs = str(link["coordinate_system"])
        out.update(sdata=sdata, name=region, table_names=[table], _active_in_cs={cs}, _current_cs=cs)
    return out


def link_layer(layer: Any) -> None:
    """Give our spots ``layer``, already in a viewer, the links napari-spatialdata's View widget needs
    to colour it from our AnnData (where missing).

    Not ``sdata``/``name``: napari-spatialdata registers the layers that carry them when they are
    added, and fails on removing a layer that gained them later. Layers made with them
    (``napari_spatialdata_links(adata)`` in their metadata, as the napari-spatialdl reader does)
    are left as they are.
    """
    md = layer.metadata
    adata = md.get(META_ADATA)
    if "indices" in md or adata is None or len(layer.data) != adata.n_obs:
        return
    for key, value in napari_spatialdata_links(adata, with_sdata=False).items():
        md.setdefault(key, value)


__all__ = ["META_OURS", "adopt", "ensure_spots_layer", "link_layer", "napari_spatialdata_links", "not_offered",
           "spots_adata"]
