"""npe2 ``sample_data`` commands (File > Open Sample > Spatial DL).

They return napari layer-data tuples ``(data, kwargs, layer_type)``: plain data, no Qt or napari
import here. The spots layer's ``metadata`` links to the AnnData (``'adata'``); the synthetic
sample also puts the matching single-cell reference under ``'reference'`` so that the Deconvolve
and Annotate widgets find it.
"""

from __future__ import annotations

from typing import Any

from ._synthetic import synthetic_tissue
from ._visium import visium_hne

LayerDataTuple = tuple[Any, dict, str]

#: key of the reference AnnData in the spots layer's metadata
REFERENCE_KEY = "reference"
#: sections of the sample's spots (``obs['section']``): a batch structure for the Integrate panel
SAMPLE_SECTIONS = 2


def _points_tuple(layers: list[LayerDataTuple]) -> LayerDataTuple:
    for layer in layers:
        if layer[2] == "points":
            return layer
    raise RuntimeError("spatial_layers returned no points layer")  # pragma: no cover


def synthetic_tissue_sample(seed: int = 0) -> list[LayerDataTuple]:
    """The offline synthetic tissue: H&E-like image and spots coloured by their true region.

    The spots layer's ``metadata['adata']`` is the spatial AnnData (with the ground truth in
    ``obsm['true_proportions']``), ``metadata['reference']`` the annotated single-cell reference
    (``obs['cell_type']``, ``obs['batch']``). Every task panel runs on it without code:
    Deconvolve, Annotate and Impute with that reference, Integrate with the spots' two sections
    (``obs['section']``: the left and right halves of the tissue sequenced as separate libraries,
    with their own depth and gene-specific effects, the truth in ``varm['true_section_effect']``;
    ``synthetic_tissue(seed, n_spot_batches=2)``).

    Parameters
    ----------
    seed
        Random seed of :func:`napari_spatialdl.datasets.synthetic_tissue`.

    Returns
    -------
    list of (data, kwargs, layer_type)
        The tissue image layer and the spots layer.
    """
    from ..layers import spatial_layers

    spatial, reference = synthetic_tissue(seed, n_spot_batches=SAMPLE_SECTIONS)
    layers = spatial_layers(spatial, color="region", name="Synthetic tissue")
    _points_tuple(layers)[1].setdefault("metadata", {})[REFERENCE_KEY] = reference
    return layers


def visium_hne_sample() -> list[LayerDataTuple]:
    """The 10x Visium H&E mouse brain (squidpy), downloaded on first use.

    Returns
    -------
    list of (data, kwargs, layer_type)
        The H&E image layer and the spots layer, coloured by squidpy's clusters.

    Raises
    ------
    ConnectionError
        When the download fails (offline); the message names the offline alternatives.
    """
    from ..layers import spatial_layers

    adata = visium_hne()
    color = "cluster" if "cluster" in adata.obs else None
    return spatial_layers(adata, color=color, name="Visium H&E mouse brain")
