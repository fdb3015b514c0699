"""Cell-type annotation (label transfer) from a labelled reference to a query.

The task's spec (inputs, the ``threshold`` option, outputs), its one ``prepare`` and its one
``write`` live here; the methods only compute class probabilities. Methods: ``spatialdl`` (the
native calibrated MLP ensemble, :mod:`napari_spatialdl.models.annotation`) and ``logreg`` (a
baseline: logistic regression on log-normalised expression); the reference backends (scANVI,
CellTypist) are in :mod:`.backends`. Every method writes ``query.obs['spatialdl_cell_type']``
(categorical), ``query.obs['spatialdl_confidence']`` (in [0, 1]) and the run metadata.

The query and the reference may be the same AnnData (e.g. labels drawn by hand on some spots):
cells whose label is missing (NaN) are not used for training, and every cell is predicted.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import CELL_TYPE_KEY, CONFIDENCE_KEY, UNASSIGNED
from ..models import ProgressEvent
from ..models.annotation import CellTypeClassifier, expected_calibration_error
from ..preprocessing import TARGET_SUM, log_normalize, marker_genes, row_blocks
from . import _validate as V
from ._registry import register
from ._spec import (
    DATA,
    LABELS,
    LAYER,
    REFERENCE,
    Input,
    MethodOutput,
    Output,
    Param,
    Prepared,
    TaskSpec,
    register_spec,
)
from ._validate import InputError, row_sums, subset_counts

__all__ = [
    "DEFAULT_N_TOP_GENES",
    "MIN_CELLS_PER_TYPE",
    "SPEC",
    "UNASSIGNED",
    "AnnotationInputs",
    "AnnotationOutput",
    "annotate_logreg",
    "annotate_spatialdl",
    "check_threshold",
    "prepare",
    "write",
]

#: fewest labelled reference cells per cell type (the same rule as deconvolution)
MIN_CELLS_PER_TYPE = 2

#: genes the native classifier uses by default: marker genes of each of the reference's cell
#: types in turn (all shared genes when there are fewer). At 18k genes the prediction of a
#: million cells is a dense (batch x genes) product per ensemble member; 3,000 genes make it 6x
#: cheaper, and scANVI / CellTypist users select genes the same way.
DEFAULT_N_TOP_GENES = 3000


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float in [0, 1), or an InputError that says why (NaN is refused).

    The one rule for annotate's ``threshold`` option, whatever the method.
    """
    fix = ("0 gives every cell a label; e.g. 0.5 leaves the cells whose confidence is below 0.5 "
           f"{UNASSIGNED!r}")
    if isinstance(threshold, bool | np.bool_) or not isinstance(threshold, numbers.Real | str):
        raise InputError(f"threshold must be a number in [0, 1) ({fix}), got {threshold!r}.")
    try:
        value = float(threshold)
    except ValueError:
        raise InputError(f"threshold must be a number in [0, 1) ({fix}), got {threshold!r}.") from None
    if not (np.isfinite(value) and 0.0 <= value < 1.0):
        raise InputError(f"threshold must be in [0, 1) ({fix}), got {threshold!r}.")
    return value


