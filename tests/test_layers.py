"""Layer factories and colour logic (no display)."""

from __future__ import annotations

import json

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.colors import to_rgba

from napari_spatialdl.layers import (
    NA_COLOR,
    ColorKeyError,
    color_for,
    colorable_keys,
    default_palette,
    spatial_layers,
    spot_colors,
    spot_values,
)


def _synthetic(n_side: int = 6, scalef: float = 0.25, diameter_full: float = 60.0, seed: int = 0) -> ad.AnnData:
    """Spots on a grid over a 2-tone image: tissue (dark) in the middle, background (white)."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(n_side) * 100.0 + 200.0, np.arange(n_side) * 100.0 + 300.0)
    xy = np.c_[xs.ravel(), ys.ravel()]  # full-res (x, y); y range differs from x on purpose
    n = len(xy)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, (n, 4)).astype(np.float32)))
    adata.obs_names = [f"spot{i:03d}" for i in range(n)]
    adata.var_names = ["GeneA", "GeneB", "GeneC", "GeneD"]
    adata.layers["counts"] = adata.X.copy() * 10
    adata.obs["cluster"] = pd.Categorical(rng.choice(["b", "a", "c"], n), categories=["b", "a", "c"])
    adata.obs["score"] = np.linspace(-1.0, 1.0, n)
    adata.obsm["spatial"] = xy
    adata.obsm["spatialdl_proportions"] = pd.DataFrame(
        rng.dirichlet([1, 1, 1], n), index=adata.obs_names, columns=["Astrocyte", "Neuron", "Oligo"])
    adata.obsm["X_spatialdl"] = rng.normal(size=(n, 3))
    h, w = int(1000 * scalef), int(900 * scalef)
    img = np.full((h, w, 3), 255, np.uint8)
    img[int(250 * scalef):int(850 * scalef), int(150 * scalef):int(750 * scalef)] = (150, 60, 120)
    adata.uns["spatial"] = {"lib1": {"images": {"hires": img},
                                     "scalefactors": {"tissue_hires_scalef": scalef,
                                                      "spot_diameter_fullres": diameter_full}}}
    return adata


# ---------------------------------------------------------------------------- layer factories


def test_synthetic_positions_size_metadata():
    adata = _synthetic(scalef=0.25, diameter_full=60.0)
    layers = spatial_layers(adata)
    assert [t for _, _, t in layers] == ["image", "points"]
    img, img_kw, _ = layers[0]
    assert img_kw["rgb"] is True and img.shape == (250, 225, 3)
    pts, kw, _ = layers[1]
    xy = adata.obsm["spatial"]
    # (row, col) = (y, x) in pixels of the image shown
    np.testing.assert_allclose(pts[:, 0], xy[:, 1] * 0.25)
    np.testing.assert_allclose(pts[:, 1], xy[:, 0] * 0.25)
    assert kw["size"] == pytest.approx(60.0 * 0.25)
    md = kw["metadata"]
    assert md["adata"] is adata and md["library_id"] == "lib1" and md["image_key"] == "hires"
    assert md["scalefactor"] == pytest.approx(0.25) and md["spatialdl_spots"] is True
    assert list(kw["features"]["barcode"]) == list(adata.obs_names)
    # every spot centre of this layout falls on the tissue (dark) part of the image
    r, c = np.round(pts).astype(int).T
    assert (img[r, c].mean(axis=1) < 200).all()


def test_no_image_gives_points_with_neighbour_size():
    adata = _synthetic()
    del adata.uns["spatial"]
    layers = spatial_layers(adata)
    assert [t for _, _, t in layers] == ["points"]
    pts, kw, _ = layers[0]
    np.testing.assert_allclose(pts, adata.obsm["spatial"][:, ::-1])
    # grid pitch 100 -> Visium-like spot diameter (a fixed fraction of the pitch, as io defines it)
    from napari_spatialdl.io._spatial import VISIUM_DIAMETER_TO_PITCH

    assert kw["size"] == pytest.approx(100.0 * VISIUM_DIAMETER_TO_PITCH)
    assert kw["metadata"]["library_id"] is None and kw["metadata"]["image_key"] is None
    assert kw["name"] == "spots"


def test_color_in_layer_kwargs_and_features():
    adata = _synthetic()
    pts, kw, _ = spatial_layers(adata, color="spatialdl_proportions:Neuron", name="S")[-1]
    assert kw["name"] == "S spots"
    np.testing.assert_allclose(kw["features"]["spatialdl_proportions:Neuron"],
                               adata.obsm["spatialdl_proportions"]["Neuron"])
    face = kw["face_color"]
    assert face.shape == (adata.n_obs, 4)
    hi = int(np.argmax(adata.obsm["spatialdl_proportions"]["Neuron"]))
    np.testing.assert_allclose(face[hi], matplotlib.colormaps["viridis"](1.0), atol=1e-6)
    assert kw["metadata"]["spatialdl_legend"].kind == "numeric"


def test_real_visium_positions_and_size(shared_data):
    from napari_spatialdl.io import read_visium

    root = shared_data / "visium_spaceranger_1.0.0"
    adata = read_visium(root)
    with pytest.warns(UserWarning, match="hires"):  # the hires PNG of this folder is blank
        layers = spatial_layers(adata)
    (img, img_kw, _), (pts, kw, _) = layers
    assert img.shape[:2] == (600, 600) and img_kw["rgb"]
    scalefactors = json.loads((root / "spatial" / "scalefactors_json.json").read_text())
    s = scalefactors["tissue_lowres_scalef"]
    pos = pd.read_csv(root / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    pos = pos.loc[adata.obs_names]
    np.testing.assert_allclose(pts[:, 0], pos[4].to_numpy() * s)  # pxl_row_in_fullres
    np.testing.assert_allclose(pts[:, 1], pos[5].to_numpy() * s)  # pxl_col_in_fullres
    assert kw["size"] == pytest.approx(scalefactors["spot_diameter_fullres"] * s)
    assert kw["metadata"]["image_key"] == "lowres"
    # spots (all under tissue in the filtered matrix) sit on stained tissue, darker than the
    # slide background at the image corners
    gray = np.asarray(img[..., :3], dtype=float).mean(axis=2)
    if gray.max() <= 1.0:
        gray = gray * 255
    r, c = np.round(pts).astype(int).T
    corners = np.concatenate([gray[:20, :20].ravel(), gray[-20:, -20:].ravel(), gray[:20, -20:].ravel()])
    assert np.median(gray[r, c]) < np.median(corners) - 20


# ---------------------------------------------------------------------------- values and colours


def test_spot_values_sources():
    adata = _synthetic()
    values, kind = spot_values(adata, "cluster")
    assert kind == "categorical" and list(values.categories) == ["b", "a", "c"]
    values, kind = spot_values(adata, "score")
    assert kind == "numeric" and values[0] == -1.0
    values, kind = spot_values(adata, "GeneB")
    assert kind == "numeric"
    np.testing.assert_allclose(values, adata.X[:, 1].toarray().ravel())
    from_layer, _ = spot_values(adata, "GeneB", layer="counts")
    np.testing.assert_allclose(from_layer, 10 * values)
    values, kind = spot_values(adata, "spatialdl_proportions:Oligo")
    np.testing.assert_allclose(values, adata.obsm["spatialdl_proportions"]["Oligo"])
    values, _ = spot_values(adata, "spatialdl_proportions:1")  # position when not a column name
    np.testing.assert_allclose(values, adata.obsm["spatialdl_proportions"]["Neuron"])
    values, _ = spot_values(adata, "X_spatialdl:2")
    np.testing.assert_allclose(values, adata.obsm["X_spatialdl"][:, 2])
    adata.obs["flag"] = adata.obs["score"] > 0
    assert spot_values(adata, "flag")[1] == "categorical"


def test_unknown_keys_list_what_exists():
    adata = _synthetic()
    with pytest.raises(ColorKeyError) as err:
        spot_values(adata, "Gfap")
    msg = str(err.value)
    assert "cluster" in msg and "score" in msg and "spatialdl_proportions" in msg and "GeneA" in msg
    with pytest.raises(ColorKeyError, match="Astrocyte"):
        spot_values(adata, "spatialdl_proportions:Microglia")
    with pytest.raises(ColorKeyError, match="3 columns"):
        spot_values(adata, "X_spatialdl:7")
    with pytest.raises(ColorKeyError, match="counts"):
        spot_values(adata, "GeneA", layer="imputed")


def test_categorical_colors_follow_uns_and_missing_is_grey():
    adata = _synthetic()
    adata.uns["cluster_colors"] = ["#ff0000", "#00ff00", "#0000ff"]  # for b, a, c
    codes = adata.obs["cluster"].cat.codes.to_numpy().copy()
    adata.obs.loc[adata.obs_names[0], "cluster"] = np.nan
    rgba, legend, _ = spot_colors(adata, "cluster")
    assert legend.kind == "categorical"
    assert legend.categories == {"b": "#ff0000", "a": "#00ff00", "c": "#0000ff"}
    expected = np.array([to_rgba(c) for c in ["#ff0000", "#00ff00", "#0000ff"]])
    np.testing.assert_allclose(rgba[1:], expected[codes[1:]])
    np.testing.assert_allclose(rgba[0], to_rgba(NA_COLOR))
    assert legend.n_missing == 1


def test_categorical_default_palette_is_scanpy():
    adata = _synthetic()
    rgba, legend, _ = spot_colors(adata, "cluster")
    assert list(legend.categories.values()) == default_palette(3)
    from scanpy.plotting.palettes import default_20

    assert default_palette(3) == list(default_20[:3])
    assert len(set(map(tuple, rgba.round(4)))) == 3


def test_numeric_colors_limits_and_nan():
    values = np.array([0.0, 5.0, 10.0, np.nan])
    rgba, legend = color_for(values, "numeric", cmap="magma")
    cmap = matplotlib.colormaps["magma"]
    np.testing.assert_allclose(rgba[0], cmap(0.0), atol=1e-6)
    np.testing.assert_allclose(rgba[2], cmap(1.0), atol=1e-6)
    np.testing.assert_allclose(rgba[3], to_rgba(NA_COLOR))
    assert legend.limits == (0.0, 10.0) and legend.cmap == "magma" and legend.n_missing == 1
    rgba, legend = color_for(values, "numeric", contrast_limits=(0.0, 5.0))
    np.testing.assert_allclose(rgba[1], rgba[2])  # clipped at the upper limit
    with pytest.raises(ValueError, match="colormap"):
        color_for(values, "numeric", cmap="not-a-cmap")


def test_color_for_mapping_of_categories():
    rgba, legend = color_for(pd.Categorical(["x", "y", "x"]), "categorical",
                             categories_colors={"x": "black", "y": "white"})
    np.testing.assert_allclose(rgba[:, :3], [[0, 0, 0], [1, 1, 1], [0, 0, 0]])
    assert legend.categories == {"x": "#000000", "y": "#ffffff"}


def test_colorable_keys():
    adata = _synthetic()
    keys = colorable_keys(adata)
    assert keys["genes"] == ["GeneA", "GeneB", "GeneC", "GeneD"]
    assert keys["obs"] == ["cluster", "score"]
    assert "spatialdl_proportions:Neuron" in keys["obsm"] and "X_spatialdl:2" in keys["obsm"]
    assert not any(k.startswith("spatial:") for k in keys["obsm"])
    for key in keys["obsm"] + keys["obs"]:  # every listed key can be coloured
        spot_values(adata, key)


def test_color_spots_on_a_points_layer_without_display():
    """color_spots on a napari Points layer (no viewer): colours, features for hover, legend."""
    from napari.layers import Points

    from napari_spatialdl._widgets._viewer import color_spots

    adata = _synthetic()
    data, kwargs, _ = spatial_layers(adata, features=["score"])[-1]
    layer = Points(data, **kwargs)
    layer.features = layer.features.assign(cluster=adata.obs["cluster"].to_numpy())
    layer.face_color = "cluster"  # a feature-bound colour mode set by someone else
    info = color_spots(layer, "GeneA", cmap="magma")
    assert info.kind == "numeric"
    assert list(layer.features.columns) == ["barcode", "score", "GeneA"]  # pinned 'score' kept
    np.testing.assert_allclose(layer.features["GeneA"], adata.X[:, 0].toarray().ravel())
    rgba, _, _ = spot_colors(adata, "GeneA", cmap="magma")
    np.testing.assert_allclose(layer.face_color, rgba, atol=1e-6)
    info = color_spots(layer, "spatialdl_proportions:Neuron", features=["cluster"])
    assert list(layer.features.columns) == ["barcode", "score", "cluster", "spatialdl_proportions:Neuron"]
    assert layer.metadata["spatialdl_legend"] is info
    status = layer.get_status(tuple(layer.data_to_world(layer.data[3])), world=True)["coordinates"]
    assert adata.obs_names[3] in status and "spatialdl_proportions:Neuron" in status
    with pytest.raises(ColorKeyError, match="obs columns"):
        color_spots(layer, "nope")


# ---------------------------------------------------------------------------- plain-word titles


def test_legend_titles_in_plain_words():
    from napari_spatialdl.layers import describe_key

    adata = _synthetic()
    adata.layers["spatialdl_imputed"] = adata.X.copy()
    adata.layers["spatialdl_imputed_magic"] = adata.X.copy()
    adata.obs["spatialdl_cell_type"] = pd.Categorical(["a"] * adata.n_obs)
    adata.obs["spatialdl_cell_type_logreg"] = adata.obs["spatialdl_cell_type"]
    adata.obs["total_counts"] = np.arange(adata.n_obs)
    adata.obsm["spatialdl_proportions_nnls"] = adata.obsm["spatialdl_proportions"]
    cases = {
        ("spatialdl_proportions:Astrocyte", None): "Astrocyte proportion",
        ("spatialdl_proportions_nnls:Neuron", None): "Neuron proportion (nnls)",
        ("GeneA", "spatialdl_imputed"): "GeneA, imputed",
        ("GeneA", "spatialdl_imputed_magic"): "GeneA, imputed (magic)",
        ("GeneA", "counts"): "GeneA, counts",
        ("GeneA", None): "GeneA",
        ("spatialdl_cell_type", None): "Predicted cell type",
        ("spatialdl_cell_type_logreg", None): "Predicted cell type (logreg)",
        ("total_counts", None): "Total counts",
        ("X_spatialdl:0", None): "Integrated dimension 1",
    }
    for (key, layer), words in cases.items():
        assert describe_key(adata, key, layer) == words, key
    # the legend carries both: the title in words and the key for code
    _, legend, _ = spot_colors(adata, "spatialdl_proportions:Oligo")
    assert legend.label == "Oligo proportion" and legend.key == "spatialdl_proportions:Oligo"


def test_one_value_everywhere_is_said_and_drawn_low():
    rgba, legend = color_for(np.zeros(5), "numeric", cmap="magma")
    np.testing.assert_allclose(rgba, np.tile(matplotlib.colormaps["magma"](0.0), (5, 1)), atol=1e-6)
    assert legend.note == "Every spot has the value 0."
    _, legend = color_for(np.array([0.0, 1.0]), "numeric")
    assert legend.note == ""
