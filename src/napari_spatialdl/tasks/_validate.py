"""Input checks shared by the tasks. Every error names the problem and the fix.

None of these functions modify the AnnData they are given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData


class InputError(ValueError):
    """Bad input to a task: the message says what is wrong and how to fix it."""


def _where(layer: str | None) -> str:
    return f"adata.layers[{layer!r}]" if layer else "adata.X"


def get_matrix(adata: AnnData, layer: str | None = None) -> np.ndarray | sp.csr_matrix:
    """``adata.X`` or ``adata.layers[layer]`` as float32 (CSR kept sparse), checked for NaN/inf."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"The AnnData is empty ({adata.n_obs} observations x {adata.n_vars} genes).")
    if layer is not None and layer not in adata.layers:
        have = ", ".join(adata.layers.keys()) or "none"
        raise InputError(f"Layer {layer!r} not found (layers: {have}). Pass layer=None to use adata.X.")
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        raise InputError("adata.X is empty (None): put the counts in adata.X or pass layer=.")
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
        values = X.data
    else:
        X = np.asarray(X, dtype=np.float32)
        values = X
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise InputError(
            f"{_where(layer)} holds {n_bad} NaN or infinite values. Remove or fill them "
            "(e.g. np.nan_to_num) before running."
        )
    return X


def get_counts(adata: AnnData, layer: str | None = None, *, what: str = "this model") -> np.ndarray | sp.csr_matrix:
    """Raw counts for a count model: non-negative integers, no NaN, no empty observation."""
    X = get_matrix(adata, layer)
    values = X.data if sp.issparse(X) else X
    if values.size and values.min() < 0:
        raise InputError(
            f"{_where(layer)} has negative values, but {what} needs raw counts. "
            "Pass the layer that holds the raw counts with layer='counts' (scanpy keeps them there "
            "if you ran adata.layers['counts'] = adata.X.copy() before normalising)."
        )
    if values.size and not np.all(np.mod(values, 1) == 0):
        raise InputError(
            f"{_where(layer)} holds non-integer values (e.g. {values[np.mod(values, 1) != 0][0]:.3g}): "
            f"it looks normalised or log-transformed, but {what} needs raw integer counts. "
            "Pass the layer that holds the raw counts with layer='counts'."
        )
    totals = np.asarray(X.sum(axis=1)).ravel()
    n_empty = int((totals == 0).sum())
    if n_empty:
        raise InputError(
            f"{n_empty} of {adata.n_obs} observations have no counts in {_where(layer)}. "
            "Remove them first, e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    return X


def subset_counts(X, columns: np.ndarray, rows: np.ndarray | None = None):
    """Rows (optional) and columns of a count matrix; CSR stays CSR, dense becomes an ndarray."""
    if rows is not None:
        X = X[rows]
    X = X[:, columns]
    return sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)


def row_sums(X) -> np.ndarray:
    """Total counts per row of a dense or sparse matrix, as a flat array."""
    return np.asarray(X.sum(axis=1)).ravel()


def drop_empty_genes(X, var_names: pd.Index) -> tuple[object, pd.Index, np.ndarray]:
    """Drop genes with no counts at all (they carry no information); return the mask too."""
    keep = np.asarray((X != 0).sum(axis=0)).ravel() > 0
    if keep.sum() == 0:
        raise InputError("Every gene is zero in every observation: there is nothing to model.")
    return X[:, keep], var_names[keep], keep


def check_obs_key(adata: AnnData, key: str, argument: str, *, min_values: int = 2,
                  allow_missing_values: bool = False) -> pd.Series:
    """A categorical ``adata.obs[key]`` with at least ``min_values`` distinct values."""
    if key is None or key not in adata.obs:
        cols = [c for c in adata.obs.columns if adata.obs[c].dtype.name in ("category", "object")]
        raise InputError(
            f"{argument}={key!r} is not a column of adata.obs. "
            f"Categorical columns available: {', '.join(cols) or 'none'}."
        )
    values = adata.obs[key]
    if values.isna().any() and not allow_missing_values:
        raise InputError(
            f"adata.obs[{key!r}] has {int(values.isna().sum())} missing values: fill or drop them "
            f"before using it as {argument}."
        )
    n = values.dropna().nunique()
    if n < min_values:
        raise InputError(
            f"adata.obs[{key!r}] has {n} distinct value(s); {argument} needs at least {min_values}. "
            "Choose another column."
        )
    return values.astype(str).where(values.notna(), None) if allow_missing_values else values.astype(str)


def shared_genes(a: AnnData, b: AnnData, *, names: tuple[str, str] = ("spatial", "reference"),
                 min_genes: int = 10) -> pd.Index:
    """Genes present in both AnnDatas, in ``a``'s order; an error when too few overlap."""
    if not a.var_names.is_unique or not b.var_names.is_unique:
        raise InputError("Gene names must be unique: call adata.var_names_make_unique() first.")
    common = a.var_names[a.var_names.isin(b.var_names)]
    if len(common) < min_genes:
        raise InputError(
            f"Only {len(common)} genes overlap between the {names[0]} data ({a.n_vars} genes) and the "
            f"{names[1]} ({b.n_vars} genes); at least {min_genes} are needed. Check that both use the "
            f"same gene identifiers (symbols vs Ensembl IDs, species, case). "
            f"Examples: {list(a.var_names[:3])} vs {list(b.var_names[:3])}."
        )
    return common


def check_spatial(adata: AnnData) -> np.ndarray:
    """``adata.obsm['spatial']`` as an (n, 2) float array, with a clear error if absent."""
    if "spatial" not in adata.obsm:
        raise InputError(
            "adata.obsm['spatial'] is missing: this needs spot coordinates. Read the data with "
            "napari_spatialdl.read_visium / read_counts_csv(coords=...), or set adata.obsm['spatial']."
        )
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    if not np.isfinite(xy).all():
        raise InputError("adata.obsm['spatial'] has NaN or infinite coordinates: drop those spots.")
    return xy


def check_n_latent(n_latent: int, n_obs: int, n_genes: int) -> None:
    if n_latent < 1:
        raise InputError(f"n_latent must be at least 1, got {n_latent}.")
    if n_latent >= min(n_obs, n_genes):
        raise InputError(
            f"n_latent={n_latent} is not smaller than the number of observations ({n_obs}) and "
            f"genes ({n_genes}): choose n_latent < {min(n_obs, n_genes)}."
        )


def check_positive(**values: float) -> None:
    """InputError for the first value that is not > 0 (``name=value`` keyword arguments)."""
    for name, value in values.items():
        if value is None or not np.isfinite(value) or value <= 0:
            raise InputError(f"{name} must be a positive number, got {value!r}.")


def check_choice(name: str, value: object, choices: tuple) -> None:
    """InputError unless ``value`` is one of ``choices`` (listed in the message)."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
