"""Imputation / denoising: the expected count of every gene in every cell or spot.

Methods: ``spatialdl`` (the native count autoencoder, :mod:`napari_spatialdl.models.impute`)
and ``knn`` (a baseline: kNN smoothing in PCA space). Both write
``adata.layers['spatialdl_imputed']`` (same shape as ``adata``, on the count scale of each
cell: genes without any count get 0) and ``adata.uns['spatialdl']['impute']``.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._constants import IMPUTED_LAYER
from ..models._train import ProgressEvent, TrainingConfig, resolve_device
from ..models.impute import ImputeModel, library_sizes, log_normalise
from ._base import TaskResult, target, write_run_metadata
from ._registry import register
from ._validate import InputError, check_spatial, drop_empty_genes, get_counts

TaskGen = Generator[ProgressEvent, None, TaskResult]


# ------------------------------------------------------------------------ helpers

def check_positive(**values: float) -> None:
    """InputError for the first value that is not > 0 (``name=value`` keyword arguments)."""
    for name, value in values.items():
        if value is None or not np.isfinite(value) or value <= 0:
            raise InputError(f"{name} must be a positive number, got {value!r}.")


def check_device(device: str) -> torch.device:
    """The resolved device, or an InputError saying which devices exist."""
    try:
        return resolve_device(device)
    except ValueError as err:
        raise InputError(str(err)) from None


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def spatial_neighbours(xy: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each spot's ``k`` nearest other spots (itself excluded)."""
    from scipy.spatial import cKDTree

    n = len(xy)
    _, idx = cKDTree(xy).query(xy, k=k + 1)
    idx = np.asarray(idx).reshape(n, k + 1)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):  # drop the spot itself (not always first when coordinates repeat)
        row = idx[i][idx[i] != i]
        out[i] = row[:k]
    return out


def _counts_and_genes(adata: AnnData, layer: str | None) -> tuple[Any, np.ndarray, dict[str, Any]]:
    X = get_counts(adata, layer, what="imputation")
    if adata.n_obs < 3:
        raise InputError(f"Imputation needs at least 3 observations, got {adata.n_obs}.")
    X, genes, keep = drop_empty_genes(X, adata.var_names)
    n_dropped = int((~keep).sum())
    info: dict[str, Any] = {
        "n_genes_used": int(keep.sum()),
        "n_genes_dropped": n_dropped,
        "genes_message": (f"{int(keep.sum())} of {adata.n_vars} genes modelled; "
                          f"{n_dropped} genes without any count were left out (imputed as 0)."
                          if n_dropped else f"All {adata.n_vars} genes modelled."),
    }
    return X, keep, info


def _write(adata: AnnData, copy: bool, method: str, values: np.ndarray, keep: np.ndarray,
           params: dict[str, Any], history, seconds: float, model, info: dict[str, Any]) -> TaskResult:
    imputed = np.zeros(adata.shape, dtype=np.float32)
    imputed[:, keep] = values
    out = target(adata, copy)
    out.layers[IMPUTED_LAYER] = imputed
    write_run_metadata(out, "impute", method, params, history, seconds=seconds, **info)
    return TaskResult("impute", method, out, keys={"layers": IMPUTED_LAYER}, model=model,
                      history=history, info=info)


# ------------------------------------------------------------------------ methods

@register("impute", "spatialdl", native=True,
          description="Count autoencoder (DCA family): NB/ZINB, size factors, masked training, "
                      "optional spatial neighbours")
