"""Accessors for the spatial metadata of an AnnData (Space Ranger / squidpy layout).

Layout (as Space Ranger, scanpy and squidpy write it)::

    adata.obsm["spatial"]                      # (n, 2) spot centres, full-resolution pixels, (x, y)
    adata.uns["spatial"][library_id]["images"]["hires" | "lowres"]   # RGB(A) arrays
    adata.uns["spatial"][library_id]["scalefactors"]                 # from scalefactors_json.json
        "tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres", ...

Multiplying full-resolution coordinates by ``tissue_<key>_scalef`` gives pixels of image ``<key>``.
Every function here only reads the AnnData; none modifies it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import InputError

SPATIAL_KEY = "spatial"
IMAGE_KEYS = ("hires", "lowres")  # preference order of image_key="auto"
# Space Ranger's spot_diameter_fullres is that of a 65 µm spot; Visium centres are 100 µm apart.
VISIUM_DIAMETER_TO_PITCH = 0.65
_MIN_INSIDE_FRACTION = 0.5


class SpatialDataError(InputError):
    """Bad spatial input: the message names the problem and how to fix it.

    A :class:`napari_spatialdl.tasks.InputError` (and so a ``ValueError``).
    """


class ReadError(SpatialDataError):
    """A file could not be read: damaged, truncated, or not the format its name says.

    The message names the file, what is wrong with it, and how to get a good copy.
    """


def _warn(message: str) -> None:
    """A UserWarning attributed to the first caller outside this package's io folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _spatial_uns(adata: Any) -> Mapping | None:
    spatial = adata.uns.get(SPATIAL_KEY) if hasattr(adata, "uns") else None
    if spatial is None:
        return None
    if not isinstance(spatial, Mapping):
        raise SpatialDataError(
            f"adata.uns['spatial'] is a {type(spatial).__name__}, but it must be a dict "
            "{library_id: {'images': {...}, 'scalefactors': {...}}} as Space Ranger/squidpy write it. "
            "Delete it (del adata.uns['spatial']) or rebuild it in that layout."
        )
    return spatial


def get_library_id(adata: Any, library_id: str | None = None) -> str | None:
    """The library (slide/capture area) whose image and scale factors to use.

    Parameters
    ----------
    adata
        AnnData, possibly with ``uns['spatial']``.
    library_id
        The library to use; ``None`` picks the only one there is.

    Returns
    -------
    str or None
        The library id, or ``None`` when the AnnData has no ``uns['spatial']`` (no image).

    Raises
    ------
    SpatialDataError
        When several libraries exist and none was named, or the named one does not exist.
    """
    spatial = _spatial_uns(adata)
    if not spatial:
        if library_id is not None:
            raise SpatialDataError(
                f"library_id={library_id!r} was given, but adata.uns['spatial'] is missing or empty, "
                "so there is no library (image and scale factors) to pick. Pass library_id=None."
            )
        return None
    choices = [str(k) for k in spatial.keys()]
    if library_id is None:
        if len(choices) == 1:
            return choices[0]
        raise SpatialDataError(
            f"adata.uns['spatial'] holds {len(choices)} libraries ({', '.join(choices)}): pass "
            "library_id= to choose which one's image and scale factors to use."
        )
    if library_id not in spatial:
        raise SpatialDataError(
            f"library_id={library_id!r} is not in adata.uns['spatial']; available: {', '.join(choices)}."
        )
    return library_id


def _library(adata: Any, library_id: str | None) -> tuple[str | None, Mapping, Mapping]:
    lib = get_library_id(adata, library_id)
    if lib is None:
        return None, {}, {}
    entry = adata.uns[SPATIAL_KEY][lib]
    if not isinstance(entry, Mapping):
        raise SpatialDataError(
            f"adata.uns['spatial'][{lib!r}] is a {type(entry).__name__}, not a dict with 'images' "
            "and 'scalefactors'. Rebuild it in the Space Ranger/squidpy layout."
        )
    images = entry.get("images") or {}
    scalefactors = entry.get("scalefactors") or {}
    if not isinstance(images, Mapping) or not isinstance(scalefactors, Mapping):
        raise SpatialDataError(
            f"adata.uns['spatial'][{lib!r}]['images'] and ['scalefactors'] must be dicts "
            f"(got {type(images).__name__} and {type(scalefactors).__name__})."
        )
    return lib, images, scalefactors