@dataclass
class AnnotationInputs(Prepared):
    """Query and labelled reference cut to the shared genes (what every annotation method gets).

    ``data`` is the query. ``ref_counts``/``ref_labels`` hold only the reference cells that have a
    label and counts in the shared genes; ``classes`` are their cell types, sorted.
    """

    reference: AnnData | None = None
    query_counts: Any = None  # query cells x shared genes (CSR stays CSR)
    #: after :meth:`select_genes`: the columns of ``query_counts`` that are ``genes`` (None: all of
    #: them, in order); read batch by batch, so that a million cells are not copied
    query_columns: np.ndarray | None = None
    ref_counts: Any = None  # labelled reference cells x shared genes
    ref_rows: np.ndarray | None = None  # positions in `reference` of the rows of ref_counts
    ref_labels: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))
    classes: list[str] = field(default_factory=list)
    genes: pd.Index = field(default_factory=pd.Index)
    labels_key: str = ""
    threshold: float = 0.0
    n_unlabelled: int = 0  # reference cells without a label (not used for training)
    n_ref_dropped: int = 0  # labelled reference cells without counts in the shared genes
    n_query_empty: int = 0  # query cells without counts in the shared genes
    same_object: bool = False
    layer: str | None = None
    reference_layer: str | None = None
    n_shared: int = 0  # genes in both datasets (before any selection)
    n_top_genes: int | None = None  # the selection applied by select_genes (None: none)

    @property
    def query(self) -> AnnData:
        """The AnnData to label (the same object as ``data``)."""
        return self.data

    def log_normalized(self, target_sum: float = TARGET_SUM, dtype: type = np.float32) -> tuple[Any, Any]:
        """(reference, query) counts as ``log1p(counts / library * target_sum)`` (CSR stays CSR)."""
        return (log_normalize(self.ref_counts, target_sum, dtype=dtype),
                log_normalize(self.query_counts, target_sum, dtype=dtype))

    def select_genes(self, n_top_genes: int | None) -> AnnotationInputs:
        """A copy keeping ``n_top_genes`` shared genes: the marker genes of every cell type in turn.

        Chosen on the labelled reference (:func:`napari_spatialdl.preprocessing.marker_genes`: each
        type's genes ranked by their log fold change over the other types, taken one per type per
        round). All genes are kept when there are no more than ``n_top_genes``. The query is cut
        to the same genes through :attr:`query_columns`, read batch by batch (no copy; the user's
        data is only read).
        """
        if n_top_genes is None or len(self.genes) <= n_top_genes:
            return self
        keep = marker_genes(self.ref_counts, self.ref_labels, self.classes, int(n_top_genes))
        columns = keep if self.query_columns is None else np.asarray(self.query_columns)[keep]
        out = dataclasses.replace(
            self, query_columns=columns, ref_counts=subset_counts(self.ref_counts, keep),
            genes=self.genes[keep], n_top_genes=int(n_top_genes),
            n_query_empty=_rows_without_counts(self.query_counts, columns), info=dict(self.info))
        return out

    def gene_info(self) -> dict[str, Any]:
        """What the run metadata says about the genes and cells used."""
        n, shared = len(self.genes), self.n_shared or len(self.genes)
        query, reference = self.data, self.reference
        used = (f"the classifier used these {n}." if self.n_top_genes is None else
                f"the classifier used {n} of them, the marker genes of each of the reference's cell "
                f"types in turn (n_top_genes={self.n_top_genes}; None uses every shared gene).")
        info: dict[str, Any] = {
            "n_genes": n,
            "n_genes_shared": shared,
            "n_genes_query": int(query.n_vars),
            "n_genes_reference": int(reference.n_vars),
            "gene_selection": "all" if self.n_top_genes is None else "markers",
            "genes_message": (f"{shared} genes are shared by the query ({query.n_vars} genes) and the "
                              f"reference ({reference.n_vars} genes); {used}"),
            "cell_types": list(self.classes),
            "n_reference_cells": int(len(self.ref_labels)),
            "n_unlabelled_reference_cells": int(self.n_unlabelled),
            "same_object": bool(self.same_object),
        }
        if self.n_ref_dropped:
            info["n_reference_cells_dropped"] = int(self.n_ref_dropped)
        if self.n_query_empty:
            info["n_query_cells_without_shared_counts"] = int(self.n_query_empty)
        return info


@dataclass
class AnnotationOutput(MethodOutput):
    """Class probabilities of every query cell, ``(n_query, n_classes)``, columns ``classes``.

    ``classes`` None means the prepared inputs' ``classes`` (in that order). The task's ``write``
    derives the label (the most probable class, or ``'unassigned'`` below the threshold) and the
    confidence (that class's probability).
    """

    probabilities: np.ndarray | None = None
    classes: list[str] | None = None

    @property
    def cell_type(self) -> np.ndarray | None:
        """Index of the most probable class of every cell (before the threshold)."""
        return None if self.probabilities is None else np.asarray(self.probabilities).argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray | None:
        """The highest class probability of every cell."""
        return None if self.probabilities is None else np.asarray(self.probabilities).max(axis=1)


