"""Reader for ``.h5ad`` files, with a check of their spatial metadata."""

from __future__ import annotations

import warnings
from pathlib import Path

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
        adata = ad.read_h5ad(path)
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
