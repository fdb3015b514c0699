"""Input checks shared by the tasks. Every error names the problem, the object and the fix.

Each check that can apply to any of a task's AnnDatas takes the name the user knows it by
(``obj="reference"``, ``"spatial"``, ``"query"``; default ``"adata"``) and, where a layer was
chosen, the argument that chose it (``layer_arg="reference_layer"``), so that a message reads
``reference.layers['raw_counts'] not found ... Pass reference_layer=None to use reference.X.``

None of these functions modify the AnnData they are given.
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import numbers
import os
import pathlib
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._errors import InputError

__all__ = [
    "InputError",
    "check_cell_types",
    "check_choice",
    "check_n_latent",
    "check_obs_column",
    "check_obs_key",
    "check_positive",
    "check_spatial",
    "coerce_param",
    "coerce_params",
    "column_name_role",
    "column_problem",
    "columns_for",
    "drop_empty_genes",
    "get_counts",
    "get_matrix",
    "row_sums",
    "shared_genes",
    "subset_counts",
]

ColumnKind = Literal["batch", "labels"]
KINDS: tuple[str, ...] = ("batch", "labels")

#: A column with more distinct values than this fraction of its (non-missing) observations is an
#: ID or a measurement, not a grouping (applied once there are ``MIN_OBS_FOR_FRACTION`` of them).
MAX_DISTINCT_FRACTION = 0.5
MIN_OBS_FOR_FRACTION = 20
#: A numeric (not categorical) column with more distinct values than this is a measurement.
MAX_NUMERIC_CODES = 100
#: The smallest batch a batch column may have.
MIN_BATCH_SIZE = 2
#: A numeric (not categorical) batch column with more distinct values than this, or than
#: ``MAX_BATCH_FRACTION`` of its observations once it has more than ``MIN_CODES_FOR_FRACTION``
#: values, holds grid positions, counts or IDs, not batch codes.
MAX_BATCH_CODES = 50
MAX_BATCH_FRACTION = 0.1
MIN_CODES_FOR_FRACTION = 10

# What a column's name says it holds (the name normalised: lower case, runs of other characters
# as "_"). Conventions of Space Ranger, scanpy, Seurat, Xenium/MERSCOPE and common annotation.
_COORDINATE_NAME = re.compile(
    r"^(?:in_tissue|(?:array|pxl|image|img|grid|spot)_?(?:row|col|column)(?:_.*)?|(?:row|col|column)s?"
    r"|[xyz]|[xyz]_.*|.*_[xyz]|(?:centroid|center|centre|coord|coords|coordinate|position|pos)(?:_.*)?)$")
_MEASUREMENT_NAME = re.compile(
    r"^(?:log1p_)?(?:(?:total|n|num|number_of)_(?:counts?|genes?|cells?|umis?|reads?|molecules?|transcripts?|features?)"
    r"(?:_.*)?|n_genes_by_counts|numi|nread|ncount_.*|nfeature_.*|nfeatures|(?:pct|percent|frac|fraction)_.*"
    r"|transcript_counts|control_.*_counts|size_factors?|.*_(?:counts|score|area|volume|depth))$")
_BATCH_WORDS = ("batch", "batches", "sample", "samples", "section", "sections", "slide", "slides", "donor",
                "donors", "replicate", "replicates", "rep", "library", "libraries", "library_id", "plate", "chip",
                "lane", "run", "dataset", "study", "patient", "individual", "subject", "animal", "mouse",
                "capture_area", "orig_ident", "experiment", "protocol", "technology", "tech", "assay", "flowcell")
_BATCH_NAME = re.compile(r"^(?:.*_)?batch(?:_.*)?$|^(?:" + "|".join(_BATCH_WORDS)
                         + r")(?:_?(?:id|ids|name|key|number|no|nr|idx|index|code)|\d+)?$")
_LABELS_NAME = re.compile(
    r"(?:^|_)(?:cell_?types?|celltypes?|sub_?types?|types?|clusters?|leiden|louvain|regions?|domains?"
    r"|annotations?|annotated|labels?|class|classes|subclass|lineage|niches?|identity|states?)(?:_|$)")


def _normalised(key: object) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(key).lower()).strip("_")


def column_name_role(key: object) -> Literal["coordinate", "measurement", "batch", "labels"] | None:
    """What the name of an ``obs`` column says it holds, or ``None`` when it says nothing.

    ``"coordinate"``: a position (``array_row``, ``array_col``, ``x``, ``pxl_row_in_fullres``,
    ``x_centroid``, ``in_tissue``); ``"measurement"``: a quality-control number per observation
    (``total_counts``, ``n_genes_by_counts``, ``n_cells``, ``pct_counts_mt``, ``nCount_RNA``);
    ``"batch"``: a technical grouping (``batch``, ``sample``, ``section``, ``library_id``,
    ``donor``, ``slide``, ``replicate``, ``sample_id``, ``orig.ident``); ``"labels"``: a
    biological grouping (``cell_type``, ``cluster``, ``leiden``, ``region``, ``annotation``,
    ``true_dominant_cell_type``). A name is only a hint: the drop-downs use it to choose among
    columns that :func:`column_problem` accepts.
    """
    name = _normalised(key)
    if not name:
        return None
    if _COORDINATE_NAME.match(name):
        return "coordinate"
    if _BATCH_NAME.match(name):  # "batch..." or a batch word alone (with an id suffix): "sample_id"
        return "batch"
    if _MEASUREMENT_NAME.match(name):
        return "measurement"
    if re.search(r"(?:^|_)batch(?:_|$)", name):
        return "batch"
    if _LABELS_NAME.search(name):
        return "labels"
    return None


# ----------------------------------------------------------------------------- matrices

def _where(layer: str | None, obj: str = "adata") -> str:
    return f"{obj}.layers[{layer!r}]" if layer else f"{obj}.X"


def _short(values: Iterable[Any], n: int = 3) -> str:
    values = list(values)
    text = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:n])
    return text + (", ..." if len(values) > n else "")


def _all_integers(values: np.ndarray, block: int = 1 << 24) -> bool:
    """Whether every value is a whole number, checked in blocks (no full-size temporaries)."""
    flat = values.ravel(order="K")
    return all(np.all(np.mod(flat[i:i + block], 1) == 0) for i in range(0, flat.size, block))


def _holds_counts(X: Any) -> bool:
    """True when ``X`` is a numeric matrix of finite, non-negative integers (raw counts)."""
    if X is None:
        return False
    try:
        values = X.data if sp.issparse(X) else np.asarray(X)
    except (TypeError, ValueError):
        return False
    if values.dtype.kind not in "biuf" or values.dtype.kind == "b":
        return False
    if values.size == 0 or values.dtype.kind in "iu":
        return values.size == 0 or bool(values.min() >= 0)
    return bool(np.isfinite(values).all() and values.min() >= 0 and _all_integers(values))


def _count_hint(adata: AnnData, obj: str, layer_arg: str, layer: str | None, what: str) -> str:
    """Where the raw counts of ``adata`` are, as a fix; or that it has none and where to get them."""
    layers = [str(k) for k in adata.layers.keys() if k != layer and _holds_counts(adata.layers[k])]
    if layers:
        if len(layers) == 1:
            return f"{obj}.layers[{layers[0]!r}] holds raw counts: pass {layer_arg}={layers[0]!r}."
        return (f"These layers of {obj} hold raw counts: {', '.join(map(repr, layers))}; pass one of them, "
                f"e.g. {layer_arg}={layers[0]!r}.")
    if layer is not None and _holds_counts(adata.X):
        return f"{obj}.X holds raw counts: pass {layer_arg}=None to use it."
    raw = getattr(adata, "raw", None)
    if raw is not None and _holds_counts(raw.X):
        return (f"{obj}.raw.X holds raw counts: copy them into a layer, "
                f"{obj}.layers['counts'] = {obj}.raw[:, {obj}.var_names].X, and pass {layer_arg}='counts'.")
    return (f"{obj} holds no raw counts (neither {obj}.X nor any of its layers holds non-negative integers), "
            f"but {what} needs the raw UMI counts. Read them from the Space Ranger / Cell Ranger output "
            f"(napari_spatialdl.read_visium, scanpy.read_10x_h5), or keep them before normalising "
            f"({obj}.layers['counts'] = {obj}.X.copy() before sc.pp.normalize_total), then pass "
            f"{layer_arg}='counts'.")


def get_matrix(adata: AnnData, layer: str | None = None, *, obj: str = "adata",
               layer_arg: str = "layer") -> np.ndarray | sp.csr_matrix:
    """``adata.X`` or ``adata.layers[layer]`` as float32 (CSR kept sparse), checked for NaN/inf.

    Parameters
    ----------
    adata
        The AnnData.
    layer
        The layer to use; ``None`` uses ``adata.X``.
    obj
        The name of ``adata`` in the messages (``"reference"``, ``"spatial"``, ``"query"``).
    layer_arg
        The argument that chose ``layer`` (``"reference_layer"``), named in the fixes.

    Returns
    -------
    np.ndarray or scipy.sparse.csr_matrix
        The matrix as float32.

    Raises
    ------
    InputError
        Empty AnnData, unknown layer, missing or non-numeric matrix, NaN or infinite values.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"{obj} is empty ({adata.n_obs} observations x {adata.n_vars} genes).")
    have = ", ".join(map(str, adata.layers.keys())) or "none"
    if layer is not None and layer not in adata.layers:
        close = difflib.get_close_matches(str(layer), list(map(str, adata.layers.keys())), n=1)
        hint = f" Did you mean {layer_arg}={close[0]!r}?" if close else ""
        raise InputError(
            f"{obj}.layers[{layer!r}] not found (layers of {obj}: {have}). Pass {layer_arg}=None to use "
            f"{obj}.X{', or one of those layers' if adata.layers else ''}.{hint}"
        )
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        raise InputError(
            f"{obj}.X is empty (None): put the counts in {obj}.X or pass {layer_arg}= with a layer of "
            f"{obj} (layers: {have})."
        )
    try:
        if sp.issparse(X):
            X = sp.csr_matrix(X, dtype=np.float32)
            values = X.data
        else:
            X = np.asarray(X, dtype=np.float32)
            values = X
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{_where(layer, obj)} does not hold numbers ({type(err).__name__}: {err}): it must be a numeric "
            f"matrix of observations x genes."
        ) from None
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise InputError(
            f"{_where(layer, obj)} holds {n_bad} NaN or infinite values. Remove or fill them "
            "(e.g. np.nan_to_num) before running."
        )
    return X


