"""Batch integration: a batch-corrected latent space of every cell or spot.

The task's spec (inputs, output), its one ``prepare`` and its one ``write`` live here; the
methods only compute. Methods: ``spatialdl`` (the native conditional VAE,
:mod:`napari_spatialdl.models.integrate`) and ``pca`` (a baseline: the unintegrated PCA that
batch correction is measured against); the reference backends (Harmony, scVI, scANVI) are in
:mod:`.backends`. Every method writes ``adata.obsm['X_spatialdl']`` (observations x latent
dimensions) and the run metadata ``adata.uns['spatialdl']['integrate']``; a second method's
result goes beside the first (``obsm['X_spatialdl_<method>']``) unless ``key_added`` says where.

:func:`map_query_iter` maps a query with new batches onto a trained ``spatialdl`` reference
without retraining it (scArches-style: only new batch vectors are learned). The query goes
through the same :func:`prepare` (batch column, counts, the reference model's genes) and the
same :func:`write` (keys, run metadata) as :func:`napari_spatialdl.integrate`.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import LATENT_KEY
from ..models import ProgressEvent
from ..models.integrate import IntegrationModel, default_config
from ..preprocessing import highly_variable_genes, log_normalize, scale
from . import _validate as V
from ._base import TaskResult
from ._registry import get_method, register
from ._spec import (
    BATCH,
    DATA,
    LAYER,
    Input,
    MethodOutput,
    Output,
    Prepared,
    TaskSpec,
    check_key_added,
    finish_run,
    register_spec,
    resolve_device_arg,
    resolve_seed,
    seed_everything,
)
from ._validate import InputError, check_choice, check_n_latent, check_positive

__all__ = [
    "DEFAULT_N_TOP_GENES",
    "SPEC",
    "IntegrationInputs",
    "IntegrationOutput",
    "default_epochs",
    "integrate_pca",
    "integrate_spatialdl",
    "map_query_iter",
    "prepare",
    "principal_components",
    "write",
]

#: genes the native model uses by default when the data have more (highly variable genes)
DEFAULT_N_TOP_GENES = 2000


@dataclass
class IntegrationInputs(Prepared):
    """What every integration method gets: the checked values of the genes used and the batches.

    ``counts`` is observations x ``genes`` (CSR stays CSR): raw counts, or the normalised values
    when the method accepts them (``is_counts`` False). ``batch_codes[i]`` indexes ``batches``
    (sorted batch names). For a query (:func:`map_query_iter`) ``genes`` are the reference
    model's, in its order, with the ``n_genes_missing`` the query lacks as zero columns.
    """

    counts: Any = None
    batch_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    batches: list[str] = field(default_factory=list)
    genes: pd.Index = field(default_factory=pd.Index)
    batch_key: str | None = None
    layer: str | None = None
    is_counts: bool = True
    n_genes_total: int = 0  # genes of the data (adata.n_vars)
    n_genes_dropped: int = 0  # genes without any count, left out
    n_genes_missing: int = 0  # query mapping: reference genes the query lacks (counted as zero)
    n_top_genes: int | None = None  # the selection applied by select_genes (None: none)
    obj: str = "adata"

    def batch_names(self) -> np.ndarray:
        """Every observation's batch name (object array)."""
        return np.asarray(self.batches, dtype=object)[self.batch_codes]

    def select_genes(self, n_top_genes: int | None) -> IntegrationInputs:
        """A copy keeping the ``n_top_genes`` most highly variable genes (all when there are fewer).

        Highly variable: the normalised dispersion of the log-normalised counts
        (:func:`napari_spatialdl.preprocessing.highly_variable_genes`). Needs raw counts.
        """
        if n_top_genes is None or len(self.genes) <= n_top_genes:
            return self
        if not self.is_counts:
            raise ValueError("select_genes needs raw counts (a method registered with counts=True).")
        keep = highly_variable_genes(self.counts, int(n_top_genes))
        return dataclasses.replace(self, counts=self.counts[:, keep], genes=self.genes[keep],
                                   n_top_genes=int(n_top_genes), info=dict(self.info))

    def expression(self) -> Any:
        """Log-normalised values (``log1p`` of counts per 10^4) of raw counts; other values as given."""
        return log_normalize(self.counts) if self.is_counts else self.counts

    def gene_info(self) -> dict[str, Any]:
        """What the run metadata says about the genes used."""
        n, total = len(self.genes), self.n_genes_total
        if self.n_genes_missing or self.obj == "query":
            present = n - self.n_genes_missing
            message = f"{present} of the reference's {n} genes found in the query" + (
                f"; {self.n_genes_missing} missing genes counted as zero." if self.n_genes_missing else ".")
            return {"n_genes_used": present, "n_genes_missing": self.n_genes_missing,
                    "genes_message": message}
        with_counts = total - self.n_genes_dropped
        parts = []
        if self.n_top_genes is not None:
            parts.append(f"{n} of {total} genes used: the {n} most highly variable (n_top_genes="
                         f"{self.n_top_genes}) of the {with_counts} genes with counts")
        elif self.n_genes_dropped:
            parts.append(f"{n} of {total} genes used")
        else:
            parts.append(f"All {total} genes used")
        if self.n_genes_dropped:
            parts.append(f"{self.n_genes_dropped} genes without any count were left out")
        return {"n_genes_used": n, "n_genes_dropped": self.n_genes_dropped,
                "gene_selection": "highly_variable" if self.n_top_genes is not None else "all",
                "genes_message": "; ".join(parts) + "."}


