"""The offline synthetic tissue and the sample-data commands."""

from __future__ import annotations

import builtins
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from scipy.spatial import cKDTree

from napari_spatialdl.datasets import REGIONS, synthetic_tissue
from napari_spatialdl.datasets import _visium as visium_mod
from napari_spatialdl.datasets._synthetic import (
    LIBRARY_ID,
    SPOT_DIAMETER_FULLRES,
    SPOT_PITCH_FULLRES,
)

SMALL = {"n_spots": 300, "n_genes": 150, "n_reference_cells": 400, "image_size": 300}


@pytest.fixture(scope="module")
def tissue():
    return synthetic_tissue(0)


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def _library(spatial):
    lib = spatial.uns["spatial"][LIBRARY_ID]
    return lib["images"]["hires"], lib["scalefactors"]["tissue_hires_scalef"], lib


# --- determinism, shapes ----------------------------------------------------------------------
def test_same_seed_identical_different_seed_differs():
    a_s, a_r = synthetic_tissue(3, **SMALL)
    b_s, b_r = synthetic_tissue(3, **SMALL)
    c_s, c_r = synthetic_tissue(4, **SMALL)
    assert (a_s.X != b_s.X).nnz == 0 and (a_r.X != b_r.X).nnz == 0
    np.testing.assert_array_equal(a_s.obsm["spatial"], b_s.obsm["spatial"])
    np.testing.assert_array_equal(_library(a_s)[0], _library(b_s)[0])
    np.testing.assert_array_equal(a_s.obsm["true_proportions"].values, b_s.obsm["true_proportions"].values)
    assert list(a_s.obs_names) == list(b_s.obs_names) and list(a_r.obs_names) == list(b_r.obs_names)
    assert a_s.X.shape == c_s.X.shape
    assert (a_s.X != c_s.X).nnz > 0
    assert (a_r.X != c_r.X).nnz > 0
    assert not np.array_equal(_library(a_s)[0], _library(c_s)[0])
    assert a_s.uns["synthetic"]["seed"] == 3 and c_s.uns["synthetic"]["seed"] == 4


def test_shapes_and_names(tissue):
    spatial, reference = tissue
    assert spatial.n_obs == 2000 and 1000 <= spatial.n_obs <= 3000
    assert spatial.n_vars == reference.n_vars == 500
    assert reference.n_obs == 3000
    assert list(spatial.var_names) == list(reference.var_names)
    assert spatial.var_names.is_unique and spatial.obs_names.is_unique and reference.obs_names.is_unique
    types = list(reference.obs["cell_type"].cat.categories)
    assert len(types) == 8 and "Oligodendrocyte" in types
    assert list(spatial.obsm["true_proportions"].columns) == types
    assert reference.obs["batch"].cat.categories.size == 3
    assert set(spatial.obs["region"].cat.categories) == set(REGIONS)
    assert spatial.obs["region"].value_counts().min() >= 20  # every region has spots
    assert len(spatial.uns["region_colors"]) == len(REGIONS)
    assert len(reference.uns["cell_type_colors"]) == len(types)
    assert all(c.startswith("#") and len(c) == 7 for c in reference.uns["cell_type_colors"])
    assert (spatial.obs["in_tissue"] == 1).all()
    assert spatial.uns["synthetic"]["seed"] == 0
    assert set(spatial.uns["synthetic"]["marker_genes"]) == set(types)


@pytest.mark.parametrize("n_types", [3, 11])
def test_other_numbers_of_cell_types(n_types):
    spatial, reference = synthetic_tissue(1, n_cell_types=n_types, n_spots=200, n_genes=160,
                                          n_reference_cells=600, n_batches=2, image_size=256)
    assert reference.obs["cell_type"].nunique() == n_types
    assert spatial.obsm["true_proportions"].shape == (200, n_types)
    assert reference.obs["batch"].nunique() == 2


