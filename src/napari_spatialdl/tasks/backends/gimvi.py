"""gimVI (scvi-tools ``scvi.external.GIMVI``) as a gene-prediction method.

gimVI (Lopez et al. 2019) learns one latent space for a scRNA-seq reference and spatial data that
measure a subset of its genes (a VAE per dataset with a shared decoder and an adversarial
classifier that mixes the datasets in the latent space); the spatial observations' decoded
expression gives the genes they lack. The method gets the impute task's prepared inputs
(:class:`~..imputation.ImputationInputs` with a reference), builds the two AnnDatas gimVI wants
from the prepared counts and returns the task's output; the task writes it. scvi-tools is
imported only when the method runs; every epoch is reported (training runs in a helper thread,
see :mod:`.scvi_tools`).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ...models import ProgressEvent
from .._registry import register
from .._validate import InputError
from ..imputation import PREDICTION_SCALE, ImputationInputs, ImputationOutput
from ._common import versions
from .scvi_tools import _adata, _check_epochs, _check_latent, _seed, _train


@register("impute", "gimvi", requires=("scvi",), needs=("reference",),
          label="gimVI (published method)",
          description="gimVI (scvi-tools GIMVI): a joint latent space of the reference and the spatial data; "
                      "the spatial observations' decoded expression")
def predict_gimvi(data: ImputationInputs, *, genes: list[str] | str = "all", include_measured: bool = False,
                  n_latent: int = 10, max_epochs: int = 200, kappa: float = 5.0,
                  dense: bool | Literal["auto"] = "auto") -> Generator[ProgressEvent, None, ImputationOutput]:
    """Predict unmeasured genes with gimVI (scvi-tools' defaults: ZINB for the reference, NB for
    the spatial data, 200 epochs).

    The reference is given with the shared genes and the genes to predict; the spatial data with
    the shared genes. The prediction is gimVI's normalised expression of the spatial observations
    (``get_imputed_values(normalized=True)``), rescaled from a share of the modelled genes to a
    share of the reference cells' whole library (times the reference's mean fraction of counts in
    those genes), per 10^4 transcripts like the other methods.

    Parameters
    ----------
    data
        The prepared data and reference (see :func:`napari_spatialdl.impute`).
    genes
        Genes to predict: a list of reference genes (text: comma-separated), or ``'all'``: every
        reference gene that the data lacks.
    include_measured
        Also allow (with ``'all'``: add) genes the data measures.
    n_latent
        Dimension of the joint latent space (scvi-tools' default 10).
    max_epochs
        Passes over the data (scvi-tools' default 200).
    kappa
        Weight of the adversarial loss that mixes the two datasets (scvi-tools' default 5).
    dense
        gimVI writes a table: True or ``'auto'`` (refused above 5e7 values unless True).

    Returns
    -------
    ImputationOutput
        ``predicted``: observations x genes; ``model`` is the trained ``GIMVI``.
    """
    _check_epochs(max_epochs=max_epochs)
    if not (np.isfinite(kappa) and kappa >= 0):
        raise InputError(f"kappa must be 0 or positive, got {kappa}.")
    targets, target_counts = data.prediction_targets(genes, include_measured)
    data.prediction_dense(len(targets), dense, compact=False, method="gimvi")
    shared = pd.Index(data.shared_genes.astype(str))
    extra_mask = ~targets.isin(shared)
    seq_genes = shared.append(targets[extra_mask])
    _check_latent(n_latent, min(data.reference_shared.shape[0], data.data.n_obs), len(shared))
    seq_counts = sp.hstack([sp.csr_matrix(data.reference_shared), sp.csr_matrix(target_counts[:, np.flatnonzero(extra_mask)])],
                           format="csr") if extra_mask.any() else sp.csr_matrix(data.reference_shared)
    seq = _adata(seq_counts, [f"ref{i}" for i in range(seq_counts.shape[0])], seq_genes)
    spatial = _adata(data.spatial_shared, data.data.obs_names, shared)
    yield ProgressEvent(0, max_epochs, 0, message="setting up gimVI", stage="gimvi")
    import scvi
    from scvi.external import GIMVI

    _seed(data.seed)
    GIMVI.setup_anndata(seq)
    GIMVI.setup_anndata(spatial)
    model = GIMVI(seq, spatial, n_latent=int(n_latent))
    history = yield from _train(model, int(max_epochs), data.device, "gimvi", kappa=float(kappa))
    _, imputed = model.get_imputed_values(normalized=True)
    columns = seq_genes.get_indexer(targets)
    # gimVI's expression is a share of the modelled genes: rescale to a share of the whole library
    covered = np.asarray(seq_counts.sum(axis=1)).ravel() / np.maximum(data.reference_library, 1.0)
    values = np.asarray(imputed, dtype=np.float64)[:, columns] * float(np.mean(covered)) * PREDICTION_SCALE
    predicted = pd.DataFrame(values.astype(np.float32), index=data.data.obs_names.copy(), columns=targets)
    info = {"n_genes_predicted": len(targets), "device": history.device,
            "versions_backend": {"scvi": str(scvi.__version__), **versions("torch")}}
    return ImputationOutput(predicted=predicted, model=model, history=history, info=info)