def impute_spatialdl(adata: AnnData, layer: str | None = None, *,
                     likelihood: Literal["zinb", "nb"] = "zinb", spatial: bool = False,
                     n_neighbors: int = 6, hidden: int = 128, bottleneck: int = 16,
                     mask_rate: float = 0.5, max_epochs: int = 300, batch_size: int = 128,
                     lr: float = 5e-3, patience: int = 10, device: str = "auto", seed: int = 0,
                     copy: bool = False) -> TaskGen:
    """Denoise counts and fill in dropouts with the native count autoencoder.

    The network reads each cell's log-normalised expression through a bottleneck and
    predicts a negative binomial (``"nb"``) or zero-inflated NB (``"zinb"``) of every
    gene's count, with mean ``library size x softmax(...)`` and a dispersion per gene.
    While training, a random half of each cell's input values is hidden and the model
    must still predict all counts, so it learns to fill gaps from the other genes.
    The result is the NB mean: the expected count of the denoised expression on the
    cell's own scale (for ZINB the dropout part is deliberately left out).

    Parameters
    ----------
    adata
        Cells or spots with raw counts (in ``X`` or ``layer``).
    layer
        Layer with the raw counts (None: ``X``).
    likelihood
        ``"zinb"`` (zero-inflated negative binomial) or ``"nb"``.
    spatial
        Also show the model each spot's spatial neighbours (mean of their normalised
        expression); needs ``adata.obsm['spatial']``.
    n_neighbors
        Number of spatial neighbours with ``spatial=True``.
    hidden
        Width of the encoder and decoder layers.
    bottleneck
        Width of the bottleneck (smaller: smoother imputation).
    mask_rate
        Fraction of input values hidden per training step (0: plain autoencoder).
    max_epochs
        Upper limit of passes over the data.
    batch_size
        Cells per training step.
    lr
        Learning rate (Adam).
    patience
        Stop when the held-out loss has not improved for this many epochs (0: never).
    device
        ``"auto"`` (GPU when there is one), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    seed
        Random seed (same seed, same result).
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    TaskResult
        ``layers['spatialdl_imputed']`` written (dense float32, adata's shape); ``model`` is the
        trained :class:`~napari_spatialdl.models.impute.ImputeModel`.
    """
    params = {"layer": layer, "likelihood": likelihood, "spatial": spatial, "n_neighbors": n_neighbors,
              "hidden": hidden, "bottleneck": bottleneck, "mask_rate": mask_rate,
              "max_epochs": max_epochs, "batch_size": batch_size, "lr": lr, "patience": patience,
              "device": device, "seed": seed}
    check_choice("likelihood", likelihood, ("zinb", "nb"))
    check_positive(hidden=hidden, bottleneck=bottleneck, max_epochs=max_epochs, batch_size=batch_size, lr=lr)
    if not 0 <= mask_rate < 1:
        raise InputError(f"mask_rate must be in [0, 1), got {mask_rate}.")
    if patience < 0:
        raise InputError(f"patience must be >= 0, got {patience}.")
    dev = check_device(device)
    X, keep, info = _counts_and_genes(adata, layer)
    neighbours = None
    if spatial:
        xy = check_spatial(adata)
        if not 1 <= n_neighbors < adata.n_obs:
            raise InputError(f"n_neighbors must be between 1 and {adata.n_obs - 1} (the number of other "
                             f"spots), got {n_neighbors}.")
        neighbours = spatial_neighbours(xy, int(n_neighbors))

    torch.manual_seed(seed)
    model = ImputeModel(int(keep.sum()), hidden=(int(hidden), int(bottleneck), int(hidden)),
                        likelihood=likelihood, spatial=spatial, mask_rate=mask_rate,
                        genes=adata.var_names[keep])
    config = TrainingConfig(max_epochs=int(max_epochs), batch_size=int(batch_size), lr=float(lr),
                            patience=int(patience), seed=int(seed), device=dev)
    start = time.perf_counter()
    history = yield from model.fit_iter(X, neighbours, config)
    values = model.predict(X, neighbours, device=dev)
    info["device"] = str(dev)
    return _write(adata, copy, "spatialdl", values, keep, params, history,
                  time.perf_counter() - start, model, info)


def knn_smooth(X, n_neighbors: int = 15, n_pcs: int = 30, seed: int = 0) -> np.ndarray:
    """Average each row's normalised expression over its ``n_neighbors`` nearest rows (itself
    included) in the PCA space of the log-normalised data; back on the row's count scale."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    library = library_sizes(X)
    scale = float(np.median(library))
    factor = scale / library
    norm = sp.csr_matrix(X, dtype=np.float32).multiply(factor).tocsr() if sp.issparse(X) else \
        np.asarray(X, dtype=np.float32) * factor
    logn = log_normalise(X, library, scale)
    logn = logn.toarray() if sp.issparse(logn) else logn
    n_comps = max(1, min(n_pcs, logn.shape[0] - 1, logn.shape[1] - 1))
    Z = PCA(n_components=n_comps, random_state=seed).fit_transform(logn - logn.mean(axis=0))
    k = min(n_neighbors, X.shape[0])
    _, idx = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z)
    n = X.shape[0]
    W = sp.csr_matrix((np.full(n * k, 1.0 / k, dtype=np.float32), (np.repeat(np.arange(n), k), idx.ravel())),
                      shape=(n, n))
    smooth = W @ norm
    smooth = smooth.toarray() if sp.issparse(smooth) else np.asarray(smooth)
    return (smooth / factor).astype(np.float32)


@register("impute", "knn", description="kNN smoothing in PCA space of log-normalised counts (baseline)")
def impute_knn(adata: AnnData, layer: str | None = None, *, n_neighbors: int = 15, n_pcs: int = 30,
               seed: int = 0, copy: bool = False) -> TaskGen:
    """Baseline imputation: average each cell over its nearest cells in expression space.

    Counts are normalised to the median library size and log1p-transformed; cells are
    compared in the first ``n_pcs`` principal components; each cell's imputed profile
    is the mean normalised expression of its ``n_neighbors`` nearest cells (itself
    included), scaled back to the cell's own library size.

    Parameters
    ----------
    adata
        Cells or spots with raw counts (in ``X`` or ``layer``).
    layer
        Layer with the raw counts (None: ``X``).
    n_neighbors
        Cells averaged per cell (itself included).
    n_pcs
        Principal components of the neighbour search.
    seed
        Random seed of the PCA solver.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    TaskResult
        ``layers['spatialdl_imputed']`` written.
    """
    params = {"layer": layer, "n_neighbors": n_neighbors, "n_pcs": n_pcs, "seed": seed}
    check_positive(n_neighbors=n_neighbors, n_pcs=n_pcs)
    X, keep, info = _counts_and_genes(adata, layer)
    start = time.perf_counter()
    yield ProgressEvent(0, 1, 0, message="kNN smoothing", stage="smooth")
    values = knn_smooth(X, int(n_neighbors), int(n_pcs), int(seed))
    yield ProgressEvent(1, 1, 1, message="done", stage="smooth", elapsed=time.perf_counter() - start)
    return _write(adata, copy, "knn", values, keep, params, None, time.perf_counter() - start, None, info)
