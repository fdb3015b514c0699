"""Regions drawn on the tissue become labels of the spots: pure point-in-shape assignment.

No napari and no Qt here: the Regions widget hands over the shapes' vertices (already in
the same ``(y, x)`` pixel space as the spots) and their names, and gets back one region
name per spot, missing (NaN) for spots outside every shape. The result can be stored in
``adata.obs[key]`` and used as ``labels_key`` for annotation (train on the annotated
spots, predict the rest).

The shapes themselves are kept with the labels (:func:`write_regions` with ``shapes=``): their
vertices, names, kinds and colours go to ``adata.uns['spatialdl_regions'][key]`` in a form an
``.h5ad`` file holds (no pickles), the region colours to ``adata.uns[f'{key}_colors']`` as
scanpy keeps them, so a saved file reopens with its regions drawn (:func:`saved_regions`,
:func:`regions_layer_data`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._constants import REGION_KEY

#: shape types that enclose an area (lines and paths do not)
AREA_SHAPES = ("polygon", "rectangle", "ellipse")
#: every napari shape type that can be saved
SHAPE_TYPES = (*AREA_SHAPES, "path", "line")
#: ``adata.uns`` entry holding the drawn shapes of each regions column: ``uns[REGIONS_UNS_KEY][key]``
REGIONS_UNS_KEY = "spatialdl_regions"
#: the coordinate space of the saved vertices: ``(y, x)`` in the units of ``obsm['spatial']``
REGIONS_SPACE = "obsm_spatial_yx"
#: metadata flag marking a Shapes layer of regions (drawn in, or restored for, the Regions widget)
META_REGIONS = "spatialdl_regions"
#: metadata of a restored regions layer: the obs column its regions were assigned to
META_REGIONS_KEY = "spatialdl_regions_key"
#: the Shapes layer feature holding each region's name
REGION_FEATURE = "region"
#: opacity of a region's fill (its outline is opaque), so the spots under it stay visible
REGION_FACE_ALPHA = 0.2


def points_in_polygon(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Which ``points`` lie inside the polygon ``vertices`` (even-odd rule).

    Parameters
    ----------
    points
        ``(n, 2)`` coordinates.
    vertices
        ``(m, 2)`` polygon vertices in the same coordinate order as ``points``; the
        polygon is closed implicitly (last vertex joins the first).

    Returns
    -------
    numpy.ndarray
        Boolean mask of length ``n``. Points exactly on an edge may fall either side.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    vertices = np.asarray(vertices, dtype=float).reshape(-1, 2)
    if len(vertices) < 3:
        return np.zeros(len(points), dtype=bool)
    py, px = points[:, 0][:, None], points[:, 1][:, None]  # (n, 1)
    y0, x0 = vertices[:, 0][None, :], vertices[:, 1][None, :]  # (1, m)
    y1, x1 = np.roll(vertices[:, 0], -1)[None, :], np.roll(vertices[:, 1], -1)[None, :]
    # a horizontal ray from each point towards +x crosses edge (y0,x0)-(y1,x1)?
    straddles = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    crossings = straddles & (px < x_cross)
    return (crossings.sum(axis=1) % 2) == 1


def points_in_ellipse(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Which ``points`` lie inside the ellipse inscribed in the (possibly rotated) box ``corners``.

    ``corners`` are the four corners of the bounding box in order, as napari's Shapes
    layer stores an ellipse.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    corners = np.asarray(corners, dtype=float).reshape(-1, 2)
    if len(corners) != 4:
        raise ValueError(f"An ellipse needs the 4 corners of its bounding box, got {len(corners)} points.")
    center = corners.mean(axis=0)
    axis_a = (corners[1] - corners[0]) / 2.0  # half of one side
    axis_b = (corners[3] - corners[0]) / 2.0  # half of the adjacent side
    basis = np.stack([axis_a, axis_b], axis=1)  # columns: the two semi-axes
    if abs(np.linalg.det(basis)) < 1e-12:
        return np.zeros(len(points), dtype=bool)
    local = np.linalg.solve(basis, (points - center).T).T  # coordinates in semi-axis units
    return (local**2).sum(axis=1) <= 1.0


def assign_regions(
    points: np.ndarray,
    shapes: Sequence[np.ndarray],
    names: Sequence[str],
    shape_types: Sequence[str] | None = None,
) -> pd.Categorical:
    """The region of every point: the name of the shape that contains it.

    Parameters
    ----------
    points
        ``(n, 2)`` spot coordinates, ``(y, x)`` in the same pixel space as ``shapes``.
    shapes
        One ``(m, 2)`` vertex array per shape (extra leading dimensions are dropped,
        the last two columns are used).
    names
        One region name per shape. Several shapes may share a name (one region drawn
        in pieces). Empty names are not allowed.
    shape_types
        napari shape type per shape (``'polygon'``, ``'rectangle'``, ``'ellipse'``,
        ``'path'``, ``'line'``); default: every shape is a polygon. Paths and lines
        enclose nothing and are ignored.

    Returns
    -------
    pandas.Categorical
        Length ``n``; categories are the region names in the order first drawn; spots
        outside every shape are missing (NaN). Where shapes overlap, the one drawn
        last (on top) wins.
    """
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(f"points must be an (n, 2) array of (y, x), got shape {points.shape}.")
    points = points[:, -2:]
    if len(shapes) != len(names):
        raise ValueError(f"Got {len(shapes)} shapes but {len(names)} names: name every shape.")
    if shape_types is None:
        shape_types = ["polygon"] * len(shapes)
    if len(shape_types) != len(shapes):
        raise ValueError(f"Got {len(shapes)} shapes but {len(shape_types)} shape types.")
    names = [str(n).strip() for n in names]
    if any(not n or n.lower() == "nan" for n in names):
        raise ValueError("Every region needs a name (empty names and 'nan' are not allowed).")

    codes = np.full(len(points), -1, dtype=int)
    categories: list[str] = []
    for vertices, kind, name in zip(shapes, shape_types, names):
        kind = str(kind).lower()
        if kind not in AREA_SHAPES:
            continue
        vertices = np.asarray(vertices, dtype=float)[:, -2:]
        inside = points_in_ellipse(points, vertices) if kind == "ellipse" else points_in_polygon(points, vertices)
        if name not in categories:
            categories.append(name)
        codes[inside] = categories.index(name)
    return pd.Categorical.from_codes(codes, categories=categories)


def _hex(color: Any, what: str) -> str:
    from matplotlib.colors import to_hex

    try:
        return to_hex(color, keep_alpha=False)
    except (ValueError, TypeError):
        raise ValueError(f"{what} is not a colour: {color!r} (use a name such as 'red' or '#1f77b4').") from None


def _old_colors(adata: AnnData, key: str) -> dict[str, str]:
    """Category -> colour of the column ``key`` as it is now (scanpy's ``uns[f'{key}_colors']``)."""
    old = adata.obs[key] if key in adata.obs else None
    colors = adata.uns.get(f"{key}_colors")
    if old is None or colors is None or not isinstance(old.dtype, pd.CategoricalDtype):
        return {}
    categories = [str(c) for c in old.cat.categories]
    colors = list(np.asarray(colors).ravel())
    if len(colors) < len(categories):
        return {}
    try:
        return {c: _hex(v, "") for c, v in zip(categories, colors)}
    except ValueError:
        return {}


def region_colors(
    adata: AnnData,
    key: str,
    categories: Sequence[str],
    colors: Mapping[str, Any] | Sequence[Any] | None = None,
) -> list[str]:
    """One hex colour per region (in ``categories`` order) for ``adata.obs[key]``.

    Given ``colors`` win (a mapping region -> colour, or one colour per category); regions the
    column already had keep the colour they were shown in (``uns[f'{key}_colors']``); new regions
    get scanpy's default colours not used yet.
    """
    from .layers import default_palette

    categories = [str(c) for c in categories]
    chosen: dict[str, str] = {}
    if isinstance(colors, Mapping):
        chosen = {str(k): _hex(v, f"The colour of region {k!r}") for k, v in colors.items()}
    elif colors is not None:
        colors = list(colors)
        if len(colors) < len(categories):
            raise ValueError(f"Got {len(colors)} colours for {len(categories)} regions "
                             f"({', '.join(categories)}): give one per region, in that order.")
        chosen = {c: _hex(v, f"The colour of region {c!r}") for c, v in zip(categories, colors)}
    kept = _old_colors(adata, key)
    out = [chosen.get(c) or kept.get(c) for c in categories]
    used = {c for c in out if c}
    spare = iter(c for c in (_hex(p, "") for p in default_palette(len(categories) + len(used)))
                 if c not in used)
    return [c if c else next(spare) for c in out]


def _shapes_entry(
    shapes: Sequence[np.ndarray],
    names: Sequence[str] | None,
    shape_types: Sequence[str] | None,
    colors_of: Mapping[str, str],
) -> dict[str, np.ndarray]:
    """The h5ad-safe ``uns`` entry of the shapes (validated; nothing written here)."""
    from .layers import NA_COLOR

    n = len(shapes)
    if names is None or len(names) != n:
        raise ValueError(f"Got {n} shapes but {0 if names is None else len(names)} names: "
                         "pass names= with one region name per shape.")
    if shape_types is None:
        shape_types = ["polygon"] * n
    if len(shape_types) != n:
        raise ValueError(f"Got {n} shapes but {len(shape_types)} shape types.")
    kinds = [str(k).lower() for k in shape_types]
    unknown = sorted({k for k in kinds if k not in SHAPE_TYPES})
    if unknown:
        raise ValueError(f"Unknown shape type(s) {', '.join(unknown)}; use one of {', '.join(SHAPE_TYPES)}.")
    vertices = []
    for i, v in enumerate(shapes):
        v = np.asarray(v, dtype=float)
        if v.ndim != 2 or v.shape[1] < 2 or len(v) < 2:
            raise ValueError(f"Shape {i + 1} has vertices of shape {v.shape}; each shape needs an (m, 2) "
                             "array of (y, x) vertices, m >= 2.")
        if not np.isfinite(v).all():
            raise ValueError(f"Shape {i + 1} has NaN or infinite vertices.")
        vertices.append(v[:, -2:])
    names = [str(x).strip() for x in names]
    return {
        "names": np.asarray(names, dtype=str),
        "shape_types": np.asarray(kinds, dtype=str),
        "vertices": np.concatenate(vertices).astype(np.float64) if vertices else np.zeros((0, 2)),
        "n_vertices": np.asarray([len(v) for v in vertices], dtype=np.int64),
        "colors": np.asarray([colors_of.get(x, NA_COLOR) for x in names], dtype=str),
        "space": REGIONS_SPACE,
    }


def write_regions(
    adata: AnnData,
    key: str,
    regions: pd.Categorical | Sequence,
    *,
    shapes: Sequence[np.ndarray] | None = None,
    names: Sequence[str] | None = None,
    shape_types: Sequence[str] | None = None,
    colors: Mapping[str, Any] | Sequence[Any] | None = None,
) -> pd.Series:
    """Store one region per spot as the categorical ``adata.obs[key]``, with the shapes drawn.

    Parameters
    ----------
    adata
        The spots' AnnData; nothing of it changes when an argument is refused.
    key
        The obs column to write (replaced when it exists).
    regions
        One region name per spot, missing outside every region (:func:`assign_regions`).
    shapes
        The shapes the regions were drawn as: one ``(m, 2)`` array of ``(y, x)`` vertices per
        shape, in the units of ``adata.obsm['spatial']`` (full-resolution pixels; ``obsm['spatial']``
        holds ``(x, y)``). Saved in ``adata.uns['spatialdl_regions'][key]`` (see
        :func:`saved_regions`). ``None``: no shapes are kept for ``key`` (an older entry is removed,
        as it no longer describes the column).
    names
        With ``shapes``: the region name of each shape.
    shape_types
        With ``shapes``: napari's shape type of each shape (default ``'polygon'``).
    colors
        Colours of the regions: a mapping region -> colour or one colour per category. Default:
        regions the column had keep their colour, new ones get scanpy's next default colours.

    Returns
    -------
    pandas.Series
        ``adata.obs[key]``. Its colours are written to ``adata.uns[f'{key}_colors']`` in category
        order (so scanpy's plots agree with the viewer).
    """
    if not key or not str(key).strip():
        raise ValueError("Give the obs column a name (e.g. 'region').")
    key = str(key)
    values = pd.Categorical(regions)
    if len(values) != adata.n_obs:
        raise ValueError(f"Got {len(values)} regions for {adata.n_obs} spots.")
    categories = [str(c) for c in values.categories]
    palette = region_colors(adata, key, categories, colors)
    entry = None
    if shapes is not None and len(shapes):
        entry = _shapes_entry(shapes, names, shape_types, dict(zip(categories, palette)))
    # everything checked: write
    adata.obs[key] = pd.Series(values, index=adata.obs_names, name=key)
    adata.uns[f"{key}_colors"] = list(palette)
    store = adata.uns.get(REGIONS_UNS_KEY)
    if entry is not None:
        store = dict(store) if isinstance(store, Mapping) else {}
        store[key] = entry
        adata.uns[REGIONS_UNS_KEY] = store
    elif isinstance(store, Mapping) and key in store:
        store = {k: v for k, v in store.items() if k != key}
        if store:
            adata.uns[REGIONS_UNS_KEY] = store
        else:
            del adata.uns[REGIONS_UNS_KEY]
    return adata.obs[key]


@dataclass(frozen=True)
class SavedRegions:
    """The shapes of a regions column as saved by :func:`write_regions`.

    Attributes
    ----------
    key
        The obs column the regions were assigned to.
    names
        The region name of each shape.
    shape_types
        napari's shape type of each shape.
    vertices
        One ``(m, 2)`` array of ``(y, x)`` vertices per shape, in the units of ``obsm['spatial']``.
    colors
        The hex colour of each shape (its region's colour).
    """

    key: str
    names: list[str]
    shape_types: list[str]
    vertices: list[np.ndarray]
    colors: list[str]

    def __len__(self) -> int:
        return len(self.names)


def _damaged(key: str, problem: str) -> ValueError:
    where = f"adata.uns[{REGIONS_UNS_KEY!r}][{key!r}]"
    return ValueError(
        f"{where} is damaged: {problem}. Assign the regions again (Regions panel, or "
        f"napari_spatialdl.regions.write_regions with shapes=) to rewrite it, or remove it: "
        f"del {where}."
    )


def _strings(entry: Mapping, field: str, key: str) -> list[str]:
    if field not in entry:
        raise _damaged(key, f"'{field}' is missing")
    value = np.asarray(entry[field])
    if value.ndim != 1 or value.dtype.kind not in "OUS":
        raise _damaged(key, f"'{field}' must be a list of texts, got {value.dtype} of shape {value.shape}")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in value]


