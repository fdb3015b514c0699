"""Predict the genes a spatial panel did not measure, from a scRNA-seq reference (impute methods).

Two methods of the ``impute`` task that need ``reference=`` (the task's spec, its ``prepare``
and its ``write`` are in :mod:`.imputation`; the Tangram and gimVI backends are in
:mod:`.backends.tangram_genes` and :mod:`.backends.gimvi`):

``transfer`` (native)
    A count topic model (:mod:`napari_spatialdl.models.gene_transfer`): an encoder that reads only
    the genes both datasets share maps each observation to proportions of expression programmes
    learned on the reference with all its genes; fine-tuned on the spatial counts of the shared
    genes with a per-gene platform effect. The programmes x proportions are the compact
    representation: any gene reconstructs with one product.
``knn_reference`` (baseline)
    The mean of the nearest reference cells in the PCA space of the shared genes.

Every method returns ``obsm['spatialdl_predicted_genes']`` (a DataFrame observations x genes,
expression per 10^4 transcripts on the reference's scale) or, for large predictions (``dense``),
``obsm['spatialdl_predicted_genes_factors']`` + ``uns['spatialdl_predicted_genes_loadings']``;
:func:`reconstruct` returns any predicted gene from either form.

Usage::

    sdl.impute(spatial, reference=ref, method="transfer", genes=["Gad1", "Sst"])
    sdl.impute(spatial, reference=ref, method="transfer", genes="all", dense=False)
    values = reconstruct(spatial, ["Gad1"])          # DataFrame obs x ["Gad1"]
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import PREDICTED_GENES_KEY
from ..models import ProgressEvent, TrainingConfig
from ..models._train import merge_histories
from ..models.gene_transfer import GeneTransferModel
from ..preprocessing import gene_moments, log_normalize, scale
from ._registry import register
from ._spec import LABELS, Role, run_records
from ._validate import InputError, check_positive
from .imputation import PREDICTION_SCALE, ImputationInputs, ImputationOutput

__all__ = ["predict_knn_reference", "predict_transfer", "predicted_gene_names", "reconstruct"]

TaskGen = Generator[ProgressEvent, None, ImputationOutput]
ReferenceLabels = Annotated[str, Role(LABELS, of="reference")]


def _frame(values: np.ndarray, data: ImputationInputs, genes: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(values, dtype=np.float32), index=data.data.obs_names.copy(),
                        columns=pd.Index(genes).astype(str))


# ----------------------------------------------------------------------------- native

@register("impute", "transfer", native=True, needs=("reference",),
          label="Predict genes from a reference (recommended)",
          description="Count topic model learned on the reference's cells through the shared genes only, "
                      "fine-tuned on the spatial counts with a per-gene platform effect (NB)")
def predict_transfer(data: ImputationInputs, *, genes: list[str] | str = "all", include_measured: bool = False,
                     labels_key: ReferenceLabels | None = None, n_topics: int = 64, hidden: int = 256,
                     mask_rate: float = 0.25, finetune: bool = True, max_epochs: int = 200,
                     finetune_epochs: int = 50, batch_size: int = 256, lr: float = 3e-3,
                     patience: int = 10, dense: bool | Literal["auto"] = "auto") -> TaskGen:
    """Predict unmeasured genes with the native transfer model.

    Each observation's expression is modelled as a mixture of expression programmes learned on
    the reference with all its genes; an encoder that sees only the genes both datasets measure
    gives each observation's programme proportions. Step 1 fits the programmes and the encoder
    on the reference's cells (negative binomial likelihood of every modelled gene); step 2
    (``finetune``) adapts the encoder to the spatial counts of the shared genes, with the
    programmes fixed and a per-gene platform effect; step 3 predicts proportions x programmes.
    Spots that mix cells are mixtures of programmes, so single-cell and spot data work alike.

    Parameters
    ----------
    data
        The prepared data and reference (see :func:`napari_spatialdl.impute`).
    genes
        Genes to predict: a list of reference genes (text: comma-separated), or ``'all'``: every
        reference gene that the data lacks.
    include_measured
        Also allow (with ``'all'``: add) genes the data measures, re-estimated from the reference.
    labels_key
        Optional ``reference.obs`` column of cell types: the programmes start at the types' mean
        profiles (one programme per type at least) instead of only k-means clusters.
    n_topics
        Number of expression programmes (more: finer within-type variation).
    hidden
        Width of the encoder's first hidden layer (the second is half of it).
    mask_rate
        Fraction of the encoder's input values hidden per reference training step (robustness
        to dropouts).
    finetune
        Adapt the encoder to the spatial data (step 2); False applies the reference's encoder as is.
    max_epochs
        Most passes over the reference (step 1).
    finetune_epochs
        Most passes over the spatial data (step 2).
    batch_size
        Observations per training step.
    lr
        Learning rate of step 1 (step 2 uses a third of it).
    patience
        Stop a step when the held-out loss has not improved for this many epochs (0: never).
    dense
        ``True``: the predicted genes as a table ``obsm['spatialdl_predicted_genes']``;
        ``False``: the compact form (proportions in ``obsm['spatialdl_predicted_genes_factors']``,
        programmes in ``uns['spatialdl_predicted_genes_loadings']``; :func:`reconstruct` gives any
        gene); ``'auto'``: a table up to 5e7 values.

    Returns
    -------
    ImputationOutput
        ``predicted`` (or the factors and loadings); ``model`` is the trained
        :class:`~napari_spatialdl.models.gene_transfer.GeneTransferModel`.
    """
    check_positive(n_topics=n_topics, hidden=hidden, max_epochs=max_epochs, batch_size=batch_size, lr=lr)
    if finetune and finetune_epochs < 1:
        raise InputError(f"finetune_epochs must be at least 1 with finetune=True, got {finetune_epochs}.")
    if not 0 <= mask_rate < 1:
        raise InputError(f"mask_rate must be in [0, 1), got {mask_rate}.")
    if patience < 0:
        raise InputError(f"patience must be >= 0, got {patience}.")
    if n_topics < 2:
        raise InputError(f"n_topics must be at least 2, got {n_topics}.")
    targets, target_counts = data.prediction_targets(genes, include_measured)
    as_table = data.prediction_dense(len(targets), dense, method="transfer")
    labels = data.reference_column("labels_key")
    n_types = 0
    if labels is not None:
        present = pd.Series(labels).notna().to_numpy()
        n_types = int(pd.Series(labels[present]).astype(str).nunique())
    K = max(int(n_topics), n_types)
    shared = data.shared_genes
    extra_mask = ~targets.isin(shared)
    extra_genes = targets[extra_mask]
    extra_counts = target_counts[:, np.flatnonzero(extra_mask)] if extra_mask.any() else None
    model = GeneTransferModel(shared, extra_genes, n_topics=K, hidden=(int(hidden), max(1, int(hidden) // 2)),
                              mask_rate=mask_rate)
    config = TrainingConfig(max_epochs=max_epochs, batch_size=batch_size, lr=lr, patience=patience,
                            seed=data.seed, device=data.device)
    yield ProgressEvent(0, max_epochs, 0, message="starting the programmes (k-means)", stage="reference")
    histories = [(yield from model.fit_reference_iter(data.reference_shared, extra_counts, data.reference_library,
                                                      labels, config))]
    model.set_spatial_moments(data.spatial_shared)
    if finetune:
        config2 = TrainingConfig(max_epochs=finetune_epochs, batch_size=batch_size, lr=lr / 3, patience=patience,
                                 seed=data.seed, device=data.device)
        histories.append((yield from model.fit_spatial_iter(data.spatial_shared, config2)))
    history = merge_histories(histories)
    theta = model.proportions(data.spatial_shared, "spatial", device=data.device)
    loadings = model.loadings(list(targets))
    info: dict[str, Any] = {"device": history.device, "n_topics": K, "finetuned": bool(finetune),
                            "n_genes_predicted": len(targets), "dense": as_table,
                            "platform_effect_median": float(np.median(model.platform_effect))}
    if as_table:
        predicted = _frame(theta @ loadings.T * PREDICTION_SCALE, data, targets)
        return ImputationOutput(predicted=predicted, model=model, history=history, info=info)
    info["dense_message"] = ("compact prediction written (factors x loadings): "
                             "napari_spatialdl.tasks.gene_prediction.reconstruct(adata, genes) gives any gene")
    return ImputationOutput(prediction_factors=theta, prediction_loadings=loadings, prediction_genes=targets,
                            prediction_link="linear", model=model, history=history, info=info)


# ----------------------------------------------------------------------------- baseline

def _standardised(X: Any) -> np.ndarray:
    """Log-normalised (over the given genes), each gene scaled by this dataset's own moments."""
    L = log_normalize(X)
    mean, std = gene_moments(L)
    return scale(L, 10.0, mean=mean, std=np.where(std > 0, std, 1.0))


