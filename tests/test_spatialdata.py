"""SpatialData .zarr, Visium HD and Xenium: read (through spatialdata / spatialdata-io), run, write back.

The inputs are generated here in the real formats: a SpatialData built with ``spatialdata.models``;
a miniature Space Ranger HD ``outs`` folder and a Xenium output folder laid out as
``spatialdata_io.visium_hd`` / ``spatialdata_io.xenium`` open them (10x HDF5 matrices, parquet
positions, scale factors, PNG/TIFF images, ``cells.zarr.zip``); plus the real Space Ranger 1.0.0
folder of ``../shared/data`` through ``spatialdata_io.visium``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sd = pytest.importorskip("spatialdata")

from anndata import AnnData  # noqa: E402
from spatialdata.models import Image2DModel, Labels2DModel, ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import Identity, Scale, get_transformation  # noqa: E402

import napari_spatialdl as sdl  # noqa: E402
from napari_spatialdl.io import SpatialDataError, get_image, spot_diameter_px, spots_px  # noqa: E402
from napari_spatialdl.io._spatialdata import LINK_KEY, SIZE_KEY, layer_affine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from make_hd_xenium import (  # noqa: E402
    hd_bin_positions,
    hd_scalefactors,
    write_10x_h5,
    write_visium_hd,
    write_xenium,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:spatialdata_io", "ignore:zarr v3 autosharding")

GENES = [f"Gene{i}" for i in range(12)]


def _counts(rng: np.random.Generator, n: int, g: int = len(GENES)) -> sp.csr_matrix:
    return sp.csr_matrix(rng.poisson(1.5, size=(n, g)).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# a SpatialData built with spatialdata.models
# ---------------------------------------------------------------------------------------------

# image pixels -> "global" in µm: Scale(2) (2 µm a pixel); a second image 4x coarser
IMG_SCALE = 2.0
SPOT_SCALE = 4.0  # the circles' own coordinates -> global: Scale(4)
SPOT_PIXELS = [(10, 12), (30, 45), (55, 20), (70, 90), (5, 100), (64, 64)]  # (row, col) of hires pixels


def _image(rng: np.random.Generator) -> np.ndarray:
    img = rng.integers(20, 60, size=(3, 80, 120), dtype=np.uint8)
    for r, c in SPOT_PIXELS:
        img[:, r, c] = 255
    return img


def _spatialdata(rng: np.random.Generator, tables: int = 1) -> tuple[sd.SpatialData, np.ndarray]:
    img = _image(rng)
    hires = Image2DModel.parse(img, dims=("c", "y", "x"),
                               transformations={"global": Scale([IMG_SCALE, IMG_SCALE], axes=("x", "y"))})
    low = img[:, ::4, ::4]
    lowres = Image2DModel.parse(low, dims=("c", "y", "x"),
                                transformations={"global": Scale([4 * IMG_SCALE, 4 * IMG_SCALE], axes=("x", "y"))})
    # spots at the centre of the bright pixels: pixel (r, c) covers [c, c+1) x [r, r+1) in image units
    centres_um = np.array([[(c + 0.5) * IMG_SCALE, (r + 0.5) * IMG_SCALE] for r, c in SPOT_PIXELS])
    radii = np.array([1.0, 1.5, 1.0, 2.0, 1.0, 1.2])
    ids = pd.Index([101, 102, 103, 104, 105, 106])
    spots = ShapesModel.parse(centres_um / SPOT_SCALE, geometry=0, radius=radii, index=ids,
                              transformations={"global": Scale([SPOT_SCALE, SPOT_SCALE], axes=("x", "y"))})
    counts = _counts(rng, len(ids))
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * len(ids)), "spot_id": ids.to_numpy(),
                        "in_tissue": 1}, index=[f"spot-{i}" for i in ids])
    table = TableModel.parse(AnnData(counts, obs=obs, var=pd.DataFrame(index=GENES)),
                             region="spots", region_key="region", instance_key="spot_id")
    elements = {"images": {"hires_image": hires, "lowres_image": lowres}, "shapes": {"spots": spots},
                "tables": {"table": table}}
    if tables == 2:
        other = ShapesModel.parse(centres_um[:3], geometry=0, radius=radii[:3], index=pd.Index([1, 2, 3]),
                                  transformations={"global": Identity()})
        obs2 = pd.DataFrame({"region": pd.Categorical(["other"] * 3), "i": [1, 2, 3]}, index=["a", "b", "c"])
        elements["shapes"]["other"] = other
        elements["tables"]["other_table"] = TableModel.parse(
            AnnData(_counts(rng, 3), obs=obs2, var=pd.DataFrame(index=GENES)),
            region="other", region_key="region", instance_key="i")
    return sd.SpatialData(**elements), radii


@pytest.fixture
def zarr_path(tmp_path: Path) -> Path:
    sdata, _ = _spatialdata(np.random.default_rng(0))
    path = tmp_path / "sample.zarr"
    sdata.write(path)
    return path


def test_read_spatialdata_places_spots_on_the_image(zarr_path: Path):
    adata = sdl.read_spatialdata(zarr_path)
    table = sd.read_zarr(zarr_path).tables["table"]
    # counts: CSR, equal, same rows
    assert sp.isspmatrix_csr(adata.X) or isinstance(adata.X, sp.csr_array)
    assert (adata.X != table.X).nnz == 0
    assert list(adata.obs_names) == list(table.obs_names)
    # coordinates: the frame is the coordinate system ("global", µm): the images are Scale transforms of it
    expected = np.array([[(c + 0.5) * IMG_SCALE, (r + 0.5) * IMG_SCALE] for r, c in SPOT_PIXELS])
    np.testing.assert_allclose(adata.obsm["spatial"], expected)
    _, radii = _spatialdata(np.random.default_rng(0))
    np.testing.assert_allclose(adata.obs[SIZE_KEY], 2 * radii * SPOT_SCALE)
    # images and scale factors in the Space Ranger layout
    lib = adata.uns[LINK_KEY]["library_id"]
    sf = adata.uns["spatial"][lib]["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(1 / IMG_SCALE)
    assert sf["tissue_lowres_scalef"] == pytest.approx(1 / (4 * IMG_SCALE))
    assert sf["spot_diameter_fullres"] == pytest.approx(np.median(2 * radii * SPOT_SCALE))
    img, scalef, key = get_image(adata)
    assert key == "hires" and img.shape == (80, 120, 3)
    px = spots_px(adata)  # (x, y) pixels of the hires image
    rows, cols = np.floor(px[:, 1]).astype(int), np.floor(px[:, 0]).astype(int)
    assert (img[rows, cols] == 255).all(), "every spot lands on its bright pixel"
    assert (img[rows, (cols + 3) % img.shape[1]] < 255).any()
    assert spot_diameter_px(adata) == pytest.approx(sf["spot_diameter_fullres"] / IMG_SCALE)
    low, s_low, _ = get_image(adata, image_key="lowres")
    assert low.shape == (20, 30, 3) and s_low == pytest.approx(1 / 8)
    # the link
    link = adata.uns[LINK_KEY]
    assert link["path"] == str(zarr_path.resolve())
    assert (link["table"], link["region"], link["instance_key"], link["region_key"]) == ("table", "spots", "spot_id", "region")
    assert link["shape"] == "circle" and link["coordinate_system"] == "global"
    assert link["images"] == {"hires": "hires_image", "lowres": "lowres_image"}
    # the napari affine takes hires pixels (row, col) to the coordinate system (y, x)
    aff = layer_affine(adata, scalef)
    world = (aff @ np.column_stack([px[:, ::-1], np.ones(len(px))]).T).T[:, :2]
    np.testing.assert_allclose(world[:, ::-1], adata.obsm["spatial"])


def test_table_choice(tmp_path: Path):
    sdata, _ = _spatialdata(np.random.default_rng(1), tables=2)
    path = tmp_path / "two.zarr"
    sdata.write(path)
    with pytest.raises(SpatialDataError, match=r"2 tables of spots/bins/cells.*Pass table=") as err:
        sdl.read_spatialdata(path)
    assert "'table' (6 rows, annotates spots)" in str(err.value)
    assert "'other_table' (3 rows, annotates other)" in str(err.value)
    assert sdl.read_spatialdata(path, table="other_table").n_obs == 3
    assert sdl.read_spatialdata(path, table="table").n_obs == 6
    with pytest.raises(SpatialDataError, match="table='nope' is not a table"):
        sdl.read_spatialdata(path, table="nope")
    with pytest.raises(SpatialDataError, match="not a SpatialData"):
        sdl.read_spatialdata(tmp_path)


def test_squares_polygons_and_labels(tmp_path: Path):
    """Visium-HD-like squares -> centre and side; polygons -> centroid; labels -> centroid and area."""
    from shapely.geometry import Polygon

    rng = np.random.default_rng(2)
    img = Image2DModel.parse(rng.integers(0, 255, (3, 50, 60), dtype=np.uint8), dims=("c", "y", "x"),
                             transformations={"global": Identity()})
    side = 4.0
    centres = np.array([[10.0, 10.0], [20.0, 14.0], [30.0, 40.0]])
    squares = [Polygon([(x - side / 2, y - side / 2), (x + side / 2, y - side / 2), (x + side / 2, y + side / 2),
                        (x - side / 2, y + side / 2)]) for x, y in centres]
    import geopandas as gpd

    sq = ShapesModel.parse(gpd.GeoDataFrame(geometry=squares, index=[0, 1, 2]),
                           transformations={"global": Identity()})
    tri = ShapesModel.parse(gpd.GeoDataFrame(geometry=[Polygon([(0, 0), (6, 0), (0, 6)]),
                                                       Polygon([(10, 10), (16, 10), (10, 22)])], index=["c1", "c2"]),
                            transformations={"global": Identity()})
    lab = np.zeros((50, 60), dtype=np.int32)
    lab[10:14, 20:30] = 5  # 40 px, centroid x 25, y 12 (pixel centres at i + 0.5)
    lab[30:33, 40:43] = 9  # 9 px: pixel centres 40.5..42.5, 30.5..32.5
    labels = Labels2DModel.parse(lab, dims=("y", "x"), transformations={"global": Identity()})

    def table(region: str, ids: list, key: str) -> AnnData:
        obs = pd.DataFrame({"region": pd.Categorical([region] * len(ids)), key: ids}, index=[f"{region}{i}" for i in ids])
        return TableModel.parse(AnnData(_counts(rng, len(ids)), obs=obs, var=pd.DataFrame(index=GENES)),
                                region=region, region_key="region", instance_key=key)

    sdata = sd.SpatialData(images={"img": img}, shapes={"bins": sq, "cells": tri}, labels={"nuclei": labels},
                           tables={"t_bins": table("bins", [2, 0, 1], "id"), "t_cells": table("cells", ["c2", "c1"], "cell"),
                                   "t_lab": table("nuclei", [9, 5], "label")})
    path = tmp_path / "shapes.zarr"
    sdata.write(path)

    bins = sdl.read_spatialdata(path, table="t_bins")
    assert bins.uns[LINK_KEY]["shape"] == "square"
    np.testing.assert_allclose(bins.obsm["spatial"], centres[[2, 0, 1]])  # the table's row order
    np.testing.assert_allclose(bins.obs[SIZE_KEY], side)
    cells = sdl.read_spatialdata(path, table="t_cells")
    assert cells.uns[LINK_KEY]["shape"] == "polygon"
    np.testing.assert_allclose(cells.obsm["spatial"], [[12.0, 14.0], [2.0, 2.0]])
    np.testing.assert_allclose(cells.obs[SIZE_KEY], 2 * np.sqrt(np.array([36.0, 18.0]) / np.pi))
    nuc = sdl.read_spatialdata(path, table="t_lab")
    assert nuc.uns[LINK_KEY]["shape"] == "label"
    # labels: spatialdata's pixel centres are at i + 0.5
    np.testing.assert_allclose(nuc.obsm["spatial"], [[41.5, 31.5], [25.0, 12.0]])
    np.testing.assert_allclose(nuc.obs[SIZE_KEY], 2 * np.sqrt(np.array([9.0, 40.0]) / np.pi))


def test_csc_counts_become_csr_without_densifying(tmp_path: Path):
    sdata, _ = _spatialdata(np.random.default_rng(7))
    csr = sdata.tables["table"].X.copy()
    sdata.tables["table"].X = sp.csc_matrix(csr)
    path = tmp_path / "csc.zarr"
    sdata.write(path)
    adata = sdl.read_spatialdata(path)
    assert sp.issparse(adata.X) and adata.X.format == "csr" and (adata.X != csr).nnz == 0


def test_rows_without_geometry_are_an_error(tmp_path: Path):
    sdata, _ = _spatialdata(np.random.default_rng(3))
    t = sdata.tables["table"]
    t.obs["spot_id"] = t.obs["spot_id"].to_numpy() + 1000
    path = tmp_path / "bad.zarr"
    sdata.write(path)
    with pytest.raises(SpatialDataError, match="6 of 6 rows of table 'table' have no geometry in element 'spots'"):
        sdl.read_spatialdata(path)


# ---------------------------------------------------------------------------------------------
# a task on it, then the write-back
# ---------------------------------------------------------------------------------------------


def _reference(rng: np.random.Generator) -> tuple[AnnData, np.ndarray]:
    profiles = rng.gamma(1.0, 1.0, size=(3, len(GENES)))
    profiles[np.arange(3), np.arange(3)] += 15  # one marker gene per type
    profiles /= profiles.sum(1, keepdims=True)
    labels = np.repeat(["A", "B", "C"], 20)
    X = np.vstack([rng.poisson(300 * profiles[i]) for i in np.repeat(np.arange(3), 20)]).astype(np.float32)
    ref = AnnData(sp.csr_matrix(X), obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(60)]),
                  var=pd.DataFrame(index=GENES))
    return ref, profiles


def _mixture_zarr(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    sdata, _ = _spatialdata(rng)
    ref, profiles = _reference(rng)
    props = rng.dirichlet(np.ones(3), size=6)
    counts = np.vstack([rng.poisson(2000 * p @ profiles) for p in props]).astype(np.float32)
    sdata.tables["table"].X = sp.csr_matrix(counts)
    path = tmp_path / "mix.zarr"
    sdata.write(path)
    return path, props


def _image_array(path: Path, name: str) -> np.ndarray:
    return np.asarray(sd.read_zarr(path).images[name].data)


def test_task_runs_and_results_are_written_back_in_place_and_to_a_new_store(tmp_path: Path):
    rng = np.random.default_rng(4)
    path, props = _mixture_zarr(tmp_path, rng)
    ref, _ = _reference(rng)
    image_before = _image_array(path, "hires_image")
    adata = sdl.read_spatialdata(path)
    x_before = adata.X.copy()
    sdl.deconvolve(adata, ref, "cell_type", method="nnls")
    assert (adata.X != x_before).nnz == 0 and sp.issparse(adata.X)  # counts untouched, still sparse
    est = adata.obsm["spatialdl_proportions"]
    est = est.to_numpy() if hasattr(est, "to_numpy") else np.asarray(est)
    assert np.abs(est - props).mean() < 0.08 and np.corrcoef(est.ravel(), props.ravel())[0, 1] > 0.9, \
        "NNLS on the mixtures recovers the proportions"
    adata.obs["spatialdl_region"] = pd.Categorical(["x", "y", "x", "y", "x", "y"])
    adata.obsm["X_spatialdl"] = rng.normal(size=(adata.n_obs, 2))
    keys = sdl.io.result_keys(adata) if hasattr(sdl.io, "result_keys") else None
    assert keys is None or "spatialdl_proportions" in keys["obsm"]

    untouched = {f: f.stat().st_mtime_ns for sub in ("images", "shapes", "tables/table/X")
                 for f in (path / sub).rglob("*") if f.is_file()}
    out = sdl.write_spatialdata(adata)  # in place
    assert untouched and all(f.stat().st_mtime_ns == t for f, t in untouched.items()), \
        "in place, only the table's obs and result entries are rewritten: not X, not the images"
    assert out == path.resolve()
    back = sd.read_zarr(path)
    table = back.tables["table"]
    got = table.obsm["spatialdl_proportions"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(adata.obsm["spatialdl_proportions"]))
    np.testing.assert_allclose(table.obsm["X_spatialdl"], adata.obsm["X_spatialdl"])
    assert list(table.obs["spatialdl_region"]) == ["x", "y", "x", "y", "x", "y"]
    assert [k for k in table.uns if k.startswith("spatialdl")], "the run metadata is in the table's uns"
    assert SIZE_KEY not in table.obs and LINK_KEY not in table.uns, "reader keys are not results"
    assert "spatial" not in table.obsm or table.obsm["spatial"] is not adata.obsm["spatial"]
    np.testing.assert_array_equal(np.asarray(back.images["hires_image"].data), image_before)
    assert set(back.images) == {"hires_image", "lowres_image"} and set(back.shapes) == {"spots"}
    assert (table.X != adata.X).nnz == 0

    # to a new store: a copy of the whole SpatialData with the results
    new = tmp_path / "copy.zarr"
    assert sdl.write_spatialdata(adata, new) == new.resolve()
    copy = sd.read_zarr(new)
    np.testing.assert_array_equal(np.asarray(copy.images["hires_image"].data), image_before)
    np.testing.assert_allclose(copy.tables["table"].obsm["X_spatialdl"], adata.obsm["X_spatialdl"])
    assert adata.uns[LINK_KEY]["path"] == str(new.resolve()), "the link follows the new store"
    with pytest.raises(SpatialDataError, match="already exists: pass overwrite=True"):
        sdl.write_spatialdata(adata, path)
    # and it reads back through read_spatialdata with the results under the same keys
    again = sdl.read_spatialdata(new)
    np.testing.assert_allclose(np.asarray(again.obsm["spatialdl_proportions"]), np.asarray(est))


def test_write_back_of_a_row_subset_and_errors(zarr_path: Path, tmp_path: Path):
    adata = sdl.read_spatialdata(zarr_path)
    adata.obs["spatialdl_score"] = np.arange(adata.n_obs, dtype=float)
    sdl.write_spatialdata(adata)
    sub = adata[[1, 3]].copy()
    sub.obs["spatialdl_score"] = [100.0, 300.0]
    sub.obs["spatialdl_new"] = pd.Categorical(["p", "q"])
    sub.obsm["spatialdl_vec"] = np.ones((2, 3))
    sdl.write_spatialdata(sub)
    table = sd.read_zarr(zarr_path).tables["table"]
    np.testing.assert_allclose(table.obs["spatialdl_score"], [0, 100, 2, 300, 4, 5])
    assert table.obs["spatialdl_new"].isna().sum() == 4 and list(table.obs["spatialdl_new"].iloc[[1, 3]]) == ["p", "q"]
    vec = np.asarray(table.obsm["spatialdl_vec"])
    assert np.isnan(vec[[0, 2, 4, 5]]).all() and (vec[[1, 3]] == 1).all()
    # a layer over some genes and some rows: the other cells stay missing
    part = adata[[0, 2], 2:5].copy()
    part.layers["spatialdl_imputed"] = np.full((2, 3), 7.0)
    sdl.write_spatialdata(part)
    layer = np.asarray(sd.read_zarr(zarr_path).tables["table"].layers["spatialdl_imputed"])
    assert layer.shape == (6, len(GENES)) and (layer[np.ix_([0, 2], [2, 3, 4])] == 7).all()
    assert np.isnan(layer).sum() == layer.size - 6
    # renamed rows cannot be matched
    bad = adata.copy()
    bad.obs_names = [f"x{i}" for i in range(bad.n_obs)]
    with pytest.raises(SpatialDataError, match="6 of 6 obs names of the AnnData are not in table 'table'"):
        sdl.write_spatialdata(bad)
    # an AnnData that was not read from a SpatialData
    with pytest.raises(SpatialDataError, match="not read from a SpatialData"):
        sdl.write_spatialdata(AnnData(np.ones((2, 2))), tmp_path / "x.zarr")
    # a value a zarr table cannot hold fails before anything is written
    odd = adata.copy()
    odd.uns["spatialdl_odd"] = {"fn": object()}
    before = sd.read_zarr(zarr_path).tables["table"].obs.copy()
    with pytest.raises(SpatialDataError, match=r"adata.uns\['spatialdl_odd'\] cannot be stored"):
        sdl.write_spatialdata(odd)
    pd.testing.assert_frame_equal(sd.read_zarr(zarr_path).tables["table"].obs, before)


# ---------------------------------------------------------------------------------------------
# a miniature Space Ranger HD folder
# ---------------------------------------------------------------------------------------------

HD_MPP = 0.5  # µm per full-resolution pixel
HD_HIRES, HD_LOWRES = 0.25, 0.0625
HD_ORIGIN = (200.0, 240.0)  # x, y of the bin grid's corner, full-resolution pixels


def make_visium_hd(root: Path, rng: np.random.Generator, bright_bin: int = 13) -> dict:
    """outs/ of Space Ranger HD 3.x: feature_slice.h5, spatial/, binned_outputs/square_{008,016}um, segmented_outputs/
    (written by the writers of benchmarks/make_hd_xenium.py, which also make the tutorial's full-size folder)."""
    full = (800, 800)
    hires = rng.integers(40, 90, size=(int(full[0] * HD_HIRES), int(full[1] * HD_HIRES), 3), dtype=np.uint8)
    out = {}
    for bin_um, (n_rows, n_cols) in ((8, (6, 8)), (16, (3, 4))):
        rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
        pos = hd_bin_positions(bin_um, rows, cols, np.ones(len(rows)), HD_MPP, HD_ORIGIN)
        out[bin_um] = (pos, _counts(rng, len(pos)))
    pos8 = out[8][0]
    x, y = pos8.loc[bright_bin, ["pxl_col_in_fullres", "pxl_row_in_fullres"]]
    hires[int(np.floor(y * HD_HIRES)), int(np.floor(x * HD_HIRES))] = 255
    fullres = np.repeat(np.repeat(hires, 4, axis=0), 4, axis=1)  # 800 x 800, the microscope image
    fullres[fullres == 255] = 90
    fullres[int(np.floor(y)), int(np.floor(x))] = 255
    write_visium_hd(root, bins=out, genes=GENES, hires=hires, lowres=hires[::4, ::4], microns_per_pixel=HD_MPP,
                    hires_scalef=HD_HIRES, lowres_scalef=HD_LOWRES, microscope_image=fullres)
    # segmented cells: polygons in full-resolution pixels
    seg = root / "segmented_outputs"
    (seg / "spatial").mkdir(parents=True)
    (seg / "spatial" / "scalefactors_json.json").write_text(json.dumps(hd_scalefactors(2, HD_MPP, HD_HIRES, HD_LOWRES)))
    cells = [(300.0, 300.0, 10.0), (340.0, 310.0, 14.0), (420.0, 330.0, 8.0)]
    features = [{"type": "Feature", "properties": {"cell_id": i + 1},
                 "geometry": {"type": "Polygon", "coordinates": [[[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h],
                                                                   [cx - h, cy + h], [cx - h, cy - h]]]}}
                for i, (cx, cy, h) in enumerate(cells)]
    (seg / "cell_segmentations.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    write_10x_h5(seg / "filtered_feature_cell_matrix.h5", _counts(rng, 3),
                 [f"cellid_{i + 1:09d}-1" for i in range(3)], GENES)
    out["cells"] = cells
    out["hires"] = hires
    return out


@pytest.fixture
def visium_hd(tmp_path: Path) -> tuple[Path, dict]:
    pytest.importorskip("spatialdata_io")
    root = tmp_path / "run" / "outs"
    return root, make_visium_hd(root, np.random.default_rng(5))


def test_read_visium_hd_bins_on_the_hires_image(visium_hd):
    root, made = visium_hd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = sdl.read_visium_hd(root.parent)  # the run folder holding outs/ works too
    pos, counts = made[8]
    assert adata.n_obs == len(pos) and list(adata.var_names) == GENES
    assert sp.issparse(adata.X) and (sp.csr_matrix(adata.X) != counts).nnz == 0
    pos = pos.set_index("barcode").loc[adata.obs_names]
    np.testing.assert_allclose(adata.obsm["spatial"], pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    link = adata.uns[LINK_KEY]
    assert link["shape"] == "square" and link["table"] == "square_008um" and link["reader"] == "visium_hd"
    np.testing.assert_allclose(adata.obs[SIZE_KEY], 8 / HD_MPP)  # the bin's side, full-resolution pixels
    lib = link["library_id"]
    assert lib == "run" and set(adata.uns["spatial"][lib]["images"]) == {"hires", "lowres", "run_full_image"}
    sf = adata.uns["spatial"][lib]["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(HD_HIRES) and sf["tissue_lowres_scalef"] == pytest.approx(HD_LOWRES)
    assert sf["spot_diameter_fullres"] == pytest.approx(16.0)
    img, _, key = get_image(adata)
    assert key == "hires"
    px = spots_px(adata)
    bright = np.flatnonzero((img[np.floor(px[:, 1]).astype(int), np.floor(px[:, 0]).astype(int)] == 255).all(1))
    assert list(adata.obs_names[bright]) == [made[8][0].loc[13, "barcode"]]
    # the microscope image is the full resolution: Identity, scale factor 1, the bin on its bright pixel
    full, s_full, _ = get_image(adata, image_key="run_full_image")
    assert full.shape[:2] == (800, 800) and s_full == pytest.approx(1.0)
    px = spots_px(adata, image_key="run_full_image")
    bright = np.flatnonzero((full[np.floor(px[:, 1]).astype(int), np.floor(px[:, 0]).astype(int)] == 255).all(1))
    assert list(adata.obs_names[bright]) == [made[8][0].loc[13, "barcode"]]
    # images larger than max_image_side are left out when smaller ones exist
    small = sdl.read_visium_hd(root, max_image_side=300)
    assert set(small.uns["spatial"]["run"]["images"]) == {"hires", "lowres"}

    sixteen = sdl.read_visium_hd(root, bin_size=16)
    assert sixteen.n_obs == 12 and np.allclose(sixteen.obs[SIZE_KEY], 32.0)
    cells = sdl.read_visium_hd(root, bin_size="cells")
    assert cells.n_obs == 3 and cells.uns[LINK_KEY]["shape"] == "square"
    np.testing.assert_allclose(cells.obsm["spatial"], [c[:2] for c in made["cells"]])
    np.testing.assert_allclose(cells.obs[SIZE_KEY], [2 * c[2] for c in made["cells"]])
    with pytest.raises(SpatialDataError, match=r"bin_size=2 is not in .*available 8, 16, cells"):
        sdl.read_visium_hd(root, bin_size=2)
    with pytest.raises(SpatialDataError, match="not a Space Ranger HD output folder"):
        sdl.read_visium_hd(root / "spatial")


def test_visium_hd_results_to_a_new_zarr(visium_hd, tmp_path: Path):
    root, _ = visium_hd
    adata = sdl.read_visium_hd(root, bin_size=16)
    adata.obs["spatialdl_cluster"] = pd.Categorical(np.arange(adata.n_obs) % 3)
    with pytest.raises(SpatialDataError, match="pass path='<new>.zarr'"):
        sdl.write_spatialdata(adata)
    out = sdl.write_spatialdata(adata, tmp_path / "hd.zarr")
    back = sd.read_zarr(out)
    assert {"run_hires_image", "run_lowres_image"} <= set(back.images)
    table = back.tables["square_016um"]
    assert list(table.obs["spatialdl_cluster"].astype(int)) == list(np.arange(12) % 3)
    assert "cell_segmentations" in back.tables  # spatialdata-io also read the segmented cells: copied too
    again = sdl.read_spatialdata(out, table="square_016um")
    np.testing.assert_allclose(again.obsm["spatial"], adata.obsm["spatial"])
    assert again.uns["spatial"]["run"]["scalefactors"]["tissue_hires_scalef"] == pytest.approx(HD_HIRES)


# ---------------------------------------------------------------------------------------------
# a miniature Xenium folder
# ---------------------------------------------------------------------------------------------

XE_PIXEL = 0.2125  # µm per morphology pixel


def make_xenium(root: Path, rng: np.random.Generator) -> dict:
    """Xenium Onboard Analysis 2.x output: experiment.xenium, cells.parquet, cells.zarr.zip,
    cell_feature_matrix.h5, cell_boundaries.parquet, morphology_focus/morphology_focus_0000.ome.tif
    (written by the writer of benchmarks/make_hd_xenium.py)."""
    from spatialdata_io.readers.xenium import cell_id_str_from_prefix_suffix_uint32

    n = 5
    prefix = np.arange(1, n + 1, dtype=np.uint32) * 7919
    ids = cell_id_str_from_prefix_suffix_uint32(prefix, np.ones(n, dtype=np.uint32)).tolist()
    px = np.array([[40.0, 50.0], [120.0, 60.0], [200.0, 210.0], [300.0, 100.0], [80.0, 330.0]])  # x, y pixels
    centroids = (px + 0.5) * XE_PIXEL
    area = np.array([60.0, 80.0, 45.0, 100.0, 70.0])  # µm²
    counts = _counts(rng, n)
    verts = []
    for cid, (x, y) in zip(ids, centroids):
        for dx, dy in ((-2, -2), (2, -2), (2, 2), (-2, 2)):
            verts.append((cid, x + dx, y + dy))
    boundaries = pd.DataFrame(verts, columns=["cell_id", "vertex_x", "vertex_y"])
    genes = np.array(GENES)
    tx = pd.DataFrame({"transcript_id": np.arange(40, dtype=np.uint64), "cell_id": np.repeat(ids, 8),
                       "overlaps_nucleus": np.zeros(40, dtype=np.uint8), "feature_name": genes[np.arange(40) % 12],
                       "x_location": np.repeat(centroids[:, 0], 8), "y_location": np.repeat(centroids[:, 1], 8),
                       "z_location": np.full(40, 5.0), "qv": np.full(40, 30.0)})
    dapi = rng.integers(100, 400, size=(360, 400), dtype=np.uint16)
    for x, y in px.astype(int):
        dapi[y, x] = 60000
    written = write_xenium(root, prefixes=prefix, centroids_um=centroids, cell_area=area, nucleus_area=area / 3,
                           counts=counts, genes=GENES, morphology=dapi, pixel_size=XE_PIXEL,
                           cell_boundaries=boundaries, transcripts=tx, experiment={"run_name": "mini"})
    assert written == ids
    return {"ids": ids, "px": px, "area": area, "counts": counts, "dapi": dapi}


@pytest.fixture
def xenium(tmp_path: Path) -> tuple[Path, dict]:
    pytest.importorskip("spatialdata_io")
    root = tmp_path / "xenium_out"
    return root, make_xenium(root, np.random.default_rng(6))


def test_read_xenium_cells_on_the_morphology_image(xenium):
    root, made = xenium
    adata = sdl.read_xenium(root)
    assert list(adata.obs_names) == made["ids"]
    assert (sp.csr_matrix(adata.X) != made["counts"]).nnz == 0
    np.testing.assert_allclose(adata.obsm["spatial"], made["px"] + 0.5)  # morphology pixels
    np.testing.assert_allclose(adata.obs[SIZE_KEY], 2 * np.sqrt(made["area"] / np.pi) / XE_PIXEL)
    link = adata.uns[LINK_KEY]
    assert link["reader"] == "xenium" and link["shape"] == "circle" and link["region"] == "cell_circles"
    img, scalef, key = get_image(adata)
    assert key == "morphology_focus" and img.dtype == np.uint8 and img.shape == made["dapi"].shape
    assert scalef == pytest.approx(1.0)
    p = spots_px(adata)
    assert (img[np.floor(p[:, 1]).astype(int), np.floor(p[:, 0]).astype(int)] == 255).all()
    # downsampled when the image is larger than max_image_side: the scale factor follows
    small = sdl.read_xenium(root, max_image_side=100)
    img_s, scalef_s, _ = get_image(small)
    assert max(img_s.shape) <= 100 and scalef_s == pytest.approx(img_s.shape[1] / made["dapi"].shape[1], rel=0.02)


def test_xenium_transcripts_and_boundaries_go_into_the_written_spatialdata(xenium, tmp_path: Path):
    root, made = xenium
    plain = sdl.read_xenium(root)
    adata = sdl.read_xenium(root, transcripts=True, cells_boundaries=True)
    np.testing.assert_allclose(adata.obsm["spatial"], plain.obsm["spatial"])  # positions: the cell circles
    adata.obs["spatialdl_type"] = pd.Categorical(["a", "b", "a", "b", "a"])
    out = sdl.write_spatialdata(adata, tmp_path / "xe.zarr")
    back = sd.read_zarr(out)
    assert "transcripts" in back.points and len(back.points["transcripts"]) == 40
    assert {"cell_circles", "cell_boundaries"} <= set(back.shapes) and "morphology_focus" in back.images
    assert list(back.tables["table"].obs["spatialdl_type"]) == ["a", "b", "a", "b", "a"]
    with pytest.warns(UserWarning, match="holds no napari-spatialdl results"):
        plain_out = sdl.write_spatialdata(plain, tmp_path / "plain.zarr")
    assert "transcripts" not in sd.read_zarr(plain_out).points


def test_xenium_missing_files(tmp_path: Path):
    pytest.importorskip("spatialdata_io")
    (tmp_path / "experiment.xenium").write_text("{}")
    with pytest.raises(SpatialDataError, match="missing cell_feature_matrix.h5, cells.parquet, cells.zarr.zip"):
        sdl.read_xenium(tmp_path)


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore:No full resolution image found")
def test_full_size_generators_at_a_small_size(shared_data: Path, tmp_path: Path):
    """benchmarks/make_hd_xenium.py (the data of the Visium HD / Xenium tutorial), small: both folders
    open in the readers, the held-out genes are not in the panel, cell types follow the anatomy and the
    counts follow the types, 16 µm bins are sums of 8 µm bins."""
    pytest.importorskip("spatialdata_io")
    import make_hd_xenium as gen

    folder = shared_data / "hippocampus_visium" / "reference"
    if not (folder / "counts.csv").is_file():
        pytest.skip("the hippocampus reference is absent")
    ref = gen.load_reference(folder)
    truth_dir = tmp_path / "truth"
    made = gen.make_xenium(tmp_path / "xenium", ref, n_cells=1500, seed=3, truth_dir=truth_dir)
    xen = sdl.read_xenium(tmp_path / "xenium", cells_boundaries=True)
    assert xen.n_obs == 1500 and list(xen.var_names) == made["panel"], "controls are not gene expression"
    assert set(made["held_out"]) <= set(ref.var_names) and not set(made["held_out"]) & set(xen.var_names)
    truth = pd.read_parquet(truth_dir / "xenium_cells.parquet").set_index("cell_id").loc[xen.obs_names]
    assert (truth.loc[truth["region"] == "Dentate granule", "cell_type"] == "Denate").mean() > 0.8
    X = np.asarray(sp.csr_matrix(xen.X).todense())
    norm = X / X.sum(axis=1, keepdims=True)
    plp1 = list(xen.var_names).index("Plp1")
    oligo = (truth["cell_type"] == "Oligodendrocyte").to_numpy()
    assert norm[oligo, plp1].mean() > 5 * norm[~oligo, plp1].mean(), "Plp1 marks the oligodendrocytes"
    # each cell sits on its nucleus in the DAPI image; its area is its boundary's area
    img, _, _ = get_image(xen)
    px = spots_px(xen)
    on = img[np.floor(px[:, 1]).astype(int), np.floor(px[:, 0]).astype(int)]
    assert np.median(on) > 4 * np.median(img)
    with pytest.warns(UserWarning, match="holds no napari-spatialdl results"):
        out = sdl.write_spatialdata(xen, tmp_path / "xe.zarr")
    bounds = sd.read_zarr(out).shapes["cell_boundaries"]  # vertices in µm (Scale to morphology pixels)
    np.testing.assert_allclose(bounds.geometry.area, xen.obs.loc[bounds.index, "cell_area"], rtol=1e-3)

    info = gen.make_visium_hd(tmp_path / "hd" / "outs", ref, n_bins=1500, n_genes=500, seed=3,
                              truth_dir=truth_dir, hires_side=600)
    bins = sdl.read_visium_hd(tmp_path / "hd", bin_size=8)
    assert bins.n_obs == info["n_bins"] and bins.n_vars == 500 and bins.uns[LINK_KEY]["shape"] == "square"
    assert 1200 < bins.n_obs < 1800
    np.testing.assert_allclose(bins.obs[SIZE_KEY], 8 / gen.HD_MICRONS_PER_PIXEL)
    assert (np.diff(sp.csr_matrix(bins.X).indptr) > 0).all(), "every bin in tissue has counts"
    sixteen = sdl.read_visium_hd(tmp_path / "hd", bin_size=16)
    assert sixteen.X.sum() == pytest.approx(bins.X.sum()), "16 µm bins are sums of 8 µm bins"
    fractions = pd.read_parquet(truth_dir / "visium_hd_bins.parquet").set_index("barcode").loc[bins.obs_names]
    np.testing.assert_allclose(fractions[list(ref.obs["cell_type"].cat.categories)].sum(axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the real Space Ranger 1.0.0 folder through spatialdata-io
# ---------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_visium_through_spatialdata_io(shared_data: Path, tmp_path: Path):
    sdio = pytest.importorskip("spatialdata_io")
    folder = shared_data / "visium_spaceranger_1.0.0"
    if not folder.is_dir():
        pytest.skip("visium_spaceranger_1.0.0 is absent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sdio.visium(folder, dataset_id="real", counts_file="filtered_feature_bc_matrix.h5")
    path = tmp_path / "real.zarr"
    sdata.write(path)
    adata = sdl.read_spatialdata(path)
    ref = sdl.read_visium(folder)
    common = ref.obs_names.intersection(adata.obs_names)
    assert len(common) == ref.n_obs == adata.n_obs
    np.testing.assert_allclose(adata[common].obsm["spatial"], ref[common].obsm["spatial"], atol=1e-6)
    lib = adata.uns[LINK_KEY]["library_id"]
    ref_lib = next(iter(ref.uns["spatial"]))
    ours_sf, ref_sf = adata.uns["spatial"][lib]["scalefactors"], ref.uns["spatial"][ref_lib]["scalefactors"]
    assert ours_sf["tissue_lowres_scalef"] == pytest.approx(ref_sf["tissue_lowres_scalef"])
    assert ours_sf["spot_diameter_fullres"] == pytest.approx(ref_sf["spot_diameter_fullres"])
    np.testing.assert_allclose(spots_px(adata[common], image_key="lowres"), spots_px(ref[common], image_key="lowres"))
    assert (sp.csr_matrix(adata[common].X) != sp.csr_matrix(ref[common].X)).nnz == 0


# ---------------------------------------------------------------------------------------------
# npe2 readers
# ---------------------------------------------------------------------------------------------


def test_npe2_reader_for_a_zarr(zarr_path: Path, tmp_path: Path):
    from napari_spatialdl._napari._npe2_spatialdata import (
        get_reader_spatialdata,
        get_reader_visium_hd,
        get_reader_xenium,
    )

    assert get_reader_spatialdata(str(tmp_path)) is None
    assert get_reader_spatialdata(str(tmp_path / "missing.zarr")) is None
    assert get_reader_visium_hd(str(zarr_path)) is None and get_reader_xenium(str(zarr_path)) is None
    reader = get_reader_spatialdata([str(zarr_path)])
    assert callable(reader)
    layers = reader(str(zarr_path))
    assert [t for _, _, t in layers] == ["image", "points"]
    (img, img_kw, _), (pts, pts_kw, _) = layers
    meta = pts_kw["metadata"]
    assert isinstance(meta["sdata"], sd.SpatialData) and meta["name"] == "spots"
    assert meta["table_names"] == ["table"] and meta["region_key"] == "region" and meta["instance_key"] == "spot_id"
    assert meta["_current_cs"] == "global" and meta["_active_in_cs"] == {"global"}
    assert meta["indices"] == [101, 102, 103, 104, 105, 106] and meta["_n_indices"] == 6
    assert isinstance(meta["adata"], AnnData) and meta["adata"].n_obs == 6
    assert img_kw["metadata"]["name"] == "hires_image" and img_kw["metadata"]["sdata"] is meta["sdata"]
    # both layers sit in the coordinate system: the image's own transform, the spots on their bright pixels
    expected = get_transformation(meta["sdata"].images["hires_image"], "global")
    yx = expected.to_affine_matrix(input_axes=("y", "x"), output_axes=("y", "x"))
    np.testing.assert_allclose(img_kw["affine"], yx)
    world = (pts_kw["affine"] @ np.column_stack([pts, np.ones(len(pts))]).T).T[:, :2]
    np.testing.assert_allclose(world[:, ::-1], meta["adata"].obsm["spatial"])
    assert np.ptp(np.asarray(pts_kw["size"])) > 0, "circles of different radii keep their sizes"
    # napari does not scale point sizes by the affine: the sizes are world units (here the
    # coordinate system's, the frame of obsm['spatial']), so each circle is drawn at its diameter
    np.testing.assert_allclose(pts_kw["size"], meta["adata"].obs[SIZE_KEY])


def test_npe2_readers_for_visium_hd_and_xenium(visium_hd, xenium):
    from napari_spatialdl._napari._npe2_spatialdata import get_reader_visium_hd, get_reader_xenium

    hd_root, _ = visium_hd
    xe_root, made = xenium
    assert get_reader_visium_hd(str(xe_root)) is None and get_reader_xenium(str(hd_root)) is None
    layers = get_reader_visium_hd(str(hd_root.parent))(str(hd_root.parent))
    assert [t for _, _, t in layers] == ["image", "points"]
    pts_kw = layers[1][1]
    assert pts_kw["symbol"] == "square" and pts_kw["metadata"]["table_names"] == ["square_008um"]
    assert pts_kw["border_width"] == 0, "bins tile: no rim (as napari_spatialdl.show draws them)"
    # drawn at their side in world units (full-resolution pixels): napari does not scale sizes by the affine
    np.testing.assert_allclose(np.asarray(pts_kw["size"]) / 1.001, 8 / HD_MPP)
    assert pts_kw["metadata"]["name"] == "run_square_008um"
    layers = get_reader_xenium(str(xe_root))(str(xe_root))
    meta = layers[1][1]["metadata"]
    assert meta["name"] == "cell_circles" and meta["indices"] == made["ids"]
    assert "morphology_focus" in meta["sdata"].images


# ---------------------------------------------------------------------------------------------
# beside napari-spatialdata (runs where it is installed, under a display)
# ---------------------------------------------------------------------------------------------


@pytest.mark.gui
@pytest.mark.skipif(not __import__("os").environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)")
def test_napari_spatialdata_widgets_work_on_our_layers(zarr_path: Path, make_napari_viewer):
    """Its View widget takes our spots layer (our AnnData) and colours it; its own layer of the same
    element lands on the same world positions as ours."""
    pytest.importorskip("napari_spatialdata")
    from napari.layers import Layer
    from napari.utils.events import EventedList
    from napari_spatialdata._sdata_widgets import SdataWidget
    from napari_spatialdata._view import QtAdataViewWidget

    from napari_spatialdl._napari._npe2_spatialdata import get_reader_spatialdata

    viewer = make_napari_viewer()
    tuples = get_reader_spatialdata(str(zarr_path))(str(zarr_path))
    sdata = tuples[-1][1]["metadata"]["sdata"]
    viewer.window.add_dock_widget(SdataWidget(viewer, EventedList([sdata])), name="SpatialData")
    view = QtAdataViewWidget(viewer)
    for data, kwargs, layer_type in tuples:
        viewer.add_layer(Layer.create(data, kwargs, layer_type))
    ours = viewer.layers[-1]
    viewer.layers.selection.active = ours
    assert view.model.adata is ours.metadata["adata"]
    assert [view.table_name_widget.itemText(i) for i in range(view.table_name_widget.count())] == ["table"]
    view.var_widget._onAction([GENES[0]])
    assert np.ptp(np.asarray(ours.face_color)[:, :3], axis=0).max() > 0, "coloured by the gene"
    theirs = viewer.window.dock_widgets["SpatialData"].viewer_model.get_sdata_circles(sdata, "spots", "global", False)
    ours_world = np.array([ours._data_to_world(p) for p in np.asarray(ours.data)])
    their_world = np.array([theirs._data_to_world(p)[-2:] for p in np.asarray(theirs.data)])
    np.testing.assert_allclose(ours_world, their_world)


@pytest.mark.gui
@pytest.mark.skipif(not __import__("os").environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)")
def test_dropping_a_zarr_and_an_hd_folder_on_napari(zarr_path: Path, visium_hd, make_napari_viewer):
    """Through napari's own open (npe2 manifest): the image and the spots, in the coordinate system."""
    viewer = make_napari_viewer()
    layers = viewer.open(str(zarr_path), plugin="napari-spatialdl")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Points"]
    image, spots = layers
    # a spot's world position is its position in the coordinate system, and it sits on its bright pixel
    world = np.array([spots._data_to_world(p) for p in spots.data])
    np.testing.assert_allclose(world[:, ::-1], spots.metadata["adata"].obsm["spatial"])
    pix = np.array([image.world_to_data(p) for p in world])
    assert (np.asarray(image.data)[np.floor(pix[:, 0]).astype(int), np.floor(pix[:, 1]).astype(int)] == 255).all()
    root, _ = visium_hd
    _, bins = viewer.open(str(root), plugin="napari-spatialdl")
    assert bins.symbol[0].value == "square" and bins.metadata["table_names"] == ["square_008um"]
