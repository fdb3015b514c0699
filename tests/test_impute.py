"""Imputation: the native count autoencoder (``spatialdl``) and the kNN baseline, through the public API."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

from napari_spatialdl._constants import IMPUTED_LAYER, UNS_KEY
from napari_spatialdl.models._train import ProgressEvent, run_to_end
from napari_spatialdl.models.impute import CountAutoencoder, ImputeModel
from napari_spatialdl.tasks import InputError, impute, impute_iter, list_methods
from napari_spatialdl.tasks.imputation import impute_knn, impute_spatialdl, spatial_neighbours

FAST = {"max_epochs": 40}


def make_counts(n_cells=200, n_genes=100, n_types=4, seed=0, theta=8.0):
    """Cells of a few types (low-rank means) with NB noise; returns (counts, true means, types, xy)."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.8, 1.0, size=n_genes)
    profiles = base * np.exp(rng.normal(0, 1.2, size=(n_types, n_genes)))
    profiles /= profiles.sum(axis=1, keepdims=True)
    types = rng.integers(0, n_types, size=n_cells)
    library = rng.lognormal(np.log(600), 0.4, size=n_cells)
    mean = library[:, None] * profiles[types]
    counts = rng.negative_binomial(theta, theta / (theta + mean)).astype(np.float32)
    # spatial layout: each type in its own region of a grid
    xy = np.stack([types * 10 + rng.uniform(0, 8, n_cells), rng.uniform(0, 8, n_cells)], axis=1)
    return counts, mean, types, xy


def make_adata(seed=0, **kwargs) -> AnnData:
    counts, mean, types, xy = make_counts(seed=seed, **kwargs)
    counts[:, 7] = 0  # one gene without any count
    adata = AnnData(X=counts, obs=pd.DataFrame({"type": pd.Categorical(types.astype(str))},
                                               index=[f"c{i}" for i in range(len(counts))]),
                    var=pd.DataFrame(index=[f"g{j}" for j in range(counts.shape[1])]))
    adata.obsm["spatial"] = xy
    adata.layers["counts"] = counts.copy()
    adata.uns["note"] = {"kept": 1}
    return adata


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


def _corr_with_truth(values, mean, rows=slice(None)):
    a = np.log1p(np.asarray(values)[rows].ravel())
    b = np.log1p(np.asarray(mean)[rows].ravel())
    return np.corrcoef(a, b)[0, 1]


# ----------------------------------------------------------------------------- model

def test_model_fits_improves_loss_and_denoises():
    counts, mean, _, _ = make_counts()
    torch.manual_seed(0)
    model = ImputeModel(counts.shape[1], hidden=(64, 16, 64))
    history = run_to_end(model.fit_iter(counts))
    assert history.train_loss[-1] < 0.8 * history.train_loss[0]
    assert history.val_loss[-1] < 0.8 * history.val_loss[0]
    pred = model.predict(counts)
    assert pred.shape == counts.shape and (pred >= 0).all() and np.isfinite(pred).all()
    # the prediction is on each cell's count scale: library sizes are kept
    np.testing.assert_allclose(pred.sum(axis=1), counts.sum(axis=1), rtol=1e-4)
    # closer to the true means than the noisy counts are
    assert _corr_with_truth(pred, mean) > _corr_with_truth(counts, mean) + 0.05