def get_counts(adata: AnnData, layer: str | None = None, *, what: str = "this model", obj: str = "adata",
               layer_arg: str = "layer") -> np.ndarray | sp.csr_matrix:
    """Raw counts for a count model: non-negative integers, no NaN, no empty observation.

    Parameters
    ----------
    adata, layer, obj, layer_arg
        As :func:`get_matrix`.
    what
        The method that needs counts, for the messages (``"the scVI imputation"``).

    Returns
    -------
    np.ndarray or scipy.sparse.csr_matrix
        The counts as float32.

    Raises
    ------
    InputError
        As :func:`get_matrix`, and when the values are negative or not integers (the fix names a
        layer of ``adata`` that holds counts, or says that it holds none and where to get them), or
        an observation has no counts.
    """
    X = get_matrix(adata, layer, obj=obj, layer_arg=layer_arg)
    values = X.data if sp.issparse(X) else X
    if values.size and values.min() < 0:
        raise InputError(
            f"{_where(layer, obj)} has negative values (min {float(values.min()):.3g}), but {what} needs raw "
            f"counts. {_count_hint(adata, obj, layer_arg, layer, what)}"
        )
    if values.size and not _all_integers(values):
        raise InputError(
            f"{_where(layer, obj)} holds non-integer values (e.g. {values[np.mod(values, 1) != 0][0]:.3g}): "
            f"it looks normalised or log-transformed, but {what} needs raw integer counts. "
            f"{_count_hint(adata, obj, layer_arg, layer, what)}"
        )
    totals = np.asarray(X.sum(axis=1)).ravel()
    n_empty = int((totals == 0).sum())
    if n_empty:
        raise InputError(
            f"{n_empty} of {adata.n_obs} observations of {obj} have no counts in {_where(layer, obj)}. "
            f"Remove them first, e.g. sc.pp.filter_cells({obj}, min_counts=1)."
        )
    return X


