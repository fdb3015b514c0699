"""AnnData -> napari layer data: the tissue image and the spots, coloured by what you choose.

Pure functions (no napari, no Qt), in the style of napari-spatialdata: the factories return
napari *layer-data tuples* ``(data, kwargs, layer_type)`` without adding them to a viewer, so
the reader, :func:`napari_spatialdl.show`, the widgets and the tests all build the same layers.

Conventions (DESIGN.md, "GUI behaviour"):

- the tissue is an ``image`` layer in pixels of the image shown (hires, else lowres);
- the spots are a ``points`` layer in ``(row, col) = (y, x)`` pixels of that image, of size the
  spot diameter in those pixels; ``features`` hold the barcode and the coloured values (napari
  shows them in the status bar when the mouse is over a spot);
- when the size of a pixel in µm is known (Visium grid, scale factors), both layers get
  ``scale`` = µm per pixel and ``units`` µm, so world coordinates (and napari's scale bar) are µm
  while the layer data stay in image pixels;
- ``metadata`` links back: ``{'adata', 'library_id', 'image_key', 'scalefactor', 'spatialdl_spots'}``;
- world coordinates are micrometres when the physical size of a pixel is known
  (:func:`napari_spatialdl.io._microns.microns_per_pixel`: Visium grid or scale factors): both
  layers get ``scale`` (µm per pixel of the image shown) and ``units`` ``('um', 'um')``, so napari's
  scale bar reads true µm; otherwise world coordinates are those pixels.

Colour keys: a gene (``var_names``, values from ``X`` or ``layers[layer]``), an ``obs`` column
(categorical or numeric) or an ``obsm`` column written ``"obsm_key:column"`` (a DataFrame column
name, or an integer index for arrays), e.g. ``"spatialdl_proportions:Astrocyte"``, ``"X_spatialdl:0"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._constants import (
    ABUNDANCE_KEY,
    CELL_TYPE_KEY,
    CLUSTERS_KEY,
    CONFIDENCE_KEY,
    DOMINANT_KEY,
    IMPUTED_LAYER,
    LATENT_KEY,
    PREDICTED_GENES_KEY,
    PROPORTIONS_KEY,
    REGION_KEY,
)
from .io import get_image, get_library_id, spot_diameter_px, spots_px
from .io._microns import microns_per_pixel

LayerDataTuple = tuple[Any, dict, str]
Kind = Literal["categorical", "numeric"]

#: colour of spots with a missing value (NaN, missing category); scanpy's ``na_color`` family
NA_COLOR = "#b4b4b4"
#: obsm entries not offered as colours (coordinates, not measurements)
_SKIP_OBSM = ("spatial",)
#: arrays in obsm with more columns than this are not listed in the drop-downs (still usable by key)
MAX_LISTED_OBSM_COLUMNS = 200

#: metadata keys on the spots layer
META_ADATA = "adata"
META_FLAG = "spatialdl_spots"
META_LEGEND = "spatialdl_legend"
META_COLOR = "spatialdl_color"
META_PINNED = "spatialdl_pinned_features"
BARCODE = "barcode"
#: ``adata.uns`` entry of a saved file: how its spots were coloured when it was saved
DISPLAY_KEY = "spatialdl_display"
#: opacity of the tissue image while results are shown (the stain's pinks and purples otherwise
#: compete with the colours of the result); image metadata flag once dimmed
DIMMED_IMAGE_OPACITY = 0.45
META_DIMMED = "spatialdl_dimmed"


class ColorKeyError(KeyError):
    """A colour key that names nothing in the AnnData; the message lists what exists."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


@dataclass
class LegendInfo:
    """What a legend or colour bar shows for the current colouring.

    Attributes
    ----------
    kind
        ``"categorical"`` (swatches) or ``"numeric"`` (colour bar).
    label
        What is coloured, in plain words (:func:`describe_key`), the legend's title.
    categories
        Category -> hex colour, in the categories' order (categorical only).
    cmap
        Matplotlib colormap name (numeric only).
    limits
        ``(low, high)`` values at the ends of the colour bar (numeric only).
    n_missing
        Number of spots with no value (drawn in :data:`NA_COLOR`).
    key
        The key coloured by (``"spatialdl_proportions:Astrocyte"``), for code.
    note
        A remark on the values (e.g. that every spot has the same value).
    """

    kind: Kind
    label: str = ""
    categories: dict[str, str] = field(default_factory=dict)
    cmap: str | None = None
    limits: tuple[float, float] | None = None
    n_missing: int = 0
    na_color: str = NA_COLOR
    key: str = ""
    note: str = ""


# ---------------------------------------------------------------------------------------------
# keys and values
# ---------------------------------------------------------------------------------------------


