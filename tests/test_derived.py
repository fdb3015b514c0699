"""Derived results (tasks/_derived.py): the keys the GUI and the CLI share, and what they hold."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from napari_spatialdl._constants import CLUSTERS_KEY, DOMINANT_KEY, PROPORTIONS_KEY
from napari_spatialdl.tasks import InputError
from napari_spatialdl.tasks._derived import (
    cluster_latent,
    derived_key,
    dominant_cell_type,
    suggested_gene,
)


def _spots(n_side: int = 12, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(n_side, dtype=float), np.arange(n_side, dtype=float))
    adata = ad.AnnData(rng.poisson(3.0, (n_side * n_side, 3)).astype(np.float32))
    adata.obs_names = [f"s{i}" for i in range(adata.n_obs)]
    adata.var_names = ["noisy", "gradient", "flat"]
    adata.obsm["spatial"] = np.c_[xs.ravel(), ys.ravel()]
    return adata


def test_derived_keys_follow_the_result_they_come_from():
    assert derived_key(DOMINANT_KEY, PROPORTIONS_KEY, None) == DOMINANT_KEY
    assert derived_key(DOMINANT_KEY, PROPORTIONS_KEY, PROPORTIONS_KEY) == DOMINANT_KEY
    assert derived_key(DOMINANT_KEY, PROPORTIONS_KEY, "spatialdl_proportions_nnls") == DOMINANT_KEY + "_nnls"
    assert derived_key(DOMINANT_KEY, PROPORTIONS_KEY, "mine") == "mine_dominant_cell_type"


def test_dominant_cell_type_and_reference_colours():
    adata = _spots(4)
    props = np.random.default_rng(1).dirichlet([1, 1, 1], adata.n_obs)
    adata.obsm[PROPORTIONS_KEY] = pd.DataFrame(props, index=adata.obs_names, columns=["B", "A", "C"])
    ref = ad.AnnData(np.zeros((6, 3), dtype=np.float32))
    ref.obs["cell_type"] = pd.Categorical(["A", "B", "C"] * 2)
    ref.uns["cell_type_colors"] = ["#ff0000", "#00ff00", "#0000ff"]
    dominant = dominant_cell_type(adata, reference=ref, labels_key="cell_type")
    assert list(dominant.categories) == ["B", "A", "C"]
    np.testing.assert_array_equal(adata.obs[DOMINANT_KEY].astype(str), np.array(["B", "A", "C"])[props.argmax(1)])
    assert adata.uns[f"{DOMINANT_KEY}_colors"] == ["#00ff00", "#ff0000", "#0000ff"]  # B, A, C
    # a second method's result: its own dominant type beside the first, no stale colours
    adata.obsm["spatialdl_proportions_nnls"] = adata.obsm[PROPORTIONS_KEY].iloc[:, ::-1]
    dominant_cell_type(adata, proportions_key="spatialdl_proportions_nnls")
    assert DOMINANT_KEY + "_nnls" in adata.obs and f"{DOMINANT_KEY}_nnls_colors" not in adata.uns
    with pytest.raises(InputError, match="run the deconvolution first"):
        dominant_cell_type(_spots(3))


def test_cluster_latent_numbers_clusters_by_size():
    adata = _spots(10)
    rng = np.random.default_rng(0)
    groups = np.r_[np.zeros(70, int), np.ones(30, int)]
    adata.obsm["X_spatialdl"] = rng.normal(size=(100, 4)) * 0.05 + groups[:, None] * 5.0
    method = cluster_latent(adata, n_clusters=2)
    assert method in ("leiden", "kmeans")
    clusters = adata.obs[CLUSTERS_KEY]
    assert clusters.dtype.name == "category"
    counts = clusters.value_counts()
    assert counts.index[0] == "1" and counts.iloc[0] >= counts.iloc[-1]  # '1' is the largest
    # the two groups are never mixed within one cluster
    for name in clusters.cat.categories:
        assert len(set(groups[(clusters == name).to_numpy()])) == 1
    with pytest.raises(InputError, match="run the integration first"):
        cluster_latent(_spots(3))


def test_suggested_gene_is_the_spatially_structured_one():
    adata = _spots(12)
    rng = np.random.default_rng(0)
    x = adata.obsm["spatial"][:, 0]
    imputed = np.c_[rng.gamma(2.0, 3.0, adata.n_obs),  # high variance, no spatial structure
                    1.0 + x,  # a smooth gradient across the tissue
                    np.full(adata.n_obs, 0.01)]  # flat and low
    adata.layers["spatialdl_imputed"] = imputed.astype(np.float32)
    assert suggested_gene(adata) == "gradient"
    del adata.obsm["spatial"]  # without coordinates: the most variable expressed gene
    assert suggested_gene(adata) == "noisy"
    with pytest.raises(InputError, match="run impute first"):
        suggested_gene(_spots(3))
