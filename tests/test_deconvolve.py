"""Spatial deconvolution: the native NB model (``spatialdl``) and the NNLS baseline.

Synthetic data are generated here with numpy: cell-type profiles with marker genes, a
reference of single cells, and spots on a grid whose cell-type mix varies smoothly in space,
seen through a gene-specific platform effect. The truth is the fraction of cells of each type.
"""

from __future__ import annotations

import copy as _copy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import napari_spatialdl as sdl
from napari_spatialdl._constants import ABUNDANCE_KEY, PROPORTIONS_KEY, UNS_KEY
from napari_spatialdl.models._train import ProgressEvent, run_to_end
from napari_spatialdl.models.deconvolution import SpotDeconvolution, spot_neighbour_edges
from napari_spatialdl.tasks import InputError, deconvolve_iter

TYPES = ["astro", "neuron", "oligo", "micro"]
N_GENES = 80


def deconvolve_spatialdl(*args, **kwargs):
    """The native method's generator, through the public API."""
    return deconvolve_iter(*args, method="spatialdl", **kwargs)


def deconvolve_nnls(*args, **kwargs):
    return deconvolve_iter(*args, method="nnls", **kwargs)


def _profiles(rng: np.random.Generator) -> np.ndarray:
    prof = rng.gamma(1.0, 1.0, size=(len(TYPES), N_GENES))
    for t in range(len(TYPES)):  # 8 marker genes per type
        prof[t, t * 8:(t + 1) * 8] *= 8.0
    return prof / prof.sum(axis=1, keepdims=True)


def _nb(rng: np.random.Generator, mu: np.ndarray, theta: float = 10.0) -> np.ndarray:
    return rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)


def make_data(seed: int = 0, n_per_type: int = 40, side: int = 12, platform_sd: float = 0.3,
              cell_depth: float = 400.0) -> tuple[AnnData, AnnData, pd.DataFrame]:
    """(spatial, reference, truth): spots on a ``side x side`` grid and an annotated reference."""
    rng = np.random.default_rng(seed)
    prof = _profiles(rng)
    genes = [f"g{i}" for i in range(N_GENES)]
    # reference: cells of every type, depth varying per cell and per type
    type_depth = cell_depth * np.exp(rng.normal(0, 0.3, len(TYPES)))
    idx = np.repeat(np.arange(len(TYPES)), n_per_type)
    lib = type_depth[idx] * np.exp(rng.normal(0, 0.3, len(idx)))
    Xr = _nb(rng, prof[idx] * lib[:, None])
    Xr[:, -1] += 1  # no empty cell
    reference = AnnData(Xr, obs=pd.DataFrame({"cell_type": pd.Categorical(np.array(TYPES)[idx])},
                                             index=[f"cell{i}" for i in range(len(idx))]),
                        var=pd.DataFrame(index=genes))
    # spots: each type dominates around its own centre; cells drawn from the smooth mix
    yy, xx = np.mgrid[0:side, 0:side]
    xy = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(float)
    centres = rng.uniform(0, side, size=(len(TYPES), 2))
    d2 = ((xy[:, None, :] - centres[None]) ** 2).sum(-1)
    mix = np.exp(-d2 / (2 * (side / 3) ** 2)) + 0.05
    mix /= mix.sum(axis=1, keepdims=True)
    n_cells = rng.integers(4, 12, size=len(xy))
    cells = np.stack([rng.multinomial(n, p) for n, p in zip(n_cells, mix)])
    truth = cells / cells.sum(axis=1, keepdims=True)
    platform = np.exp(rng.normal(0, platform_sd, N_GENES))
    mu = (cells * type_depth) @ prof * platform * 3.0  # spots capture 3x more per cell
    Xs = _nb(rng, mu, theta=20.0)
    spots = [f"spot{i}" for i in range(len(xy))]
    spatial = AnnData(Xs, obs=pd.DataFrame(index=spots), var=pd.DataFrame(index=genes))
    spatial.obsm["spatial"] = xy * 100.0
    spatial.var["true_platform_effect"] = platform
    return spatial, reference, pd.DataFrame(truth, index=spots, columns=TYPES)


def rmse(pred: pd.DataFrame, truth: pd.DataFrame) -> float:
    return float(np.sqrt(np.mean((pred.reindex(columns=truth.columns).to_numpy() - truth.to_numpy()) ** 2)))