def _subsample(img: np.ndarray, max_side: int = 256) -> np.ndarray:
    step = max(1, int(np.ceil(max(img.shape[:2]) / max_side)))
    return np.asarray(img[::step, ::step])


def image_problem(img: Any) -> str | None:
    """Why ``img`` cannot be shown as the tissue image (blank, wrong shape, bad values), or None."""
    arr = np.asarray(img) if not isinstance(img, np.ndarray) else img
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        return f"it has shape {arr.shape}, not (height, width) or (height, width, 3|4)"
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        return f"it is only {arr.shape[1]}x{arr.shape[0]} pixels"
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        return f"its values are of type {arr.dtype}, not numbers"
    sub = _subsample(arr).astype(np.float64)
    if not np.isfinite(sub).all():
        return "it contains NaN or infinite values"
    if sub.min() < 0:
        return f"it has negative values ({sub.min():.3g} to {sub.max():.3g}), so it is not an RGB image"
    if sub.ndim == 3 and sub.shape[2] == 4 and np.all(sub[..., 3] == 0):
        return "it is fully transparent (alpha channel all zero)"
    colour = sub[..., :3] if sub.ndim == 3 else sub
    full_scale = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else max(1.0, float(sub.max()))
    if colour.std() < 0.005 * full_scale:
        return f"it is blank (near-constant, value ~{colour.mean():.3g})"
    return None


def _scalef(scalefactors: Mapping, lib: str, key: str) -> float:
    name = f"tissue_{key}_scalef"
    if name not in scalefactors:
        have = ", ".join(map(str, scalefactors)) or "none"
        raise SpatialDataError(
            f"adata.uns['spatial'][{lib!r}]['scalefactors'] has no {name!r}, needed to place the spots "
            f"on the {key!r} image (scale factors present: {have}). Fix: copy it from Space Ranger's "
            f"spatial/scalefactors_json.json, e.g. adata.uns['spatial'][{lib!r}]['scalefactors']"
            f"[{name!r}] = <value>, or read the folder with napari_spatialdl.read_visium."
        )
    try:
        value = float(np.asarray(scalefactors[name]).ravel()[0])
    except (TypeError, ValueError, IndexError) as err:
        raise SpatialDataError(
            f"Scale factor {name!r} of library {lib!r} is {scalefactors[name]!r}, not a number."
        ) from err
    if not np.isfinite(value) or value <= 0:
        raise SpatialDataError(
            f"Scale factor {name!r} of library {lib!r} is {value}; it must be a positive number."
        )
    return value


def get_image(
    adata: Any, library_id: str | None = None, image_key: str = "auto"
) -> tuple[np.ndarray | None, float, str | None]:
    """The tissue image to show under the spots, and how to scale coordinates onto it.

    Parameters
    ----------
    adata
        AnnData with ``uns['spatial']`` (otherwise there is no image).
    library_id
        Library to use; ``None`` picks the only one.
    image_key
        ``"hires"``, ``"lowres"`` (or another key of ``images``), or ``"auto"``: the hires image
        unless it is missing or unusable (blank, bad values), then lowres; a ``UserWarning``
        names the fallback.

    Returns
    -------
    image, scalef, key
        The image array as stored (RGB/RGBA), the factor taking ``obsm['spatial']`` (full-resolution
        pixels) to this image's pixels, and the key used. ``(None, 1.0, None)`` when there is no image.

    Raises
    ------
    SpatialDataError
        Unknown ``image_key``, or the image's ``tissue_<key>_scalef`` is missing.
    """
    lib, images, scalefactors = _library(adata, library_id)
    if lib is None or not images:
        if image_key not in ("auto", None):
            where = "adata.uns['spatial'] is absent" if lib is None else f"library {lib!r} has no images"
            raise SpatialDataError(f"image_key={image_key!r} was asked for, but {where}. Use image_key='auto'.")
        return None, 1.0, None
    if image_key in ("auto", None):
        order = [k for k in IMAGE_KEYS if k in images] + sorted(k for k in images if k not in IMAGE_KEYS)
        rejected: list[str] = []
        for key in order:
            problem = image_problem(images[key])
            if problem is None:
                if rejected:
                    _warn(
                        f"Library {lib!r}: {'; '.join(rejected)}. Using the {key!r} image instead."
                    )
                return images[key], _scalef(scalefactors, lib, key), key
            rejected.append(f"the {key!r} image is not usable ({problem})")
        _warn(
            f"Library {lib!r}: {'; '.join(rejected)}. The spots are shown without a tissue image."
        )
        return None, 1.0, None
    if image_key not in images:
        raise SpatialDataError(
            f"image_key={image_key!r} is not an image of library {lib!r}; available: "
            f"{', '.join(map(str, images))}. Use image_key='auto' to pick one."
        )
    return images[image_key], _scalef(scalefactors, lib, image_key), image_key


