"""Writer to ``.h5ad`` that keeps everything the tasks add, without touching the caller's object."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

_SCALARS = (str, bool, int, float, np.bool_, np.integer, np.floating)


def _key(key: Any, renamed: list[str]) -> str:
    text = str(key)
    if "/" in text:  # h5py would turn "a/b" into nested groups
        renamed.append(text)
        text = text.replace("/", "_")
    return text


def _writable(value: Any, renamed: list[str]) -> Any:
    """A copy of ``value`` that anndata can write (and read back as nearly the same thing)."""
    if value is None or isinstance(value, _SCALARS):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {_key(k, renamed): _writable(v, renamed) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return _frame(value)
    if isinstance(value, pd.Series | pd.Index | pd.Categorical):
        return _writable(np.asarray(value), renamed)
    if sp.issparse(value):
        return sp.csr_matrix(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufU":
            return value
        if value.dtype.kind == "S":
            return np.char.decode(value, "utf-8", "replace")
        if value.dtype.kind == "c":
            return {"real": value.real, "imag": value.imag}
        return np.asarray([str(v) for v in value.ravel()]).reshape(value.shape)
    if isinstance(value, list | tuple):
        if all(isinstance(v, Mapping) for v in value) and value:
            return {str(i): _writable(v, renamed) for i, v in enumerate(value)}
        try:
            arr = np.asarray(value)
        except ValueError:  # ragged
            arr = None
        if arr is not None and arr.dtype.kind in "biufU" and arr.ndim >= 1:
            return arr
        if all(v is None or isinstance(v, _SCALARS | bytes) for v in value):
            return np.asarray(["" if v is None else _writable(v, renamed) for v in value], dtype=str)
        return {str(i): _writable(v, renamed) for i, v in enumerate(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _writable(dataclasses.asdict(value), renamed)
    if hasattr(value, "to_dict") and callable(value.to_dict):
        try:
            return _writable(value.to_dict(), renamed)
        except Exception:  # noqa: BLE001 - fall back to text below
            pass
    return str(value)


def _mixed(values: Any) -> bool:
    """Object values that are not all strings (anndata cannot write those)."""
    s = pd.Series(np.asarray(values, dtype=object)).dropna()
    return not all(isinstance(v, str) for v in s)


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with string column names and writable columns."""
    out = df.copy()
    seen: dict[str, int] = {}
    columns = []
    for c in map(str, out.columns):  # string names, unique (h5ad needs both)
        seen[c] = seen.get(c, -1) + 1
        columns.append(c if seen[c] == 0 else f"{c}-{seen[c]}")
    out.columns = columns
    out.index = out.index.astype(str)
    for col in out.columns:
        series = out[col]
        if isinstance(series.dtype, pd.CategoricalDtype):
            cats = series.cat.categories
            if cats.dtype == object and not all(isinstance(c, str) for c in cats):
                out[col] = series.astype(str).where(series.notna()).astype("category")
        elif series.dtype == object and _mixed(series):
            out[col] = series.astype(str).where(series.notna())
    return out


def write_h5ad(adata: AnnData, path: str | Path) -> Path:
    """Write ``adata`` to ``.h5ad``, keeping every result the tasks add.

    Nested ``uns`` dicts, ``obsm`` DataFrames (with their column names), categorical ``obs`` and
    layers are written as they are. Values anndata cannot write are converted, not refused: tuples
    and lists to arrays, lists of dicts to dicts keyed "0", "1", ..., arbitrary objects to their
    text, mixed-type ``obs`` columns to strings, "/" in ``uns`` keys to "_" (with a warning).
    The caller's AnnData is not modified (anndata's own writer would turn string columns into
    categoricals in place). The file is written next to ``path`` and then renamed onto it, so a
    failed write never leaves a half-written file.

    Parameters
    ----------
    adata
        The AnnData (a view is written as its own data).
    path
        Where to write; ``.h5ad`` is appended when the name has no suffix.

    Returns
    -------
    Path
        The file written.
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"write_h5ad needs an AnnData, got {type(adata).__name__}.")
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".h5ad")
    if adata.is_view:
        adata = adata.copy()  # a new object: the caller's view is untouched
    renamed: list[str] = []
    out = AnnData(
        X=adata.X,
        obs=_frame(adata.obs),
        var=_frame(adata.var),
        uns=_writable(dict(adata.uns), renamed),
        obsm={k: _frame(v) if isinstance(v, pd.DataFrame) else v for k, v in adata.obsm.items()},
        varm={k: _frame(v) if isinstance(v, pd.DataFrame) else v for k, v in adata.varm.items()},
        layers=dict(adata.layers),
        obsp=dict(adata.obsp),
        varp=dict(adata.varp),
    )
    if adata.raw is not None:
        out.raw = adata.raw.to_adata()
    if renamed:
        warnings.warn(
            f"uns keys with '/' were written with '_' instead (h5ad would nest them): {', '.join(renamed)}",
            UserWarning,
            stacklevel=2,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5ad", prefix=f".{path.stem}-", dir=path.parent)
    os.close(fd)
    try:
        out.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
