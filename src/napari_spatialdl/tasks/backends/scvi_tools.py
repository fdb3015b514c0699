"""scvi-tools as methods of the tasks: the published models next to the native ones.

========== ============================================================
task       methods
========== ============================================================
integrate  ``scvi`` (SCVI latent space), ``scanvi`` (SCANVI, uses labels)
deconvolve ``stereoscope`` (RNA/SpatialStereoscope), ``destvi`` (CondSCVI + DestVI)
annotate   ``scanvi`` (SCANVI on reference + query)
impute     ``scvi`` (SCVI expected counts)
========== ============================================================

Each method gets its task's prepared inputs (validated, genes picked, counts extracted; the
same object the native method gets), builds the AnnData scvi-tools wants from the prepared
counts, and returns the task's output object; the task writes it. Models train in a helper
thread so that every epoch is reported (with the loss) while training runs; closing the
generator asks the trainer to stop at the end of the current epoch and waits for it.

scvi-tools is imported only when a method runs (``pip install 'napari-spatialdl[bench]'``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ...models import ProgressEvent, TrainingHistory
from .._registry import register
from .._spec import BATCH, BatchKey, LabelsKey, Role
from .._validate import InputError
from ..annotation import AnnotationInputs, AnnotationOutput
from ..deconvolution import DeconvolutionInputs, DeconvolutionOutput
from ..imputation import ImputationInputs, ImputationOutput
from ..integration import IntegrationInputs, IntegrationOutput
from ._common import deconvolution_output, versions

_BATCH = "_sdl_batch"
_LABELS = "_sdl_labels"
_UNLABELED = "_sdl_unlabeled"


# ----------------------------------------------------------------------------- helpers

def _adata(counts: Any, obs_names: Any, genes: Any, obs: dict[str, Any] | None = None) -> AnnData:
    """A fresh AnnData of prepared counts (float32 CSR) for scvi-tools; obs columns categorical."""
    out = AnnData(X=sp.csr_matrix(counts, dtype=np.float32),
                  obs=pd.DataFrame(index=pd.Index(obs_names).astype(str)),
                  var=pd.DataFrame(index=pd.Index(genes).astype(str)))
    for key, values in (obs or {}).items():
        out.obs[key] = pd.Categorical(np.asarray(values).astype(str))
    return out


def _check_epochs(**epochs: int | None) -> None:
    for name, value in epochs.items():
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1 (or None for scvi-tools' default), got {value}.")


def _check_latent(n_latent: int, n_obs: int, n_genes: int) -> None:
    if n_latent < 1:
        raise InputError(f"n_latent must be at least 1, got {n_latent}.")
    if n_latent >= min(n_obs, n_genes):
        raise InputError(f"n_latent={n_latent} must be smaller than both the number of observations "
                         f"({n_obs}) and of genes ({n_genes}): choose a smaller n_latent.")


def _check_likelihood(gene_likelihood: str) -> None:
    if gene_likelihood not in ("zinb", "nb", "poisson"):
        raise InputError(f"gene_likelihood must be 'zinb', 'nb' or 'poisson', got {gene_likelihood!r}.")


def _seed(seed: int) -> None:
    import scvi

    scvi.settings.seed = int(seed)


def _accelerator(device: Any) -> tuple[str, Any]:
    """Lightning's ``accelerator`` and ``devices`` for a torch device."""
    if device.type == "cuda":
        return "gpu", [device.index] if device.index is not None else 1
    return ("mps" if device.type == "mps" else "cpu"), 1