def neighbour_difference(P: np.ndarray, xy: np.ndarray) -> float:
    edges = spot_neighbour_edges(xy, 6)
    return float(((P[edges[:, 0]] - P[edges[:, 1]]) ** 2).sum(axis=1).mean())


def snapshot(adata: AnnData) -> dict:
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X, copy=True)
    return {"X": X, "obs": adata.obs.copy(), "var": adata.var.copy(),
            "obsm": {k: _copy.deepcopy(v) for k, v in adata.obsm.items()},
            "layers": {k: (v.toarray() if sp.issparse(v) else np.array(v, copy=True)) for k, v in adata.layers.items()},
            "uns": _copy.deepcopy(dict(adata.uns))}


def assert_unchanged(adata: AnnData, snap: dict) -> None:
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    np.testing.assert_array_equal(X, snap["X"])
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert set(adata.obsm.keys()) == set(snap["obsm"].keys())
    for k, v in snap["obsm"].items():
        np.testing.assert_array_equal(np.asarray(adata.obsm[k]), np.asarray(v))
    assert set(adata.layers.keys()) == set(snap["layers"].keys())
    for k, v in snap["layers"].items():
        got = adata.layers[k]
        np.testing.assert_array_equal(got.toarray() if sp.issparse(got) else np.asarray(got), v)
    assert set(adata.uns.keys()) == set(snap["uns"].keys())
    assert repr(dict(adata.uns)) == repr(snap["uns"])


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def fitted(data):
    spatial, reference, truth = data
    result = run_to_end(deconvolve_spatialdl(spatial, reference, "cell_type", copy=True))
    return result


# ------------------------------------------------------------------------ accuracy

def test_recovers_known_proportions(data, fitted):
    spatial, reference, truth = data
    props = fitted.adata.obsm[PROPORTIONS_KEY]
    uniform = pd.DataFrame(1.0 / len(TYPES), index=truth.index, columns=truth.columns)
    err = rmse(props, truth)
    assert err < 0.08, err
    assert err < 0.4 * rmse(uniform, truth)
    # every type is tracked across spots
    for t in TYPES:
        assert np.corrcoef(props[t], truth[t])[0, 1] > 0.8, t


def test_result_layout(data, fitted):
    spatial, reference, truth = data
    out = fitted.adata
    props, abund = out.obsm[PROPORTIONS_KEY], out.obsm[ABUNDANCE_KEY]
    assert isinstance(props, pd.DataFrame) and isinstance(abund, pd.DataFrame)
    assert list(props.columns) == sorted(TYPES) and list(abund.columns) == sorted(TYPES)
    assert list(props.index) == list(spatial.obs_names) and list(abund.index) == list(spatial.obs_names)
    np.testing.assert_allclose(props.sum(axis=1), 1.0, atol=1e-6)
    assert (props.to_numpy() >= 0).all() and (abund.to_numpy() >= 0).all()
    # proportions are the abundances normalised per spot
    np.testing.assert_allclose(abund.div(abund.sum(axis=1), axis=0), props, atol=1e-6)
    meta = out.uns[UNS_KEY]["deconvolve"]
    assert meta["method"] == "spatialdl" and meta["n_genes"] == N_GENES
    assert len(meta["history"]["train_loss"]) == fitted.history.n_epochs
    assert fitted.keys == {"obsm": PROPORTIONS_KEY, "obsm_abundance": ABUNDANCE_KEY}
    assert f"{N_GENES} genes are shared" in fitted.info["genes_message"]
    # the loss went down
    losses = fitted.history.train_loss
    assert losses[-1] < losses[0]


def test_abundance_tracks_cell_numbers():
    # twice the cells in a spot -> about twice the abundance
    spatial, reference, truth = make_data(seed=3)
    res = run_to_end(deconvolve_spatialdl(spatial, reference, "cell_type", copy=True))
    total = res.adata.obsm[ABUNDANCE_KEY].sum(axis=1).to_numpy()
    lib = np.asarray(spatial.X.sum(axis=1)).ravel()
    assert np.corrcoef(total, lib)[0, 1] > 0.9