@register("impute", "knn_reference", needs=("reference",),
          label="Average of similar reference cells (quick baseline)",
          description="Baseline: mean of the nearest reference cells in the PCA space of the shared genes")
def predict_knn_reference(data: ImputationInputs, *, genes: list[str] | str = "all",
                          include_measured: bool = False, n_neighbors: int = 15, n_pcs: int = 30,
                          dense: bool | Literal["auto"] = "auto") -> TaskGen:
    """Baseline gene prediction: average the reference cells that look most alike.

    Both datasets are log-normalised over the shared genes and each gene standardised within its
    own dataset; principal components are fitted on the reference and applied to the spatial
    data; each observation's prediction is the mean, over its ``n_neighbors`` nearest reference
    cells, of their expression of the predicted genes per 10^4 transcripts.

    Parameters
    ----------
    data
        The prepared data and reference (see :func:`napari_spatialdl.impute`).
    genes
        Genes to predict: a list of reference genes (text: comma-separated), or ``'all'``: every
        reference gene that the data lacks.
    include_measured
        Also allow (with ``'all'``: add) genes the data measures.
    n_neighbors
        Reference cells averaged per observation (capped by the number of reference cells).
    n_pcs
        Principal components of the neighbour search (capped by the data's size).
    dense
        ``True``: a table; ``False``: the compact form (neighbour weights in ``obsm``, the reference
        cells' expression in ``uns``); ``'auto'``: a table up to 5e7 values.

    Returns
    -------
    ImputationOutput
        ``predicted`` (or the factors and loadings).
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    check_positive(n_neighbors=n_neighbors, n_pcs=n_pcs)
    targets, target_counts = data.prediction_targets(genes, include_measured)
    as_table = data.prediction_dense(len(targets), dense, method="knn_reference")
    start = time.perf_counter()
    yield ProgressEvent(0, 1, 0, message="nearest reference cells", stage="knn")
    Zr, Zs = _standardised(data.reference_shared), _standardised(data.spatial_shared)
    n_ref = Zr.shape[0]
    n_comp = max(1, min(int(n_pcs), n_ref - 1, Zr.shape[1] - 1))
    pca = PCA(n_components=n_comp, random_state=data.seed).fit(Zr)
    k = min(int(n_neighbors), n_ref)
    _, idx = NearestNeighbors(n_neighbors=k).fit(pca.transform(Zr)).kneighbors(pca.transform(Zs))
    n = Zs.shape[0]
    W = sp.csr_matrix((np.full(n * k, 1.0 / k, dtype=np.float32), (np.repeat(np.arange(n), k), idx.ravel())),
                      shape=(n, n_ref))
    share = sp.diags(1.0 / np.maximum(data.reference_library, 1.0)) @ target_counts  # reference cells x genes
    share = sp.csr_matrix(share, dtype=np.float32) if sp.issparse(share) else np.asarray(share, dtype=np.float32)
    yield ProgressEvent(1, 1, 1, message="done", stage="knn", elapsed=time.perf_counter() - start)
    info = {"n_neighbors": k, "n_pcs": n_comp, "n_genes_predicted": len(targets), "dense": as_table}
    if as_table:
        values = W @ share
        values = values.toarray() if sp.issparse(values) else np.asarray(values)
        return ImputationOutput(predicted=_frame(values * PREDICTION_SCALE, data, targets), info=info)
    loadings = share.T.tocsr() if sp.issparse(share) else np.ascontiguousarray(share.T)
    return ImputationOutput(prediction_factors=W, prediction_loadings=loadings, prediction_genes=targets,
                            prediction_link="linear", info=info)


# ----------------------------------------------------------------------------- reading results

def _prediction_records(adata: AnnData) -> dict[str, dict]:
    out = {}
    for name, rec in run_records(adata, "impute").items():
        keys = rec.get("keys")
        if isinstance(keys, dict) and ("predicted" in keys or "prediction_factors" in keys):
            out[name] = {k: str(v).split("/", 1)[1] for k, v in keys.items()}
    return out


def _find(adata: AnnData, key: str | None) -> dict[str, str]:
    """The keys (by output field) of the gene-prediction result ``key`` names."""
    records = _prediction_records(adata)
    if key is None:
        for name in (PREDICTED_GENES_KEY, f"{PREDICTED_GENES_KEY}_factors"):
            if name in records:
                return records[name]
        if len(records) == 1:
            return next(iter(records.values()))
        if not records:
            if isinstance(adata.obsm.get(PREDICTED_GENES_KEY), pd.DataFrame):
                return {"predicted": PREDICTED_GENES_KEY}
            raise InputError("adata holds no genes predicted from a reference: run "
                             "sdl.impute(adata, reference=ref, method='transfer') first.")
        raise InputError(f"adata holds {len(records)} gene predictions ({', '.join(map(repr, records))}): pass "
                         "key= the one to read.")
    for keys in records.values():
        if key in keys.values():
            return keys
    if isinstance(adata.obsm.get(key), pd.DataFrame):  # a table without its run record
        return {"predicted": key}
    if isinstance(adata.uns.get(key), dict) and "loadings" in adata.uns[key]:
        return {"prediction_loadings": key, "prediction_factors": str(adata.uns[key].get("factors_key", ""))}
    known = [k for keys in records.values() for k in keys.values()]
    raise InputError(f"adata has no gene prediction under {key!r}"
                     + (f"; its gene predictions are under {', '.join(map(repr, known))}." if known else
                        ": run sdl.impute(adata, reference=ref, method='transfer') first."))


def predicted_gene_names(adata: AnnData, key: str | None = None) -> list[str]:
    """The genes a gene-prediction result in ``adata`` can give (table columns or loadings' genes).

    Parameters
    ----------
    adata
        The AnnData the prediction was written to.
    key
        Any key of the result (the table's, the factors' or the loadings'); None: the result under
        the default keys, or the only one.

    Returns
    -------
    list of str
        Gene names, in the order of the result.
    """
    keys = _find(adata, key)
    if "predicted" in keys and keys["predicted"] in adata.obsm:
        return [str(g) for g in adata.obsm[keys["predicted"]].columns]
    return [str(g) for g in np.asarray(adata.uns[keys["prediction_loadings"]]["genes"]).ravel()]


def reconstruct(adata: AnnData, genes: str | list[str], key: str | None = None) -> pd.DataFrame:
    """The predicted expression of ``genes`` in every observation, from a gene-prediction result.

    Reads the table (``obsm['spatialdl_predicted_genes']``) when the run wrote one, else computes
    the genes from the compact form: ``link(factors @ loadings[genes].T) * scale``. The GUI calls
    this when a predicted gene is chosen.

    Parameters
    ----------
    adata
        The AnnData the prediction was written to (also after ``write_h5ad``/``read_h5ad``).
    genes
        One gene name, or a list, among the predicted genes (:func:`predicted_gene_names`).
    key
        Any key of the result (``TaskResult.keys`` lists them; with ``key_added='K'``:
        ``'K_predicted'`` or ``'K_predicted_factors'``); None: the result under the default keys,
        or the only one.

    Returns
    -------
    pandas.DataFrame
        float32, ``adata.obs_names`` x ``genes``: expression per 10^4 transcripts (the reference's
        scale); equal (up to float32 round-off) to the table a dense run writes.

    Raises
    ------
    InputError
        No gene prediction (under ``key``), genes that the result does not hold (named, with the
        closest ones), a compact form with a part missing.
    """
    from .imputation import _suggest

    wanted = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    keys = _find(adata, key)
    if "predicted" in keys and isinstance(adata.obsm.get(keys["predicted"]), pd.DataFrame):
        table = adata.obsm[keys["predicted"]]
        available = pd.Index(table.columns.astype(str))
        _check_genes(wanted, available, keys["predicted"], _suggest)
        out = table.copy()
        out.columns = available
        return out[wanted].astype(np.float32)
    entry = adata.uns.get(keys.get("prediction_loadings", ""))
    factors_key = keys.get("prediction_factors", "")
    if not isinstance(entry, dict) or factors_key not in adata.obsm:
        raise InputError(f"The gene prediction {key or PREDICTED_GENES_KEY!r} is incomplete (its factors in obsm or its "
                         "loadings in uns are missing): run the prediction again.")
    available = pd.Index([str(g) for g in np.asarray(entry["genes"]).ravel()])
    _check_genes(wanted, available, keys["prediction_loadings"], _suggest)
    rows = available.get_indexer(wanted)
    loadings = entry["loadings"]
    L = loadings[rows]
    L = L.toarray() if sp.issparse(L) else np.asarray(L, dtype=np.float32)
    F = adata.obsm[factors_key]
    values = F @ L.T
    values = np.asarray(values.toarray() if sp.issparse(values) else values, dtype=np.float32)
    link = str(entry.get("link", "linear"))
    if link == "exp":
        values = np.exp(values)
    elif link != "linear":
        raise InputError(f"Unknown link {link!r} in adata.uns[{keys['prediction_loadings']!r}].")
    values = values * np.float32(entry.get("scale", PREDICTION_SCALE))
    return pd.DataFrame(values, index=adata.obs_names.copy(), columns=wanted)


def _check_genes(wanted: list[str], available: pd.Index, where: str, suggest: Any) -> None:
    missing = [g for g in wanted if g not in available]
    if missing:
        listed = ", ".join(f"{g!r}{suggest(g, available)}" for g in missing[:5])
        raise InputError(f"The gene prediction {where!r} holds {len(available)} genes, not {listed}: predict them "
                         "first (sdl.impute(..., reference=ref, genes=[...])) or choose among "
                         "predicted_gene_names(adata).")