def _epoch_callback(events: queue.Queue, stop: threading.Event, n_epochs: int, stage: str,
                    start: float) -> Any:
    """A Lightning callback that reports every epoch and stops the trainer on request."""
    from lightning.pytorch.callbacks import Callback

    def metric(metrics: dict, *names: str) -> float | None:
        for name in names:
            if name in metrics:
                try:
                    return float(metrics[name])
                except (TypeError, ValueError):
                    continue
        return None

    class _EpochReporter(Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # noqa: D401 (Lightning hook)
            m = trainer.callback_metrics
            events.put(ProgressEvent(
                epoch=trainer.current_epoch + 1, n_epochs=n_epochs, step=int(trainer.global_step),
                train_loss=metric(m, "train_loss_epoch", "train_loss", "elbo_train"),
                val_loss=metric(m, "validation_loss", "elbo_validation"),
                elapsed=time.perf_counter() - start, stage=stage,
            ))
            if stop.is_set():
                trainer.should_stop = True

    return _EpochReporter()


_DONE = object()


def _train(model: Any, n_epochs: int, device: Any, stage: str, **kwargs: Any
           ) -> Generator[ProgressEvent, None, TrainingHistory]:
    """``model.train`` (scvi-tools) in a helper thread, yielding its epochs; returns the history.

    Closing the generator stops training after the current epoch (and waits for the thread);
    an exception raised in training is re-raised here.
    """
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    errors: list[BaseException] = []
    start = time.perf_counter()
    callback = _epoch_callback(events, stop, n_epochs, stage, start)
    accelerator, devices = _accelerator(device)

    def work() -> None:
        try:
            model.train(max_epochs=n_epochs, accelerator=accelerator, devices=devices,
                        enable_progress_bar=False, callbacks=[callback], **kwargs)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            errors.append(exc)
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=work, name=f"spatialdl-{stage}", daemon=True)
    thread.start()
    try:
        while True:
            item = events.get()
            if item is _DONE:
                break
            yield item
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
    return _history(model, time.perf_counter() - start, device)


def _default_epochs(max_epochs: int | None, n_obs: int) -> int:
    """``max_epochs``, or scvi-tools' heuristic ``min(400, 20000 / n_obs * 400)``."""
    if max_epochs is not None:
        return int(max_epochs)
    from scvi.model._utils import get_max_epochs_heuristic

    return int(get_max_epochs_heuristic(n_obs))


def _history(model: Any, seconds: float, device: Any) -> TrainingHistory:
    hist = getattr(model, "history", None) or {}

    def series(*names: str) -> list[float]:
        for name in names:
            if name in hist:
                return [float(v) for v in np.asarray(hist[name]).ravel()]
        return []

    train_loss = series("train_loss_epoch", "train_loss", "elbo_train")
    val_loss = series("validation_loss", "elbo_validation")
    watched = val_loss or train_loss
    return TrainingHistory(train_loss=train_loss, val_loss=val_loss, n_epochs=len(train_loss),
                           best_epoch=int(np.argmin(watched)) + 1 if watched else 0,
                           stopped_early=False, seconds=float(seconds), device=str(device))


def _merge(parts: list[TrainingHistory]) -> TrainingHistory:
    """One history of consecutive trainings (pre-training, then the second model)."""
    out = TrainingHistory(device=parts[-1].device)
    for h in parts:
        out.train_loss += h.train_loss
        out.val_loss += h.val_loss
        out.n_epochs += h.n_epochs
        out.seconds += h.seconds
    out.best_epoch = parts[-1].best_epoch
    return out


# ----------------------------------------------------------------------------- deconvolution

DeconvolutionGen = Generator[ProgressEvent, None, DeconvolutionOutput]


def _deconvolution_adatas(data: DeconvolutionInputs) -> tuple[AnnData, AnnData]:
    """(reference cells with their labels, spots) from the prepared counts of the shared genes."""
    ref = _adata(data.ref_counts, [f"ref{i}" for i in range(len(data.ref_labels))], data.genes,
                 {_LABELS: data.ref_labels})
    st = _adata(data.spot_counts, data.data.obs_names, data.genes)
    return ref, st


def _proportions(model: Any) -> pd.DataFrame:
    table = model.get_proportions()
    table.columns = table.columns.astype(str)
    return table


@register("deconvolve", "stereoscope", requires=("scvi",),
          label="scvi-tools Stereoscope (published method)",
          description="scvi-tools RNAStereoscope + SpatialStereoscope (reference implementation)")
