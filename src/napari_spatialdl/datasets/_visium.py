"""Real Visium data, downloaded on request through squidpy (needs internet the first time)."""

from __future__ import annotations

import os
from pathlib import Path

from anndata import AnnData

#: squidpy dataset names
_HNE_FULL = "visium_hne_adata"
_HNE_CROP = "visium_hne_adata_crop"
_HOST = "exampledata.scverse.org"

OFFLINE_ALTERNATIVES = (
    "Without internet, use the offline synthetic tissue instead (napari: File > Open Sample > "
    "Spatial DL > Synthetic tissue; Python: napari_spatialdl.datasets.synthetic_tissue()), or open "
    "your own Space Ranger output folder (napari: File > Open Folder...; Python: "
    "napari_spatialdl.read_visium(path))."
)


def cache_dir() -> Path:
    """Where downloaded datasets are kept: ``$NAPARI_SPATIALDL_DATA_DIR`` or the user cache."""
    env = os.environ.get("NAPARI_SPATIALDL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "napari-spatialdl"


def _loader(name: str):
    import squidpy as sq  # heavy import, only when asked for

    return getattr(sq.datasets, name)


def visium_hne(crop: bool = False, path: str | os.PathLike | None = None) -> AnnData:
    """The 10x Visium H&E adult mouse brain section, pre-processed by squidpy.

    Downloaded from squidpy's data server on first use (the full dataset is a few hundred MB,
    the crop much less), then read from the cache. ``X`` holds squidpy's *pre-processed*
    (normalised, log-transformed) expression, ``obs['cluster']`` its clusters, and
    ``uns['spatial']`` the H&E image and scale factors.

    Parameters
    ----------
    crop
        ``True``: squidpy's cropped subset (684 spots) instead of the whole section (2,688 spots).
    path
        File to download to / read from (``.h5ad``); default: ``<cache_dir()>/<dataset>.h5ad``.

    Returns
    -------
    AnnData
        Spots x genes with ``obsm['spatial']`` and ``uns['spatial']``.

    Raises
    ------
    ConnectionError
        When the download fails (no internet, server unreachable); the message says what to use
        offline instead.
    """
    name = _HNE_CROP if crop else _HNE_FULL
    target = Path(path) if path is not None else cache_dir() / f"{name}.h5ad"
    cached = target.is_file()
    try:
        loader = _loader(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        return loader(path=target)
    except Exception as err:  # squidpy raises an ExceptionGroup of the per-URL errors
        if cached:  # the file was already there: not a download problem, let it through
            raise
        raise ConnectionError(
            f"Could not download the Visium H&E mouse brain dataset ({name}) from {_HOST}: "
            f"{_describe(err)}. This sample needs an internet connection the first time (it is "
            f"then cached in {target.parent}). {OFFLINE_ALTERNATIVES}"
        ) from err


def _describe(err: BaseException) -> str:
    """A one-line reason, digging into exception groups (squidpy tries several URLs)."""
    inner = getattr(err, "exceptions", None)
    if inner:
        return _describe(inner[-1])
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    for marker in ("Name or service not known", "Temporary failure in name resolution",
                   "Network is unreachable", "Connection refused", "timed out"):
        if marker in str(err):
            return f"{type(err).__name__} ({marker})"
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__
