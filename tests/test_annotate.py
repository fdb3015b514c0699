"""Cell-type annotation (label transfer): the native calibrated ensemble and the logreg baseline.

Synthetic data are generated here with numpy: cell types with marker genes; the query comes
from another "batch" (gene-specific effects, lower depth) than the reference.
"""

from __future__ import annotations

import copy as _copy

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from napari_spatialdl._constants import CELL_TYPE_KEY, CONFIDENCE_KEY, UNASSIGNED, UNS_KEY
from napari_spatialdl.models._train import ProgressEvent, run_to_end
from napari_spatialdl.models.annotation import (
    CellTypeClassifier,
    expected_calibration_error,
    fit_temperature,
)
from napari_spatialdl.tasks import InputError
from napari_spatialdl.tasks.annotate import annotate_logreg, annotate_spatialdl

TYPES = ["astro", "endo", "micro", "neuron", "oligo"]
N_GENES = 60


def make_cells(n_per_type: int, seed: int, depth: float = 400.0, batch_sd: float = 0.0,
               prefix: str = "cell", marker_fold: float = 6.0, spread: float = 0.5) -> AnnData:
    """Cells of every type; profiles fixed (seed 0), batch effects and noise from ``seed``.

    Types share a base profile, differ by ``spread`` (sd of log-fold changes) on every gene
    and by ``marker_fold`` on 6 marker genes each.
    """
    prof_rng = np.random.default_rng(0)
    base = prof_rng.gamma(1.0, 1.0, size=N_GENES)
    prof = base * np.exp(prof_rng.normal(0, spread, size=(len(TYPES), N_GENES)))
    for t in range(len(TYPES)):
        prof[t, t * 6:(t + 1) * 6] *= marker_fold
    prof /= prof.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    batch = np.exp(rng.normal(0, batch_sd, N_GENES)) if batch_sd else np.ones(N_GENES)
    idx = np.repeat(np.arange(len(TYPES)), n_per_type)
    lib = depth * np.exp(rng.normal(0, 0.3, len(idx)))
    mu = prof[idx] * batch * lib[:, None]
    X = rng.poisson(rng.gamma(5.0, mu / 5.0)).astype(np.float32)
    X[:, -1] += 1  # no empty cell
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.array(TYPES)[idx], categories=TYPES)},
                       index=[f"{prefix}{i}" for i in range(len(idx))])
    return AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))


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


def accuracy(result_adata: AnnData, truth: pd.Series) -> float:
    return float((result_adata.obs[CELL_TYPE_KEY].astype(str).to_numpy() == truth.astype(str).to_numpy()).mean())


@pytest.fixture(scope="module")
def data():
    reference = make_cells(40, seed=1, batch_sd=0.0)
    query = make_cells(30, seed=2, depth=250.0, batch_sd=0.3, prefix="q")
    return query, reference


@pytest.fixture(scope="module")
def hard():
    """Overlapping types: about 80 % of the query can be labelled right."""
    reference = make_cells(40, seed=1, marker_fold=2.0, spread=0.2)
    query = make_cells(60, seed=2, depth=250.0, batch_sd=0.3, prefix="q", marker_fold=2.0, spread=0.2)
    result = run_to_end(annotate_spatialdl(query, reference, "cell_type", copy=True))
    return query, reference, result


@pytest.fixture(scope="module")
def fitted(data):
    query, reference = data
    return run_to_end(annotate_spatialdl(query, reference, "cell_type", copy=True))


# ------------------------------------------------------------------------ accuracy

def test_accuracy_on_separable_types_across_batches(data, fitted):
    query, reference = data
    assert accuracy(fitted.adata, query.obs["cell_type"]) > 0.9
    assert fitted.info["reference_oof_accuracy"] > 0.9


def test_result_layout(data, fitted):
    query, reference = data
    out = fitted.adata
    labels, conf = out.obs[CELL_TYPE_KEY], out.obs[CONFIDENCE_KEY]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert list(labels.cat.categories) == sorted(TYPES)  # threshold 0: no 'unassigned'
    assert conf.dtype == np.float32
    assert ((conf >= 0) & (conf <= 1)).all()
    assert conf.min() >= 1.0 / len(TYPES) - 1e-6  # the top probability of 5 classes
    meta = out.uns[UNS_KEY]["annotate"]
    assert meta["method"] == "spatialdl" and meta["n_genes"] == N_GENES
    assert meta["n_unassigned"] == 0
    assert fitted.keys == {"obs": CELL_TYPE_KEY, "obs_confidence": CONFIDENCE_KEY}
    assert "ece" in fitted.info and 0 <= fitted.info["ece"] <= 1


