"""A gene-token transformer for cell-type annotation (Geneformer family), trained here.

Design
------
* **Tokens: rank-value encoding (Geneformer, Theodoris et al. 2023).** A cell is the list of
  its detected genes, ordered by expression normalised by each gene's median non-zero
  expression across the training corpus (here: the reference *and* the query), most expressed
  first, cut to the top ``max_tokens``. The rank is the position (learned position
  embeddings). Chosen over value binning (scGPT) for three reasons: (1) a Geneformer
  checkpoint only understands rank-ordered gene tokens, so one encoding serves both the model
  trained here and ``pretrained=path``; (2) the order of genes within a cell does not change
  when the cell's depth is scaled, which is the largest difference between a scRNA-seq
  reference and a spatial query (normalising by library size before ranking would change
  nothing, so it is not done); (3) dividing by the gene's median puts housekeeping genes,
  high everywhere, behind genes that are high *for this cell* - the informative ones. Ties
  (frequent at low depth: many genes with one count) are broken by the median, then by the
  gene order (a stable sort), so the encoding is deterministic.
* **Encoder: BERT (post-layer-norm), the architecture of Geneformer's checkpoints.** Token +
  position (+ token-type 0) embeddings, layer norm, ``n_layers`` blocks of multi-head
  self-attention and a feed-forward layer, each followed by a residual and a layer norm. The
  same parameter layout as Hugging Face's ``BertForMaskedLM``, so a Geneformer checkpoint maps
  onto it weight by weight (:func:`load_geneformer`). Trained here it is small - 1 layer,
  32 dimensions, 2 heads, the top 32 genes of each cell by default - because the project's
  time budget for a model is a tenth of scANVI's on the same data (about 3 CPU-seconds on the
  hippocampus reference): measured there, 2 layers or 64 dimensions cost 2-3x more per epoch
  and, in that budget, fit worse across replicates, and 64 tokens gave no better macro-F1
  than 32 on the full gene set (+0.02 on a 130-gene panel) at 1.5x the time. Dropout is
  applied to the pooled cell only (augmenting the counts regularises the input): on a CPU a
  dropout mask over every token state costs more than the block's matrix products at this
  width, and dropout on the attention weights takes attention off its fused kernel.
* **Training in two stages, both in the shared loop (:func:`._train.train`).** (1)
  self-supervised masked-gene pretraining (15 % of the gene tokens of each cell are masked,
  80 % replaced by ``<mask>``, 10 % by a random gene, 10 % kept; the model predicts the gene at
  each masked rank) on every reference and query cell, labelled or not (transductive: the
  query's own structure shapes the encoder), at a lower learning rate than the fine-tuning:
  at the fine-tuning rate a few epochs of Adam move every weight far from its initialisation
  on an objective barely learned yet (masked-gene loss 5.70 -> 5.63 nats, chance 5.73) and
  did not help; at a fifth of it, 2 epochs raised macro-F1 on the hippocampus replicates
  from 0.700 to 0.723 (mean of 3 seeds) and 6 epochs to 0.742, at ~0.12 CPU-s per epoch
  there (2 by default, for the time budget); on a 130-gene panel 2 epochs gave +0.005; (2)
  fine-tuning of the whole encoder with a linear classification head on the mean of the
  gene-token states, class-weighted cross-entropy, binomial thinning of the counts to a
  random fraction of their depth (robustness to shallower data; the ranks are recomputed
  from the thinned counts). The fine-tuned model is the average of its weights over the last
  half of the epochs (stochastic weight averaging, Izmailov et al. 2018): with ~400 labelled
  cells, the epoch early stopping picks on a few dozen held-out cells is noise (macro-F1
  0.61-0.78 over three seeds), the average is steadier.
* **Calibration.** A stratified ``calibration_fraction`` of the labelled reference is held out
  from fine-tuning; a temperature is fitted on its logits (temperature scaling,
  :func:`.annotation.fit_temperature`) and the expected calibration error before and after
  is reported, as for the MLP ensemble. (The ensemble's cross-fitting would multiply the cost
  of fine-tuning by its number of folds.)
* **Cell embeddings**: :meth:`GeneTransformerClassifier.embed` - the mean of the last layer's
  gene-token states (Geneformer's cell embedding), usable as a latent space (e.g. for
  neighbours or UMAP); it is not batch-corrected, which is why no ``integrate`` method is
  built on it (the integration models condition on the batch).

Pure torch + numpy: no AnnData, no Qt. Loading a checkpoint never unpickles a file unless the
caller says it is trusted.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ._base import SavableModel
from ._train import ProgressEvent, TrainingConfig, TrainingHistory, train
from .annotation import expected_calibration_error, fit_temperature, stratified_folds

__all__ = [
    "MASK",
    "PAD",
    "CheckpointError",
    "GeneTokenEncoder",
    "GeneTransformerClassifier",
    "PretrainedCheckpoint",
    "gene_medians",
    "load_geneformer",
    "rank_value_encode",
]

PAD, MASK = 0, 1  # token ids of the vocabulary built here (Geneformer's too): genes follow
_TARGET_SUM = 1e4
_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


class CheckpointError(ValueError):
    """A pretrained checkpoint that cannot be read; the message names the file and the fix."""


# ----------------------------------------------------------------------------- encoding

def _matrix(X: Any) -> np.ndarray | sp.csr_matrix:
    return sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)


def gene_medians(counts: Any, target_sum: float = _TARGET_SUM) -> np.ndarray:
    """Each gene's median of its non-zero values of ``counts / library * target_sum``.

    Geneformer's normalisation factor (computed there over its whole pretraining corpus). A gene
    without any count gets 1 (it never becomes a token anyway).

    Parameters
    ----------
    counts
        Cells x genes raw counts (dense or scipy sparse).
    target_sum
        Counts per cell after library-size normalisation.

    Returns
    -------
    np.ndarray
        ``(n_genes,)`` float64, positive.
    """
    X = sp.csr_matrix(counts, dtype=np.float64)
    lib = np.asarray(X.sum(axis=1)).ravel()
    factor = np.where(lib > 0, target_sum / np.where(lib > 0, lib, 1.0), 0.0)
    X = sp.csr_matrix(X.multiply(factor[:, None]))
    X.eliminate_zeros()
    C = X.tocsc()
    C.sort_indices()
    med = np.ones(C.shape[1])
    for j in range(C.shape[1]):
        values = C.data[C.indptr[j]:C.indptr[j + 1]]
        if values.size:
            med[j] = float(np.median(values))
    return med


def _rank_tokens(counts: torch.Tensor, gene_scale: torch.Tensor, gene_token: torch.Tensor,
                 max_tokens: int) -> torch.Tensor:
    """The torch implementation every model call uses: ``(n, k)`` token ids, ``PAD`` after the genes.

    ``gene_scale`` is ``1 / median`` (0 for a gene outside the vocabulary), ``gene_token`` the
    token id of every column. ``k`` is ``max_tokens`` or the most detected genes of any row,
    whichever is smaller (at least 1).
    """
    values = counts * gene_scale
    order = torch.sort(values, dim=1, descending=True, stable=True)
    n_detected = int((values > 0).sum(dim=1).max()) if values.numel() else 0
    k = max(1, min(int(max_tokens), n_detected))
    tokens = gene_token[order.indices[:, :k]]
    return torch.where(order.values[:, :k] > 0, tokens, torch.full_like(tokens, PAD))


def rank_value_encode(counts: Any, medians: np.ndarray, max_tokens: int,
                      token_ids: np.ndarray | None = None) -> np.ndarray:
    """Rank-value encoding of every cell (Geneformer): its genes by ``counts / median``, top first.

    Parameters
    ----------
    counts
        Cells x genes counts (dense or scipy sparse).
    medians
        ``(n_genes,)`` positive normalisation factors (see :func:`gene_medians`); ``np.inf``
        leaves a gene out.
    max_tokens
        Longest encoding (top genes kept).
    token_ids
        Token id of every gene (default: ``2 + column``, the vocabulary built here).

    Returns
    -------
    np.ndarray
        ``(n_cells, k)`` int64 token ids, ``PAD`` (0) after each cell's last detected gene;
        ``k = min(max_tokens, most detected genes in a cell)``. Ties keep the column order.
    """
    X = _matrix(counts)
    X = torch.as_tensor(X.toarray() if sp.issparse(X) else X)
    medians = np.asarray(medians, dtype=np.float64)
    if medians.shape != (X.shape[1],) or not (medians > 0).all():
        raise ValueError(f"medians must be {X.shape[1]} positive values, got shape {medians.shape}.")
    ids = np.arange(2, X.shape[1] + 2) if token_ids is None else np.asarray(token_ids)
    scale = torch.as_tensor(1.0 / medians, dtype=torch.float32)
    return _rank_tokens(X, scale, torch.as_tensor(ids, dtype=torch.long), max_tokens).numpy()


# ----------------------------------------------------------------------------- the network

class _BertLayer(torch.nn.Module):
    """One BERT block: self-attention, residual + layer norm, feed-forward, residual + layer norm."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, act: str, eps: float):
        super().__init__()
        self.n_heads, self.dropout, self.act = n_heads, dropout, _ACTIVATIONS[act]
        self.query = torch.nn.Linear(d_model, d_model)
        self.key = torch.nn.Linear(d_model, d_model)
        self.value = torch.nn.Linear(d_model, d_model)
        self.attn_out = torch.nn.Linear(d_model, d_model)
        self.attn_norm = torch.nn.LayerNorm(d_model, eps=eps)
        self.ff_in = torch.nn.Linear(d_model, d_ff)
        self.ff_out = torch.nn.Linear(d_ff, d_model)
        self.ff_norm = torch.nn.LayerNorm(d_model, eps=eps)

    def attention(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        h = self.n_heads
        q, k, v = (lin(x).view(B, L, h, D // h).transpose(1, 2) for lin in (self.query, self.key, self.value))
        # dropout only on the pooled cell (the counts are augmented instead): on the CPU, dropout on
        # the attention weights takes SDPA off its fused kernel (5x slower), and a dropout mask over
        # every token state costs more than the block's matrix products at this width
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.attn_out(a.transpose(1, 2).reshape(B, L, D))

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attention(x, attend))  # BERT's post-LN
        return self.ff_norm(x + self.ff_out(self.act(self.ff_in(x))))


class GeneTokenEncoder(torch.nn.Module):
    """BERT encoder over rank-value gene tokens, with a masked-gene head and a classifier head.

    The vocabulary is ``n_special`` special tokens (``<pad>``=0, ``<mask>``=1, then ``<cls>``
    and ``<eos>`` when ``cls_token``/``eos_token`` are set, as in Geneformer's 95M models)
    followed by the genes. ``gene_token[j]`` is the token of count column ``j`` (unused when
    ``gene_scale[j]`` is 0).
    """

    def __init__(self, n_genes: int, n_classes: int, *, vocab_size: int, n_special: int = 2,
                 d_model: int = 64, n_layers: int = 2, n_heads: int = 4, d_ff: int = 128,
                 max_tokens: int = 128, dropout: float = 0.1, act: str = "gelu",
                 layer_norm_eps: float = 1e-12, cls_token: int = -1, eos_token: int = -1,
                 mask_fraction: float = 0.15, min_depth_fraction: float = 0.5, gene_dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads}).")
        if act not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {act!r}; supported: {', '.join(_ACTIVATIONS)}.")
        self.n_genes, self.n_classes, self.vocab_size, self.n_special = n_genes, n_classes, vocab_size, n_special
        self.max_tokens, self.cls_token, self.eos_token = int(max_tokens), int(cls_token), int(eos_token)
        self.dropout, self.act = float(dropout), _ACTIVATIONS[act]
        self.mask_fraction, self.min_depth_fraction = float(mask_fraction), float(min_depth_fraction)
        self.gene_dropout = float(gene_dropout)
        n_positions = self.max_tokens + (cls_token >= 0) + (eos_token >= 0)
        self.token_embedding = torch.nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        self.position_embedding = torch.nn.Embedding(n_positions, d_model)
        self.type_embedding = torch.nn.Parameter(torch.zeros(d_model))  # BERT's token type 0
        self.embedding_norm = torch.nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.layers = torch.nn.ModuleList(
            [_BertLayer(d_model, n_heads, d_ff, dropout, act, layer_norm_eps) for _ in range(n_layers)])
        self.mlm_dense = torch.nn.Linear(d_model, d_model)
        self.mlm_norm = torch.nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.mlm_bias = torch.nn.Parameter(torch.zeros(vocab_size))  # decoder tied to token_embedding
        self.classifier = torch.nn.Linear(d_model, max(n_classes, 1))
        self.reset_parameters()
        self.register_buffer("gene_scale", torch.ones(n_genes))
        self.register_buffer("gene_token", torch.arange(n_special, n_special + n_genes, dtype=torch.long))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("class_weight", torch.ones(max(n_classes, 1)))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long), persistent=False)

    def reset_parameters(self) -> None:
        """BERT's initialisation (normal, sd 0.02; zero biases), from torch's global generator."""
        for module in self.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                torch.nn.init.normal_(module.weight, 0.0, 0.02)
                if isinstance(module, torch.nn.Linear):
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, torch.nn.LayerNorm):
                module.reset_parameters()
        with torch.no_grad():
            self.token_embedding.weight[PAD].zero_()
            self.type_embedding.zero_()
            self.mlm_bias.zero_()

    # ---- tokens
    def thin(self, counts: torch.Tensor) -> torch.Tensor:
        """Training augmentation: binomial thinning of every row to a random fraction of its depth,
        and each gene of each cell dropped with probability ``gene_dropout``."""
        if self.min_depth_fraction < 1.0:
            u = torch.rand(counts.shape[0], 1, device=counts.device)
            rate = torch.exp(u * math.log(self.min_depth_fraction))
            counts = torch.binomial(counts, rate.expand_as(counts))
        if self.gene_dropout > 0.0:
            counts = counts * (torch.rand(counts.shape, device=counts.device) >= self.gene_dropout)
        return counts

    def tokens(self, counts: torch.Tensor) -> torch.Tensor:
        """Token ids ``(n, L)``: ``<cls>``?, the rank-value genes, ``<eos>``?, then padding.

        A cell without any count in the vocabulary's genes is one ``<mask>`` token (unknown).
        """
        tok = _rank_tokens(counts, self.gene_scale, self.gene_token, self.max_tokens)
        empty = tok[:, 0] == PAD
        if empty.any():
            tok[empty, 0] = MASK
        n = tok.shape[0]
        if self.eos_token >= 0:
            length = (tok != PAD).sum(dim=1)
            tok = torch.cat([tok, torch.full((n, 1), PAD, dtype=tok.dtype, device=tok.device)], dim=1)
            tok[torch.arange(n, device=tok.device), length] = self.eos_token
        if self.cls_token >= 0:
            tok = torch.cat([torch.full((n, 1), self.cls_token, dtype=tok.dtype, device=tok.device), tok], dim=1)
        return tok

    # ---- network
    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last layer's states ``(n, L, d_model)``."""
        L = tokens.shape[1]
        pos = torch.arange(L, device=tokens.device)
        x = self.embedding_norm(self.token_embedding(tokens) + self.position_embedding(pos)[None] + self.type_embedding)
        attend = (tokens != PAD)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attend)
        return x

    def pool(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Mean of the gene-token states (the cell embedding), ``(n, d_model)``."""
        keep = (tokens != PAD) & (tokens != self.cls_token) & (tokens != self.eos_token)
        w = keep.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)

    def embed(self, counts: torch.Tensor) -> torch.Tensor:
        """Cell embeddings of raw counts, ``(n, d_model)``."""
        tok = self.tokens(counts)
        return self.pool(self.hidden(tok), tok)

    def class_logits(self, counts: torch.Tensor) -> torch.Tensor:
        """Classifier logits before the temperature (thinned counts in training)."""
        if self.training:
            counts = self.thin(counts)
        pooled = self.embed(counts)
        return self.classifier(F.dropout(pooled, self.dropout, self.training))

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        """Calibrated class logits, ``(n, n_classes)``."""
        return self.class_logits(counts) / self.temperature

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Masked-gene head: logits over the vocabulary (decoder tied to the token embedding)."""
        h = self.mlm_norm(self.act(self.mlm_dense(hidden)))
        return h @ self.token_embedding.weight.T + self.mlm_bias

    def mlm_loss(self, counts: torch.Tensor) -> torch.Tensor:
        """Masked-gene pretraining loss on a batch of raw counts (cross-entropy over the vocabulary)."""
        if self.training:
            counts = self.thin(counts)
        tok = self.tokens(counts)
        genes = tok >= self.n_special
        if self.cls_token >= 0 or self.eos_token >= 0:
            genes &= (tok != self.cls_token) & (tok != self.eos_token)
        chosen = genes & (torch.rand(tok.shape, device=tok.device) < self.mask_fraction)
        if not chosen.any():
            return self.mlm_bias.sum() * 0.0
        target = tok[chosen]
        u = torch.rand(target.shape, device=tok.device)
        replaced = torch.where(u < 0.8, torch.full_like(target, MASK), target)
        random_gene = torch.randint(self.n_special, self.vocab_size, target.shape, device=tok.device)
        replaced = torch.where((u >= 0.8) & (u < 0.9), random_gene, replaced)
        inp = tok.clone()
        inp[chosen] = replaced
        logits = self.mlm_logits(self.hidden(inp)[chosen])
        return F.cross_entropy(logits, target)

    def class_loss(self, counts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Class-weighted cross-entropy of the (uncalibrated) classifier on a batch."""
        return F.cross_entropy(self.class_logits(counts), self.labels[index], weight=self.class_weight)


# ----------------------------------------------------------------------------- checkpoints

@dataclass
class PretrainedCheckpoint:
    """A Geneformer-format checkpoint read from a local folder (see :func:`load_geneformer`)."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]  # Hugging Face BERT names, without the "bert." prefix
    token_dictionary: dict[str, int]
    gene_medians: dict[str, float] | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.token_dictionary.items() if k.startswith("<") and k.endswith(">")}


def _read_mapping(path: Path, what: str, trusted: bool) -> dict:
    """A JSON object, or (only when ``trusted``) a pickled dict: never unpickle otherwise."""
    if path.suffix.lower() in (".pkl", ".pickle"):
        if not trusted:
            raise CheckpointError(
                f"{path} is a pickle: reading it could run any code it holds, so it is not opened. "
                f"Convert the {what} to JSON once (a dict of gene -> value, e.g. json.dump(d, f)) and "
                f"pass that file, or pass trusted=True if you trust where {path.name} came from.")
        with open(path, "rb") as fh:
            value = pickle.load(fh)  # noqa: S301 (the caller said the file is trusted)
    else:
        try:
            value = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is not a readable JSON {what}: {err}.") from None
    if not isinstance(value, Mapping) or not value:
        raise CheckpointError(f"{path} must hold a non-empty dict ({what}), got {type(value).__name__}.")
    return dict(value)


def _find(folder: Path, given: str | Path | None, patterns: tuple[str, ...]) -> Path | None:
    if given is not None:
        p = Path(given)
        p = p if p.is_absolute() or p.exists() else folder / p
        if not p.is_file():
            raise CheckpointError(f"{p} not found.")
        return p
    for pattern in patterns:
        hits = sorted(folder.glob(pattern))
        json_hits = [h for h in hits if h.suffix.lower() == ".json"]
        if json_hits or hits:
            return (json_hits or hits)[0]
    return None


def _load_weights(folder: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Weights from ``model.safetensors`` (needs the safetensors package) or ``pytorch_model.bin``
    (``torch.load(weights_only=True)``: tensors only, nothing executed); sharded files too."""
    def safetensors_file(p: Path) -> dict[str, torch.Tensor]:
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{p} is a safetensors file: install the safetensors package (pip install safetensors) "
                "to read it, or give the folder a pytorch_model.bin.") from None
        return dict(load_file(str(p), device="cpu"))

    def torch_file(p: Path) -> dict[str, torch.Tensor]:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (any unreadable or non-tensor file)
            raise CheckpointError(f"{p} could not be read as tensors only (weights_only=True): {err}") from None
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a dict of weights.")
        return dict(obj)

    for name, reader in (("model.safetensors", safetensors_file), ("pytorch_model.bin", torch_file)):
        if (folder / name).is_file():
            return reader(folder / name), [name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            shards = sorted(set(weight_map.values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(reader(folder / shard))
            return state, shards
    present = sorted(p.name for p in folder.iterdir())[:12]
    raise CheckpointError(
        f"{folder} has no model.safetensors or pytorch_model.bin (files: {', '.join(present) or 'none'}). "
        "Point pretrained= at the folder of a Hugging Face BERT checkpoint (e.g. Geneformer's gf-6L-30M-i2048).")


def _bert_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face names without the model prefix; TF-era ``gamma``/``beta`` as ``weight``/``bias``."""
    out = {}
    for key, value in state.items():
        if key.startswith("bert."):
            key = key[5:]
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


def load_geneformer(path: str | Path, *, token_dictionary: str | Path | None = None,
                    gene_median_dictionary: str | Path | None = None,
                    trusted: bool = False) -> PretrainedCheckpoint:
    """Read a Geneformer-format checkpoint from a local folder (no download).

    Parameters
    ----------
    path
        Folder with ``config.json`` (a BERT config) and ``model.safetensors`` or
        ``pytorch_model.bin`` (Hugging Face ``BertForMaskedLM`` or ``BertModel`` names).
    token_dictionary
        JSON file mapping gene IDs (as in the data's gene names) and ``<pad>``/``<mask>``
        (/``<cls>``/``<eos>``) to token ids; default: a ``*token_dictionary*.json`` in the
        folder (then a ``.pkl``, read only with ``trusted``).
    gene_median_dictionary
        JSON gene -> median used by the checkpoint's tokeniser (optional; default: a
        ``*median*.json`` in the folder, else the medians are computed from the data).
    trusted
        Allow reading pickled (``.pkl``) dictionaries. Unpickling runs whatever code the file
        holds: only for files from a source you trust.

    Returns
    -------
    PretrainedCheckpoint
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"pretrained={str(path)!r} is not a folder: pass the folder holding config.json "
                              "and the weights of a Geneformer checkpoint.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a Hugging Face checkpoint folder.")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{config_file} describes a {model_type!r} model; only BERT (Geneformer) "
                              "checkpoints can be loaded.")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{config_file}: position_embedding_type "
                              f"{config['position_embedding_type']!r} is not supported (absolute only).")
    if config.get("hidden_act", "gelu") not in _ACTIVATIONS:
        raise CheckpointError(f"{config_file}: hidden_act {config['hidden_act']!r} is not supported "
                              f"({', '.join(_ACTIVATIONS)}).")
    state, weight_files = _load_weights(folder)
    tok_file = _find(folder, token_dictionary, ("*token_dictionary*", "*token*dict*"))
    if tok_file is None:
        raise CheckpointError(
            f"{folder} has no token dictionary (gene ID -> token id): pass token_dictionary= (a JSON file; "
            "Geneformer ships token_dictionary.pkl: convert it to JSON once, or pass trusted=True).")
    tokens = {str(k): int(v) for k, v in _read_mapping(tok_file, "token dictionary", trusted).items()}
    for special in ("<pad>", "<mask>"):
        if special not in tokens:
            raise CheckpointError(f"The token dictionary {tok_file} has no {special!r} token.")
    med_file = _find(folder, gene_median_dictionary, ("*median*",))
    medians = None
    if med_file is not None:
        medians = {str(k): float(v) for k, v in _read_mapping(med_file, "gene median dictionary", trusted).items()}
    files = {"weights": ", ".join(weight_files), "token_dictionary": str(tok_file)}
    if med_file is not None:
        files["gene_median_dictionary"] = str(med_file)
    return PretrainedCheckpoint(folder, config, _bert_names(state), tokens, medians, files)


def _copy_checkpoint(module: GeneTokenEncoder, ckpt: PretrainedCheckpoint, rows: np.ndarray) -> None:
    """Put the checkpoint's BERT weights into ``module``; ``rows``: checkpoint token of each vocabulary entry."""
    s = ckpt.state_dict

    def get(name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if name not in s:
            raise CheckpointError(f"{ckpt.path}: the weights have no {name!r} (a BERT weight).")
        value = s[name].detach().to(torch.float32)
        if shape is not None and tuple(value.shape) != shape:
            raise CheckpointError(f"{ckpt.path}: {name} has shape {tuple(value.shape)}, config.json says {shape}.")
        return value

    cfg = ckpt.config
    d, vocab = int(cfg["hidden_size"]), int(cfg["vocab_size"])
    d_ff, n_pos = int(cfg["intermediate_size"]), int(cfg["max_position_embeddings"])
    idx = torch.as_tensor(rows, dtype=torch.long)
    with torch.no_grad():
        module.token_embedding.weight.copy_(get("embeddings.word_embeddings.weight", (vocab, d))[idx])
        L = module.position_embedding.weight.shape[0]
        module.position_embedding.weight.copy_(get("embeddings.position_embeddings.weight", (n_pos, d))[:L])
        if "embeddings.token_type_embeddings.weight" in s:
            module.type_embedding.copy_(get("embeddings.token_type_embeddings.weight")[0])
        module.embedding_norm.weight.copy_(get("embeddings.LayerNorm.weight", (d,)))
        module.embedding_norm.bias.copy_(get("embeddings.LayerNorm.bias", (d,)))
        for i, layer in enumerate(module.layers):
            p = f"encoder.layer.{i}."
            for n in ("query", "key", "value"):
                getattr(layer, n).weight.copy_(get(p + f"attention.self.{n}.weight", (d, d)))
                getattr(layer, n).bias.copy_(get(p + f"attention.self.{n}.bias", (d,)))
            layer.attn_out.weight.copy_(get(p + "attention.output.dense.weight", (d, d)))
            layer.attn_out.bias.copy_(get(p + "attention.output.dense.bias", (d,)))
            layer.attn_norm.weight.copy_(get(p + "attention.output.LayerNorm.weight", (d,)))
            layer.attn_norm.bias.copy_(get(p + "attention.output.LayerNorm.bias", (d,)))
            layer.ff_in.weight.copy_(get(p + "intermediate.dense.weight", (d_ff, d)))
            layer.ff_in.bias.copy_(get(p + "intermediate.dense.bias", (d_ff,)))
            layer.ff_out.weight.copy_(get(p + "output.dense.weight", (d, d_ff)))
            layer.ff_out.bias.copy_(get(p + "output.dense.bias", (d,)))
            layer.ff_norm.weight.copy_(get(p + "output.LayerNorm.weight", (d,)))
            layer.ff_norm.bias.copy_(get(p + "output.LayerNorm.bias", (d,)))
        if "cls.predictions.transform.dense.weight" in s:  # BertForMaskedLM: its masked-gene head too
            module.mlm_dense.weight.copy_(get("cls.predictions.transform.dense.weight", (d, d)))
            module.mlm_dense.bias.copy_(get("cls.predictions.transform.dense.bias", (d,)))
            module.mlm_norm.weight.copy_(get("cls.predictions.transform.LayerNorm.weight", (d,)))
            module.mlm_norm.bias.copy_(get("cls.predictions.transform.LayerNorm.bias", (d,)))
            bias = s.get("cls.predictions.bias", s.get("cls.predictions.decoder.bias"))
            if bias is not None:
                module.mlm_bias.copy_(bias.to(torch.float32)[idx])


# ----------------------------------------------------------------------------- the wrapper

class GeneTransformerClassifier(SavableModel):
    """Rank-value gene-token transformer with a calibrated classification head (module docstring).

    Parameters
    ----------
    genes
        Names of the count columns given to :meth:`fit`, :meth:`predict_proba` and :meth:`embed`.
    classes
        Cell types.
    d_model, n_layers, n_heads
        Width, depth and attention heads of the encoder.
    max_tokens
        Genes per cell (the top of its rank-value encoding).
    d_ff
        Default ``2 * d_model`` (Geneformer's ratio).
    dropout
        Dropout on the pooled cell embedding before the classifier (training only).
    mask_fraction
        Fraction of gene tokens masked in pretraining.
    min_depth_fraction
        Training thins each cell's counts to a random fraction of its depth in
        [``min_depth_fraction``, 1] (1: no thinning).
    gene_dropout
        Training also drops each gene of each cell with this probability (0: never).
    act, layer_norm_eps
        Feed-forward activation and layer-norm epsilon (BERT's settings).
    vocabulary
        Token ids ``"<pad>"``, ``"<mask>"`` (, ``"<cls>"``, ``"<eos>"``) of the special tokens;
        default: pad 0, mask 1. Genes follow.
    in_vocabulary
        Which genes have a token (default: all).
    """

    def __init__(self, genes: list[str], classes: list[str], *, d_model: int = 32, n_layers: int = 1,
                 n_heads: int = 2, d_ff: int | None = None, max_tokens: int = 32, dropout: float = 0.1,
                 mask_fraction: float = 0.15, min_depth_fraction: float = 0.5, gene_dropout: float = 0.0,
                 act: str = "gelu", layer_norm_eps: float = 1e-12, vocabulary: dict[str, int] | None = None,
                 in_vocabulary: list[bool] | None = None):
        special = dict(vocabulary or {"<pad>": PAD, "<mask>": MASK})
        if special.get("<pad>") != PAD or special.get("<mask>") != MASK:
            raise ValueError(f"vocabulary must give <pad> 0 and <mask> 1, got {special}.")
        keep = [True] * len(genes) if in_vocabulary is None else [bool(v) for v in in_vocabulary]
        if len(keep) != len(genes):
            raise ValueError(f"in_vocabulary has {len(keep)} values for {len(genes)} genes.")
        n_special = len(special)
        self.init_kwargs: dict[str, Any] = {
            "n_genes": len(genes), "n_classes": len(classes), "vocab_size": n_special + sum(keep),
            "n_special": n_special, "d_model": int(d_model), "n_layers": int(n_layers), "n_heads": int(n_heads),
            "d_ff": int(d_ff if d_ff is not None else 2 * d_model), "max_tokens": int(max_tokens),
            "dropout": float(dropout), "act": str(act), "layer_norm_eps": float(layer_norm_eps),
            "cls_token": int(special.get("<cls>", -1)), "eos_token": int(special.get("<eos>", -1)),
            "mask_fraction": float(mask_fraction), "min_depth_fraction": float(min_depth_fraction),
            "gene_dropout": float(gene_dropout),
        }
        self.extra: dict[str, Any] = {
            "genes": [str(g) for g in genes], "classes": [str(c) for c in classes],
            "vocabulary": {str(k): int(v) for k, v in special.items()}, "in_vocabulary": keep,
            "pretrained": None, "temperature": 1.0, "ece_before": None, "ece_after": None,
        }
        self.module = GeneTokenEncoder(**self.init_kwargs)
        with torch.no_grad():
            token = torch.full((len(genes),), PAD, dtype=torch.long)
            mask = torch.as_tensor(keep, dtype=torch.bool)
            token[mask] = torch.arange(n_special, n_special + int(mask.sum()))
            self.module.gene_token.copy_(token)
            self.module.gene_scale.copy_(mask.to(torch.float32))
        self.history: TrainingHistory | None = None
        self.histories: dict[str, TrainingHistory] = {}

    @classmethod
    def build(cls, init_kwargs: dict[str, Any], extra: dict[str, Any]) -> GeneTransformerClassifier:
        kw = {k: v for k, v in init_kwargs.items()
              if k in ("d_model", "n_layers", "n_heads", "d_ff", "max_tokens", "dropout", "mask_fraction",
                       "min_depth_fraction", "gene_dropout", "act", "layer_norm_eps")}
        model = cls(extra["genes"], extra["classes"], vocabulary=extra["vocabulary"],
                    in_vocabulary=extra["in_vocabulary"], **kw)
        model.extra.update(extra)
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, genes: list[str], classes: list[str], *,
                        max_tokens: int = 64, token_dictionary: str | Path | None = None,
                        gene_median_dictionary: str | Path | None = None, trusted: bool = False,
                        dropout: float | None = None, mask_fraction: float = 0.15,
                        min_depth_fraction: float = 0.5) -> GeneTransformerClassifier:
        """A classifier whose encoder holds a Geneformer checkpoint's weights (:func:`load_geneformer`).

        The genes are matched to the token dictionary by name; genes it lacks are left out of
        the encoding. The vocabulary is cut to the special tokens and the data's genes (their
        embeddings and masked-gene biases copied from the checkpoint). The classification head
        is new (trained by :meth:`fit`).
        """
        ckpt = load_geneformer(path, token_dictionary=token_dictionary,
                               gene_median_dictionary=gene_median_dictionary, trusted=trusted)
        cfg, td = ckpt.config, ckpt.token_dictionary
        keep = [str(g) in td for g in genes]
        if not any(keep):
            example = next(k for k in td if not k.startswith("<"))
            raise CheckpointError(
                f"None of the {len(genes)} genes (e.g. {', '.join(map(str, genes[:3]))}) is in the token "
                f"dictionary {ckpt.files['token_dictionary']} (keys like {example!r}). Give the data gene "
                "names of the same kind (e.g. Ensembl IDs in var_names).")
        special_names = [s for s in ("<pad>", "<mask>", "<cls>", "<eos>") if s in td]
        n_pos_needed = max_tokens + ("<cls>" in td) + ("<eos>" in td)
        n_pos = int(cfg["max_position_embeddings"])
        if n_pos_needed > n_pos:
            raise CheckpointError(f"max_tokens={max_tokens} needs {n_pos_needed} positions; the checkpoint "
                                  f"has {n_pos} (config.json max_position_embeddings). Lower max_tokens.")
        d = int(cfg["hidden_size"])
        model = cls(genes, classes, d_model=d, n_layers=int(cfg["num_hidden_layers"]),
                    n_heads=int(cfg["num_attention_heads"]), d_ff=int(cfg["intermediate_size"]),
                    max_tokens=max_tokens,
                    dropout=float(cfg.get("hidden_dropout_prob", 0.1)) if dropout is None else dropout,
                    mask_fraction=mask_fraction, min_depth_fraction=min_depth_fraction,
                    act=str(cfg.get("hidden_act", "gelu")), layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                    vocabulary={s: i for i, s in enumerate(special_names)}, in_vocabulary=keep)
        rows = np.array([td[s] for s in special_names] + [td[str(g)] for g, k in zip(genes, keep) if k])
        _copy_checkpoint(model.module, ckpt, rows)
        model.extra["pretrained"] = {"path": str(ckpt.path), **ckpt.files,
                                     "n_genes_in_dictionary": int(sum(keep)), "n_genes": len(genes)}
        if ckpt.gene_medians is not None:
            med = np.array([ckpt.gene_medians.get(str(g), np.nan) for g in genes])
            model.extra["checkpoint_medians"] = [float(m) for m in med]
        return model

    # ---- properties
    @property
    def genes(self) -> list[str]:
        return list(self.extra["genes"])

    @property
    def classes(self) -> list[str]:
        return list(self.extra["classes"])

    @property
    def temperature(self) -> float:
        return float(self.module.temperature)

    def _check(self, counts: Any) -> np.ndarray | sp.csr_matrix:
        X = _matrix(counts)
        if X.ndim != 2 or X.shape[1] != len(self.genes):
            raise ValueError(f"counts has {X.shape[1] if X.ndim == 2 else X.shape} genes, expected {len(self.genes)}.")
        return X

    def set_medians(self, corpus: Any) -> np.ndarray:
        """Compute the genes' medians from ``corpus`` (checkpoint medians win where given)."""
        med = gene_medians(self._check(corpus))
        given = self.extra.get("checkpoint_medians")
        if given is not None:
            given = np.asarray(given, dtype=np.float64)
            med = np.where(np.isfinite(given) & (given > 0), given, med)
        keep = torch.as_tensor(self.extra["in_vocabulary"], dtype=torch.bool)
        with torch.no_grad():
            scale = torch.as_tensor(1.0 / med, dtype=torch.float32) * keep
            self.module.gene_scale.copy_(scale.to(self.module.gene_scale.device))
        return med

    # ---- training
    def fit(self, counts: Any, labels: np.ndarray, *, corpus: Any = None, pretrain_epochs: int = 2,
            max_epochs: int = 30, batch_size: int = 64, lr: float = 5e-3, pretrain_lr: float | None = 1e-3,
            weight_decay: float = 1e-4,
            patience: int = 8, calibration_fraction: float = 0.15, average_fraction: float = 0.5,
            device: str | torch.device = "auto",
            seed: int = 0) -> Generator[ProgressEvent, None, TrainingHistory]:
        """Pretrain (masked genes, on ``corpus``) and fine-tune (on ``counts``); a generator.

        Parameters
        ----------
        counts
            Labelled cells' raw counts (columns in the order of :attr:`genes`).
        labels
            Cell type of every row of ``counts`` (among :attr:`classes`).
        corpus
            Every cell the pretraining and the gene medians use, labelled or not (e.g. the
            reference and the query stacked; default: ``counts``).
        pretrain_epochs
            Epochs of masked-gene pretraining over all cells (0: none).
        max_epochs
            Most fine-tuning epochs (early stopping on the held-out cells).
        pretrain_lr
            Learning rate of the pretraining (default: ``lr``).
        batch_size, lr, weight_decay, patience, device, seed
            Training settings of both stages.
        average_fraction
            Stochastic weight averaging: the model is the average of its weights at the end of
            each of the last ``average_fraction`` of the fine-tuning epochs (all epochs run);
            0: early stopping on the held-out cells instead, keeping the best epoch's weights.
        calibration_fraction
            Stratified fraction of the labelled cells held out of fine-tuning for the
            temperature (and for early stopping when ``average_fraction`` is 0); classes with
            fewer than 3 cells keep them all; 0: none held out, no calibration.

        Yields
        ------
        ProgressEvent
            ``stage`` is ``"pretrain"`` or ``"finetune"``; ``epoch``/``n_epochs`` count both stages.

        Returns
        -------
        TrainingHistory
            Of the fine-tuning (:attr:`histories` has both).
        """
        classes = self.classes
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray(labels).astype(str)
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ValueError(f"Labels {unknown[:5]} are not among classes.")
        y = np.array([index[c] for c in labels], dtype=np.int64)
        X = self._check(counts)
        if len(y) != X.shape[0]:
            raise ValueError(f"{X.shape[0]} cells but {len(y)} labels.")
        corpus = X if corpus is None else self._check(corpus)
        m = self.module
        torch.manual_seed(seed)
        if self.extra.get("pretrained") is None:
            m.reset_parameters()  # seeded: the same seed gives the same model
        self.set_medians(corpus)
        with torch.no_grad():
            freq = np.bincount(y, minlength=len(classes)).astype(np.float64)
            weight = np.where(freq > 0, len(y) / (len(classes) * np.maximum(freq, 1)), 0.0)
            m.class_weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            m.temperature.fill_(1.0)
        total = int(pretrain_epochs) + int(max_epochs)
        self.histories = {}
        if pretrain_epochs > 0:
            config = TrainingConfig(max_epochs=int(pretrain_epochs), batch_size=batch_size,
                                    lr=lr if pretrain_lr is None else pretrain_lr,
                                    weight_decay=weight_decay, validation_fraction=0.0, patience=0,
                                    restore_best=False, seed=seed, device=device)
            params = [p for n, p in m.named_parameters() if not n.startswith("classifier.")]
            gen = train(m, {"x": corpus}, lambda mod, b: mod.mlm_loss(b["x"]), config, parameters=params)
            self.histories["pretrain"] = yield from _staged(gen, "pretrain", 0, total)

        train_rows, held = _holdout(y, calibration_fraction, seed)
        m.labels = torch.as_tensor(y)
        averaging = average_fraction > 0
        config = TrainingConfig(max_epochs=int(max_epochs), batch_size=batch_size, lr=lr,
                                weight_decay=weight_decay,
                                patience=0 if averaging or not len(held) else patience,
                                restore_best=not averaging, seed=seed + 1, device=device)
        first_averaged = int(max_epochs) - max(1, int(round(average_fraction * int(max_epochs)))) + 1
        average: dict[str, torch.Tensor] = {}
        n_averaged = 0

        def accumulate(event: ProgressEvent) -> None:
            nonlocal n_averaged
            if not averaging or event.epoch < first_averaged or event.step == 0:
                return
            n_averaged += 1
            with torch.no_grad():
                for name, p in m.named_parameters():
                    if name not in average:
                        average[name] = p.detach().clone()
                    else:
                        average[name].add_(p.detach() - average[name], alpha=1.0 / n_averaged)

        try:  # with weight averaging no epoch is chosen: the held-out cells only calibrate
            gen = train(m, {"x": X}, lambda mod, b: mod.class_loss(b["x"], b["index"]), config,
                        train_index=train_rows, val_index=held[:0] if averaging else held)
            history = yield from _staged(gen, "finetune", int(pretrain_epochs), total, on_epoch=accumulate)
        finally:
            m.labels = torch.zeros(0, dtype=torch.long)
        if average:  # stochastic weight averaging over the last epochs
            with torch.no_grad():
                for name, p in m.named_parameters():
                    p.copy_(average[name])
            m.eval()
        self.histories["finetune"] = history
        self.extra.update({"n_calibration_cells": int(len(held)), "temperature": 1.0,
                           "ece_before": None, "ece_after": None, "calibration_accuracy": None})
        if len(held):
            logits = self.logits(X[held])
            t = fit_temperature(logits, y[held])
            with torch.no_grad():
                m.temperature.fill_(t)
            before = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
            after = torch.softmax(torch.as_tensor(logits / t), dim=1).numpy()
            self.extra.update({"temperature": t, "ece_before": expected_calibration_error(before, y[held]),
                               "ece_after": expected_calibration_error(after, y[held]),
                               "calibration_accuracy": float((logits.argmax(axis=1) == y[held]).mean())})
        self.history = history
        return history

    # ---- inference
    def _batches(self, counts: Any, batch_size: int):
        X = self._check(counts)
        device = self.module.gene_scale.device
        for start in range(0, X.shape[0], batch_size):
            block = X[start:start + batch_size]
            yield torch.as_tensor(block.toarray() if sp.issparse(block) else block).to(device)

    def logits(self, counts: Any, batch_size: int = 1024) -> np.ndarray:
        """Uncalibrated class logits, ``(n, n_classes)`` float64."""
        m = self.module
        m.eval()
        with torch.no_grad():
            out = [m.class_logits(b).cpu() for b in self._batches(counts, batch_size)]
        if not out:
            return np.zeros((0, len(self.classes)))
        return torch.cat(out).numpy().astype(np.float64)

    def predict_proba(self, counts: Any, batch_size: int = 1024) -> np.ndarray:
        """Calibrated class probabilities, ``(n, n_classes)``, for raw counts (columns = :attr:`genes`)."""
        z = self.logits(counts, batch_size) / self.temperature
        return torch.softmax(torch.as_tensor(z), dim=1).numpy()

    def embed(self, counts: Any, batch_size: int = 1024) -> np.ndarray:
        """Cell embeddings (mean of the last layer's gene-token states), ``(n, d_model)`` float32."""
        m = self.module
        m.eval()
        with torch.no_grad():
            out = [m.embed(b).cpu() for b in self._batches(counts, batch_size)]
        if not out:
            return np.zeros((0, self.init_kwargs["d_model"]), dtype=np.float32)
        return torch.cat(out).numpy()

    def encode(self, counts: Any) -> np.ndarray:
        """The token ids the model reads for each cell (rank-value encoding + special tokens)."""
        with torch.no_grad():
            return torch.cat([self.module.tokens(b).cpu() for b in self._batches(counts, 4096)]).numpy() \
                if self._check(counts).shape[0] else np.zeros((0, 1), dtype=np.int64)


def _holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): a stratified ``fraction`` of each class with >= 3 cells."""
    rows = np.arange(len(y))
    if fraction <= 0:
        return rows, np.array([], dtype=np.int64)
    n_folds = max(2, int(round(1.0 / fraction)))
    fold = stratified_folds(y, n_folds, seed)
    counts = np.bincount(y)
    held = (fold == 0) & (counts[y] >= 3)
    return rows[~held], rows[held]


def _staged(gen: Generator[ProgressEvent, None, TrainingHistory], stage: str, offset: int,
            total: int, on_epoch: Any = None) -> Generator[ProgressEvent, None, TrainingHistory]:
    """Relabel a training stage's events (stage name, epochs counted over both stages); closing
    this generator closes the stage's. ``on_epoch(event)`` sees each event first (stage epochs)."""
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_epoch is not None:
                on_epoch(event)
            event.stage = stage
            event.epoch += offset
            event.n_epochs = total
            yield event
    finally:
        gen.close()
