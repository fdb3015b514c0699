"""Reference backends (tasks/backends/scvi_tools.py, tangram.py): tiny runs through the public API.

Each backend gets the task's prepared inputs and returns the task's output; the task writes it.
Every run test skips when its tool is not importable (the main environment has none of them;
the benchmark environment, ``pip install 'napari-spatialdl[bench]'``, has all).
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import napari_spatialdl as sdl
from napari_spatialdl._constants import (
    ABUNDANCE_KEY,
    CELL_TYPE_KEY,
    CONFIDENCE_KEY,
    IMPUTED_LAYER,
    LATENT_KEY,
    PROPORTIONS_KEY,
    UNS_KEY,
)
from napari_spatialdl.models import ProgressEvent
from napari_spatialdl.tasks import InputError, list_methods
from napari_spatialdl.tasks import api as A
from napari_spatialdl.tasks._spec import method_params

N_TYPES, N_GENES = 3, 40


def _profiles() -> np.ndarray:
    rng = np.random.default_rng(0)
    prof = rng.gamma(0.5, 1.0, size=(N_TYPES, N_GENES))
    for t in range(N_TYPES):  # a few marker genes per type
        prof[t, t * 5:(t + 1) * 5] += 6.0
    return prof / prof.sum(axis=1, keepdims=True)


def make_cells(n_per_type: int = 30, seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"type{t}" for t in range(N_TYPES)], n_per_type)
    idx = np.repeat(np.arange(N_TYPES), n_per_type)
    lib = rng.integers(200, 600, size=len(labels))
    X = rng.poisson(_profiles()[idx] * lib[:, None]).astype(np.float32)
    X[:, -1] += 1  # no empty cell
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels),
                        "batch": pd.Categorical(np.tile(["b1", "b2"], len(labels))[: len(labels)])},
                       index=[f"cell{seed}_{i}" for i in range(len(labels))])
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))


def make_spots(n_spots: int = 25, seed: int = 1) -> tuple[AnnData, np.ndarray]:
    rng = np.random.default_rng(seed)
    props = rng.dirichlet(np.ones(N_TYPES) * 0.5, size=n_spots)
    X = rng.poisson(props @ _profiles() * 3000).astype(np.float32)
    X[:, -1] += 1
    ad = AnnData(X=X, obs=pd.DataFrame(index=[f"spot{i}" for i in range(n_spots)]),
                 var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))
    ad.obsm["spatial"] = rng.uniform(0, 100, size=(n_spots, 2))
    return ad, props


def _snapshot(adata: AnnData) -> dict:
    return {"obsm": sorted(adata.obsm), "layers": sorted(adata.layers),
            "obs": list(adata.obs.columns), "uns": sorted(adata.uns),
            "X": adata.X.copy()}


def _unchanged(before: dict, adata: AnnData) -> None:
    after = _snapshot(adata)
    assert {k: v for k, v in after.items() if k != "X"} == {k: v for k, v in before.items() if k != "X"}
    np.testing.assert_array_equal(after["X"], before["X"])


def _cancel_leaves_unchanged(gen, adata: AnnData) -> None:
    """Start a run, take its first event, close it: nothing is written, no thread is left."""
    before = _snapshot(adata)
    n_threads = threading.active_count()
    first = next(gen)
    assert isinstance(first, ProgressEvent)
    gen.close()
    _unchanged(before, adata)
    assert threading.active_count() <= n_threads


MINE = {("integrate", "scvi"): "scvi", ("integrate", "scanvi"): "scvi",
        ("deconvolve", "stereoscope"): "scvi", ("deconvolve", "destvi"): "scvi",
        ("deconvolve", "tangram"): "tangram", ("annotate", "scanvi"): "scvi",
        ("impute", "scvi"): "scvi"}


@pytest.mark.parametrize(("task", "name"), sorted(MINE))
def test_backends_are_registered_with_requirements_labels_and_documented_parameters(task, name):
    method = {m.name: m for m in list_methods(task)}[name]
    assert method.requires == (MINE[task, name],)
    assert not method.native and method.kind == "reference"
    assert "published method" in method.label
    for p in method_params(method):
        assert p.doc, f"{task} {name}: parameter {p.name} is not documented"
        assert p.name not in ("device", "seed", "copy", "layer"), "the core provides these"


# ---------------------------------------------------------------- deconvolution

DECONV_PARAMS = {"stereoscope": {"sc_epochs": 3, "st_epochs": 3},
                 "destvi": {"sc_epochs": 3, "st_epochs": 3, "n_latent": 2},
                 "tangram": {"num_epochs": 200}}


def _tool(method: str) -> str:
    return "tangram" if method == "tangram" else "scvi"


@pytest.mark.parametrize("method", sorted(DECONV_PARAMS))
def test_deconvolution_backend_writes_beside_the_native_result(method):
    pytest.importorskip(_tool(method))
    cells = make_cells()
    spots, true_props = make_spots()
    native = sdl.deconvolve(spots, cells, "cell_type", max_epochs=5)
    native_props = spots.obsm[PROPORTIONS_KEY].copy()
    events: list[ProgressEvent] = []
    res = sdl.deconvolve(spots, cells, "cell_type", method=method, progress=events.append,
                         **DECONV_PARAMS[method])
    assert res.adata is spots
    key, key_ab = f"{PROPORTIONS_KEY}_{method}", f"{ABUNDANCE_KEY}_{method}"
    assert res.keys == {"obsm": key, "obsm_abundance": key_ab}
    pd.testing.assert_frame_equal(spots.obsm[PROPORTIONS_KEY], native_props)  # native kept
    assert native.keys["obsm"] == PROPORTIONS_KEY
    P, Ab = spots.obsm[key], spots.obsm[key_ab]
    assert list(P.columns) == [f"type{t}" for t in range(N_TYPES)]
    assert list(P.index) == list(spots.obs_names)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5)
    assert Ab.shape == P.shape and (Ab.to_numpy() >= 0).all()
    # abundance x each type's mean reference library = the spot's counts (the shared unit)
    mean_lib = np.array([cells.X[cells.obs["cell_type"] == t].sum(axis=1).mean() for t in P.columns])
    np.testing.assert_allclose(Ab.to_numpy() @ mean_lib, spots.X.sum(axis=1), rtol=1e-4)
    record = spots.uns[UNS_KEY][key]
    assert record["method"] == method and record["task"] == "deconvolve"
    assert record["params"]["labels_key"] == "cell_type"
    for name, value in DECONV_PARAMS[method].items():
        assert record["params"][name] == value
    assert res.info["versions_backend"][_tool(method)] != "?"
    assert res.info["n_genes"] == N_GENES
    if method == "tangram":
        # three well-separated types are mapped well even in 200 steps (uniform: RMSE ~0.3)
        assert np.sqrt(np.mean((P.to_numpy() - true_props) ** 2)) < 0.15
        assert [e.stage for e in events] == ["tangram", "tangram"]
    else:  # every epoch of both scvi-tools models was reported, with its loss
        epochs = [e for e in events if e.epoch >= 1]
        assert len(epochs) == 6 and all(e.train_loss is not None for e in epochs)
        assert res.history.n_epochs == 6 and len(res.history.train_loss) == 6


@pytest.mark.parametrize("method", sorted(DECONV_PARAMS))
def test_deconvolution_backend_cancel_leaves_the_data_unchanged(method):
    pytest.importorskip(_tool(method))
    cells = make_cells()
    spots, _ = make_spots()
    params = dict(DECONV_PARAMS[method])
    if method != "tangram":
        params.update(sc_epochs=200, st_epochs=200)  # long enough to be cancelled mid-way
    gen = A.deconvolve_iter(spots, cells, "cell_type", method=method, **params)
    _cancel_leaves_unchanged(gen, spots)


def test_deconvolution_backend_ignores_unlabelled_reference_cells():
    pytest.importorskip("scvi")
    cells = make_cells()
    labels = cells.obs["cell_type"].astype(object)
    labels.iloc[::4] = np.nan  # a quarter unlabelled: prepare drops them for every method
    cells.obs["cell_type"] = pd.Categorical(labels)
    spots, _ = make_spots()
    res = sdl.deconvolve(spots, cells, "cell_type", method="stereoscope", copy=True,
                         sc_epochs=2, st_epochs=2)
    assert res.info["n_reference_cells"] == int(labels.notna().sum())
    assert list(res.adata.obsm[PROPORTIONS_KEY].columns) == [f"type{t}" for t in range(N_TYPES)]


@pytest.mark.parametrize(("method", "params", "message"), [
    ("tangram", {"num_epochs": 0}, "num_epochs must be at least 1"),
    ("tangram", {"density_prior": "dense"}, "density_prior"),
    ("stereoscope", {"sc_epochs": 0}, "sc_epochs must be at least 1"),
    ("destvi", {"n_latent": 0}, "n_latent must be at least 1"),
])
def test_deconvolution_backend_parameters_are_checked(method, params, message):
    pytest.importorskip(_tool(method))
    spots, _ = make_spots()
    before = _snapshot(spots)
    with pytest.raises(InputError, match=message):
        sdl.deconvolve(spots, make_cells(), "cell_type", method=method, **params)
    _unchanged(before, spots)


# ------------------------------------------------------------------- annotation

def _query(seed: int = 5) -> tuple[AnnData, np.ndarray]:
    query = make_cells(10, seed=seed)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    query.obs = query.obs.drop(columns="cell_type")
    return query, truth


SCANVI = {"n_latent": 4, "scvi_epochs": 30, "scanvi_epochs": 10}


def test_annotate_scanvi_writes_beside_the_native_result():
    pytest.importorskip("scvi")
    ref = make_cells(seed=0)
    query, truth = _query()
    sdl.annotate(query, ref, "cell_type", max_epochs=5, n_members=2)
    native = query.obs[CELL_TYPE_KEY].copy()
    events: list[ProgressEvent] = []
    res = sdl.annotate(query, ref, "cell_type", method="scanvi", progress=events.append, **SCANVI)
    key, key_conf = f"{CELL_TYPE_KEY}_scanvi", f"{CONFIDENCE_KEY}_scanvi"
    assert res.keys == {"obs": key, "obs_confidence": key_conf}
    pd.testing.assert_series_equal(query.obs[CELL_TYPE_KEY], native)  # native kept
    labels, conf = query.obs[key], query.obs[key_conf]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert ((conf >= 0) & (conf <= 1)).all()
    assert np.mean(labels.astype(str).to_numpy() == truth) > 0.8
    assert [e.stage for e in events if e.epoch >= 1] == ["scvi"] * 30 + ["scanvi"] * 10
    record = query.uns[UNS_KEY][key]
    assert record["method"] == "scanvi" and "batch_key" not in record["params"]  # None: not stored
    assert record["params"]["scvi_epochs"] == 30 and record["params"]["scanvi_epochs"] == 10
    assert res.info["n_batches"] == 2  # reference and query


def test_annotate_scanvi_with_the_spots_themselves_as_reference():
    """Labels on some cells (NaN elsewhere): the unlabelled cells get labels, the input stays."""
    pytest.importorskip("scvi")
    cells = make_cells(seed=3)
    truth = cells.obs["cell_type"].astype(str).to_numpy()
    partial = cells.obs["cell_type"].astype(object)
    rng = np.random.default_rng(0)
    hidden = rng.random(cells.n_obs) < 0.6
    partial[hidden] = np.nan
    cells.obs["labels"] = pd.Categorical(partial)
    res = sdl.annotate(cells, cells, "labels", method="scanvi", batch_key="batch", **SCANVI)
    assert res.info["n_reference_cells"] == int((~hidden).sum())
    assert res.info["same_object"] is True and res.info["n_batches"] == 2
    predicted = cells.obs[CELL_TYPE_KEY].astype(str).to_numpy()
    assert np.mean(predicted[hidden] == truth[hidden]) > 0.8
    assert cells.obs["labels"].isna().sum() == hidden.sum()  # the training labels are untouched


def test_annotate_scanvi_takes_the_reference_batches_when_it_has_the_column():
    pytest.importorskip("scvi")
    ref = make_cells(seed=0)
    query, _ = _query()
    query.obs["batch"] = pd.Categorical(np.where(np.arange(query.n_obs) % 2, "b3", "b4"))
    res = sdl.annotate(query, ref, "cell_type", method="scanvi", batch_key="batch", copy=True,
                       n_latent=4, scvi_epochs=2, scanvi_epochs=2)
    assert res.info["n_batches"] == 4  # b1, b2 (reference), b3, b4 (query)
    assert res.adata.uns[UNS_KEY]["annotate"]["params"]["batch_key"] == "batch"
    with pytest.raises(InputError, match="batch_key"):
        sdl.annotate(query, ref, "cell_type", method="scanvi", batch_key="no_such_column")


def test_annotate_scanvi_cancel_leaves_the_data_unchanged():
    pytest.importorskip("scvi")
    query, _ = _query()
    gen = A.annotate_iter(query, make_cells(seed=0), "cell_type", method="scanvi", n_latent=4,
                          scvi_epochs=200)
    _cancel_leaves_unchanged(gen, query)


# ------------------------------------------------------------------- imputation

def test_impute_scvi_writes_beside_the_native_result():
    pytest.importorskip("scvi")
    cells = make_cells()
    cells.X[:, 7] = 0  # a gene without counts: left out, written as 0
    sdl.impute(cells, max_epochs=3)
    native = cells.layers[IMPUTED_LAYER].copy()
    events: list[ProgressEvent] = []
    res = sdl.impute(cells, method="scvi", batch_key="batch", max_epochs=5, n_latent=4,
                     progress=events.append)
    key = f"{IMPUTED_LAYER}_scvi"
    assert res.keys == {"layers": key}
    np.testing.assert_array_equal(cells.layers[IMPUTED_LAYER], native)  # native kept
    Y = cells.layers[key]
    assert Y.shape == cells.shape and np.isfinite(Y).all() and (Y >= 0).all()
    assert (Y[:, 7] == 0).all()
    # expected counts on each cell's own scale
    np.testing.assert_allclose(Y.sum(axis=1), cells.X.sum(axis=1), rtol=1e-3)
    assert [e.epoch for e in events if e.epoch >= 1] == [1, 2, 3, 4, 5]
    record = cells.uns[UNS_KEY][key]
    assert record["method"] == "scvi" and record["params"]["batch_key"] == "batch"
    assert record["n_genes_dropped"] == 1


def test_impute_scvi_refuses_a_reference_and_a_bad_batch_column():
    pytest.importorskip("scvi")
    cells = make_cells()
    before = _snapshot(cells)
    with pytest.raises(InputError, match="reference"):
        sdl.impute(cells, method="scvi", reference=make_cells(seed=2), max_epochs=2)
    with pytest.raises(InputError, match="batch_key"):
        sdl.impute(cells, method="scvi", batch_key="cell_typo", max_epochs=2)
    _unchanged(before, cells)


def test_impute_scvi_cancel_leaves_the_data_unchanged():
    pytest.importorskip("scvi")
    cells = make_cells()
    _cancel_leaves_unchanged(A.impute_iter(cells, method="scvi", max_epochs=200, n_latent=4), cells)


# ------------------------------------------------------------------- integration

def test_integrate_scvi_writes_beside_the_native_result():
    pytest.importorskip("scvi")
    cells = make_cells()
    sdl.integrate(cells, "batch", max_epochs=3)
    native = cells.obsm[LATENT_KEY].copy()
    events: list[ProgressEvent] = []
    res = sdl.integrate(cells, "batch", method="scvi", n_latent=4, max_epochs=20,
                        progress=events.append)
    key = f"{LATENT_KEY}_scvi"
    assert res.keys == {"obsm": key}
    np.testing.assert_array_equal(cells.obsm[LATENT_KEY], native)  # native kept
    Z = cells.obsm[key]
    assert Z.shape == (cells.n_obs, 4) and np.isfinite(Z).all()
    assert [e.epoch for e in events if e.epoch >= 1] == list(range(1, 21))
    assert all(e.train_loss is not None for e in events if e.epoch >= 1)
    assert len(res.history.train_loss) == 20
    record = cells.uns[UNS_KEY][key]
    assert record["method"] == "scvi" and record["params"]["batch_key"] == "batch"
    # cell types stay apart in the latent space: nearest neighbours mostly of the same type
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(5).fit(Z, cells.obs["cell_type"])
    assert knn.score(Z, cells.obs["cell_type"]) > 0.8


def test_integrate_scanvi_uses_partial_labels_from_the_role_column():
    pytest.importorskip("scvi")
    cells = make_cells()
    partial = cells.obs["cell_type"].astype(object)
    partial.iloc[::3] = np.nan
    partial.iloc[1::5] = "Unknown"
    cells.obs["some_labels"] = pd.Categorical(partial)
    res = sdl.integrate(cells, "batch", method="scanvi", labels_key="some_labels", n_latent=4,
                        scvi_epochs=2, scanvi_epochs=2, copy=True)
    assert res.adata.obsm[LATENT_KEY].shape == (cells.n_obs, 4)
    labelled = partial.notna() & (partial != "Unknown")
    assert res.info["n_labelled"] == int(labelled.sum())
    assert res.adata.uns[UNS_KEY]["integrate"]["params"]["labels_key"] == "some_labels"
    with pytest.raises(InputError, match="labels_key"):
        sdl.integrate(cells, "batch", method="scanvi", labels_key="no_such_column")


def test_integrate_scanvi_labels_key_gets_a_labels_drop_down():
    """The GUI, CLI and docs read the role from the signature (no guessing from the name)."""
    from napari_spatialdl.tasks._spec import LABELS

    method = {m.name: m for m in list_methods("integrate")}["scanvi"]
    roles = {p.name: p.role for p in method_params(method)}
    assert roles["labels_key"] is not None and roles["labels_key"].kind == LABELS
    assert roles["labels_key"].of is None  # a column of the main data
    method = {m.name: m for m in list_methods("annotate")}["scanvi"]
    roles = {p.name: p.role for p in method_params(method)}
    assert roles["batch_key"].kind == "batch" and roles["batch_key"].of == "query"


@pytest.mark.parametrize("method", ["scvi", "scanvi"])
def test_integrate_backend_cancel_leaves_the_data_unchanged(method):
    pytest.importorskip("scvi")
    cells = make_cells()
    params = {"max_epochs": 200} if method == "scvi" else {"scvi_epochs": 200}
    _cancel_leaves_unchanged(A.integrate_iter(cells, "batch", method=method, n_latent=4, **params),
                             cells)
