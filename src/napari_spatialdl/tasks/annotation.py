"""Cell-type annotation (label transfer) from a labelled reference to a query.

Methods: ``spatialdl`` (the native calibrated MLP ensemble,
:mod:`napari_spatialdl.models.annotation`) and ``logreg`` (a baseline: logistic regression on
log-normalised expression). Both write ``query.obs['spatialdl_cell_type']`` (categorical),
``query.obs['spatialdl_confidence']`` (in [0, 1]) and ``query.uns['spatialdl']['annotate']``.

The query and the reference may be the same AnnData (e.g. labels drawn by hand on some spots):
cells whose label is missing (NaN) are not used for training, and every cell is predicted.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import CELL_TYPE_KEY, CONFIDENCE_KEY, UNASSIGNED
from ..models._train import ProgressEvent, TrainingHistory
from ..models.annotation import CellTypeClassifier, expected_calibration_error
from ._base import TaskResult, target, write_run_metadata
from ._registry import register
from ._validate import InputError, check_obs_key, get_counts, row_sums, shared_genes, subset_counts

TaskGen = Generator[ProgressEvent, None, TaskResult]

#: fewest labelled reference cells per type the classifiers accept
MIN_CELLS_PER_TYPE = 2


@dataclass
class _Inputs:
    query_counts: Any  # query cells x shared genes
    ref_counts: Any  # labelled reference cells x shared genes
    ref_labels: np.ndarray
    classes: list[str]
    genes: pd.Index
    n_unlabelled: int
    n_ref_dropped: int
    n_query_empty: int
    same_object: bool


def _check_threshold(threshold: float) -> None:
    if not (np.isfinite(threshold) and 0.0 <= threshold < 1.0):
        raise InputError(f"threshold must be in [0, 1) (0: every cell gets a label), got {threshold}.")


def prepare_annotation(query: AnnData, reference: AnnData, labels_key: str, layer: str | None,
                       reference_layer: str | None, what: str = "annotation") -> _Inputs:
    """Check the inputs of an annotation method; cut both datasets to the shared genes.

    Reference cells without a label (NaN) are left out of training, and so are reference
    cells with no count in the shared genes. Nothing is written to the AnnDatas.
    """
    if not isinstance(query, AnnData) or not isinstance(reference, AnnData):
        raise InputError("query and reference must both be AnnData objects.")
    same = query is reference
    if same and labels_key in (CELL_TYPE_KEY, CONFIDENCE_KEY):
        raise InputError(
            f"labels_key={labels_key!r} is where the results are written: with the same AnnData as query "
            f"and reference they would overwrite the training labels. Copy the labels to another column "
            f"first, e.g. adata.obs['labels'] = adata.obs[{labels_key!r}], and pass labels_key='labels'."
        )
    labels = check_obs_key(reference, labels_key, "labels_key", allow_missing_values=True)
    labelled = labels.notna().to_numpy()
    q_X = get_counts(query, layer, what=what)
    r_X = q_X if same and reference_layer == layer else get_counts(reference, reference_layer, what=what)
    genes = shared_genes(query, reference, names=("query", "reference"))
    q_cols = query.var_names.get_indexer(genes)
    r_cols = reference.var_names.get_indexer(genes)
    ref_counts = subset_counts(r_X, r_cols, np.flatnonzero(labelled))
    ref_labels = labels[labelled].astype(str).to_numpy()
    has_counts = row_sums(ref_counts) > 0
    n_dropped = int((~has_counts).sum())
    if n_dropped:
        ref_counts, ref_labels = ref_counts[has_counts], ref_labels[has_counts]
    classes, n_per = np.unique(ref_labels, return_counts=True)
    if len(classes) < 2:
        raise InputError(
            f"Only {len(classes)} cell type is left in reference.obs[{labels_key!r}] among the "
            f"{len(ref_labels)} labelled cells with counts in the {len(genes)} shared genes: "
            "label transfer needs at least 2 types."
        )
    few = classes[n_per < MIN_CELLS_PER_TYPE]
    if len(few):
        raise InputError(
            f"Cell type(s) {list(few)[:5]} have fewer than {MIN_CELLS_PER_TYPE} labelled reference cells: "
            f"label more cells of these types, or remove/merge them in reference.obs[{labels_key!r}]."
        )
    query_counts = subset_counts(q_X, q_cols)
    n_empty = int((row_sums(query_counts) == 0).sum())
    return _Inputs(query_counts, ref_counts, ref_labels, [str(c) for c in classes], genes,
                   int((~labelled).sum()), n_dropped, n_empty, same)


def _info(inputs: _Inputs, query: AnnData, reference: AnnData) -> dict[str, Any]:
    n = len(inputs.genes)
    info: dict[str, Any] = {
        "n_genes": n,
        "n_genes_query": int(query.n_vars),
        "n_genes_reference": int(reference.n_vars),
        "genes_message": (f"{n} genes are shared by the query ({query.n_vars} genes) and the reference "
                          f"({reference.n_vars} genes); the classifier used these {n}."),
        "cell_types": list(inputs.classes),
        "n_reference_cells": int(len(inputs.ref_labels)),
        "n_unlabelled_reference_cells": inputs.n_unlabelled,
        "same_object": inputs.same_object,
    }
    if inputs.n_ref_dropped:
        info["n_reference_cells_dropped"] = inputs.n_ref_dropped
    if inputs.n_query_empty:
        info["n_query_cells_without_shared_counts"] = inputs.n_query_empty
    return info


def _finish(query: AnnData, copy: bool, method: str, probs: np.ndarray, classes: list[str],
            threshold: float, params: dict[str, Any], history: TrainingHistory | None,
            seconds: float, model: Any, info: dict[str, Any]) -> TaskResult:
    best = probs.argmax(axis=1)
    confidence = np.clip(probs[np.arange(len(probs)), best], 0.0, 1.0)
    labels = np.asarray(classes, dtype=object)[best]
    low = confidence < threshold
    labels[low] = UNASSIGNED
    categories = list(classes) + ([UNASSIGNED] if low.any() else [])
    info = dict(info, n_unassigned=int(low.sum()))
    out = target(query, copy)
    out.obs[CELL_TYPE_KEY] = pd.Categorical(labels, categories=categories)
    out.obs[CONFIDENCE_KEY] = confidence.astype(np.float32)
    write_run_metadata(out, "annotate", method, params, history, seconds=seconds, **info)
    return TaskResult("annotate", method, out, keys={"obs": CELL_TYPE_KEY, "obs_confidence": CONFIDENCE_KEY},
                      model=model, history=history, info=info)


@register("annotate", "spatialdl", native=True,
          description="Native calibrated MLP ensemble on log-normalised expression (label transfer)")
def annotate_spatialdl(query: AnnData, reference: AnnData, labels_key: str, *,
                       layer: str | None = None, reference_layer: str | None = None,
                       threshold: float = 0.0, n_hidden: int = 128, n_members: int = 5,
                       min_depth_fraction: float = 0.2, max_epochs: int = 60, lr: float = 3e-3,
                       device: str = "auto", seed: int = 0, copy: bool = False) -> TaskGen:
    """Transfer cell-type labels from a reference to a query with a calibrated classifier.

    An ensemble of small neural networks on log-normalised (to the reference's median depth),
    per-gene standardised expression of the shared genes, trained with depth augmentation
    (binomial thinning) and dropout so that it holds up across batches and technologies. The confidence (highest class probability) is
    calibrated by temperature scaling on out-of-fold predictions of the reference.

    Parameters
    ----------
    query
        Cells or spots to label, raw counts (in ``X`` or ``layer``). May be the same AnnData as
        ``reference``.
    reference
        Labelled cells, raw counts; cells whose label is missing (NaN) are not used for training.
    labels_key
        ``reference.obs`` column with the cell types.
    layer
        Layer of ``query`` with the raw counts (None: ``X``).
    reference_layer
        Layer of ``reference`` with the raw counts (None: ``X``).
    threshold
        Cells whose confidence is below this become ``'unassigned'`` (0: every cell gets a label).
    n_hidden
        Hidden units of each network.
    n_members
        Networks in the ensemble (also the number of folds used for calibration).
    min_depth_fraction
        Training thins each cell to a random fraction of its depth between this and 1
        (robustness to shallower data; 1 disables it).
    max_epochs
        Most passes over the reference (stops earlier when the out-of-fold loss stops improving).
    lr
        Adam learning rate.
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``query``.

    Returns
    -------
    TaskResult
        ``obs['spatialdl_cell_type']`` and ``obs['spatialdl_confidence']``; ``info`` holds the
        expected calibration error (ECE) of the out-of-fold reference predictions.
    """
    _check_threshold(threshold)
    for name, value, least in (("n_hidden", n_hidden, 1), ("n_members", n_members, 2),
                               ("max_epochs", max_epochs, 1)):
        if int(value) < least:
            raise InputError(f"{name} must be at least {least}, got {value}.")
    if not 0.0 < min_depth_fraction <= 1.0:
        raise InputError(f"min_depth_fraction must be in (0, 1], got {min_depth_fraction}.")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr}.")
    inputs = prepare_annotation(query, reference, labels_key, layer, reference_layer)
    counts_per = np.unique(inputs.ref_labels, return_counts=True)[1]
    if counts_per.min() < int(n_members):
        # cross-fitting needs a cell of each type outside every fold
        n_members = max(2, int(counts_per.min()))
    start = time.perf_counter()
    model = CellTypeClassifier(list(inputs.genes), inputs.classes, n_hidden=n_hidden, n_members=n_members,
                               min_depth_fraction=min_depth_fraction)
    history = yield from model.fit(inputs.ref_counts, inputs.ref_labels, max_epochs=int(max_epochs),
                                   lr=float(lr), device=device, seed=seed)
    probs = model.predict_proba(inputs.query_counts)
    seconds = time.perf_counter() - start
    params = dict(labels_key=labels_key, layer=layer, reference_layer=reference_layer,
                  threshold=float(threshold), n_hidden=int(n_hidden), n_members=int(n_members),
                  min_depth_fraction=float(min_depth_fraction), max_epochs=int(max_epochs), lr=float(lr),
                  device=device, seed=seed)
    info = _info(inputs, query, reference)
    info.update(device=history.device, temperature=model.extra["temperature"],
                ece=model.extra["ece_after"], ece_uncalibrated=model.extra["ece_before"],
                reference_oof_accuracy=model.extra["oof_accuracy"])
    return _finish(query, copy, "spatialdl", probs, inputs.classes, threshold, params, history,
                   seconds, model, info)


def _log_normalise(X: Any) -> np.ndarray:
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = np.asarray(X, dtype=np.float64)
    lib = np.maximum(X.sum(axis=1, keepdims=True), 1.0)
    return np.log1p(X / lib * 1e4)


@register("annotate", "logreg", description="Baseline: logistic regression on log-normalised expression")
def annotate_logreg(query: AnnData, reference: AnnData, labels_key: str, *,
                    layer: str | None = None, reference_layer: str | None = None,
                    threshold: float = 0.0, C: float = 1.0, seed: int = 0, copy: bool = False) -> TaskGen:
    """Baseline label transfer: multinomial logistic regression (scikit-learn) on log-normalised data.

    Both datasets are normalised to 10,000 counts per cell and log1p-transformed on the shared
    genes. The confidence is the predicted probability of the chosen type (not recalibrated).

    Parameters
    ----------
    query
        Cells or spots to label, raw counts. May be the same AnnData as ``reference``.
    reference
        Labelled cells, raw counts; cells whose label is missing are not used for training.
    labels_key
        ``reference.obs`` column with the cell types.
    layer
        Layer of ``query`` with the raw counts (None: ``X``).
    reference_layer
        Layer of ``reference`` with the raw counts (None: ``X``).
    threshold
        Cells whose confidence is below this become ``'unassigned'``.
    C
        Inverse L2 regularisation strength.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``query``.
    """
    _check_threshold(threshold)
    if not C > 0:
        raise InputError(f"C must be positive, got {C}.")
    inputs = prepare_annotation(query, reference, labels_key, layer, reference_layer, what="logistic regression")
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    yield ProgressEvent(0, 1, 0, message="fitting logistic regression", stage="logreg")
    clf = LogisticRegression(C=C, max_iter=1000, random_state=seed)
    Xr = _log_normalise(inputs.ref_counts)
    clf.fit(Xr, inputs.ref_labels)
    order = [list(clf.classes_).index(c) for c in inputs.classes]
    probs = clf.predict_proba(_log_normalise(inputs.query_counts))[:, order]
    seconds = time.perf_counter() - start
    yield ProgressEvent(1, 1, 1, message="done", stage="logreg", elapsed=seconds)
    params = dict(labels_key=labels_key, layer=layer, reference_layer=reference_layer,
                  threshold=float(threshold), C=float(C), seed=seed)
    info = _info(inputs, query, reference)
    ref_probs = clf.predict_proba(Xr)[:, order]
    codes = np.searchsorted(np.asarray(inputs.classes), inputs.ref_labels)
    info["ece_reference_training"] = expected_calibration_error(ref_probs, codes)
    return _finish(query, copy, "logreg", probs, inputs.classes, threshold, params, None, seconds, clf, info)
