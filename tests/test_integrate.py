"""Batch integration: the native conditional VAE (``spatialdl``), query mapping, the PCA baseline,
Harmony; all through the public API (the task contract: one prepare, one write)."""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from sklearn.neighbors import NearestNeighbors

from napari_spatialdl._constants import LATENT_KEY, UNS_KEY
from napari_spatialdl.models._train import run_to_end
from napari_spatialdl.models.integrate import BatchEmbedding, IntegrationModel
from napari_spatialdl.preprocessing import highly_variable_genes
from napari_spatialdl.tasks import InputError, integrate, integrate_iter, list_methods, map_query
from napari_spatialdl.tasks.integration import (
    DEFAULT_N_TOP_GENES,
    default_epochs,
    integrate_pca,
    integrate_spatialdl,
    map_query_iter,
)


def make_batches(n_per=30, n_types=3, batches=("b0", "b1", "b2"), n_genes=100, batch_strength=1.0,
                 seed=0, type_seed=0) -> AnnData:
    """Cells of ``n_types`` types in every batch; each batch scales every gene by its own factor."""
    trng = np.random.default_rng(type_seed)  # the cell types are shared between calls
    base = trng.gamma(0.8, 1.0, size=n_genes)
    profiles = base * np.exp(trng.normal(0, 1.0, size=(n_types, n_genes)))
    rng = np.random.default_rng(seed)
    rows, types, names = [], [], []
    for b in batches:
        brng = np.random.default_rng(zlib.crc32(b.encode()))  # a batch's effect depends on its name only
        factor = np.exp(brng.normal(0, batch_strength, size=n_genes))
        for t in range(n_types):
            p = profiles[t] * factor
            p /= p.sum()
            lib = rng.lognormal(np.log(800), 0.3, size=n_per)
            mean = lib[:, None] * p
            rows.append(rng.negative_binomial(6, 6 / (6 + mean)))
            types += [f"type{t}"] * n_per
            names += [b] * n_per
    X = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame({"batch": pd.Categorical(names), "cell_type": pd.Categorical(types)},
                       index=[f"{b}_{i}" for i, b in enumerate(names)])
    adata = AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    adata.layers["counts"] = X.copy()
    adata.uns["note"] = {"kept": 1}
    return adata


def batch_mixing(Z, batches, k=15):
    """Mean normalised entropy of batches among each cell's k neighbours (1 = perfectly mixed)."""
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
    batches = np.asarray(batches)
    n_b = len(np.unique(batches))
    ent = []
    for row in idx[:, 1:]:
        _, cnt = np.unique(batches[row], return_counts=True)
        p = cnt / cnt.sum()
        ent.append(-(p * np.log(p)).sum() / np.log(n_b))
    return float(np.mean(ent))


def label_purity(Z, labels, k=15):
    """Mean fraction of each cell's k neighbours with its own label."""
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
    labels = np.asarray(labels)
    return float(np.mean(labels[idx[:, 1:]] == labels[:, None]))


def snapshot(adata: AnnData) -> dict:
    return {"X": adata.X.copy(), "obs": adata.obs.copy(), "var": adata.var.copy(),
            "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
            "layers": {k: np.array(v, copy=True) for k, v in adata.layers.items()},
            "uns": copy.deepcopy(dict(adata.uns))}


def assert_unchanged(adata: AnnData, snap: dict) -> None:
    np.testing.assert_array_equal(adata.X, snap["X"])
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert set(adata.obsm) == set(snap["obsm"])
    for k, v in snap["obsm"].items():
        np.testing.assert_array_equal(adata.obsm[k], v)
    assert set(adata.layers) == set(snap["layers"])
    for k, v in snap["layers"].items():
        np.testing.assert_array_equal(adata.layers[k], v)
    assert set(adata.uns) == set(snap["uns"]) and UNS_KEY not in adata.uns


@pytest.fixture(scope="module")
def integrated():
    adata = make_batches()
    result = integrate(adata, "batch", seed=0)
    return adata, result