def subset_counts(X, columns: np.ndarray, rows: np.ndarray | None = None):
    """Rows (optional) and columns of a count matrix; CSR stays CSR, dense becomes an ndarray.

    Every column in its own order (a query whose genes are all shared) is not copied: at a million
    cells that copy is as large as X. Callers only read the result.
    """
    columns = np.asarray(columns)
    if rows is not None:
        X = X[rows]
    if not (columns.size == X.shape[1] and np.array_equal(columns, np.arange(X.shape[1]))):
        X = X[:, columns]
    return sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)


def row_sums(X) -> np.ndarray:
    """Total counts per row of a dense or sparse matrix, as a flat array."""
    return np.asarray(X.sum(axis=1)).ravel()


def drop_empty_genes(X, var_names: pd.Index) -> tuple[object, pd.Index, np.ndarray]:
    """Drop genes with no counts at all (they carry no information); return the mask too."""
    keep = _nonzero_columns(X)
    if keep.sum() == 0:
        raise InputError("Every gene is zero in every observation: there is nothing to model.")
    if keep.all():  # nothing to drop: no copy of X (at a million cells it is GBs)
        return X, var_names, keep
    return X[:, keep], var_names[keep], keep


def _nonzero_columns(X: Any, block: int = 1 << 24) -> np.ndarray:
    """Which columns hold a non-zero value, read in blocks (no boolean copy of X)."""
    keep = np.zeros(X.shape[1], dtype=bool)
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        for i in range(0, X.nnz, block):
            stored = slice(i, i + block)
            keep[X.indices[stored][X.data[stored] != 0]] = True
        return keep
    X = np.asarray(X)
    step = max(1, block // max(1, X.shape[1]))
    for i in range(0, X.shape[0], step):
        keep |= (X[i:i + step] != 0).any(axis=0)
    return keep


# ----------------------------------------------------------------------------- obs columns

class _Problem(typing.NamedTuple):
    reason: str  # starts with a verb: "holds ...", "has ..."; reads after "obs['key'] "
    fix: str  # one sentence; {obj} and {key} are filled in by check_obs_column
    suggest: bool = True  # list the columns that fit


def _value_counts(s: pd.Series) -> tuple[pd.Series, int]:
    """Observations per distinct non-missing value, and the number of missing values.

    A categorical column is counted from its codes (no copy of the values).
    """
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = np.asarray(s.cat.codes)
        present = codes >= 0
        per = np.bincount(codes[present], minlength=len(s.cat.categories))
        used = per > 0
        return pd.Series(per[used], index=s.cat.categories[used]), int((~present).sum())
    missing = s.isna()
    return s[~missing].value_counts(sort=False), int(missing.sum())


def _column_check(adata: AnnData, key: str, kind: str, *, allow_missing_values: bool | None = None,
                  min_values: int = 2) -> _Problem | None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}.")
    if allow_missing_values is None:
        allow_missing_values = kind == "labels"  # unlabelled cells are normal; a cell without batch is not
    if key not in adata.obs.columns:
        return _Problem("is not a column", "Choose a column of {obj}.obs.")
    s = adata.obs[key]
    if isinstance(s, pd.DataFrame):
        return _Problem("names several columns (the column name is repeated)",
                        "Rename the repeated columns of {obj}.obs so that each name is unique.")
    dtype = s.dtype
    numeric = False
    if not isinstance(dtype, pd.CategoricalDtype):
        if dtype.kind in "mM":
            return _Problem(f"holds dates or times ({dtype}), not categories",
                            "Use a column that names each observation's {kind}.")
        if dtype.kind == "c":
            return _Problem("holds complex numbers, not categories",
                            "Use a column that names each observation's {kind}.")
        if dtype.kind == "f":
            v = s.to_numpy(dtype=np.float64, na_value=np.nan)
            v = v[~np.isnan(v)]
            if not np.isfinite(v).all():
                return _Problem("holds infinite values: it is a measurement, not categories",
                                "Use a column of {kind} names or codes.")
            fractional = v[np.mod(v, 1) != 0]
            if fractional.size:
                return _Problem(
                    f"holds continuous numbers (e.g. {fractional[0]:.6g}; {len(np.unique(v))} distinct values), "
                    f"not categories: a measurement such as total counts does not group observations",
                    "A {kind} column names groups (e.g. sample or cell-type names).")
        numeric = dtype.kind in "iuf"
    try:
        counts, n_missing = _value_counts(s)
    except TypeError:  # unhashable values (lists, dicts)
        return _Problem("holds values that are not text or numbers (e.g. lists)",
                        "Use a column of {kind} names or codes.")
    n_present = int(counts.sum())
    n_distinct = int(len(counts))
    if n_missing and not allow_missing_values:
        return _Problem(
            f"has {n_missing} missing values (NaN) of {adata.n_obs}",
            "Fill them or drop those observations before using it as {argument}, e.g. "
            "{obj} = {obj}[{obj}.obs[{key!r}].notna()].copy().", suggest=False)
    if n_distinct < min_values:
        values = f" ({_short(counts.index)})" if n_distinct else ""
        return _Problem(
            f"has {n_distinct} distinct value{'s' if n_distinct != 1 else ''}{values}; "
            f"{{argument}} needs at least {min_values}",
            "Choose a column with at least " + str(min_values) + " groups.")
    if numeric and n_distinct > MAX_NUMERIC_CODES:
        lo, hi = counts.index.min(), counts.index.max()
        return _Problem(
            f"holds {n_distinct} distinct numbers ({lo:.6g} to {hi:.6g}) for {n_present} observations: "
            f"it looks like a measurement (e.g. counts per observation), not {kind} codes",
            "If these numbers really are {kind} codes, make the column categorical first: "
            "{obj}.obs[{key!r}] = {obj}.obs[{key!r}].astype(str).astype('category').")
    if (n_present >= MIN_OBS_FOR_FRACTION and n_distinct > MAX_DISTINCT_FRACTION * n_present) or (
            n_present >= 3 and n_distinct == n_present):
        return _Problem(
            f"has {n_distinct} distinct values for {n_present} observations (e.g. {_short(counts.index)}): "
            f"a different value for (nearly) every observation, like an ID or a barcode, not a {kind} grouping",
            "Use a column that groups observations (e.g. the sample or the cell type).")
    if kind == "batch" and not isinstance(dtype, pd.CategoricalDtype):
        role = column_name_role(key)
        insist = ("If these values really are batch codes, make the column categorical first: "
                  "{obj}.obs[{key!r}] = {obj}.obs[{key!r}].astype(str).astype('category').")
        if role in ("coordinate", "measurement"):
            what = ("a position on the slide (grid row or column, pixel or in-tissue flag)" if role == "coordinate"
                    else "a quality-control measurement (counts, genes or cells per observation)")
            return _Problem(f"is named like {what}, not batch codes: it does not say which sample, section or "
                            f"library an observation came from", insist)
        if numeric and (n_distinct > MAX_BATCH_CODES or (
                n_distinct > MIN_CODES_FOR_FRACTION and n_distinct > MAX_BATCH_FRACTION * n_present)):
            lo, hi = counts.index.min(), counts.index.max()
            return _Problem(
                f"holds {n_distinct} distinct numbers ({lo:.6g} to {hi:.6g}) for {n_present} observations: too "
                f"many for batch codes (at most {MAX_BATCH_CODES}, and at most "
                f"{MAX_BATCH_FRACTION:.0%} of the observations); it looks like grid positions, counts or IDs",
                insist)
    if kind == "batch":
        small = counts[counts < MIN_BATCH_SIZE]
        if len(small):
            listed = ", ".join(f"{v!r} ({n})" for v, n in list(small.items())[:5])
            more = f" and {len(small) - 5} more" if len(small) > 5 else ""
            values = list(map(str, small.index[:5]))
            return _Problem(
                f"has {len(small)} batch{'es' if len(small) != 1 else ''} with fewer than {MIN_BATCH_SIZE} "
                f"observations: {listed}{more}",
                "A batch seen in one observation cannot be told apart from that observation's biology. "
                "Drop those observations, e.g. {obj} = {obj}[~{obj}.obs[{key!r}].isin(" + repr(values)
                + ")].copy(), or merge each into a related batch.", suggest=False)
    return None