def test_model_fills_in_hidden_counts():
    counts, mean, _, _ = make_counts(seed=1)
    rng = np.random.default_rng(0)
    nz = np.flatnonzero(counts)
    hide = rng.choice(nz, size=nz.size // 10, replace=False)
    masked = counts.copy()
    masked.flat[hide] = 0
    torch.manual_seed(0)
    model = ImputeModel(counts.shape[1], hidden=(64, 16, 64))
    run_to_end(model.fit_iter(masked))
    pred = model.predict(masked)
    truth = counts.flat[hide]
    r = np.corrcoef(np.log1p(truth), np.log1p(pred.flat[hide]))[0, 1]
    assert r > 0.6
    # the hidden entries get clearly more than the observed zeros elsewhere
    assert np.median(pred.flat[hide]) > 2 * np.median(pred[masked == 0])


@pytest.mark.parametrize("spatial", [False, True])
def test_input_standardisation_is_that_of_the_log_normalised_counts(spatial):
    """The encoder's per-gene centring and scaling (computed over blocks of rows, no normalised
    copy of X) are the mean and standard deviation of log1p(x / library * median library)."""
    from napari_spatialdl.models.impute import default_config, log_normalise, neighbour_mean

    counts, _, _, xy = make_counts(n_cells=80, n_genes=30)
    X = sp.csr_matrix(counts, dtype=np.float32)
    neighbours = spatial_neighbours(xy, 4) if spatial else None
    model = ImputeModel(30, hidden=(16, 4, 16), likelihood="nb", spatial=spatial)
    run_to_end(model.fit_iter(X, neighbours, default_config(max_epochs=1)))
    library = np.asarray(counts.sum(axis=1)).reshape(-1, 1)
    dense = np.log1p(np.asarray(counts, dtype=np.float64) / library * np.median(library))
    features = [dense]
    if spatial:
        features.append(neighbour_mean(log_normalise(counts, library, float(np.median(library))), neighbours))
    features = np.hstack([np.asarray(f, dtype=np.float64) for f in features])
    np.testing.assert_allclose(model.module.in_mean.numpy(), features.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.module.in_std.numpy(), np.maximum(features.std(axis=0), 1e-3),
                               rtol=1e-4, atol=1e-5)


def test_model_save_load_reproduces_predictions(tmp_path):
    counts, _, _, xy = make_counts(n_cells=80, n_genes=30)
    neighbours = spatial_neighbours(xy, 4)
    torch.manual_seed(0)
    model = ImputeModel(30, hidden=(16, 4, 16), likelihood="nb", spatial=True, genes=[f"g{i}" for i in range(30)])
    run_to_end(model.fit_iter(counts, neighbours))
    before = model.predict(counts, neighbours)
    path = model.save(tmp_path / "impute.pt")
    loaded = ImputeModel.load(path)
    np.testing.assert_array_equal(loaded.predict(counts, neighbours), before)
    assert loaded.extra["genes"] == [f"g{i}" for i in range(30)]
    assert loaded.init_kwargs == model.init_kwargs
    with pytest.raises(ValueError, match="spatial=True"):
        loaded.predict(counts)


def test_sparse_and_dense_input_give_the_same_model():
    counts, _, _, _ = make_counts(n_cells=60, n_genes=25)
    preds = []
    for X in (counts, sp.csr_matrix(counts)):
        torch.manual_seed(0)
        model = ImputeModel(25, hidden=(16, 4, 16))
        run_to_end(model.fit_iter(X))
        preds.append(model.predict(X))
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-3)  # float rounding only


def test_masking_is_only_used_while_training():
    module = CountAutoencoder(10, hidden=(8, 4, 8), mask_rate=0.5)
    x = torch.poisson(torch.full((5, 10), 3.0))
    lib = x.sum(1, keepdim=True)
    module.eval()
    a, b = module(x, lib)["mu"], module(x, lib)["mu"]
    assert torch.equal(a, b)
    c = module(x, lib, mask=True)["mu"]
    assert not torch.equal(a, c)


# ----------------------------------------------------------------------------- task

def test_impute_writes_layer_and_metadata(tmp_path):
    adata = make_adata()
    events = []
    result = impute(adata, progress=events.append, **FAST)
    assert result.adata is adata and result.keys == {"layers": IMPUTED_LAYER}
    out = adata.layers[IMPUTED_LAYER]
    assert out.shape == adata.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all()
    assert (out[:, 7] == 0).all()  # the gene without counts
    n_empty = int((adata.X.sum(axis=0) == 0).sum())
    assert n_empty >= 1 and (out[:, adata.X.sum(axis=0) == 0] == 0).all()
    assert result.info["n_genes_dropped"] == n_empty
    assert f"{n_empty} genes without any count" in result.info["genes_message"]
    meta = adata.uns[UNS_KEY]["impute"]
    assert meta["method"] == "spatialdl" and meta["params"]["likelihood"] == "zinb"
    assert len(meta["history"]["train_loss"]) == result.history.n_epochs == len(events)
    assert events[-1].epoch == result.history.n_epochs
    assert result.history.train_loss[-1] < result.history.train_loss[0]
    assert adata.uns["note"] == {"kept": 1}
    adata.write_h5ad(tmp_path / "out.h5ad")  # everything written can be saved
    import anndata

    back = anndata.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.layers[IMPUTED_LAYER], out)
    assert back.uns[UNS_KEY]["impute"]["method"] == "spatialdl"