# ----------------------------------------------------------------------------- integration

def test_integration_mixes_batches_and_keeps_cell_types(integrated):
    adata, result = integrated
    baseline = integrate(adata, "batch", method="pca", copy=True)
    # adata holds the VAE's result already: the baseline's goes beside it
    assert baseline.keys == {"obsm": f"{LATENT_KEY}_pca"}
    pca = baseline.adata.obsm[f"{LATENT_KEY}_pca"]
    Z = adata.obsm[LATENT_KEY]
    assert Z.shape == (adata.n_obs, 10) and np.isfinite(Z).all()
    b, t = adata.obs["batch"], adata.obs["cell_type"]
    # the strong batch effect separates the batches in PCA ...
    assert batch_mixing(pca, b) < 0.3
    # ... the VAE mixes them, while the cell types stay apart
    assert batch_mixing(Z, b) > batch_mixing(pca, b) + 0.3
    assert label_purity(Z, t) > 0.9
    assert result.history.train_loss[-1] < 0.7 * result.history.train_loss[0]


def test_integration_result_and_metadata(integrated, tmp_path):
    adata, result = integrated
    assert result.keys == {"obsm": LATENT_KEY} and result.adata is adata
    meta = adata.uns[UNS_KEY]["integrate"]
    assert meta["method"] == "spatialdl" and meta["params"]["batch_key"] == "batch"
    assert len(meta["history"]["train_loss"]) == result.history.n_epochs
    assert result.info["batches"] == ["b0", "b1", "b2"]
    assert result.model.batches == ["b0", "b1", "b2"]
    assert result.model.genes == list(adata.var_names)
    assert adata.uns["note"] == {"kept": 1}
    # everything written can be saved to .h5ad
    adata.write_h5ad(tmp_path / "out.h5ad")
    import anndata

    back = anndata.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.obsm[LATENT_KEY], adata.obsm[LATENT_KEY])
    assert back.uns[UNS_KEY]["integrate"]["params"]["batch_key"] == "batch"


def test_integration_is_seeded():
    a, b, c = make_batches(n_per=15), make_batches(n_per=15), make_batches(n_per=15)
    for ad, seed in ((a, 1), (b, 1), (c, 2)):
        integrate(ad, "batch", seed=seed, max_epochs=20)
    np.testing.assert_array_equal(a.obsm[LATENT_KEY], b.obsm[LATENT_KEY])
    assert not np.array_equal(a.obsm[LATENT_KEY], c.obsm[LATENT_KEY])


def test_zinb_sparse_layer_and_copy():
    adata = make_batches(n_per=15)
    adata.layers["counts"] = sp.csr_matrix(adata.layers["counts"])
    adata.X = np.log1p(adata.X)  # X is normalised: the counts are in the layer
    snap = {"X": adata.X.copy()}
    res = integrate(adata, "batch", layer="counts", likelihood="zinb", n_latent=5, max_epochs=20, copy=True)
    assert res.adata is not adata and LATENT_KEY not in adata.obsm and UNS_KEY not in adata.uns
    np.testing.assert_array_equal(adata.X, snap["X"])
    assert res.adata.obsm[LATENT_KEY].shape == (adata.n_obs, 5)
    assert res.model.module.pi is not None


def test_save_load_reproduces_the_latent_space(tmp_path, integrated):
    adata, result = integrated
    path = result.model.save(tmp_path / "vae.pt")
    loaded = IntegrationModel.load(path)
    codes = loaded.batch_codes(adata.obs["batch"])
    np.testing.assert_array_equal(loaded.latent(adata.X, codes), adata.obsm[LATENT_KEY])
    assert loaded.batches == result.model.batches and loaded.extra["batch_key"] == "batch"


def test_closing_the_generator_leaves_adata_unchanged():
    adata = make_batches(n_per=15)
    snap = snapshot(adata)
    gen = integrate_iter(adata, "batch", max_epochs=50)
    for _ in range(3):
        next(gen)
    gen.close()
    assert_unchanged(adata, snap)