def _limited(names: Sequence[str], n: int = 12) -> str:
    names = list(map(str, names))
    if len(names) <= n:
        return ", ".join(names) if names else "none"
    return ", ".join(names[:n]) + f", ... ({len(names)} in all)"


def colorable_keys(adata: Any) -> dict[str, list[str]]:
    """Everything the spots can be coloured by, for drop-downs.

    Returns
    -------
    dict
        ``{"genes": var_names, "obs": obs columns, "obsm": ["obsm_key:column", ...]}``.
        ``obsm['spatial']`` is left out, and arrays with more than
        :data:`MAX_LISTED_OBSM_COLUMNS` columns are not enumerated.
    """
    obsm: list[str] = []
    for key in adata.obsm.keys():
        if key in _SKIP_OBSM:
            continue
        value = adata.obsm[key]
        if isinstance(value, pd.DataFrame):
            obsm.extend(f"{key}:{col}" for col in value.columns)
            continue
        shape = getattr(value, "shape", ())
        if len(shape) == 1:
            obsm.append(f"{key}:0")
        elif len(shape) == 2 and shape[1] <= MAX_LISTED_OBSM_COLUMNS:
            obsm.extend(f"{key}:{i}" for i in range(shape[1]))
    return {
        "genes": [str(g) for g in adata.var_names],
        "obs": [str(c) for c in adata.obs.columns],
        "obsm": obsm,
    }


def _is_categorical_series(values: pd.Series) -> bool:
    return (
        isinstance(values.dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(values.dtype)
        or pd.api.types.is_object_dtype(values.dtype)
        or pd.api.types.is_string_dtype(values.dtype)
    )


def _from_series(values: pd.Series, what: str) -> tuple[pd.Categorical | np.ndarray, Kind]:
    if _is_categorical_series(values):
        if isinstance(values.dtype, pd.CategoricalDtype):
            # the column's own codes (a copy): no object array of labels, no re-encoding
            cat = values.array.copy() if isinstance(values.array, pd.Categorical) else pd.Categorical(
                values.to_numpy(), dtype=values.dtype)
        else:
            non_null = values[values.notna()]
            cat = pd.Categorical(values.to_numpy(), categories=sorted(non_null.unique(), key=str))
            # mixed types / booleans: categories as strings keep legends readable
        return cat, "categorical"
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan), "numeric"
    raise ColorKeyError(f"{what} holds values of type {values.dtype}, which cannot be coloured.")


def _gene_values(adata: Any, gene: str, layer: str | None) -> np.ndarray:
    idx = adata.var_names.get_loc(gene)
    if not isinstance(idx, (int, np.integer)):
        raise ColorKeyError(
            f"Gene {gene!r} appears more than once in var_names; make them unique first "
            "(adata.var_names_make_unique())."
        )
    if layer is None:
        matrix = adata.X
        where = "adata.X"
    else:
        if layer not in adata.layers:
            raise ColorKeyError(
                f"layer={layer!r} is not in adata.layers; available: {_limited(list(adata.layers))} "
                "(or layer=None for adata.X)."
            )
        matrix = adata.layers[layer]
        where = f"adata.layers[{layer!r}]"
    if matrix is None:
        raise ColorKeyError(f"{where} is empty, so gene {gene!r} has no values to colour by.")
    return matrix_column(matrix, int(idx))


#: CSR entries scanned per block when looking for one column (a block of indices stays in cache)
_SCAN_BLOCK = 1 << 20
#: CSR matrices with more stored entries than this are scanned by several threads
_PARALLEL_SCAN = 16_000_000


