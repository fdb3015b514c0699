"""Reader for ``.h5ad`` files, with a check of their spatial metadata."""

from __future__ import annotations

import warnings
from pathlib import Path

from anndata import AnnData

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
        The file does not exist, is not an ``.h5ad``, or (with ``validate=True``) has malformed
        spatial metadata; the message names the problem, and ``validate=False`` reads it anyway.
    """
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise SpatialDataError(f"{path} does not exist or is not a file.")
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise SpatialDataError(
            f"{path} could not be read as an .h5ad file ({type(err).__name__}: {err})."
        ) from err
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
