"""Batch integration: a batch-corrected latent space in ``adata.obsm['X_spatialdl']``.

Methods: ``spatialdl`` (the native conditional VAE, :mod:`napari_spatialdl.models.integrate`)
and ``pca`` (a baseline: PCA of the log-normalised counts, no correction). Both write
``adata.obsm['X_spatialdl']`` and ``adata.uns['spatialdl']['integrate']``.

:func:`map_query_iter` maps a query with new batches onto a trained ``spatialdl``
reference without retraining it (scArches-style: only new batch vectors are learned).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from .._constants import LATENT_KEY
from ..models._train import ProgressEvent
from ..models.integrate import IntegrationModel, default_config
from ._base import TaskResult, target, write_run_metadata
from ._registry import register
from ._validate import InputError, check_n_latent, check_obs_key, drop_empty_genes, get_counts
from ._validate import check_choice, check_positive
from ._spec import resolve_device_arg as check_device

TaskGen = Generator[ProgressEvent, None, TaskResult]


def _write(adata: AnnData, copy: bool, method: str, latent: np.ndarray, params: dict[str, Any],
           history, seconds: float, model, info: dict[str, Any]) -> TaskResult:
    out = target(adata, copy)
    out.obsm[LATENT_KEY] = np.asarray(latent, dtype=np.float32)
    write_run_metadata(out, "integrate", method, params, history, seconds=seconds, **info)
    return TaskResult("integrate", method, out, keys={"obsm": LATENT_KEY}, model=model,
                      history=history, info=info)


def default_epochs(n_obs: int) -> int:
    """Epoch budget: 100 up to 2,000 observations, then ``100 * 2000 / n`` (the same number
    of training steps), at least 20."""
    return int(np.clip(round(100 * min(1.0, 2000 / max(n_obs, 1))), 20, 100))


@register("integrate", "spatialdl", native=True,
          description="Conditional VAE (scVI family) with the batch as covariate; maps new query "
                      "batches without retraining")
def integrate_spatialdl(adata: AnnData, batch_key: str, layer: str | None = None, *,
                        n_latent: int = 10, n_hidden: int = 128,
                        likelihood: Literal["nb", "zinb"] = "nb", dropout: float = 0.1,
                        max_epochs: int | None = None, batch_size: int = 128, lr: float = 1e-2,
                        kl_warmup: int | None = None, device: str = "auto", seed: int = 0,
                        copy: bool = False) -> TaskGen:
    """Batch-corrected latent space with the native conditional VAE.

    Encoder and decoder are told each cell's batch; the decoder models every gene's raw
    count as negative binomial (or zero-inflated NB) around ``library size x softmax(...)``
    with a dispersion per gene. Since the decoder adds the batch back, the latent space
    does not need to carry it: its mean is written to ``obsm['X_spatialdl']``. Use the
    result's model with :func:`map_query_iter` to place new batches in the same space.

    Parameters
    ----------
    adata
        Cells or spots with raw counts (in ``X`` or ``layer``).
    batch_key
        ``adata.obs`` column naming each observation's batch (sample, section, donor).
    layer
        Layer with the raw counts (None: ``X``).
    n_latent
        Dimensions of the latent space.
    n_hidden
        Width of the hidden layers.
    likelihood
        ``"nb"`` (negative binomial) or ``"zinb"`` (zero-inflated NB).
    dropout
        Dropout rate of the hidden layers while training.
    max_epochs
        Passes over the data (None: 100 for up to 2,000 observations, fewer for more:
        ``100 * 2000 / n_obs``, at least 20).
    batch_size
        Observations per training step.
    lr
        Learning rate (Adam).
    kl_warmup
        Epochs over which the KL term's weight grows from 0 to 1 (None: a quarter of the
        epochs). Training stops early only after the warm-up, when the loss stalls for 20 epochs.
    device
        ``"auto"`` (GPU when there is one), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    seed
        Random seed (same seed, same result).
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    TaskResult
        ``obsm['X_spatialdl']`` written; ``model`` is the trained
        :class:`~napari_spatialdl.models.integrate.IntegrationModel`.
    """
    params = {"batch_key": batch_key, "layer": layer, "n_latent": n_latent, "n_hidden": n_hidden,
              "likelihood": likelihood, "dropout": dropout, "max_epochs": max_epochs,
              "batch_size": batch_size, "lr": lr, "kl_warmup": kl_warmup, "device": device, "seed": seed}
    check_choice("likelihood", likelihood, ("nb", "zinb"))
    check_positive(n_hidden=n_hidden, batch_size=batch_size, lr=lr)
    if max_epochs is not None:
        check_positive(max_epochs=max_epochs)
    if not 0 <= dropout < 1:
        raise InputError(f"dropout must be in [0, 1), got {dropout}.")
    if kl_warmup is not None and kl_warmup < 0:
        raise InputError(f"kl_warmup must be >= 0, got {kl_warmup}.")
    dev = check_device(device)
    batches = check_obs_key(adata, batch_key, "batch_key", min_values=2)
    X = get_counts(adata, layer, what="integration")
    X, genes, keep = drop_empty_genes(X, adata.var_names)
    check_n_latent(int(n_latent), adata.n_obs, int(keep.sum()))
    n_dropped = int((~keep).sum())
    batch_names = sorted(pd.unique(batches.to_numpy()))
    epochs = int(max_epochs) if max_epochs is not None else default_epochs(adata.n_obs)
    warmup = int(kl_warmup) if kl_warmup is not None else max(1, round(epochs / 4))
    info: dict[str, Any] = {
        "n_genes_used": int(keep.sum()), "n_genes_dropped": n_dropped,
        "genes_message": (f"{int(keep.sum())} of {adata.n_vars} genes used; {n_dropped} genes without "
                          "any count were left out." if n_dropped else f"All {adata.n_vars} genes used."),
        "batches": batch_names, "n_batches": len(batch_names), "max_epochs": epochs, "kl_warmup": warmup,
    }

    torch.manual_seed(seed)
    model = IntegrationModel(int(keep.sum()), batch_names, n_latent=int(n_latent), n_hidden=int(n_hidden),
                             likelihood=likelihood, dropout=float(dropout), genes=genes)
    model.extra["batch_key"] = str(batch_key)
    codes = model.batch_codes(batches.to_numpy())
    config = default_config(max_epochs=epochs, batch_size=int(batch_size), lr=float(lr), seed=int(seed),
                            device=dev)
    start = time.perf_counter()
    history = yield from model.fit_iter(X, codes, config, kl_warmup=warmup)
    latent = model.latent(X, codes, device=dev)
    info["device"] = str(dev)
    return _write(adata, copy, "spatialdl", latent, params, history, time.perf_counter() - start,
                  model, info)


def _reference_model(reference: Any) -> IntegrationModel:
    if isinstance(reference, IntegrationModel):
        return reference
    if isinstance(reference, TaskResult):
        if isinstance(reference.model, IntegrationModel):
            return reference.model
        raise InputError(
            f"This {reference.task} result (method {reference.method!r}) has no spatialdl integration "
            "model: run integrate(..., method='spatialdl') on the reference first."
        )
    if isinstance(reference, str | Path):
        path = Path(reference)
        if not path.is_file():
            raise InputError(f"No saved model at {path}.")
        try:
            return IntegrationModel.load(path)
        except ValueError as err:
            raise InputError(str(err)) from None
    raise InputError(
        "reference must be the TaskResult of integrate(..., method='spatialdl'), its .model, or the "
        f"path of a saved model; got {type(reference).__name__}."
    )


def map_query_iter(query: AnnData, reference: TaskResult | IntegrationModel | str | Path, *,
                   batch_key: str | None = None, layer: str | None = None, max_epochs: int = 100,
                   batch_size: int = 128, lr: float = 1e-2, device: str = "auto", seed: int = 0,
                   copy: bool = False) -> TaskGen:
    """Place a query with new batches in a trained reference's latent space (scArches-style).

    The reference model is not changed: a copy gets one new vector per new batch in
    its encoder and decoder, and only those are trained on the query (everything else is
    frozen). Query batches that the reference already knows reuse its vectors. Query
    genes are matched to the reference's genes by name; reference genes the query lacks
    count as zero (at most half of them may be missing), extra query genes are ignored.

    Parameters
    ----------
    query
        Cells or spots with raw counts (in ``X`` or ``layer``).
    reference
        The result of ``integrate(..., method='spatialdl')``, its ``.model``, or a saved model path.
    batch_key
        ``query.obs`` column with the query's batches (None: the reference's batch_key).
    layer
        Layer of ``query`` with the raw counts (None: ``X``).
    max_epochs
        Passes over the query.
    batch_size
        Observations per training step.
    lr
        Learning rate of the new batch vectors.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``query``.

    Returns
    -------
    TaskResult
        ``query.obsm['X_spatialdl']`` written, in the reference's latent space; ``model`` is
        the extended model (reference + new batches).
    """
    ref_model = _reference_model(reference)
    batch_key = batch_key if batch_key is not None else ref_model.extra.get("batch_key")
    params = {"batch_key": batch_key, "layer": layer, "max_epochs": max_epochs, "batch_size": batch_size,
              "lr": lr, "device": device, "seed": seed, "mode": "query mapping"}
    check_positive(max_epochs=max_epochs, batch_size=batch_size, lr=lr)
    dev = check_device(device)
    if batch_key is None:
        raise InputError("Pass batch_key=: the query.obs column naming each observation's batch.")
    batches = check_obs_key(query, batch_key, "batch_key", min_values=1)
    X = get_counts(query, layer, what="query mapping")
    genes = ref_model.genes
    if genes is None:
        raise InputError("The reference model has no gene names: it cannot be matched to a query.")
    cols = query.var_names.get_indexer(pd.Index(genes))
    present = cols >= 0
    if present.sum() < max(1, len(genes) / 2):
        raise InputError(
            f"Only {int(present.sum())} of the reference's {len(genes)} genes are in the query: at least "
            "half are needed. Check that both use the same gene identifiers "
            f"(e.g. {genes[:3]} vs {list(query.var_names[:3])})."
        )
    Xq = sp.csr_matrix(X)[:, cols[present]] if sp.issparse(X) else np.asarray(X)[:, cols[present]]
    if not present.all():
        full = sp.lil_matrix((query.n_obs, len(genes)), dtype=np.float32) if sp.issparse(Xq) else \
            np.zeros((query.n_obs, len(genes)), dtype=np.float32)
        full[:, np.flatnonzero(present)] = Xq
        Xq = sp.csr_matrix(full) if sp.issparse(full) else full
    empty = np.asarray(Xq.sum(axis=1)).ravel() == 0
    if empty.any():
        raise InputError(
            f"{int(empty.sum())} query observations have no counts in the reference's genes: remove them "
            "(e.g. query[query[:, genes].X.sum(1) > 0])."
        )
    names = batches.to_numpy()
    new_batches = [b for b in sorted(pd.unique(names)) if b not in ref_model.batches]
    info: dict[str, Any] = {
        "n_genes_used": int(present.sum()), "n_genes_missing": int((~present).sum()),
        "genes_message": (f"{int(present.sum())} of the reference's {len(genes)} genes found in the query"
                          + (f"; {int((~present).sum())} missing genes counted as zero." if not present.all()
                             else ".")),
        "new_batches": new_batches, "known_batches": sorted(set(names) - set(new_batches)),
    }

    torch.manual_seed(seed)
    model = ref_model.extend(new_batches)
    codes = model.batch_codes(names)
    start = time.perf_counter()
    history = None
    if new_batches:
        config = default_config(max_epochs=int(max_epochs), batch_size=int(batch_size), lr=float(lr),
                                seed=int(seed), device=dev, patience=10)
        history = yield from model.fit_iter(X=Xq, batch_codes=codes, config=config, kl_warmup=0)
    else:
        yield ProgressEvent(1, 1, 0, message="all query batches are known to the reference", stage="map")
    latent = model.latent(Xq, codes, device=dev)
    info["device"] = str(dev)
    return _write(query, copy, "spatialdl", latent, params, history, time.perf_counter() - start,
                  model, info)


@register("integrate", "pca", description="PCA of log-normalised counts, no batch correction (baseline)")
def integrate_pca(adata: AnnData, batch_key: str, layer: str | None = None, *, n_comps: int = 30,
                  seed: int = 0, copy: bool = False) -> TaskGen:
    """Baseline: the unintegrated PCA embedding that batch correction is measured against.

    Counts are normalised to 10,000 per cell, log1p-transformed, each gene scaled to unit
    variance (clipped at 10) and projected on the first ``n_comps`` principal components.
    The batches are not used (only checked, so that the inputs match the other methods').

    Parameters
    ----------
    adata
        Cells or spots with raw counts (in ``X`` or ``layer``).
    batch_key
        ``adata.obs`` column with the batches (not used by the embedding).
    layer
        Layer with the raw counts (None: ``X``).
    n_comps
        Number of principal components.
    seed
        Random seed of the PCA solver.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    TaskResult
        ``obsm['X_spatialdl']`` written.
    """
    from sklearn.decomposition import PCA

    params = {"batch_key": batch_key, "layer": layer, "n_comps": n_comps, "seed": seed}
    check_obs_key(adata, batch_key, "batch_key", min_values=2)
    X = get_counts(adata, layer, what="PCA")
    X, genes, keep = drop_empty_genes(X, adata.var_names)
    check_n_latent(int(n_comps), adata.n_obs, int(keep.sum()))
    start = time.perf_counter()
    yield ProgressEvent(0, 1, 0, message="PCA", stage="pca")
    X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    Y = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)
    sd = Y.std(axis=0)
    Y = np.clip((Y - Y.mean(axis=0)) / np.where(sd > 0, sd, 1.0), -10, 10)
    latent = PCA(n_components=int(n_comps), random_state=seed).fit_transform(Y)
    yield ProgressEvent(1, 1, 1, message="done", stage="pca", elapsed=time.perf_counter() - start)
    info = {"n_genes_used": int(keep.sum()), "n_genes_dropped": int((~keep).sum())}
    return _write(adata, copy, "pca", latent, params, None, time.perf_counter() - start, None, info)
