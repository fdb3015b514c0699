"""Scale: batched NNLS, no dense copy of X in training, compact imputation output."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

from napari_spatialdl.models.deconvolution import nnls_abundance


@pytest.mark.parametrize("seed", range(6))
def test_batched_nnls_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    k, g, n = int(rng.integers(2, 20)), int(rng.integers(25, 200)), 150
    S = rng.gamma(0.5, 1.0, (k, g))
    if seed % 2:  # two nearly collinear signatures: the hard case of an active set
        S[1] = 0.7 * S[0] + 1e-3 * rng.random(g)
    W = rng.gamma(0.3, 1.0, (n, k)) * (rng.random((n, k)) < 0.4)
    Y = rng.poisson(W @ S + 0.05).astype(float)
    Y[0] = 0.0  # an empty spot
    X = sp.csr_matrix(Y) if seed % 3 else Y
    got = nnls_abundance(X, S, batch_size=64)  # several blocks
    ref = np.stack([nnls(S.T, y)[0] for y in Y])
    assert got.shape == (n, k) and (got >= 0).all()
    obj = lambda w: ((w @ S - Y) ** 2).sum(axis=1)  # noqa: E731
    np.testing.assert_allclose(obj(got), obj(ref), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * max(ref.max(), 1.0))
    np.testing.assert_array_equal(got[0], 0.0)


def test_batched_nnls_empty_input():
    assert nnls_abundance(sp.csr_matrix((0, 5)), np.ones((3, 5))).shape == (0, 3)


# ----------------------------------------------------------------- no dense copy of X

def _guard_toarray(monkeypatch, max_rows: int) -> list[int]:
    """Make scipy's toarray fail on more than ``max_rows`` rows; return the sizes seen."""
    seen: list[int] = []
    for cls in {sp.csr_matrix, type(sp.csr_matrix((1, 1))), sp.csr_array, sp.coo_matrix}:
        original = cls.toarray

        def guarded(self, *args, _original=original, **kwargs):
            seen.append(self.shape[0])
            if self.shape[0] > max_rows and self.shape[1] > 1:
                raise AssertionError(f"toarray on a {self.shape} matrix (a dense copy of X)")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "toarray", guarded)
    return seen


def _sparse_pair(n_spots: int = 600):
    import napari_spatialdl as sdl

    sp_data, ref = sdl.datasets.synthetic_tissue(seed=0)
    rng = np.random.default_rng(1)
    rows = rng.choice(sp_data.n_obs, n_spots, replace=n_spots > sp_data.n_obs)
    big = sp_data[rows].copy()
    big.obs_names = [f"s{i}" for i in range(n_spots)]
    big.X = sp.csr_matrix(big.X)
    ref.X = sp.csr_matrix(ref.X)
    return big, ref


@pytest.mark.parametrize("method", ["spatialdl", "nnls"])
def test_deconvolution_on_csr_never_densifies_x(monkeypatch, method):
    import napari_spatialdl as sdl

    spots, ref = _sparse_pair(600)
    seen = _guard_toarray(monkeypatch, max_rows=200)
    params = {"max_epochs": 3, "batch_size": 128} if method == "spatialdl" else {}
    out = sdl.deconvolve(spots, ref, "cell_type", method=method, copy=True, **params).adata
    assert out.obsm["spatialdl_proportions"].shape[0] == spots.n_obs
    assert all(n <= 200 for n in seen)


def test_training_store_keeps_sparse_sparse():
    import torch

    from napari_spatialdl.models._train import DeviceCSR, TensorStore

    X = sp.random(400, 300, density=0.05, format="csr", random_state=0, dtype=np.float32)
    X[5] = 0.0  # an empty row
    X.eliminate_zeros()
    index = torch.tensor([7, 0, 399, 7, 123, 5])
    store = TensorStore({"x": X}, torch.device("cpu"))
    assert store.resident and sp.issparse(store._data["x"])  # CPU: scipy CSR, never dense
    np.testing.assert_array_equal(store.batch(index)["x"].numpy(), X[index.numpy()].toarray())
    gathered = DeviceCSR(X, torch.device("cpu")).rows(index)  # the GPU path, run on the CPU
    np.testing.assert_array_equal(gathered.numpy(), X[index.numpy()].toarray())


# ----------------------------------------------------------------- compact imputation

@pytest.fixture(scope="module")
def imputed_pair():
    import napari_spatialdl as sdl

    adata, _ = sdl.datasets.synthetic_tissue(seed=0)
    adata.X = sp.csr_matrix(adata.X)
    params = {"max_epochs": 3, "batch_size": 64, "seed": 0}
    dense = sdl.impute(adata, method="spatialdl", copy=True, dense=True, **params).adata
    compact = sdl.impute(adata, method="spatialdl", copy=True, dense=False,
                         genes=list(adata.var_names[:2]), **params).adata
    auto = sdl.impute(adata, method="spatialdl", copy=True, **params).adata
    return adata, dense, compact, auto


def test_dense_true_and_auto_small_give_the_dense_layer(imputed_pair):
    adata, dense, _, auto = imputed_pair
    layer = dense.layers["spatialdl_imputed"]
    assert layer.shape == adata.shape and layer.dtype == np.float32
    np.testing.assert_allclose(auto.layers["spatialdl_imputed"], layer, rtol=1e-5, atol=1e-6)
    assert "spatialdl_imputed_latent" not in dense.obsm


def test_reconstruct_equals_the_dense_prediction(imputed_pair):
    from napari_spatialdl.tasks.imputation import reconstruct

    adata, dense, compact, _ = imputed_pair
    assert "spatialdl_imputed" not in compact.layers
    assert compact.obsm["spatialdl_imputed_latent"].shape == (adata.n_obs, 16)
    genes = [adata.var_names[5], adata.var_names[-1], adata.var_names[0]]
    got = reconstruct(compact, genes)
    assert list(got.columns) == genes and (got.index == adata.obs_names).all()
    want = dense[:, genes].layers["spatialdl_imputed"]
    np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-4, atol=1e-5)
    asked = compact.obsm["spatialdl_imputed_genes"]
    np.testing.assert_allclose(asked.to_numpy(), dense[:, list(asked.columns)].layers["spatialdl_imputed"],
                               rtol=1e-4, atol=1e-5)


def test_reconstruct_errors_name_the_problem(imputed_pair):
    from napari_spatialdl.tasks._validate import InputError
    from napari_spatialdl.tasks.imputation import reconstruct

    adata, dense, compact, _ = imputed_pair
    with pytest.raises(InputError, match="no compact imputation"):
        reconstruct(dense, [adata.var_names[0]])
    with pytest.raises(InputError, match="not in adata.var_names"):
        reconstruct(compact, ["NOT_A_GENE"])
