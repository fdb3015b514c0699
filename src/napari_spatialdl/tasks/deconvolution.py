"""Spatial deconvolution: cell-type proportions of every spot from an annotated reference.

The task's spec (inputs, outputs), its one ``prepare`` and its one ``write`` live here; the
methods only compute. Methods: ``spatialdl`` (the native NB model,
:mod:`napari_spatialdl.models.deconvolution`) and ``nnls`` (a baseline: non-negative least
squares on the reference's mean profiles); the reference backends (Stereoscope, DestVI,
Tangram) are in :mod:`.backends`. Every method writes ``spatial.obsm['spatialdl_proportions']``
(DataFrame, rows sum to 1), ``spatial.obsm['spatialdl_abundance']`` and the run metadata.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._constants import ABUNDANCE_KEY, PROPORTIONS_KEY
from ..models import ProgressEvent
from ..models.deconvolution import SpotDeconvolution, nnls_abundance, spot_neighbour_edges
from ..preprocessing import discriminative_genes, normalized_group_means
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
    Prepared,
    TaskSpec,
    register_spec,
)
from ._validate import InputError, row_sums, subset_counts

#: fewest labelled reference cells per cell type (the same rule as annotation)
MIN_CELLS_PER_TYPE = 2


@dataclass
class DeconvolutionInputs(Prepared):
    """Spots and reference cut to the shared genes (what every deconvolution method gets)."""

    reference: AnnData | None = None
    spot_counts: Any = None  # spots x shared genes (CSR stays CSR)
    ref_counts: Any = None  # labelled reference cells x shared genes
    ref_labels: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))
    cell_types: list[str] = field(default_factory=list)
    genes: pd.Index = field(default_factory=pd.Index)
    n_ref_dropped: int = 0
    n_spots_empty: int = 0
    n_shared: int = 0  # genes in both datasets (before any selection)
    layer: str | None = None
    reference_layer: str | None = None

    def coordinates(self) -> np.ndarray:
        """The spots' ``obsm['spatial']`` (checked), for methods with a spatial prior."""
        return V.check_spatial(self.data, obj="spatial")

    def select_genes(self, n_top_genes: int | None) -> DeconvolutionInputs:
        """A copy keeping the ``n_top_genes`` shared genes that best tell the cell types apart.

        Score: variance across types of ``log1p`` of each type's mean expression normalised to
        10^4 counts per cell. All genes are kept when there are no more than ``n_top_genes``.
        """
        n = len(self.genes)
        if n_top_genes is None or n <= n_top_genes:
            return self
        keep = discriminative_genes(self.ref_counts, self.ref_labels, self.cell_types, n_top_genes)
        spot_counts = self.spot_counts[:, keep]
        out = DeconvolutionInputs(**{**self.__dict__})
        out.spot_counts, out.ref_counts, out.genes = spot_counts, self.ref_counts[:, keep], self.genes[keep]
        out.n_spots_empty = int((row_sums(spot_counts) == 0).sum())
        return out

    def gene_info(self) -> dict[str, Any]:
        """What the run metadata says about the genes and cells used."""
        n, shared = len(self.genes), self.n_shared
        used = (f"the deconvolution used these {n}." if n == shared else
                f"the deconvolution used the {n} of them that best separate the cell types.")
        info: dict[str, Any] = {
            "n_genes": n,
            "n_genes_shared": shared,
            "n_genes_spatial": int(self.data.n_vars),
            "n_genes_reference": int(self.reference.n_vars),
            "genes_message": (f"{shared} genes are shared by the spatial data ({self.data.n_vars} genes) "
                              f"and the reference ({self.reference.n_vars} genes); {used}"),
            "cell_types": list(self.cell_types),
            "n_reference_cells": int(len(self.ref_labels)),
        }
        if self.n_ref_dropped:
            info["n_reference_cells_dropped"] = self.n_ref_dropped
        if self.n_spots_empty:
            info["n_spots_without_shared_counts"] = self.n_spots_empty
        return info


@dataclass
class DeconvolutionOutput(MethodOutput):
    """Per spot and cell type: proportions (rows sum to 1) and abundance (cell numbers)."""

    proportions: np.ndarray | None = None
    abundance: np.ndarray | None = None


