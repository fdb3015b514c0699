"""Regions drawn on the tissue become labels of the spots: pure point-in-shape assignment.

No napari and no Qt here: the Regions widget hands over the shapes' vertices (already in
the same ``(y, x)`` pixel space as the spots) and their names, and gets back one region
name per spot, missing (NaN) for spots outside every shape. The result can be stored in
``adata.obs[key]`` and used as ``labels_key`` for annotation (train on the annotated
spots, predict the rest).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

#: shape types that enclose an area (lines and paths do not)
AREA_SHAPES = ("polygon", "rectangle", "ellipse")


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


def write_regions(adata: AnnData, key: str, regions: pd.Categorical | Sequence) -> pd.Series:
    """Store one region per spot as the categorical ``adata.obs[key]`` (missing outside regions).

    Replaces an existing column of that name; drops ``adata.uns[f'{key}_colors']`` when the
    categories changed, so colours are picked afresh.
    """
    if not key or not str(key).strip():
        raise ValueError("Give the obs column a name (e.g. 'region').")
    values = pd.Categorical(regions)
    if len(values) != adata.n_obs:
        raise ValueError(f"Got {len(values)} regions for {adata.n_obs} spots.")
    old = adata.obs[key] if key in adata.obs else None
    series = pd.Series(values, index=adata.obs_names, name=key)
    adata.obs[key] = series
    colors_key = f"{key}_colors"
    if colors_key in adata.uns:
        old_cats = list(old.cat.categories) if old is not None and hasattr(old, "cat") else None
        if old_cats != list(values.categories):
            del adata.uns[colors_key]
    return adata.obs[key]


def region_counts(regions: pd.Categorical) -> dict[str, int]:
    """Number of spots per region, plus ``'unlabelled'`` for spots outside every shape."""
    values = pd.Categorical(regions)
    counts = {str(c): int((values == c).sum()) for c in values.categories}
    counts["unlabelled"] = int(pd.isna(values).sum())
    return counts


__all__ = [
    "assign_regions",
    "points_in_ellipse",
    "points_in_polygon",
    "region_counts",
    "write_regions",
]