def test_confidence_is_calibrated(hard):
    query, reference, fitted = hard
    truth = query.obs["cell_type"].astype(str).to_numpy()
    acc = accuracy(fitted.adata, query.obs["cell_type"])
    assert 0.6 < acc < 0.97  # a case where confidence matters
    # the out-of-fold ECE of the reference and the ECE on the query are both small
    assert fitted.info["ece"] < 0.1
    model = fitted.model
    probs = model.predict_proba(query.X)
    codes = np.searchsorted(np.asarray(model.classes), truth)
    assert expected_calibration_error(probs, codes) < 0.1
    # mean confidence is close to the accuracy; confident predictions are right more often
    conf = fitted.adata.obs[CONFIDENCE_KEY].to_numpy()
    assert abs(conf.mean() - acc) < 0.1
    right = fitted.adata.obs[CELL_TYPE_KEY].astype(str).to_numpy() == truth
    high = conf >= np.median(conf)
    assert right[high].mean() > right[~high].mean() + 0.1


def test_threshold_produces_unassigned(hard):
    query, reference, fitted = hard
    conf = fitted.adata.obs[CONFIDENCE_KEY].to_numpy()
    threshold = float(np.quantile(conf, 0.3))
    res = run_to_end(annotate_spatialdl(query, reference, "cell_type", threshold=threshold, copy=True))
    labels = res.adata.obs[CELL_TYPE_KEY]
    assert UNASSIGNED in labels.cat.categories
    assert list(labels.cat.categories) == sorted(TYPES) + [UNASSIGNED]
    low = res.adata.obs[CONFIDENCE_KEY].to_numpy() < threshold
    assert low.any() and (labels[low] == UNASSIGNED).all() and (labels[~low] != UNASSIGNED).all()
    assert res.info["n_unassigned"] == int(low.sum())
    assert res.adata.uns[UNS_KEY]["annotate"]["n_unassigned"] == int(low.sum())
    # the cells that keep a label are labelled more accurately than all cells
    truth = query.obs["cell_type"].astype(str).to_numpy()
    kept = (labels[~low].astype(str).to_numpy() == truth[~low]).mean()
    assert kept > accuracy(fitted.adata, query.obs["cell_type"]) + 0.05


def test_temperature_fit_recovers_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 4))
    p = np.exp(logits / 2.0)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    assert abs(fit_temperature(logits, labels) - 2.0) < 0.2
    # calibrating the over-confident logits lowers the ECE
    raw = np.exp(logits)
    raw /= raw.sum(axis=1, keepdims=True)
    assert expected_calibration_error(p, labels) < expected_calibration_error(raw, labels)


def test_logreg_baseline(data):
    query, reference = data
    res = run_to_end(annotate_logreg(query, reference, "cell_type", copy=True))
    assert accuracy(res.adata, query.obs["cell_type"]) > 0.85
    labels, conf = res.adata.obs[CELL_TYPE_KEY], res.adata.obs[CONFIDENCE_KEY]
    assert list(labels.cat.categories) == sorted(TYPES)
    assert ((conf >= 0) & (conf <= 1)).all()
    assert res.adata.uns[UNS_KEY]["annotate"]["method"] == "logreg"
    res2 = run_to_end(annotate_logreg(query, reference, "cell_type", threshold=0.99, copy=True))
    assert (res2.adata.obs[CELL_TYPE_KEY] == UNASSIGNED).any()


# ---------------------------------------------------------------- API behaviour