def full_res_coordinates(adata: Any, *, obj: str = "adata") -> np.ndarray:
    """``adata.obsm['spatial']`` as an (n_obs, 2) float array of (x, y), checked.

    Refused (:class:`SpatialDataError`, naming ``obj``): missing, not numbers, not a 2-D array,
    fewer than 2 columns, a number of rows other than ``n_obs``, NaN or infinite values. With 3
    or more columns (x, y, z) the first two are used.
    """
    where = f"{obj}.obsm['spatial']"
    if not hasattr(adata, "obsm") or SPATIAL_KEY not in adata.obsm:
        raise SpatialDataError(
            f"{where} is missing: there are no spot coordinates to place on the tissue. "
            "Read a Space Ranger folder with napari_spatialdl.read_visium, pass coords= to "
            f"read_counts_csv, or set {where} to an (n_obs, 2) array of x, y."
        )
    raw = adata.obsm[SPATIAL_KEY]
    values = raw.to_numpy() if hasattr(raw, "to_numpy") else raw
    if hasattr(values, "toarray"):
        values = values.toarray()
    values = np.asarray(values)
    fix = f"Set {where} to an (n_obs, 2) array of numbers: x, y per spot."
    if values.dtype.kind == "O":
        if not all(isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_)
                   for v in values.ravel()):
            raise SpatialDataError(f"{where} holds values that are not numbers (dtype object). {fix}")
    elif values.dtype.kind not in "iuf":
        raise SpatialDataError(f"{where} holds {values.dtype} values, not numbers. {fix}")
    xy = np.asarray(values, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise SpatialDataError(
            f"{where} has shape {xy.shape}; it must be (n_obs, 2) with columns x, y"
            + (": one column is not a position on the tissue (neighbours would be computed on x alone)"
               if xy.ndim == 2 and xy.shape[1] == 1 else "")
            + f". {fix}"
        )
    n_obs = getattr(adata, "n_obs", None)
    if n_obs is not None and xy.shape[0] != n_obs:
        raise SpatialDataError(
            f"{where} has {xy.shape[0]} rows but {obj} has {n_obs} observations: one (x, y) per observation "
            f"is needed. {fix}"
        )
    xy = xy[:, :2]
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise SpatialDataError(
            f"{int(bad.sum())} of {len(xy)} spots have NaN or infinite coordinates in {where}: drop them, "
            f"e.g. {obj} = {obj}[np.isfinite({obj}.obsm['spatial']).all(1)].copy()."
        )
    return xy


def _fraction_inside(xy: np.ndarray, width: int, height: int) -> float:
    if len(xy) == 0:
        return 1.0
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= width - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= height - 0.5)
    return float(inside.mean())


def spots_px(adata: Any, library_id: str | None = None, image_key: str = "auto") -> np.ndarray:
    """Spot centres (x, y) in pixels of the image :func:`get_image` picks.

    Without an image the coordinates are returned as they are (full-resolution units).

    Returns
    -------
    np.ndarray
        (n_obs, 2) float array: column 0 is x (image column), column 1 is y (image row).

    Raises
    ------
    SpatialDataError
        ``obsm['spatial']`` missing or malformed, or most spots fall outside the image (the
        image does not belong to these coordinates: wrong library, wrong scale factor, x/y swapped).
    """
    xy_full = full_res_coordinates(adata)
    img, scalef, key = get_image(adata, library_id, image_key)
    return _to_image_px(adata, library_id, xy_full, img, scalef, key)


def _to_image_px(adata: Any, library_id: str | None, xy_full: np.ndarray, img: np.ndarray | None,
                 scalef: float, key: str | None) -> np.ndarray:
    xy = xy_full * scalef
    if img is None:
        return xy
    height, width = img.shape[:2]
    frac = _fraction_inside(xy, width, height)
    if frac < _MIN_INSIDE_FRACTION:
        lib = get_library_id(adata, library_id)
        hint = ""
        if _fraction_inside(xy[:, ::-1], width, height) >= _MIN_INSIDE_FRACTION:
            hint = (
                " Swapping the two columns would fit: obsm['spatial'] looks like (y, x); "
                "it must be (x, y): adata.obsm['spatial'] = adata.obsm['spatial'][:, ::-1]."
            )
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        raise SpatialDataError(
            f"Only {frac:.0%} of the spots fall inside the {key!r} image of library {lib!r} "
            f"({width}x{height} px): scaled by tissue_{key}_scalef={scalef:.6g}, the spots span "
            f"x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}. The image does not match the "
            "coordinates: check library_id (wrong library?), the scale factor (wrong "
            "scalefactors_json.json?), and that obsm['spatial'] is in full-resolution pixels."
            + hint
        )
    return xy


