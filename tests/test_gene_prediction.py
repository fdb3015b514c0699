"""Gene prediction from a reference (impute methods ``transfer`` and ``knn_reference``; Tangram and
gimVI when installed), through the public API, on tiny synthetic data."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as st
import torch
from anndata import AnnData, read_h5ad

import napari_spatialdl as sdl
from napari_spatialdl._constants import IMPUTED_LAYER, PREDICTED_GENES_KEY, UNS_KEY
from napari_spatialdl.models import TrainingConfig, run_to_end
from napari_spatialdl.models.gene_transfer import GeneTransferModel
from napari_spatialdl.tasks import InputError, get_method, impute, impute_iter
from napari_spatialdl.tasks.gene_prediction import predicted_gene_names, reconstruct
from napari_spatialdl.tasks.imputation import DENSE_LIMIT, prepare

FAST = {"max_epochs": 20, "finetune_epochs": 10, "n_topics": 16, "hidden": 64, "device": "cpu"}
N_HIDDEN = 12


def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


@pytest.fixture(scope="module")
def tissue():
    """(spatial without the hidden genes, reference with all, hidden genes, truth log-normalised)."""
    spatial, reference = sdl.datasets.synthetic_tissue(seed=3, n_spots=160, n_genes=80, n_reference_cells=320,
                                                       image_size=200)
    rng = np.random.default_rng(0)
    hidden = list(spatial.var_names[np.sort(rng.permutation(spatial.n_vars)[:N_HIDDEN])])
    counts = _dense(spatial.X)
    library = counts.sum(axis=1, keepdims=True)
    truth = np.log1p(counts / library * 1e4)[:, spatial.var_names.get_indexer(hidden)]
    panel = spatial[:, ~spatial.var_names.isin(hidden)].copy()
    panel.X = sp.csr_matrix(panel.X)  # sparse stays sparse
    return panel, reference, hidden, truth


def _fresh(tissue) -> tuple[AnnData, AnnData, list[str], np.ndarray]:
    panel, reference, hidden, truth = tissue
    return panel.copy(), reference, hidden, truth


def _spearman(pred: pd.DataFrame, truth: np.ndarray, genes: list[str]) -> float:
    return float(np.nanmean([st.spearmanr(pred[g].to_numpy(), truth[:, j])[0] for j, g in enumerate(genes)]))


def snapshot(adata: AnnData) -> dict:
    return {"X": _dense(adata.X), "obs": adata.obs.copy(), "var": adata.var.copy(),
            "obsm": {k: (v.copy() if isinstance(v, pd.DataFrame) else np.array(v, copy=True))
                     for k, v in adata.obsm.items()},
            "layers": {k: _dense(v) for k, v in adata.layers.items()},
            "uns": copy.deepcopy(dict(adata.uns))}


def assert_unchanged(adata: AnnData, snap: dict) -> None:
    np.testing.assert_array_equal(_dense(adata.X), snap["X"])
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    assert set(adata.obsm) == set(snap["obsm"])
    assert set(adata.layers) == set(snap["layers"])
    assert set(adata.uns) == set(snap["uns"])
    assert (UNS_KEY in adata.uns) == (UNS_KEY in snap["uns"])


# ----------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("method, params", [("transfer", FAST), ("knn_reference", {})])
def test_held_out_genes_follow_the_truth(tissue, method, params):
    panel, reference, hidden, truth = _fresh(tissue)
    result = impute(panel, reference=reference, method=method, genes=hidden, **params)
    pred = panel.obsm[result.keys["obsm"]]
    assert list(pred.columns) == hidden and pred.index.equals(panel.obs_names)
    assert np.isfinite(pred.to_numpy()).all() and (pred.to_numpy() >= 0).all()
    rho = _spearman(pred, truth, hidden)
    # a constant prediction has no rank correlation (0); the same values shuffled across spots neither
    shuffled = pred.iloc[np.random.default_rng(1).permutation(len(pred))].reset_index(drop=True)
    assert rho > 0.15, rho
    assert rho > _spearman(shuffled, truth, hidden) + 0.1
    # on the reference's scale: per 10^4 transcripts of a whole cell, the same order as the reference's
    ref_share = _dense(reference[:, hidden].X).sum(axis=0) / _dense(reference.X).sum() * 1e4
    ratio = pred.to_numpy().mean(axis=0).sum() / ref_share.sum()
    assert 0.3 < ratio < 3, ratio


def test_transfer_beats_the_reference_average_per_gene(tissue):
    """Per gene, the prediction varies with the tissue: closer to the truth than the reference's mean."""
    panel, reference, hidden, truth = _fresh(tissue)
    impute(panel, reference=reference, method="transfer", genes=hidden, **FAST)
    pred = np.log1p(panel.obsm[PREDICTED_GENES_KEY].to_numpy())
    # both centred per gene (platform effects shift the level): the remaining error vs a constant
    err_model = ((pred - pred.mean(0)) - (truth - truth.mean(0))) ** 2
    err_const = (truth - truth.mean(0)) ** 2
    assert err_model.mean() < err_const.mean()


