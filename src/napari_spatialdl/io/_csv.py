"""Reader for counts tables in CSV (genes x cells, as RCTD/spacexr ship them) with coordinates and labels."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._spatial import ReadError, SpatialDataError

_BARCODE = re.compile(r"[ACGTN]{10,}")


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SpatialDataError(f"The {what} file {path} does not exist.")
    fix = "Export the table again, or copy / download it again."
    try:
        table = pd.read_csv(path, index_col=0)
    except UnicodeDecodeError as err:
        raise ReadError(
            f"The {what} file {path} could not be read: it holds binary data (byte {err.start} is not text), "
            f"so it is not a CSV table; it is damaged or in another format. {fix}"
        ) from None
    except pd.errors.EmptyDataError:
        raise ReadError(f"The {what} file {path} is empty. {fix}") from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReadError(
            f"The {what} file {path} could not be read as CSV ({detail}): rows with more fields than the "
            f"header mean a damaged file or another separator (it must be comma-separated). {fix}"
        ) from None
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    return table


def _truncated(table: pd.DataFrame) -> bool:
    """Only the last line of the file has missing values: the file was cut short."""
    bad = table.isna().any(axis=1).to_numpy()
    return len(bad) > 0 and bool(bad[-1]) and int(bad.sum()) == 1


_TRUNCATED = ": its last line is incomplete, so the file looks truncated. Copy or download it again"


def _barcode_like(names: pd.Index) -> float:
    return float(np.mean([bool(_BARCODE.search(n)) for n in names[:200]])) if len(names) else 0.0


def _orient(table: pd.DataFrame, transpose: bool | str, known: pd.Index | None) -> pd.DataFrame:
    """Cells x genes: transpose a genes x cells table (``transpose=True``) or decide ("auto")."""
    if transpose == "auto":
        if known is not None and len(known):
            in_cols = table.columns.isin(known).mean()
            in_rows = table.index.isin(known).mean()
            transpose = bool(in_cols >= in_rows)
        else:
            # 10x-like barcodes name the cells; without them, genes x cells is the default layout.
            transpose = not (_barcode_like(table.index) > 0.5 >= _barcode_like(table.columns))
    elif not isinstance(transpose, bool):
        raise SpatialDataError(f"transpose must be True, False or 'auto', got {transpose!r}.")
    return table.T if transpose else table


def _coords_frame(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    lower = {c.lower(): c for c in table.columns}
    if "x" in lower and "y" in lower:
        xy = table[[lower["x"], lower["y"]]]
    else:
        numeric = table.select_dtypes("number")
        if numeric.shape[1] < 2:
            raise SpatialDataError(
                f"The coordinates file {path} needs columns 'x' and 'y' (or two numeric columns); "
                f"it has: {', '.join(table.columns) or 'none'}."
            )
        xy = numeric.iloc[:, :2]
        warnings.warn(
            f"{path.name} has no 'x'/'y' columns; using {xy.columns[0]!r} as x and {xy.columns[1]!r} as y.",
            UserWarning,
            stacklevel=3,
        )
    xy = xy.apply(pd.to_numeric, errors="coerce")
    if _truncated(xy):
        raise ReadError(f"The coordinates file {path} has missing x/y values in its last row{_TRUNCATED}.")
    return xy.set_axis(["x", "y"], axis=1)


def _mismatch(what: str, path: Path, cells: pd.Index, have: pd.Index) -> str:
    absent = cells[~cells.isin(have)]
    return (
        f"{len(absent)} of {len(cells)} cells/spots of the counts have no entry in the {what} file "
        f"{path.name} (e.g. {', '.join(absent[:3])}; the {what} file has e.g. {', '.join(have[:3])}). "
        f"The barcodes must match: is {path.name} the {what} file of these counts?"
    )


def read_counts_csv(
    counts: str | Path,
    coords: str | Path | None = None,
    *,
    labels: str | Path | None = None,
    labels_key: str = "cell_type",
    transpose: bool | str = "auto",
) -> AnnData:
    """Read a counts table in CSV, with optional spot coordinates and cell labels.

    Parameters
    ----------
    counts
        CSV of raw counts, first column the row names. Genes x cells (RCTD/spacexr layout, e.g.
        ``counts.csv``) or cells x genes, see ``transpose``.
    coords
        CSV with barcodes as first column and columns ``x``, ``y``: becomes ``obsm['spatial']``
        (matched by barcode; every cell of the counts needs coordinates).
    labels
        CSV with barcodes as first column and the label as the next column (e.g. ``cell_types.csv``):
        becomes the categorical ``obs[labels_key]``.
    labels_key
        Name of the ``obs`` column for the labels.
    transpose
        ``True``: the table is genes x cells; ``False``: cells x genes; ``"auto"``: decided by which
        axis carries the barcodes of ``coords``/``labels`` (or 10x-like barcodes), else genes x cells.

    Returns
    -------
    AnnData
        ``X`` the counts (CSR float32), ``obsm['spatial']`` (x, y) when ``coords`` is given, and
        ``obs[labels_key]`` when ``labels`` is given. No image: the spots are shown on their own,
        sized from their spacing.

    Raises
    ------
    SpatialDataError
        Non-numeric tables, or barcodes that do not match between the files.
    ReadError
        (a :class:`SpatialDataError`) A file that is empty, binary, truncated or not CSV: the
        message names the file, the problem and the fix.
    """
    counts = Path(counts)
    table = _read_table(counts, "counts")
    if table.empty:
        raise SpatialDataError(f"The counts file {counts} holds no values.")
    xy = _coords_frame(_read_table(coords, "coordinates"), Path(coords)) if coords is not None else None
    lab = _read_table(labels, "labels") if labels is not None else None
    if lab is not None and lab.shape[1] < 1:
        raise SpatialDataError(f"The labels file {labels} needs a column with the labels after the barcode column.")
    if _truncated(table.apply(pd.to_numeric, errors="coerce")):
        raise ReadError(f"The counts file {counts} has missing values in its last row{_TRUNCATED}.")
    known = None
    if xy is not None or lab is not None:
        known = pd.Index([]).append([f.index for f in (xy, lab) if f is not None])
    table = _orient(table, transpose, known)

    values = table.apply(pd.to_numeric, errors="coerce")
    if values.isna().to_numpy().any():
        bad = values.columns[values.isna().any()][:3]
        raise SpatialDataError(
            f"The counts file {counts} has non-numeric or empty values (e.g. in {', '.join(map(str, bad))}). "
            "It must be a table of counts with gene and cell names as row/column headers."
        )
    X = sp.csr_matrix(values.to_numpy(dtype=np.float32))
    adata = AnnData(X=X, obs=pd.DataFrame(index=table.index.copy()), var=pd.DataFrame(index=table.columns.copy()))
    if not adata.obs_names.is_unique:
        raise SpatialDataError(
            f"The counts file {counts} has repeated cell/spot names: they must be unique barcodes."
        )
    adata.var_names_make_unique()

    if xy is not None:
        if not adata.obs_names.isin(xy.index).all():
            raise SpatialDataError(_mismatch("coordinates", Path(coords), adata.obs_names, xy.index))
        xy = xy[~xy.index.duplicated()].loc[adata.obs_names]
        if not np.isfinite(xy.to_numpy()).all():
            raise SpatialDataError(f"The coordinates file {coords} has missing or non-numeric x/y values.")
        adata.obsm["spatial"] = xy.to_numpy(dtype=np.float64)
    if lab is not None:
        lab = lab[~lab.index.duplicated()]
        found = adata.obs_names.isin(lab.index)
        if not found.any():
            raise SpatialDataError(_mismatch("labels", Path(labels), adata.obs_names, lab.index))
        if not found.all():
            warnings.warn(
                f"{int((~found).sum())} of {adata.n_obs} cells have no label in {Path(labels).name}; "
                f"their obs[{labels_key!r}] is missing (NaN).",
                UserWarning,
                stacklevel=2,
            )
        column = lab.iloc[:, 0].reindex(adata.obs_names)
        adata.obs[labels_key] = pd.Categorical(column.where(column.isna(), column.astype(str)))
    return adata