def test_impute_is_seeded():
    a, b, c = make_adata(), make_adata(), make_adata()
    impute(a, **FAST, seed=1)
    impute(b, **FAST, seed=1)
    impute(c, **FAST, seed=2)
    np.testing.assert_array_equal(a.layers[IMPUTED_LAYER], b.layers[IMPUTED_LAYER])
    assert not np.array_equal(a.layers[IMPUTED_LAYER], c.layers[IMPUTED_LAYER])


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_impute_spatial_mode_uses_neighbours(likelihood):
    adata = make_adata()
    res = impute(adata, spatial=True, n_neighbors=5, likelihood=likelihood, layer="counts", copy=True, **FAST)
    out = res.adata.layers[IMPUTED_LAYER]
    assert out.shape == adata.shape and (out >= 0).all()
    assert res.model.spatial and res.adata.uns[UNS_KEY]["impute"]["params"]["spatial"]
    # moving the spots changes the neighbours and so the prediction
    moved = adata.copy()
    moved.obsm["spatial"] = np.random.default_rng(0).permutation(moved.obsm["spatial"])
    res2 = impute(moved, spatial=True, n_neighbors=5, likelihood=likelihood, layer="counts", copy=True, **FAST)
    assert not np.allclose(res2.adata.layers[IMPUTED_LAYER], out)


def test_copy_true_leaves_input_unchanged():
    adata = make_adata()
    snap = snapshot(adata)
    res = impute(adata, copy=True, **FAST)
    assert res.adata is not adata and IMPUTED_LAYER in res.adata.layers
    assert_unchanged(adata, snap)


def test_closing_the_generator_leaves_adata_unchanged():
    adata = make_adata()
    snap = snapshot(adata)
    gen = impute_iter(adata, max_epochs=100)
    for _ in range(3):
        next(gen)
    gen.close()
    assert_unchanged(adata, snap)


def test_impute_sparse_input_and_view():
    adata = make_adata()
    adata.X = sp.csr_matrix(adata.X)
    res = impute(adata, copy=True, **FAST)
    assert res.adata.layers[IMPUTED_LAYER].shape == adata.shape
    view = adata[:120]
    res = impute(view, copy=True, **FAST)
    assert res.adata.n_obs == 120


def _bad_inputs():
    def non_integer(a):
        a.layers["counts"] = a.layers["counts"] + 0.5
        return {"layer": "counts"}, "adata.layers\\['counts'\\] holds non-integer"

    def negative(a):
        a.X[0, 0] = -1
        return {}, "negative"

    def empty_cell(a):
        a.X[3] = 0
        return {}, "1 of 200 observations of adata have no counts"

    def nan(a):
        a.X[1, 1] = np.nan
        return {}, "NaN or infinite"

    def inf(a):
        a.X[1, 1] = np.inf
        return {}, "NaN or infinite"

    def missing_layer(a):
        return {"layer": "raw"}, "adata.layers\\['raw'\\] not found"

    def bad_likelihood(a):
        return {"likelihood": "poisson"}, "likelihood must be one of"

    def bad_device(a):
        return {"device": "tpu"}, "Unknown device"

    def no_coordinates(a):
        del a.obsm["spatial"]
        return {"spatial": True}, "obsm\\['spatial'\\] is missing"

    def too_many_neighbours(a):
        return {"spatial": True, "n_neighbors": 500}, "n_neighbors must be between 1 and 199"

    def bad_epochs(a):
        return {"max_epochs": 0}, "max_epochs must be a positive"

    def bad_mask(a):
        return {"mask_rate": 1.0}, "mask_rate must be in"

    return [non_integer, negative, empty_cell, nan, inf, missing_layer, bad_likelihood, bad_device,
            no_coordinates, too_many_neighbours, bad_epochs, bad_mask]


@pytest.mark.parametrize("spoil", _bad_inputs(), ids=lambda f: f.__name__)
def test_bad_input_is_refused_and_adata_unchanged(spoil):
    adata = make_adata()
    params, message = spoil(adata)
    snap = snapshot(adata)
    with pytest.raises(InputError, match=message):
        impute(adata, **params)
    assert_unchanged(adata, snap)