def prepare(inputs: dict[str, Any], *, method: Any, device: Any, seed: int,
            threshold: Any = 0.0) -> AnnotationInputs:
    """Check the inputs once and cut both datasets to the shared genes (nothing is written).

    Reference cells without a label (NaN) are left out of training, and so are reference cells
    with no count in the shared genes; every cell type needs at least ``MIN_CELLS_PER_TYPE``
    of the cells left. The query may be the reference itself.
    """
    threshold = check_threshold(threshold)
    query, reference = inputs["query"], inputs["reference"]
    labels_key = inputs["labels_key"]
    layer, reference_layer = inputs.get("layer"), inputs.get("reference_layer")
    same = query is reference
    if same and labels_key in (CELL_TYPE_KEY, CONFIDENCE_KEY):
        raise InputError(
            f"labels_key={labels_key!r} is where the results are written: with the same AnnData as query "
            f"and reference they would overwrite the training labels. Copy the labels to another column "
            f"first, e.g. adata.obs['labels'] = adata.obs[{labels_key!r}], and pass labels_key='labels'."
        )
    labels = V.check_obs_column(reference, labels_key, argument="labels_key", kind="labels",
                                obj="reference", allow_missing_values=True)
    labelled = pd.Series(labels).notna().to_numpy()
    q_X = V.method_input(query, layer, method=method, task="annotation", obj="query", layer_arg="layer")
    if same and reference_layer == layer:
        r_X = q_X
    else:
        r_X = V.method_input(reference, reference_layer, method=method, task="annotation", obj="reference", layer_arg="reference_layer")
    genes = V.shared_genes(query, reference, names=("query", "reference"))
    ref_counts = subset_counts(r_X, reference.var_names.get_indexer(genes), np.flatnonzero(labelled))
    ref_labels = pd.Series(labels)[labelled].astype(str).to_numpy()
    has_counts = row_sums(ref_counts) > 0
    ref_rows = np.flatnonzero(labelled)[has_counts]
    n_dropped = int((~has_counts).sum())
    if n_dropped:
        ref_counts, ref_labels = ref_counts[has_counts], ref_labels[has_counts]
    try:
        per_type = V.check_cell_types(ref_labels, labels_key=labels_key, obj="reference",
                                      min_cells=MIN_CELLS_PER_TYPE,
                                      context=f"with counts in the {len(genes)} shared genes")
    except InputError as err:
        counts = pd.Series(ref_labels).value_counts()
        few = sorted(map(str, counts.index[counts < MIN_CELLS_PER_TYPE]))
        if not same or not few:
            raise
        column = f"reference.obs[{labels_key!r}]"
        raise InputError(  # dropping the cells would also drop them from the query
            f"{err} The query is the reference here: to keep those cells in the result, remove their "
            f"label instead ({column} = {column}.where(~{column}.isin({few[:8]!r}))): cells without a "
            f"label are predicted, not used for training.") from None
    query_counts = subset_counts(q_X, query.var_names.get_indexer(genes))
    prepared = AnnotationInputs(
        data=query, device=device, seed=seed, reference=reference, query_counts=query_counts,
        ref_counts=ref_counts, ref_rows=ref_rows, ref_labels=ref_labels, classes=[str(c) for c in per_type.index],
        genes=genes, labels_key=labels_key, threshold=threshold,
        n_unlabelled=int((~labelled).sum()), n_ref_dropped=n_dropped,
        n_query_empty=int((row_sums(query_counts) == 0).sum()), same_object=same,
        layer=layer, reference_layer=reference_layer, n_shared=len(genes))
    prepared.info.update(prepared.gene_info())
    return prepared


def _rows_without_counts(X: Any, columns: np.ndarray) -> int:
    """How many rows of ``X`` have no count in ``columns`` (over blocks of rows: no copy of ``X``)."""
    return sum(int((row_sums(subset_counts(X[rows], columns)) == 0).sum()) for rows in row_blocks(X))


def _probabilities(prepared: AnnotationInputs, output: AnnotationOutput) -> np.ndarray:
    """The method's probabilities as (n_query, n_classes) float64, columns in ``prepared.classes``."""
    P = np.asarray(output.probabilities, dtype=np.float64)
    classes = prepared.classes if output.classes is None else [str(c) for c in output.classes]
    n = prepared.data.n_obs
    if P.ndim != 2 or P.shape != (n, len(classes)):
        raise ValueError(f"The annotation method returned probabilities of shape {P.shape}; expected "
                         f"({n}, {len(classes)}) (query cells x classes).")
    unknown = sorted(set(classes) - set(prepared.classes))
    if unknown:
        raise ValueError(f"The annotation method returned classes {unknown[:5]} that are not cell types "
                         f"of the reference ({', '.join(prepared.classes)}).")
    if not np.isfinite(P).all():
        raise ValueError("The annotation method returned NaN or infinite probabilities.")
    if classes != prepared.classes:
        P = pd.DataFrame(P, columns=classes).reindex(columns=prepared.classes, fill_value=0.0).to_numpy()
    return P