def _read_entry(key: str, entry: Any) -> SavedRegions:
    if not isinstance(entry, Mapping):
        raise _damaged(key, f"it is a {type(entry).__name__}, not a dict")
    space = entry.get("space", REGIONS_SPACE)
    if str(space) != REGIONS_SPACE:
        raise _damaged(key, f"its vertices are in an unknown coordinate space {space!r}")
    names = _strings(entry, "names", key)
    kinds = [k.lower() for k in _strings(entry, "shape_types", key)]
    colors = _strings(entry, "colors", key)
    for field in ("vertices", "n_vertices"):
        if field not in entry:
            raise _damaged(key, f"'{field}' is missing")
    n = len(names)
    if len(kinds) != n or len(colors) != n:
        raise _damaged(key, f"{n} names but {len(kinds)} shape types and {len(colors)} colours")
    unknown = sorted({k for k in kinds if k not in SHAPE_TYPES})
    if unknown:
        raise _damaged(key, f"unknown shape type(s) {', '.join(unknown)}")
    try:
        vertices = np.asarray(entry["vertices"], dtype=float)
        counts = np.asarray(entry["n_vertices"])
    except (TypeError, ValueError):
        raise _damaged(key, "'vertices' or 'n_vertices' are not numbers") from None
    if vertices.ndim != 2 or vertices.shape[1] != 2:
        raise _damaged(key, f"'vertices' must be an (n, 2) array of (y, x), got shape {vertices.shape}")
    if not np.isfinite(vertices).all():
        raise _damaged(key, "'vertices' hold NaN or infinite values")
    if counts.ndim != 1 or len(counts) != n or counts.dtype.kind not in "iu" or (counts < 2).any():
        raise _damaged(key, f"'n_vertices' must hold {n} whole numbers >= 2 (one per shape)")
    if int(counts.sum()) != len(vertices):
        raise _damaged(key, f"'n_vertices' adds up to {int(counts.sum())} but there are {len(vertices)} vertices")
    try:
        colors = [_hex(c, "") for c in colors]
    except ValueError:
        raise _damaged(key, "'colors' hold something that is not a colour") from None
    pieces = np.split(vertices, np.cumsum(counts)[:-1]) if n else []
    return SavedRegions(key=key, names=names, shape_types=kinds, vertices=[p.copy() for p in pieces],
                        colors=colors)