def prepare(inputs: dict[str, Any], *, method: Any, device: Any, seed: int) -> DeconvolutionInputs:
    """Check the inputs once and cut both datasets to the shared genes (nothing is written).

    Reference cells without a label (NaN) are ignored; so are reference cells with no count in
    the shared genes. Every cell type needs at least ``MIN_CELLS_PER_TYPE`` labelled cells.
    """
    spatial, reference = inputs["spatial"], inputs["reference"]
    labels_key = inputs["labels_key"]
    layer, reference_layer = inputs.get("layer"), inputs.get("reference_layer")
    labels = V.check_obs_column(reference, labels_key, argument="labels_key", kind="labels",
                                obj="reference", allow_missing_values=True)
    spot_X = V.method_input(spatial, layer, method=method, task="deconvolution", obj="spatial", layer_arg="layer")
    ref_X = V.method_input(reference, reference_layer, method=method, task="deconvolution", obj="reference", layer_arg="reference_layer")
    genes = V.shared_genes(spatial, reference, names=("spatial", "reference"))
    labelled = pd.Series(labels).notna().to_numpy()
    ref_counts = subset_counts(ref_X, reference.var_names.get_indexer(genes), np.flatnonzero(labelled))
    ref_labels = pd.Series(labels)[labelled].astype(str).to_numpy()
    has_counts = row_sums(ref_counts) > 0
    n_dropped = int((~has_counts).sum())
    if n_dropped:
        ref_counts, ref_labels = ref_counts[has_counts], ref_labels[has_counts]
    _check_cell_types(ref_labels, labels_key, len(genes))
    spot_counts = subset_counts(spot_X, spatial.var_names.get_indexer(genes))
    n_empty = int((row_sums(spot_counts) == 0).sum())
    if n_empty == spatial.n_obs:
        raise InputError(
            f"No spot of the spatial data has any count in the {len(genes)} genes shared with the "
            "reference: check that both datasets use the same gene identifiers."
        )
    return DeconvolutionInputs(
        data=spatial, device=device, seed=seed, reference=reference, spot_counts=spot_counts,
        ref_counts=ref_counts, ref_labels=ref_labels, cell_types=sorted(np.unique(ref_labels).tolist()),
        genes=genes, n_ref_dropped=n_dropped, n_spots_empty=n_empty, n_shared=len(genes),
        layer=layer, reference_layer=reference_layer)


def _check_cell_types(ref_labels: np.ndarray, labels_key: str, n_genes: int) -> None:
    """The rule annotation uses too: at least 2 types, each with MIN_CELLS_PER_TYPE cells."""
    V.check_cell_types(pd.Series(ref_labels), labels_key=labels_key, obj="reference",
                       min_cells=MIN_CELLS_PER_TYPE,
                       context=f"among the labelled reference cells with counts in the {n_genes} shared genes")


def write(out: AnnData, prepared: DeconvolutionInputs, output: DeconvolutionOutput,
          keys: dict[str, str]) -> None:
    """Proportions and abundance as DataFrames (one column per cell type) in ``obsm``."""
    index = out.obs_names.copy()
    out.obsm[keys["proportions"]] = pd.DataFrame(np.asarray(output.proportions, dtype=np.float64),
                                                 index=index, columns=prepared.cell_types)
    out.obsm[keys["abundance"]] = pd.DataFrame(np.asarray(output.abundance, dtype=np.float64),
                                               index=index, columns=prepared.cell_types)


SPEC = register_spec(TaskSpec(
    name="deconvolve",
    title="Deconvolve spots",
    doc="Cell-type proportions of every spot from an annotated single-cell reference.",
    inputs=(
        Input("spatial", DATA, doc="the spots, with raw counts"),
        Input("reference", REFERENCE, doc="annotated single cells with raw counts"),
        Input("labels_key", LABELS, of="reference", doc="reference.obs column with the cell types"),
        Input("layer", LAYER, of="spatial", required=False, doc="layer of spatial with the raw counts (None: X)"),
        Input("reference_layer", LAYER, of="reference", required=False,
              doc="layer of reference with the raw counts (None: X)"),
    ),
    outputs=(
        Output("proportions", "obsm", PROPORTIONS_KEY, doc="cell-type proportions (rows sum to 1)"),
        Output("abundance", "obsm", ABUNDANCE_KEY, suffix="_abundance",
               doc="cell-type abundance (reference-cell units)"),
    ),
    prepare=prepare,
    write=write,
))

#: most spots x genes values in one training step (memory: ~40 bytes each with the NB's temporaries)
FULL_BATCH_VALUES = 2**25
TaskGen = Generator[ProgressEvent, None, DeconvolutionOutput]


@register("deconvolve", "spatialdl", native=True,
          label="Negative-binomial mixture (recommended)",
          description="Native NB model (Stereoscope/cell2location family) with gene-specific "
                      "platform effects, NNLS initialisation and optional spatial smoothing")
