"""napari-spatialdl: deep-learning models for spatial transcriptomics, on the tissue image.

Scripting API (no Qt needed unless you call :func:`show`, :func:`run` or :func:`save_figure`)::

    import napari_spatialdl as sdl
    adata = sdl.read_visium("path/to/spaceranger/outs")
    sdl.deconvolve(adata, reference, labels_key="cell_type")
    viewer = sdl.show(adata, color="spatialdl_proportions:Astrocyte")
    sdl.save_figure(viewer, "astrocytes.png", dpi=300)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it; imported on first use so that
# `import napari_spatialdl` stays light and never pulls in Qt.
_LAZY = {
    "read_visium": "napari_spatialdl.io",
    "read_h5ad": "napari_spatialdl.io",
    "read_counts_csv": "napari_spatialdl.io",
    "write_h5ad": "napari_spatialdl.io",
    "read_spatialdata": "napari_spatialdl.io",
    "read_visium_hd": "napari_spatialdl.io",
    "read_xenium": "napari_spatialdl.io",
    "write_spatialdata": "napari_spatialdl.io",
    "impute": "napari_spatialdl.tasks",
    "integrate": "napari_spatialdl.tasks",
    "deconvolve": "napari_spatialdl.tasks",
    "annotate": "napari_spatialdl.tasks",
    "map_query": "napari_spatialdl.tasks",
    "list_methods": "napari_spatialdl.tasks",
    "available_devices": "napari_spatialdl.models",
    "show": "napari_spatialdl._widgets",
    "run": "napari_spatialdl._widgets",
    "save_figure": "napari_spatialdl._widgets._figure",
    "datasets": "napari_spatialdl.datasets",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if name == "datasets" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_spatialdl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