def saved_regions(adata: AnnData, key: str | None = None) -> SavedRegions | dict[str, SavedRegions] | None:
    """The shapes saved with the regions (:func:`write_regions`), read back and checked.

    Parameters
    ----------
    adata
        An AnnData (e.g. read from an ``.h5ad`` written after Assign).
    key
        The regions column; ``None``: all of them.

    Returns
    -------
    SavedRegions, dict or None
        With ``key``: its :class:`SavedRegions`, or None when none are saved for it. Without:
        ``{key: SavedRegions}`` for every saved column (empty when there are none).

    Raises
    ------
    ValueError
        When an entry is damaged (fields missing, lengths that disagree, vertices that are not
        finite numbers, colours that are not colours); the message names the entry and the fix.
    """
    store = adata.uns.get(REGIONS_UNS_KEY)
    if store is None:
        return None if key is not None else {}
    if not isinstance(store, Mapping):
        raise ValueError(
            f"adata.uns[{REGIONS_UNS_KEY!r}] is a {type(store).__name__}, not a dict of regions by obs "
            f"column: remove it (del adata.uns[{REGIONS_UNS_KEY!r}]) and assign the regions again."
        )
    if key is not None:
        return _read_entry(str(key), store[key]) if key in store else None
    return {str(k): _read_entry(str(k), v) for k, v in store.items()}


