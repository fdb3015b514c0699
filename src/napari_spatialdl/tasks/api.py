"""Public task functions: thin doors onto :func:`._spec.run_task_iter`.

Each function's inputs are its task spec's inputs; the method's parameters pass through
``**params`` and are checked against the method's signature (``napari-spatialdl methods TASK``
lists them, and so does :func:`method_parameters`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from anndata import AnnData

from ..models import ProgressEvent
from ._base import TaskResult, consume
from ._spec import Param, get_spec, method_params, run_task_iter

Progress = Callable[[ProgressEvent], None] | None
TaskGenerator = Generator[ProgressEvent, None, TaskResult]

DEFAULT_METHOD = "spatialdl"

__all__ = [
    "annotate", "annotate_iter", "deconvolve", "deconvolve_iter", "impute", "impute_iter",
    "integrate", "integrate_iter", "map_query", "map_query_iter", "method_parameters",
    "run_task", "run_task_iter",
]


def method_parameters(task: str, method: str = DEFAULT_METHOD) -> list[Param]:
    """The parameters ``method`` of ``task`` takes besides the task's inputs (name, type, default, doc)."""
    from ._registry import get_method

    get_spec(task)
    return method_params(get_method(task, method))


def run_task(task: str, *inputs: Any, method: str = DEFAULT_METHOD, progress: Progress = None,
             **params: Any) -> TaskResult:
    """Run ``method`` of ``task`` to the end (``progress`` gets every event)."""
    return consume(run_task_iter(task, *inputs, method=method, **params), progress)


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
    from .integration import map_query_iter as _map

    return _map(query, reference_result, **params)


def impute(adata: AnnData, *, method: str = DEFAULT_METHOD, layer: str | None = None,
           reference: AnnData | None = None, key_added: str | None = None, copy: bool = False,
           device: str = "auto", seed: int = 0, progress: Progress = None,
           **params: Any) -> TaskResult:
    """Denoise the measured genes, or predict unmeasured ones from a reference.

    Parameters
    ----------
    adata
        Cells or spots with raw counts (in ``X`` or ``layer``).
    method
        A registered impute method (``napari-spatialdl methods impute``); ``'spatialdl'``:
        the count autoencoder (denoising).
    layer
        Layer of ``adata`` with the raw counts (None: ``X``).
    reference
        A scRNA-seq reference with the genes to predict (methods that predict genes only).
    key_added
        Write under this key instead of the default (``layers['spatialdl_imputed']``).
    copy
        Return a new AnnData instead of writing into ``adata``.
    device
        ``'auto'`` (GPU when there is one), ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed (same seed, same result).
    progress
        Called with every :class:`~napari_spatialdl.models.ProgressEvent`.
    **params
        The method's parameters (:func:`method_parameters`).
    """
    return consume(impute_iter(adata, method=method, layer=layer, reference=reference,
                               key_added=key_added, copy=copy, device=device, seed=seed,
                               **params), progress)


def integrate(adata: AnnData, batch_key: str, *, method: str = DEFAULT_METHOD,
              layer: str | None = None, key_added: str | None = None, copy: bool = False,
              device: str = "auto", seed: int = 0, progress: Progress = None,
              **params: Any) -> TaskResult:
    """Batch integration: a batch-corrected latent space in ``adata.obsm['X_spatialdl']``.

    Parameters
    ----------
    adata
        Cells or spots with raw counts, several batches.
    batch_key
        ``adata.obs`` column with the batch (sample, section, replicate) of each observation.
    method
        A registered integrate method; ``'spatialdl'``: the conditional VAE.
    layer
        Layer of ``adata`` with the raw counts (None: ``X``).
    key_added
        Write under this ``obsm`` key instead of ``'X_spatialdl'``.
    copy, device, seed, progress
        As in :func:`impute`.
    **params
        The method's parameters (:func:`method_parameters`).
    """
    return consume(integrate_iter(adata, batch_key, method=method, layer=layer, key_added=key_added,
                                  copy=copy, device=device, seed=seed, **params), progress)


def deconvolve(spatial: AnnData, reference: AnnData, labels_key: str, *,
               method: str = DEFAULT_METHOD, layer: str | None = None,
               reference_layer: str | None = None, key_added: str | None = None,
               copy: bool = False, device: str = "auto", seed: int = 0,
               progress: Progress = None, **params: Any) -> TaskResult:
    """Cell-type proportions per spot from an annotated reference.

    Writes ``spatial.obsm['spatialdl_proportions']`` (DataFrame, rows sum to 1) and
    ``spatial.obsm['spatialdl_abundance']``; with ``key_added='K'``: ``obsm['K']`` and
    ``obsm['K_abundance']``. A second method does not overwrite another method's result: it goes
    to ``obsm['spatialdl_proportions_<method>']`` unless ``key_added`` says where.

    Parameters
    ----------
    spatial
        Spots with raw counts (in ``X`` or ``layer``).
    reference
        Annotated single cells with raw counts; cells whose label is missing (NaN) are ignored.
    labels_key
        ``reference.obs`` column with the cell types.
    method
        A registered deconvolve method; ``'spatialdl'``: the native NB model.
    layer
        Layer of ``spatial`` with the raw counts (None: ``X``).
    reference_layer
        Layer of ``reference`` with the raw counts (None: ``X``).
    key_added, copy, device, seed, progress
        As in :func:`impute`.
    **params
        The method's parameters (:func:`method_parameters`).
    """
    return consume(deconvolve_iter(spatial, reference, labels_key, method=method, layer=layer,
                                   reference_layer=reference_layer, key_added=key_added, copy=copy,
                                   device=device, seed=seed, **params), progress)


def annotate(query: AnnData, reference: AnnData, labels_key: str, *, method: str = DEFAULT_METHOD,
             layer: str | None = None, reference_layer: str | None = None,
             threshold: float = 0.0, key_added: str | None = None, copy: bool = False,
             device: str = "auto", seed: int = 0, progress: Progress = None,
             **params: Any) -> TaskResult:
    """Label transfer: ``query.obs['spatialdl_cell_type']`` and ``query.obs['spatialdl_confidence']``.

    Parameters
    ----------
    query
        Cells or spots to label, raw counts. May be the same AnnData as ``reference``.
    reference
        Labelled cells with raw counts; cells whose label is missing (NaN) are not used for training.
    labels_key
        ``reference.obs`` column with the cell types.
    method
        A registered annotate method; ``'spatialdl'``: the calibrated MLP ensemble.
    layer
        Layer of ``query`` with the raw counts (None: ``X``).
    reference_layer
        Layer of ``reference`` with the raw counts (None: ``X``).
    threshold
        Cells whose confidence is below this become ``'unassigned'`` (0: every cell gets a label).
    key_added, copy, device, seed, progress
        As in :func:`impute`.
    **params
        The method's parameters (:func:`method_parameters`).
    """
    return consume(annotate_iter(query, reference, labels_key, method=method, layer=layer,
                                 reference_layer=reference_layer, threshold=threshold,
                                 key_added=key_added, copy=copy, device=device, seed=seed,
                                 **params), progress)


def map_query(query: AnnData, reference_result: TaskResult | Any, *, progress: Progress = None,
              **params: Any) -> TaskResult:
    """Map a new query batch onto a trained integration model without retraining the reference."""
    return consume(map_query_iter(query, reference_result, **params), progress)
