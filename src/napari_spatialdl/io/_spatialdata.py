"""SpatialData (``.zarr``), Visium HD and Xenium: readers to one AnnData, and the write-back.

The reading goes through the scverse libraries (``spatialdata.read_zarr``,
``spatialdata_io.visium_hd``, ``spatialdata_io.xenium``); this module only turns the chosen table
and its spatial element into the AnnData layout every task and the display code use
(Space Ranger/squidpy, see :mod:`napari_spatialdl.io._spatial`):

``X``
    the table's ``X`` as stored (raw counts; CSR stays CSR, CSC becomes CSR, nothing is densified).
``obsm['spatial']``
    the centroid (x, y) of each observation's geometry in the element's coordinate system, in the
    *frame* of the images: the coordinate system itself when every image is a plain ``Scale`` of it
    (Visium HD: full-resolution pixels; Xenium: morphology pixels), otherwise the pixels of the
    finest image. Circles give their centre, squares (Visium HD bins) their centre, polygons and
    labels their centroid, points their position.
``obs['spatialdl_size_fullres']``
    the true size of each observation in the same units: diameter of a circle, side of a square,
    diameter of the circle of equal area for polygons and labels; NaN for points.
``uns['spatial'][library_id]``
    ``images`` (``hires``/``lowres`` or the image element's name: numpy arrays of at most
    ``max_image_side`` pixels a side, RGB or 8-bit grey) and ``scalefactors``
    (``tissue_<key>_scalef`` per image, ``spot_diameter_fullres`` = median size), as Space Ranger
    writes them; so :func:`~napari_spatialdl.io.spots_px`, :func:`~napari_spatialdl.io.get_image`,
    :func:`~napari_spatialdl.io.spot_diameter_px` and :func:`napari_spatialdl.layers.spatial_layers`
    work unchanged.
``uns['spatialdl_spatialdata']``
    the link back (see :data:`LINK_KEY`), used by :func:`write_spatialdata` and by the napari layers.

:func:`write_spatialdata` puts the results (``obs``/``obsm``/``layers``/``uns``/``var``/``varm``
keys starting with ``spatialdl`` and ``obsm['X_spatialdl...']``) into the SpatialData's table and
writes the ``.zarr``: in place (only the table's sub-elements that hold results are rewritten,
with anndata's ``write_elem``; images and the other elements are not touched) or as a new
``.zarr`` (a copy of the whole SpatialData with the updated table).
"""

from __future__ import annotations

import copy
import math
import re
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._spatial import SpatialDataError

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

#: ``adata.uns`` key of the link to the SpatialData: ``path`` (the ``.zarr``, "" when read from a
#: Visium HD / Xenium folder), ``table``, ``region``, ``region_key``, ``instance_key``,
#: ``coordinate_system``, ``element_type`` (shapes/labels/points), ``shape``
#: (circle/square/polygon/label/point), ``images`` (uns image key -> image element),
#: ``frame_to_coordinate_system`` (3x3 affine, x/y, from ``obsm['spatial']`` to the coordinate
#: system), ``reader`` (read_zarr/visium_hd/xenium), ``source`` (the folder read) and
#: ``reader_kwargs``.
LINK_KEY = "spatialdl_spatialdata"
#: ``adata.obs`` column of the true size of each observation, in ``obsm['spatial']`` units.
SIZE_KEY = "spatialdl_size_fullres"
#: keys that the reader writes (not results: never written back into the table)
READER_KEYS = frozenset({LINK_KEY, SIZE_KEY})
RESULT_PREFIX = "spatialdl"
LATENT_PREFIX = "X_spatialdl"
#: longest side (pixels) of an image put into ``uns['spatial']``
MAX_IMAGE_SIDE = 6000
VISIUM_HD_SEGMENTATIONS = {"cells": "cell_segmentations", "nuclei": "nucleus_segmentations"}
_SPATIAL_ELEMENT_TYPES = ("shapes", "labels", "points")
_INSTALL_HINT = "pip install 'spatialdata>=0.7.3' 'spatialdata-io>=0.7.1' (both are napari-spatialdl dependencies)"


#: the SpatialData each AnnData of the readers was made from, by ``id(adata)`` (dropped with the
#: AnnData): napari layers showing the AnnData carry it in ``metadata['sdata']``, the link
#: napari-spatialdata's widgets follow (an AnnData cannot hold it: it would not save to .h5ad)
_SOURCES: dict[int, tuple[Any, Any]] = {}


def _keep_source(adata: AnnData, sdata: Any) -> None:
    key = id(adata)
    _SOURCES[key] = (weakref.ref(adata), sdata)
    weakref.finalize(adata, _SOURCES.pop, key, None)


def spatialdata_of(adata: Any) -> Any | None:
    """The SpatialData that :func:`read_spatialdata`, :func:`read_visium_hd`, :func:`read_xenium`
    or :func:`spatialdata_to_anndata` made ``adata`` from, while both are alive; else None.

    A copy of the AnnData (``adata.copy()``, a subset, one read from .h5ad) has none.
    """
    kept = _SOURCES.get(id(adata))
    if kept is None or kept[0]() is not adata:
        return None
    return kept[1]


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def _import_spatialdata():
    try:
        import spatialdata
    except ImportError as err:  # pragma: no cover - spatialdata is a dependency
        raise ImportError(f"Reading or writing SpatialData needs the spatialdata package: {_INSTALL_HINT}.") from err
    return spatialdata


def _import_spatialdata_io():
    try:
        import spatialdata_io
    except ImportError as err:  # pragma: no cover - spatialdata-io is a dependency
        raise ImportError(f"Reading Visium HD / Xenium folders needs the spatialdata-io package: {_INSTALL_HINT}.") from err
    return spatialdata_io


def _listing(names: Sequence[Any], n: int = 10) -> str:
    names = [str(x) for x in names]
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _affine_xy(transformation: Any) -> np.ndarray:
    """3x3 affine (x, y) of a spatialdata transformation."""
    return np.asarray(
        transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64
    )


def _pure_scale(matrix: np.ndarray) -> float | None:
    """The factor when ``matrix`` is an isotropic scale without rotation or translation, else None."""
    s = matrix[0, 0]
    if not np.isfinite(matrix).all() or s <= 0:
        return None
    off = max(abs(matrix[0, 1]), abs(matrix[1, 0]))
    if off > 1e-9 * s or abs(matrix[1, 1] - s) > 1e-6 * s or np.abs(matrix[:2, 2]).max() > 1e-3:
        return None
    return float(s)


def _element_type(sdata: Any, name: str) -> str | None:
    for etype in ("images", *_SPATIAL_ELEMENT_TYPES):
        if name in getattr(sdata, etype):
            return etype
    return None


def _coordinate_systems(element: Any) -> list[str]:
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True))


def _table_regions(table: AnnData) -> list[str]:
    attrs = table.uns.get("spatialdata_attrs") or {}
    region = attrs.get("region")
    if region is None:
        return []
    if isinstance(region, str):
        return [region]
    return [str(r) for r in np.asarray(region).ravel()]


def _sanitize(name: str) -> str:
    out = re.sub(r"[^0-9A-Za-z_.-]+", "_", name).strip("_.") or "dataset"
    return out if out[0].isalnum() else f"d{out}"


