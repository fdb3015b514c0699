"""Spatial deconvolution: cell-type proportions of every spot from an annotated reference.

Methods: ``spatialdl`` (the native NB model, :mod:`napari_spatialdl.models.deconvolution`)
and ``nnls`` (a baseline: non-negative least squares on the reference's mean profiles).
Both write ``spatial.obsm['spatialdl_proportions']`` (DataFrame, rows sum to 1),
``spatial.obsm['spatialdl_abundance']`` and ``spatial.uns['spatialdl']['deconvolve']``.
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

from .._constants import ABUNDANCE_KEY, PROPORTIONS_KEY
from ..models._train import ProgressEvent, TrainingHistory
from ..models.deconvolution import SpotDeconvolution, nnls_abundance, spot_neighbour_edges
from ._base import TaskResult, target, write_run_metadata
from ._registry import register
from ._validate import (
    InputError,
    check_obs_key,
    check_spatial,
    get_counts,
    row_sums,
    shared_genes,
    subset_counts,
)

TaskGen = Generator[ProgressEvent, None, TaskResult]


@dataclass
class _Inputs:
    spot_counts: Any  # spots x shared genes
    ref_counts: Any  # labelled reference cells x shared genes
    ref_labels: np.ndarray
    cell_types: list[str]
    genes: pd.Index
    n_ref_dropped: int
    n_spots_empty: int
    n_shared: int = 0  # genes in both datasets (before any selection)


def prepare_deconvolution(spatial: AnnData, reference: AnnData, labels_key: str,
                          layer: str | None, reference_layer: str | None,
                          what: str = "deconvolution") -> _Inputs:
    """Check the inputs of a deconvolution method and cut both datasets to the shared genes.

    Reference cells without a label (NaN) are ignored; so are reference cells with no count
    in the shared genes. Nothing is written to the AnnDatas.
    """
    if not isinstance(spatial, AnnData) or not isinstance(reference, AnnData):
        raise InputError("spatial and reference must both be AnnData objects.")
    labels = check_obs_key(reference, labels_key, "labels_key", allow_missing_values=True)
    spot_X = get_counts(spatial, layer, what=what)
    ref_X = get_counts(reference, reference_layer, what=what)
    genes = shared_genes(spatial, reference, names=("spatial", "reference"))
    labelled = labels.notna().to_numpy()
    ref_cols = reference.var_names.get_indexer(genes)
    spot_cols = spatial.var_names.get_indexer(genes)
    ref_counts = subset_counts(ref_X, ref_cols, np.flatnonzero(labelled))
    ref_labels = labels[labelled].astype(str).to_numpy()
    has_counts = row_sums(ref_counts) > 0
    n_dropped = int((~has_counts).sum())
    if n_dropped:
        ref_counts, ref_labels = ref_counts[has_counts], ref_labels[has_counts]
    if len(np.unique(ref_labels)) < 2:
        raise InputError(
            f"Only {len(np.unique(ref_labels))} cell type is left in reference.obs[{labels_key!r}] among "
            f"the {len(ref_labels)} labelled cells with counts in the {len(genes)} shared genes: "
            "deconvolution needs at least 2 cell types."
        )
    spot_counts = subset_counts(spot_X, spot_cols)
    n_empty = int((row_sums(spot_counts) == 0).sum())
    if n_empty == spatial.n_obs:
        raise InputError(
            f"No spot has any count in the {len(genes)} genes shared with the reference: "
            "check that both datasets use the same gene identifiers."
        )
    cell_types = sorted(np.unique(ref_labels).tolist())
    return _Inputs(spot_counts, ref_counts, ref_labels, cell_types, genes, n_dropped, n_empty, len(genes))


def select_marker_genes(inputs: _Inputs, n_top_genes: int | None) -> _Inputs:
    """Keep the ``n_top_genes`` shared genes that best tell the cell types apart.

    Score: variance across types of ``log1p`` of each type's mean normalised expression
    (counts per 10^4 UMIs). All genes are kept when there are no more than ``n_top_genes``.
    """
    n = len(inputs.genes)
    if n_top_genes is None or n <= n_top_genes:
        return inputs
    R = inputs.ref_counts
    lib = np.maximum(row_sums(R), 1.0)
    normed = (sp.diags(1e4 / lib) @ R) if sp.issparse(R) else np.asarray(R) * (1e4 / lib)[:, None]
    means = np.vstack([np.asarray(normed[inputs.ref_labels == t].mean(axis=0)).ravel()
                       for t in inputs.cell_types])
    score = np.log1p(means).var(axis=0)
    keep = np.sort(np.argsort(-score, kind="stable")[:n_top_genes])
    spot_counts = inputs.spot_counts[:, keep]
    n_empty = int((row_sums(spot_counts) == 0).sum())
    return _Inputs(spot_counts, inputs.ref_counts[:, keep], inputs.ref_labels, inputs.cell_types,
                   inputs.genes[keep], inputs.n_ref_dropped, n_empty, inputs.n_shared)


def _finish(spatial: AnnData, copy: bool, method: str, proportions: np.ndarray, abundance: np.ndarray,
            inputs: _Inputs, params: dict[str, Any], history: TrainingHistory | None,
            seconds: float, model: Any, info: dict[str, Any]) -> TaskResult:
    index = spatial.obs_names.copy()
    props = pd.DataFrame(proportions, index=index, columns=inputs.cell_types)
    abund = pd.DataFrame(abundance, index=index, columns=inputs.cell_types)
    out = target(spatial, copy)
    out.obsm[PROPORTIONS_KEY] = props
    out.obsm[ABUNDANCE_KEY] = abund
    write_run_metadata(out, "deconvolve", method, params, history, seconds=seconds, **info)
    return TaskResult("deconvolve", method, out,
                      keys={"obsm": PROPORTIONS_KEY, "obsm_abundance": ABUNDANCE_KEY},
                      model=model, history=history, info=info)


def _gene_info(inputs: _Inputs, spatial: AnnData, reference: AnnData) -> dict[str, Any]:
    n, shared = len(inputs.genes), inputs.n_shared
    used = (f"the deconvolution used these {n}." if n == shared else
            f"the deconvolution used the {n} of them that best separate the cell types.")
    info: dict[str, Any] = {
        "n_genes": n,
        "n_genes_shared": shared,
        "n_genes_spatial": int(spatial.n_vars),
        "n_genes_reference": int(reference.n_vars),
        "genes_message": (f"{shared} genes are shared by the spatial data ({spatial.n_vars} genes) and the "
                          f"reference ({reference.n_vars} genes); {used}"),
        "cell_types": list(inputs.cell_types),
        "n_reference_cells": int(len(inputs.ref_labels)),
    }
    if inputs.n_ref_dropped:
        info["n_reference_cells_dropped"] = inputs.n_ref_dropped
    if inputs.n_spots_empty:
        info["n_spots_without_shared_counts"] = inputs.n_spots_empty
    return info


@register("deconvolve", "spatialdl", native=True,
          description="Native NB model (Stereoscope/cell2location family) with platform effects")
def deconvolve_spatialdl(spatial: AnnData, reference: AnnData, labels_key: str, *,
                         layer: str | None = None, reference_layer: str | None = None,
                         spatial_smoothing: float = 0.0, n_neighbors: int = 6,
                         refine_signatures: bool = True, n_top_genes: int | None = 3000,
                         max_epochs: int = 100, lr: float = 0.05, batch_size: int | None = None,
                         device: str = "auto", seed: int = 0, copy: bool = False) -> TaskGen:
    """Cell-type proportions of every spot with the native negative-binomial model.

    Signatures (mean counts per cell of each type) come from the reference; every spot's
    counts are modelled as NB around a non-negative mix of them, with a per-gene platform
    effect between the technologies and a per-gene dispersion; optionally the proportions
    of neighbouring spots are pulled together. Only genes present in both datasets are used.

    Parameters
    ----------
    spatial
        Spots with raw counts (in ``X`` or ``layer``).
    reference
        Annotated single cells with raw counts; cells whose label is missing (NaN) are ignored.
    labels_key
        ``reference.obs`` column with the cell types.
    layer
        Layer of ``spatial`` with the raw counts (None: ``X``).
    reference_layer
        Layer of ``reference`` with the raw counts (None: ``X``).
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
        Spots per gradient step (None: all spots up to 4096, else minibatches of 1024).
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``spatial``.

    Returns
    -------
    TaskResult
        ``obsm['spatialdl_proportions']`` and ``obsm['spatialdl_abundance']`` (abundance in
        reference-cell units: an estimate of the number of cells of each type, up to the
        capture efficiency of the spatial technology).
    """
    if not (np.isfinite(spatial_smoothing) and spatial_smoothing >= 0):
        raise InputError(f"spatial_smoothing must be 0 or positive, got {spatial_smoothing}.")
    if int(n_neighbors) < 1:
        raise InputError(f"n_neighbors must be at least 1, got {n_neighbors}.")
    if int(max_epochs) < 1:
        raise InputError(f"max_epochs must be at least 1, got {max_epochs}.")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr}.")
    if n_top_genes is not None and int(n_top_genes) < 10:
        raise InputError(f"n_top_genes must be at least 10 (or None for all shared genes), got {n_top_genes}.")
    if batch_size is not None and int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1 (or None), got {batch_size}.")
    inputs = prepare_deconvolution(spatial, reference, labels_key, layer, reference_layer)
    inputs = select_marker_genes(inputs, None if n_top_genes is None else int(n_top_genes))
    if batch_size is None and spatial.n_obs > 4096:
        batch_size = 1024
    edges = None
    if spatial_smoothing > 0:
        edges = spot_neighbour_edges(check_spatial(spatial), int(n_neighbors))
    start = time.perf_counter()
    yield ProgressEvent(0, int(max_epochs), 0, message="initialising from NNLS", stage="init")
    model = SpotDeconvolution(list(inputs.genes), inputs.cell_types, list(spatial.obs_names),
                              refine_signatures=refine_signatures)
    history = yield from model.fit(inputs.spot_counts, inputs.ref_counts, inputs.ref_labels,
                                   edges=edges, spatial_smoothing=float(spatial_smoothing),
                                   max_epochs=int(max_epochs), lr=float(lr),
                                   batch_size=None if batch_size is None else int(batch_size),
                                   device=device, seed=seed)
    seconds = time.perf_counter() - start
    params = dict(labels_key=labels_key, layer=layer, reference_layer=reference_layer,
                  spatial_smoothing=float(spatial_smoothing), n_neighbors=int(n_neighbors),
                  refine_signatures=bool(refine_signatures), n_top_genes=n_top_genes,
                  max_epochs=int(max_epochs), lr=float(lr), batch_size=batch_size, device=device, seed=seed)
    info = _gene_info(inputs, spatial, reference)
    info["device"] = history.device
    return _finish(spatial, copy, "spatialdl", model.proportions(), model.abundance(), inputs, params,
                   history, seconds, model, info)


@register("deconvolve", "nnls",
          description="Baseline: non-negative least squares on the reference's mean normalised profiles")
def deconvolve_nnls(spatial: AnnData, reference: AnnData, labels_key: str, *,
                    layer: str | None = None, reference_layer: str | None = None,
                    copy: bool = False) -> TaskGen:
    """Baseline deconvolution: NNLS of each spot on the reference's mean normalised profiles.

    Profiles are the mean over each type's cells of counts / library size; each spot's counts are
    fitted as a non-negative combination (``scipy.optimize.nnls``) and the weights normalised per
    spot. The weights are shares of the spot's UMIs; the abundance converts them to cell numbers
    with each type's mean library size in the reference.

    Parameters
    ----------
    spatial
        Spots with raw counts.
    reference
        Annotated single cells with raw counts; cells whose label is missing are ignored.
    labels_key
        ``reference.obs`` column with the cell types.
    layer
        Layer of ``spatial`` with the raw counts (None: ``X``).
    reference_layer
        Layer of ``reference`` with the raw counts (None: ``X``).
    copy
        Return a new AnnData instead of writing into ``spatial``.
    """
    inputs = prepare_deconvolution(spatial, reference, labels_key, layer, reference_layer, what="NNLS")
    start = time.perf_counter()
    yield ProgressEvent(0, 1, 0, message="NNLS per spot", stage="nnls")
    R = inputs.ref_counts.toarray() if sp.issparse(inputs.ref_counts) else np.asarray(inputs.ref_counts)
    R = np.asarray(R, dtype=np.float64)
    lib = R.sum(axis=1, keepdims=True)
    normed = R / lib
    types = inputs.cell_types
    profiles = np.stack([normed[inputs.ref_labels == t].mean(axis=0) for t in types])
    mean_lib = np.array([lib[inputs.ref_labels == t].mean() for t in types])
    umis = nnls_abundance(inputs.spot_counts, profiles)  # UMIs of each type in each spot
    totals = umis.sum(axis=1, keepdims=True)
    proportions = np.where(totals > 0, umis / np.where(totals > 0, totals, 1.0), 1.0 / len(types))
    abundance = umis / mean_lib
    seconds = time.perf_counter() - start
    yield ProgressEvent(1, 1, 1, message="done", stage="nnls", elapsed=seconds)
    params = dict(labels_key=labels_key, layer=layer, reference_layer=reference_layer)
    info = _gene_info(inputs, spatial, reference)
    return _finish(spatial, copy, "nnls", proportions, abundance, inputs, params, None, seconds, None, info)
