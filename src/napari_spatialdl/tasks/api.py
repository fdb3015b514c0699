"""Public task functions: dispatch to the registry, run to the end or hand out the generator."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from anndata import AnnData

from ..models._train import ProgressEvent
from ._base import TaskResult, consume
from ._registry import get_method

Progress = Callable[[ProgressEvent], None] | None
TaskGenerator = Generator[ProgressEvent, None, TaskResult]

DEFAULT_METHOD = "spatialdl"


def run_task_iter(task: str, *args: Any, method: str = DEFAULT_METHOD, **params: Any) -> TaskGenerator:
    """The generator of registry method ``method`` of ``task`` (what the GUI worker runs)."""
    return get_method(task, method).func(*args, **params)


def impute_iter(adata: AnnData, *, method: str = DEFAULT_METHOD, **params: Any) -> TaskGenerator:
    """Generator form of :func:`impute`."""
    return run_task_iter("impute", adata, method=method, **params)


def integrate_iter(adata: AnnData, batch_key: str, *, method: str = DEFAULT_METHOD,
                   **params: Any) -> TaskGenerator:
    """Generator form of :func:`integrate`."""
    return run_task_iter("integrate", adata, batch_key, method=method, **params)


def deconvolve_iter(spatial: AnnData, reference: AnnData, labels_key: str, *,
                    method: str = DEFAULT_METHOD, **params: Any) -> TaskGenerator:
    """Generator form of :func:`deconvolve`."""
    return run_task_iter("deconvolve", spatial, reference, labels_key, method=method, **params)


def annotate_iter(query: AnnData, reference: AnnData, labels_key: str, *,
                  method: str = DEFAULT_METHOD, **params: Any) -> TaskGenerator:
    """Generator form of :func:`annotate`."""
    return run_task_iter("annotate", query, reference, labels_key, method=method, **params)


def map_query_iter(query: AnnData, reference_result: TaskResult | Any, **params: Any) -> TaskGenerator:
    """Generator form of :func:`map_query`."""
    from .integrate import map_query_iter as _map

    return _map(query, reference_result, **params)


def impute(adata: AnnData, *, method: str = DEFAULT_METHOD, progress: Progress = None,
           **params: Any) -> TaskResult:
    """Denoise / impute dropout: the expected count of every gene in every cell or spot.

    Writes ``adata.layers['spatialdl_imputed']`` and ``adata.uns['spatialdl']['impute']``.
    See :func:`napari_spatialdl.tasks.impute.impute_spatialdl` for the native model's
    parameters (``layer``, ``likelihood``, ``spatial``, ``copy``, ...).
    """
    return consume(impute_iter(adata, method=method, **params), progress)


def integrate(adata: AnnData, batch_key: str, *, method: str = DEFAULT_METHOD,
              progress: Progress = None, **params: Any) -> TaskResult:
    """Batch integration: a batch-corrected latent space in ``adata.obsm['X_spatialdl']``."""
    return consume(integrate_iter(adata, batch_key, method=method, **params), progress)


def deconvolve(spatial: AnnData, reference: AnnData, labels_key: str, *,
               method: str = DEFAULT_METHOD, progress: Progress = None, **params: Any) -> TaskResult:
    """Cell-type proportions per spot from an annotated reference.

    Writes ``spatial.obsm['spatialdl_proportions']`` (DataFrame, rows sum to 1) and
    ``spatial.obsm['spatialdl_abundance']``.
    """
    return consume(deconvolve_iter(spatial, reference, labels_key, method=method, **params), progress)


def annotate(query: AnnData, reference: AnnData, labels_key: str, *, method: str = DEFAULT_METHOD,
             progress: Progress = None, **params: Any) -> TaskResult:
    """Label transfer: ``query.obs['spatialdl_cell_type']`` and ``query.obs['spatialdl_confidence']``."""
    return consume(annotate_iter(query, reference, labels_key, method=method, **params), progress)


def map_query(query: AnnData, reference_result: TaskResult | Any, *, progress: Progress = None,
              **params: Any) -> TaskResult:
    """Map a new query batch onto a trained integration model without retraining the reference."""
    return consume(map_query_iter(query, reference_result, **params), progress)