def test_platform_effect_recovered(data, fitted):
    # genes the spatial technology captures better get larger platform factors
    spatial, reference, truth = data
    effects = fitted.model.gene_effects()
    assert effects.shape == (N_GENES,) and (effects > 0).all()
    true = spatial.var["true_platform_effect"].to_numpy()
    assert np.corrcoef(np.log(effects), np.log(true))[0, 1] > 0.7


def test_better_than_nnls_and_nnls_baseline(data, fitted):
    spatial, reference, truth = data
    base = run_to_end(deconvolve_nnls(spatial, reference, "cell_type", copy=True))
    props = base.adata.obsm[PROPORTIONS_KEY]
    assert list(props.columns) == sorted(TYPES)
    np.testing.assert_allclose(props.sum(axis=1), 1.0, atol=1e-9)
    assert isinstance(base.adata.obsm[ABUNDANCE_KEY], pd.DataFrame)
    assert base.adata.uns[UNS_KEY]["deconvolve"]["method"] == "nnls"
    uniform = pd.DataFrame(1.0 / len(TYPES), index=truth.index, columns=truth.columns)
    assert rmse(props, truth) < 0.6 * rmse(uniform, truth)
    assert rmse(fitted.adata.obsm[PROPORTIONS_KEY], truth) < rmse(props, truth)


def test_spatial_smoothing_reduces_neighbour_differences(data, fitted):
    spatial, reference, truth = data
    smooth = run_to_end(deconvolve_spatialdl(spatial, reference, "cell_type", spatial_smoothing=1.0, copy=True))
    xy = spatial.obsm["spatial"]
    rough = neighbour_difference(fitted.adata.obsm[PROPORTIONS_KEY].to_numpy(), xy)
    smoothed = neighbour_difference(smooth.adata.obsm[PROPORTIONS_KEY].to_numpy(), xy)
    assert smoothed < 0.7 * rough
    assert smooth.adata.uns[UNS_KEY]["deconvolve"]["params"]["spatial_smoothing"] == 1.0


def test_smoothing_needs_coordinates(data):
    spatial, reference, truth = data
    bare = spatial.copy()
    del bare.obsm["spatial"]
    with pytest.raises(InputError, match="obsm\\['spatial'\\]"):
        run_to_end(deconvolve_spatialdl(bare, reference, "cell_type", spatial_smoothing=0.5))
    # without smoothing no coordinates are needed
    res = run_to_end(deconvolve_spatialdl(bare, reference, "cell_type", max_epochs=5, copy=True))
    assert PROPORTIONS_KEY in res.adata.obsm


def test_fixed_signatures_option(data):
    spatial, reference, truth = data
    res = run_to_end(deconvolve_spatialdl(spatial, reference, "cell_type", refine_signatures=False, copy=True))
    assert rmse(res.adata.obsm[PROPORTIONS_KEY], truth) < 0.1


def test_synthetic_tissue_defaults():
    datasets = pytest.importorskip("napari_spatialdl.datasets")
    spatial, reference = datasets.synthetic_tissue(seed=1, n_spots=300, n_genes=150, n_cell_types=5,
                                                   n_reference_cells=500, image_size=128)
    truth = spatial.obsm["true_proportions"]
    res = run_to_end(deconvolve_spatialdl(spatial, reference, "cell_type", layer="counts", copy=True))
    base = run_to_end(deconvolve_nnls(spatial, reference, "cell_type", layer="counts", copy=True))
    err = rmse(res.adata.obsm[PROPORTIONS_KEY], truth)
    uniform = pd.DataFrame(1.0 / truth.shape[1], index=truth.index, columns=truth.columns)
    assert err < 0.5 * rmse(uniform, truth)
    assert err < rmse(base.adata.obsm[PROPORTIONS_KEY], truth)


# ---------------------------------------------------------------- API behaviour

def test_writes_in_place_by_default_and_copy(data):
    spatial, reference, truth = data
    target = spatial.copy()
    snap = snapshot(target)
    res = run_to_end(deconvolve_spatialdl(target, reference, "cell_type", max_epochs=5, copy=True))
    assert res.adata is not target
    assert_unchanged(target, snap)
    res2 = run_to_end(deconvolve_spatialdl(target, reference, "cell_type", max_epochs=5))
    assert res2.adata is target and PROPORTIONS_KEY in target.obsm


