"""Readers, writers and spatial-metadata accessors (no Qt, no napari).

Everything spatial follows the Space Ranger/squidpy layout: ``obsm['spatial']`` holds spot
centres (x, y) in full-resolution pixels, ``uns['spatial'][library_id]`` the images and scale
factors. See :mod:`napari_spatialdl.io._spatial`.
"""

from __future__ import annotations

from ._spatial import (
    SpatialDataError,
    get_image,
    get_library_id,
    image_problem,
    spot_diameter_px,
    spots_px,
    validate_spatial,
)

__all__ = [
    "SpatialDataError",
    "get_image",
    "get_library_id",
    "image_problem",
    "spot_diameter_px",
    "spots_px",
    "validate_spatial",
]
