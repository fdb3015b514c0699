"""Readers, writer, spatial accessors and npe2 commands of napari_spatialdl.io."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import ndimage as ndi

from napari_spatialdl._napari._npe2 import get_reader
from napari_spatialdl._napari._npe2 import write_h5ad as npe2_write_h5ad
from napari_spatialdl.io import (
    SpatialDataError,
    get_image,
    get_library_id,
    read_counts_csv,
    read_h5ad,
    read_visium,
    spot_diameter_px,
    spots_px,
    write_h5ad,
)

SR_FILES = ("filtered_feature_bc_matrix.h5", "spatial/tissue_positions_list.csv",
            "spatial/scalefactors_json.json", "spatial/tissue_hires_image.png",
            "spatial/tissue_lowres_image.png")


# ---------------------------------------------------------------- fixtures / helpers


@pytest.fixture(scope="module")
def sr_dir(shared_data: Path) -> Path:
    return shared_data / "visium_spaceranger_1.0.0"


@pytest.fixture(scope="module")
def visium(sr_dir: Path) -> ad.AnnData:
    return read_visium(sr_dir)


@pytest.fixture(scope="module")
def hippo(shared_data: Path) -> Path:
    return shared_data / "hippocampus_visium"


def _fresh(adata: ad.AnnData) -> ad.AnnData:
    """A copy whose uns can be edited without touching the module fixture."""
    out = adata.copy()
    out.uns["spatial"] = {
        lib: {k: dict(v) if isinstance(v, dict) else v for k, v in entry.items()}
        for lib, entry in adata.uns["spatial"].items()
    }
    return out


def _link_spaceranger(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    (dst / "spatial").mkdir(parents=True, exist_ok=True)
    for name in SR_FILES:
        if name not in skip:
            (dst / name).symlink_to(src / name)
    return dst


def _tissue_mask(img: np.ndarray) -> np.ndarray:
    """Pixels that differ in colour from the slide background (sampled in the four corners)."""
    img = img[..., :3].astype(float)
    c = 15
    corners = np.concatenate([img[:c, :c], img[:c, -c:], img[-c:, :c], img[-c:, -c:]]).reshape(-1, 3)
    distance = np.linalg.norm(img - np.median(corners, axis=0), axis=2)
    return ndi.uniform_filter(distance, 5) > 15


def _on_tissue(adata: ad.AnnData) -> np.ndarray:
    """Whether each spot (as placed by spots_px) lies on tissue pixels of the image get_image picks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        img, _, _ = get_image(adata)
        xy = spots_px(adata)
    mask = _tissue_mask(img)
    col = np.clip(np.round(xy[:, 0]).astype(int), 0, img.shape[1] - 1)
    row = np.clip(np.round(xy[:, 1]).astype(int), 0, img.shape[0] - 1)
    return mask[row, col]


@pytest.fixture(scope="module")
def all_positions(sr_dir: Path, visium: ad.AnnData) -> ad.AnnData:
    """All 4,992 barcodes of tissue_positions_list.csv with their in_tissue flags, on the slide image."""
    pos = pd.read_csv(sr_dir / "spatial/tissue_positions_list.csv", header=None, index_col=0)
    a = ad.AnnData(obs=pd.DataFrame({"in_tissue": pos[1].to_numpy()}, index=pos.index.astype(str)))
    a.obsm["spatial"] = pos[[5, 4]].to_numpy()  # (x, y) = (pxl_col, pxl_row), as Space Ranger defines
    a.uns["spatial"] = _fresh(visium).uns["spatial"]
    return a


# ---------------------------------------------------------------- read_visium


def test_read_visium_spaceranger_1(visium: ad.AnnData, sr_dir: Path):
    a = visium
    assert a.shape == (100, 100)
    assert sp.issparse(a.X) and a.X.dtype == np.float32
    X = a.X.toarray()
    assert X.min() >= 0 and np.all(X == np.round(X)) and X.sum() > 0
    assert a.var_names.is_unique
    assert {"in_tissue", "array_row", "array_col"} <= set(a.obs.columns)
    assert a.obsm["spatial"].shape == (100, 2)
    lib = get_library_id(a)
    assert lib == "custom"  # the library id Space Ranger stored in the .h5
    entry = a.uns["spatial"][lib]
    assert set(entry["images"]) == {"hires", "lowres"}
    assert entry["metadata"]["software_version"] == "spaceranger-1.0.0"
    # spot centres match tissue_positions_list.csv: x = pxl_col (column 5), y = pxl_row (column 4)
    pos = pd.read_csv(sr_dir / "spatial/tissue_positions_list.csv", header=None, index_col=0)
    np.testing.assert_array_equal(a.obsm["spatial"], pos.loc[a.obs_names, [5, 4]].to_numpy())
    np.testing.assert_array_equal(a.obs["array_row"], pos.loc[a.obs_names, 2])


