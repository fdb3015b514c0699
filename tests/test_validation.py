"""Input validation: every refusal names the problem, the object, the argument and the fix.

Rules of ``napari_spatialdl.tasks._validate`` (object/argument naming, obs columns by kind and
cardinality, coordinates, cell types of a reference, parameter types) and the readers' handling
of damaged files (``napari_spatialdl.io.ReadError``), on real files copied and then damaged.
"""

from __future__ import annotations

import shutil
import types
import warnings
from pathlib import Path
from typing import Literal, Optional

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_spatialdl.io import InputError as IOInputError
from napari_spatialdl.io import ReadError, SpatialDataError, read_counts_csv, read_h5ad, read_visium
from napari_spatialdl.tasks import InputError
from napari_spatialdl.tasks._validate import (
    check_cell_types,
    check_obs_column,
    check_obs_key,
    check_spatial,
    coerce_param,
    coerce_params,
    column_name_role,
    column_problem,
    columns_for,
    get_counts,
    get_matrix,
    offered_columns,
    shared_genes,
)

# ----------------------------------------------------------------------------- data


def _same(a, b, where: str) -> None:
    """Deep equality of two values found in an AnnData (arrays, frames, nested dicts)."""
    if isinstance(a, dict) or isinstance(b, dict):
        assert isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif sp.issparse(a) or sp.issparse(b):
        assert sp.issparse(a) and sp.issparse(b) and a.shape == b.shape and a.dtype == b.dtype, where
        assert (a != b).nnz == 0, where
    elif isinstance(a, np.ndarray | list | tuple):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)
        assert np.asarray(a).dtype == np.asarray(b).dtype, where
    else:
        assert a == b or (a is None and b is None), where


def assert_equal(adata: ad.AnnData, before: ad.AnnData) -> None:
    """``adata`` holds exactly what ``before`` (a deep copy taken earlier) holds."""
    assert adata.shape == before.shape
    _same(adata.X, before.X, "X")
    for name in ("obs", "var"):
        pd.testing.assert_frame_equal(getattr(adata, name), getattr(before, name), obj=name)
    for name in ("layers", "obsm", "varm", "obsp", "varp"):
        _same(dict(getattr(adata, name)), dict(getattr(before, name)), name)
    _same(dict(adata.uns), dict(before.uns), "uns")
    assert (adata.raw is None) == (before.raw is None)


@pytest.fixture(scope="module")
def hippo(shared_data: Path) -> Path:
    return shared_data / "hippocampus_visium"


@pytest.fixture(scope="module")
def reference_file(hippo: Path) -> ad.AnnData:
    """The real DropViz reference: 510 cells x 307 genes, raw counts, 17 cell types."""
    ref = read_counts_csv(hippo / "reference/counts.csv", labels=hippo / "reference/cell_types.csv")
    ref.obs["replicate"] = pd.Categorical([n.split("_")[0] for n in ref.obs_names])
    return ref


@pytest.fixture
def reference(reference_file: ad.AnnData) -> ad.AnnData:
    """A fresh copy per test, with the columns a scanpy user would have."""
    ref = reference_file.copy()
    counts = np.asarray(ref.X.sum(axis=1)).ravel()
    ref.obs["total_counts"] = counts  # integer-valued, a different value for nearly every cell
    ref.obs["log_total"] = np.log1p(counts)  # continuous
    ref.obs["barcode"] = ref.obs_names.to_numpy()  # an ID column
    ref.layers["counts"] = ref.X.copy()
    ref.X = sp.csr_matrix(np.log1p(ref.X.toarray()) - 1.0, dtype=np.float32)  # has negative values
    ref.uns["note"] = {"kept": [1, 2]}
    return ref


@pytest.fixture(scope="module")
def spatial(hippo: Path) -> ad.AnnData:
    return read_counts_csv(hippo / "spatial/counts.csv", hippo / "spatial/coords.csv")


def small(n: int = 40, genes: int = 12, seed: int = 0) -> ad.AnnData:
    """A small synthetic count AnnData (for rules that need a precise shape)."""
    rng = np.random.default_rng(seed)
    a = ad.AnnData(rng.poisson(3, size=(n, genes)).astype(np.float32) + 1)
    a.obs_names = [f"cell{i}" for i in range(n)]
    a.var_names = [f"g{j}" for j in range(genes)]
    a.obs["sample"] = pd.Categorical(np.where(np.arange(n) % 2, "s1", "s2"))
    a.obsm["spatial"] = rng.uniform(0, 100, size=(n, 2))
    return a


# ----------------------------------------------------------------------------- 1. naming


def test_missing_layer_names_the_object_the_argument_and_the_layers_it_has(reference):
    before = reference.copy()
    with pytest.raises(InputError, match=(r"reference\.layers\['raw_counts'\] not found \(layers of reference: "
                                          r"counts\)\. Pass reference_layer=None to use reference\.X")):
        get_counts(reference, "raw_counts", obj="reference", layer_arg="reference_layer")
    with pytest.raises(InputError, match=r"spatial\.layers\['cnts'\] not found.*Did you mean layer='counts'"):
        get_matrix(reference, "cnts", obj="spatial")
    assert_equal(reference, before)


