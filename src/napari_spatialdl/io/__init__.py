"""Readers, writers and spatial-metadata accessors (no Qt, no napari).

Everything spatial follows the Space Ranger/squidpy layout: ``obsm['spatial']`` holds spot
centres (x, y) in full-resolution pixels, ``uns['spatial'][library_id]`` the images and scale
factors. See :mod:`napari_spatialdl.io._spatial`.

Names are imported on first use, so that napari's reader check (:mod:`._npe2`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "InputError": ".._errors",
    "ReadError": "._spatial",
    "SpatialDataError": "._spatial",
    "full_res_coordinates": "._spatial",
    "get_image": "._spatial",
    "get_library_id": "._spatial",
    "image_problem": "._spatial",
    "spot_diameter_px": "._spatial",
    "spots_px": "._spatial",
    "validate_spatial": "._spatial",
    "find_spaceranger_root": "._visium",
    "read_visium": "._visium",
    "read_h5ad": "._h5ad",
    "read_counts_csv": "._csv",
    "write_h5ad": "._write",
    "read_spatialdata": "._spatialdata",
    "read_visium_hd": "._spatialdata",
    "read_xenium": "._spatialdata",
    "write_spatialdata": "._spatialdata",
    "spatialdata_to_anndata": "._spatialdata",
    "result_keys": "._spatialdata",
}

__all__ = [
    "InputError",
    "ReadError",
    "SpatialDataError",
    "find_spaceranger_root",
    "full_res_coordinates",
    "get_image",
    "get_library_id",
    "image_problem",
    "read_counts_csv",
    "read_h5ad",
    "read_spatialdata",
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "result_keys",
    "spatialdata_to_anndata",
    "spot_diameter_px",
    "spots_px",
    "validate_spatial",
    "write_h5ad",
    "write_spatialdata",
]

if TYPE_CHECKING:
    from .._errors import InputError
    from ._csv import read_counts_csv
    from ._h5ad import read_h5ad
    from ._spatial import (
        ReadError,
        SpatialDataError,
        full_res_coordinates,
        get_image,
        get_library_id,
        image_problem,
        spot_diameter_px,
        spots_px,
        validate_spatial,
    )
    from ._spatialdata import (
        read_spatialdata,
        read_visium_hd,
        read_xenium,
        result_keys,
        spatialdata_to_anndata,
        write_spatialdata,
    )
    from ._visium import find_spaceranger_root, read_visium
    from ._write import write_h5ad


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