def deconvolve_stereoscope(data: DeconvolutionInputs, *, sc_epochs: int = 400,
                           st_epochs: int = 400) -> DeconvolutionGen:
    """Deconvolution with Stereoscope (scvi-tools): per-type NB signatures, then spot weights.

    All genes shared by the two datasets are used.

    Parameters
    ----------
    data
        The prepared spots and reference (see :func:`napari_spatialdl.deconvolve`).
    sc_epochs
        Training epochs of the single-cell model (scvi-tools' default: 400).
    st_epochs
        Training epochs of the spatial model (scvi-tools' default: 400).
    """
    _check_epochs(sc_epochs=sc_epochs, st_epochs=st_epochs)
    ref, st = _deconvolution_adatas(data)
    from scvi.external import RNAStereoscope, SpatialStereoscope

    _seed(data.seed)
    RNAStereoscope.setup_anndata(ref, labels_key=_LABELS)
    sc_model = RNAStereoscope(ref)
    h1 = yield from _train(sc_model, sc_epochs, data.device, "stereoscope-sc")
    SpatialStereoscope.setup_anndata(st)
    st_model = SpatialStereoscope.from_rna_model(st, sc_model)
    h2 = yield from _train(st_model, st_epochs, data.device, "stereoscope-st")
    info = dict(data.gene_info(), versions_backend=versions("scvi"))
    return deconvolution_output(data, _proportions(st_model), model=st_model,
                                history=_merge([h1, h2]), info=info)


@register("deconvolve", "destvi", requires=("scvi",),
          label="scvi-tools DestVI (published method, slow)",
          description="scvi-tools CondSCVI (mixture-of-Gaussians prior) + DestVI")
def deconvolve_destvi(data: DeconvolutionInputs, *, sc_epochs: int = 300, st_epochs: int = 2000,
                      n_latent: int = 5) -> DeconvolutionGen:
    """Deconvolution with DestVI (scvi-tools): a conditional VAE of the reference, then the spots.

    All genes shared by the two datasets are used.

    Parameters
    ----------
    data
        The prepared spots and reference (see :func:`napari_spatialdl.deconvolve`).
    sc_epochs
        Training epochs of CondSCVI, the reference model (scvi-tools' default: 300).
    st_epochs
        Training epochs of DestVI, the spot model (scvi-tools' default: 2000).
    n_latent
        Latent size of CondSCVI (the variation within each cell type).
    """
    _check_epochs(sc_epochs=sc_epochs, st_epochs=st_epochs)
    if n_latent < 1:
        raise InputError(f"n_latent must be at least 1, got {n_latent}.")
    ref, st = _deconvolution_adatas(data)
    from scvi.model import CondSCVI, DestVI

    _seed(data.seed)
    CondSCVI.setup_anndata(ref, labels_key=_LABELS)
    # scvi-tools 1.4 needs the mixture prior named (its default changed with the release)
    sc_model = CondSCVI(ref, n_latent=n_latent, weight_obs=False, prior="mog")
    h1 = yield from _train(sc_model, sc_epochs, data.device, "condscvi")
    DestVI.setup_anndata(st)
    st_model = DestVI.from_rna_model(st, sc_model)
    h2 = yield from _train(st_model, st_epochs, data.device, "destvi")
    info = dict(data.gene_info(), versions_backend=versions("scvi"))
    return deconvolution_output(data, _proportions(st_model), model=st_model,
                                history=_merge([h1, h2]), info=info)


# ----------------------------------------------------------------------------- scANVI (shared)

def _scanvi(ad: AnnData, *, n_latent: int, gene_likelihood: str, scvi_epochs: int | None,
            scanvi_epochs: int | None, device: Any
            ) -> Generator[ProgressEvent, None, tuple[Any, TrainingHistory]]:
    """SCVI pre-training then SCANVI on ``ad`` (obs ``_BATCH``, ``_LABELS``, unlabelled
    ``_UNLABELED``); returns (the SCANVI model, both trainings' history)."""
    import scvi

    scvi.model.SCVI.setup_anndata(ad, batch_key=_BATCH, labels_key=_LABELS)
    vae = scvi.model.SCVI(ad, n_latent=n_latent, gene_likelihood=gene_likelihood)
    n1 = _default_epochs(scvi_epochs, ad.n_obs)
    h1 = yield from _train(vae, n1, device, "scvi")
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=_UNLABELED, labels_key=_LABELS)
    if scanvi_epochs is None:
        # scvi-tools' default after pre-training: min(10, max(2, round(heuristic / 3)))
        scanvi_epochs = int(min(10, max(2, round(n1 / 3.0))))
    h2 = yield from _train(model, scanvi_epochs, device, "scanvi")
    return model, _merge([h1, h2])


