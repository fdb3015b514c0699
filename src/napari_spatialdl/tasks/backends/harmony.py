"""Harmony (harmonypy) as an integration method: batch correction of principal components.

The method gets the task's prepared inputs (:class:`~..integration.IntegrationInputs`: the
values of the genes with any count, the batches) and returns the task's output; the task
writes it. Harmony works on log-normalised data, so it is registered with ``counts=False``:
raw counts are log-normalised first, values that are not counts (an ``X`` already normalised
with scanpy) are taken as they are. harmonypy is imported only when the method runs
(``pip install 'napari-spatialdl[bench]'``); it reports its start and end only.
"""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np
import pandas as pd

from ...models import ProgressEvent
from .._registry import register
from .._validate import InputError
from ..integration import IntegrationInputs, IntegrationOutput, principal_components
from ._common import versions

_BATCH = "_sdl_batch"


@register("integrate", "harmony", requires=("harmonypy",), counts=False,
          label="Harmony (published method)",
          description="Harmony (harmonypy) on the PCA of log-normalised data")
def integrate_harmony(data: IntegrationInputs, *, n_pcs: int = 50, theta: float = 2.0,
                      max_iter_harmony: int = 10) -> Generator[ProgressEvent, None, IntegrationOutput]:
    """Batch integration with Harmony on principal components.

    Raw counts are normalised to 10,000 per cell and log1p-transformed; data that are not
    integer counts are taken as already normalised. Genes are scaled, then PCA, then Harmony
    moves the cells' components so that every cluster mixes the batches.

    Parameters
    ----------
    data
        The prepared values and batches (see :func:`napari_spatialdl.integrate`).
    n_pcs
        Number of principal components (capped by the data's size).
    theta
        Harmony's diversity penalty (larger: more mixing).
    max_iter_harmony
        Harmony iterations.

    Returns
    -------
    IntegrationOutput
        The corrected components.
    """
    if n_pcs < 2:
        raise InputError(f"n_pcs must be at least 2, got {n_pcs}.")
    if max_iter_harmony < 1:
        raise InputError(f"max_iter_harmony must be at least 1, got {max_iter_harmony}.")
    if not theta >= 0:
        raise InputError(f"theta must be 0 or positive, got {theta}.")
    n_obs, n_genes = data.counts.shape
    n = min(n_pcs, n_obs - 1, n_genes - 1)
    if n < 2:
        raise InputError(f"Harmony needs at least 3 observations and 3 genes with values; adata has "
                         f"{n_obs} observations and {n_genes} such genes.")
    start = time.perf_counter()
    yield ProgressEvent(0, 2, 0, message="PCA", stage="harmony")
    pcs = principal_components(data, n)
    yield ProgressEvent(1, 2, 1, elapsed=time.perf_counter() - start, message="Harmony", stage="harmony")
    import harmonypy

    meta = pd.DataFrame({_BATCH: data.batch_names()})
    ho = harmonypy.run_harmony(pcs, meta, [_BATCH], theta=theta, max_iter_harmony=max_iter_harmony,
                               random_state=data.seed, verbose=False)
    Z = np.asarray(ho.Z_corr, dtype=np.float32)
    if Z.shape[0] != n_obs:  # harmonypy < 2 returns PCs x cells
        Z = Z.T
    yield ProgressEvent(2, 2, 2, elapsed=time.perf_counter() - start, message="done", stage="harmony")
    info = data.gene_info()
    info.update(n_pcs_used=int(n), log_normalised_counts=bool(data.is_counts),
                versions_backend=versions("harmonypy"))
    return IntegrationOutput(latent=Z, info=info)