def test_progress_events_and_cancel_leaves_adata_unchanged(data):
    spatial, reference, truth = data
    target, ref = spatial.copy(), reference.copy()
    snaps = snapshot(target), snapshot(ref)
    gen = deconvolve_spatialdl(target, ref, "cell_type", max_epochs=50)
    events = [next(gen) for _ in range(5)]
    assert all(isinstance(e, ProgressEvent) for e in events)
    assert any(e.train_loss is not None for e in events)
    gen.close()
    assert_unchanged(target, snaps[0])
    assert_unchanged(ref, snaps[1])


def test_save_load_reproduces_predictions(tmp_path, fitted):
    model = fitted.model
    path = model.save(tmp_path / "deconv.pt")
    loaded = SpotDeconvolution.load(path)
    np.testing.assert_array_equal(loaded.proportions(), model.proportions())
    np.testing.assert_array_equal(loaded.abundance(), model.abundance())
    np.testing.assert_array_equal(loaded.signatures(), model.signatures())
    assert loaded.cell_types == model.cell_types and loaded.genes == model.genes
    assert loaded.spot_names == model.spot_names
    np.testing.assert_allclose(loaded.proportions(), fitted.adata.obsm[PROPORTIONS_KEY].to_numpy(), rtol=0, atol=0)


def test_sparse_input_and_layers(data):
    spatial, reference, truth = data
    sp_ad = spatial.copy()
    sp_ad.layers["counts"] = sp.csr_matrix(sp_ad.X)
    sp_ad.X = sp.csr_matrix(np.log1p(sp_ad.X))  # X normalised: the counts live in the layer
    ref = reference.copy()
    ref.layers["raw"] = sp.csr_matrix(ref.X)
    res = run_to_end(deconvolve_spatialdl(sp_ad, ref, "cell_type", layer="counts", reference_layer="raw",
                                          max_epochs=60, copy=True))
    assert rmse(res.adata.obsm[PROPORTIONS_KEY], truth) < 0.1


def test_gene_overlap_uses_intersection(data):
    spatial, reference, truth = data
    # spatial lacks the last 10 genes and has 5 of its own; reference lacks the first 5
    sp_ad = AnnData(np.hstack([spatial.X[:, :-10], np.ones((spatial.n_obs, 5), np.float32)]),
                    obs=spatial.obs.copy(),
                    var=pd.DataFrame(index=list(spatial.var_names[:-10]) + [f"extra{i}" for i in range(5)]))
    sp_ad.obsm["spatial"] = spatial.obsm["spatial"]
    ref = reference[:, 5:].copy()
    res = run_to_end(deconvolve_spatialdl(sp_ad, ref, "cell_type", copy=True))
    n_shared = N_GENES - 15
    assert res.info["n_genes"] == n_shared
    assert res.adata.uns[UNS_KEY]["deconvolve"]["n_genes"] == n_shared
    assert f"{n_shared} genes are shared" in res.info["genes_message"]
    assert res.model.genes == list(spatial.var_names[5:-10])
    assert rmse(res.adata.obsm[PROPORTIONS_KEY], truth) < 0.1


def test_too_few_shared_genes(data):
    spatial, reference, truth = data
    ref = reference.copy()
    ref.var_names = [f"other{i}" for i in range(ref.n_vars - 4)] + list(spatial.var_names[:4])
    snaps = snapshot(spatial), snapshot(ref)
    with pytest.raises(InputError, match="Only 4 genes overlap"):
        run_to_end(deconvolve_spatialdl(spatial, ref, "cell_type"))
    assert_unchanged(spatial, snaps[0])
    assert_unchanged(ref, snaps[1])


def test_unlabelled_reference_cells_are_ignored(data):
    spatial, reference, truth = data
    ref = reference.copy()
    labels = ref.obs["cell_type"].astype(object).to_numpy()
    labels[::3] = np.nan
    ref.obs["cell_type"] = pd.Categorical(labels, categories=TYPES)
    res = run_to_end(deconvolve_spatialdl(spatial, ref, "cell_type", copy=True))
    assert res.info["n_reference_cells"] == int(pd.notna(labels).sum())
    assert rmse(res.adata.obsm[PROPORTIONS_KEY], truth) < 0.1
    assert ref.obs["cell_type"].isna().sum() == len(labels[::3])


# ------------------------------------------------------------------- bad input

