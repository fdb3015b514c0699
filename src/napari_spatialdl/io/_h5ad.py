"""Reader for ``.h5ad`` files, with a check of their spatial metadata."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from anndata import AnnData

from ._files import damaged_hdf5
from ._spatial import SpatialDataError, full_res_coordinates, validate_spatial


def read_h5ad(path: str | Path, *, validate: bool = True) -> AnnData:
    """Read an ``.h5ad`` file and check its spatial metadata.

    A file without ``obsm['spatial']`` is read (a scRNA-seq reference has no coordinates, and the
    tasks that do not need space still work on it) with a ``UserWarning`` saying that the spots
    cannot be placed on a tissue. A malformed ``uns['spatial']`` is an error.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    validate
        Check ``obsm['spatial']`` and ``uns['spatial']`` (libraries are dicts, every image is an
        array with its ``tissue_<key>_scalef``). ``False`` reads the file as it is.

    Returns
    -------
    AnnData

    Raises
    ------
    SpatialDataError
        The file does not exist, or (with ``validate=True``) has malformed spatial metadata; the
        message names the problem, and ``validate=False`` reads it anyway.
    ReadError
        (a :class:`SpatialDataError`) The file is damaged, truncated, not HDF5, or HDF5 but not
        an ``.h5ad``: the message names the file, the problem and the fix.
    """
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise SpatialDataError(f"{path} does not exist or is not a file.")
    try:
        adata = _read_parallel(path) or ad.read_h5ad(path)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - h5py and anndata raise many types for a damaged file
        raise damaged_hdf5(
            path, err, what="an .h5ad file (AnnData's layout: X, obs, var, ...)",
            fix="Write it again (adata.write_h5ad or napari_spatialdl.write_h5ad), or download / copy it again.",
        ) from None
    if not validate:
        return adata
    if "spatial" not in adata.obsm:
        warnings.warn(
            f"{path.name} has no spot coordinates (obsm['spatial']): it can serve as a reference "
            "for deconvolution or annotation, but cannot be shown on a tissue. Set "
            "adata.obsm['spatial'] to an (n_obs, 2) array of x, y to place it.",
            UserWarning,
            stacklevel=2,
        )
    else:
        try:
            full_res_coordinates(adata)
        except SpatialDataError as err:
            raise SpatialDataError(f"{path.name}: {err} (read_h5ad(..., validate=False) reads it as is)") from None
    try:
        validate_spatial(adata)
    except SpatialDataError as err:
        raise SpatialDataError(f"{path.name}: {err} (read_h5ad(..., validate=False) reads it as is)") from None
    return adata


#: elements of a sparse matrix read per HDF5 call by the background reader (the file stays
#: available to the main thread between calls: h5py holds one lock per call)
_READ_SLICE = 1 << 23


def _sparse_x(group: Any) -> tuple[str, tuple[int, int]] | None:
    """``(format, shape)`` of an h5ad's ``X`` group when it is a CSR/CSC matrix, else None."""
    import h5py

    if not isinstance(group, h5py.Group):
        return None
    kind = group.attrs.get("encoding-type")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind not in ("csr_matrix", "csc_matrix") or not {"data", "indices", "indptr"} <= set(group.keys()):
        return None
    shape = tuple(int(s) for s in group.attrs["shape"])
    return (kind[:3], shape) if len(shape) == 2 else None


def _read_sparse_arrays(group: Any) -> tuple[Any, Any, Any]:
    """``data``, ``indices``, ``indptr`` of a sparse group, each read into one preallocated array
    in slices of :data:`_READ_SLICE` elements (HDF5 reads release the GIL)."""
    import numpy as np

    out = []
    for name in ("data", "indices", "indptr"):
        dataset = group[name]
        arr = np.empty(dataset.shape, dtype=dataset.dtype)
        for start in range(0, len(arr), _READ_SLICE):
            sel = np.s_[start : min(len(arr), start + _READ_SLICE)]
            dataset.read_direct(arr, sel, sel)
        out.append(arr)
    return out[0], out[1], out[2]


def _read_parallel(path: Path) -> AnnData | None:
    """anndata's ``read_h5ad`` with a sparse ``X`` read in a background thread meanwhile.

    The file must be in anndata's current layout (root ``encoding-type`` ``anndata``; ``obs`` and
    ``var`` groups; no legacy ``raw.*`` entries) with ``X`` a CSR/CSC group; then every other
    element is read with :func:`anndata.io.read_elem` (what ``read_h5ad`` does for such files)
    while a thread reads ``X``'s three arrays. The AnnData is made once ``X`` is complete, so no
    one ever sees a partly read matrix. ``X`` is the class ``read_h5ad`` gives
    (``anndata.settings.use_sparse_array_on_read``: ``csr_array``, else ``csr_matrix``), with the
    file's dtypes. Other files: None (the caller uses ``anndata.read_h5ad``).
    """
    from concurrent.futures import ThreadPoolExecutor

    import anndata as ad
    import h5py
    import scipy.sparse as sp
    from anndata.io import read_elem

    with h5py.File(path, "r") as f:
        root = f.attrs.get("encoding-type")
        root = root.decode() if isinstance(root, bytes) else root
        if root != "anndata" or "X" not in f or any(k.startswith("raw.") for k in f.keys()):
            return None
        if not all(isinstance(f.get(k), h5py.Group) for k in ("obs", "var")):
            return None
        sparse = _sparse_x(f["X"])
        if sparse is None:
            return None
        fmt, shape = sparse
        with ThreadPoolExecutor(1, thread_name_prefix="read_h5ad_X") as pool:
            x_arrays = pool.submit(_read_sparse_arrays, f["X"])
            # (should this raise, leaving the pool waits for the thread before the file closes)
            parts = {k: read_elem(f[k]) for k in f.keys() if k != "X"}
            data, indices, indptr = x_arrays.result()
    arrays = bool(getattr(ad.settings, "use_sparse_array_on_read", False))
    cls = {("csr", False): sp.csr_matrix, ("csc", False): sp.csc_matrix,
           ("csr", True): sp.csr_array, ("csc", True): sp.csc_array}[(fmt, arrays)]
    X = cls(shape, dtype=data.dtype)  # as anndata's own sparse reader: the arrays put in as read
    X.data, X.indices, X.indptr = data, indices, indptr
    return AnnData(X=X, **parts)