# ---------------------------------------------------------------------------------------------
# choosing the table, the region and the coordinate system
# ---------------------------------------------------------------------------------------------


def _describe_tables(sdata: Any) -> str:
    parts = []
    for name, t in sdata.tables.items():
        regions = _table_regions(t)
        parts.append(f"{name!r} ({t.n_obs} rows, annotates {_listing(regions, 3) if regions else 'nothing'})")
    return "; ".join(parts) or "none"


def _annotating_tables(sdata: Any) -> list[str]:
    found = []
    for name, t in sdata.tables.items():
        if any(_element_type(sdata, r) in _SPATIAL_ELEMENT_TYPES for r in _table_regions(t)):
            found.append(str(name))
    return found


def _choose_table(sdata: Any, table: str | None, where: str) -> str:
    names = [str(n) for n in sdata.tables.keys()]
    if not names:
        raise SpatialDataError(
            f"{where} has no table (no AnnData of counts): nothing to analyse. Its elements: "
            f"{_listing(list(sdata.images) + list(sdata.shapes) + list(sdata.labels) + list(sdata.points))}."
        )
    if table is not None:
        if table not in sdata.tables:
            raise SpatialDataError(f"table={table!r} is not a table of {where}; its tables: {_describe_tables(sdata)}.")
        return table
    candidates = _annotating_tables(sdata)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise SpatialDataError(
            f"No table of {where} annotates a shapes, labels or points element (spots, bins or cells), so "
            f"there are no positions for its rows. Tables: {_describe_tables(sdata)}. Link the table to its "
            "element (sdata.set_table_annotates_spatialelement(...)) and write the .zarr again."
        )
    raise SpatialDataError(
        f"{where} holds {len(candidates)} tables of spots/bins/cells: {_describe_tables(sdata)}. Pass "
        f"table= to choose one, e.g. table={candidates[0]!r}."
    )


def _choose_region(sdata: Any, table_name: str, region: str | None) -> str:
    table = sdata.tables[table_name]
    regions = [r for r in _table_regions(table) if _element_type(sdata, r) in _SPATIAL_ELEMENT_TYPES]
    if region is not None:
        if region not in regions:
            raise SpatialDataError(
                f"region={region!r} is not an element annotated by table {table_name!r}; it annotates "
                f"{_listing(_table_regions(table))} (present as shapes/labels/points: {_listing(regions)})."
            )
        return region
    if not regions:
        raise SpatialDataError(
            f"Table {table_name!r} annotates {_listing(_table_regions(table))}, but none of these is a shapes, "
            "labels or points element of the SpatialData, so its rows have no positions."
        )
    if len(regions) > 1:
        raise SpatialDataError(
            f"Table {table_name!r} annotates {len(regions)} elements ({_listing(regions)}); pass region= to "
            f"choose the one to analyse, e.g. region={regions[0]!r}."
        )
    return regions[0]


def _choose_coordinate_system(sdata: Any, element: Any, region: str, coordinate_system: str | None) -> str:
    systems = _coordinate_systems(element)
    if coordinate_system is not None:
        if coordinate_system not in systems:
            raise SpatialDataError(
                f"coordinate_system={coordinate_system!r} is not one of element {region!r}'s coordinate "
                f"systems: {_listing(systems)}."
            )
        return coordinate_system

    def n_images(cs: str) -> int:
        return sum(cs in _coordinate_systems(img) for img in sdata.images.values())

    # most images first; then "global", then by name
    return sorted(systems, key=lambda cs: (-n_images(cs), cs != "global", cs))[0]


# ---------------------------------------------------------------------------------------------
# geometry: centroids and sizes in the element's own coordinates
# ---------------------------------------------------------------------------------------------


def _geometry(element: Any, etype: str, name: str) -> tuple[pd.Index, np.ndarray, np.ndarray, str]:
    """Instance ids, centroids (n, 2) x/y and sizes (n,) in the element's intrinsic coordinates."""
    import pandas as pd

    if etype == "shapes":
        geoms = element.geometry
        kinds = set(geoms.geom_type.unique())
        if kinds <= {"Point"}:
            xy = geoms.get_coordinates().to_numpy(dtype=np.float64)
            if "radius" in element.columns:
                sizes = 2.0 * element["radius"].to_numpy(dtype=np.float64)
            else:
                sizes = np.full(len(xy), np.nan)
            return element.index, xy, sizes, "circle"
        if kinds <= {"Polygon", "MultiPolygon"}:
            xy = geoms.centroid.get_coordinates().to_numpy(dtype=np.float64)
            area = geoms.area.to_numpy(dtype=np.float64)
            bounds = geoms.bounds.to_numpy(dtype=np.float64)
            width, height = bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]
            square = (
                len(area) > 0
                and np.allclose(width, height, rtol=1e-6, atol=0)
                and np.allclose(area, width * height, rtol=1e-6, atol=0)
            )
            if square:
                return element.index, xy, np.sqrt(area), "square"
            return element.index, xy, 2.0 * np.sqrt(area / np.pi), "polygon"
        raise SpatialDataError(
            f"Shapes element {name!r} holds {_listing(sorted(kinds))} geometries; only circles (points with a "
            "radius) and polygons can be spots, bins or cells."
        )
    if etype == "labels":
        from spatialdata import get_pyramid_levels
        from xarray import DataTree

        data = get_pyramid_levels(element, n=0) if isinstance(element, DataTree) else element
        if set(data.dims) != {"y", "x"}:
            raise SpatialDataError(f"Labels element {name!r} has dimensions {data.dims}; only 2D (y, x) labels are read.")
        data = data.transpose("y", "x")
        arr = np.asarray(data.data)
        ids, inverse = np.unique(arr, return_inverse=True)
        inverse = inverse.ravel()
        counts = np.bincount(inverse).astype(np.float64)
        yy, xx = np.meshgrid(data["y"].to_numpy(), data["x"].to_numpy(), indexing="ij")
        x = np.bincount(inverse, weights=xx.ravel()) / counts
        y = np.bincount(inverse, weights=yy.ravel()) / counts
        keep = ids != 0  # background
        sizes = 2.0 * np.sqrt(counts[keep] / np.pi)
        return pd.Index(ids[keep]), np.column_stack([x[keep], y[keep]]), sizes, "label"
    if etype == "points":
        df = element[["x", "y"]].compute()
        return df.index, df.to_numpy(dtype=np.float64), np.full(len(df), np.nan), "point"
    raise SpatialDataError(f"Element {name!r} is of type {etype}; expected shapes, labels or points.")


def _match_instances(ids: pd.Index, instances: pd.Series, table_name: str, region: str) -> np.ndarray:
    import pandas as pd

    if not ids.is_unique:
        dup = ids[ids.duplicated()].unique()
        raise SpatialDataError(
            f"Element {region!r} has repeated instance ids ({_listing(dup, 5)}), so table {table_name!r} "
            "cannot be matched to its geometries. Make the element's index unique and write it again."
        )
    pos = ids.get_indexer(pd.Index(instances))
    if (pos < 0).any():
        alt = pd.Index(ids.astype(str)).get_indexer(pd.Index(instances.astype(str)))
        if (alt >= 0).sum() > (pos >= 0).sum():
            pos = alt
    missing = pos < 0
    if missing.any():
        raise SpatialDataError(
            f"{int(missing.sum())} of {len(pos)} rows of table {table_name!r} have no geometry in element "
            f"{region!r} (instance ids e.g. {_listing(instances[missing].unique(), 5)}; the element has "
            f"ids like {_listing(ids[:5], 5)}). The table's instance_key column does not match the element's index."
        )
    return pos


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------