def test_bad_parameters_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="n_genes"):
        synthetic_tissue(0, n_genes=40)
    with pytest.raises(ValueError, match="n_spots"):
        synthetic_tissue(0, n_spots=0)
    with pytest.raises(ValueError, match="batch_effect"):
        synthetic_tissue(0, batch_effect=-1.0)
    with pytest.raises(ValueError, match="n_spot_batches"):
        synthetic_tissue(0, n_spot_batches=0)
    with pytest.raises(ValueError, match=r"n_spot_batches=20 is too many for 300 spots: use at most 15"):
        synthetic_tissue(0, n_spot_batches=20, **SMALL)
    with pytest.raises(ValueError, match="spot_batch_effect"):
        synthetic_tissue(0, n_spot_batches=2, spot_batch_effect=float("nan"), **SMALL)


# --- counts -----------------------------------------------------------------------------------
def test_counts_are_integers_with_realistic_sparsity(tissue):
    spatial, reference = tissue
    for adata in (spatial, reference):
        X = _dense(adata.X)
        assert np.all(X >= 0) and np.all(np.mod(X, 1) == 0)
        np.testing.assert_array_equal(_dense(adata.layers["counts"]), X)
        assert (X.sum(axis=1) > 0).all()
    zeros_cells = float((_dense(reference.X) == 0).mean())
    zeros_spots = float((_dense(spatial.X) == 0).mean())
    assert 0.60 <= zeros_cells <= 0.85
    assert 0.2 <= zeros_spots < zeros_cells
    # the project's own count check accepts them
    from napari_spatialdl.tasks._validate import get_counts

    get_counts(spatial)
    get_counts(reference, "counts")


def test_library_sizes_vary_several_fold(tissue):
    for adata in tissue:
        lib = _dense(adata.X).sum(axis=1)
        assert np.percentile(lib, 95) / np.percentile(lib, 5) > 3


def test_negative_binomial_overdispersion(tissue):
    _, reference = tissue
    X = _dense(reference.X)
    obs = reference.obs
    combo = obs.groupby(["cell_type", "batch"], observed=True).size().idxmax()
    cells = X[((obs["cell_type"] == combo[0]) & (obs["batch"] == combo[1])).to_numpy()]
    assert len(cells) >= 50
    mean, var = cells.mean(axis=0), cells.var(axis=0, ddof=1)
    expressed = mean > 0.5
    assert expressed.sum() >= 50
    ratio = var[expressed] / mean[expressed]
    assert (ratio > 1).mean() > 0.95
    assert np.median(ratio) > 1.5  # Poisson would give ~1


