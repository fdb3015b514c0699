"""CellTypist as an annotation method: a CellTypist model trained on the reference.

The method gets the task's prepared inputs (:class:`~..annotation.AnnotationInputs`: the query
and the labelled reference cells, cut to the shared genes; unlabelled reference cells are
already left out) and returns the task's output (class probabilities); the task applies the
threshold and writes. CellTypist is imported only when the method runs
(``pip install 'napari-spatialdl[bench]'``); it reports its start and end only.
"""

from __future__ import annotations

import time
from collections.abc import Generator

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ...models import ProgressEvent
from .._registry import register
from ..annotation import AnnotationInputs, AnnotationOutput
from ._common import versions

_LABELS = "_sdl_labels"


@register("annotate", "celltypist", requires=("celltypist",),
          label="CellTypist (published method)",
          description="CellTypist: logistic regression on log-normalised expression")
def annotate_celltypist(data: AnnotationInputs, *, feature_selection: bool = False
                        ) -> Generator[ProgressEvent, None, AnnotationOutput]:
    """Label transfer with a CellTypist model trained on the reference.

    Both datasets are normalised to 10,000 counts per cell and log1p-transformed on the shared
    genes (what CellTypist expects); the probabilities are CellTypist's per-type scores of
    ``mode='best match'``, normalised to sum to 1 per cell, so the label is the best-scoring
    type (with the task's default threshold 0, as CellTypist's best match).

    Parameters
    ----------
    data
        The prepared query and reference (see :func:`napari_spatialdl.annotate`).
    feature_selection
        CellTypist's two-pass training on the top genes.
    """
    genes = pd.Index(data.genes.astype(str))
    ref_X, query_X = data.log_normalized()
    ref = AnnData(X=sp.csr_matrix(ref_X, dtype=np.float32),
                  obs=pd.DataFrame({_LABELS: pd.Categorical(data.ref_labels)},
                                   index=[f"ref{i}" for i in range(len(data.ref_labels))]),
                  var=pd.DataFrame(index=genes))
    qry = AnnData(X=sp.csr_matrix(query_X, dtype=np.float32),
                  obs=pd.DataFrame(index=data.data.obs_names.astype(str)), var=pd.DataFrame(index=genes))
    yield ProgressEvent(0, 2, 0, message="training", stage="celltypist")
    import celltypist

    start = time.perf_counter()
    model = celltypist.train(ref, labels=_LABELS, feature_selection=feature_selection, n_jobs=1,
                             check_expression=False)
    yield ProgressEvent(1, 2, 1, elapsed=time.perf_counter() - start, message="predicting",
                        stage="celltypist")
    pred = celltypist.annotate(qry, model=model, majority_voting=False, mode="best match")
    scores = pred.probability_matrix.to_numpy(dtype=np.float64)
    sums = scores.sum(axis=1, keepdims=True)
    probs = np.where(sums > 0, scores / np.where(sums > 0, sums, 1.0), 1.0 / scores.shape[1])
    yield ProgressEvent(2, 2, 2, elapsed=time.perf_counter() - start, message="done", stage="celltypist")
    return AnnotationOutput(probabilities=probs, classes=[str(c) for c in pred.probability_matrix.columns],
                            model=model, info={"versions_backend": versions("celltypist")})