def test_default_epochs():
    assert default_epochs(500) == 100 and default_epochs(2000) == 100
    assert default_epochs(4000) == 50 and default_epochs(10**6) == 20


# ----------------------------------------------------------------------------- query mapping

def test_map_query_places_new_batch_next_to_its_cell_types():
    full = make_batches(batches=("b0", "b1", "q0"), n_per=30)
    ref = full[full.obs["batch"] != "q0"].copy()
    query = full[full.obs["batch"] == "q0"].copy()
    res = integrate(ref, "batch", seed=0)
    model = res.model
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    snap_ref = snapshot(ref)

    mapped = map_query(query, res, seed=0)
    # the reference model is untouched, bit for bit, and so is the reference AnnData
    after = model.module.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], v) for k, v in state.items())
    snap_ref["uns"] = ref.uns  # (written by integrate before the snapshot)
    np.testing.assert_array_equal(ref.obsm[LATENT_KEY], snap_ref["obsm"][LATENT_KEY])
    # the extended model shares every reference weight and adds one vector per new batch
    ext = mapped.model
    assert ext is not model and ext.batches == ["b0", "b1", "q0"]
    ext_state = ext.module.state_dict()
    assert all(torch.equal(ext_state[k], v) for k, v in state.items())
    assert ext.module.enc_batch.sizes == [2, 1] and mapped.info["new_batches"] == ["q0"]
    assert mapped.history.train_loss[-1] < mapped.history.train_loss[0]

    Zr, Zq = ref.obsm[LATENT_KEY], query.obsm[LATENT_KEY]
    assert Zq.shape == (query.n_obs, 10)
    # each query cell's nearest reference cells are of its own type
    _, idx = NearestNeighbors(n_neighbors=10).fit(Zr).kneighbors(Zq)
    ref_types = ref.obs["cell_type"].to_numpy()
    votes = pd.DataFrame(ref_types[idx]).mode(axis=1)[0].to_numpy()
    assert np.mean(votes == query.obs["cell_type"].to_numpy()) > 0.9
    # and the query sits among the reference, not apart from it
    both = np.vstack([Zr, Zq])
    origin = np.r_[np.zeros(len(Zr)), np.ones(len(Zq))]
    assert batch_mixing(both, origin) > 0.4
    meta = query.uns[UNS_KEY]["integrate"]
    assert meta["params"]["mode"] == "query mapping"


def test_map_query_from_a_saved_model_with_known_and_missing_genes(tmp_path, integrated):
    adata, result = integrated
    path = result.model.save(tmp_path / "ref.pt")
    query = make_batches(batches=("b1", "q1"), n_per=10, seed=5)
    query = query[:, list(query.var_names[5:]) + []].copy()  # 5 reference genes missing
    res = map_query(query, str(path), copy=True, max_epochs=10)
    assert res.info["n_genes_missing"] == 5 and "5 missing genes" in res.info["genes_message"]
    assert res.info["known_batches"] == ["b1"] and res.info["new_batches"] == ["q1"]
    assert res.adata.obsm[LATENT_KEY].shape == (query.n_obs, 10)
    assert LATENT_KEY not in query.obsm


def test_map_query_of_known_batches_needs_no_training(integrated):
    adata, result = integrated
    query = adata[adata.obs["batch"] == "b2"].copy()
    del query.obsm[LATENT_KEY]
    res = map_query(query, result.model)
    assert res.history is None and res.info["new_batches"] == []
    # the same cells in the same batch get the same place as in the reference
    np.testing.assert_allclose(query.obsm[LATENT_KEY], adata[adata.obs["batch"] == "b2"].obsm[LATENT_KEY],
                               rtol=1e-5, atol=1e-6)