def _display_array(arr: np.ndarray, channel_names: Sequence[Any]) -> tuple[np.ndarray, str]:
    """(c, y, x) array -> (y, x, 3|4) RGB or (y, x) 8-bit grey, and what was done."""
    c = arr.shape[0]
    named = [str(n) for n in channel_names if not isinstance(n, (int, np.integer))]
    rgb = c in (3, 4) and all(n.lower() in ("r", "g", "b", "a") for n in named)
    if rgb:
        out = np.moveaxis(arr, 0, -1)
        if out.dtype == np.uint8 or (np.issubdtype(out.dtype, np.floating) and np.nanmax(out) <= 1.0):
            return np.ascontiguousarray(out), "RGB"
        hi = float(np.nanmax(out)) or 1.0
        return (np.clip(out / hi, 0, 1) * 255).astype(np.uint8), f"RGB rescaled from {arr.dtype} to 8 bits"
    grey = arr[0]
    note = "grey" if c == 1 else f"channel {channel_names[0]!r} of {c}"
    if grey.dtype == np.uint8:
        return np.ascontiguousarray(grey), note
    finite = grey[np.isfinite(grey)] if np.issubdtype(grey.dtype, np.floating) else grey.ravel()
    if finite.size == 0:
        return np.zeros(grey.shape, np.uint8), note
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    scaled = (grey.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0)
    return (np.clip(np.nan_to_num(scaled), 0, 1) * 255).astype(np.uint8), f"{note}, contrast-stretched to 8 bits"


def _image_levels(element: Any) -> list[Any]:
    from spatialdata import get_pyramid_levels
    from xarray import DataTree

    return list(get_pyramid_levels(element)) if isinstance(element, DataTree) else [element]


def _load_image(element: Any, max_side: int) -> tuple[np.ndarray, float, str]:
    """The image as a display array of at most ``max_side`` pixels a side, its pixels per full-resolution pixel."""
    levels = _image_levels(element)
    h0, w0 = levels[0].sizes["y"], levels[0].sizes["x"]
    level = next((lv for lv in levels if max(lv.sizes["y"], lv.sizes["x"]) <= max_side), levels[-1])
    h, w = level.sizes["y"], level.sizes["x"]
    step = max(1, math.ceil(max(h, w) / max_side))
    data = level.transpose("c", "y", "x")
    arr = np.asarray(data.data[:, ::step, ::step])
    factor = 0.5 * (w / w0 + h / h0) / step
    img, note = _display_array(arr, list(data["c"].to_numpy()))
    return img, factor, note


def _images(
    sdata: Any, cs: str, images: str | Sequence[str] | None, max_side: int
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float], dict[str, str]]:
    """Frame (from the coordinate system), loaded images, their scale factors and element names."""
    from spatialdata.transformations import get_transformation

    if isinstance(images, str):
        images = [images]
    if images is not None:
        missing = [n for n in images if n not in sdata.images]
        if missing:
            raise SpatialDataError(f"images={missing} not in the SpatialData; its images: {_listing(list(sdata.images))}.")
        wrong = [n for n in images if cs not in _coordinate_systems(sdata.images[n])]
        if wrong:
            raise SpatialDataError(
                f"Images {wrong} have no transformation to coordinate system {cs!r}, where the spots are; "
                f"pass images= among {_listing([n for n in sdata.images if cs in _coordinate_systems(sdata.images[n])])}."
            )
        names = list(images)
    else:
        names = [n for n in sdata.images if cs in _coordinate_systems(sdata.images[n])]
    affines = {n: _affine_xy(get_transformation(sdata.images[n], cs)) for n in names}
    if all(_pure_scale(a) is not None for a in affines.values()):
        to_frame = np.eye(3)
    else:  # the frame is the pixel grid of the finest image
        ref = min(names, key=lambda n: abs(np.linalg.det(affines[n][:2, :2])))
        to_frame = np.linalg.inv(affines[ref])
    scales: dict[str, float] = {}
    for n in names:
        s = _pure_scale(to_frame @ affines[n])
        if s is None:
            warnings.warn(
                f"Image {n!r} is rotated, sheared or shifted against the other images of coordinate system "
                f"{cs!r}; it is left out of uns['spatial'] (it still opens with napari-spatialdata).",
                UserWarning,
                stacklevel=4,
            )
            continue
        scales[n] = s
    if not scales:
        return to_frame, {}, {}, {}

    def largest_side(n: str) -> int:
        lv = _image_levels(sdata.images[n])[0]
        return max(lv.sizes["y"], lv.sizes["x"])

    to_load = [n for n in scales if largest_side(n) <= max_side]
    if images is not None:
        to_load = list(scales)
    elif not to_load:  # only large images: the one with the least to read, downsampled
        to_load = [min(scales, key=largest_side)]
    arrays: dict[str, np.ndarray] = {}
    scalefs: dict[str, float] = {}
    sources: dict[str, str] = {}
    for n in sorted(to_load, key=lambda n: scales[n]):
        key = "hires" if "hires" in n.lower() else "lowres" if "lowres" in n.lower() else n
        if key in arrays:
            key = n
        img, factor, _ = _load_image(sdata.images[n], max_side)
        arrays[key] = img
        scalefs[key] = factor / scales[n]
        sources[key] = n
    return to_frame, arrays, scalefs, sources


# ---------------------------------------------------------------------------------------------
# SpatialData -> AnnData
# ---------------------------------------------------------------------------------------------