# ----------------------------------------------------------------------------- refusals

def test_unknown_gene_is_named_with_the_reference(tissue):
    panel, reference, hidden, _ = _fresh(tissue)
    with pytest.raises(InputError, match=r"not in reference \(80 genes\): 'NoSuchGene'"):
        impute(panel, reference=reference, method="transfer", genes=[hidden[0], "NoSuchGene"], **FAST)
    with pytest.raises(InputError, match=r"did you mean 'Gapdh'"):
        impute(panel, reference=reference, method="knn_reference", genes=["gapdh"])


def test_measured_genes_need_include_measured(tissue):
    panel, reference, hidden, _ = _fresh(tissue)
    measured = str(panel.var_names[0])
    with pytest.raises(InputError, match=rf"'{measured}' is measured in adata already.*include_measured=True"):
        impute(panel, reference=reference, method="knn_reference", genes=[hidden[0], measured])
    result = impute(panel, reference=reference, method="knn_reference", genes=f"{hidden[0]}, {measured}",
                    include_measured=True)
    assert list(panel.obsm[result.keys["obsm"]].columns) == [hidden[0], measured]


def test_method_without_reference_is_refused(tissue):
    panel, _, hidden, _ = _fresh(tissue)
    snap = snapshot(panel)
    for method in ("transfer", "knn_reference"):
        with pytest.raises(InputError, match=rf"'{method}' needs reference="):
            impute(panel, method=method, genes=hidden)
    assert_unchanged(panel, snap)


def test_other_bad_inputs(tissue):
    panel, reference, hidden, _ = _fresh(tissue)
    with pytest.raises(InputError, match="genes is empty"):
        impute(panel, reference=reference, method="knn_reference", genes=[])
    with pytest.raises(InputError, match="labels_key"):
        impute(panel, reference=reference, method="transfer", genes=hidden, labels_key="no_column", **FAST)
    other = reference.copy()  # the panel's genes are in it, but only 5 of them with counts
    other.X = _dense(other.X)
    other.X[:, other.var_names.isin(panel.var_names[5:])] = 0
    other = other[other.X.sum(axis=1) > 0].copy()
    with pytest.raises(InputError, match="Only 5 genes have counts in both adata and reference"):
        impute(panel, reference=other, method="knn_reference")
    with pytest.raises(InputError, match="dense must be True or False or one of 'auto'"):
        impute(panel, reference=reference, method="knn_reference", genes=hidden, dense="sometimes")