def test_same_anndata_with_partial_labels(data):
    # labels drawn by hand on some spots: train on those, predict every spot
    query, reference = data
    adata = make_cells(30, seed=5)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    labels = truth.astype(object)
    rng = np.random.default_rng(0)
    hidden = rng.random(len(labels)) < 0.6
    labels[hidden] = np.nan
    adata.obs["region_label"] = pd.Categorical(labels, categories=TYPES)
    before = adata.obs["region_label"].copy()
    res = run_to_end(annotate_spatialdl(adata, adata, "region_label"))
    assert res.adata is adata
    pd.testing.assert_series_equal(adata.obs["region_label"], before)  # training labels untouched
    assert res.info["n_reference_cells"] == int((~hidden).sum())
    assert res.info["n_unlabelled_reference_cells"] == int(hidden.sum())
    assert res.info["same_object"] is True
    pred = adata.obs[CELL_TYPE_KEY].astype(str).to_numpy()
    assert adata.obs[CELL_TYPE_KEY].notna().all()
    assert (pred[hidden] == truth[hidden]).mean() > 0.85


def test_same_anndata_refuses_results_column_as_labels():
    adata = make_cells(10, seed=6)
    adata.obs[CELL_TYPE_KEY] = adata.obs["cell_type"]
    snap = snapshot(adata)
    with pytest.raises(InputError, match="overwrite the training labels"):
        run_to_end(annotate_spatialdl(adata, adata, CELL_TYPE_KEY))
    assert_unchanged(adata, snap)


def test_copy_and_in_place(data):
    query, reference = data
    target = query.copy()
    snap = snapshot(target)
    res = run_to_end(annotate_spatialdl(target, reference, "cell_type", max_epochs=3, copy=True))
    assert res.adata is not target and CELL_TYPE_KEY in res.adata.obs
    assert_unchanged(target, snap)
    res2 = run_to_end(annotate_spatialdl(target, reference, "cell_type", max_epochs=3))
    assert res2.adata is target and CELL_TYPE_KEY in target.obs and CONFIDENCE_KEY in target.obs


def test_cancel_midway_leaves_adata_unchanged(data):
    query, reference = data
    q, r = query.copy(), reference.copy()
    snaps = snapshot(q), snapshot(r)
    gen = annotate_spatialdl(q, r, "cell_type", max_epochs=40)
    events = [next(gen) for _ in range(3)]
    assert all(isinstance(e, ProgressEvent) for e in events)
    gen.close()
    assert_unchanged(q, snaps[0])
    assert_unchanged(r, snaps[1])


def test_save_load_reproduces_predictions(tmp_path, data, fitted):
    query, reference = data
    model = fitted.model
    path = model.save(tmp_path / "annot.pt")
    loaded = CellTypeClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(query.X), model.predict_proba(query.X))
    assert loaded.classes == model.classes and loaded.genes == model.genes
    assert loaded.temperature == model.temperature
    labels, conf = loaded.predict(query.X)
    np.testing.assert_array_equal(labels.astype(str), fitted.adata.obs[CELL_TYPE_KEY].astype(str).to_numpy())
    np.testing.assert_allclose(conf, fitted.adata.obs[CONFIDENCE_KEY].to_numpy(), rtol=1e-6)


def test_seeded_runs_are_reproducible(data):
    query, reference = data
    a = run_to_end(annotate_spatialdl(query, reference, "cell_type", max_epochs=5, seed=3, copy=True))
    b = run_to_end(annotate_spatialdl(query, reference, "cell_type", max_epochs=5, seed=3, copy=True))
    np.testing.assert_allclose(a.adata.obs[CONFIDENCE_KEY], b.adata.obs[CONFIDENCE_KEY], rtol=1e-5)


def test_gene_overlap_uses_intersection(data):
    query, reference = data
    q = AnnData(np.hstack([query.X[:, 10:], np.ones((query.n_obs, 3), np.float32)]), obs=query.obs.copy(),
                var=pd.DataFrame(index=list(query.var_names[10:]) + ["x1", "x2", "x3"]))
    ref = reference[:, :-5].copy()
    res = run_to_end(annotate_spatialdl(q, ref, "cell_type", copy=True))
    n_shared = N_GENES - 15
    assert res.info["n_genes"] == n_shared
    assert f"{n_shared} genes are shared" in res.info["genes_message"]
    assert res.model.genes == list(reference.var_names[10:-5])
    assert accuracy(res.adata, query.obs["cell_type"]) > 0.8


def test_sparse_and_layers(data):
    query, reference = data
    q = query.copy()
    q.layers["counts"] = sp.csr_matrix(q.X)
    q.X = sp.csr_matrix(np.log1p(q.X))
    res = run_to_end(annotate_spatialdl(q, reference, "cell_type", layer="counts", copy=True))
    assert accuracy(res.adata, query.obs["cell_type"]) > 0.9


