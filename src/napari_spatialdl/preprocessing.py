"""Preprocessing shared by every method: library-size normalisation, log1p, scaling, gene selection.

Written once, sparse-aware (CSR in, CSR out: nothing here densifies a sparse matrix except
:func:`scale`, whose output is dense by nature). Methods call these instead of their own copies,
so "log-normalised" means the same thing in every task.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

TARGET_SUM = 1e4  # counts per observation after normalisation (scanpy's common choice)

Matrix = Any  # np.ndarray or scipy.sparse matrix


def library_sizes(X: Matrix) -> np.ndarray:
    """Total counts per observation (row), as a flat float64 array."""
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def _target(lib: np.ndarray, target_sum: float | str | None) -> float:
    if target_sum is None or target_sum == "median":
        positive = lib[lib > 0]
        return float(np.median(positive)) if positive.size else 1.0
    return float(target_sum)


def normalize_total(X: Matrix, target_sum: float | str | None = TARGET_SUM,
                    dtype: type = np.float32) -> Matrix:
    """Scale each row to ``target_sum`` counts (``"median"`` or None: the median library size).

    Rows without counts stay zero. CSR stays CSR; the input is not modified.
    """
    lib = library_sizes(X)
    target = _target(lib, target_sum)
    factor = np.where(lib > 0, target / np.where(lib > 0, lib, 1.0), 0.0)
    if sp.issparse(X):
        Y = sp.csr_matrix(X, dtype=dtype, copy=True)
        Y.data *= np.repeat(factor, np.diff(Y.indptr)).astype(dtype)
        return Y
    return (np.asarray(X, dtype=np.float64) * factor[:, None]).astype(dtype)


def log1p(X: Matrix) -> Matrix:
    """``log(1 + x)`` elementwise; sparse stays sparse (zeros stay zeros). Returns a new matrix."""
    if sp.issparse(X):
        Y = sp.csr_matrix(X, copy=True)
        Y.data = np.log1p(Y.data)
        return Y
    return np.log1p(np.asarray(X))


def log_normalize(X: Matrix, target_sum: float | str | None = TARGET_SUM,
                  dtype: type = np.float32) -> Matrix:
    """``log1p(counts / library * target_sum)``: the log-normalised expression every method uses."""
    return log1p(normalize_total(X, target_sum, dtype=dtype))


def scale(X: Matrix, max_value: float | None = 10.0, *, mean: np.ndarray | None = None,
          std: np.ndarray | None = None) -> np.ndarray:
    """Each gene (column) to zero mean and unit variance, clipped at ``max_value``.

    ``mean``/``std`` apply another dataset's moments (e.g. the reference's to a query).
    Genes with no variance get std 1. Dense output.
    """
    if mean is None or std is None:
        mean, std = gene_moments(X)
    Y = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    Y = (Y - mean) / np.where(std > 0, std, 1.0)
    if max_value is not None:
        np.clip(Y, -max_value, max_value, out=Y)
    return Y.astype(np.float32)


def gene_moments(X: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (population), without densifying a sparse matrix."""
    n = X.shape[0]
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
        sq = np.asarray(X.multiply(X).mean(axis=0), dtype=np.float64).ravel()
        var = np.maximum(sq - mean ** 2, 0.0)
    else:
        Xd = np.asarray(X, dtype=np.float64)
        mean = Xd.mean(axis=0)
        var = Xd.var(axis=0)
    if n < 1:
        raise ValueError("gene_moments needs at least one observation.")
    return mean, np.sqrt(var)


def highly_variable_genes(X: Matrix, n_top_genes: int, *, target_sum: float | str | None = TARGET_SUM
                          ) -> np.ndarray:
    """Indices (sorted) of the ``n_top_genes`` genes with the highest normalised dispersion.

    Dispersion (variance / mean of log-normalised expression), standardised within 20 bins of
    mean expression: the Seurat flavour that scanpy uses by default, computed sparse-aware.
    All genes when there are no more than ``n_top_genes``.
    """
    n_genes = X.shape[1]
    if n_top_genes >= n_genes:
        return np.arange(n_genes)
    L = log_normalize(X, target_sum, dtype=np.float64)
    mean, std = gene_moments(L)
    var = std ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = np.log(np.where(mean > 0, var / mean, np.nan))
        log_mean = np.log1p(mean)
    score = np.full(n_genes, -np.inf)
    finite = np.isfinite(disp)
    if finite.any():
        edges = np.quantile(log_mean[finite], np.linspace(0, 1, 21))
        bins = np.clip(np.searchsorted(edges, log_mean, side="right") - 1, 0, 19)
        for b in np.unique(bins[finite]):
            sel = finite & (bins == b)
            mu, sd = disp[sel].mean(), disp[sel].std()
            score[sel] = (disp[sel] - mu) / sd if sd > 0 else 0.0
    order = np.argsort(-score, kind="stable")[:n_top_genes]
    return np.sort(order)


def group_means(X: Matrix, groups: np.ndarray, categories: list[str]) -> np.ndarray:
    """Mean row of ``X`` per category of ``groups`` (categories x genes, dense float64)."""
    groups = np.asarray(groups)
    rows = []
    for cat in categories:
        sel = np.flatnonzero(groups == cat)
        rows.append(np.asarray(X[sel].mean(axis=0), dtype=np.float64).ravel())
    return np.vstack(rows)


def discriminative_genes(X: Matrix, labels: np.ndarray, categories: list[str], n_top_genes: int,
                         target_sum: float | str | None = TARGET_SUM) -> np.ndarray:
    """Indices (sorted) of the genes whose log mean normalised expression varies most between groups.

    Score: variance across ``categories`` of ``log1p`` of each group's mean normalised expression.
    All genes when there are no more than ``n_top_genes``.
    """
    n_genes = X.shape[1]
    if n_top_genes >= n_genes:
        return np.arange(n_genes)
    means = group_means(normalize_total(X, target_sum, dtype=np.float64), labels, categories)
    score = np.log1p(means).var(axis=0)
    return np.sort(np.argsort(-score, kind="stable")[:n_top_genes])