@dataclass
class IntegrationOutput(MethodOutput):
    """The latent space: observations x dimensions."""

    latent: np.ndarray | None = None


# ----------------------------------------------------------------------------- prepare, write

def _query_genes(X: Any, adata: AnnData, genes: Sequence[str], obj: str) -> tuple[Any, int]:
    """``X`` (of ``adata``) on the columns ``genes``; genes ``adata`` lacks become zero columns."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise InputError(
            f"{obj} has {len(dup)} gene name{'s' if len(dup) != 1 else ''} that occur more than once "
            f"(e.g. {', '.join(map(repr, list(dup[:3])))}), so its genes cannot be matched to the reference "
            f"model's: call {obj}.var_names_make_unique() first.")
    genes = pd.Index([str(g) for g in genes])
    cols = adata.var_names.astype(str).get_indexer(genes)
    present = cols >= 0
    if present.sum() < max(1, len(genes) / 2):
        raise InputError(
            f"Only {int(present.sum())} of the reference's {len(genes)} genes are in the {obj}: at least "
            "half are needed. Check that both use the same gene identifiers "
            f"(e.g. {list(genes[:3])} vs {list(adata.var_names[:3])}).")
    Xq = V.subset_counts(X, cols[present])
    if not present.all():
        where = np.flatnonzero(present)
        if sp.issparse(Xq):
            Xq = sp.csr_matrix((Xq.data, where[Xq.indices], Xq.indptr), shape=(adata.n_obs, len(genes)))
        else:
            full = np.zeros((adata.n_obs, len(genes)), dtype=np.float32)
            full[:, where] = Xq
            Xq = full
    empty = V.row_sums(Xq) == 0
    if empty.any():
        raise InputError(
            f"{int(empty.sum())} {obj} observations have no counts in the reference's genes: remove them "
            f"(e.g. {obj}[{obj}[:, genes].X.sum(1) > 0]).")
    return Xq, int((~present).sum())


def prepare(inputs: dict[str, Any], *, method: Any, device: Any, seed: int,
            genes: Sequence[str] | None = None, obj: str = "adata", min_batches: int = 2
            ) -> IntegrationInputs:
    """Check the inputs once and extract the values of the genes used (nothing is written).

    Parameters
    ----------
    inputs
        The task's inputs by name (``adata``, ``batch_key``, ``layer``).
    method
        The registered method: with ``counts`` True the values must be raw counts; otherwise
        normalised values are accepted too (raw counts are still checked as counts).
    device, seed
        Resolved by the core.
    genes
        The genes to use, in this order (a reference model's, for :func:`map_query_iter`):
        at least half must be in ``adata``, the others count as zero. None: every gene of
        ``adata`` with any count.
    obj
        The name of ``adata`` in the messages (``"query"``).
    min_batches
        The fewest batches (1 for a query).

    Returns
    -------
    IntegrationInputs
        The values (CSR stays CSR), the batch codes and names, the genes.

    Raises
    ------
    InputError
        A batch column that does not group the observations (absent, missing values, one value,
        an ID or a measurement, a batch of one observation), values that are not raw counts, an
        empty observation, repeated gene names or too few of the reference's genes (query).
    """
    adata, batch_key, layer = inputs["adata"], inputs.get("batch_key"), inputs.get("layer")
    batches = V.check_obs_column(adata, batch_key, argument="batch_key", kind="batch", obj=obj,
                                 min_values=min_batches)
    what = "query mapping" if genes is not None else f"the {method.name} integration"
    if method.counts:
        X, is_counts = V.get_counts(adata, layer, what=what, obj=obj, layer_arg="layer"), True
    else:
        X = V.get_matrix(adata, layer, obj=obj, layer_arg="layer")
        is_counts = V._holds_counts(X)
        if is_counts:  # raw counts get the checks of count models (no empty observation)
            X = V.get_counts(adata, layer, what=what, obj=obj, layer_arg="layer")
    n_dropped = n_missing = 0
    if genes is None:
        X, used, keep = V.drop_empty_genes(X, adata.var_names)
        n_dropped = int((~keep).sum())
    else:
        X, n_missing = _query_genes(X, adata, genes, obj)
        used = pd.Index([str(g) for g in genes])
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    names = sorted(pd.unique(batches.to_numpy()))
    codes = pd.Categorical(batches.to_numpy(), categories=names).codes.astype(np.int64)
    prepared = IntegrationInputs(
        data=adata, device=device, seed=seed, counts=X, batch_codes=codes, batches=list(names),
        genes=used, batch_key=batch_key, layer=layer, is_counts=is_counts, n_genes_total=int(adata.n_vars),
        n_genes_dropped=n_dropped, n_genes_missing=n_missing, obj=obj)
    prepared.info.update(prepared.gene_info())
    if genes is None:
        prepared.info.update(batches=list(names), n_batches=len(names))
    return prepared


def write(out: AnnData, prepared: IntegrationInputs, output: IntegrationOutput, keys: dict[str, str]) -> None:
    """The latent space as a float32 array in ``obsm``."""
    latent = np.asarray(output.latent, dtype=np.float32)
    if latent.ndim != 2 or latent.shape[0] != out.n_obs:
        raise ValueError(f"The latent space has shape {latent.shape}; expected ({out.n_obs}, dimensions).")
    out.obsm[keys["latent"]] = latent


SPEC = register_spec(TaskSpec(
    name="integrate",
    title="Integrate batches",
    doc="A batch-corrected latent space of every cell or spot from several batches.",
    inputs=(
        Input("adata", DATA, doc="cells or spots with raw counts, from several batches"),
        Input("batch_key", BATCH, of="adata",
              doc="adata.obs column with each observation's batch (sample, section, donor)"),
        Input("layer", LAYER, of="adata", required=False, doc="layer of adata with the raw counts (None: X)"),
    ),
    outputs=(Output("latent", "obsm", LATENT_KEY, doc="batch-corrected latent space (observations x dimensions)"),),
    prepare=prepare,
    write=write,
))

TaskGen = Generator[ProgressEvent, None, IntegrationOutput]


# ----------------------------------------------------------------------------- methods

def default_epochs(n_obs: int) -> int:
    """Epoch budget: 100 up to 2,000 observations, then ``100 * 2000 / n`` (the same number
    of training steps), at least 20."""
    return int(np.clip(round(100 * min(1.0, 2000 / max(n_obs, 1))), 20, 100))


@register("integrate", "spatialdl", native=True, label="Batch-aware autoencoder (recommended)",
          description="Conditional VAE (scVI family) with the batch as covariate; maps new query "
                      "batches without retraining")
def integrate_spatialdl(data: IntegrationInputs, *, n_latent: int = 10, n_hidden: int = 128,
                        likelihood: Literal["nb", "zinb"] = "nb", dropout: float = 0.1,
                        n_top_genes: int | None = DEFAULT_N_TOP_GENES, max_epochs: int | None = None,
                        batch_size: int = 128, lr: float = 1e-2, kl_warmup: int | None = None) -> TaskGen:
    """Batch-corrected latent space with the native conditional VAE.

    Encoder and decoder are told each cell's batch; the decoder models every gene's raw
    count as negative binomial (or zero-inflated NB) around ``library size x softmax(...)``
    with a dispersion per gene. Since the decoder adds the batch back, the latent space
    does not need to carry it: its mean is written to ``obsm['X_spatialdl']``. Use the
    result with :func:`napari_spatialdl.map_query` to place new batches in the same space.

    Parameters
    ----------
    data
        The prepared counts and batches (see :func:`napari_spatialdl.integrate`).
    n_latent
        Dimensions of the latent space.
    n_hidden
        Width of the hidden layers.
    likelihood
        ``"nb"`` (negative binomial) or ``"zinb"`` (zero-inflated NB).
    dropout
        Dropout rate of the hidden layers while training.
    n_top_genes
        When the data have more genes, model only this many: the most highly variable ones
        (as users of scvi-tools do; keeps large datasets fast). None: every gene with counts.
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

    Returns
    -------
    IntegrationOutput
        The latent means; ``model`` is the trained
        :class:`~napari_spatialdl.models.integrate.IntegrationModel`.
    """
    check_choice("likelihood", likelihood, ("nb", "zinb"))
    check_positive(n_hidden=n_hidden, batch_size=batch_size, lr=lr)
    if max_epochs is not None:
        check_positive(max_epochs=max_epochs)
    if not 0 <= dropout < 1:
        raise InputError(f"dropout must be in [0, 1), got {dropout}.")
    if kl_warmup is not None and kl_warmup < 0:
        raise InputError(f"kl_warmup must be >= 0, got {kl_warmup}.")
    if n_top_genes is not None and n_top_genes < 10:
        raise InputError(f"n_top_genes must be at least 10 (or None for all genes), got {n_top_genes}.")
    data = data.select_genes(n_top_genes)
    n_obs, n_genes = data.counts.shape
    check_n_latent(n_latent, n_obs, n_genes)
    epochs = max_epochs if max_epochs is not None else default_epochs(n_obs)
    warmup = kl_warmup if kl_warmup is not None else max(1, round(epochs / 4))
    model = IntegrationModel(n_genes, data.batches, n_latent=n_latent, n_hidden=n_hidden,
                             likelihood=likelihood, dropout=dropout, genes=list(data.genes))
    model.extra["batch_key"] = str(data.batch_key)
    config = default_config(max_epochs=epochs, batch_size=batch_size, lr=lr, seed=data.seed,
                            device=data.device)
    history = yield from model.fit_iter(data.counts, data.batch_codes, config, kl_warmup=warmup)
    latent = model.latent(data.counts, data.batch_codes, device=data.device)
    info = data.gene_info()
    info.update(max_epochs=epochs, kl_warmup=warmup, device=str(data.device))
    return IntegrationOutput(latent=latent, model=model, history=history, info=info)


def principal_components(data: IntegrationInputs, n_comps: int) -> np.ndarray:
    """The first ``n_comps`` principal components of the prepared values.

    Raw counts are log-normalised (:meth:`IntegrationInputs.expression`), every gene is scaled
    to unit variance (clipped at 10) and projected; the PCA solver is seeded with ``data.seed``.
    """
    from sklearn.decomposition import PCA

    Y = scale(data.expression(), max_value=10.0)
    return PCA(n_components=int(n_comps), random_state=data.seed).fit_transform(Y).astype(np.float32)


@register("integrate", "pca", label="Principal components, no correction (baseline)",
          description="PCA of log-normalised, scaled counts, no batch correction (baseline)")
def integrate_pca(data: IntegrationInputs, *, n_comps: int = 30) -> TaskGen:
    """Baseline: the unintegrated PCA embedding that batch correction is measured against.

    Counts are normalised to 10,000 per cell, log1p-transformed, each gene scaled to unit
    variance (clipped at 10) and projected on the first ``n_comps`` principal components.
    The batches are not used (only checked, so that the inputs match the other methods').

    Parameters
    ----------
    data
        The prepared counts and batches (see :func:`napari_spatialdl.integrate`).
    n_comps
        Number of principal components.

    Returns
    -------
    IntegrationOutput
        The principal components (by decreasing variance).
    """
    n_obs, n_genes = data.counts.shape
    if not 1 <= n_comps < min(n_obs, n_genes):
        raise InputError(f"n_comps={n_comps} must be at least 1 and smaller than the number of observations "
                         f"({n_obs}) and genes ({n_genes}): choose n_comps < {min(n_obs, n_genes)}.")
    start = time.perf_counter()
    yield ProgressEvent(0, 1, 0, message="PCA", stage="pca")
    latent = principal_components(data, n_comps)
    yield ProgressEvent(1, 1, 1, message="done", stage="pca", elapsed=time.perf_counter() - start)
    return IntegrationOutput(latent=latent, info=data.gene_info())


# ----------------------------------------------------------------------------- query mapping

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


def _map_onto(data: IntegrationInputs, ref_model: IntegrationModel, *, max_epochs: int, batch_size: int,
              lr: float) -> TaskGen:
    """Train new batch vectors of an extended copy of ``ref_model`` on the query; its latent space."""
    names = data.batch_names()
    new_batches = [b for b in data.batches if b not in ref_model.batches]
    model = ref_model.extend(new_batches)
    codes = model.batch_codes(names)
    history = None
    if new_batches:
        config = default_config(max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=data.seed,
                                device=data.device, patience=10)
        history = yield from model.fit_iter(X=data.counts, batch_codes=codes, config=config, kl_warmup=0)
    else:
        yield ProgressEvent(1, 1, 0, message="all query batches are known to the reference", stage="map")
    latent = model.latent(data.counts, codes, device=data.device)
    info = data.gene_info()
    info.update(new_batches=new_batches, known_batches=sorted(set(data.batches) - set(new_batches)),
                device=str(data.device))
    return IntegrationOutput(latent=latent, model=model, history=history, info=info)


def map_query_iter(query: AnnData, reference: TaskResult | IntegrationModel | str | Path, *,
                   batch_key: str | None = None, layer: str | None = None, max_epochs: int = 100,
                   batch_size: int = 128, lr: float = 1e-2, key_added: str | None = None,
                   device: str = "auto", seed: int = 0, copy: bool = False
                   ) -> Generator[ProgressEvent, None, TaskResult]:
    """Place a query with new batches in a trained reference's latent space (scArches-style).

    The reference model is not changed: a copy gets one new vector per new batch in
    its encoder and decoder, and only those are trained on the query (everything else is
    frozen). Query batches that the reference already knows reuse its vectors. Query
    genes are matched to the reference's genes by name; reference genes the query lacks
    count as zero (at most half of them may be missing), extra query genes are ignored.
    The query is checked as :func:`napari_spatialdl.integrate` checks its data, and the result
    is written the same way (nothing is written before the mapping has finished).

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
    key_added
        Write under this ``obsm`` key instead of ``'X_spatialdl'``.
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
    call = dict(locals())  # the call as bound to the signature (recorded in the run metadata)
    if not isinstance(query, AnnData):
        raise InputError(f"query must be an AnnData, got {type(query).__name__}.")
    ref_model = _reference_model(reference)
    if ref_model.genes is None:
        raise InputError("The reference model has no gene names: it cannot be matched to a query.")
    if batch_key is None:
        batch_key = ref_model.extra.get("batch_key")
    if batch_key is None:
        raise InputError("Pass batch_key=: the query.obs column naming each observation's batch.")
    params = V.coerce_params(map_query_iter, {"max_epochs": max_epochs, "batch_size": batch_size, "lr": lr})
    check_positive(**params)
    if not isinstance(copy, bool | np.bool_):
        raise InputError(f"copy must be True or False, got {copy!r}.")
    dev = resolve_device_arg(device)
    seed_int = resolve_seed(seed)
    check_key_added(key_added)
    seed_everything(seed_int)
    prepared = prepare({"adata": query, "batch_key": batch_key, "layer": layer},
                       method=get_method("integrate", "spatialdl"), device=dev, seed=seed_int,
                       genes=ref_model.genes, obj="query", min_batches=1)
    start = time.perf_counter()
    output = yield from _map_onto(prepared, ref_model, **params)
    seconds = time.perf_counter() - start
    recorded = {k: call[k] for k in inspect.signature(map_query_iter).parameters
                if k not in ("query", "reference", "copy", "key_added")}
    recorded.update(params, batch_key=batch_key, device=str(device), seed=seed_int, mode="query mapping")
    return finish_run(SPEC, "spatialdl", query, prepared, output, recorded, key_added=key_added,
                      copy=bool(copy), seconds=seconds, device=dev)
