"""Tangram (tangram-sc) as a gene-prediction method: reference cells mapped onto the observations.

The method gets the impute task's prepared inputs (:class:`~..imputation.ImputationInputs` with a
reference: both datasets cut to the shared genes) and returns the task's output; the task writes
it. Tangram is imported only when the method runs (``pip install 'napari-spatialdl[bench]'``); it
reports its start and end only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ...models import ProgressEvent
from ...preprocessing import log_normalize
from .._registry import register
from .._spec import LABELS, Role
from .._validate import InputError
from ..imputation import PREDICTION_SCALE, ImputationInputs, ImputationOutput
from ._common import versions

_LABELS = "_sdl_labels"


@register("impute", "tangram", requires=("tangram",), needs=("reference",),
          label="Tangram (published method)",
          description="Tangram (tangram-sc): reference cells mapped onto the observations through the shared "
                      "genes, then project_genes")
def predict_tangram(data: ImputationInputs, *, genes: list[str] | str = "all", include_measured: bool = False,
                    mode: Literal["cells", "clusters"] = "cells",
                    labels_key: Annotated[str, Role(LABELS, of="reference")] | None = None,
                    num_epochs: int = 1000,
                    density_prior: Literal["rna_count_based", "uniform"] = "rna_count_based",
                    dense: bool | Literal["auto"] = "auto") -> Generator[ProgressEvent, None, ImputationOutput]:
    """Predict unmeasured genes with Tangram: ``map_cells_to_space``, then ``project_genes``.

    The reference's log-normalised cells are mapped onto the observations with all shared genes
    as training genes (Tangram's defaults otherwise); the mapping then projects each reference
    cell's expression of the predicted genes (per 10^4 transcripts of its library). Each
    observation's projection is divided by the mapping's total weight on it, so that the result
    is the mapped cells' mean expression, on the same scale as the other methods.

    Parameters
    ----------
    data
        The prepared data and reference (see :func:`napari_spatialdl.impute`).
    genes
        Genes to predict: a list of reference genes (text: comma-separated), or ``'all'``: every
        reference gene that the data lacks.
    include_measured
        Also allow (with ``'all'``: add) genes the data measures.
    mode
        ``'cells'`` maps every reference cell (Tangram's default); ``'clusters'`` maps the mean
        profile of each cell type of ``labels_key``.
    labels_key
        ``reference.obs`` column of cell types, needed with ``mode='clusters'``.
    num_epochs
        Optimisation steps of the mapping (Tangram's default 1000).
    density_prior
        How many cells each observation holds: ``'rna_count_based'`` (in proportion to its
        counts, Tangram's default) or ``'uniform'``.
    dense
        Tangram writes a table: True or ``'auto'`` (refused above 5e7 values unless True).

    Returns
    -------
    ImputationOutput
        ``predicted``: observations x genes.
    """
    if num_epochs < 1:
        raise InputError(f"num_epochs must be at least 1, got {num_epochs}.")
    labels = data.reference_column("labels_key")
    if mode == "clusters" and labels is None:
        raise InputError("mode='clusters' maps cell-type means: pass labels_key= a reference.obs column of cell types.")
    targets, target_counts = data.prediction_targets(genes, include_measured)
    data.prediction_dense(len(targets), dense, compact=False, method="tangram")
    n_shared = len(data.shared_genes)
    cells = np.arange(data.reference_shared.shape[0])
    if mode == "clusters":
        cells = np.flatnonzero(pd.Series(labels).notna().to_numpy())
    # tokens instead of gene names: Tangram lower-cases names and drops genes without counts
    shared_tokens = [f"s{i}" for i in range(n_shared)]
    target_tokens = pd.Index([f"t{i}" for i in range(len(targets))])
    obs = pd.DataFrame(index=[f"ref{i}" for i in cells])
    if mode == "clusters":
        obs[_LABELS] = pd.Categorical(pd.Series(labels[cells]).astype(str).to_numpy())
    ad_sc = AnnData(X=log_normalize(sp.csr_matrix(data.reference_shared[cells], dtype=np.float32)), obs=obs.copy(),
                    var=pd.DataFrame(index=shared_tokens))
    ad_sp = AnnData(X=sp.csr_matrix(data.spatial_shared, dtype=np.float32),
                    obs=pd.DataFrame(index=data.data.obs_names.astype(str)), var=pd.DataFrame(index=shared_tokens))
    share = sp.diags(1.0 / np.maximum(data.reference_library[cells], 1.0)) @ sp.csr_matrix(target_counts[cells])
    ad_proj = AnnData(X=sp.csr_matrix(share * PREDICTION_SCALE, dtype=np.float32), obs=obs.copy(),
                      var=pd.DataFrame(index=target_tokens))
    device = f"cuda:{data.device.index or 0}" if data.device.type == "cuda" else "cpu"
    yield ProgressEvent(0, num_epochs, 0, message="Tangram mapping", stage="tangram")
    import tangram as tg

    start = time.perf_counter()
    level = logging.getLogger().level  # tangram sets the root logger's level
    try:
        tg.pp_adatas(ad_sc, ad_sp, genes=None)
        ad_map = tg.map_cells_to_space(ad_sc, ad_sp, mode=mode, cluster_label=_LABELS if mode == "clusters" else None,
                                       density_prior=density_prior, num_epochs=num_epochs, device=device,
                                       random_state=data.seed, verbose=False)
        ad_ge = tg.project_genes(ad_map, ad_proj, cluster_label=_LABELS if mode == "clusters" else None)
    finally:
        logging.getLogger().setLevel(level)
    mapping = np.asarray(ad_map.X, dtype=np.float64)  # (cells or clusters) x observations
    projected = ad_ge.to_df().reindex(columns=target_tokens, fill_value=0.0).to_numpy(dtype=np.float64)
    if mode == "clusters":  # the mapped profiles are cluster sums (Tangram's scale=True): weigh by size
        sizes = pd.Series(obs[_LABELS]).value_counts().reindex(ad_map.obs[_LABELS].astype(str)).to_numpy(float)
        weight = (mapping * sizes[:, None]).sum(axis=0)
    else:
        weight = mapping.sum(axis=0)
    values = projected / np.where(weight > 0, weight, 1.0)[:, None]
    seconds = time.perf_counter() - start
    yield ProgressEvent(num_epochs, num_epochs, num_epochs, elapsed=seconds, message="done", stage="tangram")
    predicted = pd.DataFrame(values.astype(np.float32), index=data.data.obs_names.copy(), columns=targets)
    info = {"n_genes_predicted": len(targets), "n_training_genes": int(len(ad_sc.uns.get("training_genes", []))),
            "mode": mode, "device": device, "versions_backend": versions("tangram")}
    return ImputationOutput(predicted=predicted, info=info)
