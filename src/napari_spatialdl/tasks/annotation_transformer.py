"""The transformer annotator: ``sdl.annotate(..., method="transformer")``.

A gene-token transformer (rank-value encoding as in Geneformer, a small BERT encoder) trained
on the task's prepared inputs: masked-gene pretraining on the reference and the query cells,
then fine-tuning for the reference's labels, with a temperature fitted on held-out reference
cells (:mod:`napari_spatialdl.models.transformer`). ``pretrained=`` starts from a local
Geneformer-format checkpoint instead of random weights. The task (:mod:`.annotation`) applies
the threshold and writes the labels and confidences; the returned model's ``embed(counts)``
gives the cells' embeddings (``result.model.embed(...)``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..models import ProgressEvent
from ..models.transformer import CheckpointError, GeneTransformerClassifier
from ._registry import register
from ._validate import InputError
from .annotation import AnnotationInputs, AnnotationOutput

__all__ = ["annotate_transformer"]


def _corpus(data: AnnotationInputs) -> Any:
    """Every cell the pretraining sees once: the query, plus the reference when it is another object."""
    if data.same_object:
        return data.query_counts
    R, Q = data.ref_counts, data.query_counts
    if sp.issparse(R) or sp.issparse(Q):
        return sp.vstack([sp.csr_matrix(R, dtype=np.float32), sp.csr_matrix(Q, dtype=np.float32)]).tocsr()
    return np.vstack([np.asarray(R, dtype=np.float32), np.asarray(Q, dtype=np.float32)])


@register("annotate", "transformer", native=True,
          label="Gene-token transformer (Geneformer-style)",
          description="Rank-value gene-token BERT: masked-gene pretraining on reference + query, "
                      "fine-tuned for the labels, temperature-calibrated")
def annotate_transformer(data: AnnotationInputs, *, max_tokens: int = 32, d_model: int = 32,
                         n_layers: int = 1, n_heads: int = 2, pretrain_epochs: int = 2,
                         max_epochs: int = 30, batch_size: int = 64, lr: float = 5e-3,
                         pretrain_lr: float = 1e-3, min_depth_fraction: float = 0.5,
                         calibration_fraction: float = 0.15,
                         pretrained: str | None = None, token_dictionary: str | None = None,
                         trusted: bool = False
                         ) -> Generator[ProgressEvent, None, AnnotationOutput]:
    """Transfer cell-type labels with a gene-token transformer (Geneformer-style).

    Each cell becomes the list of its detected genes ranked by expression relative to each
    gene's median across the reference and the query (rank-value encoding), cut to the top
    ``max_tokens``. A small BERT encoder learns these sequences by masked-gene prediction on
    every reference and query cell, is then fine-tuned with a classifier on the labelled
    reference cells, and its confidence is calibrated by temperature scaling on held-out
    reference cells.

    Parameters
    ----------
    data
        The prepared query and reference (see :func:`napari_spatialdl.annotate`).
    max_tokens
        Genes per cell given to the model (its most highly ranked ones).
    d_model
        Width of the encoder (ignored with ``pretrained``: the checkpoint's).
    n_layers
        Transformer layers (ignored with ``pretrained``).
    n_heads
        Attention heads; must divide ``d_model`` (ignored with ``pretrained``).
    pretrain_epochs
        Epochs of masked-gene pretraining on all reference and query cells (0: none).
    max_epochs
        Fine-tuning epochs; the model is the average of its weights over the last half of them
        (stochastic weight averaging).
    batch_size
        Cells per training step.
    lr
        Adam learning rate of the fine-tuning.
    pretrain_lr
        Adam learning rate of the pretraining (lower than ``lr``: a few epochs of masked-gene
        prediction should shape the encoder, not scatter its weights).
    min_depth_fraction
        Fine-tuning thins each cell to a random fraction of its depth between this and 1
        (robustness to shallower data; 1 disables it).
    calibration_fraction
        Fraction of the labelled reference cells held out of fine-tuning (per cell type) to fit
        the temperature that calibrates the confidence; 0 trains on all of them and leaves the
        confidence uncalibrated.
    pretrained
        Folder of a Geneformer-format checkpoint (Hugging Face BERT: ``config.json`` and
        ``model.safetensors`` or ``pytorch_model.bin``) to start from; nothing is downloaded.
        The data's gene names must be the token dictionary's keys (e.g. Ensembl IDs).
    token_dictionary
        The checkpoint's gene -> token JSON file (default: ``*token_dictionary*.json`` in the
        ``pretrained`` folder).
    trusted
        Allow reading the checkpoint's dictionaries from pickle (``.pkl``) files. Unpickling
        can run code hidden in the file: only for files from a source you trust.

    Returns
    -------
    AnnotationOutput
        Calibrated class probabilities; ``model`` is the trained
        :class:`~napari_spatialdl.models.transformer.GeneTransformerClassifier` (its
        ``embed(counts)`` gives cell embeddings); ``info`` holds the temperature and the
        expected calibration error (ECE) on the held-out reference cells.
    """
    for name, value, least in (("max_tokens", max_tokens, 1), ("d_model", d_model, 1), ("n_layers", n_layers, 1),
                               ("n_heads", n_heads, 1), ("pretrain_epochs", pretrain_epochs, 0),
                               ("max_epochs", max_epochs, 1), ("batch_size", batch_size, 2)):
        if value < least:
            raise InputError(f"{name} must be at least {least}, got {value}.")
    if pretrained is None and d_model % n_heads:
        raise InputError(f"n_heads ({n_heads}) must divide d_model ({d_model}), e.g. d_model=64, n_heads=4.")
    if not 0.0 < min_depth_fraction <= 1.0:
        raise InputError(f"min_depth_fraction must be in (0, 1], got {min_depth_fraction}.")
    if not 0.0 <= calibration_fraction < 0.5:
        raise InputError(f"calibration_fraction must be in [0, 0.5), got {calibration_fraction}.")
    for name, value in (("lr", lr), ("pretrain_lr", pretrain_lr)):
        if not value > 0:
            raise InputError(f"{name} must be positive, got {value}.")
    if pretrained is None and (token_dictionary is not None or trusted):
        raise InputError("token_dictionary= and trusted= only apply with pretrained= (a checkpoint folder).")
    genes = [str(g) for g in data.genes]
    if pretrained is not None:
        try:
            model = GeneTransformerClassifier.from_pretrained(
                pretrained, genes, data.classes, max_tokens=max_tokens, token_dictionary=token_dictionary,
                trusted=trusted, min_depth_fraction=min_depth_fraction)
        except CheckpointError as err:
            raise InputError(f"pretrained={pretrained!r}: {err}") from None
    else:
        model = GeneTransformerClassifier(genes, data.classes, d_model=d_model, n_layers=n_layers,
                                          n_heads=n_heads, max_tokens=max_tokens,
                                          min_depth_fraction=min_depth_fraction)
    corpus = _corpus(data)
    history = yield from model.fit(data.ref_counts, data.ref_labels, corpus=corpus,
                                   pretrain_epochs=pretrain_epochs, max_epochs=max_epochs,
                                   batch_size=batch_size, lr=lr, pretrain_lr=pretrain_lr,
                                   calibration_fraction=calibration_fraction,
                                   device=data.device, seed=data.seed)
    probs = model.predict_proba(data.query_counts)
    extra = model.extra
    info: dict[str, Any] = {
        "device": history.device, "temperature": float(extra["temperature"]),
        "n_calibration_cells": int(extra["n_calibration_cells"]),
        "pretrain_epochs": int(model.histories["pretrain"].n_epochs) if "pretrain" in model.histories else 0,
        "finetune_epochs": int(history.n_epochs),
    }
    if extra["ece_after"] is not None:
        info.update(ece=float(extra["ece_after"]), ece_uncalibrated=float(extra["ece_before"]),
                    calibration_accuracy=float(extra["calibration_accuracy"]))
    if extra.get("pretrained"):
        info["pretrained"] = {k: v for k, v in extra["pretrained"].items()}
    return AnnotationOutput(probabilities=probs, classes=list(model.classes), model=model, history=history,
                            info=info)
