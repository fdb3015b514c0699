"""npe2 readers for a SpatialData ``.zarr``, a Space Ranger HD ``outs`` folder and a Xenium folder.

Each ``get_reader_*`` answers at once from the folder's layout (no library import) and returns
None for paths it does not read, so napari can try other readers. The reader it returns gives the
tissue image and the spots/bins/cells as napari layer-data tuples built by
:func:`napari_spatialdl.layers.spatial_layers`, placed in the SpatialData's coordinate system
(``affine``), with the metadata links of both plugins:

- napari-spatialdl: ``adata`` (the AnnData, results go there), ``library_id``, ``image_key``,
  ``scalefactor``, ``spatialdl_spots`` (see :mod:`napari_spatialdl.layers`);
- napari-spatialdata (as its ``_viewer.py`` sets them): ``sdata``, ``name`` (the element),
  ``table_names``, ``region_key``, ``instance_key``, ``_active_in_cs``, ``_current_cs``,
  ``_n_indices``, ``indices`` (instance ids in layer order) and ``_columns_df`` on the spots;
  ``sdata``, ``name``, ``_active_in_cs``, ``_current_cs`` on the image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LayerData = tuple[Any, dict, str]
#: table opened by the GUI when a .zarr holds several (Visium HD's standard bin size)
GUI_TABLE_PREFERENCE = ("table", "square_008um", "cell_segmentations", "square_016um")
GUI_BIN_PREFERENCE = (8, 16, "cells", 2, "nuclei")


def _first_path(path: str | Path | Sequence[str | Path]) -> Path | None:
    if isinstance(path, list | tuple):
        if not path:
            return None
        path = path[0]
    if not isinstance(path, str | Path):
        return None
    return Path(path)


def _layers(adata: Any, sdata: Any) -> list[LayerData]:
    import numpy as np

    from napari_spatialdl.io._spatialdata import LINK_KEY, SIZE_KEY, layer_affine
    from napari_spatialdl.layers import spatial_layers

    layers = spatial_layers(adata)
    link = adata.uns[LINK_KEY]
    cs = str(link["coordinate_system"])
    images = dict(link.get("images") or {})
    shown = next((kw.get("metadata", {}).get("image_key") for _, kw, t in layers if t == "points"), None)
    for _data, kwargs, layer_type in layers:
        meta = kwargs.setdefault("metadata", {})
        scalef = float(meta.get("scalefactor", 1.0) or 1.0)
        affine = layer_affine(adata, scalef)
        if affine is not None:
            kwargs["affine"] = affine
        meta.update(sdata=sdata, _active_in_cs={cs}, _current_cs=cs)
        if layer_type == "image":
            meta["name"] = images.get(shown) if shown is not None else None
            continue
        sizes = adata.obs[SIZE_KEY].to_numpy(dtype=float) if SIZE_KEY in adata.obs else None
        if sizes is not None and len(sizes) and np.isfinite(sizes).all() and np.ptp(sizes) > 1e-6 * np.max(sizes):
            kwargs["size"] = sizes * scalef  # cells of different sizes, drawn at their own size
        if link.get("shape") == "square":  # Visium HD bins: squares of their side, no rim, no seams
            from napari_spatialdl._widgets._viewer import _true_geometry

            _true_geometry(adata, kwargs)  # as napari_spatialdl.show draws them
        if affine is not None and "size" in kwargs:
            # napari scales point sizes by `scale` but not by `affine` (napari/napari#6649;
            # napari-spatialdata works around it the same way): give the sizes in the units the
            # affine maps to, so that a cell or bin is drawn at its true size when the image shown
            # is a downsampled one (a Xenium morphology image, a Visium HD hires image)
            factor = float(np.sqrt(abs(np.linalg.det(np.asarray(affine)[:2, :2]))))
            kwargs["size"] = np.asarray(kwargs["size"], dtype=float) * factor
        meta.update(
            name=str(link["region"]),
            table_names=[str(link["table"])],
            region_key=str(link["region_key"]),
            instance_key=str(link["instance_key"]),
            _n_indices=adata.n_obs,
            indices=adata.obs[str(link["instance_key"])].tolist(),
            _columns_df=None,
        )
    return layers


def _pick_table(sdata: Any, path: Path) -> str | None:
    from napari_spatialdl.io._spatialdata import _annotating_tables

    tables = _annotating_tables(sdata)
    if len(tables) <= 1:
        return None
    choice = next((t for t in GUI_TABLE_PREFERENCE if t in tables), None)
    choice = choice or min(tables, key=lambda t: sdata.tables[t].n_obs)
    warnings.warn(
        f"{path.name} holds {len(tables)} tables of spots/bins/cells ({', '.join(tables)}); opened {choice!r}. "
        f"For another: adata = napari_spatialdl.read_spatialdata({str(path)!r}, table=...); "
        "napari_spatialdl.show(adata).",
        UserWarning,
        stacklevel=2,
    )
    return choice


def get_reader_spatialdata(path: str | Path | Sequence[str | Path]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader command for a SpatialData ``.zarr``; None for other paths.

    When the store holds several tables of spots/bins/cells, the one named ``table``, else the 8 µm
    bins of Visium HD (``square_008um``), else the smallest is opened (a warning names the others).
    """
    from napari_spatialdl.io._spatialdata import is_spatialdata_zarr

    p = _first_path(path)
    if p is None or not is_spatialdata_zarr(p):
        return None

    def reader(_: Any) -> list[LayerData]:
        from napari_spatialdl.io._spatialdata import (
            LINK_KEY,
            MAX_IMAGE_SIDE,
            _read_zarr,
            _to_anndata,
        )

        resolved = p.expanduser().resolve()
        sdata = _read_zarr(resolved)
        adata = _to_anndata(sdata, table=_pick_table(sdata, resolved), region=None, coordinate_system=None,
                            images=None, max_image_side=MAX_IMAGE_SIDE, library_id=None, where=str(resolved))
        adata.uns[LINK_KEY].update(path=str(resolved), reader="read_zarr", source=str(resolved))
        return _layers(adata, sdata)

    return reader


def get_reader_visium_hd(path: str | Path | Sequence[str | Path]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader command for a Space Ranger HD ``outs`` folder (8 µm bins when present); None otherwise."""
    from napari_spatialdl.io._spatialdata import find_visium_hd_root

    p = _first_path(path)
    root = find_visium_hd_root(p) if p is not None and p.is_dir() else None
    if root is None:
        return None

    def reader(_: Any) -> list[LayerData]:
        from napari_spatialdl.io._spatialdata import read_visium_hd_objects, visium_hd_bin_sizes

        sizes = visium_hd_bin_sizes(root)
        bin_size = next((b for b in GUI_BIN_PREFERENCE if b in sizes), sizes[0] if sizes else 8)
        sdata, adata = read_visium_hd_objects(root, bin_size=bin_size)
        return _layers(adata, sdata)

    return reader


def get_reader_xenium(path: str | Path | Sequence[str | Path]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader command for a Xenium output folder (cells, no transcripts); None otherwise."""
    from napari_spatialdl.io._spatialdata import find_xenium_root

    p = _first_path(path)
    root = find_xenium_root(p) if p is not None and p.is_dir() else None
    if root is None:
        return None

    def reader(_: Any) -> list[LayerData]:
        from napari_spatialdl.io._spatialdata import read_xenium_objects

        sdata, adata = read_xenium_objects(root)
        return _layers(adata, sdata)

    return reader