def test_blank_hires_falls_back_to_lowres(visium: ad.AnnData, sr_dir: Path):
    scalefactors = json.loads((sr_dir / "spatial/scalefactors_json.json").read_text())
    with pytest.warns(UserWarning, match=r"'hires' image is not usable \(it is blank.*Using the 'lowres'"):
        img, scalef, key = get_image(visium)
    assert key == "lowres" and img.shape[:2] == (600, 600)
    assert scalef == pytest.approx(scalefactors["tissue_lowres_scalef"])
    with pytest.warns(UserWarning, match="lowres"):
        xy = spots_px(visium)
    np.testing.assert_allclose(xy, visium.obsm["spatial"] * scalefactors["tissue_lowres_scalef"])
    with pytest.warns(UserWarning, match="lowres"):
        d = spot_diameter_px(visium)
    assert d == pytest.approx(scalefactors["spot_diameter_fullres"] * scalefactors["tissue_lowres_scalef"])
    # an explicit key is honoured without fallback
    _, scalef_h, key_h = get_image(visium, image_key="hires")
    assert key_h == "hires" and scalef_h == pytest.approx(scalefactors["tissue_hires_scalef"])


def test_in_tissue_spots_land_on_tissue_pixels(all_positions: ad.AnnData, visium: ad.AnnData):
    inside = all_positions.obs["in_tissue"].to_numpy() == 1
    assert inside.sum() == 4235 and (~inside).sum() == 757
    on = _on_tissue(all_positions)
    in_on_tissue, out_on_background = on[inside].mean(), (~on[~inside]).mean()
    assert in_on_tissue > 0.95, in_on_tissue
    assert out_on_background > 0.85, out_on_background
    # the 100 spots of the counts file are all in tissue and are drawn on tissue
    assert (visium.obs["in_tissue"] == 1).all()
    assert _on_tissue(visium).mean() > 0.95

    # Controls: the same check fails when x/y are swapped or the scale factor is off by 10%,
    # so it really tests where the spots land.
    swapped = all_positions.copy()
    swapped.obsm["spatial"] = all_positions.obsm["spatial"][:, ::-1]
    on = _on_tissue(swapped)
    assert (~on[~inside]).mean() < 0.6
    scaled = all_positions.copy()
    scaled.uns["spatial"] = _fresh(all_positions).uns["spatial"]
    scaled.uns["spatial"]["custom"]["scalefactors"]["tissue_lowres_scalef"] *= 1.1
    on = _on_tissue(scaled)
    assert on[inside].mean() < 0.9 and (~on[~inside]).mean() < 0.8