# ------------------------------------------------------------------- bad input

def _bad_cases(query: AnnData, reference: AnnData):
    lognorm = query.copy()
    lognorm.layers["norm"] = np.log1p(lognorm.X)
    yield (lognorm, reference), {"layer": "norm"}, r"adata\.layers\['norm'\].*non-integer"
    neg = reference.copy()
    neg.X[0, 0] = -2
    yield (query, neg), {}, "negative values"
    nan = query.copy()
    nan.X[0, 1] = np.nan
    yield (nan, reference), {}, "NaN or infinite"
    empty = query.copy()
    empty.X[3] = 0
    yield (empty, reference), {}, "no counts"
    one = reference.copy()
    one.obs["one"] = "astro"
    yield (query, one), {"labels_key": "one"}, "1 distinct value"
    yield (query, reference), {"labels_key": "missing"}, "'missing' is not a column"
    other = reference.copy()
    other.var_names = [f"h{i}" for i in range(other.n_vars)]
    yield (query, other), {}, "Only 0 genes overlap"
    rare = reference.copy()
    labels = rare.obs["cell_type"].astype(str).to_numpy()
    labels[0] = "lonely"
    rare.obs["cell_type"] = pd.Categorical(labels)
    yield (query, rare), {}, "fewer than 2 labelled"
    yield (query, reference), {"threshold": 1.5}, "threshold"


@pytest.mark.parametrize("case", range(9))
def test_bad_input_clear_error_and_adata_unchanged(data, case):
    query, reference = data
    (q, r), kwargs, match = list(_bad_cases(query, reference))[case]
    labels_key = kwargs.pop("labels_key", "cell_type")
    snaps = snapshot(q), snapshot(r)
    for func in (annotate_spatialdl, annotate_logreg):
        with pytest.raises(InputError, match=match):
            run_to_end(func(q, r, labels_key, **kwargs))
        assert_unchanged(q, snaps[0])
        assert_unchanged(r, snaps[1])


# -------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_real_hippocampus_across_replicates(shared_data):
    root = shared_data / "hippocampus_visium" / "reference"
    counts = pd.read_csv(root / "counts.csv", index_col=0).T
    types = pd.read_csv(root / "cell_types.csv", index_col=0)["x"].reindex(counts.index)
    adata = AnnData(counts.to_numpy(dtype=np.float32), obs=pd.DataFrame(index=counts.index.astype(str)),
                    var=pd.DataFrame(index=counts.columns.astype(str)))
    adata.obs["cell_type"] = pd.Categorical(types.astype(str))
    rep = adata.obs_names.str.split("_").str[0].str.extract(r"(Rep\d+)", expand=False)
    train = np.asarray(rep.isin(["Rep1", "Rep2", "Rep3", "Rep4"]))
    reference, query = adata[train].copy(), adata[~train].copy()
    res = run_to_end(annotate_spatialdl(query, reference, "cell_type", copy=True))
    from sklearn.metrics import f1_score

    truth = query.obs["cell_type"].astype(str).to_numpy()
    pred = res.adata.obs[CELL_TYPE_KEY].astype(str).to_numpy()
    assert (pred == truth).mean() > 0.75  # chance is ~1/17
    assert f1_score(truth, pred, average="macro") > 0.7
    assert res.info["ece"] < 0.1
    base = run_to_end(annotate_logreg(query, reference, "cell_type", copy=True))
    assert (base.adata.obs[CELL_TYPE_KEY].astype(str).to_numpy() == truth).mean() > 0.7


def test_public_api_dispatch_and_progress(data):
    import napari_spatialdl as sdl

    query, reference = data
    events = []
    res = sdl.annotate(query, reference, "cell_type", method="spatialdl", progress=events.append,
                       max_epochs=5, copy=True)
    assert res.method == "spatialdl" and CELL_TYPE_KEY in res.adata.obs
    assert len(events) == res.history.n_epochs and all(isinstance(e, ProgressEvent) for e in events)
    base = sdl.annotate(query, reference, "cell_type", method="logreg", copy=True)
    assert base.method == "logreg" and CONFIDENCE_KEY in base.adata.obs
    assert CELL_TYPE_KEY not in query.obs