def _scan_rows(indices: np.ndarray, indptr: np.ndarray, j: int, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and positions (ascending) of the entries of column ``j`` in the blocks of rows
    ``bounds[k]:bounds[k + 1]``: one comparison per stored entry of a block (a block of indices
    stays in cache), the rows looked up in that block's part of ``indptr``."""
    rows, positions = [], []
    for r0, r1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        start, stop = int(indptr[r0]), int(indptr[r1])
        hits = np.flatnonzero(indices[start:stop] == j)
        if not len(hits):
            continue
        hits += start
        positions.append(hits)
        rows.append(np.searchsorted(indptr[r0 : r1 + 1], hits, side="right") - 1 + r0)
    if not rows:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    return np.concatenate(rows), np.concatenate(positions)


def _csr_column_entries(indices: np.ndarray, indptr: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and positions of the entries of column ``j`` of a CSR matrix (ascending), scanning
    its stored column indices in blocks of rows of about :data:`_SCAN_BLOCK` entries, by several
    threads for a large matrix (numpy's comparisons release the GIL)."""
    nnz = int(indptr[-1])
    n_rows = len(indptr) - 1
    # row boundaries every _SCAN_BLOCK entries (a block holds whole rows)
    bounds = np.unique(np.r_[0, np.searchsorted(indptr, np.arange(_SCAN_BLOCK, nnz, _SCAN_BLOCK), side="left"),
                             n_rows]).astype(np.int64)
    workers = min(4, os.cpu_count() or 1, len(bounds) - 1) if nnz > _PARALLEL_SCAN else 1
    if workers <= 1:
        return _scan_rows(indices, indptr, j, bounds)
    from concurrent.futures import ThreadPoolExecutor

    cuts = np.linspace(0, len(bounds) - 1, workers + 1).astype(np.int64)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda c: _scan_rows(indices, indptr, j, bounds[c[0] : c[1] + 1]),
                              zip(cuts[:-1].tolist(), cuts[1:].tolist())))
    return np.concatenate([r for r, _ in parts]), np.concatenate([q for _, q in parts])


def matrix_column(matrix: Any, j: int) -> np.ndarray:
    """Column ``j`` of an observations x genes matrix as float64, without densifying the matrix.

    CSC: the column's slice. CSR: one vectorised pass over the stored column indices (blocks of
    rows, several threads for large matrices), each block's rows found in its part of
    ``indptr``; duplicate entries are summed as ``toarray`` would. Dense arrays: the column. Anything else (backed/lazy
    matrices): ``matrix[:, j]``, then that one column made dense.

    Parameters
    ----------
    matrix
        ``adata.X`` or an ``adata.layers`` entry.
    j
        Column index.
    """
    n = matrix.shape[0]
    fmt = getattr(matrix, "format", None) if sp.issparse(matrix) else None
    if fmt == "csc":
        start, stop = int(matrix.indptr[j]), int(matrix.indptr[j + 1])
        rows, vals = np.asarray(matrix.indices[start:stop]), np.asarray(matrix.data[start:stop])
    elif fmt == "csr":
        rows, pos = _csr_column_entries(np.asarray(matrix.indices), np.asarray(matrix.indptr), j)
        vals = np.asarray(matrix.data)[pos]
    elif isinstance(matrix, np.ndarray):
        return np.asarray(matrix[:, j], dtype=np.float64).ravel()
    else:
        column = matrix[:, j]
        if sp.issparse(column):  # one column: its own CSC form, then as above
            return matrix_column(sp.csc_matrix(column.reshape((n, 1))), 0)
        return np.asarray(column, dtype=np.float64).ravel()
    if len(rows) and np.all(np.diff(rows) > 0):  # canonical (no duplicates): place the values
        out = np.zeros(n, dtype=np.float64)
        out[rows] = vals
        return out
    return np.bincount(rows, weights=np.asarray(vals, dtype=np.float64), minlength=n).astype(np.float64)


def _prediction_factors_key(adata: Any, obsm_key: str) -> str | None:
    """The obsm key of the factors of a compact gene prediction named by ``obsm_key`` (its
    factors' key, or the table key it stands in for), else None."""
    for name in (obsm_key, f"{obsm_key}_factors"):
        if name not in adata.obsm:
            continue
        for entry in adata.uns.values():
            if isinstance(entry, Mapping) and "loadings" in entry and str(entry.get("factors_key", "")) == name:
                return name
    return None


def _imputation_key(adata: Any, obsm_key: str) -> str | None:
    """The key of a compact imputation (its decoder is ``uns[key + '_decoder']``) whose latent
    ``obsm_key`` is (or ``obsm_key + '_latent'``), else None."""
    for name in (obsm_key, f"{obsm_key}_latent"):
        if name not in adata.obsm:
            continue
        for uns_key, entry in adata.uns.items():
            if (str(uns_key).endswith("_decoder") and isinstance(entry, Mapping) and "head_weight" in entry
                    and str(entry.get("latent_key", "")) == name):
                return str(uns_key)[: -len("_decoder")]
    return None


def _compact_prediction(adata: Any, obsm_key: str, column: str) -> np.ndarray | None:
    """A gene decoded from a compact result when ``obsm_key:column`` names one: a gene predicted
    from a reference (``'spatialdl_predicted_genes:Gad1'``: the table when the run wrote one,
    else factors x loadings) or a gene of a compact imputation (``'spatialdl_imputed_latent:Gad1'``);
    only that gene is computed, no observations x genes matrix is built."""
    if obsm_key in adata.obsm and isinstance(adata.obsm[obsm_key], pd.DataFrame):
        return None  # a table: read as any DataFrame column
    imputation = _imputation_key(adata, obsm_key)
    if imputation is not None and column in adata.var_names:
        from .tasks.imputation import reconstruct as decode

        return decode(adata, column, key=imputation)[column].to_numpy(dtype=float)
    factors = _prediction_factors_key(adata, obsm_key)
    if factors is None:
        return None
    from .tasks.gene_prediction import predicted_gene_names, reconstruct

    if column not in predicted_gene_names(adata, factors):
        return None
    return reconstruct(adata, column, key=factors)[column].to_numpy(dtype=float)


def _obsm_values(adata: Any, key: str) -> tuple[pd.Categorical | np.ndarray, Kind] | None:
    if ":" not in key:
        return None
    obsm_key, _, column = key.partition(":")
    predicted = _compact_prediction(adata, obsm_key, column)
    if predicted is not None:
        return predicted, "numeric"
    # the obsm key itself may contain ':'; try the longest prefix that exists
    if obsm_key not in adata.obsm:
        candidates = [k for k in adata.obsm.keys() if key.startswith(f"{k}:")]
        if not candidates:
            return None
        obsm_key = max(candidates, key=len)
        column = key[len(obsm_key) + 1 :]
    value = adata.obsm[obsm_key]
    what = f"adata.obsm[{obsm_key!r}]"
    if isinstance(value, pd.DataFrame):
        if column in value.columns:
            return _from_series(value[column], f"{what}[{column!r}]")
        matches = [c for c in value.columns if str(c) == column]
        if matches:
            return _from_series(value[matches[0]], f"{what}[{column!r}]")
        if column.lstrip("-").isdigit() and -value.shape[1] <= int(column) < value.shape[1]:
            return _from_series(value.iloc[:, int(column)], f"{what} column {column}")
        raise ColorKeyError(
            f"{what} has no column {column!r}; columns: {_limited(list(value.columns))}."
        )
    arr = value.toarray() if sp.issparse(value) else np.asarray(value)
    if arr.ndim == 1:
        arr = arr[:, None]
    if not column.lstrip("-").isdigit():
        raise ColorKeyError(
            f"{what} is an array without column names: write the column as an index, "
            f"e.g. '{obsm_key}:0' (0 to {arr.shape[1] - 1})."
        )
    i = int(column)
    if not -arr.shape[1] <= i < arr.shape[1]:
        raise ColorKeyError(f"{what} has {arr.shape[1]} columns; index {i} is out of range.")
    return _from_series(pd.Series(arr[:, i]), f"{what}[:, {i}]")


def spot_values(
    adata: Any, key: str, *, layer: str | None = None
) -> tuple[pd.Categorical | np.ndarray, Kind]:
    """The per-spot values that ``key`` names, and whether they are categories or numbers.

    Parameters
    ----------
    adata
        The spots' AnnData.
    key
        An ``obs`` column, a gene in ``var_names``, or ``"obsm_key:column"`` (a DataFrame column
        name, or an integer index for arrays). An ``obs`` column wins over a gene of the same name.
    layer
        For genes: the ``adata.layers`` entry to read instead of ``adata.X``.

    Returns
    -------
    values, kind
        ``(pandas.Categorical, "categorical")`` for categorical/string/boolean columns, else
        ``(float ndarray, "numeric")`` with NaN where missing. Length ``n_obs``.

    Raises
    ------
    ColorKeyError
        When ``key`` names nothing; the message lists the obs columns, obsm keys and some genes.
    """
    key = str(key)
    if key in adata.obs.columns:
        return _from_series(adata.obs[key], f"adata.obs[{key!r}]")
    if key in adata.var_names:
        return _gene_values(adata, key, layer), "numeric"
    found = _obsm_values(adata, key)
    if found is not None:
        return found
    obsm = [k for k in adata.obsm.keys() if k not in _SKIP_OBSM]
    raise ColorKeyError(
        f"{key!r} is not an obs column, a gene, or 'obsm_key:column'. "
        f"obs columns: {_limited(list(adata.obs.columns))}; "
        f"obsm keys: {_limited(obsm)} (write e.g. '{obsm[0] if obsm else 'X_spatialdl'}:0'); "
        f"genes ({adata.n_vars}): {_limited(list(adata.var_names), 8)}."
    )


# ---------------------------------------------------------------------------------------------
# plain-word names of keys (legend and colour-bar titles)
# ---------------------------------------------------------------------------------------------

#: obs columns napari-spatialdl writes, in words
_OBS_WORDS = {
    CELL_TYPE_KEY: "Predicted cell type",
    CONFIDENCE_KEY: "Confidence of the predicted cell type",
    CLUSTERS_KEY: "Clusters of the integrated data",
    DOMINANT_KEY: "Dominant cell type",
    REGION_KEY: "Annotated region",
    "true_dominant_cell_type": "Dominant cell type (simulated truth)",
}
#: obsm DataFrames whose columns are cell types: "<type> <word>"
_OBSM_WORDS = {
    PROPORTIONS_KEY: "proportion",
    ABUNDANCE_KEY: "abundance",
    "true_proportions": "proportion (simulated truth)",
    "true_abundance": "abundance (simulated truth)",
}


def _known(key: str, table: Mapping[str, str]) -> tuple[str, str] | None:
    """(words, method suffix) for ``key`` = a known key, or a known key + ``_<method>``."""
    if key in table:
        return table[key], ""
    for base, words in table.items():
        if key.startswith(base + "_") and base.startswith("spatialdl"):
            return words, key[len(base) + 1:]
    return None


def _words(text: str) -> str:
    text = str(text).replace("_", " ").strip()
    return text[:1].upper() + text[1:] if text else text


def describe_key(adata: Any, key: str, layer: str | None = None) -> str:
    """What ``key`` colours, in plain words, for legend and colour-bar titles.

    ``"spatialdl_proportions:Astrocyte"`` -> ``"Astrocyte proportion"``; a gene from the
    imputed layer -> ``"Bcl11b, imputed"``; ``"spatialdl_cell_type"`` -> ``"Predicted cell type"``;
    a result beside another (``spatialdl_cell_type_logreg``) adds its method in brackets; other
    obs columns keep their name with spaces (``"total_counts"`` -> ``"Total counts"``).

    Parameters
    ----------
    adata
        The AnnData the key belongs to.
    key
        A gene, obs column or ``"obsm_key:column"`` (see :func:`spot_values`).
    layer
        For a gene: the layer its values come from.
    """
    key = str(key)
    if key in adata.obs.columns:
        known = _known(key, _OBS_WORDS)
        if known is None:
            return _words(key)
        words, method = known
        return f"{words} ({method})" if method else words
    if key in adata.var_names:
        if layer is None:
            return key
        known = _known(layer, {IMPUTED_LAYER: "imputed"})
        if known is not None:
            return f"{key}, imputed" + (f" ({known[1]})" if known[1] else "")
        return f"{key}, {layer.replace('_', ' ')}"
    obsm_key, _, column = key.partition(":")
    known = _known(obsm_key, _OBSM_WORDS)
    if known is not None and column:
        words, method = known
        return f"{column} {words}" + (f" ({method})" if method else "")
    known = _known(obsm_key.removesuffix("_latent"), {IMPUTED_LAYER: "imputed"})
    if known is not None and column in adata.var_names:
        return f"{column}, imputed" + (f" ({known[1]})" if known[1] else "")
    known = _known(obsm_key.removesuffix("_factors"), {PREDICTED_GENES_KEY: "predicted from the reference"})
    if known is not None and column:
        return f"{column}, {known[0]}" + (f" ({known[1]})" if known[1] else "")
    known = _known(obsm_key, {LATENT_KEY: "integrated"})
    if known is not None and column.isdigit():
        return f"Integrated dimension {int(column) + 1}" + (f" ({known[1]})" if known[1] else "")
    return f"{column} ({obsm_key})" if column else key


# ---------------------------------------------------------------------------------------------
# colours
# ---------------------------------------------------------------------------------------------


def default_palette(n: int) -> list[str]:
    """scanpy's default categorical palette for ``n`` categories (20, 28 or 102 colours)."""
    from scanpy.plotting.palettes import default_20, default_28, default_102

    for palette in (default_20, default_28, default_102):
        if n <= len(palette):
            return list(palette[:n])
    # more than 102 categories: cycle (scanpy would give up and paint them grey)
    return [default_102[i % len(default_102)] for i in range(n)]


def _to_rgba(colors: Sequence[Any]) -> np.ndarray:
    from matplotlib.colors import to_rgba_array

    return np.asarray(to_rgba_array(list(colors)), dtype=np.float32)


def _to_hex(color: Any) -> str:
    from matplotlib.colors import to_hex

    return to_hex(color, keep_alpha=False)


def categories_colors_for(adata: Any, key: str, categories: Sequence[Any]) -> list[str] | None:
    """``adata.uns[f"{key}_colors"]`` when it matches ``categories`` (scanpy's convention), else None."""
    colors = adata.uns.get(f"{key}_colors") if hasattr(adata, "uns") else None
    if colors is None:
        return None
    colors = list(np.asarray(colors).ravel())
    if len(colors) < len(categories):
        return None
    try:
        _to_rgba(colors[: len(categories)])
    except ValueError:
        return None
    return [str(c) for c in colors[: len(categories)]]


def color_for(
    values: Any,
    kind: Kind,
    *,
    categories_colors: Sequence[Any] | Mapping[Any, Any] | None = None,
    cmap: str = "viridis",
    contrast_limits: tuple[float, float] | None = None,
    label: str = "",
) -> tuple[np.ndarray, LegendInfo]:
    """RGBA colours of the spots and what the legend shows.

    Parameters
    ----------
    values
        From :func:`spot_values`: categories (``pandas.Categorical`` or anything
        ``pandas.Categorical`` accepts) or numbers.
    kind
        ``"categorical"`` or ``"numeric"``.
    categories_colors
        Categorical only: one colour per category in order (as in ``adata.uns['<key>_colors']``)
        or a mapping category -> colour; default scanpy's palette.
    cmap
        Numeric only: a matplotlib colormap name.
    contrast_limits
        Numeric only: values mapped to the two ends of the colormap; default the values' min, max.
    label
        What is coloured, for the legend title.

    Returns
    -------
    rgba, legend
        ``(n, 4)`` float32 colours in [0, 1] (missing values grey, :data:`NA_COLOR`) and a
        :class:`LegendInfo`.
    """
    if kind == "categorical":
        cat = values if isinstance(values, pd.Categorical) else pd.Categorical(values)
        categories = list(cat.categories)
        if isinstance(categories_colors, Mapping):
            palette = [categories_colors.get(c, categories_colors.get(str(c), NA_COLOR)) for c in categories]
        elif categories_colors is not None and len(categories_colors) >= len(categories):
            palette = list(categories_colors)[: len(categories)]
        else:
            palette = default_palette(len(categories))
        lut = _to_rgba([*palette, NA_COLOR]) if categories else _to_rgba([NA_COLOR])
        codes = np.asarray(cat.codes).copy()
        codes[codes < 0] = len(categories)  # missing -> the NA colour at the end
        rgba = lut[codes]
        legend = LegendInfo(
            kind="categorical",
            label=label,
            categories={str(c): _to_hex(p) for c, p in zip(categories, palette)},
            n_missing=int((np.asarray(cat.codes) < 0).sum()),
        )
        return rgba, legend
    if kind != "numeric":
        raise ValueError(f"kind must be 'categorical' or 'numeric', not {kind!r}.")
    import matplotlib

    x = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    all_finite = bool(finite.all())
    present = x if all_finite else x[finite]
    vmin, vmax = (float(present.min()), float(present.max())) if len(present) else (0.0, 1.0)
    del present
    if contrast_limits is None:
        lo, hi = vmin, vmax
    else:
        lo, hi = (float(contrast_limits[0]), float(contrast_limits[1]))
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ValueError(f"contrast_limits must be two finite numbers low <= high, not {contrast_limits!r}.")
    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError as err:
        raise ValueError(
            f"Unknown colormap {cmap!r}; use a matplotlib name such as viridis, magma, inferno, "
            "plasma, cividis, Reds, Blues, coolwarm."
        ) from err
    span = hi - lo
    # the colormap's own lookup table, indexed as matplotlib does (int(x * N), 1.0 -> N - 1) on
    # clip((x - lo) / span, 0, 1): the same colours as colormap(scaled), without its float64
    # (n, 4) intermediate; the same float operations done in place (one temporary)
    size = int(colormap.N)
    lut = np.asarray(colormap(np.arange(size) / max(size - 1, 1)), dtype=np.float32)
    if span > 0:
        scaled = np.subtract(x, lo)
        scaled /= span
        np.clip(scaled, 0.0, 1.0, out=scaled)
        if not all_finite:
            scaled[~finite] = 0.0
        scaled *= size
        index = scaled.astype(np.intp)
        del scaled
        np.minimum(index, size - 1, out=index)
    else:  # one value everywhere: the low end of the colormap (not a mid colour that reads as "medium")
        index = np.zeros(len(x), dtype=np.intp)
    rgba = lut[index]
    if not all_finite:
        rgba[~finite] = _to_rgba([NA_COLOR])[0]
    note = ""
    if len(x) and (all_finite or finite.any()) and vmin == vmax:
        note = f"Every spot has the value {_number(vmin)}."
    legend = LegendInfo(
        kind="numeric", label=label, cmap=cmap, limits=(lo, hi),
        n_missing=0 if all_finite else int(len(x) - np.count_nonzero(finite)), note=note,
    )
    return rgba, legend


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:.3g}"


