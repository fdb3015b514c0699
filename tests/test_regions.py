"""Pure region assignment (no display): spots inside drawn shapes get the shape's name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.path import Path as MplPath

from napari_spatialdl.regions import (
    assign_regions,
    points_in_ellipse,
    points_in_polygon,
    region_counts,
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
    assert "region_colors" not in adata.uns  # categories changed: colours reset
    with pytest.raises(ValueError, match="4 spots"):
        write_regions(adata, "region", ["a"])
