"""Where the drawn regions and the spots are, in world coordinates (no Qt)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..regions import REGION_FEATURE, assign_regions


def to_world(layer: Any, coords: np.ndarray) -> np.ndarray:
    """Data coordinates of ``layer`` to world coordinates (scale, translate, rotate, affine).

    napari's public ``layer.data_to_world`` maps one position; the transform is affine, so it is
    read off from the origin and the unit vectors and applied to all points at once.
    """
    coords = np.asarray(coords, dtype=float)
    if coords.size == 0:
        return coords.reshape(0, max(1, coords.shape[-1] if coords.ndim else 2))
    ndim = coords.shape[-1]
    origin = np.asarray(layer.data_to_world(np.zeros(ndim)), dtype=float)
    columns = [np.asarray(layer.data_to_world(np.eye(ndim)[i]), dtype=float) - origin for i in range(ndim)]
    return coords @ np.stack(columns) + origin


def to_data(layer: Any, world: np.ndarray) -> np.ndarray:
    """World coordinates to data coordinates of ``layer`` (the inverse of :func:`to_world`).

    ``world`` may hold fewer columns than the layer has dimensions: they are the last ones (the
    leading world coordinates are taken as 0).
    """
    world = np.asarray(world, dtype=float)
    ndim = int(layer.ndim)
    if world.shape[-1] < ndim:
        world = np.concatenate([np.zeros((len(world), ndim - world.shape[-1])), world], axis=1)
    origin = to_world(layer, np.zeros((1, ndim)))[0]
    matrix = to_world(layer, np.eye(ndim)) - origin  # row i: the world image of unit vector i
    return np.linalg.solve(matrix.T, (world - origin).T).T


def shapes_in_spots_space(points_layer: Any, shapes_layer: Any) -> list[np.ndarray]:
    """The vertices of every shape as ``(y, x)`` in the units of the spots' ``obsm['spatial']``.

    Each shape is taken to world coordinates, then into the spots layer's pixels, then divided by
    the spots layer's ``metadata['scalefactor']`` (image pixels per full-resolution pixel): the
    space :func:`napari_spatialdl.regions.write_regions` saves shapes in, whatever image shows them.
    """
    scalef = float(points_layer.metadata.get("scalefactor", 1.0) or 1.0)
    out = []
    for vertices in shapes_layer.data:
        world = to_world(shapes_layer, vertices)[:, -2:]
        out.append(to_data(points_layer, world)[:, -2:] / scalef)
    return out


def spots_world_yx(points_layer: Any) -> np.ndarray:
    """The spots' ``(y, x)`` centres in world coordinates (last two dimensions)."""
    return to_world(points_layer, points_layer.data)[:, -2:]


def shape_names(shapes_layer: Any) -> list[str]:
    """One name per shape from the layer's ``features['region']`` ('' when missing)."""
    n = len(shapes_layer.data)
    if REGION_FEATURE not in shapes_layer.features.columns:
        return [""] * n
    values = shapes_layer.features[REGION_FEATURE].tolist()
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values][:n]


def regions_of_spots(points_layer: Any, shapes_layer: Any) -> pd.Categorical:
    """The region (shape name) of every spot of ``points_layer``; NaN outside every shape."""
    names = shape_names(shapes_layer)
    unnamed = [i for i, name in enumerate(names) if not name.strip()]
    if unnamed:
        raise ValueError(
            f"{len(unnamed)} shape(s) have no name (shape {', '.join(str(i + 1) for i in unnamed[:5])}): "
            "name every region in the table first."
        )
    vertices = [to_world(shapes_layer, v)[:, -2:] for v in shapes_layer.data]
    return assign_regions(spots_world_yx(points_layer), vertices, names, list(shapes_layer.shape_type))


__all__ = ["REGION_FEATURE", "regions_of_spots", "shape_names", "shapes_in_spots_space", "spots_world_yx",
           "to_data", "to_world"]