def test_unavailable_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    adata = make_adata()
    snap = snapshot(adata)
    with pytest.raises(InputError, match="not available"):
        impute(adata, device="cuda")
    assert_unchanged(adata, snap)


# ----------------------------------------------------------------------------- kNN baseline

def test_knn_baseline():
    adata = make_adata()
    counts, mean, _, _ = make_counts()
    res = impute(adata, method="knn", copy=True)
    out = res.adata.layers[IMPUTED_LAYER]
    assert res.method == "knn" and out.shape == adata.shape and (out >= 0).all()
    assert (out[:, 7] == 0).all()
    # on each cell's count scale: its library size is kept
    np.testing.assert_allclose(out.sum(axis=1), adata.X.sum(axis=1), rtol=1e-4)
    keep = np.ones(adata.n_vars, bool)
    keep[7] = False
    assert _corr_with_truth(out[:, keep], mean[:, keep]) > _corr_with_truth(counts[:, keep], mean[:, keep])
    assert res.adata.uns[UNS_KEY]["impute"]["method"] == "knn"
    sparse = adata.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    np.testing.assert_allclose(impute_knn_result(sparse), out, rtol=1e-4, atol=1e-5)


def impute_knn_result(adata):
    return run_to_end(impute_iter(adata, method="knn", copy=True)).adata.layers[IMPUTED_LAYER]


def test_methods_are_registered():
    names = {m.name: m for m in list_methods("impute")}
    assert names["spatialdl"].native and names["spatialdl"].func is impute_spatialdl
    assert names["knn"].func is impute_knn


def test_methods_take_no_reference():
    names = {m.name: m for m in list_methods("impute")}
    for name in ("spatialdl", "knn", "magic"):
        assert "reference" in names[name].refuses and not names[name].needs
    assert names["spatialdl"].label == "Denoising autoencoder (recommended)"


# ----------------------------------------------------------------------------- task contract

def test_second_method_goes_beside_the_first():
    adata = make_adata()
    first = impute(adata, **FAST)
    native = adata.layers[IMPUTED_LAYER].copy()
    second = impute(adata, method="knn")
    assert first.keys == {"layers": IMPUTED_LAYER}
    assert second.keys == {"layers": f"{IMPUTED_LAYER}_knn"}
    np.testing.assert_array_equal(adata.layers[IMPUTED_LAYER], native)  # not overwritten
    knn = adata.layers[f"{IMPUTED_LAYER}_knn"]
    assert knn.shape == adata.shape and (knn[:, 7] == 0).all() and not np.allclose(knn, native)
    meta = adata.uns[UNS_KEY]
    assert meta["impute"]["method"] == "spatialdl"
    assert meta[f"{IMPUTED_LAYER}_knn"]["method"] == "knn"
    assert meta[f"{IMPUTED_LAYER}_knn"]["params"]["n_neighbors"] == 15
    # the same method again replaces its own result
    again = impute(adata, **FAST, seed=5)
    assert again.keys == {"layers": IMPUTED_LAYER}
    assert not np.array_equal(adata.layers[IMPUTED_LAYER], native)
    np.testing.assert_array_equal(adata.layers[f"{IMPUTED_LAYER}_knn"], knn)


def test_key_added():
    adata = make_adata()
    res = impute(adata, method="knn", key_added="denoised")
    assert res.keys == {"layers": "denoised"} and IMPUTED_LAYER not in adata.layers
    assert adata.layers["denoised"].shape == adata.shape
    entry = adata.uns[UNS_KEY]["denoised"]
    assert entry["method"] == "knn" and entry["params"]["key_added"] == "denoised"
    snap = snapshot(make_adata())
    fresh = make_adata()
    with pytest.raises(InputError, match="key_added must be a non-empty string"):
        impute(fresh, method="knn", key_added=" ")
    assert_unchanged(fresh, snap)


