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