def write(out: AnnData, prepared: AnnotationInputs, output: AnnotationOutput, keys: dict[str, str]) -> None:
    """Label and confidence of every cell in ``obs``; ``'unassigned'`` below the threshold.

    The label is the most probable class (categorical; the categories are the reference's cell
    types, plus ``'unassigned'`` when a cell got it), the confidence its probability (float32).
    ``output.info`` gets ``n_unassigned`` and ``max_confidence`` (the highest confidence of any
    cell: when every cell is unassigned, the threshold is above it), and a message when every
    cell is unassigned.
    """
    P = _probabilities(prepared, output)
    best = P.argmax(axis=1)
    confidence = np.clip(P[np.arange(len(P)), best], 0.0, 1.0)
    labels = np.asarray(prepared.classes, dtype=object)[best]
    low = confidence < prepared.threshold
    labels[low] = UNASSIGNED
    categories = list(prepared.classes) + ([UNASSIGNED] if low.any() else [])
    n_low, top = int(low.sum()), float(confidence.max())
    output.info.update(n_unassigned=n_low, max_confidence=top)
    if n_low and n_low == len(low):
        output.info["unassigned_message"] = (
            f"Every cell is {UNASSIGNED!r}: threshold={prepared.threshold:g} is above the highest "
            f"confidence reached ({top:.3g}). Lower the threshold (0 gives every cell a label).")
    cell_type = pd.Categorical(labels, categories=categories)
    out.obs[keys["cell_type"]] = cell_type
    out.obs[keys["confidence"]] = confidence.astype(np.float32)


SPEC = register_spec(TaskSpec(
    name="annotate",
    title="Annotate cell types",
    doc="Transfer cell-type labels from a labelled reference to every cell or spot, with a confidence.",
    inputs=(
        Input("query", DATA, doc="the cells or spots to label, with raw counts"),
        Input("reference", REFERENCE,
              doc="labelled cells with raw counts (may be the query itself, labelled on some cells)"),
        Input("labels_key", LABELS, of="reference",
              doc="reference.obs column with the cell types (cells without a label are not used for training)"),
        Input("layer", LAYER, of="query", required=False, doc="layer of query with the raw counts (None: X)"),
        Input("reference_layer", LAYER, of="reference", required=False,
              doc="layer of reference with the raw counts (None: X)"),
    ),
    outputs=(
        Output("cell_type", "obs", CELL_TYPE_KEY,
               doc=f"predicted cell type (categorical; {UNASSIGNED!r} below the threshold)"),
        Output("confidence", "obs", CONFIDENCE_KEY, suffix="_confidence",
               doc="probability of the predicted cell type, in [0, 1]"),
    ),
    prepare=prepare,
    write=write,
    options=(
        Param("threshold", float, 0.0,
              f"Cells whose confidence is below this become {UNASSIGNED!r} (0: every cell gets a label)."),
    ),
))

TaskGen = Generator[ProgressEvent, None, AnnotationOutput]


@register("annotate", "spatialdl", native=True,
          label="Calibrated neural-network ensemble (recommended)",
          description="Native calibrated MLP ensemble on log-normalised expression (label transfer)")