def test_parameter_types_are_coerced():
    adata = make_adata()
    res = impute(adata, max_epochs="10", hidden="32", mask_rate="0.25", spatial="no")
    assert res.history.n_epochs <= 10
    params = adata.uns[UNS_KEY]["impute"]["params"]
    assert params["max_epochs"] == 10 and isinstance(params["max_epochs"], int | np.integer)
    assert params["hidden"] == 32 and params["mask_rate"] == 0.25 and not params["spatial"]
    assert params["bottleneck"] == 16 and params["seed"] == 0  # defaults recorded from the signature
    assert res.model.init_kwargs["hidden"] == [32, 16, 32]
    fresh = make_adata()
    snap = snapshot(fresh)
    with pytest.raises(InputError, match="max_epochs must be an integer, got 'ten'"):
        impute(fresh, max_epochs="ten")
    with pytest.raises(InputError, match="n_neighbors must be an integer"):
        impute(fresh, method="knn", n_neighbors=2.5)
    with pytest.raises(InputError, match="likelihood must be one of 'zinb', 'nb'"):
        impute(fresh, likelihood="poisson")
    assert_unchanged(fresh, snap)


def test_unknown_parameter_is_refused():
    adata = make_adata()
    snap = snapshot(adata)
    with pytest.raises(InputError, match="no parameter 'n_epochs'.*max_epochs"):
        impute(adata, n_epochs=10)
    with pytest.raises(InputError, match="no parameter 'likelihood'"):
        impute(adata, method="knn", likelihood="nb")
    assert_unchanged(adata, snap)


def test_denoisers_refuse_a_reference():
    adata, ref = make_adata(), make_adata(seed=1)
    snap = snapshot(adata)
    for method in ("spatialdl", "knn"):
        with pytest.raises(InputError, match=f"method '{method}' does not use reference="):
            impute(adata, method=method, reference=ref, **(FAST if method == "spatialdl" else {}))
    with pytest.raises(InputError, match="reference_layer='counts' names a layer of reference, but no reference"):
        impute(adata, reference_layer="counts", **FAST)
    assert_unchanged(adata, snap)


@pytest.fixture
def reference_method():
    """A method registered with needs=("reference",): what a gene-prediction method receives."""
    from napari_spatialdl.tasks._registry import REGISTRY, register
    from napari_spatialdl.tasks.imputation import ImputationOutput

    seen = {}

    @register("impute", "_test_reference", needs=("reference",))
    def _method(data):
        """Each observation's library spread over the reference's mean profile of the kept genes."""
        seen["data"] = data
        yield ProgressEvent(0, 1, 0, message="reference mean")
        ref = data.reference[:, data.genes]
        profile = np.asarray(data.reference_counts[:, data.reference.var_names.get_indexer(data.genes)]
                             .mean(axis=0)).ravel()
        assert ref.n_vars == len(profile)
        return ImputationOutput(imputed=np.outer(data.library, profile / profile.sum()))

    yield seen
    REGISTRY["impute"].pop("_test_reference", None)


def test_reference_reaches_methods_that_need_it(reference_method):
    adata, ref = make_adata(), make_adata(seed=1)
    ref.layers["counts"] = sp.csr_matrix(ref.layers["counts"])
    with pytest.raises(InputError, match="needs reference="):
        impute(adata, method="_test_reference")
    bad = ref.copy()
    snap = snapshot(adata)
    with pytest.raises(InputError, match=r"reference\.layers\['raw'\] not found.*reference_layer=None"):
        impute(adata, method="_test_reference", reference=bad, reference_layer="raw")
    bad.X[0, 0] = -1
    with pytest.raises(InputError, match=r"reference\.X has negative values"):
        impute(adata, method="_test_reference", reference=bad)
    assert_unchanged(adata, snap)
    res = impute(adata, method="_test_reference", reference=ref, reference_layer="counts")
    data = reference_method["data"]
    assert data.reference is ref and data.reference_layer == "counts" and sp.issparse(data.reference_counts)
    empty = np.asarray(adata.X.sum(axis=0)).ravel() == 0
    assert data.counts.shape == (adata.n_obs, adata.n_vars - empty.sum()) and not data.keep[7]
    np.testing.assert_array_equal(data.keep, ~empty)
    assert list(data.genes) == list(adata.var_names[~empty])
    out = adata.layers[IMPUTED_LAYER]
    np.testing.assert_allclose(out.sum(axis=1), adata.X.sum(axis=1), rtol=1e-4)
    assert (out[:, 7] == 0).all() and res.method == "_test_reference"
    assert "reference" not in adata.uns[UNS_KEY]["impute"]["params"]  # AnnData inputs are not recorded
    assert adata.uns[UNS_KEY]["impute"]["params"]["reference_layer"] == "counts"