def test_map_query_bad_input(integrated):
    adata, result = integrated
    query = make_batches(batches=("q0",), n_per=10, seed=3)
    snap = snapshot(query)
    with pytest.raises(InputError, match="TaskResult of integrate"):
        map_query(query, 42)
    with pytest.raises(InputError, match="No saved model at not_a_model.pt"):
        map_query(query, "not_a_model.pt")
    with pytest.raises(InputError, match="no spatialdl integration model"):
        map_query(query, integrate(adata, "batch", method="pca", copy=True))
    with pytest.raises(InputError, match="batch_key='donor' is not a column"):
        map_query(query, result, batch_key="donor")
    renamed = query.copy()
    renamed.var_names = [f"other{i}" for i in range(query.n_vars)]
    with pytest.raises(InputError, match="Only 0 of the reference's 100 genes"):
        map_query(renamed, result)
    query.X[2] = 0
    with pytest.raises(InputError, match="no counts"):
        map_query(query, result)
    query.X = snap["X"].copy()
    assert_unchanged(query, snap)


def test_map_query_with_repeated_gene_names_says_how_to_fix_it(integrated):
    _, result = integrated
    query = make_batches(batches=("q0",), n_per=10, seed=3)
    names = list(query.var_names)
    names[1] = names[0]
    query.var_names = names
    snap = snapshot(query)
    with pytest.raises(InputError, match=r"^query has 1 gene name that occur more than once \(e\.g\. 'g0'\).*"
                                         r"call query\.var_names_make_unique\(\) first"):
        map_query(query, result)
    assert_unchanged(query, snap)
    query.var_names_make_unique()
    assert map_query(query, result, max_epochs=2, copy=True).info["n_genes_missing"] == 1


def test_map_query_checks_the_batch_column_and_writes_like_integrate(integrated):
    _, result = integrated
    query = make_batches(batches=("q0", "q1"), n_per=10, seed=6)
    query.obs["barcode"] = query.obs_names.to_numpy()
    snap = snapshot(query)
    with pytest.raises(InputError, match=r"query\.obs\['barcode'\] cannot be used as batch_key.*"
                                         r"different value"):
        map_query(query, result, batch_key="barcode")
    with pytest.raises(InputError, match=r"query\.layers\['raw'\] not found"):
        map_query(query, result, layer="raw")
    assert_unchanged(query, snap)
    res = map_query(query, result, max_epochs=2, key_added="X_query")
    assert res.keys == {"obsm": "X_query"} and query.obsm["X_query"].shape == (query.n_obs, 10)
    meta = query.uns[UNS_KEY]["X_query"]
    assert meta["method"] == "spatialdl" and meta["params"]["mode"] == "query mapping"
    assert meta["params"]["batch_key"] == "batch" and meta["params"]["max_epochs"] == 2
    assert meta["keys"]["latent"] == "obsm/X_query"


def test_batch_embedding_extends_without_touching_old_blocks():
    emb = BatchEmbedding([3], 4)
    old = emb.blocks[0].detach().clone()
    new = emb.extend(2)
    assert emb.sizes == [3, 2] and torch.equal(new, torch.zeros(2, 4))
    out = emb(torch.tensor([0, 4]))
    assert torch.equal(out[0], old[0]) and torch.equal(out[1], torch.zeros(4))


# ----------------------------------------------------------------------------- bad input

def _bad_inputs():
    def non_integer(a):
        a.layers["counts"] = a.layers["counts"] * 0.5 + 0.25
        return {"batch_key": "batch", "layer": "counts"}, "adata.layers\\['counts'\\] holds non-integer"

    def negative(a):
        a.X[0, 0] = -2
        return {"batch_key": "batch"}, "negative"

    def missing_key(a):
        return {"batch_key": "sample"}, "batch_key='sample' is not a column"

    def one_batch(a):
        a.obs["single"] = "only"
        return {"batch_key": "single"}, "1 distinct value"

    def empty_cell(a):
        a.X[5] = 0
        return {"batch_key": "batch"}, "observations of adata have no counts"

    def nan(a):
        a.X[2, 2] = np.nan
        return {"batch_key": "batch"}, "NaN or infinite"

    def too_many_latent(a):
        return {"batch_key": "batch", "n_latent": 90}, "n_latent=90 is not smaller"

    def missing_batch_values(a):
        a.obs["gappy"] = a.obs["batch"].astype(object)
        a.obs.iloc[0, a.obs.columns.get_loc("gappy")] = None
        return {"batch_key": "gappy"}, "missing values"

    def bad_likelihood(a):
        return {"batch_key": "batch", "likelihood": "poisson"}, "likelihood must be one of"

    def bad_device(a):
        return {"batch_key": "batch", "device": "quantum"}, "Unknown device"

    return [non_integer, negative, missing_key, one_batch, empty_cell, nan, too_many_latent,
            missing_batch_values, bad_likelihood, bad_device]