def _bad_cases(spatial: AnnData, reference: AnnData):
    lognorm = spatial.copy()
    lognorm.layers["norm"] = np.log1p(lognorm.X)
    yield "non-integer layer", (lognorm, reference), {"layer": "norm"}, r"spatial\.layers\['norm'\].*non-integer.*spatial\.X holds raw counts"
    neg = reference.copy()
    neg.X[0, 0] = -1
    yield "negative reference", (spatial, neg), {}, r"reference\.X has negative values"
    nan = spatial.copy()
    nan.X[2, 3] = np.nan
    yield "NaN", (nan, reference), {}, "NaN or infinite"
    inf = reference.copy()
    inf.X[1, 1] = np.inf
    yield "inf", (spatial, inf), {}, "NaN or infinite"
    empty = spatial.copy()
    empty.X[4] = 0
    yield "empty spot", (empty, reference), {}, "no counts"
    one = reference.copy()
    one.obs["one"] = "astro"
    yield "one label", (spatial, one), {"labels_key": "one"}, "1 distinct value"
    yield "missing key", (spatial, reference), {"labels_key": "nope"}, "'nope' is not a column"
    yield "missing layer", (spatial, reference), {"reference_layer": "counts"}, r"reference\.layers\['counts'\] not found.*reference_layer=None"
    yield "bad smoothing", (spatial, reference), {"spatial_smoothing": -1.0}, "spatial_smoothing"


@pytest.mark.parametrize("case", range(9))
def test_bad_input_clear_error_and_adata_unchanged(data, case):
    spatial, reference, truth = data
    name, (sp_ad, ref), kwargs, match = list(_bad_cases(spatial, reference))[case]
    labels_key = kwargs.pop("labels_key", "cell_type")
    snaps = snapshot(sp_ad), snapshot(ref)
    for func in (deconvolve_spatialdl, deconvolve_nnls):
        if func is deconvolve_nnls and "spatial_smoothing" in kwargs:
            continue
        with pytest.raises(InputError, match=match):
            run_to_end(func(sp_ad, ref, labels_key, **kwargs))
        assert_unchanged(sp_ad, snaps[0])
        assert_unchanged(ref, snaps[1])


# -------------------------------------------------------------------- real data

def _read_pair(root):
    def read(folder):
        counts = pd.read_csv(folder / "counts.csv", index_col=0).T
        return AnnData(counts.to_numpy(dtype=np.float32), obs=pd.DataFrame(index=counts.index.astype(str)),
                       var=pd.DataFrame(index=counts.columns.astype(str)))

    reference = read(root / "reference")
    types = pd.read_csv(root / "reference" / "cell_types.csv", index_col=0)["x"]
    reference.obs["cell_type"] = pd.Categorical(types.reindex(reference.obs_names).astype(str))
    spatial = read(root / "spatial")
    coords = pd.read_csv(root / "spatial" / "coords.csv", index_col=0).reindex(spatial.obs_names)
    spatial.obsm["spatial"] = coords[["x", "y"]].to_numpy(dtype=float)
    return spatial, reference


@pytest.mark.realdata
def test_real_hippocampus_spots(shared_data):
    spatial, reference = _read_pair(shared_data / "hippocampus_visium")
    n_shared = len(spatial.var_names.intersection(reference.var_names))
    res = run_to_end(deconvolve_spatialdl(spatial, reference, "cell_type", copy=True))
    props = res.adata.obsm[PROPORTIONS_KEY]
    assert res.info["n_genes"] == n_shared and 0 < n_shared < min(spatial.n_vars, reference.n_vars)
    assert f"{n_shared} genes are shared" in res.info["genes_message"]
    assert props.shape == (spatial.n_obs, reference.obs["cell_type"].nunique())
    np.testing.assert_allclose(props.sum(axis=1), 1.0, atol=1e-6)
    # plausibility: for every type with a specific marker among the shared genes, the spots'
    # proportion of that type follows the marker's share of the spot's counts
    genes = spatial.var_names.intersection(reference.var_names)
    ref_means = pd.DataFrame(reference[:, genes].X, columns=genes).groupby(
        reference.obs["cell_type"].astype(str).to_numpy()).mean()
    ref_means = ref_means.div(ref_means.sum(axis=1), axis=0)
    share = pd.DataFrame(spatial[:, genes].X, columns=genes, index=spatial.obs_names)
    share = share.div(share.sum(axis=1), axis=0)
    checked = 0
    for t in props.columns:
        specificity = ref_means.loc[t] / (ref_means.drop(index=t).max() + 1e-9)
        if specificity.max() > 3:
            marker = specificity.idxmax()
            assert np.corrcoef(props[t], share[marker])[0, 1] > 0.5, (t, marker)
            checked += 1
    assert checked >= 4
    # neighbouring spots tend to share their dominant type
    dominant = props.to_numpy().argmax(axis=1)
    edges = spot_neighbour_edges(spatial.obsm["spatial"], 6)
    same = (dominant[edges[:, 0]] == dominant[edges[:, 1]]).mean()
    chance = ((np.bincount(dominant) / len(dominant)) ** 2).sum()
    assert same > chance


