"""Reader for a 10x Genomics Space Ranger (Visium) output folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._spatial import SpatialDataError, image_problem

POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv")  # SR >= 2.0, SR 1.x
POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
IMAGE_FILES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}

if TYPE_CHECKING:  # anndata/pandas are imported when reading, so that path checks stay light
    import pandas as pd
    from anndata import AnnData


def _counts_exists(root: Path, counts_file: str) -> bool:
    p = root / counts_file
    if p.is_dir():
        return any((p / f).exists() for f in ("matrix.mtx.gz", "matrix.mtx"))
    return p.is_file()


def _missing_files(root: Path, counts_file: str) -> list[str]:
    missing = []
    if not _counts_exists(root, counts_file):
        missing.append(counts_file)
    spatial = root / "spatial"
    if not any((spatial / f).is_file() for f in POSITION_FILES):
        missing.append("spatial/tissue_positions.csv (or spatial/tissue_positions_list.csv)")
    if not (spatial / "scalefactors_json.json").is_file():
        missing.append("spatial/scalefactors_json.json")
    return missing


def find_spaceranger_root(path: str | Path, counts_file: str = "filtered_feature_bc_matrix.h5") -> Path | None:
    """The folder holding ``spatial/`` and the counts (``path`` or ``path/outs``), or None."""
    path = Path(path)
    for root in (path, path / "outs"):
        if root.is_dir() and not _missing_files(root, counts_file):
            return root
    return None


def _read_positions(spatial: Path) -> pd.DataFrame:
    import pandas as pd

    file = next(spatial / f for f in POSITION_FILES if (spatial / f).is_file())
    with open(file) as fh:
        first = fh.readline().split(",")[0].strip().strip('"')
    has_header = first.lower() == "barcode"
    pos = pd.read_csv(file, header=0 if has_header else None, index_col=0)
    if pos.shape[1] != 5:
        raise SpatialDataError(
            f"{file} has {pos.shape[1] + 1} columns; Space Ranger writes 6 (barcode, in_tissue, "
            "array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres). Is it a Space Ranger file?"
        )
    pos.columns = POSITION_COLUMNS
    pos.index = pos.index.astype(str)
    return pos


def _read_counts(root: Path, counts_file: str) -> tuple[AnnData, dict]:
    import scanpy as sc

    p = root / counts_file
    attrs: dict = {}
    if p.is_dir():
        adata = sc.read_10x_mtx(p, var_names="gene_symbols", make_unique=False)
    else:
        adata = sc.read_10x_h5(p)
        import h5py

        with h5py.File(p, "r") as f:
            attrs = dict(f.attrs)
    return adata, attrs


def _decode(value) -> str:
    value = np.asarray(value).ravel()[0] if np.ndim(value) else value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _load_image(file: Path) -> np.ndarray:
    import imageio.v3 as iio

    img = np.asarray(iio.imread(file))
    if img.ndim == 3 and img.shape[2] == 4 and np.all(img[..., 3] == img[..., 3].flat[0]) and img[..., 3].flat[0] > 0:
        img = np.ascontiguousarray(img[..., :3])  # constant opaque alpha carries nothing
    return img


def read_visium(
    path: str | Path,
    *,
    counts_file: str = "filtered_feature_bc_matrix.h5",
    library_id: str | None = None,
    load_images: bool = True,
) -> AnnData:
    """Read a Space Ranger (10x Visium) output folder.

    Parameters
    ----------
    path
        The Space Ranger ``outs`` folder, or the run folder that contains ``outs``. It must hold the
        counts (``counts_file``), ``spatial/tissue_positions.csv`` (Space Ranger 2+, with header)
        or ``spatial/tissue_positions_list.csv`` (1.x, no header) and
        ``spatial/scalefactors_json.json``; ``spatial/tissue_{hires,lowres}_image.png`` when present.
    counts_file
        The counts: a 10x ``.h5`` (``filtered_feature_bc_matrix.h5`` or ``raw_feature_bc_matrix.h5``)
        or a matrix folder (``filtered_feature_bc_matrix``).
    library_id
        Key under ``uns['spatial']``; default: the library id stored in the ``.h5``, else the folder name.
    load_images
        Load the tissue images into ``uns['spatial'][library_id]['images']``.

    Returns
    -------
    AnnData
        ``X`` raw counts (CSR float32), ``var_names`` gene symbols made unique (``var['gene_ids']`` keeps the
        Ensembl ids), ``obs`` ``in_tissue``/``array_row``/``array_col``, ``obsm['spatial']`` spot
        centres (x, y) in full-resolution pixels, ``uns['spatial'][library_id]`` with ``images``,
        ``scalefactors`` and ``metadata``.

    Raises
    ------
    SpatialDataError
        The folder is not Space Ranger output (the message lists the missing files), or the
        positions file does not cover the barcodes of the counts.
    """
    path = Path(path)
    if not path.exists():
        raise SpatialDataError(f"{path} does not exist.")
    if not path.is_dir():
        raise SpatialDataError(
            f"{path} is a file; read_visium takes the Space Ranger output folder (the one holding "
            f"{counts_file} and spatial/). For a single .h5ad use read_h5ad."
        )
    root = find_spaceranger_root(path, counts_file)
    if root is None:
        root = path / "outs" if (path / "outs").is_dir() else path
        missing = _missing_files(root, counts_file)
        raise SpatialDataError(
            f"{path} is not a Space Ranger output folder: missing {'; '.join(missing)}. Pass the "
            "Space Ranger 'outs' folder (with the counts .h5 and the spatial/ subfolder)"
            + (", or name the counts file with counts_file=" if counts_file in missing else "")
            + "."
        )
    spatial_dir = root / "spatial"
    adata, attrs = _read_counts(root, counts_file)
    import scipy.sparse as sp

    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)  # counts are exact in float32, half the memory
    adata.var_names_make_unique()
    adata.obs_names = adata.obs_names.astype(str)

    positions = _read_positions(spatial_dir)
    absent = ~adata.obs_names.isin(positions.index)
    if absent.any():
        raise SpatialDataError(
            f"{int(absent.sum())} of {adata.n_obs} barcodes of {counts_file} are not in "
            f"{spatial_dir.name}/tissue_positions*.csv (e.g. {', '.join(adata.obs_names[absent][:3])}): "
            "the counts and the spatial folder come from different runs."
        )
    positions = positions.loc[adata.obs_names]
    for col in ("in_tissue", "array_row", "array_col"):
        adata.obs[col] = positions[col].to_numpy()
    adata.obsm["spatial"] = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()

    if library_id is None:
        if "library_ids" in attrs:
            library_id = _decode(attrs["library_ids"])
        else:
            library_id = (root.parent if root.name == "outs" else root).name
    metadata = {k: _decode(attrs[k]) for k in ("chemistry_description", "software_version") if k in attrs}
    scalefactors = json.loads((spatial_dir / "scalefactors_json.json").read_text())
    entry: dict = {"images": {}, "scalefactors": scalefactors, "metadata": metadata}
    if load_images:
        for key, name in IMAGE_FILES.items():
            if (spatial_dir / name).is_file():
                entry["images"][key] = _load_image(spatial_dir / name)
        if not entry["images"]:
            warnings.warn(
                f"No tissue image in {spatial_dir} ({', '.join(IMAGE_FILES.values())}): the spots "
                "can be shown, but without the tissue under them.",
                UserWarning,
                stacklevel=2,
            )
        elif all(image_problem(img) for img in entry["images"].values()):
            warnings.warn(
                f"The tissue images in {spatial_dir} are blank or unreadable as RGB.",
                UserWarning,
                stacklevel=2,
            )
    adata.uns["spatial"] = {library_id: entry}
    return adata