# ----------------------------------------------------------------------------- annotation

def _reference_rows(data: AnnotationInputs) -> np.ndarray:
    """Positions in ``data.reference`` of the cells in ``data.ref_counts`` (recorded by prepare)."""
    return np.asarray(data.ref_rows)


def _annotation_batches(data: AnnotationInputs, batch_key: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Batch of every reference cell used and of every query cell, for scANVI's covariate."""
    n_ref, n_query = len(data.ref_labels), data.data.n_obs
    if batch_key is None:  # the two datasets are the batches (one, when they are one object)
        if data.same_object:
            return np.full(n_ref, "data", dtype=object), np.full(n_query, "data", dtype=object)
        return np.full(n_ref, "reference", dtype=object), np.full(n_query, "query", dtype=object)
    query_batches = np.asarray(data.columns["batch_key"], dtype=object)
    if data.same_object:
        return query_batches[_reference_rows(data)], query_batches
    if batch_key in data.reference.obs.columns:
        ref_batches = data.reference.obs[batch_key].astype(str).to_numpy(dtype=object)
        return ref_batches[_reference_rows(data)], query_batches
    return np.full(n_ref, "reference", dtype=object), query_batches


@register("annotate", "scanvi", requires=("scvi",),
          label="scvi-tools scANVI (published method, slow)",
          description="scvi-tools SCANVI trained on reference + query, labels predicted for the query")
def annotate_scanvi(data: AnnotationInputs, *,
                    batch_key: Annotated[str, Role(BATCH, of="query", min_values=1)] | None = None,
                    n_latent: int = 10, scvi_epochs: int | None = None,
                    scanvi_epochs: int | None = 20) -> Generator[ProgressEvent, None, AnnotationOutput]:
    """Label transfer with scANVI: the labelled reference cells and the query trained together.

    SCVI is pre-trained on the labelled reference cells and every query cell (unlabelled), then
    SCANVI learns the labels; the query cells' class probabilities are SCANVI's predictions.
    When the query is the reference itself, its labelled cells enter both as labelled cells and
    as query cells. Reference cells without a label are not used.

    Parameters
    ----------
    data
        The prepared query and reference (see :func:`napari_spatialdl.annotate`).
    batch_key
        ``query.obs`` column with the batch (sample, section) of every query cell, a covariate
        of the model. Reference cells take their batch from the reference's column of the same
        name, or are one batch when it has none. None: the query and the reference are the two
        batches.
    n_latent
        Size of the latent space.
    scvi_epochs
        Epochs of the SCVI pre-training (None: scvi-tools' heuristic,
        ``min(400, 20000 / n_cells * 400)``).
    scanvi_epochs
        Epochs of SCANVI (None: scvi-tools' default, about a third of the pre-training, at most
        10; 20 is the value of scvi-tools' tutorials and does better on small references).
    """
    _check_epochs(scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs)
    n_ref, n_query = len(data.ref_labels), data.data.n_obs
    _check_latent(n_latent, n_ref + n_query, len(data.genes))
    ref_batches, query_batches = _annotation_batches(data, batch_key)
    counts = sp.vstack([sp.csr_matrix(data.ref_counts, dtype=np.float32),
                        sp.csr_matrix(data.query_counts, dtype=np.float32)], format="csr")
    labels = np.concatenate([data.ref_labels.astype(object), np.full(n_query, _UNLABELED, dtype=object)])
    ad = _adata(counts, [f"ref{i}" for i in range(n_ref)] + [f"query{i}" for i in range(n_query)],
                data.genes, {_BATCH: np.concatenate([ref_batches, query_batches]), _LABELS: labels})
    _seed(data.seed)
    model, history = yield from _scanvi(ad, n_latent=n_latent, gene_likelihood="zinb",
                                        scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs,
                                        device=data.device)
    probs = model.predict(ad, indices=np.arange(n_ref, n_ref + n_query), soft=True)
    probs = probs.drop(columns=[c for c in probs.columns if str(c) == _UNLABELED], errors="ignore")
    P = probs.to_numpy(dtype=np.float64)
    sums = P.sum(axis=1, keepdims=True)
    P = np.where(sums > 0, P / np.where(sums > 0, sums, 1.0), 1.0 / P.shape[1])
    info = {"versions_backend": versions("scvi"), "n_batches": int(len(set(ad.obs[_BATCH])))}
    return AnnotationOutput(probabilities=P, classes=[str(c) for c in probs.columns], model=model,
                            history=history, info=info)


# ----------------------------------------------------------------------------- imputation

@register("impute", "scvi", requires=("scvi",), refuses=("reference",),
          label="scvi-tools scVI denoising (published method)",
          description="scvi-tools SCVI: expected counts (normalised expression x library size)")
def impute_scvi(data: ImputationInputs, *, batch_key: BatchKey | None = None, n_latent: int = 10,
                gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
                max_epochs: int | None = None, n_samples: int = 10
                ) -> Generator[ProgressEvent, None, ImputationOutput]:
    """Denoising with scvi-tools' SCVI: ``get_normalized_expression`` x each cell's library size.

    The genes without any count are left out (the task writes them as 0).

    Parameters
    ----------
    data
        The prepared counts (see :func:`napari_spatialdl.impute`).
    batch_key
        Optional ``adata.obs`` column with the batch of every observation (a covariate of the
        model).
    n_latent
        Size of the latent space.
    gene_likelihood
        ``'zinb'`` (zero-inflated negative binomial), ``'nb'`` or ``'poisson'``.
    max_epochs
        Training epochs (None: scvi-tools' heuristic, ``min(400, 20000 / n_cells * 400)``).
    n_samples
        Posterior samples averaged for the expected expression.
    """
    _check_epochs(max_epochs=max_epochs)
    if n_samples < 1:
        raise InputError(f"n_samples must be at least 1, got {n_samples}.")
    _check_likelihood(gene_likelihood)
    _check_latent(n_latent, data.data.n_obs, len(data.genes))
    obs = {_BATCH: data.columns["batch_key"]} if batch_key is not None else None
    ad = _adata(data.counts, data.data.obs_names, data.genes, obs)
    import scvi

    _seed(data.seed)
    scvi.model.SCVI.setup_anndata(ad, batch_key=_BATCH if batch_key is not None else None)
    model = scvi.model.SCVI(ad, n_latent=n_latent, gene_likelihood=gene_likelihood)
    n_epochs = _default_epochs(max_epochs, ad.n_obs)
    history = yield from _train(model, n_epochs, data.device, "scvi")
    freq = model.get_normalized_expression(library_size=1.0, n_samples=n_samples, return_mean=True,
                                           return_numpy=True)
    imputed = (np.asarray(freq, dtype=np.float64) * data.library[:, None]).astype(np.float32)
    return ImputationOutput(imputed=imputed, model=model, history=history,
                            info={"versions_backend": versions("scvi"), "max_epochs_used": n_epochs})


# ----------------------------------------------------------------------------- integration

IntegrationGen = Generator[ProgressEvent, None, IntegrationOutput]


@register("integrate", "scvi", requires=("scvi",),
          label="scvi-tools scVI (published method)",
          description="scvi-tools SCVI: conditional VAE latent space (reference implementation)")
def integrate_scvi(data: IntegrationInputs, *, n_latent: int = 10, n_hidden: int = 128,
                   n_layers: int = 1, gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
                   max_epochs: int | None = None) -> IntegrationGen:
    """Batch integration with scvi-tools' SCVI; the latent space is the posterior mean.

    Every gene with any count is used.

    Parameters
    ----------
    data
        The prepared counts and batches (see :func:`napari_spatialdl.integrate`).
    n_latent
        Size of the latent space.
    n_hidden
        Hidden units of each layer of the encoder and decoder.
    n_layers
        Hidden layers of the encoder and decoder.
    gene_likelihood
        ``'zinb'`` (zero-inflated negative binomial), ``'nb'`` or ``'poisson'``.
    max_epochs
        Training epochs (None: scvi-tools' heuristic, ``min(400, 20000 / n_cells * 400)``).
    """
    _check_epochs(max_epochs=max_epochs)
    _check_likelihood(gene_likelihood)
    if n_hidden < 1 or n_layers < 1:
        raise InputError(f"n_hidden and n_layers must be at least 1, got n_hidden={n_hidden}, "
                         f"n_layers={n_layers}.")
    _check_latent(n_latent, data.data.n_obs, len(data.genes))
    ad = _adata(data.counts, data.data.obs_names, data.genes, {_BATCH: data.batch_names()})
    import scvi

    _seed(data.seed)
    scvi.model.SCVI.setup_anndata(ad, batch_key=_BATCH)
    model = scvi.model.SCVI(ad, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers,
                            gene_likelihood=gene_likelihood)
    n_epochs = _default_epochs(max_epochs, ad.n_obs)
    history = yield from _train(model, n_epochs, data.device, "scvi")
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    return IntegrationOutput(latent=latent, model=model, history=history,
                             info={"versions_backend": versions("scvi"), "max_epochs_used": n_epochs})


@register("integrate", "scanvi", requires=("scvi",),
          label="scvi-tools scANVI, uses known cell types (published method)",
          description="scvi-tools SCANVI: semi-supervised VAE latent space using cell-type labels")
def integrate_scanvi(data: IntegrationInputs, *, labels_key: LabelsKey = "cell_type",
                     unlabeled_category: str = "Unknown", n_latent: int = 10,
                     gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
                     scvi_epochs: int | None = None, scanvi_epochs: int | None = 20) -> IntegrationGen:
    """Batch integration with scvi-tools' SCANVI (SCVI pre-training, then label-aware training).

    Every gene with any count is used. Cells without a label (missing, or ``unlabeled_category``)
    take part unlabelled.

    Parameters
    ----------
    data
        The prepared counts and batches (see :func:`napari_spatialdl.integrate`).
    labels_key
        ``adata.obs`` column with the cell type of (some of) the cells.
    unlabeled_category
        The value of ``labels_key`` that marks a cell as unlabelled (missing values do too).
    n_latent
        Size of the latent space.
    gene_likelihood
        ``'zinb'`` (zero-inflated negative binomial), ``'nb'`` or ``'poisson'``.
    scvi_epochs
        Epochs of the SCVI pre-training (None: scvi-tools' heuristic,
        ``min(400, 20000 / n_cells * 400)``).
    scanvi_epochs
        Epochs of SCANVI (None: scvi-tools' default, about a third of the pre-training, at most
        10; 20 is the value of scvi-tools' tutorials and does better on small references).
    """
    _check_epochs(scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs)
    _check_likelihood(gene_likelihood)
    _check_latent(n_latent, data.data.n_obs, len(data.genes))
    labels = np.asarray(data.columns["labels_key"], dtype=object)
    unlabelled = pd.isna(labels) | (labels == str(unlabeled_category))
    if unlabelled.all():
        raise InputError(f"adata.obs[{labels_key!r}] has no labelled cell (every value is missing or "
                         f"{unlabeled_category!r}): scANVI needs some labels; use method='scvi' without them.")
    labels = np.where(unlabelled, _UNLABELED, labels)
    ad = _adata(data.counts, data.data.obs_names, data.genes,
                {_BATCH: data.batch_names(), _LABELS: labels})
    _seed(data.seed)
    model, history = yield from _scanvi(ad, n_latent=n_latent, gene_likelihood=gene_likelihood,
                                        scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs,
                                        device=data.device)
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    info = {"versions_backend": versions("scvi"), "n_labelled": int((~unlabelled).sum())}
    return IntegrationOutput(latent=latent, model=model, history=history, info=info)