def _to_anndata(
    sdata: Any,
    *,
    table: str | None,
    region: str | None,
    coordinate_system: str | None,
    images: str | Sequence[str] | None,
    max_image_side: int,
    library_id: str | None,
    where: str,
) -> AnnData:
    import pandas as pd
    import scipy.sparse as sp
    from anndata import AnnData
    from spatialdata.transformations import get_transformation

    table_name = _choose_table(sdata, table, where)
    region = _choose_region(sdata, table_name, region)
    tab = sdata.tables[table_name]
    attrs = tab.uns["spatialdata_attrs"]
    region_key, instance_key = str(attrs["region_key"]), str(attrs["instance_key"])
    for key, what in ((region_key, "region_key"), (instance_key, "instance_key")):
        if key not in tab.obs.columns:
            raise SpatialDataError(
                f"Table {table_name!r} names {what}={key!r}, but its obs has no such column "
                f"(columns: {_listing(list(tab.obs.columns))}). Rewrite it with spatialdata.models.TableModel.parse."
            )
    etype = _element_type(sdata, region)
    element = getattr(sdata, etype)[region]
    cs = _choose_coordinate_system(sdata, element, region, coordinate_system)

    mask = (tab.obs[region_key].astype(str) == region).to_numpy()
    if not mask.any():
        raise SpatialDataError(f"No row of table {table_name!r} has {region_key}={region!r}.")
    part = tab if mask.all() else tab[mask]
    obs_names = pd.Index(part.obs_names.astype(str))
    if not obs_names.is_unique:
        raise SpatialDataError(
            f"Table {table_name!r} has repeated row names ({_listing(obs_names[obs_names.duplicated()].unique(), 5)}); "
            "results could not be written back to the right rows. Make them unique "
            f"(sdata[{table_name!r}].obs_names_make_unique()) and write the .zarr again."
        )

    ids, xy, sizes, shape = _geometry(element, etype, region)
    pos = _match_instances(ids, part.obs[instance_key], table_name, region)
    to_frame, arrays, scalefs, sources = _images(sdata, cs, images, max_image_side)
    to_frame_el = to_frame @ _affine_xy(get_transformation(element, cs))
    xy = xy[pos] @ to_frame_el[:2, :2].T + to_frame_el[:2, 2]
    sizes = sizes[pos] * math.sqrt(abs(np.linalg.det(to_frame_el[:2, :2])))

    X = part.X
    if sp.issparse(X) and X.format != "csr":
        X = X.tocsr()
    adata = AnnData(
        X=X,
        obs=part.obs.copy(),
        var=part.var.copy(),
        obsm={k: v for k, v in part.obsm.items() if k != "spatial"},
        varm=dict(part.varm.items()),
        layers=dict(part.layers.items()),
        uns=dict(part.uns.items()),
    )
    adata.obs_names = obs_names
    adata.obsm["spatial"] = xy
    adata.obs[SIZE_KEY] = sizes

    lib = library_id or (cs if cs != "global" else region)
    scalefactors: dict[str, float] = {f"tissue_{k}_scalef": float(v) for k, v in scalefs.items()}
    finite = sizes[np.isfinite(sizes)]
    if finite.size:
        scalefactors["spot_diameter_fullres"] = float(np.median(finite))
    adata.uns["spatial"] = {
        lib: {
            "images": arrays,
            "scalefactors": scalefactors,
            "metadata": {"source": "spatialdata", "coordinate_system": cs, "region": region},
        }
    }
    adata.uns[LINK_KEY] = {
        "path": "",
        "table": table_name,
        "region": region,
        "region_key": region_key,
        "instance_key": instance_key,
        "coordinate_system": cs,
        "element_type": etype,
        "shape": shape,
        "library_id": lib,
        "images": sources,
        "frame_to_coordinate_system": np.linalg.inv(to_frame),
        "reader": "",
        "source": "",
        "reader_kwargs": {},
    }
    return adata


def spatialdata_to_anndata(
    sdata: Any,
    table: str | None = None,
    *,
    region: str | None = None,
    coordinate_system: str | None = None,
    images: str | Sequence[str] | None = None,
    max_image_side: int = MAX_IMAGE_SIDE,
    library_id: str | None = None,
) -> AnnData:
    """The table of an in-memory SpatialData as an AnnData every napari-spatialdl task accepts.

    Parameters are those of :func:`read_spatialdata` (without ``path``). The link in
    ``uns['spatialdl_spatialdata']`` has ``path=""`` (``sdata.path`` when the object is backed by a
    ``.zarr``): :func:`write_spatialdata` then needs ``path=``.
    """
    adata = _to_anndata(
        sdata, table=table, region=region, coordinate_system=coordinate_system, images=images,
        max_image_side=max_image_side, library_id=library_id, where="the SpatialData",
    )
    if getattr(sdata, "path", None) is not None:
        adata.uns[LINK_KEY].update(path=str(Path(sdata.path).resolve()), reader="read_zarr",
                                   source=str(Path(sdata.path).resolve()))
    _keep_source(adata, sdata)
    return adata


def _read_zarr(path: Path) -> Any:
    sd = _import_spatialdata()
    if not path.exists():
        raise SpatialDataError(f"{path} does not exist.")
    if not is_spatialdata_zarr(path):
        raise SpatialDataError(
            f"{path} is not a SpatialData .zarr store (no zarr group with images/labels/points/shapes/tables). "
            "For a Visium HD output folder use read_visium_hd, for a Xenium folder read_xenium, for Space Ranger "
            "(Visium) read_visium."
        )
    return sd.read_zarr(path)


def read_spatialdata_objects(
    path: str | Path,
    table: str | None = None,
    **kwargs: Any,
) -> tuple[Any, AnnData]:
    """:func:`read_spatialdata`, also returning the (lazily loaded) SpatialData object.

    Used by the napari reader, whose layers keep the SpatialData in ``metadata['sdata']``.
    """
    path = Path(path).expanduser().resolve()
    sdata = _read_zarr(path)
    adata = _to_anndata(sdata, table=table, where=str(path), **_conversion_kwargs(kwargs))
    adata.uns[LINK_KEY].update(path=str(path), reader="read_zarr", source=str(path))
    _keep_source(adata, sdata)
    return sdata, adata


def _conversion_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"region": None, "coordinate_system": None, "images": None, "max_image_side": MAX_IMAGE_SIDE,
               "library_id": None}
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {**allowed, **kwargs}


def read_spatialdata(
    path: str | Path,
    table: str | None = None,
    *,
    region: str | None = None,
    coordinate_system: str | None = None,
    images: str | Sequence[str] | None = None,
    max_image_side: int = MAX_IMAGE_SIDE,
    library_id: str | None = None,
) -> AnnData:
    """Read a SpatialData ``.zarr`` (with ``spatialdata.read_zarr``) as an AnnData for every task.

    Parameters
    ----------
    path
        The ``.zarr`` store.
    table
        The table to analyse; default: the only table annotating a shapes, labels or points
        element (spots, bins, cells). When there are several, the error lists them.
    region
        The annotated element, when the table annotates several.
    coordinate_system
        Coordinate system to place spots and images in; default: the element's one holding the
        most images (``"global"`` first on ties).
    images
        Image element(s) to load into ``uns['spatial']``; default: every image of the coordinate
        system that is at most ``max_image_side`` a side (hires, lowres), or else the smallest one,
        downsampled (a coarser pyramid level when there is one).
    max_image_side
        Longest side, in pixels, of an image put into ``uns['spatial']``.
    library_id
        Key under ``uns['spatial']``; default: the coordinate system's name (the region's name
        when it is ``"global"``).

    Returns
    -------
    AnnData
        ``X`` the table's counts as stored (CSR kept, never densified); ``obs``/``var``/``layers``
        of the table; ``obsm['spatial']`` the centroids, ``obs['spatialdl_size_fullres']`` the true
        sizes, ``uns['spatial']`` the images and scale factors (see the module docstring), and
        ``uns['spatialdl_spatialdata']`` the link used by :func:`write_spatialdata`.

    Raises
    ------
    SpatialDataError
        Not a SpatialData store; no table, or an ambiguous one (the message lists them and names
        ``table=``); rows without geometry; an unknown region, coordinate system or image.
    """
    return read_spatialdata_objects(
        path, table, region=region, coordinate_system=coordinate_system, images=images,
        max_image_side=max_image_side, library_id=library_id,
    )[1]