@pytest.mark.parametrize("spoil", _bad_inputs(), ids=lambda f: f.__name__)
def test_bad_input_is_refused_and_adata_unchanged(spoil):
    adata = make_batches(n_per=10)  # 90 cells
    params, message = spoil(adata)
    snap = snapshot(adata)
    batch_key = params.pop("batch_key")
    with pytest.raises(InputError, match=message):
        integrate(adata, batch_key, **params)
    assert_unchanged(adata, snap)
    if "likelihood" not in params and "device" not in params:  # the baseline checks the same inputs
        with pytest.raises(InputError):
            integrate(adata, batch_key, method="pca", **{k: v for k, v in params.items() if k == "layer"},
                      **({"n_comps": params["n_latent"]} if "n_latent" in params else {}))
        assert_unchanged(adata, snap)


def test_empty_genes_are_dropped_and_reported():
    adata = make_batches(n_per=10)
    adata.X[:, [3, 4]] = 0
    empty = np.flatnonzero(adata.X.sum(axis=0) == 0)
    assert {3, 4} <= set(empty)
    res = integrate(adata, "batch", max_epochs=5, copy=True)
    n = len(empty)
    assert res.info["n_genes_dropped"] == n and f"{n} genes without any count" in res.info["genes_message"]
    assert len(res.model.genes) == 100 - n and "g3" not in res.model.genes


@pytest.mark.parametrize("column", ["cell_id", "total_counts", "log_total"])
def test_batch_column_of_ids_or_measurements_is_refused(column):
    adata = make_batches(n_per=40)  # 360 cells
    adata.obs["cell_id"] = adata.obs_names.to_numpy()
    adata.obs["total_counts"] = adata.X.sum(axis=1)  # integer-valued, one per cell nearly
    adata.obs["log_total"] = np.log1p(adata.obs["total_counts"])
    snap = snapshot(adata)
    reason = {"cell_id": r"a different value for \(nearly\) every observation",
              "total_counts": r"looks like a measurement",
              "log_total": r"holds continuous numbers"}[column]
    for method in ("spatialdl", "pca"):
        with pytest.raises(InputError, match=rf"adata\.obs\['{column}'\] cannot be used as batch_key: it .*"
                                             rf"{reason}.*fit a batch column: batch\b") as err:
            integrate(adata, column, method=method)
        assert column in str(err.value)
        assert_unchanged(adata, snap)


def test_a_second_method_goes_beside_the_first_and_key_added(integrated):
    adata, _ = integrated
    adata = adata.copy()
    first = adata.obsm[LATENT_KEY].copy()
    pca = integrate(adata, "batch", method="pca", n_comps=6)
    assert pca.keys == {"obsm": f"{LATENT_KEY}_pca"} and pca.adata is adata
    assert adata.obsm[f"{LATENT_KEY}_pca"].shape == (adata.n_obs, 6)
    np.testing.assert_array_equal(adata.obsm[LATENT_KEY], first)  # the first result is kept
    records = adata.uns[UNS_KEY]
    assert records["integrate"]["method"] == "spatialdl"
    assert records[f"{LATENT_KEY}_pca"]["method"] == "pca"
    assert records[f"{LATENT_KEY}_pca"]["params"]["n_comps"] == 6
    # key_added says where, for the same method too
    own = integrate(adata, "batch", method="pca", n_comps=4, key_added="X_mine")
    assert own.keys == {"obsm": "X_mine"} and adata.obsm["X_mine"].shape == (adata.n_obs, 4)
    assert records["X_mine"]["params"]["key_added"] == "X_mine"
    np.testing.assert_array_equal(adata.obsm[LATENT_KEY], first)
    assert adata.obsm[f"{LATENT_KEY}_pca"].shape[1] == 6
    with pytest.raises(InputError, match="key_added must be a non-empty string"):
        integrate(adata, "batch", method="pca", key_added="  ")