def deconvolve_spatialdl(data: DeconvolutionInputs, *, spatial_smoothing: float = 0.0,
                         n_neighbors: int = 6, refine_signatures: bool = True,
                         n_top_genes: int | None = 3000, max_epochs: int = 100, lr: float = 0.05,
                         batch_size: int | None = None) -> TaskGen:
    """Cell-type proportions of every spot with the native negative-binomial model.

    Signatures (mean counts per cell of each type) come from the reference; every spot's
    counts are modelled as NB around a non-negative mix of them, with a per-gene platform
    effect between the technologies and a per-gene dispersion; optionally the proportions
    of neighbouring spots are pulled together. Only genes present in both datasets are used.

    Parameters
    ----------
    data
        The prepared spots and reference (see :func:`napari_spatialdl.deconvolve`).
    spatial_smoothing
        Weight of the penalty on differences of proportions between neighbouring spots
        (0: off; 0.1-1: gentle to strong). Needs ``spatial.obsm['spatial']``.
    n_neighbors
        Neighbours per spot in the smoothness graph.
    refine_signatures
        Fit the signatures jointly to the reference cells and the spots (anchored by the
        reference); False keeps them at the reference means.
    n_top_genes
        When more genes are shared, use only this many: those whose expression differs most
        between the cell types (keeps large datasets fast). None: all shared genes.
    max_epochs
        Most passes over the spots; stops earlier once converged.
    lr
        Adam learning rate.
    batch_size
        Spots per gradient step (None: all spots while spots x genes <= 2^25, about 10,000 spots
        of 3,000 genes; else the most spots within that, at least 1024).

    Returns
    -------
    DeconvolutionOutput
        Proportions and abundance (in reference-cell units: an estimate of the number of cells
        of each type, up to the capture efficiency of the spatial technology).
    """
    if not (np.isfinite(spatial_smoothing) and spatial_smoothing >= 0):
        raise InputError(f"spatial_smoothing must be 0 or positive, got {spatial_smoothing}.")
    if n_neighbors < 1:
        raise InputError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    if max_epochs < 1:
        raise InputError(f"max_epochs must be at least 1, got {max_epochs}.")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr}.")
    if n_top_genes is not None and n_top_genes < 10:
        raise InputError(f"n_top_genes must be at least 10 (or None for all shared genes), got {n_top_genes}.")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be at least 1 (or None), got {batch_size}.")
    data = data.select_genes(n_top_genes)
    if batch_size is None and data.data.n_obs * len(data.genes) > FULL_BATCH_VALUES:
        # minibatches only when all spots do not fit one step: they fit a little less well
        # (RMSE 0.0716 vs 0.0700 at 10k silver-standard spots), so as few as memory allows
        batch_size = max(1024, FULL_BATCH_VALUES // max(len(data.genes), 1))
    edges = spot_neighbour_edges(data.coordinates(), n_neighbors) if spatial_smoothing > 0 else None
    yield ProgressEvent(0, max_epochs, 0, message="initialising from NNLS", stage="init")
    model = SpotDeconvolution(list(data.genes), data.cell_types, list(data.data.obs_names),
                              refine_signatures=refine_signatures)
    history = yield from model.fit(data.spot_counts, data.ref_counts, data.ref_labels,
                                   edges=edges, spatial_smoothing=float(spatial_smoothing),
                                   max_epochs=max_epochs, lr=lr, batch_size=batch_size,
                                   device=data.device, seed=data.seed)
    info = data.gene_info()
    info["device"] = history.device
    return DeconvolutionOutput(proportions=model.proportions(), abundance=model.abundance(),
                               model=model, history=history, info=info)


@register("deconvolve", "nnls", label="Least squares on mean profiles (quick baseline)",
          description="Baseline: non-negative least squares on the reference's mean normalised profiles")
def deconvolve_nnls(data: DeconvolutionInputs) -> TaskGen:
    """Baseline deconvolution: NNLS of each spot on the reference's mean normalised profiles.

    Profiles are the mean over each type's cells of counts / library size; each spot's counts are
    fitted as a non-negative combination and the weights normalised per spot. The weights are
    shares of the spot's UMIs; the abundance converts them to cell numbers with each type's mean
    library size in the reference.

    Parameters
    ----------
    data
        The prepared spots and reference (see :func:`napari_spatialdl.deconvolve`).
    """
    yield ProgressEvent(0, 1, 0, message="NNLS per spot", stage="nnls")
    lib = row_sums(data.ref_counts)
    profiles = normalized_group_means(data.ref_counts, data.ref_labels, data.cell_types, 1.0)
    mean_lib = np.array([lib[data.ref_labels == t].mean() for t in data.cell_types])
    umis = nnls_abundance(data.spot_counts, profiles)  # UMIs of each type in each spot
    totals = umis.sum(axis=1, keepdims=True)
    n_types = len(data.cell_types)
    proportions = np.where(totals > 0, umis / np.where(totals > 0, totals, 1.0), 1.0 / n_types)
    yield ProgressEvent(1, 1, 1, message="done", stage="nnls")
    return DeconvolutionOutput(proportions=proportions, abundance=umis / mean_lib, info=data.gene_info())
