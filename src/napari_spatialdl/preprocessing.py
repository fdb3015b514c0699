"""Preprocessing shared by every method: library-size normalisation, log1p, scaling, gene selection.

Written once, sparse-aware (CSR in, CSR out: nothing here densifies a sparse matrix except
:func:`scale`, whose output is dense by nature). Methods call these instead of their own copies,
so "log-normalised" means the same thing in every task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

TARGET_SUM = 1e4  # counts per observation after normalisation (scanpy's common choice)
#: stored entries per block where a per-gene statistic is accumulated over blocks of rows: bounds the
#: temporaries (a float64 copy of 16 M entries is 0.2 GB) whatever the size of the data
BLOCK_ENTRIES = 1 << 24

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


def row_blocks(X: Matrix, max_entries: int | None = None) -> Iterator[slice]:
    """Consecutive row slices of ``X``, each with at most ``max_entries`` stored entries (one row at least).

    CSR blocks follow the rows' own numbers of stored entries; other matrices count every cell.
    ``max_entries`` None: :data:`BLOCK_ENTRIES`.
    """
    max_entries = BLOCK_ENTRIES if max_entries is None else int(max_entries)
    n = X.shape[0]
    if sp.issparse(X) and X.format == "csr":
        indptr = X.indptr
        start = 0
        while start < n:
            stop = int(np.searchsorted(indptr, indptr[start] + max_entries, side="right")) - 1
            stop = min(max(stop, start + 1), n)
            yield slice(start, stop)
            start = stop
        return
    step = max(1, max_entries // max(1, X.shape[1]))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _column_moments(X: Matrix, factor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std of ``X`` (or of ``log1p(factor[row] * X)``), over row blocks."""
    n, n_genes = X.shape
    if n < 1:
        raise ValueError("gene_moments needs at least one observation.")
    sparse = sp.issparse(X)
    if sparse:
        X = sp.csr_matrix(X)  # no copy of a CSR matrix
    sums = np.zeros(n_genes)
    squares = np.zeros(n_genes)
    for rows in row_blocks(X):
        block = X[rows]
        if sparse:
            block = sp.csr_matrix(block)
            if not block.has_canonical_format:  # duplicates add up before squaring
                block.sum_duplicates()
            values = block.data.astype(np.float64)
            if factor is not None:
                values = np.log1p(values * np.repeat(factor[rows], np.diff(block.indptr)))
            sums += np.bincount(block.indices, weights=values, minlength=n_genes)
            squares += np.bincount(block.indices, weights=values * values, minlength=n_genes)
        else:
            values = np.asarray(block, dtype=np.float64)
            if factor is not None:
                values = np.log1p(values * factor[rows, None])
            sums += values.sum(axis=0)
            squares += (values * values).sum(axis=0)
    mean = sums / n
    var = np.maximum(squares / n - mean ** 2, 0.0)
    return mean, np.sqrt(var)


def gene_moments(X: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (population), without densifying a sparse matrix.

    Accumulated over blocks of rows (:func:`row_blocks`): the memory used does not grow with ``X``.
    """
    return _column_moments(X)


def log_normalized_moments(X: Matrix, target_sum: float | str | None = TARGET_SUM) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and population std of :func:`log_normalize` ``(X, target_sum)``, in float64.

    The same figures as ``gene_moments(log_normalize(X, target_sum, dtype=np.float64))`` without
    the normalised copy of ``X`` (at a million cells that copy is several GB): each block of rows is
    normalised, counted and dropped.
    """
    lib = library_sizes(X)
    target = _target(lib, target_sum)
    factor = np.where(lib > 0, target / np.where(lib > 0, lib, 1.0), 0.0)
    return _column_moments(X, factor)


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
    mean, std = log_normalized_moments(X, target_sum)
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


def normalized_group_means(X: Matrix, labels: np.ndarray, categories: list[str],
                           target_sum: float | str | None = TARGET_SUM) -> np.ndarray:
    """Mean of :func:`normalize_total` ``(X, target_sum)`` per category (categories x genes, float64).

    One product of a (categories x rows) weight matrix with ``X``: no normalised copy of ``X``.
    A category without rows gets zeros.
    """
    lib = library_sizes(X)
    factor = np.where(lib > 0, _target(lib, target_sum) / np.where(lib > 0, lib, 1.0), 0.0)
    codes = pd.Categorical(np.asarray(labels), categories=list(categories)).codes
    rows = np.flatnonzero(codes >= 0)
    size = np.bincount(codes[rows], minlength=len(categories)).astype(np.float64)
    weights = sp.csr_matrix((factor[rows] / size[codes[rows]], (codes[rows], rows)),
                            shape=(len(categories), X.shape[0]))
    means = weights @ X
    return np.asarray(means.toarray() if sp.issparse(means) else means, dtype=np.float64)


def marker_genes(X: Matrix, labels: np.ndarray, categories: list[str], n_top_genes: int,
                 target_sum: float | str | None = TARGET_SUM) -> np.ndarray:
    """Indices (sorted) of ``n_top_genes`` genes that mark the categories, every category in turn.

    Each category ranks the genes by ``log1p`` of its mean normalised expression minus ``log1p``
    of the mean over the other categories (a log fold change, as in scanpy's per-group ranking).
    The genes are taken rank by rank, one per category per round (a gene already taken is
    skipped), so that every cell type gets its own markers instead of the most variable genes of
    a few types giving them all. All genes when there are no more than ``n_top_genes``.
    """
    n_genes = X.shape[1]
    if n_top_genes >= n_genes:
        return np.arange(n_genes)
    means = normalized_group_means(X, labels, categories, target_sum)
    others = (means.sum(axis=0, keepdims=True) - means) / max(len(categories) - 1, 1)
    # fold change over the other types' mean, in counts (a mean of logs would let a gene that one
    # type lacks pass for a marker of every other type)
    lead = np.log1p(means) - np.log1p(others)
    ranking = np.argsort(-lead, axis=1, kind="stable")  # (categories, genes)
    taken = np.zeros(n_genes, dtype=bool)
    chosen: list[int] = []
    for column in ranking.T:  # rank r of every category
        for gene in column:
            if not taken[gene]:
                taken[gene] = True
                chosen.append(int(gene))
                if len(chosen) == n_top_genes:
                    return np.sort(np.asarray(chosen))
    return np.sort(np.asarray(chosen))


def discriminative_genes(X: Matrix, labels: np.ndarray, categories: list[str], n_top_genes: int,
                         target_sum: float | str | None = TARGET_SUM) -> np.ndarray:
    """Indices (sorted) of the genes whose log mean normalised expression varies most between groups.

    Score: variance across ``categories`` of ``log1p`` of each group's mean normalised expression.
    All genes when there are no more than ``n_top_genes``.
    """
    n_genes = X.shape[1]
    if n_top_genes >= n_genes:
        return np.arange(n_genes)
    means = normalized_group_means(X, labels, categories, target_sum)
    score = np.log1p(means).var(axis=0)
    return np.sort(np.argsort(-score, kind="stable")[:n_top_genes])