def test_table_only_methods_refuse_a_huge_table(tissue):
    panel, reference, _, _ = _fresh(tissue)
    prepared = prepare({"adata": panel, "layer": None, "reference": reference, "reference_layer": None},
                       method=get_method("impute", "transfer"), device=torch.device("cpu"), seed=0)
    n_genes = DENSE_LIMIT // panel.n_obs + 1
    with pytest.raises(InputError, match="no compact representation.*dense=True"):
        prepared.prediction_dense(n_genes, "auto", compact=False, method="tangram")
    assert prepared.prediction_dense(n_genes, True, compact=False, method="tangram") is True
    assert prepared.prediction_dense(n_genes, "auto") is False
    assert prepared.prediction_dense(10, "auto") is True


# ----------------------------------------------------------------------------- results

def test_results_land_beside_the_denoised_layer(tissue):
    panel, reference, hidden, _ = _fresh(tissue)
    impute(panel, method="knn")  # denoise the measured genes first
    denoised = panel.layers[IMPUTED_LAYER].copy()
    result = impute(panel, reference=reference, method="transfer", genes=hidden, labels_key="cell_type", **FAST)
    assert result.keys == {"obsm": PREDICTED_GENES_KEY}
    table = panel.obsm[PREDICTED_GENES_KEY]
    assert isinstance(table, pd.DataFrame) and table.shape == (panel.n_obs, len(hidden))
    np.testing.assert_array_equal(panel.layers[IMPUTED_LAYER], denoised)
    record = panel.uns[UNS_KEY][PREDICTED_GENES_KEY]
    assert record["method"] == "transfer" and record["task"] == "impute"
    assert record["params"]["labels_key"] == "cell_type" and list(record["params"]["genes"]) == hidden
    assert record["n_topics"] >= reference.obs["cell_type"].nunique()
    assert record["n_genes_shared"] == panel.n_vars
    assert panel.uns[UNS_KEY]["impute"]["method"] == "knn"  # the denoiser's record is kept
    # a second method goes beside the first
    again = impute(panel, reference=reference, method="knn_reference", genes=hidden)
    assert again.keys == {"obsm": f"{PREDICTED_GENES_KEY}_knn_reference"}
    pd.testing.assert_frame_equal(panel.obsm[PREDICTED_GENES_KEY], table)


def test_all_genes_and_include_measured(tissue):
    panel, reference, hidden, _ = _fresh(tissue)
    impute(panel, reference=reference, method="knn_reference")  # genes="all"
    assert sorted(panel.obsm[PREDICTED_GENES_KEY].columns) == sorted(hidden)
    impute(panel, reference=reference, method="knn_reference", include_measured=True, key_added="every")
    assert list(panel.obsm["every_predicted"].columns) == list(reference.var_names)


def test_reconstruct_equals_the_stored_prediction(tissue, tmp_path):
    panel, reference, hidden, _ = _fresh(tissue)
    table = impute(panel, reference=reference, method="transfer", genes=hidden, seed=2, **FAST)
    compact = impute(panel, reference=reference, method="transfer", genes=hidden, seed=2, dense=False,
                     key_added="c", **FAST)
    assert compact.keys == {"obsm": "c_predicted_factors", "uns_prediction_loadings": "c_predicted_loadings"}
    assert "c_predicted" not in panel.obsm
    assert panel.obsm["c_predicted_factors"].shape == (panel.n_obs, FAST["n_topics"])
    stored = panel.obsm[table.keys["obsm"]]
    gene = hidden[3]
    # the table's column, read back
    pd.testing.assert_frame_equal(reconstruct(panel, gene), stored[[gene]])
    # the compact form: the model's own prediction, and the dense run's table (same seed)
    rebuilt = reconstruct(panel, [gene, hidden[0]], key="c_predicted_factors")
    model_pred = compact.model.predict(sp.csr_matrix(panel.X), [gene, hidden[0]])
    np.testing.assert_allclose(rebuilt.to_numpy(), model_pred, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rebuilt[gene].to_numpy(), stored[gene].to_numpy(), rtol=1e-4, atol=1e-5)
    assert predicted_gene_names(panel, "c_predicted_loadings") == hidden
    # after writing and reading the file
    path = tmp_path / "predicted.h5ad"
    panel.write_h5ad(path)
    back = read_h5ad(path)
    np.testing.assert_allclose(reconstruct(back, [gene], key="c_predicted_factors").to_numpy(),
                               rebuilt[[gene]].to_numpy(), rtol=1e-6)
    with pytest.raises(InputError, match=r"not 'Nope'.*predicted_gene_names"):
        reconstruct(panel, "Nope", key="c_predicted_factors")
    with pytest.raises(InputError, match="2 gene predictions"):
        reconstruct(_two_results(back), gene)