def is_spatialdata_zarr(path: str | Path) -> bool:
    """Whether ``path`` looks like a SpatialData ``.zarr`` store (cheap: reads only its root metadata)."""
    import json

    p = Path(path)
    if not p.is_dir():
        return False
    for meta in ("zarr.json", ".zattrs"):
        f = p / meta
        if f.is_file():
            try:
                doc = json.loads(f.read_text()) if f.stat().st_size < (64 << 20) else {}
            except (OSError, ValueError):
                doc = {}
            attrs = doc.get("attributes", doc) if meta == "zarr.json" else doc
            if isinstance(attrs, dict) and "spatialdata_attrs" in attrs:
                return True
    if not ((p / "zarr.json").is_file() or (p / ".zgroup").is_file()):
        return False
    return any((p / sub).is_dir() for sub in ("images", "labels", "points", "shapes", "tables"))


# ---------------------------------------------------------------------------------------------
# Visium HD and Xenium folders (through spatialdata-io)
# ---------------------------------------------------------------------------------------------


def find_visium_hd_root(path: str | Path) -> Path | None:
    """The Space Ranger HD ``outs`` folder (``path`` or ``path/outs``) holding ``*feature_slice.h5``, or None."""
    path = Path(path)
    for root in (path, path / "outs"):
        if root.is_dir() and any(root.glob("*feature_slice.h5")) and (
            (root / "binned_outputs").is_dir() or (root / "segmented_outputs").is_dir()
        ):
            return root
    return None


def visium_hd_bin_sizes(root: str | Path) -> list[int | str]:
    """Bin sizes (µm) of a Space Ranger HD ``outs`` folder, plus ``"cells"``/``"nuclei"`` when segmented."""
    root = Path(root)
    sizes: list[int | str] = []
    binned = root / "binned_outputs"
    if binned.is_dir():
        for d in sorted(binned.iterdir()):
            m = re.fullmatch(r"square_(\d{3})um", d.name)
            if m and d.is_dir():
                sizes.append(int(m.group(1)))
    seg = root / "segmented_outputs"
    if (seg / "filtered_feature_cell_matrix.h5").is_file() and (seg / "cell_segmentations.geojson").is_file():
        sizes.append("cells")
        if (seg / "nucleus_segmentations.geojson").is_file() and (binned / "square_002um").is_dir():
            sizes.append("nuclei")
    return sizes


def _visium_hd_dataset_id(root: Path) -> str:
    prefixed = [f.name[: -len("_feature_slice.h5")] for f in root.glob("*_feature_slice.h5")]
    if len(prefixed) == 1 and not (root / "feature_slice.h5").exists():
        return prefixed[0]
    return _sanitize((root.parent if root.name == "outs" else root).name)


def read_visium_hd(
    path: str | Path,
    bin_size: int | str = 8,
    *,
    dataset_id: str | None = None,
    filtered_counts: bool = True,
    images: str | Sequence[str] | None = None,
    max_image_side: int = MAX_IMAGE_SIDE,
) -> AnnData:
    """Read a Space Ranger HD (Visium HD) output folder with ``spatialdata_io.visium_hd``.

    Parameters
    ----------
    path
        The ``outs`` folder (or the run folder holding it): ``feature_slice.h5``,
        ``binned_outputs/square_<NNN>um/`` and/or ``segmented_outputs/``, ``spatial/``.
    bin_size
        2, 8 or 16 (µm; any size under ``binned_outputs``), ``"cells"`` for the segmented cells
        (``segmented_outputs``) or ``"nuclei"`` for the nucleus segmentation.
    dataset_id
        Prefix of the element names and the coordinate system; default: the prefix of
        ``<id>_feature_slice.h5``, else the run folder's name.
    filtered_counts
        Read ``filtered_feature_bc_matrix.h5`` (else ``raw_feature_bc_matrix.h5``).
    images, max_image_side
        As :func:`read_spatialdata`.

    Returns
    -------
    AnnData
        As :func:`read_spatialdata`: bins as squares (``obs['spatialdl_size_fullres']`` = the bin's
        side in full-resolution pixels), ``obsm['spatial']`` bin centres in full-resolution pixels,
        ``uns['spatial'][dataset_id]`` with the hires/lowres images. The link records the folder
        (``reader='visium_hd'``): :func:`write_spatialdata` needs ``path=`` for the new ``.zarr``.
    """
    return read_visium_hd_objects(
        path, bin_size, dataset_id=dataset_id, filtered_counts=filtered_counts, images=images,
        max_image_side=max_image_side,
    )[1]


def read_visium_hd_objects(
    path: str | Path,
    bin_size: int | str = 8,
    *,
    dataset_id: str | None = None,
    filtered_counts: bool = True,
    images: str | Sequence[str] | None = None,
    max_image_side: int = MAX_IMAGE_SIDE,
) -> tuple[Any, AnnData]:
    """:func:`read_visium_hd`, also returning the SpatialData that spatialdata-io made."""
    sdio = _import_spatialdata_io()
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise SpatialDataError(f"{path} does not exist.")
    root = find_visium_hd_root(path)
    if root is None:
        raise SpatialDataError(
            f"{path} is not a Space Ranger HD output folder: it needs feature_slice.h5 and binned_outputs/ "
            "(or segmented_outputs/), in the folder or in its outs/. For a Visium (55 µm spots) folder use "
            "read_visium, for a .zarr read_spatialdata."
        )
    available = visium_hd_bin_sizes(root)
    if bin_size not in available:
        raise SpatialDataError(
            f"bin_size={bin_size!r} is not in {root}: available {_listing(available)} "
            "(µm bins under binned_outputs/, 'cells'/'nuclei' from segmented_outputs/)."
        )
    dataset_id = dataset_id or _visium_hd_dataset_id(root)
    kwargs: dict[str, Any] = {"dataset_id": dataset_id, "filtered_counts_file": bool(filtered_counts)}
    if isinstance(bin_size, str):
        table = VISIUM_HD_SEGMENTATIONS[bin_size]
        kwargs.update(load_segmentations_only=True, load_nucleus_segmentations=bin_size == "nuclei")
    else:
        table = f"square_{int(bin_size):03d}um"
        kwargs.update(bin_size=[int(bin_size)], load_segmentations_only=False, bins_as_squares=True)
    sdata = sdio.visium_hd(root, **kwargs)
    adata = _to_anndata(
        sdata, table=table, region=None, coordinate_system=dataset_id, images=images,
        max_image_side=max_image_side, library_id=dataset_id, where=str(root),
    )
    adata.uns[LINK_KEY].update(reader="visium_hd", source=str(root), reader_kwargs=kwargs_for_uns(kwargs))
    _keep_source(adata, sdata)
    return sdata, adata