def annotate_spatialdl(data: AnnotationInputs, *, n_top_genes: int | None = DEFAULT_N_TOP_GENES,
                       n_hidden: int = 128, n_members: int = 5, min_depth_fraction: float = 0.2,
                       max_epochs: int = 60, lr: float = 3e-3) -> TaskGen:
    """Transfer cell-type labels from a reference to a query with a calibrated classifier.

    An ensemble of small neural networks on log-normalised (to the reference's median depth),
    per-gene standardised expression of the shared genes, trained with depth augmentation
    (binomial thinning) and dropout so that it holds up across batches and technologies. The
    confidence (highest class probability) is calibrated by temperature scaling on out-of-fold
    predictions of the reference.

    Parameters
    ----------
    data
        The prepared query and reference (see :func:`napari_spatialdl.annotate`).
    n_top_genes
        Genes used: the marker genes of each of the reference's cell types in turn (None: every
        shared gene; all are used when there are fewer). The run metadata says which.
    n_hidden
        Hidden units of each network.
    n_members
        Networks in the ensemble (also the number of folds used for calibration); fewer when a
        cell type has fewer labelled cells than this.
    min_depth_fraction
        Training thins each cell to a random fraction of its depth between this and 1
        (robustness to shallower data; 1 disables it).
    max_epochs
        Most passes over the reference (stops earlier when the out-of-fold loss stops improving).
    lr
        Adam learning rate.

    Returns
    -------
    AnnotationOutput
        Calibrated class probabilities; ``info`` holds the expected calibration error (ECE) of
        the out-of-fold reference predictions.
    """
    for name, value, least in (("n_hidden", n_hidden, 1), ("n_members", n_members, 2),
                               ("max_epochs", max_epochs, 1)):
        if value < least:
            raise InputError(f"{name} must be at least {least}, got {value}.")
    if not 0.0 < min_depth_fraction <= 1.0:
        raise InputError(f"min_depth_fraction must be in (0, 1], got {min_depth_fraction}.")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr}.")
    if n_top_genes is not None and n_top_genes < 10:
        raise InputError(f"n_top_genes must be at least 10 (or None for all shared genes), got {n_top_genes}.")
    data = data.select_genes(n_top_genes)
    fewest = int(np.unique(data.ref_labels, return_counts=True)[1].min())
    used_members = n_members if fewest >= n_members else max(2, fewest)  # a cell of each type outside every fold
    model = CellTypeClassifier(list(data.genes), data.classes, n_hidden=n_hidden, n_members=used_members,
                               min_depth_fraction=min_depth_fraction)
    history = yield from model.fit(data.ref_counts, data.ref_labels, max_epochs=max_epochs, lr=lr,
                                   device=data.device, seed=data.seed)
    probs = model.predict_proba(data.query_counts, columns=data.query_columns)
    info: dict[str, Any] = data.gene_info()
    info.update(device=history.device, temperature=model.extra["temperature"],
                ece=model.extra["ece_after"], ece_uncalibrated=model.extra["ece_before"],
                reference_oof_accuracy=model.extra["oof_accuracy"])
    if used_members != n_members:
        info["n_members_used"] = used_members
    return AnnotationOutput(probabilities=probs, classes=list(model.classes), model=model, history=history,
                            info=info)


@register("annotate", "logreg", label="Logistic regression (quick baseline)",
          description="Baseline: logistic regression on log-normalised expression")
def annotate_logreg(data: AnnotationInputs, *, C: float = 1.0) -> TaskGen:
    """Baseline label transfer: multinomial logistic regression (scikit-learn) on log-normalised data.

    Both datasets are normalised to 10,000 counts per cell and log1p-transformed on the shared
    genes. The confidence is the predicted probability of the chosen type (not recalibrated).

    Parameters
    ----------
    data
        The prepared query and reference (see :func:`napari_spatialdl.annotate`).
    C
        Inverse L2 regularisation strength.
    """
    if not C > 0:
        raise InputError(f"C must be positive, got {C}.")
    from sklearn.linear_model import LogisticRegression

    yield ProgressEvent(0, 1, 0, message="fitting logistic regression", stage="logreg")
    Xr, Xq = data.log_normalized(dtype=np.float64)
    clf = LogisticRegression(C=C, max_iter=1000, random_state=data.seed)
    clf.fit(Xr, data.ref_labels)
    order = [list(clf.classes_).index(c) for c in data.classes]
    probs = clf.predict_proba(Xq)[:, order]
    ref_probs = clf.predict_proba(Xr)[:, order]
    codes = np.searchsorted(np.asarray(data.classes), data.ref_labels)
    yield ProgressEvent(1, 1, 1, message="done", stage="logreg")
    return AnnotationOutput(probabilities=probs, classes=list(data.classes), model=clf,
                            info={"ece_reference_training": expected_calibration_error(ref_probs, codes)})