def column_problem(adata: AnnData, key: str, kind: ColumnKind, *, allow_missing_values: bool | None = None,
                   min_values: int = 2) -> str | None:
    """Why ``adata.obs[key]`` cannot serve as a ``kind`` column, in one line; ``None`` when it can.

    Cheap enough to filter drop-downs: a categorical column is counted from its codes, without a
    copy of its values. The rules (the same for :func:`check_obs_column`):

    - **continuous numbers** (a float column with non-integer values, e.g. ``total_counts``
      after normalisation), infinities, dates or complex numbers are refused for both kinds;
    - a **numeric column with more than** ``MAX_NUMERIC_CODES`` (100) distinct values is a
      measurement (e.g. raw ``total_counts``, ``n_genes``), not codes; a categorical column is
      taken as categories whatever its values, so casting to ``category`` is the way to insist;
    - a column with **a different value for (nearly) every observation** is an ID, barcode or
      measurement: refused when the distinct values exceed ``MAX_DISTINCT_FRACTION`` (50 %) of
      the non-missing observations once there are ``MIN_OBS_FOR_FRACTION`` (20) of them, or
      when every one of at least 3 observations has its own value;
    - at least ``min_values`` (2) distinct values;
    - **missing values**: refused for ``"batch"`` (every observation has a batch), allowed for
      ``"labels"`` (unlabelled cells are ignored or predicted) unless ``allow_missing_values``
      says otherwise;
    - **batch only, numeric or text (not categorical) columns**: a column **named like a
      position** (``array_row``, ``array_col``, ``x``, ``in_tissue``) or **a quality-control
      measurement** (``total_counts``, ``n_genes_by_counts``, ``n_cells``; see
      :func:`column_name_role`), and a numeric column with more than ``MAX_BATCH_CODES`` (50)
      distinct values, or more than ``MIN_CODES_FOR_FRACTION`` (10) that are over
      ``MAX_BATCH_FRACTION`` (10 %) of the observations, is not a batch. Casting it to
      ``category`` is the way to insist;
    - **batch only**: every batch needs at least ``MIN_BATCH_SIZE`` (2) observations. A batch
      covariate seen in a single observation lets the model explain all of that observation's
      biology as batch effect (the correction for it is not identifiable), and per-batch
      statistics (Harmony's, scVI's batch-specific dispersions) have nothing to be estimated
      from. Two observations is the least that separates the batch from the cell; the rule is
      kept at 2 so that only clear mistakes are refused. Labels have their own size rule,
      :func:`check_cell_types`, applied to the cells that are actually used.

    Boolean columns are fine for both kinds (two groups).

    Parameters
    ----------
    adata
        The AnnData.
    key
        The ``obs`` column.
    kind
        ``"batch"`` or ``"labels"``.
    allow_missing_values
        Whether NaN values are acceptable; ``None``: only for labels.
    min_values
        The fewest distinct values (1 for a query's batch in ``map_query``).

    Returns
    -------
    str or None
        A reason that reads after the column's name, starting with a verb (``"holds continuous
        numbers (e.g. 9713.5; ...), not categories ..."``), or ``None``.
    """
    problem = _column_check(adata, key, kind, allow_missing_values=allow_missing_values, min_values=min_values)
    if problem is None:
        return None
    return problem.reason.replace("{argument}", f"a {kind} column")


