"""Beside napari-spatialdata (run where it is installed, under xvfb-run).

A SpatialData built with ``spatialdata.models`` (circles of spots whose own coordinates are scaled
into the coordinate system, a table of counts whose rows are in another order than the circles,
a tissue image, circles and polygons that no table annotates, cell polygons with their own
table), written as ``.zarr`` and opened the way a napari-spatialdata user opens it
(``Interactive(sdata, headless=True)`` + ``add_element``) in a real viewer:

- its Points layer of the circles is offered by every panel, a task runs on it from the panel and
  through ``sdl.run``, the result is coloured on that layer, ``sdl.write_spatialdata`` writes the
  results into the table of the ``.zarr``; the SpatialData in memory is not changed;
- napari-spatialdata's View widget still colours the adopted layer, and replacing its
  ``metadata['adata']`` with its joined table does not cut our link;
- layers it cannot offer (no table; polygons) are named with the reason and the fix;
- the other way round: our layer of an AnnData of ``read_spatialdata`` carries napari-spatialdata's
  links, and its View widget colours it by an obs column.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari_spatialdata")
sd = pytest.importorskip("spatialdata")

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under xvfb-run)"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning"),
]

import geopandas as gpd  # noqa: E402
from anndata import AnnData  # noqa: E402
from shapely.geometry import Polygon  # noqa: E402
from spatialdata.models import Image2DModel, ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import Scale  # noqa: E402

import napari_spatialdl as sdl  # noqa: E402

EL_SCALE = 2.0  # the circles' own coordinates -> "global" (full-resolution pixels)


@pytest.fixture(scope="module")
def tissue():
    from napari_spatialdl.datasets import synthetic_tissue

    return synthetic_tissue(0, n_spots=300, n_genes=80, n_cell_types=4, n_reference_cells=400, image_size=400)


def _spatialdata(spatial: AnnData) -> sd.SpatialData:
    lib = next(iter(spatial.uns["spatial"].values()))
    scalef = lib["scalefactors"]["tissue_hires_scalef"]
    image = Image2DModel.parse(np.moveaxis(lib["images"]["hires"], -1, 0), dims=("c", "y", "x"),
                               c_coords=["r", "g", "b"],
                               transformations={"global": Scale([1 / scalef, 1 / scalef], axes=("x", "y"))})
    n = spatial.n_obs
    ids = pd.Index(1000 + np.arange(n), name="spot_id")
    radius = lib["scalefactors"]["spot_diameter_fullres"] / 2 / EL_SCALE
    spots = ShapesModel.parse(spatial.obsm["spatial"] / EL_SCALE, geometry=0, radius=np.full(n, radius), index=ids,
                              transformations={"global": Scale([EL_SCALE, EL_SCALE], axes=("x", "y"))})
    order = np.random.default_rng(1).permutation(n)  # table rows in another order than the circles
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * n), "spot_id": ids.to_numpy(),
                        "domain": spatial.obs["region"].to_numpy()}, index=[f"spot-{i}" for i in ids])
    table = AnnData(spatial.layers["counts"].copy(), obs=obs, var=pd.DataFrame(index=spatial.var_names))[order].copy()
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    xy = spatial.obsm["spatial"]
    landmarks = ShapesModel.parse(xy[:5], geometry=0, radius=np.full(5, 30.0),
                                  transformations={"global": Scale([1.0, 1.0], axes=("x", "y"))})
    x0, y0 = xy.min(axis=0)
    outline = ShapesModel.parse(gpd.GeoDataFrame({"geometry": [Polygon([(x0, y0), (x0 + 500, y0), (x0 + 500, y0 + 500)])]}),
                                transformations={"global": Scale([1.0, 1.0], axes=("x", "y"))})
    squares = [Polygon([(x - 40, y - 40), (x + 40, y - 40), (x + 40, y + 40), (x - 40, y + 40)]) for x, y in xy[:6]]
    cells = ShapesModel.parse(gpd.GeoDataFrame({"geometry": squares}, index=pd.Index(np.arange(6), name="cell")),
                              transformations={"global": Scale([1.0, 1.0], axes=("x", "y"))})
    cell_obs = pd.DataFrame({"region": pd.Categorical(["cells"] * 6), "cell": np.arange(6)},
                            index=[f"cell-{i}" for i in range(6)])
    cell_table = TableModel.parse(AnnData(spatial.layers["counts"][:6].copy(), obs=cell_obs,
                                          var=pd.DataFrame(index=spatial.var_names)),
                                  region="cells", region_key="region", instance_key="cell")
    return sd.SpatialData(images={"tissue": image}, shapes={"spots": spots, "landmarks": landmarks,
                                                             "outline": outline, "cells": cells},
                          tables={"table": table, "cell_table": cell_table})


@pytest.fixture
def zarr_path(tissue, tmp_path: Path) -> Path:
    path = tmp_path / "tissue.zarr"
    _spatialdata(tissue[0]).write(path)
    return path


def _interactive(sdata):
    from napari_spatialdata import Interactive

    return Interactive(sdata, headless=True)


def _add(inter, name: str):
    from gui_helpers import process_events

    inter.add_element(name, "global")
    inter._sdata_widget.worker_thread.wait()  # napari-spatialdata builds the layer in a QThread
    process_events(5)
    return inter._viewer.layers[name]


def _table_state(sdata) -> dict:
    t = sdata.tables["table"]
    return {"obs": t.obs.copy(), "obsm": sorted(t.obsm.keys()), "uns": sorted(t.uns.keys()), "n": t.n_obs}


def _colours(layer) -> np.ndarray:
    return np.asarray(layer.face_color)[:, :3]


def test_panels_take_napari_spatialdata_circles_run_and_write_back(zarr_path, tissue, make_napari_viewer, qtbot):
    from gui_helpers import (
        add_panel,
            click_run,
        plugin_viewer,
        process_events,
        save_window,
    )

    from napari_spatialdl._widgets._inputs import spots_layers
    from napari_spatialdl._widgets._spatialdata_layers import META_OURS
    from napari_spatialdl.io._spatialdata import LINK_KEY

    reference = tissue[1].copy()
    viewer = plugin_viewer(make_napari_viewer)
    sdata = sd.read_zarr(zarr_path)
    before = _table_state(sdata)
    inter = _interactive(sdata)
    _add(inter, "tissue")
    spots = _add(inter, "spots")
    theirs = spots.metadata["adata"]
    assert theirs is not None and LINK_KEY not in theirs.uns  # napari-spatialdata's joined table
    dock = add_panel(viewer, "Spatial DL")
    # every panel offers the layer; the layer now holds our AnnData, rows in the point order
    for widget in dock.task_widgets().values():
        assert widget.spots.currentText() == "spots", widget.task
    adata = spots.metadata["adata"]
    assert LINK_KEY in adata.uns and spots.metadata[META_OURS] is adata and spots.metadata["spatialdl_spots"]
    assert adata.obs["spot_id"].tolist() == list(spots.metadata["indices"])
    assert adata.uns[LINK_KEY]["path"] == str(zarr_path.resolve())
    # the rows' positions are the points' world positions (the layer's affine is the element's)
    world = np.array([spots.data_to_world(p) for p in np.asarray(spots.data)])
    np.testing.assert_allclose(world[:, ::-1], adata.obsm["spatial"], rtol=1e-6)
    np.testing.assert_allclose(spots.metadata["scalefactor"], 1 / EL_SCALE)
    # napari-spatialdata's View widget still colours it, from its own table; ours comes back after
    view = viewer.window.dock_widgets["View (napari-spatialdata)"]
    viewer.layers.selection.active = viewer.layers["tissue"]
    viewer.layers.selection.active = spots
    process_events()
    assert spots.metadata["adata"] is not adata, "napari-spatialdata put its joined table back"
    gene = str(adata.var_names[0])
    view.var_widget._onAction([gene])
    expected = np.asarray(adata[:, gene].X.toarray()).ravel()
    shown = _colours(spots)
    assert np.ptp(shown, axis=0).max() > 0
    hi, lo = int(np.argmax(expected)), int(np.argmin(expected))
    assert not np.allclose(shown[hi], shown[lo]), "its colours follow the gene, row for row"
    assert spots_layers(viewer) == [spots] and spots.metadata["adata"] is adata

    # a run from the Deconvolve panel: results into our AnnData, coloured on that layer
    dec = dock.show_task("deconvolve")
    dec.set_reference(reference, name="reference.h5ad")
    dec.params.set(max_epochs=5)
    plain = _colours(spots).copy()
    run = click_run(qtbot, dec)
    assert run.result is not None and "spatialdl_proportions" in adata.obsm
    assert spots.metadata["adata"] is adata and spots.metadata.get("spatialdl_legend") is not None
    assert not np.allclose(_colours(spots), plain), "the result is drawn on napari-spatialdata's layer"
    # napari-spatialdata docks four widgets on the left (they make the window taller than ours do):
    # only ask that the canvas keeps its room
    assert viewer.canvas.size[1] >= 0.4 * dock.window().width()
    shot = save_window(viewer, "napari_spatialdata_deconvolve")
    assert shot.stat().st_size > 10_000
    # and through sdl.run, after napari-spatialdata replaced the AnnData once more
    viewer.layers.selection.active = viewer.layers["tissue"]
    viewer.layers.selection.active = spots
    process_events()
    result = sdl.run(viewer, "annotate", reference=reference, labels_key="cell_type", block=True,
                     timeout=170, max_epochs=5)
    assert result is not None and "spatialdl_cell_type" in adata.obs
    assert spots.metadata["spatialdl_color"]["key"].startswith("spatialdl_cell_type")
    # the user's SpatialData is not changed; the results go into the .zarr's table
    after = _table_state(sdata)
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    assert after["obsm"] == before["obsm"] and after["uns"] == before["uns"]
    assert sdl.write_spatialdata(adata) == zarr_path.resolve()
    table = sd.read_zarr(zarr_path).tables["table"]
    written = pd.DataFrame(np.asarray(table.obsm["spatialdl_proportions"]), index=table.obs_names)
    mine = pd.DataFrame(np.asarray(adata.obsm["spatialdl_proportions"]), index=adata.obs_names)
    np.testing.assert_allclose(written.loc[mine.index].to_numpy(), mine.to_numpy(), rtol=1e-6)
    assert (table.obs.loc[adata.obs_names, "spatialdl_cell_type"].astype(str).to_numpy()
            == adata.obs["spatialdl_cell_type"].astype(str).to_numpy()).all()


def test_layers_that_cannot_be_spots_are_named_with_the_fix(zarr_path, make_napari_viewer):
    from gui_helpers import add_panel, plugin_viewer, process_events

    from napari_spatialdl._widgets._inputs import NO_SPOTS, spots_layers

    viewer = plugin_viewer(make_napari_viewer)
    sdata = sd.read_zarr(zarr_path)
    inter = _interactive(sdata)
    _add(inter, "landmarks")
    cells = _add(inter, "cells")
    assert type(cells).__name__ == "Shapes"
    dock = add_panel(viewer, "Spatial DL")
    assert spots_layers(viewer) == []
    for widget in dock.task_widgets().values():
        reason = widget.controls.reason.text()
        assert reason != NO_SPOTS and not widget.run_button.isEnabled()
        assert "'landmarks'" in reason and "no table of counts" in reason and "TableModel.parse" in reason
        assert "'cells'" in reason and "polygons" in reason and "spatialdata_to_anndata" in reason
    with pytest.raises(LookupError, match="'landmarks'"):
        sdl.run(viewer, "impute", block=True)
    # the fix the message gives works: the cells at their centroids, offered
    adata = sdl.io.spatialdata_to_anndata(viewer.layers["cells"].metadata["sdata"], table="cell_table",
                                          region="cells")
    sdl.show(adata, viewer, legend=False)
    process_events()
    assert [lyr.metadata["adata"] for lyr in spots_layers(viewer)] == [adata]
    assert dock.impute.spots.currentText() == viewer.layers[-1].name


def test_our_layers_carry_napari_spatialdata_links(zarr_path, make_napari_viewer):
    from gui_helpers import add_panel, plugin_viewer, process_events

    from napari_spatialdl._widgets._spatialdata_layers import napari_spatialdata_links
    from napari_spatialdl.io._spatialdata import spatialdata_of

    adata = sdl.read_spatialdata(zarr_path, table="table")
    sdata = spatialdata_of(adata)
    assert isinstance(sdata, sd.SpatialData) and spatialdata_of(adata.copy()) is None
    from napari_spatialdl._widgets._inputs import spots_layers

    links = napari_spatialdata_links(adata)
    assert links["sdata"] is sdata and links["name"] == "spots" and links["table_names"] == ["table"]
    assert links["indices"] == adata.obs["spot_id"].tolist()

    viewer = plugin_viewer(make_napari_viewer)
    inter = _interactive(sdata)  # napari-spatialdata's docks first, as a user of both has them
    add_panel(viewer, "Spatial DL")
    view = viewer.window.dock_widgets["View (napari-spatialdata)"]
    domains = adata.obs["domain"].astype(str).to_numpy()

    def coloured_by_domain(layer) -> None:
        viewer.layers.selection.active = layer
        process_events()
        view.obs_widget._onAction(["domain"])
        shown = _colours(layer)
        for d in np.unique(domains):  # one colour per category, different between categories
            assert np.ptp(shown[domains == d], axis=0).max() < 1e-6, d
        assert len({tuple(np.round(shown[domains == d][0], 4)) for d in np.unique(domains)}) == len(set(domains))

    # sdl.show: once a panel has seen the layer it carries what the View widget needs, and the
    # widget colours it by an obs column from our AnnData (which holds the results too)
    sdl.show(adata, viewer, legend=False)
    process_events()
    shown = viewer.layers[-1]
    assert spots_layers(viewer) == [shown]
    assert shown.metadata["indices"] == adata.obs["spot_id"].tolist() and shown.metadata["instance_key"] == "spot_id"
    coloured_by_domain(shown)
    assert view.model.adata is adata and shown.metadata["adata"] is adata
    viewer.layers.remove(shown)  # napari-spatialdata's removal handler has nothing to complain about
    # a layer made with the full links (the SpatialData too), as the napari-spatialdl reader makes them
    from napari.layers import Layer

    from napari_spatialdl.layers import spatial_layers

    data, kwargs, kind = spatial_layers(adata)[-1]
    kwargs["metadata"].update(links)
    made = viewer.add_layer(Layer.create(data, kwargs, kind))
    process_events()
    assert made.metadata["sdata"] is sdata and spots_layers(viewer) == [made]
    coloured_by_domain(made)  # from its join of the table in the SpatialData
    assert spots_layers(viewer) == [made] and made.metadata["adata"] is adata, "our AnnData is put back"
    viewer.layers.remove(made)
    del inter
