"""Physical size of the spot coordinates: micrometres per full-resolution pixel.

``obsm['spatial']`` holds full-resolution pixels; how many µm one of them is follows from what a
Space Ranger output carries, in this order:

1. ``scalefactors['microns_per_pixel']`` when present (Space Ranger HD writes it; anyone may set it);
2. the Visium grid (``obs['array_row'|'array_col']``): spot centres are 100 µm apart on the
   hexagonal lattice, so the pixels between grid neighbours give the scale exactly;
3. ``scalefactors['spot_diameter_fullres']``: Space Ranger defines it as the diameter of a 65 µm
   spot (the physical spot is 55 µm; the 65 µm is what ``scalefactors_json.json`` measures), used
   only when the spots are spaced as Visium spots are (centres at least 1.3 diameters apart), not
   for bins or cells that touch.

Data read from a SpatialData (``uns['spatialdl_spatialdata']``) keep the units of its coordinate
system (so that the layers line up with napari-spatialdata's): no µm scale is derived for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: centre-to-centre distance of neighbouring Visium spots
VISIUM_PITCH_UM = 100.0
#: the diameter Space Ranger's ``spot_diameter_fullres`` stands for
SPACERANGER_SPOT_UM = 65.0
#: Visium spots are 100 / 65 = 1.54 diameters apart; bins and cells touch (1 diameter)
_MIN_SPACING_PER_DIAMETER = 1.3
#: the link key of a SpatialData input (see ``_spatialdata.LINK_KEY``)
_SPATIALDATA_LINK = "spatialdl_spatialdata"


def _positive(value: Any) -> float | None:
    try:
        x = float(np.asarray(value, dtype=np.float64).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return None
    return x if np.isfinite(x) and x > 0 else None


def _grid_pitch_px(adata: Any, xy: np.ndarray) -> float | None:
    """Pixels between neighbouring Visium grid positions, when the grid indices are a hexagonal lattice.

    On the Visium grid neighbours differ by 2 in ``array_col`` within a row and by 1 in both
    indices across rows, so ``(col / 2, row * sqrt(3) / 2)`` is the position in pitches. The
    pixels per pitch must agree over the spots (within 5 % for nine in ten of them): other
    grids (the square bins of Visium HD) fail that test and give None.
    """
    obs = getattr(adata, "obs", None)
    if obs is None or not {"array_row", "array_col"} <= set(obs.columns) or len(xy) < 2:
        return None
    try:
        grid = np.column_stack([obs["array_col"].to_numpy(dtype=float) / 2,
                                obs["array_row"].to_numpy(dtype=float) * np.sqrt(3) / 2])
    except (TypeError, ValueError):
        return None
    if not np.isfinite(grid).all():
        return None
    from scipy.spatial import cKDTree

    _, idx = cKDTree(xy).query(xy, k=2)
    d_px = np.linalg.norm(xy - xy[idx[:, 1]], axis=1)
    d_grid = np.linalg.norm(grid - grid[idx[:, 1]], axis=1)
    ok = (d_grid > 0) & (d_px > 0)
    if not ok.any():
        return None
    ratio = d_px[ok] / d_grid[ok]
    pitch = float(np.median(ratio))
    if np.mean(np.abs(ratio / pitch - 1.0) <= 0.05) < 0.9:
        return None
    return pitch


def _median_spacing(xy: np.ndarray) -> float | None:
    unique = np.unique(xy, axis=0)
    if len(unique) < 2:
        return None
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(unique).query(unique, k=2)
    return float(np.median(dist[:, 1]))


def microns_per_pixel(adata: Any, library_id: str | None = None) -> float | None:
    """Micrometres per unit of ``adata.obsm['spatial']`` (a full-resolution pixel), if known.

    Parameters
    ----------
    adata
        Spatial AnnData (``obsm['spatial']``; scale factors in ``uns['spatial'][library_id]``).
    library_id
        Which library's scale factors; ``None`` picks the only one.

    Returns
    -------
    float or None
        µm per full-resolution pixel (see the module docstring for where it comes from); None when
        nothing says it (no Visium grid or scale factors, or coordinates of a SpatialData
        coordinate system). Divide by ``tissue_<key>_scalef`` for µm per pixel of image ``<key>``.
    """
    from ._spatial import _library, full_res_coordinates

    uns = getattr(adata, "uns", {})
    if isinstance(uns.get(_SPATIALDATA_LINK), Mapping):
        return None
    _, _, scalefactors = _library(adata, library_id)
    explicit = _positive(scalefactors.get("microns_per_pixel")) if scalefactors else None
    if explicit is not None:
        return explicit
    xy = full_res_coordinates(adata)
    pitch = _grid_pitch_px(adata, xy)
    if pitch is not None:
        return VISIUM_PITCH_UM / pitch
    diameter = _positive(scalefactors.get("spot_diameter_fullres")) if scalefactors else None
    if diameter is None:
        return None
    spacing = _median_spacing(xy)
    if spacing is None or spacing < _MIN_SPACING_PER_DIAMETER * diameter:
        return None
    return SPACERANGER_SPOT_UM / diameter


__all__ = ["SPACERANGER_SPOT_UM", "VISIUM_PITCH_UM", "microns_per_pixel"]
