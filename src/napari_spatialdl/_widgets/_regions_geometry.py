"""Where the drawn regions and the spots are, in world coordinates (no Qt)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..regions import assign_regions

#: the Shapes layer feature holding each region's name
REGION_FEATURE = "region"


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


__all__ = ["REGION_FEATURE", "regions_of_spots", "shape_names", "spots_world_yx", "to_world"]