def spot_colors(
    adata: Any,
    key: str,
    *,
    layer: str | None = None,
    cmap: str = "viridis",
    contrast_limits: tuple[float, float] | None = None,
) -> tuple[np.ndarray, LegendInfo, pd.Categorical | np.ndarray]:
    """:func:`spot_values` + :func:`color_for`, categorical colours from ``adata.uns[f"{key}_colors"]``.

    Returns
    -------
    rgba, legend, values
    """
    values, kind = spot_values(adata, key, layer=layer)
    colors = None
    if kind == "categorical":
        colors = categories_colors_for(adata, key, list(values.categories))
    rgba, legend = color_for(values, kind, categories_colors=colors, cmap=cmap,
                             contrast_limits=contrast_limits, label=describe_key(adata, key, layer))
    legend.key = str(key)
    return rgba, legend, values


def feature_column(values: pd.Categorical | np.ndarray) -> pd.Series | np.ndarray:
    """Values as a ``layer.features`` column (categorical stays categorical)."""
    if isinstance(values, pd.Categorical):
        return pd.Series(values)
    values = np.asarray(values)
    if (values.dtype.kind == "f" and len(values) and np.isfinite(values).all()
            and np.all(values == np.round(values)) and np.abs(values).max() < 2**53):
        return values.astype(np.int64)  # counts: napari then shows "1308", not "1.31e+03"
    return values