def test_parameter_types_are_coerced_or_refused():
    adata = make_batches(n_per=10)
    res = integrate(adata, "batch", max_epochs="3", n_latent="4", copy=True)
    assert res.history.n_epochs == 3 and res.adata.obsm[LATENT_KEY].shape == (adata.n_obs, 4)
    assert res.adata.uns[UNS_KEY]["integrate"]["params"]["max_epochs"] == 3
    snap = snapshot(adata)
    with pytest.raises(InputError, match="max_epochs must be an integer"):
        integrate(adata, "batch", max_epochs="ten")
    with pytest.raises(InputError, match="seed must be an integer"):
        integrate(adata, "batch", seed=None)
    with pytest.raises(InputError, match="max_epochs must be an integer"):
        map_query(adata, res, max_epochs="ten")
    with pytest.raises(InputError, match="seed must be an integer"):
        map_query(adata, res, seed=None)
    with pytest.raises(InputError, match="has no parameter 'n_comps'"):
        integrate(adata, "batch", n_comps=5)  # a parameter of another method
    assert_unchanged(adata, snap)


def test_highly_variable_genes_by_default_when_there_are_many():
    adata = make_batches(n_per=10, n_genes=DEFAULT_N_TOP_GENES + 300)
    res = integrate(adata, "batch", max_epochs=3, copy=True)
    expected = adata.var_names[highly_variable_genes(adata.X, DEFAULT_N_TOP_GENES)]
    assert res.model.genes == list(expected) and res.info["n_genes_used"] == DEFAULT_N_TOP_GENES
    assert res.info["gene_selection"] == "highly_variable"
    assert f"{DEFAULT_N_TOP_GENES} of {adata.n_vars} genes used" in res.info["genes_message"]
    meta = res.adata.uns[UNS_KEY]["integrate"]
    assert meta["params"]["n_top_genes"] == DEFAULT_N_TOP_GENES and meta["gene_selection"] == "highly_variable"
    # fewer genes asked for, or all of them
    few = integrate(adata, "batch", max_epochs=3, n_top_genes=50, copy=True)
    assert len(few.model.genes) == 50 and few.adata.uns[UNS_KEY]["integrate"]["params"]["n_top_genes"] == 50
    every = integrate(adata, "batch", max_epochs=3, n_top_genes=None, copy=True)
    with_counts = int((adata.X.sum(axis=0) > 0).sum())
    assert len(every.model.genes) == with_counts and every.info["gene_selection"] == "all"
    with pytest.raises(InputError, match="n_top_genes must be at least 10"):
        integrate(adata, "batch", n_top_genes=3)
    # a query is matched to the model's genes only
    query = make_batches(batches=("q0",), n_per=10, seed=4, n_genes=DEFAULT_N_TOP_GENES + 300)
    mapped = map_query(query, res, max_epochs=2, copy=True)
    assert mapped.info["n_genes_used"] == DEFAULT_N_TOP_GENES and mapped.info["n_genes_missing"] == 0


def test_fewer_genes_than_the_default_are_all_used(integrated):
    adata, result = integrated  # 100 genes < DEFAULT_N_TOP_GENES: no selection
    assert result.info["gene_selection"] == "all" and len(result.model.genes) == adata.n_vars
    assert result.info["genes_message"] == f"All {adata.n_vars} genes used."


# ----------------------------------------------------------------------------- baseline, registry

