"""MAGIC as an imputation method: diffusion over the cell graph, back on the count scale.

The method gets the task's prepared inputs (:class:`~..imputation.ImputationInputs`: the counts
of the genes with any count) and returns the task's output (expected counts); the task writes
them, genes without counts as 0. MAGIC is imported only when the method runs
(``pip install 'napari-spatialdl[bench]'``, package ``magic-impute``); it reports its start and
end only.
"""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np
import scipy.sparse as sp

from ...models import ProgressEvent
from ...preprocessing import normalize_total
from .._registry import register
from .._validate import InputError
from ..imputation import ImputationInputs, ImputationOutput
from ._common import versions


@register("impute", "magic", requires=("magic",), refuses=("reference",),
          label="MAGIC (published method)",
          description="MAGIC (magic-impute): diffusion over the cell graph, back on the count scale")
def impute_magic(data: ImputationInputs, *, knn: int = 5, t: int = 3, n_pca: int = 100
                 ) -> Generator[ProgressEvent, None, ImputationOutput]:
    """Imputation with MAGIC, returned as expected counts.

    Counts are normalised to the median library size and square-root transformed (MAGIC's
    recommended preprocessing), diffused with MAGIC, then squared and scaled back to each
    cell's own library size.

    Parameters
    ----------
    data
        The prepared counts (see :func:`napari_spatialdl.impute`).
    knn
        Nearest neighbours of MAGIC's kernel.
    t
        Diffusion steps.
    n_pca
        Principal components used to build the graph (capped by the data's size).
    """
    import magic

    if not hasattr(magic, "MAGIC"):
        raise ImportError("The 'magic' module found is not magic-impute: pip install magic-impute.")
    n_obs = data.counts.shape[0]
    if knn < 1 or t < 1:
        raise InputError(f"knn and t must be at least 1, got knn={knn}, t={t}.")
    if knn >= n_obs:
        raise InputError(f"knn={knn} must be smaller than the number of observations ({n_obs}).")
    if n_pca < 1:
        raise InputError(f"n_pca must be at least 1, got {n_pca}.")
    yield ProgressEvent(0, 1, 0, message="MAGIC", stage="magic")
    start = time.perf_counter()
    lib = data.library
    med = float(np.median(lib))
    Y = normalize_total(data.counts, med, dtype=np.float64)
    Y = np.sqrt(Y.toarray() if sp.issparse(Y) else Y)
    n_comps = int(min(n_pca, Y.shape[0] - 1, Y.shape[1] - 1))
    op = magic.MAGIC(knn=knn, t=t, n_pca=n_comps, random_state=data.seed, verbose=0, n_jobs=1)
    Z = np.asarray(op.fit_transform(Y), dtype=np.float64)
    imputed = (np.clip(Z, 0, None) ** 2 / med * lib[:, None]).astype(np.float32)
    yield ProgressEvent(1, 1, 1, elapsed=time.perf_counter() - start, message="done", stage="magic")
    return ImputationOutput(imputed=imputed, info={"versions_backend": versions("magic"),
                                                   "n_pca_used": n_comps})
