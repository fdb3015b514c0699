"""The benchmark protocols (benchmarks/_protocols.py) do what the benchmarks claim."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _protocols as P  # noqa: E402


def tiny_reference(n_types: int = 4, per_type: int = 9, n_genes: int = 30, seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    profiles = rng.gamma(1.0, 2.0, size=(n_types, n_genes))
    labels = np.repeat([f"T{i}" for i in range(n_types)], per_type)
    X = rng.poisson(profiles[np.repeat(np.arange(n_types), per_type)] * 5).astype(np.float32)
    X[:, 0] += 1  # no empty cell
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels),
                        "batch": pd.Categorical(rng.choice(["a", "b", "c"], size=len(labels))),
                        "rep": pd.Categorical(np.tile(["Rep1", "Rep2", "Rep5"], len(labels) // 3 + 1)[: len(labels)])},
                       index=[f"c{i}" for i in range(len(labels))])
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


@pytest.fixture(scope="module")
def hippo(shared_data):
    return P.load_hippocampus(shared_data / "hippocampus_visium")


def test_load_hippocampus(hippo):
    ref, spatial = hippo
    assert ref.shape == (510, 307)
    assert spatial.shape == (313, 276)
    assert ref.obs["cell_type"].nunique() == 17
    assert ref.obs["replicate"].nunique() == 16
    assert set(ref.obs["rep"]) == {f"Rep{i}" for i in range(1, 7)}
    assert ref.obs_names[0].startswith(ref.obs["replicate"].iloc[0] + "_")
    assert np.all(np.mod(ref.X, 1) == 0) and ref.X.min() >= 0
    assert spatial.obsm["spatial"].shape == (313, 2)
    assert np.isfinite(spatial.obsm["spatial"]).all()
    # the default root resolves to the same shared folder
    ref2, _ = P.load_hippocampus()
    assert ref2.shape == ref.shape


@pytest.mark.parametrize("source", ["tiny", "hippocampus"])
def test_simulate_spots(source, request):
    if source == "tiny":
        ref = tiny_reference()
    else:
        ref = request.getfixturevalue("hippo")[0]
    half, spots, truth = P.simulate_spots(ref, "cell_type", n_spots=120, seed=0)
    # 50/50 split per type, disjoint from the simulation half
    counts_all = ref.obs["cell_type"].value_counts()
    counts_half = half.obs["cell_type"].value_counts()
    for t, n in counts_all.items():
        assert counts_half[t] in ((n + 1) // 2, n // 2)
    assert spots.n_obs == 120 and spots.n_vars == ref.n_vars
    n_cells = spots.obs["n_cells"].to_numpy()
    assert n_cells.min() >= 2 and n_cells.max() <= 10
    np.testing.assert_allclose(truth.sum(axis=1), 1.0)
    assert list(truth.columns) == [str(c) for c in ref.obs["cell_type"].cat.categories]
    n_types = (truth > 0).sum(axis=1).to_numpy()
    assert n_types.min() >= 1 and n_types.max() <= 4
    assert np.all(n_types <= n_cells)
    # fractions are multiples of 1/n_cells
    np.testing.assert_allclose((truth.to_numpy() * n_cells[:, None]) % 1, 0, atol=1e-9)
    assert np.all(np.mod(spots.X, 1) == 0)
    # deterministic
    _, spots2, truth2 = P.simulate_spots(ref, "cell_type", n_spots=120, seed=0)
    np.testing.assert_array_equal(spots.X, spots2.X)
    pd.testing.assert_frame_equal(truth, truth2)


def test_spot_counts_are_sums_of_simulation_half_cells():
    ref = tiny_reference(n_types=3, per_type=2)  # one simulation cell per type
    half, spots, truth = P.simulate_spots(ref, "cell_type", n_spots=20, seed=3)
    sim = ref[~ref.obs_names.isin(half.obs_names)]
    assert sim.n_obs == 3
    profiles = np.stack([sim.X[sim.obs["cell_type"] == t][0] for t in truth.columns])
    n_cells = spots.obs["n_cells"].to_numpy()[:, None]
    expected = (truth.to_numpy() * n_cells) @ profiles
    np.testing.assert_allclose(spots.X, expected, rtol=1e-5)


def test_score_proportions():
    ref = tiny_reference()
    _, _, truth = P.simulate_spots(ref, "cell_type", n_spots=50)
    perfect = P.score_proportions(truth.copy(), truth)
    assert perfect["rmse"] == pytest.approx(0, abs=1e-12)
    assert perfect["jsd"] == pytest.approx(0, abs=1e-12)
    assert perfect["pearson"] == pytest.approx(1.0)
    # column order and unnormalised rows do not matter
    shuffled = (truth * 3)[truth.columns[::-1]]
    assert P.score_proportions(shuffled, truth)["rmse"] == pytest.approx(0, abs=1e-12)
    uniform = P.score_proportions(np.full(truth.shape, 1 / truth.shape[1]), truth)
    assert uniform["rmse"] > 0.1 and uniform["jsd"] > 0.1 and uniform["pearson"] == 0.0
    # disjoint supports give JSD 1
    a = pd.DataFrame([[1.0, 0.0]], columns=["x", "y"])
    b = pd.DataFrame([[0.0, 1.0]], columns=["x", "y"])
    assert P.score_proportions(a, b)["jsd"] == pytest.approx(1.0)


@pytest.mark.parametrize("source", ["tiny", "hippocampus"])
def test_mask_counts(source, request):
    X = tiny_reference().X if source == "tiny" else request.getfixturevalue("hippo")[1].X
    masked, mask = P.mask_counts(X, 0.1, seed=0)
    nnz = np.count_nonzero(X)
    assert mask.sum() == round(0.1 * nnz)
    assert np.all(X[mask] > 0) and np.all(masked[mask] == 0)
    np.testing.assert_array_equal(masked[~mask], X[~mask])
    assert np.count_nonzero(masked) == nnz - mask.sum()
    m2, k2 = P.mask_counts(X, 0.1, seed=0)
    np.testing.assert_array_equal(k2, mask)


def test_score_imputation():
    X = tiny_reference().X
    masked, mask = P.mask_counts(X)
    perfect = P.score_imputation(X, X, mask)
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["median_ae"] == 0.0
    nothing = P.score_imputation(X, masked, mask)
    assert np.isnan(nothing["pearson"]) and nothing["median_ae"] > 0
    noisy = P.score_imputation(X, X * 1.5 + 1, mask)
    assert 0.9 < noisy["pearson"] <= 1.0 and noisy["median_ae"] > 0


def test_replicate_split_and_labels(hippo):
    ref = hippo[0]
    train, test = P.replicate_split(ref)
    assert set(train.obs["rep"]) == {"Rep1", "Rep2", "Rep3", "Rep4"}
    assert set(test.obs["rep"]) == {"Rep5", "Rep6"}
    assert train.n_obs + test.n_obs == ref.n_obs
    truth = test.obs["cell_type"].astype(str).to_numpy()
    assert P.score_labels(truth, truth) == {"accuracy": 1.0, "macro_f1": 1.0}
    wrong = np.where(truth == truth[0], "unassigned", truth)
    s = P.score_labels(truth, wrong)
    assert s["accuracy"] < 1.0 and s["macro_f1"] < 1.0


def test_score_labels_counts_unassigned_as_wrong():
    s = P.score_labels(["a", "a", "b", "b"], ["a", "unassigned", "b", "b"])
    assert s["accuracy"] == 0.75
    # F1(a) = 2/3, F1(b) = 1: 'unassigned' is not a class of its own
    assert s["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)


def test_scib_fallback_prefers_mixed_batches_and_separated_labels():
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.choice(["A", "B", "C"], size=n)
    batches = rng.choice(["b1", "b2"], size=n)
    centres = {"A": [0, 0], "B": [8, 0], "C": [0, 8]}
    good = np.array([centres[lab] for lab in labels], float) + rng.normal(size=(n, 2))
    bad = good + np.where(batches == "b1", 20.0, 0.0)[:, None]  # batches apart
    adata = AnnData(X=rng.poisson(2, size=(n, 20)).astype(np.float32),
                    obs=pd.DataFrame({"batch": batches, "cell_type": labels},
                                     index=[f"c{i}" for i in range(n)]))
    adata.obsm["good"], adata.obsm["bad"] = good, bad
    res = P.scib_total(adata, ["good", "bad"], "batch", "cell_type", use_scib=False)
    assert res.attrs["scorer"] == "fallback (sklearn)"
    assert res.loc["good", "batch_correction"] > res.loc["bad", "batch_correction"]
    assert res.loc["good", "bio_conservation"] > 0.9
    np.testing.assert_allclose(res["total"], 0.4 * res["batch_correction"] + 0.6 * res["bio_conservation"])


def test_log_pca_shape():
    X = tiny_reference().X
    Z = P.log_pca(X, n_comps=10)
    assert Z.shape == (X.shape[0], 10) and np.isfinite(Z).all()


# ------------------------------------------------ the benchmark's own baselines

def test_local_nnls_recovers_noiseless_mixtures():
    import accuracy as A

    ref = tiny_reference(per_type=10)
    R = ref.X.astype(float)
    lab = ref.obs["cell_type"].astype(str).to_numpy()
    types = sorted(set(lab))
    means = np.stack([R[lab == t].mean(axis=0) for t in types])
    rng = np.random.default_rng(1)
    n_cells = rng.integers(2, 8, size=(15, len(types))).astype(float)
    spots = AnnData(X=(n_cells @ means).astype(np.float32),
                    var=pd.DataFrame(index=ref.var_names.copy()))
    out = A.local_nnls(spots, ref, "cell_type")
    truth = pd.DataFrame(n_cells / n_cells.sum(1, keepdims=True), index=spots.obs_names, columns=types)
    assert P.score_proportions(out.obsm["spatialdl_proportions"], truth)["rmse"] < 1e-4


def test_local_knn_keeps_library_sizes_and_beats_no_imputation():
    import accuracy as A

    ref = tiny_reference(per_type=20)
    masked, mask = P.mask_counts(ref.X)
    spots = AnnData(X=masked, var=pd.DataFrame(index=ref.var_names.copy()))
    out = A.local_knn(spots, k=5)
    Y = out.layers["spatialdl_imputed"]
    np.testing.assert_allclose(Y.sum(axis=1), masked.sum(axis=1), rtol=1e-4)
    knn = P.score_imputation(ref.X, Y, mask)
    none = P.score_imputation(ref.X, A.local_none(spots).layers["spatialdl_imputed"], mask)
    assert knn["pearson"] > 0.5 and knn["median_ae"] < none["median_ae"]


def test_markdown_table_marks_local_baselines_and_missing_values():
    import accuracy as A

    df = pd.DataFrame([{"method": "nnls", "kind": "baseline", "via": "local", "rmse": 0.1,
                        "jsd": np.nan, "pearson": 0.9, "seconds": 1.23, "cpu_s": 1.0, "error": ""},
                       {"method": "x", "kind": "reference", "via": "registry", "seconds": 0.5,
                        "cpu_s": 0.1, "error": "ValueError: boom"}])
    text = A.to_markdown(df, "deconvolve")
    lines = text.splitlines()
    assert lines[0].startswith("| method | kind | rmse | jsd | pearson | seconds | cpu_s")
    assert "| nnls (local) | baseline | 0.100 | n/a | 0.900 | 1.2 | 1.0 |" in text
    assert "ValueError: boom" in lines[-1]