def _layer_name(points_name: str, key: str) -> str:
    base = points_name[: -len(" spots")] if points_name.endswith(" spots") else ""
    name = f"{base} regions" if base else "regions"
    return name if key == REGION_KEY else f"{name} ({key})"


def regions_layer_data(adata: AnnData, points_kwargs: Mapping[str, Any] | None = None) -> list[tuple[Any, dict, str]]:
    """napari layer data of the saved regions: one Shapes layer per regions column (no napari here).

    Parameters
    ----------
    adata
        An AnnData with ``uns['spatialdl_regions']`` (nothing is returned without).
    points_kwargs
        The keyword arguments of its spots layer (from :func:`napari_spatialdl.layers.spatial_layers`):
        the shapes are put in the same pixel space (``metadata['scalefactor']``) and transform
        (``scale``, ``translate``, ``rotate``, ``shear``, ``affine``) and ``units`` as the spots.

    Returns
    -------
    list of (data, kwargs, 'shapes')
        Each with the region names in ``features['region']`` (shown as text), the saved colours
        (outline opaque, fill at :data:`REGION_FACE_ALPHA`), and ``metadata`` marking it as a
        regions layer of the column (``'spatialdl_regions'``, ``'spatialdl_regions_key'``). A
        damaged entry is skipped with a warning naming it.
    """
    from matplotlib.colors import to_rgba_array

    points_kwargs = dict(points_kwargs or {})
    metadata = points_kwargs.get("metadata") or {}
    scalef = float(metadata.get("scalefactor", 1.0) or 1.0)
    size = np.asarray(points_kwargs.get("size", 0.0), dtype=float)
    edge_width = max(1.0, float(np.mean(size)) * 0.15) if size.size and np.mean(size) > 0 else 2.0
    transform = {k: points_kwargs[k] for k in ("scale", "translate", "rotate", "shear", "affine", "units")
                 if k in points_kwargs}
    store = adata.uns.get(REGIONS_UNS_KEY)
    keys = list(store) if isinstance(store, Mapping) else []
    if store is not None and not isinstance(store, Mapping):
        warnings.warn(f"adata.uns[{REGIONS_UNS_KEY!r}] is not a dict: its regions are not shown.",
                      UserWarning, stacklevel=2)
    out = []
    for key in keys:
        try:
            saved = saved_regions(adata, key)
        except ValueError as err:
            warnings.warn(f"The regions of {key!r} are not shown: {err}", UserWarning, stacklevel=2)
            continue
        if saved is None or not len(saved):
            continue
        edge = np.asarray(to_rgba_array(saved.colors), dtype=np.float32)
        face = edge.copy()
        face[:, 3] = REGION_FACE_ALPHA
        kwargs = {
            "name": _layer_name(str(points_kwargs.get("name", "spots")), str(key)),
            "ndim": 2,
            "shape_type": list(saved.shape_types),
            "features": pd.DataFrame({REGION_FEATURE: pd.Series(saved.names, dtype=object)}),
            "text": {"string": "{" + REGION_FEATURE + "}", "size": 12, "color": "white", "anchor": "center"},
            "face_color": face,
            "edge_color": edge,
            "edge_width": edge_width,
            "metadata": {META_REGIONS: True, META_REGIONS_KEY: str(key)},
            **transform,
        }
        out.append(([v * scalef for v in saved.vertices], kwargs, "shapes"))
    return out


def region_counts(regions: pd.Categorical) -> dict[str, int]:
    """Number of spots per region, plus ``'unlabelled'`` for spots outside every shape."""
    values = pd.Categorical(regions)
    counts = {str(c): int((values == c).sum()) for c in values.categories}
    counts["unlabelled"] = int(pd.isna(values).sum())
    return counts


__all__ = [
    "META_REGIONS",
    "REGIONS_UNS_KEY",
    "REGION_FEATURE",
    "SavedRegions",
    "assign_regions",
    "points_in_ellipse",
    "points_in_polygon",
    "region_colors",
    "region_counts",
    "regions_layer_data",
    "saved_regions",
    "write_regions",
]