def _two_results(adata: AnnData) -> AnnData:
    """The same AnnData without its default-key result (two keyed ones remain: ambiguous)."""
    out = adata.copy()
    del out.obsm[PREDICTED_GENES_KEY]
    uns = dict(out.uns[UNS_KEY])
    uns.pop(PREDICTED_GENES_KEY)
    uns["other_predicted"] = dict(uns["c_predicted_factors"])
    out.uns[UNS_KEY] = uns
    return out


def test_knn_compact_form_is_sparse_and_exact(tissue, tmp_path):
    panel, reference, hidden, _ = _fresh(tissue)
    impute(panel, reference=reference, method="knn_reference", genes=hidden)
    impute(panel, reference=reference, method="knn_reference", genes=hidden, dense=False, key_added="k")
    assert sp.issparse(panel.obsm["k_predicted_factors"])
    path = tmp_path / "knn.h5ad"
    panel.write_h5ad(path)
    back = read_h5ad(path)
    np.testing.assert_allclose(reconstruct(back, hidden, key="k_predicted_factors").to_numpy(),
                               panel.obsm[PREDICTED_GENES_KEY][hidden].to_numpy(), rtol=1e-5)


def test_predicted_gene_is_a_colour_key(tissue):
    """A predicted gene colours the spots like a measured one: from the table, or reconstructed
    from the compact form for that gene only; the legend says it was predicted."""
    from napari_spatialdl.layers import describe_key, spot_values
    from napari_spatialdl.tasks._derived import suggested_predicted_gene

    panel, reference, hidden, truth = _fresh(tissue)
    impute(panel, reference=reference, method="knn_reference", genes=hidden)
    impute(panel, reference=reference, method="knn_reference", genes=hidden, dense=False, key_added="k")
    gene = hidden[2]
    from_table, kind = spot_values(panel, f"{PREDICTED_GENES_KEY}:{gene}")
    from_compact, kind_compact = spot_values(panel, f"k_predicted_factors:{gene}")
    assert kind == kind_compact == "numeric"
    np.testing.assert_allclose(from_compact, from_table, rtol=1e-5)
    assert describe_key(panel, f"{PREDICTED_GENES_KEY}:{gene}") == f"{gene}, predicted from the reference"
    # the factors' columns stay readable by index; a gene the prediction lacks is not invented
    assert spot_values(panel, "k_predicted_factors:0")[0].shape == (panel.n_obs,)
    with pytest.raises(KeyError):
        spot_values(panel, f"{PREDICTED_GENES_KEY}:{panel.var_names[0]}")
    # the gene the view opens on: one of the predicted, the same from both forms
    chosen = suggested_predicted_gene(panel, "k_predicted_factors", chunk=5)
    assert chosen in hidden
    assert suggested_predicted_gene(panel, PREDICTED_GENES_KEY) == chosen


def test_cancel_leaves_the_data_unchanged(tissue):
    panel, reference, hidden, _ = _fresh(tissue)
    snap = snapshot(panel)
    ref_snap = snapshot(reference)
    gen = impute_iter(panel, method="transfer", reference=reference, genes=hidden, **FAST)
    stages = {next(gen).stage for _ in range(5)}
    gen.close()
    assert "reference" in stages
    assert_unchanged(panel, snap)
    assert_unchanged(reference, ref_snap)
    assert torch.get_num_threads() >= 1


# ----------------------------------------------------------------------------- model