@pytest.mark.realdata
def test_real_silver_standard_beats_nnls(shared_data):
    # spots simulated from half of the real reference; the other half is the reference
    _, reference = _read_pair(shared_data / "hippocampus_visium")
    rng = np.random.default_rng(0)
    labels = reference.obs["cell_type"].astype(str).to_numpy()
    types = sorted(set(labels))
    ref_mask = np.zeros(len(labels), bool)
    for t in types:
        idx = rng.permutation(np.flatnonzero(labels == t))
        ref_mask[idx[: len(idx) // 2]] = True
    pools = {t: np.flatnonzero(~ref_mask & (labels == t)) for t in types}
    n_spots = 150
    X = np.zeros((n_spots, reference.n_vars), np.float32)
    truth = np.zeros((n_spots, len(types)))
    for s in range(n_spots):
        n = int(rng.integers(2, 11))
        chosen = list(rng.choice(len(types), size=min(int(rng.integers(1, 5)), n), replace=False))
        members = chosen + list(rng.choice(chosen, size=n - len(chosen)))
        for t in members:
            X[s] += reference.X[rng.choice(pools[types[t]])]
            truth[s, t] += 1.0 / n
    spots = AnnData(X, obs=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]), var=reference.var.copy())
    truth = pd.DataFrame(truth, index=spots.obs_names, columns=types)
    ref = reference[ref_mask].copy()
    ours = run_to_end(deconvolve_spatialdl(spots, ref, "cell_type", copy=True)).adata.obsm[PROPORTIONS_KEY]
    base = run_to_end(deconvolve_nnls(spots, ref, "cell_type", copy=True)).adata.obsm[PROPORTIONS_KEY]
    assert rmse(ours, truth) < rmse(base, truth)
    assert rmse(ours, truth) < 0.09


def test_public_api_dispatch_and_progress(data):
    import napari_spatialdl as sdl

    spatial, reference, truth = data
    events = []
    res = sdl.deconvolve(spatial, reference, "cell_type", method="spatialdl", progress=events.append,
                         max_epochs=20, copy=True)
    assert res.method == "spatialdl" and PROPORTIONS_KEY in res.adata.obsm
    assert len(events) >= 20 and events[-1].epoch == res.history.n_epochs
    base = sdl.deconvolve(spatial, reference, "cell_type", method="nnls", copy=True)
    assert base.method == "nnls" and ABUNDANCE_KEY in base.adata.obsm
    assert PROPORTIONS_KEY not in spatial.obsm


def test_top_gene_selection_keeps_markers(data):
    spatial, reference, truth = data
    res = run_to_end(deconvolve_spatialdl(spatial, reference, "cell_type", n_top_genes=24, copy=True))
    assert res.info["n_genes"] == 24 and res.info["n_genes_shared"] == N_GENES
    assert "80 genes are shared" in res.info["genes_message"] and "24 of them" in res.info["genes_message"]
    markers = {f"g{i}" for i in range(len(TYPES) * 8)}  # make_data's marker genes
    assert len(markers.intersection(res.model.genes)) >= 20
    assert rmse(res.adata.obsm[PROPORTIONS_KEY], truth) < 0.08
    # minibatches of spots reach the same answer
    mini = run_to_end(deconvolve_spatialdl(spatial, reference, "cell_type", batch_size=48, copy=True))
    assert rmse(mini.adata.obsm[PROPORTIONS_KEY], truth) < 0.08


# ------------------------------------------------------------------- the task contract