def test_negative_values_suggest_the_counts_layer_of_that_object(reference):
    before = reference.copy()
    with pytest.raises(InputError, match=(r"reference\.X has negative values.*reference\.layers\['counts'\] holds "
                                          r"raw counts: pass reference_layer='counts'\.")):
        get_counts(reference, None, obj="reference", layer_arg="reference_layer", what="the NNLS deconvolution")
    assert_equal(reference, before)
    # the layer chosen is not counts, X is: the fix is to use X
    flipped = before.copy()
    flipped.X = flipped.layers["counts"].copy()
    flipped.layers["lognorm"] = sp.csr_matrix(np.log1p(flipped.X.toarray()))
    del flipped.layers["counts"]
    with pytest.raises(InputError, match=r"query\.layers\['lognorm'\] holds non-integer.*query\.X holds raw counts: "
                                         r"pass query_layer=None"):
        get_counts(flipped, "lognorm", obj="query", layer_arg="query_layer")


def test_no_counts_anywhere_says_so_and_where_to_get_them(reference):
    lognorm = reference.copy()
    lognorm.X = sp.csr_matrix(np.log1p(lognorm.layers["counts"].toarray()))
    lognorm.layers["lognorm"] = lognorm.X.copy()
    del lognorm.layers["counts"]
    with pytest.raises(InputError, match=r"reference holds no raw counts.*read_visium.*reference_layer='counts'") as err:
        get_counts(lognorm, None, obj="reference", layer_arg="reference_layer")
    assert "'lognorm'" not in str(err.value).split("holds no raw counts")[1]  # never suggests a non-count layer
    # counts kept in .raw: the fix copies them into a layer
    lognorm.raw = reference.copy()
    lognorm.raw.X[:] = 0
    withraw = ad.AnnData(lognorm.X.copy(), obs=lognorm.obs.copy(), var=lognorm.var.copy())
    withraw.raw = ad.AnnData(reference.layers["counts"].copy(), obs=reference.obs.copy(), var=reference.var.copy())
    with pytest.raises(InputError, match=r"reference\.raw\.X holds raw counts.*reference\.layers\['counts'\] = "
                                         r"reference\.raw\[:, reference\.var_names\]\.X"):
        get_counts(withraw, None, obj="reference", layer_arg="reference_layer")


def test_empty_observations_and_nan_name_the_object():
    a = small()
    a.X[3] = 0
    with pytest.raises(InputError, match=r"1 of 40 observations of spatial have no counts in spatial\.X.*"
                                         r"filter_cells\(spatial"):
        get_counts(a, obj="spatial")
    a.X[3, 0] = np.nan
    with pytest.raises(InputError, match=r"spatial\.X holds 1 NaN"):
        get_matrix(a, obj="spatial")
    with pytest.raises(InputError, match=r"reference is empty"):
        get_matrix(a[:0], obj="reference")


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_gene_names_say_which_object_with_examples(spatial, reference):
    dup = reference.copy()
    names = dup.var_names.to_numpy().copy()
    names[1] = names[0]
    dup.var_names = names
    before = dup.copy()
    with pytest.raises(InputError, match=(rf"reference has 1 gene name that occur more than once \(e\.g\. "
                                          rf"'{names[0]}'\): call reference\.var_names_make_unique\(\)")) as err:
        shared_genes(spatial, dup, names=("spatial", "reference"))
    assert "spatial has" not in str(err.value)
    assert_equal(dup, before)
    with pytest.raises(InputError, match=r"query has .*query\.var_names_make_unique"):
        shared_genes(dup, spatial, names=("query", "reference"))
    common = shared_genes(spatial, reference)
    assert 0 < len(common) < min(spatial.n_vars, reference.n_vars)  # the real sets overlap partly


# ----------------------------------------------------------------------------- 2. obs columns


def test_continuous_numbers_are_refused_for_both_kinds(reference):
    before = reference.copy()
    for kind, argument in (("batch", "batch_key"), ("labels", "labels_key")):
        with pytest.raises(InputError, match=(rf"reference\.obs\['log_total'\] cannot be used as {argument}: it "
                                              r"holds continuous numbers.*not categories.*that fit a "
                                              rf"{kind} column: .*replicate")):
            check_obs_column(reference, "log_total", argument=argument, kind=kind, obj="reference")
        assert "continuous numbers" in column_problem(reference, "log_total", kind)
    assert_equal(reference, before)


def test_a_value_for_every_observation_is_refused_with_counts_and_alternatives(reference):
    with pytest.raises(InputError, match=(r"reference\.obs\['barcode'\] cannot be used as batch_key: it has 510 "
                                          r"distinct values for 510 observations.*ID or a barcode.*fit a batch "
                                          r"column: (?=.*cell_type)(?=.*replicate)")) as err:
        check_obs_column(reference, "barcode", argument="batch_key", kind="batch", obj="reference")
    assert "total_counts" not in str(err.value).split("fit a batch column")[1]
    # integer-valued measurements: many distinct numbers
    with pytest.raises(InputError, match=r"obs\['total_counts'\].*distinct numbers.*measurement.*astype\(str\)"
                                         r"\.astype\('category'\)"):
        check_obs_column(reference, "total_counts", argument="labels_key", kind="labels", obj="reference")
    # the real batch (replicate, 16 values) and the real labels pass
    assert column_problem(reference, "replicate", "batch") is None
    assert column_problem(reference, "cell_type", "labels") is None
    assert columns_for(reference, "batch") == ["cell_type", "replicate"]