def test_pca_baseline(integrated):
    adata, _ = integrated
    adata = adata.copy()  # without the VAE's result, the baseline writes to the default key
    del adata.obsm[LATENT_KEY], adata.uns[UNS_KEY]
    res = integrate(adata, "batch", method="pca", n_comps=8, copy=True)
    Z = res.adata.obsm[LATENT_KEY]
    assert Z.shape == (adata.n_obs, 8) and res.method == "pca"
    assert np.all(np.diff(Z.var(axis=0)) <= 1e-6)  # components by decreasing variance
    assert res.adata.uns[UNS_KEY]["integrate"]["method"] == "pca"


def test_methods_are_registered():
    names = {m.name: m for m in list_methods("integrate")}
    assert names["spatialdl"].native and names["spatialdl"].func is integrate_spatialdl
    assert names["pca"].func is integrate_pca
    from napari_spatialdl.tasks.api import map_query_iter as api_map

    query = make_batches(batches=("q9",), n_per=5, seed=9)
    assert api_map is not None and map_query_iter is not None
    with pytest.raises(InputError):
        run_to_end(api_map(query, object()))


def test_harmony_on_counts_and_on_normalised_values():
    pytest.importorskip("harmonypy")
    # a milder batch effect than the fixture's: Harmony (a linear correction of the principal
    # components) cannot undo a gene-wise factor of exp(N(0, 1)); it mixes these batches
    adata = make_batches(batch_strength=0.3)
    pca = integrate(adata, "batch", method="pca", copy=True).adata.obsm[LATENT_KEY]
    res = integrate(adata, "batch", method="harmony", n_pcs=20, copy=True)
    Z = res.adata.obsm[LATENT_KEY]
    assert Z.shape == (adata.n_obs, 20) and res.info["log_normalised_counts"]
    assert batch_mixing(Z, adata.obs["batch"]) > batch_mixing(pca, adata.obs["batch"]) + 0.15
    assert label_purity(Z, adata.obs["cell_type"]) > 0.9
    # normalised values are accepted as they are (Harmony does not need counts)
    adata.layers["lognorm"] = np.log1p(adata.X / adata.X.sum(axis=1, keepdims=True) * 1e4)
    norm = integrate(adata, "batch", method="harmony", layer="lognorm", n_pcs=20, copy=True)
    assert not norm.info["log_normalised_counts"]
    np.testing.assert_allclose(norm.adata.obsm[LATENT_KEY], Z, rtol=1e-3, atol=1e-3)
    meta = norm.adata.uns[UNS_KEY]["integrate"]
    assert meta["method"] == "harmony" and meta["params"]["layer"] == "lognorm"


# ----------------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_real_hippocampus(shared_data):
    root = shared_data / "hippocampus_visium" / "reference"
    counts = pd.read_csv(root / "counts.csv", index_col=0).T
    types = pd.read_csv(root / "cell_types.csv", index_col=0)["x"].reindex(counts.index)
    obs = pd.DataFrame({"replicate": counts.index.str.split("_").str[0], "cell_type": types.to_numpy()},
                       index=counts.index)
    adata = AnnData(counts.to_numpy(np.float32), obs=obs, var=pd.DataFrame(index=counts.columns))
    res = integrate(adata, "replicate", copy=True, max_epochs=40)
    Z = res.adata.obsm[LATENT_KEY]
    assert Z.shape == (adata.n_obs, 10) and np.isfinite(Z).all()
    assert res.info["n_batches"] == 16
    # 307 genes: the default n_top_genes selects nothing, every gene is modelled
    assert res.info["gene_selection"] == "all" and len(res.model.genes) == adata.n_vars
    # cell types stay recognisable in the latent space
    assert label_purity(Z, adata.obs["cell_type"]) > 0.5
    # a held-out replicate maps onto the others
    rep = adata.obs["replicate"] == "P60HippoRep6P1"
    ref = integrate(adata[~rep].copy(), "replicate", max_epochs=20)
    mapped = map_query(adata[rep].copy(), ref, max_epochs=20)
    assert mapped.adata.obsm[LATENT_KEY].shape == (int(rep.sum()), 10)