def test_second_method_sits_beside_the_first_and_key_added(data):
    spatial, reference, truth = data
    target = spatial.copy()
    first = sdl.deconvolve(target, reference, "cell_type", max_epochs=20)
    native = target.obsm[PROPORTIONS_KEY].copy()
    second = sdl.deconvolve(target, reference, "cell_type", method="nnls")
    assert first.keys["obsm"] == PROPORTIONS_KEY
    assert second.keys == {"obsm": f"{PROPORTIONS_KEY}_nnls", "obsm_abundance": "spatialdl_abundance_nnls"}
    pd.testing.assert_frame_equal(target.obsm[PROPORTIONS_KEY], native)  # not overwritten
    assert target.uns["spatialdl"]["deconvolve"]["method"] == "spatialdl"
    assert target.uns["spatialdl"][f"{PROPORTIONS_KEY}_nnls"]["method"] == "nnls"
    third = sdl.deconvolve(target, reference, "cell_type", method="nnls", key_added="mine")
    assert third.keys == {"obsm": "mine", "obsm_abundance": "mine_abundance"}
    assert np.allclose(target.obsm["mine"].to_numpy(), target.obsm[f"{PROPORTIONS_KEY}_nnls"].to_numpy())


def test_parameters_are_recorded_from_the_signature_and_coerced(data):
    spatial, reference, truth = data
    res = sdl.deconvolve(spatial, reference, "cell_type", max_epochs="4", copy=True)
    params = res.adata.uns["spatialdl"]["deconvolve"]["params"]
    assert params["max_epochs"] == 4 and params["n_top_genes"] == 3000 and params["lr"] == 0.05
    with pytest.raises(InputError, match="max_epochs must be an integer"):
        sdl.deconvolve(spatial, reference, "cell_type", max_epochs="ten")
    with pytest.raises(InputError, match="seed must be an integer"):
        sdl.deconvolve(spatial, reference, "cell_type", seed=None)
    with pytest.raises(InputError, match="no parameter 'epochs'.*max_epochs"):
        sdl.deconvolve(spatial, reference, "cell_type", epochs=3)


def test_a_cell_type_with_one_reference_cell_is_refused_like_annotation(data):
    spatial, reference, truth = data
    ref = reference.copy()
    labels = ref.obs["cell_type"].astype(str).to_numpy()
    labels[0] = "lonely"
    ref.obs["cell_type"] = pd.Categorical(labels)
    for task in (sdl.deconvolve, sdl.annotate):
        with pytest.raises(InputError, match="'lonely' \\(1 cell\\)"):
            task(spatial, ref, "cell_type", method="nnls" if task is sdl.deconvolve else "logreg")


def test_signatures_refined_on_a_subset_then_held_for_every_spot(data):
    # many spots: the signatures are refined on a subset, then every spot's abundances are fitted
    # with them fixed; the spots outside the subset are recovered as well as the others
    spatial, reference, truth = data
    model = SpotDeconvolution(list(spatial.var_names), TYPES, list(spatial.obs_names))
    gen = model.fit(spatial.X, reference.X, reference.obs["cell_type"].to_numpy(), refine_spots=60, seed=0)
    stages, held = [], None
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            history = stop.value
            break
        if event.stage == "abundances" and held is None:
            held = model.signatures()  # after the first step of the second stage
        stages.append(event.stage)
    # one stage after the other, each named in the progress (the GUI's loss plot and status)
    assert stages[0] == "signatures" and stages[-1] == "abundances"
    assert stages == sorted(stages, key=["signatures", "abundances"].index)
    np.testing.assert_array_equal(model.signatures(), held)
    assert history.n_epochs == len([s for s in stages if s in ("signatures", "abundances")])
    props = pd.DataFrame(model.proportions(), index=spatial.obs_names, columns=TYPES)
    subset = np.sort(np.random.default_rng(0).choice(spatial.n_obs, 60, replace=False))
    outside = np.setdiff1d(np.arange(spatial.n_obs), subset)
    assert rmse(props.iloc[outside], truth.iloc[outside]) < 0.08
    # and as accurate as refining on every spot
    joint = SpotDeconvolution(list(spatial.var_names), TYPES, list(spatial.obs_names))
    run_to_end(joint.fit(spatial.X, reference.X, reference.obs["cell_type"].to_numpy(), refine_spots=None))
    assert abs(rmse(props, truth) - rmse(pd.DataFrame(joint.proportions(), index=spatial.obs_names,
                                                       columns=TYPES), truth)) < 0.02