def test_the_majority_rule_catches_near_unique_values():
    a = small(40)
    a.obs["mostly_unique"] = [f"id{i // 2}" if i < 4 else f"id{i}" for i in range(40)]  # 38 values / 40 obs
    problem = column_problem(a, "mostly_unique", "labels")
    assert problem is not None and "38 distinct values for 40 observations" in problem
    a.obs["pairs"] = [f"p{i // 2}" for i in range(40)]  # 20 values / 40 obs: exactly half, allowed
    assert column_problem(a, "pairs", "labels") is None


def test_one_value_missing_values_and_singleton_batches():
    a = small(40)
    a.obs["tissue"] = "brain"
    with pytest.raises(InputError, match=r"adata\.obs\['tissue'\] cannot be used as batch_key: it has 1 distinct "
                                         r"value \('brain'\); batch_key needs at least 2.*that fit a batch column: sample"):
        check_obs_column(a, "tissue", argument="batch_key", kind="batch")
    a.obs["donor"] = pd.Categorical(["d1"] * 20 + ["d2"] * 19 + ["d3"])
    with pytest.raises(InputError, match=r"has 1 batch with fewer than 2 observations: 'd3' \(1\).*Drop those "
                                         r"observations, e\.g\. adata = adata\[~adata\.obs\['donor'\]\.isin\(\['d3'\]\)\]"):
        check_obs_column(a, "donor", argument="batch_key", kind="batch")
    assert column_problem(a, "donor", "labels") is None  # a rare label is check_cell_types' business
    a.obs["typed"] = pd.Categorical(["A"] * 15 + [None] * 5 + ["B"] * 20)
    with pytest.raises(InputError, match=r"obs\['typed'\] cannot be used as batch_key: it has 5 missing values"):
        check_obs_column(a, "typed", argument="batch_key", kind="batch")
    labels = check_obs_column(a, "typed", argument="labels_key", kind="labels", allow_missing_values=True)
    assert labels.isna().sum() == 5 and labels.iloc[15] is None and labels.iloc[0] == "A"
    assert labels.index.equals(a.obs_names)


def test_booleans_and_integer_codes_are_accepted_and_returned_as_text():
    a = small(40)
    a.obs["is_tumour"] = np.arange(40) < 25
    assert column_problem(a, "is_tumour", "batch") is None
    assert set(check_obs_column(a, "is_tumour", argument="batch_key", kind="batch")) == {"True", "False"}
    a.obs["code"] = np.where(np.arange(40) % 2, 1.0, 2.0)
    a.obs.loc[a.obs_names[0], "code"] = np.nan
    out = check_obs_column(a, "code", argument="labels_key", kind="labels", allow_missing_values=True)
    assert set(out.dropna()) == {"1", "2"} and out.iloc[0] is None
    a.obs["codes_int"] = np.arange(40) % 3
    assert column_problem(a, "codes_int", "batch") is None


def test_many_numeric_codes_can_be_kept_by_making_the_column_categorical():
    a = small(1000, genes=5)
    a.obs["plate"] = np.repeat(np.arange(200), 5)  # 200 numeric values, 5 observations each
    assert "200 distinct numbers" in column_problem(a, "plate", "batch")
    a.obs["plate"] = a.obs["plate"].astype(str).astype("category")  # the fix the message gives
    assert column_problem(a, "plate", "batch") is None


def test_missing_column_lists_fitting_columns_and_the_closest_name(reference):
    with pytest.raises(InputError, match=(r"labels_key='cell_typ' is not a column of reference\.obs\. Did you mean "
                                          r"labels_key='cell_type'\?.*that fit a labels column: cell_type, replicate "
                                          r"\(other columns: total_counts, log_total, barcode\)")):
        check_obs_column(reference, "cell_typ", argument="labels_key", kind="labels", obj="reference")
    with pytest.raises(InputError, match=r"batch_key is needed: pass the name of the query\.obs column"):
        check_obs_column(reference, None, argument="batch_key", kind="batch", obj="query")


def test_check_obs_key_stays_compatible_and_applies_the_rules_by_argument(reference):
    out = check_obs_key(reference, "cell_type", "labels_key")
    assert out.dtype == object and out.iloc[0] == reference.obs["cell_type"].iloc[0]
    with pytest.raises(InputError, match=r"batch_key='donor' is not a column"):
        check_obs_key(reference, "donor", "batch_key")
    with pytest.raises(InputError, match=r"reference\.obs\['barcode'\] cannot be used as batch_key"):
        check_obs_key(reference, "barcode", "batch_key", obj="reference")
    one = reference.copy()
    one.obs["tissue"] = "brain"
    with pytest.raises(InputError, match="distinct value"):
        check_obs_key(one, "tissue", "labels_key")
    # a query may hold a single batch (map_query)
    assert set(check_obs_key(one, "tissue", "batch_key", min_values=1)) == {"brain"}


# ------------------------------------------------- 2b. which columns the drop-downs offer, by kind


@pytest.fixture(scope="module")
def visium_obs(shared_data: Path) -> ad.AnnData:
    """A real Space Ranger 1.0.0 output read as a user reads it: in_tissue, array_row, array_col."""
    return read_visium(shared_data / "visium_spaceranger_1.0.0")