def kwargs_for_uns(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Reader keyword arguments in a form h5ad/zarr can store (lists as arrays)."""
    return {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in kwargs.items()}


def _kwargs_from_uns(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v
    return out


XENIUM_FILES = ("experiment.xenium", "cell_feature_matrix.h5", "cells.parquet", "cells.zarr.zip")


def find_xenium_root(path: str | Path) -> Path | None:
    """The Xenium output folder (``path`` or ``path/outs``) holding :data:`XENIUM_FILES`, or None."""
    path = Path(path)
    for root in (path, path / "outs"):
        if root.is_dir() and all((root / f).exists() for f in XENIUM_FILES):
            return root
    return None


def read_xenium(
    path: str | Path,
    transcripts: bool = False,
    *,
    cells_boundaries: bool = False,
    aligned_images: bool = True,
    images: str | Sequence[str] | None = None,
    max_image_side: int = MAX_IMAGE_SIDE,
) -> AnnData:
    """Read a Xenium output folder with ``spatialdata_io.xenium``: one row per cell.

    Parameters
    ----------
    path
        The Xenium output folder (``experiment.xenium``, ``cell_feature_matrix.h5``,
        ``cells.parquet``, ``cells.zarr.zip``, ``morphology_focus/`` or ``morphology_focus.ome.tif``).
    transcripts
        Also read ``transcripts.parquet`` (off by default: tens of millions of points). The AnnData
        holds the per-cell counts either way; the transcripts are part of the SpatialData that
        :func:`write_spatialdata` writes (it re-reads the folder with the same options).
    cells_boundaries
        Also read the cell polygons (``cell_boundaries.parquet``) into that SpatialData. The
        positions and sizes come from the cell circles (centroid; radius of the cell's area).
    aligned_images
        Also read aligned H&E/IF images (``*he_image.ome.tif`` with its alignment CSV).
    images, max_image_side
        As :func:`read_spatialdata`.

    Returns
    -------
    AnnData
        As :func:`read_spatialdata`: ``obsm['spatial']`` cell centroids in morphology-image pixels,
        ``obs['spatialdl_size_fullres']`` the diameter of a circle of the cell's area, in pixels,
        ``uns['spatial']['global']`` with the morphology image (DAPI, 8-bit, downsampled).
    """
    return read_xenium_objects(
        path, transcripts, cells_boundaries=cells_boundaries, aligned_images=aligned_images, images=images,
        max_image_side=max_image_side,
    )[1]


def read_xenium_objects(
    path: str | Path,
    transcripts: bool = False,
    *,
    cells_boundaries: bool = False,
    aligned_images: bool = True,
    images: str | Sequence[str] | None = None,
    max_image_side: int = MAX_IMAGE_SIDE,
) -> tuple[Any, AnnData]:
    """:func:`read_xenium`, also returning the SpatialData that spatialdata-io made."""
    sdio = _import_spatialdata_io()
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise SpatialDataError(f"{path} does not exist.")
    root = find_xenium_root(path)
    if root is None:
        missing = [f for f in XENIUM_FILES if not (path / f).exists()]
        raise SpatialDataError(
            f"{path} is not a Xenium output folder: missing {', '.join(missing)}. Pass the folder the "
            "Xenium instrument / Xenium Ranger wrote (the one with experiment.xenium)."
        )
    kwargs: dict[str, Any] = {
        "cells_boundaries": bool(cells_boundaries), "nucleus_boundaries": False, "cells_as_circles": True,
        "cells_labels": False, "nucleus_labels": False, "transcripts": bool(transcripts),
        "morphology_mip": False, "morphology_focus": True, "aligned_images": bool(aligned_images),
        "cells_table": True,
    }
    sdata = sdio.xenium(root, **kwargs)
    adata = _to_anndata(
        sdata, table="table", region="cell_circles", coordinate_system="global", images=images,
        max_image_side=max_image_side, library_id=_sanitize(root.name), where=str(root),
    )
    adata.uns[LINK_KEY].update(reader="xenium", source=str(root), reader_kwargs=kwargs_for_uns(kwargs))
    _keep_source(adata, sdata)
    return sdata, adata


# ---------------------------------------------------------------------------------------------
# write-back
# ---------------------------------------------------------------------------------------------


def _link(adata: Any) -> dict[str, Any]:
    link = getattr(adata, "uns", {}).get(LINK_KEY)
    if not isinstance(link, Mapping) or "table" not in link:
        raise SpatialDataError(
            "This AnnData was not read from a SpatialData (adata.uns['spatialdl_spatialdata'] is missing), so "
            "there is no table to write the results into. Read it with read_spatialdata / read_visium_hd / "
            "read_xenium, or save it with write_h5ad."
        )
    return dict(link)


def _is_result(key: str) -> bool:
    return (key.startswith(RESULT_PREFIX) or key.startswith(LATENT_PREFIX)) and key not in READER_KEYS


def result_keys(adata: AnnData) -> dict[str, list[str]]:
    """The keys :func:`write_spatialdata` writes back: per slot (obs, obsm, layers, uns, var, varm)."""
    return {
        "obs": [str(k) for k in adata.obs.columns if _is_result(str(k))],
        "obsm": [str(k) for k in adata.obsm.keys() if _is_result(str(k))],
        "layers": [str(k) for k in adata.layers.keys() if _is_result(str(k))],
        "uns": [str(k) for k in adata.uns.keys() if _is_result(str(k))],
        "var": [str(k) for k in adata.var.columns if _is_result(str(k))],
        "varm": [str(k) for k in adata.varm.keys() if _is_result(str(k))],
    }


def _positions(target: pd.Index, names: pd.Index, axis: str, table_name: str, where: str) -> np.ndarray:
    import pandas as pd

    target = pd.Index(target.astype(str))
    names = pd.Index(names.astype(str))
    if not target.is_unique:
        raise SpatialDataError(
            f"Table {table_name!r} in {where} has repeated {axis} names; rows cannot be matched. Make them unique."
        )
    if not names.is_unique:
        dup = names[names.duplicated()].unique()
        raise SpatialDataError(
            f"The AnnData has repeated {axis} names ({_listing(dup, 5)}): each must name one row of table "
            f"{table_name!r}. Do not concatenate copies of it before writing back."
        )
    pos = target.get_indexer(names)
    missing = pos < 0
    if missing.any():
        raise SpatialDataError(
            f"{int(missing.sum())} of {len(names)} {axis} names of the AnnData are not in table {table_name!r} "
            f"of {where} (e.g. {_listing(names[missing], 5)}; the table has e.g. {_listing(target[:3], 3)}). "
            f"Keep the {axis} names the reader gave (subsetting is fine; renaming is not), or write it with "
            "write_h5ad."
        )
    return pos


def _merge_series(old: pd.Series | None, new: pd.Series, pos: np.ndarray, index: pd.Index) -> pd.Series:
    """``new`` (len(pos) values) placed at rows ``pos`` of a column over ``index``; other rows from ``old``."""
    import pandas as pd

    n = len(index)
    values = new.to_numpy() if not isinstance(new.dtype, pd.CategoricalDtype) else new.array
    if len(pos) == n and np.array_equal(np.sort(pos), np.arange(n)):
        order = np.empty(n, dtype=np.int64)
        order[pos] = np.arange(n)
        if isinstance(new.dtype, pd.CategoricalDtype):
            return pd.Series(pd.Categorical(np.asarray(new.array)[order], dtype=new.dtype), index=index)
        return pd.Series(np.asarray(values)[order], index=index, dtype=new.dtype)
    if old is not None and len(old) != n:
        old = None
    kind = new.dtype.kind if not isinstance(new.dtype, pd.CategoricalDtype) else "O"
    if kind == "b" or str(new.dtype) == "boolean":
        base = pd.array(old.to_numpy() if old is not None and old.dtype.kind == "b" else [pd.NA] * n, dtype="boolean")
        base[pos] = pd.array(values, dtype="boolean")
        return pd.Series(base, index=index)
    if kind in "iu" or str(new.dtype) in ("Int64", "Int32"):
        base = pd.array([pd.NA] * n, dtype="Int64")
        if old is not None and (old.dtype.kind in "iu" or str(old.dtype).startswith("Int")):
            base = pd.array(old.to_numpy(), dtype="Int64")
        base[pos] = pd.array(values, dtype="Int64")
        return pd.Series(base, index=index)
    if kind in "fc":
        base = np.full(n, np.nan, dtype=np.result_type(new.dtype, np.float32))
        if old is not None and old.dtype.kind in "iuf":
            base[:] = old.to_numpy(dtype=base.dtype, na_value=np.nan)
        base[pos] = values
        return pd.Series(base, index=index)
    # categories and strings: object values, then categorical (old categories first)
    base = np.full(n, np.nan, dtype=object)
    categories: list[Any] = []
    if old is not None and (isinstance(old.dtype, pd.CategoricalDtype) or old.dtype == object):
        base[:] = old.astype(object).to_numpy()
        categories = list(old.cat.categories) if isinstance(old.dtype, pd.CategoricalDtype) else []
    new_obj = new.astype(object).to_numpy()
    base[pos] = new_obj
    new_cats = list(new.cat.categories) if isinstance(new.dtype, pd.CategoricalDtype) else sorted(
        {v for v in new_obj if v is not None and v == v}, key=str)
    categories += [c for c in new_cats if c not in set(categories)]
    present = {v for v in base if v is not None and v == v}
    categories += sorted((v for v in present if v not in set(categories)), key=str)
    return pd.Series(pd.Categorical(base, categories=categories), index=index)


def _merge_frame(old: Any, new: pd.DataFrame, pos: np.ndarray, index: pd.Index) -> pd.DataFrame:
    import pandas as pd

    old_df = old if isinstance(old, pd.DataFrame) and len(old) == len(index) else None
    cols = {c: _merge_series(old_df[c] if old_df is not None and c in old_df.columns else None, new[c], pos, index)
            for c in new.columns}
    return pd.DataFrame(cols, index=index)


def _selection(pos: np.ndarray, n: int):
    import scipy.sparse as sp

    return sp.csr_matrix((np.ones(len(pos)), (pos, np.arange(len(pos)))), shape=(n, len(pos)))


def _merge_array(old: Any, new: Any, pos: np.ndarray, n: int, cols: np.ndarray | None = None,
                 n_cols: int | None = None) -> Any:
    """Rows ``pos`` (and, for layers, columns ``cols``) of an (n, ...) array; the rest from ``old`` or NaN/0."""
    import pandas as pd
    import scipy.sparse as sp

    if isinstance(new, pd.DataFrame):
        return new  # handled by _merge_frame
    full_rows = len(pos) == n and np.array_equal(np.sort(pos), np.arange(n))
    full_cols = cols is None or (len(cols) == n_cols and np.array_equal(np.sort(cols), np.arange(n_cols)))
    out_cols = n_cols if cols is not None else (new.shape[1] if new.ndim > 1 else None)
    shape = (n,) if new.ndim == 1 else (n, out_cols, *new.shape[2:])
    same_old = old is not None and getattr(old, "shape", None) == shape
    if sp.issparse(new):
        new = sp.csr_matrix(new)
        placed = _selection(pos, n) @ new
        if cols is not None:
            placed = placed @ _selection(cols, n_cols).T
        placed = sp.csr_matrix(placed, dtype=new.dtype)
        if full_rows and full_cols:
            return placed
        if same_old and sp.issparse(old):
            keep_r = np.ones(n)
            keep_r[pos] = 0
            keep = sp.diags(keep_r) @ sp.csr_matrix(old)
            if cols is not None:
                covered = sp.diags(1 - keep_r) @ sp.csr_matrix(old)
                keep_c = np.ones(n_cols)
                keep_c[cols] = 0
                keep = keep + covered @ sp.diags(keep_c)
            return sp.csr_matrix(placed + keep)
        return placed
    new = np.asarray(new)
    if full_rows and full_cols:
        order = np.empty(n, dtype=np.int64)
        order[pos] = np.arange(n)
        out = new[order]
        if cols is not None:
            corder = np.empty(n_cols, dtype=np.int64)
            corder[cols] = np.arange(n_cols)
            out = out[:, corder]
        return out
    dtype = new.dtype if new.dtype.kind == "f" else np.float64
    out = np.full(shape, np.nan, dtype=dtype)
    if same_old and not sp.issparse(old):
        out[...] = np.asarray(old, dtype=dtype)
    if cols is None:
        out[pos] = new
    else:
        out[np.ix_(pos, cols)] = new
    return out


def _updated_parts(adata: AnnData, table: AnnData, table_name: str, where: str) -> dict[str, dict[str, Any]]:
    """The table's obs (whole) and the result entries of obsm/layers/uns/var/varm, merged row by row."""
    import pandas as pd

    keys = result_keys(adata)
    n, index = table.n_obs, pd.Index(table.obs_names)
    pos = _positions(table.obs_names, adata.obs_names, "obs", table_name, where)
    parts: dict[str, dict[str, Any]] = {k: {} for k in ("obs", "obsm", "layers", "uns", "var", "varm")}
    obs = table.obs.copy()
    for k in keys["obs"]:
        obs[k] = _merge_series(table.obs[k] if k in table.obs.columns else None, adata.obs[k], pos, index)
    parts["obs"]["obs"] = obs
    for k in keys["obsm"]:
        value, old = adata.obsm[k], table.obsm.get(k) if k in table.obsm else None
        if isinstance(value, pd.DataFrame):
            parts["obsm"][k] = _merge_frame(old, value, pos, index)
        else:
            parts["obsm"][k] = _merge_array(old, value, pos, n)
    gene_keys = keys["layers"] + keys["var"] + keys["varm"]
    if gene_keys:
        gpos = _positions(table.var_names, adata.var_names, "var", table_name, where)
        g_index = pd.Index(table.var_names)
        for k in keys["layers"]:
            old = table.layers[k] if k in table.layers else None
            parts["layers"][k] = _merge_array(old, adata.layers[k], pos, n, gpos, table.n_vars)
        if keys["var"]:
            var = table.var.copy()
            for k in keys["var"]:
                var[k] = _merge_series(table.var[k] if k in table.var.columns else None, adata.var[k], gpos, g_index)
            parts["var"]["var"] = var
        for k in keys["varm"]:
            value, old = adata.varm[k], table.varm[k] if k in table.varm else None
            if isinstance(value, pd.DataFrame):
                parts["varm"][k] = _merge_frame(old, value, gpos, g_index)
            else:
                parts["varm"][k] = _merge_array(old, value, gpos, table.n_vars)
    for k in keys["uns"]:
        parts["uns"][k] = copy.deepcopy(adata.uns[k])
    return parts


def _check_writable(parts: Mapping[str, Mapping[str, Any]]) -> None:
    """Write obs, DataFrames and uns entries to a zarr store in memory first: a bad value fails here."""
    import pandas as pd
    import zarr
    from anndata.io import write_elem

    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    for slot, entries in parts.items():
        for key, value in entries.items():
            if slot in ("uns", "obs", "var") or isinstance(value, pd.DataFrame):
                try:
                    write_elem(group, f"{slot}_{key}".replace("/", "_"), value)
                except Exception as err:  # noqa: BLE001 - anndata raises many types; name the key
                    where = slot if slot in ("obs", "var") else f"{slot}[{key!r}]"
                    raise SpatialDataError(
                        f"adata.{where} cannot be stored in a .zarr table ({type(err).__name__}: {err}). "
                        "Convert it to arrays, strings, numbers or dicts of these, or drop it, and write again."
                    ) from err


def _apply_in_memory(table: AnnData, parts: Mapping[str, Mapping[str, Any]]) -> None:
    if "obs" in parts["obs"]:
        table.obs = parts["obs"]["obs"]
    if "var" in parts["var"]:
        table.var = parts["var"]["var"]
    for slot in ("obsm", "layers", "varm"):
        store = getattr(table, slot)
        for k, v in parts[slot].items():
            store[k] = v
    for k, v in parts["uns"].items():
        table.uns[k] = v


def _write_in_place(sdata: Any, table_name: str, parts: Mapping[str, Mapping[str, Any]]) -> None:
    """Rewrite only the table's obs, var and result entries on disk (anndata's write_elem)."""
    import zarr
    from anndata.io import write_elem

    group = zarr.open_group(str(Path(sdata.path) / "tables" / table_name), mode="r+", use_consolidated=False)
    for slot in ("obs", "var"):
        if slot in parts[slot]:
            write_elem(group, slot, parts[slot][slot])
    for slot in ("obsm", "layers", "varm", "uns"):
        if not parts[slot]:
            continue
        sub = group[slot] if slot in group else group.create_group(slot)
        for k, v in parts[slot].items():
            write_elem(sub, k, v)
    if sdata.has_consolidated_metadata():
        sdata.write_consolidated_metadata()


def _source_sdata(link: Mapping[str, Any]) -> Any:
    reader = str(link.get("reader") or "")
    source = str(link.get("source") or link.get("path") or "")
    if reader in ("read_zarr", "") and link.get("path"):
        return _read_zarr(Path(str(link["path"])))
    if reader in ("visium_hd", "xenium") and source:
        if not Path(source).exists():
            raise SpatialDataError(
                f"The AnnData was read from {source} ({reader}), which no longer exists: the images and other "
                "elements cannot be copied into a new .zarr. Save the results with write_h5ad instead."
            )
        sdio = _import_spatialdata_io()
        return getattr(sdio, reader)(Path(source), **_kwargs_from_uns(link.get("reader_kwargs") or {}))
    raise SpatialDataError(
        "The AnnData's SpatialData link names no .zarr and no source folder to copy from "
        "(adata.uns['spatialdl_spatialdata']); save it with write_h5ad instead."
    )


def write_spatialdata(adata: AnnData, path: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Write the results of the tasks into the SpatialData's table and the ``.zarr``.

    What is written: the ``obs``, ``obsm``, ``layers``, ``uns``, ``var`` and ``varm`` entries whose
    key starts with ``spatialdl`` or ``X_spatialdl`` (see :func:`result_keys`), into the table
    named in ``adata.uns['spatialdl_spatialdata']``, under the same keys. Only the table rows
    named by ``adata.obs_names`` are updated (an AnnData subset by rows is fine); rows it does not
    hold keep their values (missing for new keys: NaN, or a missing category).

    Parameters
    ----------
    adata
        An AnnData from :func:`read_spatialdata`, :func:`read_visium_hd` or :func:`read_xenium`.
    path
        ``None`` or the store it was read from: update that ``.zarr`` in place (only the table's
        ``obs``/``var`` and the result entries are rewritten; images, shapes and the other tables
        are not touched). Another path: a new ``.zarr`` holding the whole SpatialData (read again
        from its source) with the updated table; the link in ``adata.uns['spatialdl_spatialdata']``
        then points to it, so the next call updates it in place.
    overwrite
        Replace an existing store at a new ``path``.

    Returns
    -------
    Path
        The ``.zarr`` written.

    Raises
    ------
    SpatialDataError
        No link to a SpatialData; obs names that are not rows of the table; a result that cannot be
        stored; ``path`` needed (read from a Visium HD/Xenium folder) or already existing.
    """
    link = _link(adata)
    source_zarr = Path(str(link["path"])).resolve() if link.get("path") else None
    target = Path(path).expanduser().resolve() if path is not None else source_zarr
    if target is None:
        raise SpatialDataError(
            f"This AnnData was read from {link.get('source') or 'a SpatialData in memory'} "
            f"({link.get('reader') or 'not from a .zarr'}), not from a .zarr: pass path='<new>.zarr' to write "
            "the SpatialData with the results."
        )
    in_place = source_zarr is not None and target == source_zarr
    if not in_place and target.exists() and not overwrite:
        raise SpatialDataError(f"{target} already exists: pass overwrite=True to replace it, or another path.")
    if not in_place and source_zarr is not None and (source_zarr in target.parents or target in source_zarr.parents):
        raise SpatialDataError(
            f"{target} is inside (or contains) the store it was read from, {source_zarr}; choose a path outside it."
        )
    table_name = str(link["table"])
    if not any(result_keys(adata).values()):
        warnings.warn(
            "The AnnData holds no napari-spatialdl results (no obs/obsm/layers/uns keys starting with "
            "'spatialdl' or 'X_spatialdl'): the table is written unchanged.",
            UserWarning,
            stacklevel=2,
        )
    sdata = _source_sdata(link)
    where = str(source_zarr or link.get("source"))
    if table_name not in sdata.tables:
        raise SpatialDataError(
            f"Table {table_name!r} is no longer in {where} (tables: {_listing(list(sdata.tables))}); "
            "it cannot take the results."
        )
    table = sdata.tables[table_name]
    parts = _updated_parts(adata, table, table_name, where)
    _check_writable(parts)
    if in_place:
        _write_in_place(sdata, table_name, parts)
    else:
        _apply_in_memory(table, parts)
        if target.exists() and overwrite:
            import shutil

            if not is_spatialdata_zarr(target) and not (target.is_dir() and not any(target.iterdir())):
                raise SpatialDataError(
                    f"{target} exists and is not a SpatialData .zarr; it is not overwritten. Choose another path."
                )
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        sdata.write(target, overwrite=False)
        adata.uns[LINK_KEY] = {**adata.uns[LINK_KEY], "path": str(target), "reader": "read_zarr",
                               "source": str(target), "reader_kwargs": {}}
    return target


# ---------------------------------------------------------------------------------------------
# napari: affine from the shown image's pixels to the coordinate system
# ---------------------------------------------------------------------------------------------


def layer_affine(adata: AnnData, scalefactor: float) -> np.ndarray | None:
    """3x3 napari affine (row, col) from pixels of an image shown at ``scalefactor`` to the coordinate system.

    ``scalefactor`` is the ``tissue_<key>_scalef`` of the image the layers are drawn in (1 without
    an image). None when the AnnData has no SpatialData link.
    """
    link = adata.uns.get(LINK_KEY) if hasattr(adata, "uns") else None
    if not isinstance(link, Mapping) or "frame_to_coordinate_system" not in link:
        return None
    xy = np.asarray(link["frame_to_coordinate_system"], dtype=np.float64) @ np.diag(
        [1.0 / scalefactor, 1.0 / scalefactor, 1.0]
    )
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return swap @ xy @ swap