def _median_nn_distance(xy: np.ndarray) -> float | None:
    if len(xy) < 2:
        return None
    from scipy.spatial import cKDTree

    unique = np.unique(xy, axis=0)
    if len(unique) < 2:
        return None
    dist, _ = cKDTree(unique).query(unique, k=2)
    return float(np.median(dist[:, 1]))


def _visium_pitch(adata: Any, xy: np.ndarray) -> float | None:
    """Centre-to-centre spot distance from the Visium grid indices (exact even for sparse spots).

    On the Visium hexagonal grid neighbours differ by 2 in ``array_col`` within a row, and by 1 in
    both ``array_row`` and ``array_col`` across rows; so (col / 2, row * sqrt(3) / 2) is the spot
    position in units of the pitch, and pixels per pitch follow from any pair of spots.
    """
    obs = getattr(adata, "obs", None)
    if obs is None or not {"array_row", "array_col"} <= set(obs.columns) or len(xy) < 2:
        return None
    try:
        grid = np.column_stack([obs["array_col"].to_numpy(float) / 2,
                                obs["array_row"].to_numpy(float) * np.sqrt(3) / 2])
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
    return float(np.median(d_px[ok] / d_grid[ok]))


def spot_diameter_px(adata: Any, library_id: str | None = None, image_key: str = "auto") -> float:
    """Spot diameter in pixels of the image :func:`get_image` picks.

    ``scalefactors['spot_diameter_fullres'] * scalef`` when known; otherwise estimated as 0.65 x the
    centre-to-centre distance (as Space Ranger defines it: a 65 µm spot, centres 100 µm apart), taken from the grid indices
    ``obs['array_row'|'array_col']`` when present, else from the median nearest-neighbour distance.
    A ``UserWarning`` says so when an image with scale factors exists but the diameter is missing.
    """
    lib, _, scalefactors = _library(adata, library_id)
    img, scalef, key = get_image(adata, library_id, image_key)
    if "spot_diameter_fullres" in scalefactors:
        try:
            diameter = float(np.asarray(scalefactors["spot_diameter_fullres"]).ravel()[0])
        except (TypeError, ValueError, IndexError):
            diameter = float("nan")
        if np.isfinite(diameter) and diameter > 0:
            return diameter * scalef
    xy = _to_image_px(adata, library_id, full_res_coordinates(adata), img, scalef, key)
    nn = _visium_pitch(adata, xy) or _median_nn_distance(xy)
    if nn is None or nn <= 0:
        estimate = 1.0 if img is None else max(1.0, 0.01 * max(img.shape[:2]))
    else:
        estimate = VISIUM_DIAMETER_TO_PITCH * nn
    if img is not None:
        _warn(
            f"adata.uns['spatial'][{lib!r}]['scalefactors'] has no usable 'spot_diameter_fullres': "
            f"spot diameter estimated from the spot spacing as {estimate:.3g} px on the {key!r} image. "
            "Add it from Space Ranger's scalefactors_json.json for the exact size."
        )
    return float(estimate)


def validate_spatial(adata: Any) -> list[str]:
    """Check ``uns['spatial']`` (dicts, image arrays, scale factor per image).

    Returns the list of non-fatal problems (e.g. a blank image); raises :class:`SpatialDataError`
    for a structure the accessors cannot use.
    """
    spatial = _spatial_uns(adata)
    notes: list[str] = []
    if not spatial:
        return notes
    for lib in spatial:
        lib_id, images, scalefactors = _library(adata, str(lib))
        for key, img in images.items():
            if not hasattr(img, "shape"):
                raise SpatialDataError(
                    f"adata.uns['spatial'][{lib_id!r}]['images'][{key!r}] is a {type(img).__name__}, "
                    "not an image array."
                )
            _scalef(scalefactors, lib_id, key)
            problem = image_problem(img)
            if problem:
                notes.append(f"library {lib_id!r}: image {key!r} is not usable ({problem})")
    return notes
