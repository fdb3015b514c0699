"""Per-gene statistics over blocks of rows: the same figures as on the whole matrix, without its copies.

At a million cells a normalised float64 copy of X is several GB: the gene selection of integration
(highly variable genes) used to make two of them and ran out of memory on a 24 GB machine.
"""

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from napari_spatialdl import preprocessing as P
from napari_spatialdl.tasks import _validate as V


def _counts(n_obs=400, n_genes=120, density=0.08, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n_obs, n_genes, density=density, random_state=seed, format="csr", dtype=np.float32)
    X.data = np.ceil(X.data * rng.integers(1, 30, X.nnz)).astype(np.float32)
    return X


def _whole(X):
    """The former, whole-matrix computation: moments of the float64 log-normalised copy."""
    L = P.log_normalize(X, dtype=np.float64)
    L = L.toarray() if sp.issparse(L) else L
    return L.mean(axis=0), L.std(axis=0)


@pytest.mark.parametrize("kind", ["csr", "csc", "dense", "duplicates"])
def test_log_normalized_moments_match_the_whole_matrix_in_small_blocks(kind, monkeypatch):
    X = _counts()
    if kind == "csc":
        X = X.tocsc()
    elif kind == "dense":
        X = X.toarray()
    elif kind == "duplicates":  # each entry stored as two halves: the halves add up before squaring
        coo = X.tocoo()
        X = sp.csr_matrix((np.r_[coo.data / 2, coo.data / 2], (np.r_[coo.row, coo.row], np.r_[coo.col, coo.col])),
                          shape=X.shape)
        X.has_canonical_format = False
    expected = _whole(X if kind != "duplicates" else _counts())
    monkeypatch.setattr(P, "BLOCK_ENTRIES", 97)  # dozens of blocks
    mean, std = P.log_normalized_moments(X)
    np.testing.assert_allclose(mean, expected[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(std, expected[1], rtol=1e-9, atol=1e-12)
    raw_mean, raw_std = P.gene_moments(X)
    dense = X.toarray() if sp.issparse(X) else X
    np.testing.assert_allclose(raw_mean, dense.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(raw_std, dense.astype(np.float64).std(axis=0), rtol=1e-9)


def test_row_blocks_cover_every_row_once_within_the_entry_budget():
    X = _counts(n_obs=300)
    X[7] = 0  # an empty row
    X = sp.csr_matrix(X)
    blocks = list(P.row_blocks(X, max_entries=40))
    rows = np.concatenate([np.arange(b.start, b.stop) for b in blocks])
    np.testing.assert_array_equal(rows, np.arange(X.shape[0]))
    per_row = np.diff(X.indptr)
    for b in blocks:  # within the budget, unless one row alone exceeds it
        assert X.indptr[b.stop] - X.indptr[b.start] <= 40 or b.stop - b.start == 1
    wide = sp.csr_matrix(np.ones((3, 100)))
    assert [b.stop - b.start for b in P.row_blocks(wide, max_entries=10)] == [1, 1, 1]
    assert per_row.sum() == X.nnz


def test_highly_variable_genes_do_not_copy_the_matrix(monkeypatch):
    """The selection's temporaries stay a fraction of the counts' size (they were 3 float64 copies)."""
    X = _counts(n_obs=20_000, n_genes=2_000, density=0.05, seed=1)
    csr_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    monkeypatch.setattr(P, "BLOCK_ENTRIES", 1 << 16)
    P.highly_variable_genes(X[:2000], 100)  # warm-up (imports) outside the trace
    tracemalloc.start()
    try:
        keep = P.highly_variable_genes(X, 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * csr_bytes, f"peak {peak / 1e6:.1f} MB for {csr_bytes / 1e6:.1f} MB of counts"
    # the same genes as the statistics of the whole normalised matrix give
    monkeypatch.setattr(P, "log_normalized_moments", lambda X, target_sum: _whole(X))
    np.testing.assert_array_equal(keep, P.highly_variable_genes(X, 100))


def test_drop_empty_genes_keeps_the_matrix_when_every_gene_has_counts():
    X = _counts()
    X[:, 5] = 0  # stored zeros do not make a gene expressed
    X = sp.csr_matrix(X)
    names = np.array([f"g{i}" for i in range(X.shape[1])])
    import pandas as pd

    kept, used, keep = V.drop_empty_genes(X, pd.Index(names))
    assert not keep[5] and keep.sum() == X.shape[1] - 1 and "g5" not in used
    assert kept.shape == (X.shape[0], X.shape[1] - 1)
    full = sp.csr_matrix(X[:, keep])
    same, used_all, keep_all = V.drop_empty_genes(full, used)
    assert keep_all.all() and same is full  # no copy when nothing is dropped
    dense_kept, _, dense_keep = V.drop_empty_genes(X.toarray(), pd.Index(names))
    np.testing.assert_array_equal(dense_keep, keep)


def test_the_integer_check_finds_a_fraction_in_the_last_block():
    values = np.ones(1000, dtype=np.float32)
    assert V._all_integers(values, block=64)
    values[-1] = 2.5
    assert not V._all_integers(values, block=64)
    assert not V._all_integers(values.reshape(50, 20), block=64)


def test_all_columns_in_order_are_not_copied_and_a_subset_is():
    """A query whose genes are all shared is read in place (at 1M cells the copy is as large as X)."""
    X = _counts()
    same = V.subset_counts(X, np.arange(X.shape[1]))
    assert np.shares_memory(same.data, X.data)
    np.testing.assert_array_equal(same.toarray(), X.toarray())
    reordered = np.arange(X.shape[1])[::-1]
    np.testing.assert_array_equal(V.subset_counts(X, reordered).toarray(), X.toarray()[:, reordered])
    rows = np.array([3, 1, 7])
    picked = V.subset_counts(X, np.arange(X.shape[1]), rows)
    assert not np.shares_memory(picked.data, X.data)
    np.testing.assert_array_equal(picked.toarray(), X.toarray()[rows])
    dense = X.toarray()
    np.testing.assert_array_equal(V.subset_counts(dense, np.arange(5)), dense[:, :5])


@pytest.mark.parametrize("kind", ["csr", "dense"])
def test_normalized_group_means_are_the_means_of_the_normalised_rows(kind):
    X = _counts(n_obs=90, n_genes=30, density=0.3)
    X = X.toarray() if kind == "dense" else X
    labels = np.array(["b", "a", "c"] * 30, dtype=object)
    labels[:3] = None  # rows without a label count for no group
    dense = P.normalize_total(X, dtype=np.float64)
    dense = dense.toarray() if sp.issparse(dense) else dense
    got = P.normalized_group_means(X, labels, ["a", "b", "c", "empty"])
    for i, cat in enumerate(["a", "b", "c"]):
        np.testing.assert_allclose(got[i], dense[labels == cat].mean(axis=0), rtol=1e-10)
    assert not got[3].any()


def test_marker_genes_give_every_type_its_markers():
    """Type 'common' differs from the rest on 40 genes (it lacks them), type 'rare' on 4 (3-fold):
    selected by the spread of the type means, 12 genes would all be common's; by markers in turn,
    rare gets its own."""
    rng = np.random.default_rng(0)
    n_genes = 100
    profile = np.ones((3, n_genes))
    profile[0, :40] = 0.0  # 'common' lacks 40 genes that the other types express
    profile[1, 40:44] = 3.0  # 'rare': 3-fold on 4 genes
    profile *= 2000 / profile.sum(axis=1, keepdims=True)  # the same depth in every type
    labels = np.repeat(["common", "rare", "other"], 50)
    X = sp.csr_matrix(rng.poisson(profile[np.repeat([0, 1, 2], 50)]).astype(np.float32))
    types = ["common", "other", "rare"]
    by_spread = P.discriminative_genes(X, labels, types, 12)
    by_markers = P.marker_genes(X, labels, types, 12)  # 4 rounds of the 3 types
    assert not set(by_spread) & set(range(40, 44))
    assert set(range(40, 44)) <= set(by_markers)
    assert len(by_markers) == 12 and np.all(np.diff(by_markers) > 0)  # distinct, sorted
    np.testing.assert_array_equal(P.marker_genes(X, labels, types, n_genes), np.arange(n_genes))