def spot_features(adata: Any, keys: Sequence[str] = (), *, layer: str | None = None) -> pd.DataFrame:
    """The ``features`` table of the spots layer: the barcode, then one column per key."""
    table = pd.DataFrame({BARCODE: np.asarray(adata.obs_names, dtype=object)})
    for key in keys:
        values, _ = spot_values(adata, key, layer=layer)
        table[str(key)] = feature_column(values)
    return table


# ---------------------------------------------------------------------------------------------
# layer factories
# ---------------------------------------------------------------------------------------------


def _image_kwargs(img: np.ndarray, name: str, scalefactor: float) -> dict:
    rgb = img.ndim == 3 and img.shape[2] in (3, 4)
    kwargs: dict[str, Any] = {"name": name, "rgb": rgb, "metadata": {"spatialdl_image": True,
                                                                     "scalefactor": scalefactor}}
    if np.issubdtype(img.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(img)) <= 1.0 else float(np.nanmax(img))
        kwargs["contrast_limits"] = (0.0, hi)
    elif np.issubdtype(img.dtype, np.integer) and not rgb:
        kwargs["contrast_limits"] = (0.0, float(np.iinfo(img.dtype).max))
    return kwargs


def spatial_layers(
    adata: Any,
    *,
    library_id: str | None = None,
    image_key: str = "auto",
    color: str | None = None,
    name: str | None = None,
    layer: str | None = None,
    cmap: str = "viridis",
    features: Sequence[str] = (),
    contrast_limits: tuple[float, float] | None = None,
) -> list[LayerDataTuple]:
    """napari layer data for a spatial AnnData: the tissue image (if any) and the spots.

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']`` (x, y in full-resolution pixels) and, for the image,
        ``uns['spatial'][library_id]`` with ``images`` and ``scalefactors``.
    library_id
        Which library's image and scale factors; ``None`` picks the only one.
    image_key
        ``"hires"``, ``"lowres"`` or ``"auto"`` (hires unless missing/blank, then lowres).
    color
        What to colour the spots by (see :func:`spot_values`); ``None``: one plain colour.
    name
        Base name of the layers: ``"<name> image"``, ``"<name> spots"`` (default: the library id;
        ``"spots"`` alone without one).
    layer
        For a gene ``color``: the ``adata.layers`` entry to read instead of ``X``.
    cmap
        Colormap for numeric colours.
    features
        More keys (see :func:`spot_values`) to put in the layer's ``features`` (shown on hover).
    contrast_limits
        For a numeric ``color``: the values at the ends of the colormap (default min, max).

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``[image tuple, points tuple]``, or only the points tuple when there is no image. The
        points are ``(row, col)`` pixels of the image shown; ``kwargs['size']`` is the spot
        diameter in those pixels; ``kwargs['metadata']`` links back to ``adata``. When the µm
        size of a pixel is known both tuples have ``scale`` (µm per pixel of the image shown) and
        ``units=('um', 'um')``: world coordinates are then µm (centres of neighbouring Visium
        spots 100 apart) and napari's scale bar reads µm.
    """
    lib = get_library_id(adata, library_id)
    img, scalef, key = get_image(adata, lib, image_key)
    used_key = key if key is not None else "auto"
    xy = spots_px(adata, lib, used_key)
    diameter = spot_diameter_px(adata, lib, used_key)
    base = name or (str(lib) if lib is not None else "")
    um = microns_per_pixel(adata, lib)
    physical: dict[str, Any] = {} if um is None else {"scale": (um / scalef, um / scalef), "units": ("um", "um")}

    out: list[LayerDataTuple] = []
    if img is not None:
        out.append((img, {**_image_kwargs(np.asarray(img), f"{base} image" if base else "image", scalef),
                          **physical}, "image"))

    pinned = [str(k) for k in features]
    table = spot_features(adata, pinned, layer=None)
    metadata: dict[str, Any] = {
        META_ADATA: adata,
        "library_id": lib,
        "image_key": key,
        "scalefactor": scalef,
        META_FLAG: True,
        META_PINNED: pinned,
    }
    if color is not None:
        rgba, legend, values = spot_colors(adata, color, layer=layer, cmap=cmap,
                                           contrast_limits=contrast_limits)
        table[str(color)] = feature_column(values)
        metadata[META_LEGEND] = legend
        metadata[META_COLOR] = {"key": str(color), "layer": layer, "cmap": cmap,
                                "contrast_limits": contrast_limits}
        face = rgba
    else:
        # plain orange spots (one colour seen n times: napari makes its own array of them)
        face = np.broadcast_to(_to_rgba(["#ff7f0e"]), (adata.n_obs, 4))
    points_kwargs = {
        "name": f"{base} spots" if base else "spots",
        "size": float(diameter),
        "face_color": face,
        # a thin, half-transparent dark rim keeps pale or tissue-coloured spots visible on H&E
        "border_width": 0.08,
        "border_width_is_relative": True,
        "border_color": [0.1, 0.1, 0.1, 0.55],
        "opacity": 1.0,
        "features": table,
        "metadata": metadata,
        **physical,
    }
    out.append((np.asarray(xy[:, ::-1], dtype=np.float64), points_kwargs, "points"))
    return out


