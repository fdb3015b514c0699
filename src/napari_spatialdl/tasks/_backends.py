"""Reference backends: the published tools behind the same registry (optional extras).

Each entry is a task generator that follows the same contract as the native methods
(validate first, yield :class:`~napari_spatialdl.models.ProgressEvent`, write only at the
end, the same result keys), so users and benchmarks can pick the published implementation
side by side with the native model. They only show as available when their package is
installed (``pip install 'napari-spatialdl[bench]'``):

========== ============================================= ==========================
task       method                                        needs
========== ============================================= ==========================
integrate  ``scvi`` (SCVI latent), ``scanvi`` (SCANVI),  scvi-tools
           ``harmony`` (Harmony on PCA)                  harmonypy
deconvolve ``stereoscope`` (RNA/SpatialStereoscope),     scvi-tools
           ``destvi`` (CondSCVI + DestVI),
           ``tangram`` (Tangram, clusters mode)          tangram-sc
annotate   ``scanvi``, ``celltypist``                    scvi-tools, celltypist
impute     ``scvi`` (expected counts), ``magic`` (MAGIC) scvi-tools, magic-impute
========== ============================================= ==========================

scvi-tools models train in a helper thread so that every epoch is reported (with the
loss) while training runs; closing the generator asks the trainer to stop at the end of
the current epoch and waits for it. The other tools report start and end only.

Nothing from these packages is imported at module import time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import (
    ABUNDANCE_KEY,
    CELL_TYPE_KEY,
    CONFIDENCE_KEY,
    IMPUTED_LAYER,
    LATENT_KEY,
    PROPORTIONS_KEY,
    UNASSIGNED,
)
from ..models._train import ProgressEvent, TrainingHistory, resolve_device
from ._base import TaskResult, target, write_run_metadata
from ._registry import register
from ._validate import (
    InputError,
    check_n_latent,
    check_obs_key,
    get_counts,
    get_matrix,
    shared_genes,
)

TaskGen = Generator[ProgressEvent, None, TaskResult]

_BATCH = "_sdl_batch"
_LABELS = "_sdl_labels"
_UNLABELED = "_sdl_unlabeled"


# ------------------------------------------------------------------------ helpers

def _counts_adata(adata: AnnData, layer: str | None, what: str, genes: pd.Index | None = None,
                  obs: dict[str, Any] | None = None) -> AnnData:
    """A fresh AnnData with the checked raw counts (float32 CSR) of ``genes``; the input is untouched."""
    src = adata[:, genes] if genes is not None else adata
    X = get_counts(src, layer, what=what)
    X = sp.csr_matrix(X, dtype=np.float32)
    out = AnnData(X=X, obs=pd.DataFrame(index=adata.obs_names.astype(str)),
                  var=pd.DataFrame(index=src.var_names.astype(str)))
    for key, values in (obs or {}).items():
        out.obs[key] = pd.Categorical(np.asarray(values).astype(str))
    return out


def _log_normalise(X: Any, target_sum: float = 1e4) -> sp.csr_matrix:
    """log1p(counts / library * target_sum), CSR."""
    X = sp.csr_matrix(X, dtype=np.float32)
    lib = np.asarray(X.sum(axis=1)).ravel()
    scale = np.where(lib > 0, target_sum / np.where(lib > 0, lib, 1.0), 0.0).astype(np.float32)
    Y = sp.diags(scale) @ X
    Y = sp.csr_matrix(Y)
    Y.data = np.log1p(Y.data)
    return Y


def _is_counts(X: Any) -> bool:
    values = X.data if sp.issparse(X) else np.asarray(X)
    return bool(values.size == 0 or (values.min() >= 0 and np.all(np.mod(values, 1) == 0)))


def _scvi_accelerator(device: str) -> tuple[str, int]:
    kind = resolve_device(device).type
    return {"cuda": "gpu", "mps": "mps"}.get(kind, "cpu"), 1


def _check_epochs(**epochs: int | None) -> None:
    for name, value in epochs.items():
        if value is not None and int(value) < 1:
            raise InputError(f"{name} must be at least 1 (or None for the tool's default), got {value}.")


def _events_start(n_epochs: int, stage: str, message: str) -> ProgressEvent:
    return ProgressEvent(0, max(1, n_epochs), 0, message=message, stage=stage)


def _make_epoch_callback(events: queue.Queue, stop: threading.Event, n_epochs: int, stage: str,
                         start: float):
    """A Lightning callback that reports every epoch and stops the trainer on request."""
    from lightning.pytorch.callbacks import Callback

    def _metric(metrics: dict, *names: str) -> float | None:
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
                train_loss=_metric(m, "train_loss_epoch", "train_loss", "elbo_train"),
                val_loss=_metric(m, "validation_loss", "elbo_validation"),
                elapsed=time.perf_counter() - start, stage=stage,
            ))
            if stop.is_set():
                trainer.should_stop = True

    return _EpochReporter()


_DONE = object()


def _train_scvi(fit: Callable[[list], None], n_epochs: int, stage: str) -> Generator[ProgressEvent, None, float]:
    """Run ``fit(callbacks)`` (an scvi-tools ``model.train``) in a thread, yielding its epochs.

    Returns the seconds it took. Closing the generator stops training after the current
    epoch (and waits for the thread); an exception in training is re-raised here.
    """
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    errors: list[BaseException] = []
    start = time.perf_counter()
    callback = _make_epoch_callback(events, stop, n_epochs, stage, start)

    def work() -> None:
        try:
            fit([callback])
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
    return time.perf_counter() - start


def _scvi_fit(model, max_epochs: int | None, device: str, **kwargs) -> Callable[[list], None]:
    accelerator, devices = _scvi_accelerator(device)

    def fit(callbacks: list) -> None:
        model.train(max_epochs=max_epochs, accelerator=accelerator, devices=devices,
                    enable_progress_bar=False, callbacks=callbacks, **kwargs)

    return fit


def _scvi_epochs(model, max_epochs: int | None, n_obs: int) -> int:
    if max_epochs is not None:
        return int(max_epochs)
    try:
        from scvi.model._utils import get_max_epochs_heuristic

        return int(get_max_epochs_heuristic(n_obs))
    except Exception:  # noqa: BLE001 (only used for the progress bar's length)
        return 400


def _scvi_history(model, seconds: float, device: str) -> TrainingHistory:
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
                           stopped_early=False, seconds=float(seconds),
                           device=str(resolve_device(device)))


def _merge_histories(parts: list[TrainingHistory]) -> TrainingHistory:
    out = TrainingHistory(device=parts[-1].device)
    for h in parts:
        out.train_loss += h.train_loss
        out.val_loss += h.val_loss
        out.n_epochs += h.n_epochs
        out.seconds += h.seconds
    out.best_epoch = parts[-1].best_epoch
    return out


def _seed(seed: int) -> None:
    import scvi

    scvi.settings.seed = int(seed)


def _versions(*modules: str) -> dict[str, str]:
    import importlib

    out = {}
    for name in modules:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception:  # noqa: BLE001
            out[name] = "?"
    return out


def _abundance_from_proportions(props: np.ndarray, spot_counts: Any, ref_counts: Any,
                                ref_labels: np.ndarray, types: list[str]) -> np.ndarray:
    """Cell numbers per type and spot, from proportions and library sizes.

    ``n_cells[s] = library[s] / sum_t p[s, t] * mean_library[t]`` (mean UMIs of a reference
    cell of type ``t``), abundance = ``p * n_cells``: the same reference-cell units as the
    native model's abundances.
    """
    spot_lib = np.asarray(spot_counts.sum(axis=1)).ravel()
    ref_lib = np.asarray(ref_counts.sum(axis=1)).ravel()
    mean_lib = np.array([ref_lib[ref_labels == t].mean() for t in types])
    per_cell = props @ mean_lib
    n_cells = np.where(per_cell > 0, spot_lib / np.where(per_cell > 0, per_cell, 1.0), 0.0)
    return props * n_cells[:, None]


def _finish_deconvolution(spatial: AnnData, copy: bool, method: str, props: pd.DataFrame,
                          types: list[str], spot_counts: Any, ref_counts: Any, ref_labels: np.ndarray,
                          params: dict, history: TrainingHistory | None, seconds: float,
                          model: Any, info: dict) -> TaskResult:
    P = props.reindex(columns=types).fillna(0.0).to_numpy(dtype=float).clip(min=0)
    sums = P.sum(axis=1, keepdims=True)
    P = np.where(sums > 0, P / np.where(sums > 0, sums, 1.0), 1.0 / len(types))
    index = spatial.obs_names
    proportions = pd.DataFrame(P, index=index, columns=types)
    abundance = pd.DataFrame(_abundance_from_proportions(P, spot_counts, ref_counts, ref_labels, types),
                             index=index, columns=types)
    out = target(spatial, copy)
    out.obsm[PROPORTIONS_KEY] = proportions
    out.obsm[ABUNDANCE_KEY] = abundance
    write_run_metadata(out, "deconvolve", method, params, history, seconds=seconds, **info)
    return TaskResult("deconvolve", method, out,
                      keys={"obsm": PROPORTIONS_KEY, "obsm_abundance": ABUNDANCE_KEY},
                      model=model, history=history, info=info)


def _deconvolution_inputs(spatial: AnnData, reference: AnnData, labels_key: str,
                          layer: str | None, reference_layer: str | None,
                          tool: str) -> tuple[AnnData, AnnData, list[str], pd.Index]:
    labels = check_obs_key(reference, labels_key, "labels_key")
    genes = shared_genes(spatial, reference)
    types = sorted(labels.unique())
    ref = _counts_adata(reference, reference_layer, tool, genes, {_LABELS: labels.to_numpy()})
    st = _counts_adata(spatial, layer, tool, genes)
    counts = pd.Series(labels).value_counts()
    if counts.min() < 2:
        raise InputError(
            f"Cell type(s) {list(counts.index[counts < 2])} have fewer than 2 reference cells: "
            "remove or merge them before deconvolution."
        )
    return st, ref, types, genes


def _finish_annotation(query: AnnData, copy: bool, method: str, probs: pd.DataFrame,
                       threshold: float, params: dict, history: TrainingHistory | None,
                       seconds: float, model: Any, info: dict) -> TaskResult:
    P = probs.to_numpy(dtype=float)
    best = P.argmax(axis=1)
    confidence = P[np.arange(len(P)), best]
    labels = np.asarray(probs.columns.astype(str))[best].astype(object)
    labels[confidence < threshold] = UNASSIGNED
    categories = [c for c in probs.columns.astype(str)] + [UNASSIGNED]
    out = target(query, copy)
    out.obs[CELL_TYPE_KEY] = pd.Categorical(labels, categories=categories).remove_unused_categories()
    out.obs[CONFIDENCE_KEY] = confidence.astype(np.float32)
    info = dict(info, n_unassigned=int((confidence < threshold).sum()))
    write_run_metadata(out, "annotate", method, params, history, seconds=seconds, **info)
    return TaskResult("annotate", method, out,
                      keys={"obs": CELL_TYPE_KEY, "obs_confidence": CONFIDENCE_KEY},
                      model=model, history=history, info=info)


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"threshold must be in [0, 1), got {threshold}.")


# ---------------------------------------------------------------- integration

@register("integrate", "scvi", requires=("scvi",),
          description="scvi-tools SCVI: conditional VAE latent space (reference implementation)")
def integrate_scvi(adata: AnnData, batch_key: str, *, layer: str | None = None, n_latent: int = 10,
                   n_hidden: int = 128, n_layers: int = 1, gene_likelihood: str = "zinb",
                   max_epochs: int | None = None, device: str = "auto", seed: int = 0,
                   copy: bool = False) -> TaskGen:
    """Batch integration with scvi-tools' SCVI; the latent mean goes to ``obsm['X_spatialdl']``.

    Parameters
    ----------
    adata
        Cells with raw counts and a batch column.
    batch_key
        ``adata.obs`` column with the batch of every cell.
    layer
        Layer with the raw counts (None: ``adata.X``).
    n_latent, n_hidden, n_layers
        Size of the latent space, hidden units and hidden layers.
    gene_likelihood
        ``'zinb'``, ``'nb'`` or ``'poisson'``.
    max_epochs
        Training epochs (None: scvi-tools' default heuristic, ``min(400, 20000 / n_cells * 400)``).
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed (``scvi.settings.seed``).
    copy
        Return a new AnnData instead of writing into ``adata``.
    """
    batches = check_obs_key(adata, batch_key, "batch_key")
    _check_epochs(max_epochs=max_epochs)
    if gene_likelihood not in ("zinb", "nb", "poisson"):
        raise InputError(f"gene_likelihood must be 'zinb', 'nb' or 'poisson', got {gene_likelihood!r}.")
    ad = _counts_adata(adata, layer, "scVI", obs={_BATCH: batches.to_numpy()})
    check_n_latent(n_latent, ad.n_obs, ad.n_vars)
    import scvi

    _seed(seed)
    scvi.model.SCVI.setup_anndata(ad, batch_key=_BATCH)
    model = scvi.model.SCVI(ad, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers,
                            gene_likelihood=gene_likelihood)
    n_epochs = _scvi_epochs(model, max_epochs, ad.n_obs)
    seconds = yield from _train_scvi(_scvi_fit(model, n_epochs, device), n_epochs, "scvi")
    history = _scvi_history(model, seconds, device)
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    params = dict(batch_key=batch_key, layer=layer, n_latent=n_latent, n_hidden=n_hidden,
                  n_layers=n_layers, gene_likelihood=gene_likelihood, max_epochs=n_epochs,
                  device=device, seed=seed)
    out = target(adata, copy)
    out.obsm[LATENT_KEY] = latent
    info = {"n_genes": int(ad.n_vars), "versions_backend": _versions("scvi")}
    write_run_metadata(out, "integrate", "scvi", params, history, **info)
    return TaskResult("integrate", "scvi", out, keys={"obsm": LATENT_KEY}, model=model,
                      history=history, info=info)


def _scanvi(ad: AnnData, *, n_latent: int, gene_likelihood: str, scvi_epochs: int | None,
            scanvi_epochs: int | None, device: str, unlabeled: str):
    """Generator: SCVI pre-training then SCANVI on ``ad`` (obs _BATCH, _LABELS); returns (model, history)."""
    import scvi

    scvi.model.SCVI.setup_anndata(ad, batch_key=_BATCH, labels_key=_LABELS)
    vae = scvi.model.SCVI(ad, n_latent=n_latent, gene_likelihood=gene_likelihood)
    n1 = _scvi_epochs(vae, scvi_epochs, ad.n_obs)
    s1 = yield from _train_scvi(_scvi_fit(vae, n1, device), n1, "scvi")
    h1 = _scvi_history(vae, s1, device)
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=unlabeled, labels_key=_LABELS)
    if scanvi_epochs is None:
        # scvi-tools' default after pre-training: min(10, max(2, round(heuristic / 3)))
        scanvi_epochs = int(min(10, max(2, round(n1 / 3.0))))
    s2 = yield from _train_scvi(_scvi_fit(model, scanvi_epochs, device), scanvi_epochs, "scanvi")
    h2 = _scvi_history(model, s2, device)
    return model, _merge_histories([h1, h2])


@register("integrate", "scanvi", requires=("scvi",),
          description="scvi-tools SCANVI: semi-supervised VAE latent space using cell-type labels")
def integrate_scanvi(adata: AnnData, batch_key: str, *, labels_key: str = "cell_type",
                     unlabeled_category: str = "Unknown", layer: str | None = None,
                     n_latent: int = 10, gene_likelihood: str = "zinb",
                     scvi_epochs: int | None = None, scanvi_epochs: int | None = 20,
                     device: str = "auto", seed: int = 0, copy: bool = False) -> TaskGen:
    """Batch integration with scvi-tools' SCANVI (SCVI pre-training, then label-aware training).

    Parameters
    ----------
    adata
        Cells with raw counts, a batch column and a (partly) labelled cell-type column.
    batch_key
        ``adata.obs`` column with the batch of every cell.
    labels_key
        ``adata.obs`` column with cell types; missing values and ``unlabeled_category`` are
        treated as unlabelled.
    unlabeled_category
        The value marking unlabelled cells.
    layer
        Layer with the raw counts (None: ``adata.X``).
    n_latent
        Size of the latent space.
    gene_likelihood
        ``'zinb'``, ``'nb'`` or ``'poisson'``.
    scvi_epochs, scanvi_epochs
        Epochs of SCVI pre-training and of SCANVI (None: scvi-tools' defaults, i.e. the
        ``min(400, 20000 / n_cells * 400)`` heuristic and 10; 20 SCANVI epochs is the value of
        scvi-tools' tutorials and does better on small references).
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``adata``.
    """
    batches = check_obs_key(adata, batch_key, "batch_key")
    labels = check_obs_key(adata, labels_key, "labels_key", allow_missing_values=True)
    labels = labels.fillna(_UNLABELED).replace(unlabeled_category, _UNLABELED)
    _check_epochs(scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs)
    ad = _counts_adata(adata, layer, "scANVI", obs={_BATCH: batches.to_numpy(), _LABELS: labels.to_numpy()})
    check_n_latent(n_latent, ad.n_obs, ad.n_vars)
    _seed(seed)
    model, history = yield from _scanvi(ad, n_latent=n_latent, gene_likelihood=gene_likelihood,
                                        scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs,
                                        device=device, unlabeled=_UNLABELED)
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    params = dict(batch_key=batch_key, labels_key=labels_key, unlabeled_category=unlabeled_category,
                  layer=layer, n_latent=n_latent, gene_likelihood=gene_likelihood,
                  scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs, device=device, seed=seed)
    out = target(adata, copy)
    out.obsm[LATENT_KEY] = latent
    info = {"n_genes": int(ad.n_vars), "versions_backend": _versions("scvi")}
    write_run_metadata(out, "integrate", "scanvi", params, history, **info)
    return TaskResult("integrate", "scanvi", out, keys={"obsm": LATENT_KEY}, model=model,
                      history=history, info=info)


def _pca_input(adata: AnnData, layer: str | None) -> tuple[np.ndarray, bool]:
    X = get_matrix(adata, layer)
    counts = _is_counts(X)
    if counts:
        lib = np.asarray(X.sum(axis=1)).ravel()
        if (lib == 0).any():
            raise InputError(
                f"{int((lib == 0).sum())} cells have no counts: remove them first "
                "(sc.pp.filter_cells(adata, min_counts=1))."
            )
        X = _log_normalise(X)
    return (X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float32)), counts


def _pca(Y: np.ndarray, n_comps: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    sd = Y.std(axis=0)
    Z = np.clip((Y - Y.mean(axis=0)) / np.where(sd > 0, sd, 1.0), -10, 10)
    n = min(n_comps, Z.shape[0] - 1, Z.shape[1] - 1)
    return PCA(n_components=n, random_state=seed).fit_transform(Z)


@register("integrate", "harmony", requires=("harmonypy",),
          description="Harmony (harmonypy) on the PCA of log-normalised data")
def integrate_harmony(adata: AnnData, batch_key: str, *, layer: str | None = None, n_pcs: int = 50,
                      theta: float = 2.0, max_iter_harmony: int = 10, seed: int = 0,
                      copy: bool = False) -> TaskGen:
    """Batch integration with Harmony on principal components.

    Raw counts are normalised to 10,000 per cell and log1p-transformed; data that are not
    integer counts are taken as already normalised. Genes are scaled, then PCA, then Harmony.

    Parameters
    ----------
    adata
        Cells with a batch column.
    batch_key
        ``adata.obs`` column with the batch of every cell.
    layer
        Layer to use (None: ``adata.X``).
    n_pcs
        Number of principal components (capped by the data's size).
    theta
        Harmony's diversity penalty (larger: more mixing).
    max_iter_harmony
        Harmony iterations.
    seed
        Random seed of the PCA and Harmony.
    copy
        Return a new AnnData instead of writing into ``adata``.
    """
    batches = check_obs_key(adata, batch_key, "batch_key")
    if n_pcs < 2:
        raise InputError(f"n_pcs must be at least 2, got {n_pcs}.")
    Y, was_counts = _pca_input(adata, layer)
    yield _events_start(2, "harmony", "PCA")
    start = time.perf_counter()
    pcs = _pca(Y, n_pcs, seed)
    yield ProgressEvent(1, 2, 1, elapsed=time.perf_counter() - start, message="Harmony", stage="harmony")
    import harmonypy

    meta = pd.DataFrame({_BATCH: batches.to_numpy()})
    ho = harmonypy.run_harmony(pcs, meta, [_BATCH], theta=theta, max_iter_harmony=max_iter_harmony,
                               random_state=seed, verbose=False)
    Z = np.asarray(ho.Z_corr, dtype=np.float32)
    if Z.shape[0] != adata.n_obs:  # harmonypy < 2 returns PCs x cells
        Z = Z.T
    seconds = time.perf_counter() - start
    yield ProgressEvent(2, 2, 2, elapsed=seconds, message="done", stage="harmony")
    params = dict(batch_key=batch_key, layer=layer, n_pcs=int(pcs.shape[1]), theta=theta,
                  max_iter_harmony=max_iter_harmony, seed=seed)
    out = target(adata, copy)
    out.obsm[LATENT_KEY] = Z
    info = {"log_normalised_counts": was_counts, "versions_backend": _versions("harmonypy")}
    write_run_metadata(out, "integrate", "harmony", params, seconds=seconds, **info)
    return TaskResult("integrate", "harmony", out, keys={"obsm": LATENT_KEY}, info=info)


# -------------------------------------------------------------- deconvolution

@register("deconvolve", "stereoscope", requires=("scvi",),
          description="scvi-tools RNAStereoscope + SpatialStereoscope (reference implementation)")
def deconvolve_stereoscope(spatial: AnnData, reference: AnnData, labels_key: str, *,
                           layer: str | None = None, reference_layer: str | None = None,
                           sc_epochs: int = 400, st_epochs: int = 400, device: str = "auto",
                           seed: int = 0, copy: bool = False) -> TaskGen:
    """Deconvolution with Stereoscope (scvi-tools): per-type NB signatures, then spot weights.

    Parameters
    ----------
    spatial
        Spots with raw counts.
    reference
        Annotated single cells with raw counts.
    labels_key
        ``reference.obs`` column with the cell types.
    layer, reference_layer
        Layers with the raw counts of ``spatial`` and ``reference`` (None: ``X``).
    sc_epochs, st_epochs
        Epochs of the single-cell and the spatial model (scvi-tools' defaults: 400, 400).
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``spatial``.
    """
    _check_epochs(sc_epochs=sc_epochs, st_epochs=st_epochs)
    st, ref, types, genes = _deconvolution_inputs(spatial, reference, labels_key, layer,
                                                  reference_layer, "Stereoscope")
    from scvi.external import RNAStereoscope, SpatialStereoscope

    _seed(seed)
    RNAStereoscope.setup_anndata(ref, labels_key=_LABELS)
    sc_model = RNAStereoscope(ref)
    s1 = yield from _train_scvi(_scvi_fit(sc_model, sc_epochs, device), sc_epochs, "stereoscope-sc")
    h1 = _scvi_history(sc_model, s1, device)
    SpatialStereoscope.setup_anndata(st)
    st_model = SpatialStereoscope.from_rna_model(st, sc_model)
    s2 = yield from _train_scvi(_scvi_fit(st_model, st_epochs, device), st_epochs, "stereoscope-st")
    h2 = _scvi_history(st_model, s2, device)
    props = st_model.get_proportions()
    props.columns = props.columns.astype(str)
    params = dict(labels_key=labels_key, layer=layer, reference_layer=reference_layer,
                  sc_epochs=sc_epochs, st_epochs=st_epochs, device=device, seed=seed)
    info = {"n_genes": len(genes), "versions_backend": _versions("scvi")}
    return _finish_deconvolution(spatial, copy, "stereoscope", props, types, st.X, ref.X,
                                 ref.obs[_LABELS].astype(str).to_numpy(), params,
                                 _merge_histories([h1, h2]), s1 + s2, st_model, info)


@register("deconvolve", "destvi", requires=("scvi",),
          description="scvi-tools CondSCVI (mixture-of-Gaussians prior) + DestVI")
def deconvolve_destvi(spatial: AnnData, reference: AnnData, labels_key: str, *,
                      layer: str | None = None, reference_layer: str | None = None,
                      sc_epochs: int = 300, st_epochs: int = 2000, n_latent: int = 5,
                      device: str = "auto", seed: int = 0, copy: bool = False) -> TaskGen:
    """Deconvolution with DestVI (scvi-tools): a conditional VAE of the reference, then spots.

    Parameters
    ----------
    spatial
        Spots with raw counts.
    reference
        Annotated single cells with raw counts.
    labels_key
        ``reference.obs`` column with the cell types.
    layer, reference_layer
        Layers with the raw counts of ``spatial`` and ``reference`` (None: ``X``).
    sc_epochs, st_epochs
        Epochs of CondSCVI and DestVI (scvi-tools' defaults: 300, 2000).
    n_latent
        Latent size of CondSCVI (within-type variation).
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``spatial``.
    """
    _check_epochs(sc_epochs=sc_epochs, st_epochs=st_epochs)
    st, ref, types, genes = _deconvolution_inputs(spatial, reference, labels_key, layer,
                                                  reference_layer, "DestVI")
    from scvi.model import CondSCVI, DestVI

    _seed(seed)
    CondSCVI.setup_anndata(ref, labels_key=_LABELS)
    sc_model = CondSCVI(ref, n_latent=n_latent, weight_obs=False, prior="mog")
    s1 = yield from _train_scvi(_scvi_fit(sc_model, sc_epochs, device), sc_epochs, "condscvi")
    h1 = _scvi_history(sc_model, s1, device)
    DestVI.setup_anndata(st)
    st_model = DestVI.from_rna_model(st, sc_model)
    s2 = yield from _train_scvi(_scvi_fit(st_model, st_epochs, device), st_epochs, "destvi")
    h2 = _scvi_history(st_model, s2, device)
    props = st_model.get_proportions()
    props.columns = props.columns.astype(str)
    params = dict(labels_key=labels_key, layer=layer, reference_layer=reference_layer,
                  sc_epochs=sc_epochs, st_epochs=st_epochs, n_latent=n_latent, device=device, seed=seed)
    info = {"n_genes": len(genes), "versions_backend": _versions("scvi")}
    return _finish_deconvolution(spatial, copy, "destvi", props, types, st.X, ref.X,
                                 ref.obs[_LABELS].astype(str).to_numpy(), params,
                                 _merge_histories([h1, h2]), s1 + s2, st_model, info)


@register("deconvolve", "tangram", requires=("tangram",),
          description="Tangram (tangram-sc), clusters mode: cell-type means mapped onto spots")
def deconvolve_tangram(spatial: AnnData, reference: AnnData, labels_key: str, *,
                       layer: str | None = None, reference_layer: str | None = None,
                       num_epochs: int = 1000, density_prior: str = "rna_count_based",
                       device: str = "auto", seed: int = 0, copy: bool = False) -> TaskGen:
    """Deconvolution with Tangram in ``mode='clusters'``.

    Each cell type's mean profile is mapped onto the spots; the proportions of a spot are
    its column of the mapping (``tg.project_cell_annotations``), normalised to sum to 1.

    Parameters
    ----------
    spatial
        Spots with raw counts.
    reference
        Annotated single cells with raw counts.
    labels_key
        ``reference.obs`` column with the cell types.
    layer, reference_layer
        Layers with the raw counts of ``spatial`` and ``reference`` (None: ``X``).
    num_epochs
        Optimisation steps (Tangram's default 1000).
    density_prior
        ``'rna_count_based'`` (Tangram's default) or ``'uniform'``.
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` (Tangram does not use ``'mps'``).
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``spatial``.
    """
    _check_epochs(num_epochs=num_epochs)
    if density_prior not in ("rna_count_based", "uniform"):
        raise InputError(f"density_prior must be 'rna_count_based' or 'uniform', got {density_prior!r}.")
    st, ref, types, genes = _deconvolution_inputs(spatial, reference, labels_key, layer,
                                                  reference_layer, "Tangram")
    dev = resolve_device(device)
    dev_name = "cuda:0" if dev.type == "cuda" else "cpu"
    yield _events_start(num_epochs, "tangram", "Tangram mapping")
    import logging

    import tangram as tg

    start = time.perf_counter()
    ad_sc, ad_sp = ref.copy(), st.copy()
    ad_sc.X = _log_normalise(ad_sc.X)  # Tangram's tutorials use normalised reference data
    level = logging.getLogger().level
    try:
        tg.pp_adatas(ad_sc, ad_sp, genes=None)
        ad_map = tg.map_cells_to_space(ad_sc, ad_sp, mode="clusters", cluster_label=_LABELS,
                                       density_prior=density_prior, num_epochs=num_epochs,
                                       device=dev_name, random_state=seed, verbose=False)
    finally:
        logging.getLogger().setLevel(level)
    M = np.asarray(ad_map.X, dtype=float)  # clusters x spots
    clusters = ad_map.obs[_LABELS].astype(str).to_numpy()
    props = pd.DataFrame(M.T, index=spatial.obs_names, columns=clusters)
    props = props.T.groupby(level=0).sum().T  # one column per type
    seconds = time.perf_counter() - start
    yield ProgressEvent(num_epochs, num_epochs, num_epochs, elapsed=seconds, message="done", stage="tangram")
    params = dict(labels_key=labels_key, layer=layer, reference_layer=reference_layer,
                  num_epochs=num_epochs, density_prior=density_prior, device=device, seed=seed)
    info = {"n_genes": len(genes), "n_training_genes": int(len(ad_sc.uns.get("training_genes", []))),
            "versions_backend": _versions("tangram")}
    return _finish_deconvolution(spatial, copy, "tangram", props, types, st.X, ref.X,
                                 ref.obs[_LABELS].astype(str).to_numpy(), params, None, seconds,
                                 None, info)


# ----------------------------------------------------------------- annotation

@register("annotate", "scanvi", requires=("scvi",),
          description="scvi-tools SCANVI trained on reference + query, labels predicted for the query")
def annotate_scanvi(query: AnnData, reference: AnnData, labels_key: str, *,
                    batch_key: str | None = None, layer: str | None = None,
                    reference_layer: str | None = None, threshold: float = 0.0,
                    n_latent: int = 10, scvi_epochs: int | None = None,
                    scanvi_epochs: int | None = 20, device: str = "auto", seed: int = 0,
                    copy: bool = False) -> TaskGen:
    """Label transfer with SCANVI: reference labelled, query unlabelled, trained together.

    Parameters
    ----------
    query
        Cells/spots to label, raw counts.
    reference
        Annotated cells, raw counts.
    labels_key
        ``reference.obs`` column with the cell types.
    batch_key
        Column present in both with the batch of every cell (None: reference vs query is
        the batch).
    layer, reference_layer
        Layers with the raw counts of ``query`` and ``reference`` (None: ``X``).
    threshold
        Cells whose highest class probability is below this become ``'unassigned'``
        (default 0: every cell gets its most probable type, as scvi-tools' ``predict``).
    n_latent
        Size of the latent space.
    scvi_epochs, scanvi_epochs
        Epochs of SCVI pre-training and of SCANVI (None: scvi-tools' defaults, i.e. the
        ``min(400, 20000 / n_cells * 400)`` heuristic and 10; 20 SCANVI epochs is the value of
        scvi-tools' tutorials and does better on small references).
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``query``.
    """
    labels = check_obs_key(reference, labels_key, "labels_key")
    _check_threshold(threshold)
    _check_epochs(scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs)
    genes = shared_genes(query, reference, names=("query", "reference"))
    if batch_key is not None:
        qb = check_obs_key(query, batch_key, "batch_key", min_values=1).to_numpy()
        rb = check_obs_key(reference, batch_key, "batch_key", min_values=1).to_numpy()
    else:
        qb = np.full(query.n_obs, "query")
        rb = np.full(reference.n_obs, "reference")
    ref = _counts_adata(reference, reference_layer, "scANVI", genes,
                        {_BATCH: rb, _LABELS: labels.to_numpy()})
    qry = _counts_adata(query, layer, "scANVI", genes,
                        {_BATCH: qb, _LABELS: np.full(query.n_obs, _UNLABELED)})
    import anndata

    ad = anndata.concat([ref, qry], index_unique="-", keys=["ref", "query"], label="_sdl_part")
    for key in (_BATCH, _LABELS):
        ad.obs[key] = ad.obs[key].astype(str).astype("category")
    check_n_latent(n_latent, ad.n_obs, ad.n_vars)
    _seed(seed)
    model, history = yield from _scanvi(ad, n_latent=n_latent, gene_likelihood="zinb",
                                        scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs,
                                        device=device, unlabeled=_UNLABELED)
    is_query = (ad.obs["_sdl_part"] == "query").to_numpy()
    probs = model.predict(ad[is_query], soft=True)
    probs = probs.drop(columns=[c for c in probs.columns if str(c) == _UNLABELED], errors="ignore")
    probs = probs.div(probs.sum(axis=1), axis=0)
    probs.index = query.obs_names
    params = dict(labels_key=labels_key, batch_key=batch_key, layer=layer,
                  reference_layer=reference_layer, threshold=threshold, n_latent=n_latent,
                  scvi_epochs=scvi_epochs, scanvi_epochs=scanvi_epochs, device=device, seed=seed)
    info = {"n_genes": len(genes), "versions_backend": _versions("scvi")}
    return _finish_annotation(query, copy, "scanvi", probs, threshold, params, history,
                              history.seconds, model, info)


@register("annotate", "celltypist", requires=("celltypist",),
          description="CellTypist: logistic regression on log-normalised expression")
def annotate_celltypist(query: AnnData, reference: AnnData, labels_key: str, *,
                        layer: str | None = None, reference_layer: str | None = None,
                        threshold: float = 0.0, feature_selection: bool = False, seed: int = 0,
                        copy: bool = False) -> TaskGen:
    """Label transfer with a CellTypist model trained on the reference.

    Both datasets are normalised to 10,000 counts per cell and log1p-transformed (what
    CellTypist expects); the label is the best-scoring type, its probability the confidence.

    Parameters
    ----------
    query
        Cells/spots to label, raw counts.
    reference
        Annotated cells, raw counts.
    labels_key
        ``reference.obs`` column with the cell types.
    layer, reference_layer
        Layers with the raw counts of ``query`` and ``reference`` (None: ``X``).
    threshold
        Cells whose probability is below this become ``'unassigned'`` (default 0: every cell
        gets its best-scoring type, as CellTypist's ``mode='best match'``).
    feature_selection
        CellTypist's two-pass training on the top genes.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``query``.
    """
    labels = check_obs_key(reference, labels_key, "labels_key")
    _check_threshold(threshold)
    genes = shared_genes(query, reference, names=("query", "reference"))
    ref = _counts_adata(reference, reference_layer, "CellTypist", genes, {_LABELS: labels.to_numpy()})
    qry = _counts_adata(query, layer, "CellTypist", genes)
    yield _events_start(2, "celltypist", "training")
    import celltypist

    start = time.perf_counter()
    np.random.seed(seed)
    ref.X = _log_normalise(ref.X)
    qry.X = _log_normalise(qry.X)
    model = celltypist.train(ref, labels=_LABELS, feature_selection=feature_selection, n_jobs=1,
                             check_expression=False)
    yield ProgressEvent(1, 2, 1, elapsed=time.perf_counter() - start, message="predicting",
                        stage="celltypist")
    pred = celltypist.annotate(qry, model=model, majority_voting=False, mode="best match")
    probs = pred.probability_matrix.copy()
    probs = probs.div(probs.sum(axis=1), axis=0)
    probs.index = query.obs_names
    seconds = time.perf_counter() - start
    yield ProgressEvent(2, 2, 2, elapsed=seconds, message="done", stage="celltypist")
    params = dict(labels_key=labels_key, layer=layer, reference_layer=reference_layer,
                  threshold=threshold, feature_selection=feature_selection, seed=seed)
    info = {"n_genes": len(genes), "versions_backend": _versions("celltypist")}
    return _finish_annotation(query, copy, "celltypist", probs, threshold, params, None,
                              seconds, model, info)


# ----------------------------------------------------------------- imputation

@register("impute", "scvi", requires=("scvi",),
          description="scvi-tools SCVI: expected counts (normalised expression x library size)")
def impute_scvi(adata: AnnData, *, layer: str | None = None, batch_key: str | None = None,
                n_latent: int = 10, gene_likelihood: str = "zinb", max_epochs: int | None = None,
                n_samples: int = 10, device: str = "auto", seed: int = 0,
                copy: bool = False) -> TaskGen:
    """Denoising with scvi-tools' SCVI: ``get_normalized_expression`` x each cell's library.

    Parameters
    ----------
    adata
        Cells or spots with raw counts.
    layer
        Layer with the raw counts (None: ``adata.X``).
    batch_key
        Optional ``adata.obs`` batch column (a covariate of the model).
    n_latent
        Size of the latent space.
    gene_likelihood
        ``'zinb'``, ``'nb'`` or ``'poisson'``.
    max_epochs
        Training epochs (None: scvi-tools' default heuristic).
    n_samples
        Posterior samples averaged for the expected expression.
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'mps'``.
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``adata``.
    """
    obs = {}
    if batch_key is not None:
        obs[_BATCH] = check_obs_key(adata, batch_key, "batch_key").to_numpy()
    _check_epochs(max_epochs=max_epochs, n_samples=n_samples)
    ad = _counts_adata(adata, layer, "scVI", obs=obs)
    check_n_latent(n_latent, ad.n_obs, ad.n_vars)
    import scvi

    _seed(seed)
    scvi.model.SCVI.setup_anndata(ad, batch_key=_BATCH if batch_key is not None else None)
    model = scvi.model.SCVI(ad, n_latent=n_latent, gene_likelihood=gene_likelihood)
    n_epochs = _scvi_epochs(model, max_epochs, ad.n_obs)
    seconds = yield from _train_scvi(_scvi_fit(model, n_epochs, device), n_epochs, "scvi")
    history = _scvi_history(model, seconds, device)
    freq = model.get_normalized_expression(library_size=1.0, n_samples=n_samples, return_mean=True,
                                           return_numpy=True)
    lib = np.asarray(ad.X.sum(axis=1)).ravel()
    imputed = (np.asarray(freq, dtype=np.float64) * lib[:, None]).astype(np.float32)
    params = dict(layer=layer, batch_key=batch_key, n_latent=n_latent, gene_likelihood=gene_likelihood,
                  max_epochs=n_epochs, n_samples=n_samples, device=device, seed=seed)
    out = target(adata, copy)
    out.layers[IMPUTED_LAYER] = imputed
    info = {"versions_backend": _versions("scvi")}
    write_run_metadata(out, "impute", "scvi", params, history, **info)
    return TaskResult("impute", "scvi", out, keys={"layers": IMPUTED_LAYER}, model=model,
                      history=history, info=info)


@register("impute", "magic", requires=("magic",),
          description="MAGIC (magic-impute): diffusion over the cell graph, back on the count scale")
def impute_magic(adata: AnnData, *, layer: str | None = None, knn: int = 5, t: int = 3,
                 n_pca: int = 100, seed: int = 0, copy: bool = False) -> TaskGen:
    """Imputation with MAGIC, returned as expected counts.

    Counts are normalised to the median library size and square-root transformed (MAGIC's
    recommended preprocessing), diffused with MAGIC, then squared and scaled back to each
    cell's own library size.

    Parameters
    ----------
    adata
        Cells or spots with raw counts.
    layer
        Layer with the raw counts (None: ``adata.X``).
    knn
        Nearest neighbours of MAGIC's kernel.
    t
        Diffusion steps.
    n_pca
        Principal components used to build the graph (capped by the data's size).
    seed
        Random seed.
    copy
        Return a new AnnData instead of writing into ``adata``.
    """
    import magic

    if not hasattr(magic, "MAGIC"):
        raise ImportError("The 'magic' module found is not magic-impute: pip install magic-impute.")
    X = get_counts(adata, layer, what="MAGIC")
    if knn < 1 or t < 1:
        raise InputError(f"knn and t must be at least 1, got knn={knn}, t={t}.")
    if knn >= adata.n_obs:
        raise InputError(f"knn={knn} must be smaller than the number of observations ({adata.n_obs}).")
    yield _events_start(1, "magic", "MAGIC")
    start = time.perf_counter()
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float64)
    lib = X.sum(axis=1)
    med = float(np.median(lib))
    Y = np.sqrt(X / lib[:, None] * med)
    n_pca = int(min(n_pca, Y.shape[0] - 1, Y.shape[1] - 1))
    op = magic.MAGIC(knn=knn, t=t, n_pca=n_pca, random_state=seed, verbose=0, n_jobs=1)
    Z = np.asarray(op.fit_transform(Y), dtype=np.float64)
    imputed = (np.clip(Z, 0, None) ** 2 / med * lib[:, None]).astype(np.float32)
    seconds = time.perf_counter() - start
    yield ProgressEvent(1, 1, 1, elapsed=seconds, message="done", stage="magic")
    params = dict(layer=layer, knn=knn, t=t, n_pca=n_pca, seed=seed)
    out = target(adata, copy)
    out.layers[IMPUTED_LAYER] = imputed
    info = {"versions_backend": _versions("magic")}
    write_run_metadata(out, "impute", "magic", params, seconds=seconds, **info)
    return TaskResult("impute", "magic", out, keys={"layers": IMPUTED_LAYER}, info=info)