def test_model_save_load_reproduces_predictions(tissue, tmp_path):
    panel, reference, hidden, _ = _fresh(tissue)
    shared = list(panel.var_names)
    torch.manual_seed(0)
    model = GeneTransferModel(shared, hidden, n_topics=8, hidden=(32, 16))
    R = sp.csr_matrix(reference[:, shared].X)
    run_to_end(model.fit_reference_iter(R, sp.csr_matrix(reference[:, hidden].X), _dense(reference.X).sum(axis=1),
                                        config=TrainingConfig(max_epochs=5)))
    model.set_spatial_moments(panel.X)
    before = model.predict(panel.X, hidden)
    loaded = GeneTransferModel.load(model.save(tmp_path / "transfer.pt"))
    np.testing.assert_array_equal(loaded.predict(panel.X, hidden), before)
    topics = model.topics()
    np.testing.assert_allclose(topics.sum(axis=1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- reference tools

@pytest.mark.parametrize("method, module, params", [
    ("tangram", "tangram", {"num_epochs": 50}),
    ("tangram", "tangram", {"num_epochs": 50, "mode": "clusters", "labels_key": "cell_type"}),
    ("gimvi", "scvi", {"max_epochs": 5}),
])
def test_reference_tools_write_the_same_table(tissue, method, module, params):
    pytest.importorskip(module)
    panel, reference, hidden, truth = _fresh(tissue)
    snap = snapshot(panel)
    with pytest.raises(InputError, match="table only"):
        impute(panel, reference=reference, method=method, genes=hidden, dense=False, **params)
    assert_unchanged(panel, snap)
    result = impute(panel, reference=reference, method=method, genes=hidden, device="cpu", **params)
    pred = panel.obsm[result.keys["obsm"]]
    assert list(pred.columns) == hidden and pred.index.equals(panel.obs_names)
    assert np.isfinite(pred.to_numpy()).all() and (pred.to_numpy() >= 0).all()
    if method == "tangram":  # gimVI after 5 epochs has learnt little
        assert _spearman(pred, truth, hidden) > 0.1
    assert predicted_gene_names(panel) == hidden


# ----------------------------------------------------------------------------- benchmark protocol

def _protocols():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import _protocols

    return _protocols


def test_gene_folds_partition_the_genes():
    P = _protocols()
    genes = [f"g{i}" for i in range(23)]
    folds = P.gene_folds(genes, 5, seed=1)
    assert len(folds) == 5 and sorted(map(len, folds)) == [4, 4, 5, 5, 5]
    assert sorted(g for f in folds for g in f) == sorted(genes)
    assert [list(f) for f in folds] == [list(f) for f in P.gene_folds(genes, 5, seed=1)]
    with pytest.raises(ValueError, match="n_folds"):
        P.gene_folds(genes[:3], 5)


def test_gene_scores_are_per_gene_correlations():
    P = _protocols()
    rng = np.random.default_rng(0)
    counts = rng.poisson(5.0, size=(40, 4)).astype(np.float32)
    adata = AnnData(counts, obs=pd.DataFrame(index=[f"s{i}" for i in range(40)]),
                    var=pd.DataFrame(index=["a", "b", "c", "d"]))
    truth = P.log_normalised(adata)[["a", "b", "c"]]
    truth["c"] = 1.0  # a gene that does not vary: not scored
    perfect = np.expm1(truth)  # log1p(prediction) == truth
    scores = P.score_gene_prediction(truth, perfect.iloc[::-1])  # aligned by name
    np.testing.assert_allclose(scores.loc[["a", "b"]].to_numpy(), 1.0)
    assert scores.loc["c"].isna().all()
    const = perfect.copy()
    const["a"] = 3.0
    assert P.score_gene_prediction(truth, const).loc["a", "pearson"] == 0.0
    summary = P.summarise_gene_scores(P.score_gene_prediction(truth, const))
    assert summary["n_genes"] == 2 and summary["spearman_mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lacks 1 genes"):
        P.score_gene_prediction(truth, perfect[["a", "b"]])
