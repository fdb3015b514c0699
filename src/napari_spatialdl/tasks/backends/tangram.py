"""Tangram (tangram-sc) as a deconvolution method: cell-type means mapped onto the spots.

The method gets the task's prepared inputs (:class:`~..deconvolution.DeconvolutionInputs`:
spots and labelled reference cells cut to the shared genes) and returns the task's output;
the task writes it. Tangram is imported only when the method runs
(``pip install 'napari-spatialdl[bench]'``); it reports its start and end only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ...models import ProgressEvent
from ...preprocessing import log_normalize
from .._registry import register
from .._validate import InputError
from ..deconvolution import DeconvolutionInputs, DeconvolutionOutput
from ._common import deconvolution_output, versions

_LABELS = "_sdl_labels"


@register("deconvolve", "tangram", requires=("tangram",),
          label="Tangram (published method)",
          description="Tangram (tangram-sc), clusters mode: cell-type means mapped onto spots")
def deconvolve_tangram(data: DeconvolutionInputs, *, num_epochs: int = 1000,
                       density_prior: Literal["rna_count_based", "uniform"] = "rna_count_based",
                       ) -> Generator[ProgressEvent, None, DeconvolutionOutput]:
    """Deconvolution with Tangram in ``mode='clusters'``.

    Each cell type's mean profile (of the log-normalised reference, as in Tangram's tutorials)
    is mapped onto the spots; a spot's proportions are its column of the mapping, normalised to
    sum to 1. All genes shared by the two datasets are used.

    Parameters
    ----------
    data
        The prepared spots and reference (see :func:`napari_spatialdl.deconvolve`).
    num_epochs
        Optimisation steps of the mapping (Tangram's default 1000).
    density_prior
        How many cells each spot is expected to hold: ``'rna_count_based'`` (in proportion to
        its counts, Tangram's default) or ``'uniform'``.
    """
    if num_epochs < 1:
        raise InputError(f"num_epochs must be at least 1, got {num_epochs}.")
    if density_prior not in ("rna_count_based", "uniform"):
        raise InputError(f"density_prior must be 'rna_count_based' or 'uniform', got {density_prior!r}.")
    genes = pd.Index(data.genes.astype(str))
    ad_sc = AnnData(X=log_normalize(sp.csr_matrix(data.ref_counts, dtype=np.float32)),
                    obs=pd.DataFrame({_LABELS: pd.Categorical(data.ref_labels)},
                                     index=[f"ref{i}" for i in range(len(data.ref_labels))]),
                    var=pd.DataFrame(index=genes))
    ad_sp = AnnData(X=sp.csr_matrix(data.spot_counts, dtype=np.float32),
                    obs=pd.DataFrame(index=data.data.obs_names.astype(str)),
                    var=pd.DataFrame(index=genes))
    # Tangram runs on CUDA or the CPU (an 'mps' device falls back to the CPU)
    device = f"cuda:{data.device.index or 0}" if data.device.type == "cuda" else "cpu"
    yield ProgressEvent(0, num_epochs, 0, message="Tangram mapping", stage="tangram")
    import tangram as tg

    start = time.perf_counter()
    level = logging.getLogger().level  # tangram sets the root logger's level
    try:
        tg.pp_adatas(ad_sc, ad_sp, genes=None)
        ad_map = tg.map_cells_to_space(ad_sc, ad_sp, mode="clusters", cluster_label=_LABELS,
                                       density_prior=density_prior, num_epochs=num_epochs,
                                       device=device, random_state=data.seed, verbose=False)
    finally:
        logging.getLogger().setLevel(level)
    mapping = np.asarray(ad_map.X, dtype=np.float64)  # clusters x spots
    clusters = ad_map.obs[_LABELS].astype(str).to_numpy()
    table = pd.DataFrame(mapping.T, index=ad_sp.obs_names, columns=clusters)
    table = table.T.groupby(level=0).sum().T  # one column per type
    seconds = time.perf_counter() - start
    yield ProgressEvent(num_epochs, num_epochs, num_epochs, elapsed=seconds, message="done",
                        stage="tangram")
    info = data.gene_info()
    info.update(n_training_genes=int(len(ad_sc.uns.get("training_genes", []))),
                device=device, versions_backend=versions("tangram"))
    return deconvolution_output(data, table, info=info)
