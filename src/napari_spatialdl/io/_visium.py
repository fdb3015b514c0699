"""Reader for a 10x Genomics Space Ranger (Visium) output folder."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._files import damaged_hdf5, load_image_or_warn, read_json_object
from ._spatial import ReadError, SpatialDataError, image_problem

POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv")  # SR >= 2.0, SR 1.x
POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
IMAGE_FILES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}
_FIX = ("Copy {name} again from the Space Ranger output folder (outs/{name}), or re-run "
        "spaceranger count to write it again.")
_NUMERIC_SCALEFACTORS = ("tissue_hires_scalef", "tissue_lowres_scalef", "spot_diameter_fullres",
                         "fiducial_diameter_fullres", "regist_target_img_scalef")

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
    fix = _FIX.format(name=f"spatial/{file.name}")
    try:
        with open(file, encoding="utf-8") as fh:
            first = fh.readline().split(",")[0].strip().strip('"')
        has_header = first.lower() == "barcode"
        pos = pd.read_csv(file, header=0 if has_header else None, index_col=0)
    except UnicodeDecodeError as err:
        raise ReadError(f"{file} could not be read: it holds binary data (byte {err.start} is not text), "
                        f"so it is not a CSV file; it is damaged. {fix}") from None
    except pd.errors.EmptyDataError:
        raise ReadError(f"{file} is empty. {fix}") from None
    except (pd.errors.ParserError, ValueError, OSError) as err:
        raise ReadError(f"{file} could not be read as CSV ({str(err).strip().splitlines()[0]}): it is "
                        f"damaged. {fix}") from None
    if pos.shape[1] != 5:
        raise SpatialDataError(
            f"{file} has {pos.shape[1] + 1} columns; Space Ranger writes 6 (barcode, in_tissue, "
            "array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres). Is it a Space Ranger file?"
        )
    pos.columns = POSITION_COLUMNS
    pos.index = pos.index.astype(str)
    numeric = pos.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1).to_numpy()
    if bad.any():
        last_only = bool(bad[-1]) and int(bad.sum()) == 1
        raise ReadError(
            f"{file} has missing or non-numeric values in {int(bad.sum())} of {len(pos)} rows "
            f"(e.g. barcode {pos.index[bad][0]!r})"
            + (": its last line is incomplete, so the file is truncated" if last_only else ": it is damaged")
            + f". {fix}"
        )
    return numeric


def _read_counts(root: Path, counts_file: str) -> tuple[AnnData, dict]:
    import scanpy as sc

    p = root / counts_file
    fix = _FIX.format(name=counts_file)
    attrs: dict = {}
    if p.is_dir():
        try:
            adata = sc.read_10x_mtx(p, var_names="gene_symbols", make_unique=False)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - gzip, scipy.io and pandas each raise their own
            names = ", ".join(sorted(f.name for f in p.iterdir())) or "none"
            raise ReadError(
                f"{p} could not be read as a 10x matrix folder ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}): one of "
                f"matrix.mtx(.gz), barcodes.tsv(.gz), features.tsv(.gz) is damaged, truncated or missing "
                f"(files there: {names}). {fix}"
            ) from None
    else:
        try:
            adata = sc.read_10x_h5(p)
            import h5py

            with h5py.File(p, "r") as f:
                attrs = dict(f.attrs)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - h5py raises OSError/RuntimeError/KeyError, scanpy others
            raise damaged_hdf5(p, err, what="a 10x feature-barcode matrix (.h5 with a 'matrix' group)",
                               fix=fix) from err
    return adata, attrs


def _decode(value) -> str:
    value = np.asarray(value).ravel()[0] if np.ndim(value) else value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_scalefactors(file: Path) -> dict:
    fix = _FIX.format(name="spatial/scalefactors_json.json")
    data = read_json_object(file, fix=fix)
    for key in _NUMERIC_SCALEFACTORS:
        if key not in data:
            continue
        value = data[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value) and value > 0
        if not ok:
            raise ReadError(f"{file}: {key!r} is {value!r}, but it must be a positive number. {fix}")
    return data


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
    ReadError
        (a :class:`SpatialDataError`) The counts, the positions or ``scalefactors_json.json``
        are damaged, truncated or not of their format: the message names the file, the problem
        and the fix. A damaged tissue image is not an error: a ``UserWarning`` names it and the
        folder is read without it, as when the image is missing.
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
            f"the counts and the spatial folder come from different runs, or the positions file (it lists "
            f"{len(positions)} barcodes) is incomplete."
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
    scalefactors = _read_scalefactors(spatial_dir / "scalefactors_json.json")
    entry: dict = {"images": {}, "scalefactors": scalefactors, "metadata": metadata}
    if load_images:
        damaged = []
        for key, name in IMAGE_FILES.items():
            if (spatial_dir / name).is_file():
                img = load_image_or_warn(spatial_dir / name, fix=_FIX.format(name=f"spatial/{name}"))
                if img is None:
                    damaged.append(name)
                else:
                    entry["images"][key] = img
        if not entry["images"]:
            what = f"the tissue images there are damaged ({', '.join(damaged)})" if damaged else (
                f"none of {', '.join(IMAGE_FILES.values())}")
            warnings.warn(
                f"No readable tissue image in {spatial_dir} ({what}): the spots "
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