def test_wrong_scale_factor_is_an_error(visium: ad.AnnData):
    """The hires scale factor with the lowres image puts the spots off the image: a clear error."""
    a = _fresh(visium)
    sf = a.uns["spatial"]["custom"]["scalefactors"]
    sf["tissue_lowres_scalef"] = sf["tissue_hires_scalef"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(SpatialDataError, match="does not match the coordinates"):
            spots_px(a)


def test_read_visium_outs_folder_and_spaceranger_2_header(tmp_path: Path, sr_dir: Path, visium):
    run = tmp_path / "run"
    _link_spaceranger(sr_dir, run / "outs", skip=("spatial/tissue_positions_list.csv",))
    # Space Ranger 2+: tissue_positions.csv with a header line
    pos = pd.read_csv(sr_dir / "spatial/tissue_positions_list.csv", header=None)
    pos.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    pos.to_csv(run / "outs/spatial/tissue_positions.csv", index=False)
    a = read_visium(run, library_id="slide1", load_images=False)
    assert a.shape == (100, 100)
    assert list(a.uns["spatial"]) == ["slide1"] and a.uns["spatial"]["slide1"]["images"] == {}
    np.testing.assert_array_equal(a.obsm["spatial"], visium.obsm["spatial"])
    np.testing.assert_array_equal(a.obs["in_tissue"], visium.obs["in_tissue"])


def test_not_spaceranger_folder(tmp_path: Path, sr_dir: Path):
    with pytest.raises(SpatialDataError, match=r"not a Space Ranger output folder.*filtered_feature_bc_matrix\.h5"
                                               r".*tissue_positions.*scalefactors_json\.json"):
        read_visium(tmp_path)
    partial = _link_spaceranger(sr_dir, tmp_path / "partial", skip=("spatial/scalefactors_json.json",))
    with pytest.raises(SpatialDataError, match="missing spatial/scalefactors_json.json") as err:
        read_visium(partial)
    assert "filtered_feature_bc_matrix.h5" not in str(err.value)  # only what is missing is listed
    with pytest.raises(SpatialDataError, match="is a file"):
        read_visium(sr_dir / "filtered_feature_bc_matrix.h5")


def test_positions_from_another_run(tmp_path: Path, sr_dir: Path):
    d = _link_spaceranger(sr_dir, tmp_path / "sr", skip=("spatial/tissue_positions_list.csv",))
    pos = pd.read_csv(sr_dir / "spatial/tissue_positions_list.csv", header=None)
    pos[0] = pos[0].str.replace("-1", "-2")
    pos.to_csv(d / "spatial/tissue_positions_list.csv", header=False, index=False)
    with pytest.raises(SpatialDataError, match="100 of 100 barcodes.*different runs"):
        read_visium(d)


# ---------------------------------------------------------------- spatial accessors


def test_missing_scale_factor(visium: ad.AnnData):
    a = _fresh(visium)
    del a.uns["spatial"]["custom"]["scalefactors"]["tissue_lowres_scalef"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(SpatialDataError, match=r"no 'tissue_lowres_scalef'.*scalefactors_json\.json"):
            get_image(a)


def test_image_not_matching_coordinates(visium: ad.AnnData):
    a = _fresh(visium)
    a.uns["spatial"]["custom"]["images"]["lowres"] = a.uns["spatial"]["custom"]["images"]["lowres"][:150, :150]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(SpatialDataError, match=r"Only \d+% of the spots fall inside the 'lowres' image.*150x150"):
            spots_px(a)


def test_swapped_coordinates_hint(visium: ad.AnnData):
    """Spots that fit only after swapping x and y: the error says so."""
    a = _fresh(visium)
    img = a.uns["spatial"]["custom"]["images"]["lowres"]
    xy = np.column_stack([np.linspace(10, 590, a.n_obs), np.linspace(10, 180, a.n_obs)])
    a.uns["spatial"]["custom"]["images"]["lowres"] = img[:, :200]  # 600 rows x 200 columns
    a.obsm["spatial"] = xy / a.uns["spatial"]["custom"]["scalefactors"]["tissue_lowres_scalef"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(SpatialDataError, match=r"looks like \(y, x\)"):
            spots_px(a)


def test_library_choice(visium: ad.AnnData):
    a = _fresh(visium)
    a.uns["spatial"]["other"] = a.uns["spatial"]["custom"]
    with pytest.raises(SpatialDataError, match="2 libraries.*custom, other.*library_id="):
        get_library_id(a)
    assert get_library_id(a, "other") == "other"
    with pytest.raises(SpatialDataError, match="'nope' is not in.*custom, other"):
        get_library_id(a, "nope")
    bare = ad.AnnData(np.ones((3, 2)))
    assert get_library_id(bare) is None
    assert get_image(bare) == (None, 1.0, None)


def test_missing_coordinates_error():
    a = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(SpatialDataError, match=r"obsm\['spatial'\] is missing"):
        spots_px(a)


@pytest.mark.filterwarnings("ignore:Library 'custom'.*hires:UserWarning")
def test_diameter_estimated_when_missing(visium: ad.AnnData, all_positions: ad.AnnData):
    a = _fresh(visium)
    del a.uns["spatial"]["custom"]["scalefactors"]["spot_diameter_fullres"]
    with pytest.warns(UserWarning, match="spot_diameter_fullres.*estimated"):
        d = spot_diameter_px(a)
    # estimated from the grid indices (100 sparse spots of a 4,992-spot grid): close to the
    # Space Ranger value 89.4 * 0.045 = 4.02 px, where the nearest-neighbour distance would be 2.7x off
    true = 89.42751063343188 * 0.045004502
    assert d == pytest.approx(true, rel=0.05)
    # without grid indices: the median nearest-neighbour distance of all 4,992 spots
    b = _fresh(all_positions)
    del b.uns["spatial"]["custom"]["scalefactors"]["spot_diameter_fullres"]
    with pytest.warns(UserWarning, match="estimated"):
        assert spot_diameter_px(b) == pytest.approx(true, rel=0.05)


# ---------------------------------------------------------------- read_h5ad / read_counts_csv


def test_read_h5ad_mouse_brain(shared_data: Path):
    a = read_h5ad(shared_data / "mouse_brain_visium_subset/test_data.h5ad")
    assert a.n_obs == 49
    assert get_library_id(a) == "V1_Adult_Mouse_Brain"
    with pytest.warns(UserWarning, match="'hires' image is not usable"):
        img, _, key = get_image(a)
    assert key == "lowres" and img.shape[:2] == (88, 49)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        xy = spots_px(a)
    assert (xy[:, 0] < 49).all() and (xy[:, 1] < 88).all() and (xy >= 0).all()


def test_read_h5ad_without_coordinates(tmp_path: Path):
    a = ad.AnnData(np.ones((4, 3), dtype=np.float32))
    a.write_h5ad(tmp_path / "ref.h5ad")
    with pytest.warns(UserWarning, match=r"no spot coordinates \(obsm\['spatial'\]\)"):
        back = read_h5ad(tmp_path / "ref.h5ad")
    assert back.shape == (4, 3)
    reader = get_reader(str(tmp_path / "ref.h5ad"))
    assert callable(reader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(SpatialDataError, match=r"no spot coordinates"):
            reader(str(tmp_path / "ref.h5ad"))


def test_read_h5ad_bad_spatial_metadata(tmp_path: Path, visium: ad.AnnData):
    a = _fresh(visium)
    del a.uns["spatial"]["custom"]["scalefactors"]["tissue_hires_scalef"]
    a.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(SpatialDataError, match=r"bad\.h5ad.*no 'tissue_hires_scalef'.*validate=False"):
        read_h5ad(tmp_path / "bad.h5ad")
    assert read_h5ad(tmp_path / "bad.h5ad", validate=False).n_obs == 100
    (tmp_path / "junk.h5ad").write_text("not hdf5")
    with pytest.raises(SpatialDataError, match="could not be read"):
        read_h5ad(tmp_path / "junk.h5ad")


def test_read_counts_csv_spatial(hippo: Path):
    a = read_counts_csv(hippo / "spatial/counts.csv", hippo / "spatial/coords.csv")
    assert a.shape == (313, 276)
    coords = pd.read_csv(hippo / "spatial/coords.csv", index_col=0)
    np.testing.assert_array_equal(a.obsm["spatial"], coords.loc[a.obs_names, ["x", "y"]].to_numpy())
    numi = pd.read_csv(hippo / "spatial/nUMI.csv", index_col=0)["x"]
    # nUMI counts all genes, the table 276 of them: totals agree in rank, not in value
    totals = np.asarray(a.X.sum(axis=1)).ravel()
    assert np.corrcoef(totals, numi.loc[a.obs_names])[0, 1] > 0.9
    # no image: spots come as they are, sized from their spacing (137 px apart -> ~89 px)
    assert get_image(a) == (None, 1.0, None)
    np.testing.assert_array_equal(spots_px(a), a.obsm["spatial"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without an image
        d = spot_diameter_px(a)
    assert 80 < d < 100


def test_read_counts_csv_reference(hippo: Path):
    a = read_counts_csv(hippo / "reference/counts.csv", labels=hippo / "reference/cell_types.csv")
    assert a.shape == (510, 307)
    assert "Acta2" in a.var_names and a.obs_names[0].startswith("P60Hippo")
    labels = a.obs["cell_type"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert labels.nunique() == 17 and (labels.value_counts() == 30).all()
    assert "spatial" not in a.obsm
    # same result with the orientation given explicitly
    b = read_counts_csv(hippo / "reference/counts.csv", transpose=True)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())


def test_read_counts_csv_cells_by_genes(tmp_path: Path, hippo: Path):
    """A cells x genes table is recognised from the barcodes of the coordinates file."""
    table = pd.read_csv(hippo / "spatial/counts.csv", index_col=0)
    table.T.to_csv(tmp_path / "cells_by_genes.csv")
    a = read_counts_csv(tmp_path / "cells_by_genes.csv", hippo / "spatial/coords.csv")
    b = read_counts_csv(hippo / "spatial/counts.csv", hippo / "spatial/coords.csv")
    assert a.shape == (313, 276)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])


def test_read_counts_csv_barcode_mismatch(tmp_path: Path, hippo: Path):
    coords = pd.read_csv(hippo / "spatial/coords.csv", index_col=0)
    coords.index = coords.index.str.replace("-1", "-9")
    coords.iloc[:10].to_csv(tmp_path / "coords.csv")
    with pytest.raises(SpatialDataError, match=r"313 of 313 cells/spots.*no entry in the coordinates file.*barcodes must match"):
        read_counts_csv(hippo / "spatial/counts.csv", tmp_path / "coords.csv")
    pd.DataFrame({"a": [1]}, index=["x"]).to_csv(tmp_path / "nocols.csv")
    with pytest.raises(SpatialDataError, match="needs columns 'x' and 'y'"):
        read_counts_csv(hippo / "spatial/counts.csv", tmp_path / "nocols.csv")


# ---------------------------------------------------------------- writer


def test_write_round_trip(tmp_path: Path, hippo: Path):
    a = read_counts_csv(hippo / "spatial/counts.csv", hippo / "spatial/coords.csv")
    props = pd.DataFrame(np.random.default_rng(0).dirichlet(np.ones(3), a.n_obs),
                         index=a.obs_names, columns=["Astrocyte", "Neuron", "Oligodendrocyte"])
    a.obsm["spatialdl_proportions"] = props
    a.obs["spatialdl_cell_type"] = pd.Categorical(props.idxmax(axis=1))
    a.obs["note"] = ["a"] * (a.n_obs - 1) + [3]  # mixed types: anndata alone cannot write this
    a.obs["name"] = "spot"  # strings: anndata alone would turn this into a categorical in place
    a.uns["spatialdl"] = {"deconvolve": {"method": "spatialdl", "params": {"n_epochs": 5},
                                         "history": {"train": np.array([3.0, 2.0])}}}
    a.uns["odd"] = {"tuple": (1, 2), "object": object(), "dicts": [{"a": 1}, {"b": 2}], "a/b": 1}
    before_obs = a.obs.dtypes.copy()
    before_uns_keys = set(a.uns["odd"])

    with pytest.warns(UserWarning, match="a/b"):
        out = write_h5ad(a, tmp_path / "result")
    assert out == tmp_path / "result.h5ad" and out.is_file()
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind
    # the caller's object is as it was
    pd.testing.assert_series_equal(a.obs.dtypes, before_obs)
    assert set(a.uns["odd"]) == before_uns_keys and isinstance(a.uns["odd"]["tuple"], tuple)

    b = ad.read_h5ad(out)
    np.testing.assert_array_equal(b.X.toarray(), a.X.toarray())
    np.testing.assert_array_equal(b.obsm["spatial"], a.obsm["spatial"])
    assert isinstance(b.obsm["spatialdl_proportions"], pd.DataFrame)
    pd.testing.assert_frame_equal(b.obsm["spatialdl_proportions"], props)
    assert isinstance(b.obs["spatialdl_cell_type"].dtype, pd.CategoricalDtype)
    assert (b.obs["spatialdl_cell_type"] == a.obs["spatialdl_cell_type"]).all()
    assert b.obs["note"].iloc[-1] == "3"
    assert b.uns["spatialdl"]["deconvolve"]["params"]["n_epochs"] == 5
    np.testing.assert_array_equal(b.uns["spatialdl"]["deconvolve"]["history"]["train"], [3.0, 2.0])
    np.testing.assert_array_equal(b.uns["odd"]["tuple"], [1, 2])
    assert b.uns["odd"]["dicts"]["1"]["b"] == 2 and b.uns["odd"]["a_b"] == 1
    assert "object" in b.uns["odd"]["object"]


def test_write_visium_round_trip_keeps_images(tmp_path: Path, visium: ad.AnnData):
    out = write_h5ad(visium[:50], tmp_path / "v.h5ad")  # a view
    b = read_h5ad(out)
    assert b.shape == (50, 100)
    with pytest.warns(UserWarning, match="lowres"):
        img, scalef, key = get_image(b)
    np.testing.assert_array_equal(img, visium.uns["spatial"]["custom"]["images"]["lowres"])
    assert key == "lowres" and scalef == pytest.approx(0.045004502)


# ---------------------------------------------------------------- npe2 commands


def test_get_reader_declines_unrelated_paths(tmp_path: Path, hippo: Path, sr_dir: Path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "missing.h5ad")) is None
    assert get_reader([]) is None
    assert get_reader(str(hippo / "spatial/coords.csv")) is None  # coordinates alone
    assert get_reader(str(hippo / "reference/counts.csv")) is None  # counts without coordinates
    assert get_reader(str(sr_dir / "spatial")) is None
    assert callable(get_reader(str(sr_dir)))
    assert callable(get_reader([str(sr_dir), str(tmp_path)]))
    assert callable(get_reader(str(hippo / "spatial/counts.csv")))


def test_reader_returns_layers(sr_dir: Path, hippo: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        layers = get_reader(str(sr_dir))(str(sr_dir))
    types = [t for _, _, t in layers]
    assert "image" in types and "points" in types
    points = next(layer for layer in layers if layer[2] == "points")
    adata = points[1]["metadata"]["adata"]
    assert isinstance(adata, ad.AnnData) and adata.shape == (100, 100)
    assert len(points[0]) == 100
    layers = get_reader(str(hippo / "spatial/counts.csv"))(str(hippo / "spatial/counts.csv"))
    points = next(layer for layer in layers if layer[2] == "points")
    assert points[1]["metadata"]["adata"].n_obs == 313


def test_npe2_writer(tmp_path: Path, visium: ad.AnnData):
    layer_data = [
        (np.zeros((2, 2, 3)), {"name": "tissue", "metadata": {}}, "image"),
        (visium.obsm["spatial"][:, ::-1], {"name": "spots", "metadata": {"adata": visium}}, "points"),
    ]
    written = npe2_write_h5ad(str(tmp_path / "out.h5ad"), layer_data)
    assert written == [str(tmp_path / "out.h5ad")]
    assert ad.read_h5ad(written[0]).shape == (100, 100)
    with pytest.raises(SpatialDataError, match=r"None of the layers to save \(tissue\) carries an AnnData"):
        npe2_write_h5ad(str(tmp_path / "x.h5ad"), layer_data[:1])
    two = [*layer_data, (np.zeros((1, 2)), {"name": "other", "metadata": {"adata": visium.copy()}}, "points")]
    with pytest.raises(SpatialDataError, match="2 different AnnData"):
        npe2_write_h5ad(str(tmp_path / "y.h5ad"), two)
    # npe2's single-layer writer signature (path, data, attributes)
    written = npe2_write_h5ad(str(tmp_path / "single.h5ad"), *layer_data[1][:2])
    assert ad.read_h5ad(written[0]).shape == (100, 100)


def test_npe2_read_and_write_through_manifest(tmp_path: Path, sr_dir: Path):
    """What napari does on File > Open / Save: npe2 finds our commands from the manifest."""
    import npe2

    npe2.PluginManager.instance().discover()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        layers = npe2.read([str(sr_dir)], stack=False, plugin_name="napari-spatialdl")
    points = [layer for layer in layers if layer[2] == "points"]
    assert len(points) == 1 and points[0][1]["metadata"]["adata"].n_obs == 100
    written = npe2.write(str(tmp_path / "saved.h5ad"), points, plugin_name="napari-spatialdl")
    assert written == [str(tmp_path / "saved.h5ad")]
    assert ad.read_h5ad(written[0]).shape == (100, 100)


def test_manifest_reader_writer_resolve():
    from importlib import import_module

    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(
        Path(__file__).resolve().parents[1] / "src/napari_spatialdl/napari.yaml"
    )
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    for contribution in [*manifest.contributions.readers, *manifest.contributions.writers]:
        module, _, name = commands[contribution.command].partition(":")
        assert callable(getattr(import_module(module), name))


def test_io_does_not_import_gui():
    import subprocess
    import sys

    # readers and writers import neither Qt/napari nor the napari side (layers, npe2 adapters)
    code = ("import sys, napari_spatialdl.io as io; io.read_visium; io.write_h5ad; io.read_counts_csv; "
            "io.read_spatialdata; io.write_spatialdata; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')"
            " or m in ('napari_spatialdl.layers', 'napari_spatialdl._napari', 'napari_spatialdl._widgets')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

