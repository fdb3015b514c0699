"""Cell-type annotation (label transfer): the native calibrated ensemble, the logreg baseline and
the task contract (threshold option, results side by side, key_added), through the public API.

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
from napari_spatialdl.models._train import ProgressEvent
from napari_spatialdl.models.annotation import (
    CellTypeClassifier,
    expected_calibration_error,
    fit_temperature,
)
from napari_spatialdl.tasks import (
    InputError,
    annotate,
    annotate_iter,
    get_spec,
    list_methods,
    method_parameters,
)

#: every annotate method whose package is installed (the reference backends only with their extras)
METHODS = [m.name for m in list_methods("annotate", available_only=True)]

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
    result = annotate(query, reference, "cell_type", copy=True)
    return query, reference, result


@pytest.fixture(scope="module")
def fitted(data):
    query, reference = data
    return annotate(query, reference, "cell_type", copy=True)


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
    res = annotate(query, reference, "cell_type", threshold=threshold, copy=True)
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
    res = annotate(query, reference, "cell_type", method="logreg", copy=True)
    assert accuracy(res.adata, query.obs["cell_type"]) > 0.85
    labels, conf = res.adata.obs[CELL_TYPE_KEY], res.adata.obs[CONFIDENCE_KEY]
    assert list(labels.cat.categories) == sorted(TYPES)
    assert ((conf >= 0) & (conf <= 1)).all()
    assert res.adata.uns[UNS_KEY]["annotate"]["method"] == "logreg"
    res2 = annotate(query, reference, "cell_type", method="logreg", threshold=0.99, copy=True)
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
    res = annotate(adata, adata, "region_label")
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
        annotate(adata, adata, CELL_TYPE_KEY)
    assert_unchanged(adata, snap)


def test_copy_and_in_place(data):
    query, reference = data
    target = query.copy()
    snap = snapshot(target)
    res = annotate(target, reference, "cell_type", max_epochs=3, copy=True)
    assert res.adata is not target and CELL_TYPE_KEY in res.adata.obs
    assert_unchanged(target, snap)
    res2 = annotate(target, reference, "cell_type", max_epochs=3)
    assert res2.adata is target and CELL_TYPE_KEY in target.obs and CONFIDENCE_KEY in target.obs


def test_cancel_midway_leaves_adata_unchanged(data):
    query, reference = data
    q, r = query.copy(), reference.copy()
    snaps = snapshot(q), snapshot(r)
    gen = annotate_iter(q, r, "cell_type", max_epochs=40)
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
    a = annotate(query, reference, "cell_type", max_epochs=5, seed=3, copy=True)
    b = annotate(query, reference, "cell_type", max_epochs=5, seed=3, copy=True)
    np.testing.assert_allclose(a.adata.obs[CONFIDENCE_KEY], b.adata.obs[CONFIDENCE_KEY], rtol=1e-5)


def test_gene_overlap_uses_intersection(data):
    query, reference = data
    q = AnnData(np.hstack([query.X[:, 10:], np.ones((query.n_obs, 3), np.float32)]), obs=query.obs.copy(),
                var=pd.DataFrame(index=list(query.var_names[10:]) + ["x1", "x2", "x3"]))
    ref = reference[:, :-5].copy()
    res = annotate(q, ref, "cell_type", copy=True)
    n_shared = N_GENES - 15
    assert res.info["n_genes"] == n_shared
    assert f"{n_shared} genes are shared" in res.info["genes_message"]
    assert res.model.genes == list(reference.var_names[10:-5])
    assert accuracy(res.adata, query.obs["cell_type"]) > 0.8


def _with_uninformative_genes(adata: AnnData, n: int, seed: int) -> AnnData:
    """``adata`` plus ``n`` genes expressed alike in every cell type (sparse counts)."""
    noise = np.random.default_rng(seed).poisson(0.5, (adata.n_obs, n)).astype(np.float32)
    return AnnData(sp.csr_matrix(np.hstack([np.asarray(adata.X), noise])), obs=adata.obs.copy(),
                   var=pd.DataFrame(index=list(adata.var_names) + [f"flat{i}" for i in range(n)]))


def test_the_genes_that_separate_the_types_are_selected_and_the_metadata_says_so(data):
    query, reference = (_with_uninformative_genes(a, 3000, seed) for a, seed in zip(data, (3, 4), strict=True))
    before = snapshot(query), snapshot(reference)
    shared = N_GENES + 3000
    default = annotate(query, reference, "cell_type", max_epochs=5, copy=True)
    assert default.info["n_genes"] == 3000 and default.info["n_genes_shared"] == shared
    assert default.info["gene_selection"] == "markers"
    assert "n_top_genes=3000" in default.info["genes_message"]

    chosen = annotate(query, reference, "cell_type", n_top_genes=30, copy=True)
    assert not [g for g in chosen.model.genes if g.startswith("flat")]
    markers = {f"g{i}" for i in range(len(TYPES) * 6)}  # 6 marker genes per type
    assert len(markers & set(chosen.model.genes)) >= 20
    assert chosen.info["n_genes"] == 30
    assert chosen.adata.uns[UNS_KEY]["annotate"]["n_genes"] == 30
    assert accuracy(chosen.adata, query.obs["cell_type"]) > 0.9
    dense = query.copy()
    dense.X = dense.X.toarray()
    same = annotate(dense, reference, "cell_type", n_top_genes=30, copy=True)
    np.testing.assert_allclose(same.adata.obs[CONFIDENCE_KEY], chosen.adata.obs[CONFIDENCE_KEY], rtol=1e-5)

    every = annotate(query, reference, "cell_type", n_top_genes=None, max_epochs=5, copy=True)
    assert every.info["n_genes"] == shared and every.info["gene_selection"] == "all"
    assert_unchanged(query, before[0])
    assert_unchanged(reference, before[1])
    with pytest.raises(InputError, match="n_top_genes must be at least 10"):
        annotate(query, reference, "cell_type", n_top_genes=5, copy=True)


def test_sparse_and_layers(data):
    query, reference = data
    q = query.copy()
    q.layers["counts"] = sp.csr_matrix(q.X)
    q.X = sp.csr_matrix(np.log1p(q.X))
    res = annotate(q, reference, "cell_type", layer="counts", copy=True)
    assert accuracy(res.adata, query.obs["cell_type"]) > 0.9


# ------------------------------------------------------------------- bad input

def _bad_cases(query: AnnData, reference: AnnData):
    lognorm = query.copy()
    lognorm.layers["norm"] = np.log1p(lognorm.X)
    yield (lognorm, reference), {"layer": "norm"}, r"query\.layers\['norm'\].*non-integer"
    neg = reference.copy()
    neg.X[0, 0] = -2
    yield (query, neg), {}, r"reference\.X has negative values"
    nan = query.copy()
    nan.X[0, 1] = np.nan
    yield (nan, reference), {}, r"query\.X holds 1 NaN or infinite"
    empty = query.copy()
    empty.X[3] = 0
    yield (empty, reference), {}, "observations of query have no counts"
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
    yield (query, rare), {}, r"fewer than 2 cells.*'lonely' \(1 cell\)"
    yield (query, reference), {"threshold": 1.5}, r"threshold must be in \[0, 1\).*got 1\.5"
    yield (query, reference), {"threshold": float("nan")}, r"threshold must be .*got nan"
    yield (query, reference), {"threshold": -0.1}, r"threshold must be in \[0, 1\)"
    yield (query, reference), {"threshold": 1.0}, r"threshold must be in \[0, 1\)"


@pytest.mark.parametrize("case", range(12))
def test_bad_input_clear_error_and_adata_unchanged(data, case):
    query, reference = data
    (q, r), kwargs, match = list(_bad_cases(query, reference))[case]
    labels_key = kwargs.pop("labels_key", "cell_type")
    snaps = snapshot(q), snapshot(r)
    for method in METHODS:
        with pytest.raises(InputError, match=match):
            annotate(q, r, labels_key, method=method, **kwargs)
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
    res = annotate(query, reference, "cell_type", copy=True)
    from sklearn.metrics import f1_score

    truth = query.obs["cell_type"].astype(str).to_numpy()
    pred = res.adata.obs[CELL_TYPE_KEY].astype(str).to_numpy()
    assert (pred == truth).mean() > 0.75  # chance is ~1/17
    assert f1_score(truth, pred, average="macro") > 0.7
    assert res.info["ece"] < 0.1
    base = annotate(query, reference, "cell_type", method="logreg", copy=True)
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


# ------------------------------------------------------------------- the task contract

def test_spec_threshold_is_a_task_option_not_a_method_parameter():
    spec = get_spec("annotate")
    assert [i.name for i in spec.inputs] == ["query", "reference", "labels_key", "layer", "reference_layer"]
    assert [(o.name, o.default) for o in spec.options] == [("threshold", 0.0)]
    assert [(o.slot, o.key) for o in spec.outputs] == [("obs", CELL_TYPE_KEY), ("obs", CONFIDENCE_KEY)]
    native = {p.name: p.default for p in method_parameters("annotate", "spatialdl")}
    assert native == {"n_top_genes": 3000, "n_hidden": 128, "n_members": 5, "min_depth_fraction": 0.2,
                      "max_epochs": 60, "lr": 3e-3}
    assert {p.name for p in method_parameters("annotate", "logreg")} == {"C"}
    assert all(p.doc for p in method_parameters("annotate", "spatialdl"))


@pytest.mark.parametrize("bad", [float("nan"), 1.5, None, "high", True])
def test_threshold_refused_for_every_method(data, bad):
    query, reference = data
    q = query.copy()
    snap = snapshot(q)
    for method in METHODS:
        with pytest.raises(InputError, match=r"threshold must be"):
            annotate(q, reference, "cell_type", method=method, threshold=bad)
        assert_unchanged(q, snap)


def test_unknown_parameter_names_the_valid_ones(data):
    query, reference = data
    with pytest.raises(InputError, match=r"no parameter 'C'.*n_hidden.*threshold"):
        annotate(query, reference, "cell_type", method="spatialdl", C=2.0)


def test_all_unassigned_reports_the_highest_confidence(hard):
    query, reference, fitted = hard
    conf = fitted.adata.obs[CONFIDENCE_KEY].to_numpy()
    top = fitted.info["max_confidence"]
    assert top == pytest.approx(float(conf.max()), rel=1e-6)
    assert fitted.info["n_unassigned"] == 0 and "unassigned_message" not in fitted.info
    assert top < 1.0  # overlapping types: no cell is certain
    threshold = (top + 1.0) / 2
    res = annotate(query, reference, "cell_type", threshold=threshold, copy=True)  # same seed: same model
    labels = res.adata.obs[CELL_TYPE_KEY]
    assert (labels == UNASSIGNED).all()
    assert list(labels.cat.categories) == sorted(TYPES) + [UNASSIGNED]
    np.testing.assert_array_equal(res.adata.obs[CONFIDENCE_KEY].to_numpy(), conf)
    assert res.info["n_unassigned"] == query.n_obs
    assert res.info["max_confidence"] == pytest.approx(top)
    assert f"threshold={threshold:g}" in res.info["unassigned_message"]
    assert f"{top:.3g}" in res.info["unassigned_message"]
    meta = res.adata.uns[UNS_KEY]["annotate"]
    assert meta["max_confidence"] == pytest.approx(top) and meta["n_unassigned"] == query.n_obs
    assert meta["params"]["threshold"] == pytest.approx(threshold)


def test_second_method_goes_beside_the_first(data):
    query, reference = data
    q = query.copy()
    first = annotate(q, reference, "cell_type", max_epochs=5)
    kept = q.obs[[CELL_TYPE_KEY, CONFIDENCE_KEY]].copy()
    second = annotate(q, reference, "cell_type", method="logreg")
    beside = (f"{CELL_TYPE_KEY}_logreg", f"{CONFIDENCE_KEY}_logreg")
    assert second.keys == {"obs": beside[0], "obs_confidence": beside[1]}
    assert first.keys == {"obs": CELL_TYPE_KEY, "obs_confidence": CONFIDENCE_KEY}
    pd.testing.assert_frame_equal(q.obs[[CELL_TYPE_KEY, CONFIDENCE_KEY]], kept)  # first result kept
    assert isinstance(q.obs[beside[0]].dtype, pd.CategoricalDtype)
    assert accuracy_of(q.obs[beside[0]], query.obs["cell_type"]) > 0.85
    uns = q.uns[UNS_KEY]
    assert uns["annotate"]["method"] == "spatialdl" and uns[beside[0]]["method"] == "logreg"
    # the same method again replaces its own result
    annotate(q, reference, "cell_type", method="logreg", C=0.5)
    assert q.uns[UNS_KEY][beside[0]]["params"]["C"] == 0.5
    assert not any(c.endswith("_logreg_logreg") for c in q.obs.columns)


def test_key_added(data):
    query, reference = data
    q = query.copy()
    res = annotate(q, reference, "cell_type", method="logreg", key_added="my_types")
    assert res.keys == {"obs": "my_types", "obs_confidence": "my_types_confidence"}
    assert CELL_TYPE_KEY not in q.obs and CONFIDENCE_KEY not in q.obs
    assert isinstance(q.obs["my_types"].dtype, pd.CategoricalDtype)
    assert q.obs["my_types_confidence"].dtype == np.float32
    meta = q.uns[UNS_KEY]["my_types"]
    assert meta["method"] == "logreg" and meta["params"]["key_added"] == "my_types"
    with pytest.raises(InputError, match="key_added must be a non-empty string"):
        annotate(q, reference, "cell_type", method="logreg", key_added="  ")


@pytest.mark.parametrize("method", METHODS)
def test_query_is_reference_with_nan_labels_every_method(method):
    """Labels on some spots, NaN on the others: every method trains on the labelled ones only."""
    if method == "scanvi":
        pytest.skip("scANVI is tested with its backend")
    adata = make_cells(30, seed=5)
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    labels = truth.astype(object)
    hidden = np.random.default_rng(1).random(len(labels)) < 0.5
    labels[hidden] = np.nan
    adata.obs["region_label"] = pd.Categorical(labels, categories=TYPES)
    before = adata.obs["region_label"].copy()
    res = annotate(adata, adata, "region_label", method=method)
    assert res.adata is adata and res.method == method
    pd.testing.assert_series_equal(adata.obs["region_label"], before)
    assert res.info["n_reference_cells"] == int((~hidden).sum())
    assert res.info["n_unlabelled_reference_cells"] == int(hidden.sum())
    assert res.info["same_object"] is True
    pred = adata.obs[CELL_TYPE_KEY].astype(str).to_numpy()
    assert adata.obs[CELL_TYPE_KEY].notna().all()
    assert (pred[hidden] == truth[hidden]).mean() > 0.85


def test_celltypist_backend(data):
    pytest.importorskip("celltypist")
    query, reference = data
    snaps = snapshot(query), snapshot(reference)
    res = annotate(query, reference, "cell_type", method="celltypist", copy=True)
    assert_unchanged(query, snaps[0])
    assert_unchanged(reference, snaps[1])
    assert accuracy(res.adata, query.obs["cell_type"]) > 0.85
    assert list(res.adata.obs[CELL_TYPE_KEY].cat.categories) == sorted(TYPES)
    assert res.adata.uns[UNS_KEY]["annotate"]["method"] == "celltypist"
    assert res.info["n_genes"] == N_GENES and "celltypist" in res.info["versions_backend"]
    strict = annotate(query, reference, "cell_type", method="celltypist", threshold=0.9, copy=True)
    low = strict.adata.obs[CONFIDENCE_KEY].to_numpy() < 0.9
    assert ((strict.adata.obs[CELL_TYPE_KEY] == UNASSIGNED).to_numpy() == low).all()
    assert strict.info["n_unassigned"] == int(low.sum())


def accuracy_of(labels: pd.Series, truth: pd.Series) -> float:
    return float((labels.astype(str).to_numpy() == truth.astype(str).to_numpy()).mean())


def test_same_anndata_single_labelled_cell_suggests_removing_the_label():
    adata = make_cells(10, seed=7)
    labels = np.full(adata.n_obs, np.nan, dtype=object)
    labels[:10] = "astro"
    labels[10:20] = "endo"
    labels[20] = "micro"
    adata.obs["region"] = pd.Categorical(labels)
    snap = snapshot(adata)
    with pytest.raises(InputError, match=r"'micro' \(1 cell\).*remove their label instead") as err:
        annotate(adata, adata, "region", method="logreg")
    assert_unchanged(adata, snap)
    # the suggested fix works as written: the cell is predicted instead of refused
    fix = str(err.value).split("instead (", 1)[1].split("): cells", 1)[0]
    exec(fix, {"reference": adata})
    res = annotate(adata, adata, "region", method="spatialdl", max_epochs=2)
    assert res.info["n_unlabelled_reference_cells"] == adata.n_obs - 20
    assert res.info["cell_types"] == ["astro", "endo"] and adata.obs[CELL_TYPE_KEY].notna().all()


def test_a_method_column_role_is_checked_against_its_object_with_its_own_minimum():
    """A query from one batch is valid for a method's batch column declared with min_values=1
    (scANVI's batch_key), and the method receives the checked values; a barcode column is not."""
    from typing import Annotated

    from napari_spatialdl.tasks import _registry as R
    from napari_spatialdl.tasks._spec import BATCH, Role
    from napari_spatialdl.tasks.annotation import AnnotationOutput

    seen = {}

    def probe(data, *, batch_key: Annotated[str, Role(BATCH, of="query", min_values=1)] | None = None):
        """Probe.

        Parameters
        ----------
        data
            Prepared.
        batch_key
            A batch column of the query.
        """
        seen["batches"] = data.columns.get("batch_key")
        yield from ()
        n = data.data.n_obs
        return AnnotationOutput(probabilities=np.full((n, len(data.classes)), 1.0 / len(data.classes)),
                                classes=list(data.classes))

    import napari_spatialdl as sdl

    # this module postpones annotations; give the probe its resolved one
    probe.__annotations__["batch_key"] = Annotated[str, Role(BATCH, of="query", min_values=1)] | None
    R.register("annotate", "_probe")(probe)
    try:
        spatial, reference = sdl.datasets.synthetic_tissue(seed=0, n_spots=120, n_reference_cells=300)
        spatial.obs["section"] = "A"
        sdl.annotate(spatial, reference, "cell_type", method="_probe", batch_key="section", copy=True)
        assert list(seen["batches"]) == ["A"] * spatial.n_obs
        spatial.obs["barcode"] = spatial.obs_names.astype(str)
        with pytest.raises(InputError, match="barcode"):
            sdl.annotate(spatial, reference, "cell_type", method="_probe", batch_key="barcode")
    finally:
        R.REGISTRY["annotate"].pop("_probe", None)