# ---------------------------------------------------------------------------------------------
# the colouring shown, kept in a saved file
# ---------------------------------------------------------------------------------------------


def display_record(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The h5ad-safe record of a colouring (a spots layer's ``metadata['spatialdl_color']``).

    Parameters
    ----------
    state
        ``{'key', 'layer', 'cmap', 'contrast_limits'}`` as :func:`spatial_layers` and
        ``color_spots`` keep it; ``None`` or no key: the spots are plain.

    Returns
    -------
    dict or None
        ``{'key': str, 'cmap': str}`` plus ``'layer'`` (for a gene read from ``adata.layers``) and
        ``'contrast_limits'`` (two floats) when set: only strings and numbers, as
        ``adata.uns['spatialdl_display']`` holds them in an ``.h5ad``. None for plain spots.
    """
    if not isinstance(state, Mapping) or not state.get("key"):
        return None
    record: dict[str, Any] = {"key": str(state["key"]), "cmap": str(state.get("cmap") or "viridis")}
    if state.get("layer"):
        record["layer"] = str(state["layer"])
    limits = state.get("contrast_limits")
    if limits is not None:
        limits = np.asarray(limits, dtype=np.float64).ravel()
        if limits.shape == (2,) and np.isfinite(limits).all() and limits[0] <= limits[1]:
            record["contrast_limits"] = limits
    return record


def saved_display(adata: Any) -> dict[str, Any] | None:
    """How to colour the spots as they were when the file was saved, if that still applies.

    Reads ``adata.uns['spatialdl_display']`` (written by napari-spatialdl's ``.h5ad`` writer, see
    :func:`display_record`).

    Returns
    -------
    dict or None
        Keyword arguments of :func:`spatial_layers` (``color``, ``layer``, ``cmap``,
        ``contrast_limits``), or None when there is no record, it is damaged, or its key no longer
        names anything in ``adata`` (the spots are then shown plain).
    """
    record = adata.uns.get(DISPLAY_KEY) if hasattr(adata, "uns") else None
    if not isinstance(record, Mapping):
        return None
    import matplotlib
    key = record.get("key")
    if not isinstance(key, str | np.str_) or not str(key):
        return None
    layer = record.get("layer")
    layer = str(layer) if isinstance(layer, str | np.str_) and str(layer) else None
    cmap = record.get("cmap")
    cmap = str(cmap) if isinstance(cmap, str | np.str_) and str(cmap) in matplotlib.colormaps else "viridis"
    limits = None
    if record.get("contrast_limits") is not None:
        try:
            values = np.asarray(record["contrast_limits"], dtype=np.float64).ravel()
        except (TypeError, ValueError):
            values = np.zeros(0)
        if values.shape == (2,) and np.isfinite(values).all() and values[0] <= values[1]:
            limits = (float(values[0]), float(values[1]))
    try:
        spot_values(adata, str(key), layer=layer)
    except (KeyError, ValueError, TypeError):
        return None
    return {"color": str(key), "layer": layer, "cmap": cmap, "contrast_limits": limits}