def test_sparse_counts_stay_sparse_in_the_prepared_inputs(reference_method):
    adata, ref = make_adata(), make_adata(seed=1)
    adata.X = sp.csr_matrix(adata.X)
    impute(adata, method="_test_reference", reference=ref)
    data = reference_method["data"]
    empty = np.asarray(adata.X.sum(axis=0)).ravel() == 0
    assert sp.isspmatrix_csr(data.counts) and data.counts.shape[1] == adata.n_vars - empty.sum()
    np.testing.assert_allclose(data.library, np.asarray(adata.X.sum(axis=1)).ravel())


def test_too_few_observations():
    adata = make_adata()[:2].copy()
    with pytest.raises(InputError, match="adata has 2 observations; imputation needs at least 3"):
        impute(adata, method="knn")


# ----------------------------------------------------------------------------- MAGIC backend

def test_magic_backend():
    pytest.importorskip("magic")
    import magic

    if not hasattr(magic, "MAGIC"):
        pytest.skip("the 'magic' module here is not magic-impute")
    adata = make_adata()
    counts, mean, _, _ = make_counts()
    impute(adata, method="knn")
    res = impute(adata, method="magic", knn="5", t=3)
    key = f"{IMPUTED_LAYER}_magic"
    assert res.keys == {"layers": key}
    out = adata.layers[key]
    assert out.shape == adata.shape and out.dtype == np.float32 and np.isfinite(out).all() and (out >= 0).all()
    assert (out[:, 7] == 0).all()  # the gene without counts: dropped by prepare, written as 0
    keep = np.ones(adata.n_vars, bool)
    keep[7] = False
    assert _corr_with_truth(out[:, keep], mean[:, keep]) > _corr_with_truth(counts[:, keep], mean[:, keep])
    entry = adata.uns[UNS_KEY][key]
    assert entry["method"] == "magic" and entry["params"]["knn"] == 5 and "magic" in entry["versions_backend"]
    snap = snapshot(make_adata())
    fresh = make_adata()
    with pytest.raises(InputError, match="knn=500 must be smaller than the number of observations"):
        impute(fresh, method="magic", knn=500)
    with pytest.raises(InputError, match="does not use reference="):
        impute(fresh, method="magic", reference=make_adata(seed=1))
    assert_unchanged(fresh, snap)


def test_spatial_neighbours_exclude_self_even_with_duplicates():
    xy = np.array([[0, 0], [0, 0], [1, 0], [5, 5], [5, 6]], dtype=float)
    nb = spatial_neighbours(xy, 2)
    assert nb.shape == (5, 2)
    for i, row in enumerate(nb):
        assert i not in row
    assert set(nb[0]) == {1, 2}


# ----------------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_real_hippocampus(shared_data):
    root = shared_data / "hippocampus_visium"
    ref = pd.read_csv(root / "reference" / "counts.csv", index_col=0).T
    spots = pd.read_csv(root / "spatial" / "counts.csv", index_col=0).T
    coords = pd.read_csv(root / "spatial" / "coords.csv", index_col=0).reindex(spots.index)
    cells = AnnData(ref.to_numpy(np.float32), var=pd.DataFrame(index=ref.columns))
    res = impute(cells, copy=True, max_epochs=30)
    out = res.adata.layers[IMPUTED_LAYER]
    assert out.shape == cells.shape and np.isfinite(out).all() and (out >= 0).all()
    # denoised, not replaced: each gene's imputed mean follows its raw mean
    assert np.corrcoef(np.log1p(out.mean(0)), np.log1p(cells.X.mean(0)))[0, 1] > 0.95
    adata = AnnData(spots.to_numpy(np.float32), var=pd.DataFrame(index=spots.columns))
    adata.obsm["spatial"] = coords[["x", "y"]].to_numpy(float)
    res = impute(adata, spatial=True, copy=True, max_epochs=30)
    assert res.adata.layers[IMPUTED_LAYER].shape == adata.shape
    assert np.isfinite(res.adata.layers[IMPUTED_LAYER]).all()