def columns_for(adata: AnnData, kind: ColumnKind, *, allow_missing_values: bool | None = None,
                exclude: Iterable[str] = ()) -> list[str]:
    """The ``obs`` columns of ``adata`` that :func:`column_problem` accepts as ``kind``, in order."""
    skip = set(exclude)
    return [str(c) for c in adata.obs.columns
            if c not in skip and _column_check(adata, c, kind, allow_missing_values=allow_missing_values) is None]


def offered_columns(adata: AnnData, kind: ColumnKind, *, min_values: int = 2) -> list[str]:
    """The ``obs`` columns a drop-down offers as ``kind``: those that fit, narrowed to plausible ones.

    Every column offered passes :func:`column_problem`; of those:

    - **batch**: napari-spatialdl's own results (``spatialdl_*``) are left out, and so are the
      columns whose name says they hold biology (cell types, clusters, regions:
      ``column_name_role(key) == "labels"``), as long as another column fits: integrating over the
      cell types would remove the very differences the analysis is after. Only when nothing else
      fits are those offered (a region can be a batch in rare designs, never by default);
    - **labels**: numeric and boolean columns (codes, flags, measurements) are left out, and so
      are the columns named like a batch, a position or a measurement (``section``, ``sample``,
      ``array_row``, ``n_cells``): the labels column names cell types or groups of biology.

    Parameters
    ----------
    adata
        The AnnData.
    kind
        ``"batch"`` or ``"labels"``.
    min_values
        The fewest distinct values (1 for a query's batch).

    Returns
    -------
    list of str
        Column names, in the order of ``adata.obs``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}.")
    fits = [str(c) for c in adata.obs.columns
            if _column_check(adata, c, kind, min_values=min_values) is None]
    if kind == "batch":
        fits = [c for c in fits if not c.startswith("spatialdl_")]
        plausible = [c for c in fits if column_name_role(c) != "labels"]
        return plausible or fits
    out = []
    for c in fits:
        dtype = adata.obs[c].dtype
        if not isinstance(dtype, pd.CategoricalDtype) and dtype.kind in "biuf":
            continue
        if column_name_role(c) in ("batch", "coordinate", "measurement"):
            continue
        out.append(c)
    return out


def _as_strings(s: pd.Series, keep_missing: bool) -> pd.Series:
    """String values (integer-valued floats written as integers); missing values None or "nan"."""
    if not isinstance(s.dtype, pd.CategoricalDtype) and s.dtype.kind == "f":
        s = s.astype("Int64")
    out = s.astype(str).astype(object)
    if keep_missing:
        out = out.where(s.notna().to_numpy(), None)
    return out


def check_obs_column(adata: AnnData, key: str, *, argument: str, kind: ColumnKind, obj: str = "adata",
                     allow_missing_values: bool = False, min_values: int = 2) -> pd.Series:
    """``adata.obs[key]`` checked for the role ``kind``, as strings.

    The rules are those of :func:`column_problem`. Every refusal names the column, the object,
    the argument, the reason and the fix, and lists the columns of ``obs`` that would fit.

    Parameters
    ----------
    adata
        The AnnData.
    key
        The column.
    argument
        The argument that named the column (``"batch_key"``, ``"labels_key"``).
    kind
        ``"batch"`` or ``"labels"``.
    obj
        The name of ``adata`` in the messages.
    allow_missing_values
        Accept NaN (unlabelled cells); they come back as ``None``.
    min_values
        The fewest distinct values.

    Returns
    -------
    pd.Series
        The values as ``str`` (object dtype, integer-valued floats without ``.0``), indexed like
        ``adata.obs``; missing values are ``None`` when allowed.

    Raises
    ------
    InputError
        The column is absent or does not fit the role.
    """
    try:
        present = key is not None and key in adata.obs.columns
    except TypeError:  # unhashable
        present = False
    if not present:
        fits = columns_for(adata, kind, allow_missing_values=allow_missing_values)
        others = [str(c) for c in adata.obs.columns if c not in fits]
        if key is None:
            head = f"{argument} is needed: pass the name of the {obj}.obs column holding each observation's {kind}."
        else:
            close = difflib.get_close_matches(str(key), list(map(str, adata.obs.columns)), n=1)
            head = (f"{argument}={key!r} is not a column of {obj}.obs."
                    + (f" Did you mean {argument}={close[0]!r}?" if close else ""))
        raise InputError(
            head + f" Columns of {obj}.obs that fit a {kind} column: {', '.join(fits) or 'none'}"
            + (f" (other columns: {', '.join(others)})." if others else ".")
        )
    problem = _column_check(adata, key, kind, allow_missing_values=allow_missing_values, min_values=min_values)
    if problem is not None:
        fill = {"obj": obj, "key": key, "kind": kind, "argument": argument}
        reason = problem.reason.replace("{argument}", argument)
        fix = problem.fix.replace("{key!r}", repr(key))
        for name, value in fill.items():
            fix = fix.replace("{" + name + "}", str(value))
        message = f"{obj}.obs[{key!r}] cannot be used as {argument}: it {reason}. {fix}"
        if problem.suggest:
            fits = columns_for(adata, kind, allow_missing_values=allow_missing_values, exclude=[key])
            message += (f" Columns of {obj}.obs that fit a {kind} column: {', '.join(fits)}." if fits else
                        f" No column of {obj}.obs fits a {kind} column.")
        raise InputError(message)
    return _as_strings(adata.obs[key], allow_missing_values)


def _kind_of(argument: str) -> str | None:
    name = argument.lower()
    if "batch" in name:
        return "batch"
    if "label" in name or "cell_type" in name:
        return "labels"
    return None


def check_obs_key(adata: AnnData, key: str, argument: str, *, min_values: int = 2,
                  allow_missing_values: bool = False, obj: str = "adata", kind: ColumnKind | None = None) -> pd.Series:
    """Compatible front of :func:`check_obs_column` (prefer that, with an explicit ``kind``).

    ``kind=None`` takes the role from the argument's name (``"batch"`` in it: batch; ``"label"``
    or ``"cell_type"``: labels). For any other argument only the presence of the column, its
    missing values and its number of distinct values are checked.

    Returns
    -------
    pd.Series
        The values as strings; missing values ``None`` when ``allow_missing_values``.
    """
    kind = kind or _kind_of(argument)
    if kind is not None:
        return check_obs_column(adata, key, argument=argument, kind=kind, obj=obj,
                                allow_missing_values=allow_missing_values, min_values=min_values)
    if key is None or key not in adata.obs:
        cols = [str(c) for c in adata.obs.columns if adata.obs[c].dtype.name in ("category", "object", "bool")]
        raise InputError(
            f"{argument}={key!r} is not a column of {obj}.obs. "
            f"Categorical columns available: {', '.join(cols) or 'none'}."
        )
    values = adata.obs[key]
    if values.isna().any() and not allow_missing_values:
        raise InputError(
            f"{obj}.obs[{key!r}] has {int(values.isna().sum())} missing values: fill or drop them "
            f"before using it as {argument}."
        )
    n = values.dropna().nunique()
    if n < min_values:
        raise InputError(
            f"{obj}.obs[{key!r}] has {n} distinct value(s); {argument} needs at least {min_values}. "
            "Choose another column."
        )
    return _as_strings(values, allow_missing_values)


def check_cell_types(labels: pd.Series | np.ndarray | Iterable[Any], *, labels_key: str, obj: str = "reference",
                     min_cells: int = 2, context: str = "") -> pd.Series:
    """One rule for the cell types of a reference (deconvolution and annotation alike).

    Pass the labels of the cells that will actually be used (after dropping unlabelled cells and
    cells without counts in the shared genes); missing values (None/NaN) are ignored.

    Parameters
    ----------
    labels
        One label per reference cell.
    labels_key
        The ``obs`` column the labels came from, for the messages.
    obj
        The name of the AnnData the labels came from.
    min_cells
        The fewest labelled cells a type needs: its expression profile (or classifier) is
        learnt from them, and one cell is noise, not a profile.
    context
        Appended to the count in the messages, e.g. ``"with counts in the 276 shared genes"``.

    Returns
    -------
    pd.Series
        Cells per type (index: the type, sorted), when every rule holds.

    Raises
    ------
    InputError
        Fewer than 2 types, or a type with fewer than ``min_cells`` cells: the message names the
        types and their counts and how to drop or merge them.
    """
    values = pd.Series(np.asarray(labels, dtype=object) if not isinstance(labels, pd.Series) else labels)
    values = values[values.notna()].astype(str)
    counts = values.value_counts().sort_index()
    where = f"{obj}.obs[{labels_key!r}]"
    among = f" among the {len(values)} labelled cells{' ' + context if context else ''}"
    if len(counts) < 2:
        only = f" ({_short(counts.index)})" if len(counts) else ""
        raise InputError(
            f"{where} has {len(counts)} cell type{'s' if len(counts) != 1 else ''}{only}{among}: at least 2 "
            f"are needed. Pass labels_key= a column of {obj}.obs with several cell types, or label more cells."
        )
    few = counts[counts < min_cells]
    if len(few):
        listed = ", ".join(f"{t!r} ({n} cell{'s' if n != 1 else ''})" for t, n in list(few.items())[:8])
        more = f" and {len(few) - 8} more" if len(few) > 8 else ""
        drop = repr(list(few.index[:8]))
        raise InputError(
            f"{where} has {len(few)} cell type{'s' if len(few) != 1 else ''} with fewer than {min_cells} "
            f"cells{among}: {listed}{more}. Each type needs at least {min_cells} cells to learn its expression. "
            f"Drop them ({obj} = {obj}[~{obj}.obs[{labels_key!r}].isin({drop})].copy()), merge them into a "
            f"related type, or label more cells of them."
        )
    return counts


# ----------------------------------------------------------------------------- genes, space

def _duplicates(names: pd.Index) -> pd.Index:
    return names[names.duplicated()].unique()


def shared_genes(a: AnnData, b: AnnData, *, names: tuple[str, str] = ("spatial", "reference"),
                 min_genes: int = 10) -> pd.Index:
    """Genes present in both AnnDatas, in ``a``'s order; an error when too few overlap.

    Parameters
    ----------
    a, b
        The two AnnDatas.
    names
        Their names in the messages (``("query", "reference")``).
    min_genes
        The fewest shared genes.

    Raises
    ------
    InputError
        Repeated gene names (the message says in which object, with examples, and the fix
        ``.var_names_make_unique()``), or fewer than ``min_genes`` shared genes.
    """
    problems = []
    for adata, name in ((a, names[0]), (b, names[1])):
        if not adata.var_names.is_unique:
            dup = _duplicates(adata.var_names)
            problems.append(f"{name} has {len(dup)} gene name{'s' if len(dup) != 1 else ''} that occur more than "
                            f"once (e.g. {_short(dup)}): call {name}.var_names_make_unique() first")
    if problems:
        raise InputError("Gene names must be unique to match genes between the two datasets: "
                         + "; ".join(problems) + ".")
    common = a.var_names[a.var_names.isin(b.var_names)]
    if len(common) < min_genes:
        raise InputError(
            f"Only {len(common)} genes overlap between {names[0]} ({a.n_vars} genes) and "
            f"{names[1]} ({b.n_vars} genes); at least {min_genes} are needed. Check that both use the "
            f"same gene identifiers (symbols vs Ensembl IDs, species, case). "
            f"Examples: {list(a.var_names[:3])} vs {list(b.var_names[:3])}."
        )
    return common


def check_spatial(adata: AnnData, obj: str = "adata") -> np.ndarray:
    """``adata.obsm['spatial']`` as an (n_obs, 2) float array of (x, y), checked.

    Refused: missing, non-numeric, not two-dimensional, fewer than 2 columns, a number of rows
    other than ``n_obs``, NaN or infinite values. With 3 or more columns (x, y, z) the first two
    are used, silently. The same rules as :func:`napari_spatialdl.io.full_res_coordinates`.
    """
    from ..io._spatial import full_res_coordinates

    if "spatial" not in adata.obsm:
        raise InputError(
            f"{obj}.obsm['spatial'] is missing: this needs spot coordinates. Read the data with "
            "napari_spatialdl.read_visium / read_counts_csv(coords=...), or set "
            f"{obj}.obsm['spatial'] to an (n_obs, 2) array of x, y."
        )
    return full_res_coordinates(adata, obj=obj)


# ----------------------------------------------------------------------------- parameters

def check_n_latent(n_latent: int, n_obs: int, n_genes: int) -> None:
    """InputError unless 1 <= ``n_latent`` < min(observations, genes)."""
    if n_latent < 1:
        raise InputError(f"n_latent must be at least 1, got {n_latent}.")
    if n_latent >= min(n_obs, n_genes):
        raise InputError(
            f"n_latent={n_latent} is not smaller than the number of observations ({n_obs}) and "
            f"genes ({n_genes}): choose n_latent < {min(n_obs, n_genes)}."
        )


def check_positive(**values: float) -> None:
    """InputError for the first value that is not > 0 (``name=value`` keyword arguments)."""
    for name, value in values.items():
        if (value is None or isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not np.isfinite(value) or value <= 0):
            raise InputError(f"{name} must be a positive number, got {value!r}.")


def check_choice(name: str, value: object, choices: tuple) -> None:
    """InputError unless ``value`` is one of ``choices`` (listed in the message)."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


