"""Pure region assignment (no display): spots inside drawn shapes get the shape's name; the shapes
and the colouring shown survive an .h5ad round trip (Qt-free: the npe2 reader/writer functions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.path import Path as MplPath

from napari_spatialdl.layers import NA_COLOR, default_palette
from napari_spatialdl.regions import (
    META_REGIONS,
    REGION_FACE_ALPHA,
    REGIONS_UNS_KEY,
    SavedRegions,
    assign_regions,
    points_in_ellipse,
    points_in_polygon,
    region_counts,
    regions_layer_data,
    saved_regions,
    write_regions,
)


@pytest.fixture
def grid() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 100, size=(2000, 2))  # (y, x)


def test_polygon_matches_matplotlib(grid):
    # a concave, star-like polygon: the case where naive tests go wrong
    angles = np.linspace(0, 2 * np.pi, 11)[:-1]
    radius = np.where(np.arange(10) % 2 == 0, 40.0, 15.0)
    star = np.c_[50 + radius * np.sin(angles), 50 + radius * np.cos(angles)]
    ours = points_in_polygon(grid, star)
    theirs = MplPath(star).contains_points(grid)
    assert ours.sum() > 100
    assert (ours != theirs).sum() == 0


def test_assign_regions_names_and_nan(grid):
    tri = np.array([[10, 10], [10, 40], [40, 10]], float)
    box = np.array([[60, 60], [60, 90], [90, 90], [90, 60]], float)
    regions = assign_regions(grid, [tri, box], ["cortex", "white matter"])
    assert isinstance(regions, pd.Categorical)
    assert list(regions.categories) == ["cortex", "white matter"]
    expect_tri = MplPath(tri).contains_points(grid)
    expect_box = MplPath(box).contains_points(grid)
    np.testing.assert_array_equal(np.asarray(regions == "cortex"), expect_tri)
    np.testing.assert_array_equal(np.asarray(regions == "white matter"), expect_box)
    outside = ~(expect_tri | expect_box)
    assert outside.sum() > 0
    assert pd.isna(regions[outside]).all()
    counts = region_counts(regions)
    assert counts == {"cortex": int(expect_tri.sum()), "white matter": int(expect_box.sum()),
                      "unlabelled": int(outside.sum())}


def test_overlap_last_drawn_wins_and_shared_names(grid):
    big = np.array([[0, 0], [0, 100], [100, 100], [100, 0]], float)
    small = np.array([[20, 20], [20, 40], [40, 40], [40, 20]], float)
    other = np.array([[70, 70], [70, 80], [80, 80], [80, 70]], float)
    regions = assign_regions(grid, [big, small, other], ["tissue", "lesion", "lesion"])
    in_small = MplPath(small).contains_points(grid)
    in_other = MplPath(other).contains_points(grid)
    assert list(regions.categories) == ["tissue", "lesion"]
    np.testing.assert_array_equal(np.asarray(regions == "lesion"), in_small | in_other)
    assert (np.asarray(regions == "tissue") == ~(in_small | in_other)).all()


def test_ellipse_and_ignored_paths(grid):
    # axis-aligned ellipse centred (50, 50) with semi-axes 30 (y) and 10 (x), as napari stores it
    corners = np.array([[20, 40], [20, 60], [80, 60], [80, 40]], float)
    inside = points_in_ellipse(grid, corners)
    expect = ((grid[:, 0] - 50) / 30) ** 2 + ((grid[:, 1] - 50) / 10) ** 2 <= 1
    np.testing.assert_array_equal(inside, expect)
    line = np.array([[0, 0], [100, 100]], float)
    regions = assign_regions(grid, [corners, line], ["oval", "cut"], ["ellipse", "line"])
    assert list(regions.categories) == ["oval"]
    np.testing.assert_array_equal(np.asarray(regions == "oval"), expect)


def test_3d_vertices_use_last_two_columns(grid):
    tri = np.array([[0, 10, 10], [0, 10, 40], [0, 40, 10]], float)
    regions = assign_regions(np.c_[np.zeros(len(grid)), grid], [tri], ["a"])
    np.testing.assert_array_equal(np.asarray(regions == "a"), MplPath(tri[:, 1:]).contains_points(grid))


def test_bad_inputs():
    pts = np.zeros((3, 2))
    with pytest.raises(ValueError, match="name every shape"):
        assign_regions(pts, [np.zeros((3, 2))], [])
    with pytest.raises(ValueError, match="needs a name"):
        assign_regions(pts, [np.zeros((3, 2))], [" "])


def test_write_regions_to_obs():
    adata = AnnData(np.ones((4, 2), dtype=np.float32))
    adata.uns["region_colors"] = ["#ff0000"]
    labels = pd.Categorical.from_codes([0, -1, 1, 0], categories=["a", "b"])
    col = write_regions(adata, "region", labels)
    assert col.dtype.name == "category"
    assert list(adata.obs["region"].astype(object).fillna("-")) == ["a", "-", "b", "a"]
    # categories changed: colours picked afresh, one per category in order, as scanpy keeps them
    assert list(adata.uns["region_colors"]) == default_palette(2)
    assert REGIONS_UNS_KEY not in adata.uns  # no shapes given, none kept
    with pytest.raises(ValueError, match="4 spots"):
        write_regions(adata, "region", ["a"])


def test_region_colours_kept_and_chosen():
    adata = AnnData(np.ones((5, 2), dtype=np.float32))
    write_regions(adata, "r", pd.Categorical(["a", "b", "a", None, "b"]), colors={"a": "red"})
    assert list(adata.uns["r_colors"]) == ["#ff0000", default_palette(1)[0]]
    adata.uns["r_colors"] = ["#123456", "#abcdef"]  # the user recoloured them (e.g. in scanpy)
    write_regions(adata, "r", pd.Categorical(["c", "b", "a", None, "b"], categories=["a", "b", "c"]))
    colors = list(adata.uns["r_colors"])
    assert colors[:2] == ["#123456", "#abcdef"]  # regions that stayed keep their colour
    assert colors[2] not in colors[:2] and colors[2] == default_palette(1)[0]
    with pytest.raises(ValueError, match="one per region"):
        write_regions(adata, "r", pd.Categorical(["a"] * 5), colors=[])
    with pytest.raises(ValueError, match="not a colour"):
        write_regions(adata, "r", pd.Categorical(["a"] * 5), colors={"a": "no-such-colour"})
    assert list(adata.uns["r_colors"]) == colors  # refused: nothing changed


@pytest.fixture
def tissue():
    from napari_spatialdl.datasets import synthetic_tissue

    spatial, _ = synthetic_tissue(0, n_spots=300, n_genes=40, n_cell_types=3, n_reference_cells=150,
                                  image_size=300)
    return spatial


def _draw(adata: AnnData, key: str = "annotated_region"):
    """Three shapes in obsm['spatial'] (y, x) units: a triangle, an ellipse and a line (no area)."""
    yx = adata.obsm["spatial"][:, ::-1].astype(float)
    lo, hi = yx.min(0) - 1.3, yx.max(0) + 1.7
    mid = (lo + hi) / 2 + 2.1
    shapes = [np.array([lo, [lo[0], mid[1]], mid]),
              np.array([[mid[0], mid[1]], [mid[0], hi[1]], [hi[0], hi[1]], [hi[0], mid[1]]]),
              np.array([lo, hi])]
    names, kinds = ["cortex", "lesion", "cut"], ["polygon", "ellipse", "line"]
    regions = assign_regions(yx, shapes, names, kinds)
    write_regions(adata, key, regions, shapes=shapes, names=names, shape_types=kinds)
    return shapes, names, kinds


def test_shapes_survive_h5ad_round_trip(tissue, tmp_path):
    import anndata as ad

    from napari_spatialdl.io import read_h5ad, write_h5ad

    shapes, names, kinds = _draw(tissue)
    before = tissue.obs["annotated_region"].copy()
    path = write_h5ad(tissue, tmp_path / "regions.h5ad")
    for back in (read_h5ad(path), ad.read_h5ad(path)):  # also anndata's own reader: no pickles
        saved = saved_regions(back, "annotated_region")
        assert isinstance(saved, SavedRegions) and len(saved) == 3
        assert saved.names == names and saved.shape_types == kinds
        for got, drawn in zip(saved.vertices, shapes):
            np.testing.assert_allclose(got, drawn)
        colors = dict(zip(back.obs["annotated_region"].cat.categories, back.uns["annotated_region_colors"]))
        assert list(back.obs["annotated_region"].cat.categories) == ["cortex", "lesion"]
        assert saved.colors[:2] == [colors["cortex"], colors["lesion"]]
        assert saved.colors[2] == NA_COLOR  # a line encloses no region
        assert len(set(saved.colors[:2])) == 2
        # the saved shapes give the saved labels again: same coordinate space as obsm['spatial']
        again = assign_regions(back.obsm["spatial"][:, ::-1], saved.vertices, saved.names, saved.shape_types)
        pd.testing.assert_series_equal(pd.Series(again, index=back.obs_names, name="annotated_region"),
                                       back.obs["annotated_region"].astype(again.dtype), check_names=False)
        assert (back.obs["annotated_region"].astype(object).fillna("-").to_numpy()
                == before.astype(object).fillna("-").to_numpy()).all()
        assert set(saved_regions(back)) == {"annotated_region"}
    assert saved_regions(tissue, "other") is None
    # assigned again without shapes: the old ones no longer describe the column and go
    write_regions(tissue, "annotated_region", before)
    assert saved_regions(tissue) == {}


@pytest.mark.parametrize(("damage", "match"), [
    (lambda e: e.pop("vertices"), "'vertices' is missing"),
    (lambda e: e.update(n_vertices=np.array([3, 4, 3])), "adds up to 10 but there are 9"),
    (lambda e: e.update(vertices=np.where(e["vertices"] > 0, np.nan, 0.0)), "NaN"),
    (lambda e: e.update(colors=np.array(["#ff0000", "nope", "#00ff00"])), "not a colour"),
    (lambda e: e.update(shape_types=np.array(["polygon", "blob", "line"])), "blob"),
    (lambda e: e.update(names=np.array(["a", "b"])), "2 names but 3 shape types"),
])
def test_damaged_entry_is_named(tissue, tmp_path, damage, match):
    from napari_spatialdl.io import read_h5ad, write_h5ad

    _draw(tissue, key="my_regions")
    entry = dict(tissue.uns[REGIONS_UNS_KEY]["my_regions"])
    damage(entry)
    tissue.uns[REGIONS_UNS_KEY] = {"my_regions": entry}
    back = read_h5ad(write_h5ad(tissue, tmp_path / "damaged.h5ad"))
    with pytest.raises(ValueError, match=match) as err:
        saved_regions(back, "my_regions")
    assert "uns['spatialdl_regions']['my_regions'] is damaged" in str(err.value)
    assert "Assign the regions again" in str(err.value)
    with pytest.raises(ValueError, match="my_regions"):
        saved_regions(back)
    # opening it still works: the regions layer is left out, with a warning naming it
    with pytest.warns(UserWarning, match="regions of 'my_regions' are not shown"):
        assert regions_layer_data(back) == []


def test_write_regions_refuses_bad_shapes_and_changes_nothing(tissue):
    yx = tissue.obsm["spatial"][:, ::-1]
    regions = assign_regions(yx, [yx[:3]], ["a"])
    obs, uns = list(tissue.obs.columns), set(tissue.uns)
    for kwargs, match in [
        ({"shapes": [yx[:3]], "names": []}, "pass names="),
        ({"shapes": [yx[:3]], "names": ["a"], "shape_types": ["blob"]}, "Unknown shape type"),
        ({"shapes": [np.full((3, 2), np.nan)], "names": ["a"]}, "NaN"),
        ({"shapes": [np.zeros(3)], "names": ["a"]}, r"\(m, 2\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            write_regions(tissue, "region_new", regions, **kwargs)
    assert list(tissue.obs.columns) == obs and set(tissue.uns) == uns


def test_regions_layer_data_aligned_with_the_spots(tissue):
    from napari_spatialdl.layers import spatial_layers

    shapes, names, _ = _draw(tissue)
    points = spatial_layers(tissue)[-1]
    points[1]["translate"] = (5.0, -2.0)  # e.g. a reader placing the spots in a coordinate system
    (data, kwargs, kind), = regions_layer_data(tissue, points[1])
    assert kind == "shapes"
    scalef = points[1]["metadata"]["scalefactor"]
    assert scalef != 1.0
    for got, drawn in zip(data, shapes):
        np.testing.assert_allclose(got, drawn * scalef)  # in the spots' pixels, like the points
    assert kwargs["translate"] == (5.0, -2.0)
    assert list(kwargs["features"]["region"]) == names
    assert kwargs["metadata"] == {META_REGIONS: True, "spatialdl_regions_key": "annotated_region"}
    colors = dict(zip(tissue.obs["annotated_region"].cat.categories, tissue.uns["annotated_region_colors"]))
    from matplotlib.colors import to_rgba

    np.testing.assert_allclose(kwargs["edge_color"][0], to_rgba(colors["cortex"]), atol=1e-6)
    assert kwargs["face_color"][:, 3] == pytest.approx([REGION_FACE_ALPHA] * 3)
    # the spots inside each drawn polygon are inside its layer shape too (same pixel space)
    inside = points_in_polygon(points[0], data[0])
    np.testing.assert_array_equal(inside, (tissue.obs["annotated_region"] == "cortex").to_numpy())


# ------------------------------------------------------------------- the colouring kept in a file


def test_display_record_and_saved_display(tissue):
    from napari_spatialdl.layers import DISPLAY_KEY, display_record, saved_display

    assert display_record(None) is None and display_record({"key": None}) is None
    gene = str(tissue.var_names[0])
    record = display_record({"key": gene, "layer": None, "cmap": "magma", "contrast_limits": (0, 3)})
    assert record["key"] == gene and record["cmap"] == "magma" and "layer" not in record
    np.testing.assert_array_equal(record["contrast_limits"], [0.0, 3.0])
    tissue.uns[DISPLAY_KEY] = record
    assert saved_display(tissue) == {"color": gene, "layer": None, "cmap": "magma", "contrast_limits": (0.0, 3.0)}
    tissue.uns[DISPLAY_KEY] = {"key": gene, "cmap": "no-such-map", "layer": "missing"}
    assert saved_display(tissue) is None  # the layer is gone: plain spots, no error
    tissue.uns[DISPLAY_KEY] = {"key": gene, "cmap": "no-such-map"}
    assert saved_display(tissue)["cmap"] == "viridis"
    tissue.uns[DISPLAY_KEY] = {"key": "gone_column"}
    assert saved_display(tissue) is None
    tissue.uns[DISPLAY_KEY] = "junk"
    assert saved_display(tissue) is None


def test_npe2_writer_and_reader_keep_colouring_and_regions(tissue, tmp_path):
    """The napari writer records the colouring in the file only; the reader shows it and the regions."""
    import anndata as ad

    from napari_spatialdl._napari._npe2 import get_reader, write_h5ad
    from napari_spatialdl.layers import DISPLAY_KEY, META_COLOR, spatial_layers

    _draw(tissue)
    layers = spatial_layers(tissue, color="annotated_region")
    data, attrs, _ = layers[-1]
    uns_before = set(tissue.uns)
    path = tmp_path / "saved.h5ad"
    assert write_h5ad(str(path), layers) == [str(path)]
    assert set(tissue.uns) == uns_before  # the AnnData in memory is as it was
    assert ad.read_h5ad(path).uns[DISPLAY_KEY]["key"] == "annotated_region"

    opened = get_reader(str(path))(str(path))
    kinds = [kind for *_, kind in opened]
    assert kinds == ["image", "points", "shapes"]
    points = opened[1][1]
    assert points["metadata"][META_COLOR]["key"] == "annotated_region"
    np.testing.assert_allclose(points["face_color"], attrs["face_color"])
    assert points["metadata"]["spatialdl_legend"].categories == attrs["metadata"]["spatialdl_legend"].categories
    shapes, shape_kwargs, _ = opened[2]
    assert len(shapes) == 3 and list(shape_kwargs["features"]["region"]) == ["cortex", "lesion", "cut"]

    # a numeric colouring keeps its colormap and limits (single-layer writer signature)
    gene = str(tissue.var_names[1])
    data, attrs, _ = spatial_layers(tissue, color=gene, cmap="magma", contrast_limits=(0.0, 2.0))[-1]
    write_h5ad(str(path), data, attrs)
    points = get_reader(str(path))(str(path))[1][1]
    assert points["metadata"][META_COLOR] == {"key": gene, "layer": None, "cmap": "magma",
                                              "contrast_limits": (0.0, 2.0)}
    np.testing.assert_allclose(points["face_color"], attrs["face_color"])

    # plain spots saved over it: no colouring comes back, an older record is not kept
    data, attrs, _ = spatial_layers(tissue)[-1]
    tissue.uns[DISPLAY_KEY] = {"key": gene}
    write_h5ad(str(path), [(data, attrs, "points")])
    assert tissue.uns[DISPLAY_KEY] == {"key": gene}  # the user's entry is put back in memory
    assert DISPLAY_KEY not in ad.read_h5ad(path).uns
    points = get_reader(str(path))(str(path))[1][1]
    assert META_COLOR not in points["metadata"]

    # the coloured column was dropped before saving: the reopened spots are plain, no error
    del tissue.uns[DISPLAY_KEY]
    layers = spatial_layers(tissue, color="annotated_region")
    del tissue.obs["annotated_region"]
    write_h5ad(str(path), layers)
    points = get_reader(str(path))(str(path))[1][1]
    assert META_COLOR not in points["metadata"]