def test_grid_coordinates_are_not_batches_on_a_real_space_ranger_read(visium_obs):
    a = visium_obs.copy()
    assert {"in_tissue", "array_row", "array_col"} <= set(a.obs.columns)
    assert a.obs["array_row"].dtype.kind == "i"
    a.obs["section"] = pd.Categorical(np.where(np.arange(a.n_obs) < a.n_obs // 2, "A", "B"))
    a.obs["row_band"] = (a.obs["array_row"] // 20).astype(np.int64)  # 4 integer values, named like nothing
    before = a.copy()
    for key in ("array_row", "array_col"):
        assert column_problem(a, key, "batch") is not None, key
        assert key not in columns_for(a, "batch")
    with pytest.raises(InputError, match=(r"adata\.obs\['array_row'\] cannot be used as batch_key: it has 52 "
                                          r"distinct values for 100 observations")):
        check_obs_column(a, "array_row", argument="batch_key", kind="batch")
    assert offered_columns(a, "batch") == ["section", "row_band"]
    # as labels: neither the grid, nor a section, nor integer codes are cell types
    assert offered_columns(a, "labels") == []
    assert_equal(a, before)


def test_columns_named_like_coordinates_or_qc_are_refused_as_batches_with_the_way_to_insist(visium_obs):
    a = visium_obs.copy()
    a.obs["array_row"] = (a.obs["array_row"] // 30).astype(np.int64)  # now few values: only the name says
    rng = np.random.default_rng(0)
    a.obs["n_cells"] = rng.integers(1, 12, a.n_obs)  # cells per spot: 11 values
    a.obs["n_genes_by_counts"] = np.asarray((a.X > 0).sum(axis=1)).ravel().astype(np.int64)
    for key, what in (("array_row", "a position on the slide"), ("n_cells", "a quality-control measurement"),
                      ("n_genes_by_counts", "")):
        problem = column_problem(a, key, "batch")
        assert problem is not None and what in problem, (key, problem)
    with pytest.raises(InputError, match=(r"adata\.obs\['n_cells'\] cannot be used as batch_key: it is named like a "
                                          r"quality-control measurement.*not batch codes.*make the column "
                                          r"categorical first: adata\.obs\['n_cells'\] = adata\.obs\['n_cells'\]"
                                          r"\.astype\(str\)\.astype\('category'\)")):
        check_obs_column(a, "n_cells", argument="batch_key", kind="batch")
    a.obs["array_row"] = a.obs["array_row"].astype(str).astype("category")  # the fix: insisting works
    assert column_problem(a, "array_row", "batch") is None
    # the labels rules are unchanged: integer codes are still accepted through the API
    assert column_problem(a, "n_cells", "labels") is None


def test_integer_columns_with_many_values_are_not_batches():
    a = small(400, genes=5)
    a.obs["grid"] = np.arange(400) % 60  # 60 values, 6.7 % of the observations
    a.obs["lane"] = np.arange(400) % 45  # 45 values: 11 % of the observations
    a.obs["plate_code"] = np.arange(400) % 8  # 8 values: few codes are always codes
    a.obs["well"] = np.arange(400) % 12  # 12 values, 3 %
    assert "60 distinct numbers (0 to 59) for 400 observations: too many for batch codes" in column_problem(
        a, "grid", "batch")
    assert "45 distinct numbers" in column_problem(a, "lane", "batch")
    assert column_problem(a, "plate_code", "batch") is None and column_problem(a, "well", "batch") is None
    assert column_problem(a, "grid", "labels") is None  # labels: up to 100 numeric codes, as before
    b = small(100, genes=5)
    b.obs["tile"] = np.arange(100) % 11  # 11 values for 100 observations: over 10 %
    assert "11 distinct numbers" in column_problem(b, "tile", "batch")
    b.obs["tile"] = b.obs["tile"].astype(str).astype("category")
    assert column_problem(b, "tile", "batch") is None


def test_real_reference_offers_its_replicates_as_batch_and_its_cell_types_as_labels(reference, hippo):
    numi = pd.read_csv(hippo / "reference/nUMI.csv", index_col=0).iloc[:, 0]
    reference.obs["nUMI"] = numi.reindex(reference.obs_names).to_numpy().astype(np.int64)
    reference.obs["n_cells"] = 1
    before = reference.copy()
    assert "nUMI" not in columns_for(reference, "batch")
    # cell_type fits the batch rules, but while a real batch column exists it is not offered
    assert column_problem(reference, "cell_type", "batch") is None
    assert offered_columns(reference, "batch") == ["replicate"]
    assert offered_columns(reference, "labels") == ["cell_type"]  # not replicate, nor the numbers
    assert columns_for(reference, "labels") == ["cell_type", "replicate"]  # what the rules alone accept
    without = reference.copy()
    del without.obs["replicate"]  # nothing but biology left: offered, never preselected by name
    assert offered_columns(without, "batch") == ["cell_type"]
    assert_equal(reference, before)


def test_real_spots_with_coordinates_in_obs_offer_no_batch(spatial, hippo):
    a = spatial.copy()
    xy = pd.read_csv(hippo / "spatial/coords.csv", index_col=0)
    a.obs["x"] = xy.loc[a.obs_names, "x"].to_numpy()
    a.obs["y"] = xy.loc[a.obs_names, "y"].to_numpy()
    a.obs["total_counts"] = np.asarray(a.X.sum(axis=1)).ravel()
    assert a.obs["x"].dtype.kind == "i"
    assert offered_columns(a, "batch") == [] and offered_columns(a, "labels") == []
    assert "a position on the slide" in column_problem(a, "x", "batch")


def test_synthetic_spots_offer_their_sections_as_batch_and_regions_as_labels():
    from napari_spatialdl.datasets import synthetic_tissue

    one, reference = synthetic_tissue(0, n_spots=300, n_genes=150, n_reference_cells=400, image_size=300)
    two, _ = synthetic_tissue(0, n_spots=300, n_genes=150, n_reference_cells=400, image_size=300,
                              n_spot_batches=2)
    assert offered_columns(two, "batch") == ["section"]
    assert offered_columns(two, "labels") == ["region", "true_dominant_cell_type"]
    for key in ("in_tissue", "array_row", "array_col", "n_cells", "total_counts"):
        assert column_problem(two, key, "batch") is not None, key
    # one section: no batch column; only the biology is left (offered, not preselected)
    assert offered_columns(one, "batch") == ["region", "true_dominant_cell_type"]
    assert offered_columns(reference, "batch") == ["batch"]
    assert offered_columns(reference, "labels") == ["cell_type"]
    # napari-spatialdl's own results are never offered as batches
    two.obs["spatialdl_clusters"] = pd.Categorical(np.arange(two.n_obs) % 5)
    assert "spatialdl_clusters" not in offered_columns(two, "batch")
    with pytest.raises(ValueError, match="kind must be one of"):
        offered_columns(two, "cells")


def test_column_names_say_what_columns_hold():
    roles = {
        "coordinate": ["array_row", "array_col", "in_tissue", "x", "y", "pxl_row_in_fullres", "imagecol",
                       "x_centroid", "center_y"],
        "measurement": ["total_counts", "n_genes_by_counts", "n_cells", "pct_counts_mt", "nCount_RNA",
                        "nFeature_Spatial", "nUMI", "log1p_total_counts", "transcript_counts", "cell_area"],
        "batch": ["batch", "sample", "section", "library_id", "donor", "slide", "replicate", "sample_id",
                  "orig.ident", "Batch", "seq_batch", "capture_area"],
        "labels": ["cell_type", "celltype", "cluster", "leiden", "louvain", "region", "annotation",
                   "true_dominant_cell_type", "seurat_clusters", "cell_subclass"],
        None: ["half", "kind", "condition", "tissue", "plate_code_x1"],
    }
    for role, names in roles.items():
        for name in names:
            assert column_name_role(name) == role, (name, column_name_role(name), role)


def test_preferred_column_picks_the_only_labels_column_and_conventional_batch_names():
    pytest.importorskip("qtpy")
    from napari_spatialdl._widgets._inputs import preferred_column

    assert preferred_column(["kind"], "labels") == "kind"  # the only one, whatever its name
    assert preferred_column(["region", "cell_type"], "labels") == "cell_type"
    assert preferred_column(["region", "subclass"], "labels") is None
    assert preferred_column(["half"], "batch") is None  # a name that says nothing: the user chooses
    assert preferred_column(["section"], "batch") == "section"
    assert preferred_column(["replicate", "x"], "batch") == "replicate"
    assert preferred_column(["section", "sample"], "batch", previous="sample") == "sample"


# ----------------------------------------------------------------------------- 3. coordinates


def test_coordinates_with_one_column_are_refused_with_shape_and_fix():
    a = small()
    a.obsm["spatial"] = a.obsm["spatial"][:, :1]
    before = a.copy()
    with pytest.raises(InputError, match=(r"spatial\.obsm\['spatial'\] has shape \(40, 1\); it must be \(n_obs, 2\) "
                                          r"with columns x, y: one column is not a position.*Set spatial\.obsm")):
        check_spatial(a, obj="spatial")
    assert_equal(a, before)


def test_coordinates_must_be_finite_numbers_one_row_per_observation():
    a = small()
    a.obsm["spatial"] = np.array([[f"{x:.1f}", "1"] for x in range(40)])
    with pytest.raises(InputError, match=r"adata\.obsm\['spatial'\] holds <U\d+ values, not numbers"):
        check_spatial(a)
    a.obsm["spatial"] = pd.DataFrame({"x": ["a"] * 40, "y": [1.0] * 40}, index=a.obs_names)
    with pytest.raises(InputError, match=r"not numbers \(dtype object\)"):
        check_spatial(a)
    xy = np.random.default_rng(0).uniform(size=(40, 2))
    xy[5, 1] = np.inf
    a.obsm["spatial"] = xy
    with pytest.raises(InputError, match=r"1 of 40 spots have NaN or infinite coordinates in adata\.obsm"):
        check_spatial(a)
    # anndata refuses this on assignment, but an AnnData-like object may not
    like = types.SimpleNamespace(obsm={"spatial": np.zeros((39, 2))}, n_obs=40)
    with pytest.raises(InputError, match=r"has 39 rows but reference has 40 observations"):
        check_spatial(like, obj="reference")
    del a.obsm["spatial"]
    with pytest.raises(InputError, match=r"query\.obsm\['spatial'\] is missing"):
        check_spatial(a, obj="query")


def test_three_coordinate_columns_use_x_and_y_silently():
    a = small()
    xyz = np.column_stack([a.obsm["spatial"], np.arange(40.0)])
    a.obsm["spatial"] = xyz
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xy = check_spatial(a)
    np.testing.assert_array_equal(xy, xyz[:, :2])
    a.obsm["spatial"] = pd.DataFrame(xyz, index=a.obs_names, columns=["x", "y", "z"])
    np.testing.assert_array_equal(check_spatial(a), xyz[:, :2])


# ----------------------------------------------------------------------------- 4. cell types


def test_a_type_with_one_reference_cell_is_refused_naming_it(reference):
    ref = reference.copy()
    astro = np.flatnonzero(ref.obs["cell_type"].to_numpy() == "Astrocyte")
    keep = np.ones(ref.n_obs, bool)
    keep[astro[1:]] = False  # a single Astrocyte left, as a user's subset may have
    ref = ref[keep].copy()
    labels = check_obs_column(ref, "cell_type", argument="labels_key", kind="labels", obj="reference")
    with pytest.raises(InputError, match=(r"reference\.obs\['cell_type'\] has 1 cell type with fewer than 2 cells "
                                          r"among the 481 labelled cells: 'Astrocyte' \(1 cell\)\..*Drop them "
                                          r"\(reference = reference\[~reference\.obs\['cell_type'\]\.isin"
                                          r"\(\['Astrocyte'\]\)\]\.copy\(\)\), merge them")):
        check_cell_types(labels, labels_key="cell_type", obj="reference", min_cells=2)
    counts = check_cell_types(check_obs_key(reference, "cell_type", "labels_key"), labels_key="cell_type")
    assert len(counts) == 17 and int(counts.sum()) == 510 and counts.min() >= 2


def test_cell_types_need_two_types_and_ignore_unlabelled_cells():
    with pytest.raises(InputError, match=r"query\.obs\['lab'\] has 1 cell type \('A'\) among the 3 labelled cells "
                                         r"with counts: at least 2"):
        check_cell_types(pd.Series(["A", "A", None, "A"]), labels_key="lab", obj="query", context="with counts")
    counts = check_cell_types(np.array(["A", "B", None, "A", "B", np.nan], dtype=object), labels_key="lab",
                              min_cells=2)
    assert counts.to_dict() == {"A": 2, "B": 2}
    with pytest.raises(InputError, match=r"2 cell types with fewer than 3 cells.*'A' \(2 cells\), 'B' \(2 cells\)"):
        check_cell_types(["A", "B", "A", "B", "C", "C", "C"], labels_key="lab", min_cells=3)


# ----------------------------------------------------------------------------- 5. parameters


def _method(data, max_epochs: int = 100, lr: float = 1e-3, seed: int | None = 0,
            likelihood: Literal["nb", "zinb"] = "nb", spatial: bool = False, n_top: Optional[int] = None,  # noqa: UP045
            key: str = "x", *, levels: Literal[1, 2] = 1):
    """A method signature as the tasks declare them (string annotations: future import above)."""


def test_coerce_param_converts_text_and_refuses_the_wrong_type():
    assert coerce_param("max_epochs", "10", int, 100) == 10 and type(coerce_param("n", np.int64(3), int)) is int
    assert coerce_param("max_epochs", 10.0, int) == 10
    assert coerce_param("lr", "0.5", float) == 0.5 and coerce_param("lr", 2, float) == 2.0
    assert coerce_param("spatial", "yes", bool) is True and coerce_param("spatial", 0, bool) is False
    with pytest.raises(InputError, match=r"^max_epochs must be an integer, got '10\.5' \(str\)\.$"):
        coerce_param("max_epochs", "10.5", int)
    with pytest.raises(InputError, match=r"max_epochs must be an integer, got 'ten' \(str\)"):
        coerce_param("max_epochs", "ten", int)
    with pytest.raises(InputError, match=r"max_epochs must be an integer, got 10\.5 \(float\)"):
        coerce_param("max_epochs", 10.5, int)
    with pytest.raises(InputError, match=r"max_epochs must be an integer, got True \(bool\)\. Pass a number"):
        coerce_param("max_epochs", True, int)
    with pytest.raises(InputError, match=r"seed must be an integer, got None \(NoneType\)\. Pass an integer "
                                         r"\(the default is 0\)"):
        coerce_param("seed", None, int, 0)
    with pytest.raises(InputError, match=r"lr must be a number, got 'fast' \(str\)"):
        coerce_param("lr", "fast", float)
    with pytest.raises(InputError, match=r"lr must be a finite number, got nan"):
        coerce_param("lr", float("nan"), float)
    with pytest.raises(InputError, match=r"key must be text \(a string\), got 3 \(int\)"):
        coerce_param("key", 3, str)


def test_coerce_param_unions_literals_and_string_annotations():
    assert coerce_param("seed", None, int | None) is None
    assert coerce_param("seed", "7", "int | None") == 7
    assert coerce_param("n_top", None, Optional[int]) is None  # noqa: UP045 - typing.Optional is supported too
    assert coerce_param("n_top", "5", Optional[int]) == 5  # noqa: UP045
    with pytest.raises(InputError, match=r"seed must be an integer or None, got 'x' \(str\)"):
        coerce_param("seed", "x", int | None)
    assert coerce_param("likelihood", "zinb", Literal["nb", "zinb"]) == "zinb"
    with pytest.raises(InputError, match=r"likelihood must be one of 'nb', 'zinb'; got 'poisson'"):
        coerce_param("likelihood", "poisson", 'Literal["nb", "zinb"]')
    assert coerce_param("levels", "2", Literal[1, 2]) == 2
    with pytest.raises(InputError, match=r"levels must be one of 1, 2; got True"):
        coerce_param("levels", True, Literal[1, 2])
    # no annotation: the default's type is the one asked for
    assert coerce_param("k", "3", inspect_empty(), 5) == 3


def inspect_empty():
    import inspect

    return inspect.Parameter.empty


def test_coerce_params_resolves_the_signature_and_refuses_unknown_names():
    out = coerce_params(_method, {"max_epochs": "10", "lr": "1e-2", "seed": None, "likelihood": "zinb",
                                  "spatial": "false", "levels": "2"})
    assert out == {"max_epochs": 10, "lr": 0.01, "seed": None, "likelihood": "zinb", "spatial": False, "levels": 2}
    with pytest.raises(InputError, match=r"_method\(\) has no parameter 'max_epoch' \(did you mean 'max_epochs'\?\)\. "
                                         r"Valid parameters: data, max_epochs, lr, seed, likelihood, spatial, n_top, key, "
                                         r"levels\."):
        coerce_params(_method, {"max_epoch": 5})
    with pytest.raises(InputError, match=r"max_epochs must be an integer, got '10\.5' \(str\)"):
        coerce_params(_method, {"max_epochs": "10.5"})
    import functools

    assert coerce_params(functools.partial(_method, None), {"lr": 1}) == {"lr": 1.0}


# ----------------------------------------------------------------------------- 6. damaged files


@pytest.fixture
def sr_copy(shared_data: Path, tmp_path: Path) -> Path:
    """A writable copy of the real Space Ranger 1.0.0 folder."""
    dst = tmp_path / "sr"
    shutil.copytree(shared_data / "visium_spaceranger_1.0.0", dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_read_error_is_an_input_error():
    assert issubclass(ReadError, SpatialDataError) and issubclass(SpatialDataError, InputError)
    assert IOInputError is InputError and issubclass(InputError, ValueError)


def test_truncated_counts_h5(sr_copy: Path):
    h5 = sr_copy / "filtered_feature_bc_matrix.h5"
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match=(rf"{h5}.* could not be read: it is truncated: it has {len(data) // 2:,} of the "
                                         rf"{len(data):,} bytes.*Copy filtered_feature_bc_matrix\.h5 again from the "
                                         r"Space Ranger output folder")):
        read_visium(sr_copy)


def test_counts_h5_without_hdf5_signature(sr_copy: Path):
    h5 = sr_copy / "filtered_feature_bc_matrix.h5"
    data = h5.read_bytes()
    h5.write_bytes(b"\0" * 8 + data[8:])
    with pytest.raises(ReadError, match=(r"filtered_feature_bc_matrix\.h5 could not be read: it is not a valid HDF5 "
                                         r"file.*re-run spaceranger count")):
        read_visium(sr_copy)


def test_counts_h5_damaged_inside(sr_copy: Path):
    h5 = sr_copy / "filtered_feature_bc_matrix.h5"
    data = bytearray(h5.read_bytes())
    data[2000:2200] = b"\x13" * 200  # the group structure after the superblock
    h5.write_bytes(bytes(data))
    with pytest.raises(ReadError, match=r"filtered_feature_bc_matrix\.h5 could not be read: it is a damaged HDF5 file"):
        read_visium(sr_copy)


def test_garbage_scalefactors_json(sr_copy: Path):
    js = sr_copy / "spatial" / "scalefactors_json.json"
    js.write_text('{\n  "tissue_hires_scalef": 0.17,\n  "spot_diameter_fullres" 89.4\n}\n')
    with pytest.raises(ReadError, match=(rf"{js} is not valid JSON \(line 3, column 27: Expecting ':' delimiter\).*"
                                         r"Copy spatial/scalefactors_json\.json again")):
        read_visium(sr_copy)
    js.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ReadError, match=r"scalefactors_json\.json is not valid JSON: it holds binary data"):
        read_visium(sr_copy)
    js.write_text('{"tissue_hires_scalef": "0.17"}')
    with pytest.raises(ReadError, match=r"'tissue_hires_scalef' is '0\.17', but it must be a positive number"):
        read_visium(sr_copy)


def test_damaged_tissue_image_is_skipped_with_a_warning(sr_copy: Path):
    png = sr_copy / "spatial" / "tissue_lowres_image.png"
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning) as record:
        adata = read_visium(sr_copy)
    assert any(f"The tissue image {png} could not be read: it is truncated" in str(w.message)
               and "read without this image" in str(w.message) for w in record)
    images = adata.uns["spatial"][next(iter(adata.uns["spatial"]))]["images"]
    assert "lowres" not in images and "hires" in images and adata.n_obs == 100
    broken = bytearray(data)
    broken[40:90] = b"\xff" * 50  # a damaged chunk header: PIL's "SyntaxError: broken PNG file"
    png.write_bytes(bytes(broken))
    (sr_copy / "spatial" / "tissue_hires_image.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning) as record:
        adata = read_visium(sr_copy)
    messages = [str(w.message) for w in record]
    assert any("tissue_lowres_image.png could not be read: it is damaged (SyntaxError: broken PNG file" in m
               for m in messages)
    assert any("tissue_hires_image.png could not be read: it is not a PNG image" in m for m in messages)
    assert any("No readable tissue image" in m for m in messages)
    assert adata.uns["spatial"][next(iter(adata.uns["spatial"]))]["images"] == {}
    assert adata.obsm["spatial"].shape == (100, 2)


def test_truncated_positions_file(sr_copy: Path):
    pos = sr_copy / "spatial" / "tissue_positions_list.csv"
    text = pos.read_text()
    pos.write_text(text[: len(text) // 2])
    with pytest.raises(ReadError, match=r"tissue_positions_list\.csv has missing or non-numeric values in 1 of .* "
                                        r"its last line is incomplete, so the file is truncated"):
        read_visium(sr_copy)


@pytest.mark.filterwarnings("ignore::anndata.OldFormatWarning")
def test_damaged_h5ad(shared_data: Path, tmp_path: Path):
    src = shared_data / "mouse_brain_visium_subset" / "test_data.h5ad"
    data = src.read_bytes()
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ReadError, match=rf"{cut} could not be read: it is truncated.*Write it again"):
        read_h5ad(cut)
    sig = tmp_path / "sig.h5ad"
    sig.write_bytes(b"GARBAGE!" + data[8:])
    with pytest.raises(ReadError, match=r"sig\.h5ad could not be read: it is not a valid HDF5 file"):
        read_h5ad(sig)
    (tmp_path / "empty.h5ad").write_bytes(b"")
    with pytest.raises(ReadError, match=r"empty\.h5ad could not be read: it is empty \(0 bytes\)"):
        read_h5ad(tmp_path / "empty.h5ad")
    tenx = tmp_path / "tenx.h5ad"
    shutil.copy(shared_data / "visium_spaceranger_1.0.0" / "filtered_feature_bc_matrix.h5", tenx)
    with pytest.raises(ReadError, match=r"tenx\.h5ad could not be read: it is an HDF5 file but not an \.h5ad file"):
        read_h5ad(tenx)


def test_damaged_csv_tables(hippo: Path, tmp_path: Path):
    text = (hippo / "spatial" / "counts.csv").read_text()
    cut = tmp_path / "counts.csv"
    cut.write_text(text[: len(text) - 500])
    with pytest.raises(ReadError, match=rf"The counts file {cut} has missing values in its last row: .*truncated"):
        read_counts_csv(cut, hippo / "spatial" / "coords.csv")
    binary = tmp_path / "binary.csv"
    binary.write_bytes((hippo.parent / "visium_spaceranger_1.0.0" / "filtered_feature_bc_matrix.h5").read_bytes())
    with pytest.raises(ReadError, match=r"The counts file .*binary\.csv could not be read: it holds binary data"):
        read_counts_csv(binary)
    coords = (hippo / "spatial" / "coords.csv").read_text()
    xy = tmp_path / "coords.csv"
    xy.write_text(coords[: len(coords) - 8])
    with pytest.raises(ReadError, match=r"The coordinates file .*coords\.csv has missing x/y values in its last row"):
        read_counts_csv(hippo / "spatial" / "counts.csv", xy)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ReadError, match=r"empty\.csv is empty"):
        read_counts_csv(tmp_path / "empty.csv")


def test_damaged_matrix_folder(sr_copy: Path):
    """The counts as a 10x matrix folder (matrix.mtx.gz, barcodes, features), one file truncated."""
    import gzip

    import scipy.io

    good = read_visium(sr_copy)
    folder = sr_copy / "filtered_feature_bc_matrix"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(good.X.T).astype(np.int64))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("\n".join(good.obs_names) + "\n")
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        fh.writelines(f"{gid}\t{name}\tGene Expression\n" for gid, name in zip(good.var["gene_ids"], good.var_names))
    back = read_visium(sr_copy, counts_file="filtered_feature_bc_matrix")
    np.testing.assert_array_equal(back.X.toarray(), good.X.toarray())
    data = (folder / "matrix.mtx.gz").read_bytes()
    (folder / "matrix.mtx.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match=r"filtered_feature_bc_matrix could not be read as a 10x matrix folder.*"
                                        r"damaged, truncated or missing \(files there: barcodes\.tsv\.gz, "
                                        r"features\.tsv\.gz, matrix\.mtx\.gz\).*Copy filtered_feature_bc_matrix again"):
        read_visium(sr_copy, counts_file="filtered_feature_bc_matrix")


def test_column_problem_reads_a_categorical_from_its_codes(monkeypatch):
    """Cheap enough for drop-downs: a categorical column is neither converted nor value-counted."""
    a = small(200)
    a.obs["cluster"] = pd.Categorical(np.arange(200) % 7)

    def refuse(*args, **kwargs):
        raise AssertionError("the column's values were materialised")

    monkeypatch.setattr(pd.Series, "astype", refuse)
    monkeypatch.setattr(pd.Series, "value_counts", refuse)
    assert column_problem(a, "cluster", "batch") is None
    a.obs["one_each"] = pd.Categorical([f"c{i}" for i in range(200)])
    assert "200 distinct values for 200 observations" in column_problem(a, "one_each", "labels")