_EMPTY = inspect.Parameter.empty
_NONE_TYPE = type(None)
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {k: getattr(builtins, k) for k in ("int", "float", "bool", "str", "bytes", "list",
                                                             "tuple", "dict", "set", "object", "type")}
    ns.update({k: getattr(typing, k) for k in typing.__all__ if hasattr(typing, k)})
    ns.update(Path=pathlib.Path, np=np, pd=pd, AnnData=AnnData)
    return ns


def _resolve(annotation: Any) -> Any:
    """A resolved annotation; strings (``from __future__ import annotations``) are evaluated."""
    if isinstance(annotation, str):
        try:
            return eval(annotation, {"__builtins__": {}}, _namespace())  # noqa: S307 - source annotations only
        except Exception as err:  # noqa: BLE001
            raise TypeError(f"Cannot resolve the annotation {annotation!r} ({err}); pass the resolved type, or "
                            "use coerce_params(func, ...), which resolves it in the function's module.") from None
    if isinstance(annotation, typing.ForwardRef):
        return _resolve(annotation.__forward_arg__)
    return annotation


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _describe(annotation: Any) -> str:
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is bool:
        return "True or False"
    if annotation is str:
        return "text (a string)"
    if annotation is _NONE_TYPE or annotation is None:
        return "None"
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(annotation)))
    if _is_union(annotation):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, os.PathLike):
        return "a file path"
    origin = typing.get_origin(annotation)
    if isinstance(origin, type):
        return f"a {origin.__name__}"
    if isinstance(annotation, type):
        return f"a {annotation.__name__}"
    return str(annotation)