def test_batch_effects_in_reference(tissue):
    _, reference = tissue
    X = _dense(reference.X)
    frac = X / X.sum(axis=1, keepdims=True)  # remove the depth difference, keep the gene effects
    obs = reference.obs
    ctype = obs["cell_type"].value_counts().index[0]
    per_batch = obs[obs["cell_type"] == ctype]["batch"].value_counts()
    b1, b2 = per_batch.index[:2]
    in_type = (obs["cell_type"] == ctype).to_numpy()
    m1 = in_type & (obs["batch"] == b1).to_numpy()
    m2 = in_type & (obs["batch"] == b2).to_numpy()
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.flatnonzero(m1))
    h1, h2 = idx[: len(idx) // 2], idx[len(idx) // 2:]
    expressed = X[in_type].mean(axis=0) > 2

    def logmean(rows):
        return np.log(frac[rows].mean(axis=0)[expressed])

    between = np.std(logmean(m1) - logmean(m2))
    within = np.std(logmean(h1) - logmean(h2))
    assert between > 2 * within
    # and the batches differ in depth
    depth = obs.groupby("batch", observed=True)["total_counts"].median()
    assert depth.max() / depth.min() > 1.5


@pytest.fixture(scope="module")
def two_sections():
    return synthetic_tissue(0, n_spot_batches=2)


def test_sections_leave_everything_but_the_spot_counts_as_without(tissue, two_sections):
    one, ref_one = tissue
    two, ref_two = two_sections
    assert "section" not in one.obs and "true_section_effect" not in one.varm and "section_colors" not in one.uns
    assert one.uns["synthetic"]["n_spot_batches"] == 1 and two.uns["synthetic"]["n_spot_batches"] == 2
    assert list(two.obs.columns) == ["in_tissue", "array_row", "array_col", "section", "region", "n_cells",
                                     "true_dominant_cell_type", "total_counts"]
    assert list(two.obs_names) == list(one.obs_names)
    for key in ("array_row", "array_col", "region", "n_cells", "true_dominant_cell_type"):
        assert two.obs[key].equals(one.obs[key]), key
    for key in ("spatial", "true_proportions", "true_abundance"):
        np.testing.assert_array_equal(np.asarray(two.obsm[key]), np.asarray(one.obsm[key]))
    np.testing.assert_array_equal(_library(two)[0], _library(one)[0])
    assert (ref_two.X != ref_one.X).nnz == 0 and ref_two.obs.equals(ref_one.obs)
    assert (two.X != one.X).nnz > 0  # the counts carry the sections' effects
    X = _dense(two.X)
    assert np.all(np.mod(X, 1) == 0) and (X.sum(axis=1) > 0).all()
    np.testing.assert_array_equal(_dense(two.layers["counts"]), X)
    assert 0.8 < np.median(X.sum(axis=1)) / np.median(_dense(one.X).sum(axis=1)) < 1.25  # same overall depth


def test_sections_are_side_by_side_halves_with_every_region(two_sections):
    spatial, _ = two_sections
    section = spatial.obs["section"]
    assert list(section.cat.categories) == ["section1", "section2"]
    counts = section.value_counts()
    assert abs(counts["section1"] - counts["section2"]) < 0.1 * spatial.n_obs
    # a straight cut between array columns: every spot of section1 lies left of every spot of section2
    cols = spatial.obs["array_col"]
    assert cols[section == "section1"].max() < cols[section == "section2"].min()
    per_region = pd.crosstab(spatial.obs["region"], section)
    assert (per_region >= 10).all().all()  # both sections hold every region: integration can align them
    assert len(spatial.uns["section_colors"]) == 2
    from napari_spatialdl.tasks._validate import offered_columns

    assert offered_columns(spatial, "batch") == ["section"]


def test_sections_have_gene_specific_effects_and_their_own_depth(two_sections):
    spatial, _ = two_sections
    X = _dense(spatial.X)
    section = spatial.obs["section"].to_numpy()
    truth = spatial.varm["true_section_effect"]
    assert list(truth.columns) == ["section1", "section2"] and list(truth.index) == list(spatial.var_names)
    assert np.std(np.log(truth.to_numpy())) > 0.3
    # the same region on both sides: expression differs by the sections' gene effects
    frac = X / X.sum(axis=1, keepdims=True)
    in_striatum = (spatial.obs["region"] == "Striatum").to_numpy()
    a, b = in_striatum & (section == "section1"), in_striatum & (section == "section2")
    expressed = X[in_striatum].mean(axis=0) > 2
    ratio = np.log(frac[b].mean(axis=0)[expressed] / frac[a].mean(axis=0)[expressed])
    true_ratio = np.log(truth["section2"].to_numpy() / truth["section1"].to_numpy())[expressed]
    assert np.corrcoef(ratio, true_ratio)[0, 1] > 0.8
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.flatnonzero(a))
    h1, h2 = idx[: len(idx) // 2], idx[len(idx) // 2:]
    within = np.log(frac[h1].mean(axis=0)[expressed] / frac[h2].mean(axis=0)[expressed])
    assert np.std(ratio) > 2 * np.std(within)
    # and a depth of their own, as recorded
    depth = spatial.obs.groupby("section", observed=True)["total_counts"].median()
    recorded = spatial.uns["synthetic"]["section_depth"]
    assert depth.max() / depth.min() > 1.5
    assert (depth["section2"] > depth["section1"]) == (recorded[1] > recorded[0])


def test_platform_effect_between_spots_and_reference(tissue):
    spatial, reference = tissue
    Xr, Xs = _dense(reference.X), _dense(spatial.X)
    types = list(reference.obs["cell_type"].cat.categories)
    frac = Xr / Xr.sum(axis=1, keepdims=True)
    signature = np.stack([frac[(reference.obs["cell_type"] == t).to_numpy()].mean(axis=0) for t in types])
    weights = spatial.obsm["true_abundance"][types].sum(axis=0).to_numpy()
    predicted = weights @ signature
    predicted /= predicted.sum()
    observed = Xs.sum(axis=0) / Xs.sum()
    ok = Xs.sum(axis=0) > 50
    log_ratio = np.log(observed[ok] / predicted[ok])
    truth = np.log(spatial.var["true_platform_effect"].to_numpy()[ok])
    assert np.std(log_ratio) > 0.3  # the spots do not look like the reference gene by gene
    assert np.corrcoef(log_ratio, truth)[0, 1] > 0.6  # and the difference is the platform effect


# --- ground truth -----------------------------------------------------------------------------
def test_true_proportions_follow_the_regions(tissue):
    spatial, _ = tissue
    props = spatial.obsm["true_proportions"]
    assert np.all(props.to_numpy() >= 0)
    np.testing.assert_allclose(props.sum(axis=1), 1.0, atol=1e-9)
    assert (props.to_numpy() == 0).mean() > 0.1  # absent types are exactly absent
    abundance = spatial.obsm["true_abundance"].to_numpy()
    np.testing.assert_allclose(abundance.sum(axis=1), spatial.obs["n_cells"], rtol=1e-9)
    means = props.groupby(spatial.obs["region"].to_numpy()).mean()
    for i, a in enumerate(REGIONS):
        for b in REGIONS[i + 1:]:
            assert np.abs(means.loc[a] - means.loc[b]).sum() > 0.3, (a, b)
    assert means.loc["White matter"].idxmax() == "Oligodendrocyte"
    assert means.loc["Hippocampus"].idxmax() == "Hippocampal pyramidal"
    assert means.loc["Striatum"].idxmax() == "Medium spiny neuron"
    # the counts follow the truth: a white-matter marker is highest in white matter
    X = _dense(spatial.X)
    mbp = X[:, spatial.var_names.get_loc("Mbp")] / X.sum(axis=1)
    by_region = {r: mbp[(spatial.obs["region"] == r).to_numpy()].mean() for r in REGIONS}
    assert max(by_region, key=by_region.get) == "White matter"
    # denser regions have more cells per spot
    cells = spatial.obs.groupby("region", observed=True)["n_cells"].mean()
    assert cells["Hippocampus"] > 2 * cells["Cortex L1"]


# --- geometry and image -----------------------------------------------------------------------
def test_spatial_layout_is_space_ranger_like(tissue):
    spatial, _ = tissue
    img, scalef, lib = _library(spatial)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert 0 < scalef < 1
    sf = lib["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(0.55 * SPOT_PITCH_FULLRES)
    low = lib["images"]["lowres"]
    assert low.shape[0] == img.shape[0] // 2
    assert sf["tissue_lowres_scalef"] == pytest.approx(scalef / 2)
    assert {"chemistry_description", "software_version"} <= set(lib["metadata"])
    # the project's accessors use it without complaint
    import warnings

    from napari_spatialdl.io import get_image, spot_diameter_px, spots_px, validate_spatial

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, s, key = get_image(spatial)
        assert key == "hires" and s == scalef
        np.testing.assert_allclose(spots_px(spatial), spatial.obsm["spatial"] * scalef)
        assert spot_diameter_px(spatial) == pytest.approx(SPOT_DIAMETER_FULLRES * scalef)
        assert validate_spatial(spatial) == []


def test_spots_lie_on_tissue_pixels(tissue):
    spatial, _ = tissue
    img, scalef, _ = _library(spatial)
    px = spatial.obsm["spatial"] * scalef
    h, w = img.shape[:2]
    assert (px[:, 0] >= 0).all() and (px[:, 0] <= w - 1).all()
    assert (px[:, 1] >= 0).all() and (px[:, 1] <= h - 1).all()
    col, row = np.rint(px).astype(int).T
    background = img[:10, :10].reshape(-1, 3).astype(float).mean(axis=0)
    assert background.min() > 235  # white glass around the section
    at_spots = img[row, col].astype(float)
    # every spot centre is stained: far from the glass colour
    assert (np.abs(at_spots - background).max(axis=1) > 30).all()
    # and much of the image is glass (the spots do not cover it all)
    glass = (np.abs(img.astype(float) - background).max(axis=2) < 12).mean()
    assert 0.15 < glass < 0.6


def test_regions_are_visible_in_the_image(tissue):
    spatial, _ = tissue
    img, scalef, _ = _library(spatial)
    px = np.rint(spatial.obsm["spatial"] * scalef).astype(int)
    mean_rgb = {}
    for region in REGIONS:
        patches = [img[y - 3:y + 4, x - 3:x + 4].reshape(-1, 3)
                   for x, y in px[(spatial.obs["region"] == region).to_numpy()]]
        mean_rgb[region] = np.concatenate(patches).astype(float).mean(axis=0)
    brightness = {r: v.mean() for r, v in mean_rgb.items()}
    # dense hippocampal band darkest, molecular layer L1 palest
    assert min(brightness, key=brightness.get) == "Hippocampus"
    assert max(brightness, key=brightness.get) == "Cortex L1"
    assert brightness["Cortex L1"] - brightness["Hippocampus"] > 30
    # H&E hues: pink/purple tissue (green absorbed most), white matter pinker (more eosin) than L2-3
    for rgb in mean_rgb.values():
        assert rgb[1] < rgb[0] and rgb[1] < rgb[2]
    assert mean_rgb["White matter"][0] - mean_rgb["Cortex L2-3"][0] > 10


def test_hexagonal_grid(tissue):
    spatial, _ = tissue
    xy = spatial.obsm["spatial"]
    tree = cKDTree(xy)
    dist, _ = tree.query(xy, k=2)
    nn = dist[:, 1]
    np.testing.assert_allclose(nn, SPOT_PITCH_FULLRES, rtol=0.01)
    neighbours = np.array([len(n) - 1 for n in tree.query_ball_point(xy, 1.05 * SPOT_PITCH_FULLRES)])
    assert neighbours.max() == 6
    assert (neighbours == 6).mean() > 0.8
    # Visium array indices: rows and columns of the same parity, 100 µm = one row apart
    obs = spatial.obs
    assert ((obs["array_row"] % 2) == (obs["array_col"] % 2)).all()
    dy = np.diff(np.sort(np.unique(xy[:, 1])))
    np.testing.assert_allclose(dy, SPOT_PITCH_FULLRES * np.sqrt(3) / 2, rtol=1e-6)


def test_h5ad_round_trip(tissue, tmp_path):
    import anndata as ad

    spatial, reference = tissue
    spatial.write_h5ad(tmp_path / "spatial.h5ad")
    reference.write_h5ad(tmp_path / "reference.h5ad")
    s2 = ad.read_h5ad(tmp_path / "spatial.h5ad")
    r2 = ad.read_h5ad(tmp_path / "reference.h5ad")
    assert (s2.X != spatial.X).nnz == 0 and (r2.X != reference.X).nnz == 0
    np.testing.assert_array_equal(_library(s2)[0], _library(spatial)[0])
    np.testing.assert_allclose(s2.obsm["true_proportions"].to_numpy(), spatial.obsm["true_proportions"].to_numpy())
    assert list(r2.obs["cell_type"].cat.categories) == list(reference.obs["cell_type"].cat.categories)


# --- sample-data commands ---------------------------------------------------------------------
def _manifest_sample_commands() -> dict[str, str]:
    import napari_spatialdl

    manifest = yaml.safe_load((Path(napari_spatialdl.__file__).parent / "napari.yaml").read_text())
    python_names = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    return {s["key"]: python_names[s["command"]] for s in manifest["contributions"]["sample_data"]}


def _resolve(python_name: str):
    module, attr = python_name.split(":")
    return getattr(importlib.import_module(module), attr)


def test_manifest_sample_commands_exist():
    commands = _manifest_sample_commands()
    assert set(commands) == {"synthetic_tissue", "visium_hne"}
    for python_name in commands.values():
        assert callable(_resolve(python_name))


def test_synthetic_sample_layers():
    pytest.importorskip("napari_spatialdl.layers")
    layers = _resolve(_manifest_sample_commands()["synthetic_tissue"])()
    kinds = [layer[2] for layer in layers]
    assert kinds == ["image", "points"]
    image, (points, kwargs, _) = layers[0][0], layers[1]
    assert image.dtype == np.uint8 and image.ndim == 3
    meta = kwargs["metadata"]
    spatial, reference = meta["adata"], meta["reference"]
    assert "cell_type" in reference.obs and "true_proportions" in spatial.obsm
    assert list(reference.var_names) == list(spatial.var_names)
    # spots in (row, col) pixels of the image, on the tissue, coloured by region
    assert points.shape == (spatial.n_obs, 2)
    rows, cols = np.rint(points).astype(int).T
    assert (image[rows, cols].astype(int).min(axis=1) < 235).all()
    face = np.asarray(kwargs["face_color"])
    assert len({tuple(np.round(c, 3)) for c in face}) == len(REGIONS)
    # every task runs on it: the spots have two sections to integrate, the reference its batches
    from napari_spatialdl.tasks._validate import check_obs_column, offered_columns

    assert offered_columns(spatial, "batch") == ["section"]
    assert set(check_obs_column(spatial, "section", argument="batch_key", kind="batch")) == {"section1", "section2"}
    assert offered_columns(reference, "labels") == ["cell_type"]
    assert "true_section_effect" in spatial.varm and spatial.uns["synthetic"]["n_spot_batches"] == 2


def _fail_like_squidpy_offline(**_kwargs):
    """What squidpy raises offline: an ExceptionGroup of the per-URL connection errors."""
    inner = ConnectionError("HTTPSConnectionPool(host='exampledata.scverse.org', port=443): Max "
                            "retries exceeded (Caused by NameResolutionError: Failed to resolve "
                            "'exampledata.scverse.org' ([Errno -2] Name or service not known))")
    group = getattr(builtins, "ExceptionGroup", None)  # Python >= 3.11
    if group is None:
        raise inner
    raise group("Failed to download visium_hne_adata.h5ad", [inner])


def test_visium_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SPATIALDL_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(visium_mod, "_loader", lambda name: _fail_like_squidpy_offline)
    for call in (visium_mod.visium_hne, _resolve(_manifest_sample_commands()["visium_hne"])):
        with pytest.raises(ConnectionError) as info:
            call()
        message = str(info.value)
        assert "download" in message.lower() and "internet" in message
        assert "Name or service not known" in message
        assert "synthetic" in message.lower() and "Space Ranger" in message


def test_visium_cached_file_errors_are_not_called_offline(monkeypatch, tmp_path):
    target = tmp_path / "broken.h5ad"
    target.write_bytes(b"not an h5ad")

    def read_fails(**_kwargs):
        raise OSError("unable to open file (file signature not found)")

    monkeypatch.setattr(visium_mod, "_loader", lambda name: read_fails)
    with pytest.raises(OSError, match="signature"):
        visium_mod.visium_hne(path=target)


def test_visium_sample_builds_layers_from_the_download(monkeypatch, tmp_path):
    pytest.importorskip("napari_spatialdl.layers")
    spatial, _ = synthetic_tissue(2, **SMALL)
    spatial.obs["cluster"] = spatial.obs["region"].astype(str).astype("category")
    asked = {}

    def fake_download(path=None, **_kwargs):
        asked["path"] = Path(path)
        return spatial

    monkeypatch.setenv("NAPARI_SPATIALDL_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(visium_mod, "_loader", lambda name: (asked.setdefault("name", name), fake_download)[1])
    layers = _resolve(_manifest_sample_commands()["visium_hne"])()
    assert [layer[2] for layer in layers] == ["image", "points"]
    assert layers[1][1]["metadata"]["adata"] is spatial
    assert asked["name"] == "visium_hne_adata"
    assert asked["path"] == tmp_path / "visium_hne_adata.h5ad"


def test_datasets_import_no_qt_or_napari():
    code = (
        "import sys\n"
        "from napari_spatialdl.datasets import synthetic_tissue\n"
        "from napari_spatialdl.datasets._samples import synthetic_tissue_sample\n"
        "synthetic_tissue_sample()\n"
        "bad = [m for m in sys.modules if m == 'napari' or m.startswith(('napari.', 'qtpy', 'PyQt', 'PySide'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