def _shown(value: Any) -> str:
    text = repr(value)
    return (text[:57] + "...") if len(text) > 60 else text


def _refuse(name: str, value: Any, annotation: Any, extra: str = "") -> InputError:
    return InputError(f"{name} must be {_describe(annotation)}, got {_shown(value)} ({type(value).__name__}).{extra}")


def _coerce_one(name: str, value: Any, ann: Any) -> Any:
    """``value`` as the single (non-union) annotation ``ann``; InputError when it cannot be."""
    origin = typing.get_origin(ann)
    if ann is _NONE_TYPE or ann is None:
        if value is None:
            return None
        raise _refuse(name, value, ann)
    if origin is Literal:
        choices = typing.get_args(ann)
        for c in choices:
            if value is c or (type(value) is type(c) and value == c):
                return c
        if isinstance(value, str):
            for c in choices:
                if not isinstance(c, str) and str(c) == value.strip():
                    return c
        if isinstance(value, np.generic):
            return _coerce_one(name, value.item(), ann)
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {_shown(value)}.")
    if ann is bool:
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, numbers.Integral) and int(value) in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _refuse(name, value, ann)
    if ann is int:
        if isinstance(value, bool | np.bool_):
            raise _refuse(name, value, ann, " Pass a number, not True/False.")
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            if np.isfinite(float(value)) and float(value).is_integer():
                return int(value)
            raise _refuse(name, value, ann)
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                pass
            try:
                as_float = float(text)
            except ValueError:
                raise _refuse(name, value, ann) from None
            if np.isfinite(as_float) and as_float.is_integer():
                return int(as_float)
        raise _refuse(name, value, ann)
    if ann is float:
        if isinstance(value, bool | np.bool_):
            raise _refuse(name, value, ann, " Pass a number, not True/False.")
        if isinstance(value, numbers.Real):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise _refuse(name, value, ann) from None
        else:
            raise _refuse(name, value, ann)
        if not np.isfinite(number):
            raise InputError(f"{name} must be a finite number, got {_shown(value)}.")
        return number
    if ann is str:
        if isinstance(value, str):
            return value
        if isinstance(value, np.str_):
            return str(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _refuse(name, value, ann)
    if isinstance(ann, type) and issubclass(ann, os.PathLike):
        if isinstance(value, ann):
            return value
        if isinstance(value, str | os.PathLike):
            try:
                return ann(value)
            except TypeError:
                raise _refuse(name, value, ann) from None
        raise _refuse(name, value, ann)
    if isinstance(origin, type):  # list[str], tuple[int, ...], Sequence[str]: the container, not its items
        if isinstance(value, origin):
            return value
        if origin in (list, tuple) and isinstance(value, list | tuple):
            return origin(value)
        raise _refuse(name, value, ann)
    if ann in (Any, _EMPTY, object) or origin is not None:
        return value
    if isinstance(ann, type):
        try:
            ok = isinstance(value, ann)
        except TypeError:  # a Protocol that is not runtime-checkable
            return value
        if ok:
            return value
        raise _refuse(name, value, ann)
    return value  # TypeVar and the like: nothing to check


def coerce_param(name: str, value: Any, annotation: Any, default: Any = _EMPTY) -> Any:
    """``value`` converted to what ``annotation`` asks, or an InputError that says why not.

    ``"10"`` becomes 10 for ``int``, ``"0.5"`` 0.5 for ``float``, ``"true"``/``"no"``/0/1 a bool;
    refused are ``"ten"`` and ``10.5`` for ``int`` (``10.0`` is 10), ``True`` for ``int`` or
    ``float``, text that is not a number for ``float``, NaN/inf for ``float``, ``None`` unless the
    annotation allows it (``X | None``, ``Optional[X]``), and for ``Literal[...]`` anything but its
    values (listed in the message; ``"1"`` matches ``Literal[1]``).

    Parameters
    ----------
    name
        The parameter, for the messages (``"max_epochs must be an integer, got '10.5' (str)."``).
    value
        The value given.
    annotation
        The parameter's annotation: a type, ``X | None``, ``typing.Optional``/``Union``,
        ``Literal[...]``, ``Annotated[...]``, or its source text (evaluated with the builtins and
        ``typing`` names; for other names use :func:`coerce_params`). Containers (``list[str]``)
        are checked as containers only; unknown classes with ``isinstance``.
    default
        The parameter's default: with no annotation (``inspect.Parameter.empty`` or ``Any``) the
        type of a bool/int/float/str default is the one asked for. It never makes ``None`` valid.

    Returns
    -------
    Any
        The converted value.

    Raises
    ------
    InputError
        The value does not fit.
    """
    ann = _strip_annotated(_resolve(annotation))
    if ann in (_EMPTY, Any):
        if isinstance(default, bool | int | float | str) and value is not None:
            ann = type(default)
        else:
            return value
    if _is_union(ann):
        arms = [_strip_annotated(a) for a in typing.get_args(ann)]
        if value is None:
            if _NONE_TYPE in arms:
                return None
            raise _refuse(name, value, ann)
        arms = [a for a in arms if a is not _NONE_TYPE]
        for arm in arms:  # a value that already has one of the types keeps it (int | str: 3 stays 3)
            if isinstance(arm, type) and arm in (int, float, bool, str) and type(value) is arm:
                return value
        for arm in arms:
            try:
                return _coerce_one(name, value, arm)
            except InputError:
                continue
        raise _refuse(name, value, ann)
    if value is None and not (typing.get_origin(ann) is Literal and None in typing.get_args(ann)):
        if ann in (_NONE_TYPE, None):
            return None
        hint = f" Pass {_describe(ann)}" + (f" (the default is {default!r})." if default is not _EMPTY else ".")
        raise _refuse(name, value, ann, hint)
    return _coerce_one(name, value, ann)


def coerce_params(func: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``params`` for ``func``, each converted as :func:`coerce_param` does.

    The annotations are resolved with ``typing.get_type_hints`` (so string annotations from
    ``from __future__ import annotations`` work); one that cannot be resolved is left unchecked.

    Parameters
    ----------
    func
        The function (a ``functools.partial`` or a wrapper with ``__wrapped__`` is followed).
    params
        Parameter name -> value.

    Returns
    -------
    dict
        The same names with the converted values (defaults are not added).

    Raises
    ------
    InputError
        A name that is not a parameter of ``func`` (the message lists the valid ones and the
        closest match), or a value that does not fit its annotation.
    """
    target = getattr(func, "func", func)
    target = inspect.unwrap(target)
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - names only imported under TYPE_CHECKING: resolve one by one
        hints = {}
        for pname, p in sig.parameters.items():
            try:
                hints[pname] = _resolve(p.annotation)
            except TypeError:
                hints[pname] = _EMPTY
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    valid = [n for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    fname = getattr(target, "__name__", "the function")
    out: dict[str, Any] = {}
    for pname, value in params.items():
        if pname not in sig.parameters or sig.parameters[pname].kind in (inspect.Parameter.VAR_KEYWORD,
                                                                         inspect.Parameter.VAR_POSITIONAL):
            if accepts_any:
                out[pname] = value
                continue
            close = difflib.get_close_matches(pname, valid, n=1)
            raise InputError(
                f"{fname}() has no parameter {pname!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                + f". Valid parameters: {', '.join(valid) or 'none'}."
            )
        p = sig.parameters[pname]
        out[pname] = coerce_param(pname, value, hints.get(pname, p.annotation), p.default)
    return out


def method_input(adata: AnnData, layer: str | None, *, method: Any, task: str, obj: str = "adata",
                 layer_arg: str = "layer") -> np.ndarray | sp.csr_matrix:
    """The matrix a method reads: checked raw counts when ``method.counts`` (the default for every
    count model), else any finite values (:func:`get_matrix`)."""
    if getattr(method, "counts", True):
        return get_counts(adata, layer, what=f"the {method.name} {task}", obj=obj, layer_arg=layer_arg)
    return get_matrix(adata, layer, obj=obj, layer_arg=layer_arg)
