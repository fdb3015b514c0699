"""Cell-type annotation by label transfer (scANVI / label-transfer family): a calibrated classifier.

An ensemble of small MLPs on log-normalised, per-gene standardised expression of the genes
shared by reference and query:

* **Input**: raw counts -> ``log1p(m * x / library)`` with ``m`` the reference's median library
  size -> standardised with the reference's per-gene mean and standard deviation (clipped to
  +-10). Working from counts lets training
  augment the data the way a different technology or depth would change it.
* **Augmentation** (training only): binomial thinning of the counts to a random fraction of
  the depth (log-uniform between ``min_depth_fraction`` and 1): shallow query data and
  dropouts look like thinned reference cells; plus dropout on the genes and hidden units.
* **Ensemble with cross-fitting**: the labelled reference is split into ``n_members``
  stratified folds; member ``k`` never sees fold ``k``. Every reference cell therefore has an
  out-of-fold prediction, used for early stopping (the loop's validation loss) and to fit a
  **temperature** (temperature scaling) so that the confidence is calibrated; the expected
  calibration error of the out-of-fold predictions is reported. Query predictions average
  the members' logits.
* Classes are weighted inversely to their frequency, so rare types are not ignored.

Pure torch + numpy: no AnnData, no Qt.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..preprocessing import log_normalized_moments
from ._base import SavableModel
from ._train import ProgressEvent, TrainingConfig, TrainingHistory, train

_TARGET_SUM = 1e4


def _matrix(X: Any) -> np.ndarray | sp.csr_matrix:
    """Counts as float32: CSR stays sparse (rows are densified per batch), the rest dense."""
    return sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)


def _rows(X: np.ndarray | sp.csr_matrix, start: int, stop: int, columns: np.ndarray | None = None) -> torch.Tensor:
    block = X[start:stop]
    if columns is not None:
        block = block[:, columns]
    return torch.as_tensor(block.toarray() if sp.issparse(block) else np.ascontiguousarray(block))


def _log_normalised_moments(X: np.ndarray | sp.csr_matrix, target_sum: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sample standard deviation of ``log1p(target_sum * x / library)``, over row blocks."""
    mean, std = log_normalized_moments(X, target_sum)
    n = X.shape[0]
    return mean, std * np.sqrt(n / max(n - 1, 1))


def log_normalise(counts: torch.Tensor, target_sum: float | torch.Tensor = _TARGET_SUM) -> torch.Tensor:
    """``log1p(target_sum * x / library)`` per row (rows without counts stay 0)."""
    lib = counts.sum(dim=1, keepdim=True).clamp(min=1.0)
    return torch.log1p(counts / lib * target_sum)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size.

    Parameters
    ----------
    probs
        ``(n, n_classes)`` predicted probabilities.
    labels
        ``(n,)`` true class indices.
    n_bins
        Number of confidence bins in [0, 1].
    """
    probs = np.asarray(probs, dtype=float)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(float)
    bins = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (golden-section on log T)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / np.exp(log_t), y))

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


class AnnotationModule(torch.nn.Module):
    """``n_members`` one-hidden-layer MLPs evaluated together (batched matrix products)."""

    def __init__(self, n_genes: int, n_classes: int, *, n_hidden: int = 128, n_members: int = 5,
                 input_dropout: float = 0.3, dropout: float = 0.3, min_depth_fraction: float = 0.2):
        super().__init__()
        self.n_genes, self.n_classes, self.n_members = n_genes, n_classes, n_members
        self.input_dropout, self.dropout = float(input_dropout), float(dropout)
        self.min_depth_fraction = float(min_depth_fraction)
        k = n_members
        self.w1 = torch.nn.Parameter(torch.empty(k, n_genes, n_hidden))
        self.b1 = torch.nn.Parameter(torch.zeros(k, 1, n_hidden))
        self.norm = torch.nn.LayerNorm(n_hidden)
        self.w2 = torch.nn.Parameter(torch.empty(k, n_hidden, n_classes))
        self.b2 = torch.nn.Parameter(torch.zeros(k, 1, n_classes))
        self.reset_parameters()
        self.register_buffer("target_sum", torch.tensor(_TARGET_SUM))
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("gene_sd", torch.ones(n_genes))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("class_weight", torch.ones(n_classes))
        # what only shapes the fit: not saved with the model
        self.register_buffer("fold", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long), persistent=False)

    def reset_parameters(self) -> None:
        """Fresh random weights (like ``nn.Linear``'s), drawn from torch's global generator."""
        with torch.no_grad():
            for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
                bound = 1.0 / np.sqrt(w.shape[1])
                w.uniform_(-bound, bound)
                b.uniform_(-bound, bound)
            self.norm.reset_parameters()

    def features(self, counts: torch.Tensor) -> torch.Tensor:
        """Standardised log-normalised expression, ``(n, n_genes)``."""
        return ((log_normalise(counts, self.target_sum) - self.gene_mean) / self.gene_sd).clamp(-10.0, 10.0)

    def thin(self, counts: torch.Tensor) -> torch.Tensor:
        """Binomial thinning of every row to a random fraction of its depth (training augmentation)."""
        if self.min_depth_fraction >= 1.0:
            return counts
        u = torch.rand(counts.shape[0], 1, device=counts.device)
        rate = torch.exp(u * np.log(self.min_depth_fraction))
        return torch.binomial(counts, rate.expand_as(counts))

    def member_logits(self, counts: torch.Tensor) -> torch.Tensor:
        """Logits of every member, ``(n_members, n, n_classes)`` (before the temperature)."""
        if self.training:
            counts = self.thin(counts)
        x = self.features(counts).unsqueeze(0).expand(self.n_members, -1, -1)
        x = F.dropout(x, self.input_dropout, self.training)
        h = F.gelu(self.norm(torch.baddbmm(self.b1, x, self.w1)))
        h = F.dropout(h, self.dropout, self.training)
        return torch.baddbmm(self.b2, h, self.w2)

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        """Calibrated logits of the ensemble, ``(n, n_classes)``."""
        return self.member_logits(counts).mean(dim=0) / self.temperature

    def loss(self, counts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Training: each member's weighted cross-entropy on the cells outside its fold.

        Evaluation (the loop's validation pass): the out-of-fold cross-entropy, i.e. every cell
        scored by the member that never saw it.
        """
        logits = self.member_logits(counts)  # (k, n, c)
        y, fold = self.labels[index], self.fold[index]
        if self.training:
            ce = F.cross_entropy(logits.permute(1, 2, 0), y[:, None].expand(-1, self.n_members),
                                 weight=self.class_weight, reduction="none")  # (n, k)
            mask = fold[:, None] != torch.arange(self.n_members, device=fold.device)[None, :]
            w = self.class_weight[y][:, None] * mask
            return (ce * mask).sum() / w.sum().clamp(min=1e-8)
        oof = logits[fold, torch.arange(len(index), device=fold.device)]
        return F.cross_entropy(oof, y, weight=self.class_weight)

    def oof_logits(self, counts: torch.Tensor, fold: torch.Tensor) -> torch.Tensor:
        """Out-of-fold logits (member ``fold[i]`` for cell ``i``), before the temperature."""
        logits = self.member_logits(counts)
        return logits[fold, torch.arange(counts.shape[0], device=counts.device)]


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of every row, each class spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)  # rotate so that small classes do not all start in fold 0
    return fold


class CellTypeClassifier(SavableModel):
    """Calibrated label-transfer classifier (see the module docstring).

    Parameters
    ----------
    genes
        Names of the input genes (columns of the counts given to :meth:`fit` and :meth:`predict_proba`).
    classes
        Names of the cell types.
    n_hidden
        Hidden units of each MLP.
    n_members
        Ensemble members (= cross-fitting folds; at least 2).
    input_dropout, dropout
        Dropout on the genes and on the hidden units during training.
    min_depth_fraction
        Training thins each cell's counts to a random fraction of its depth in
        [``min_depth_fraction``, 1] (1 = no thinning).
    """

    def __init__(self, genes: list[str], classes: list[str], *, n_hidden: int = 128,
                 n_members: int = 5, input_dropout: float = 0.3, dropout: float = 0.3,
                 min_depth_fraction: float = 0.2):
        if n_members < 2:
            raise ValueError(f"n_members must be at least 2 (cross-fitting), got {n_members}.")
        self.init_kwargs = {
            "n_genes": len(genes), "n_classes": len(classes), "n_hidden": int(n_hidden),
            "n_members": int(n_members), "input_dropout": float(input_dropout),
            "dropout": float(dropout), "min_depth_fraction": float(min_depth_fraction),
        }
        self.extra: dict[str, Any] = {"genes": [str(g) for g in genes], "classes": [str(c) for c in classes],
                                      "ece_before": None, "ece_after": None}
        self.module = AnnotationModule(**self.init_kwargs)
        self.history: TrainingHistory | None = None

    @classmethod
    def build(cls, init_kwargs: dict[str, Any], extra: dict[str, Any]) -> CellTypeClassifier:
        kw = {k: v for k, v in init_kwargs.items() if k not in ("n_genes", "n_classes")}
        model = cls(extra["genes"], extra["classes"], **kw)
        model.extra.update(extra)
        return model

    @property
    def genes(self) -> list[str]:
        return list(self.extra["genes"])

    @property
    def classes(self) -> list[str]:
        return list(self.extra["classes"])

    @property
    def temperature(self) -> float:
        return float(self.module.temperature)

    def fit(self, counts: Any, labels: np.ndarray, *, max_epochs: int = 60, batch_size: int = 128,
            lr: float = 3e-3, weight_decay: float = 1e-4, patience: int = 15, device: str = "auto",
            seed: int = 0) -> Generator[ProgressEvent, None, TrainingHistory]:
        """Train on labelled reference counts; a generator (yields progress, returns the history).

        Parameters
        ----------
        counts
            Raw counts, cells x genes (columns in the order of :attr:`genes`).
        labels
            Cell type of every row (values among :attr:`classes`).
        max_epochs, batch_size, lr, weight_decay, patience, device, seed
            Training settings; early stopping watches the out-of-fold loss.
        """
        classes = self.classes
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray(labels).astype(str)
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ValueError(f"Labels {unknown[:5]} are not among classes.")
        y = np.array([index[c] for c in labels], dtype=np.int64)
        X = _matrix(counts)
        if X.shape[1] != len(self.genes):
            raise ValueError(f"counts has {X.shape[1]} genes, expected {len(self.genes)}.")
        m = self.module
        torch.manual_seed(seed)
        m.reset_parameters()  # seeded: the same seed gives the same model
        with torch.no_grad():
            # normalise to the median depth of the reference (scanpy's default): at a few hundred
            # UMIs per cell, scaling to 10^4 would turn a single count into a large jump
            target_sum = max(float(np.median(np.asarray(X.sum(axis=1)).ravel())), 1.0)
            m.target_sum.fill_(target_sum)
            mean, sd = _log_normalised_moments(X, float(m.target_sum))
            m.gene_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            m.gene_sd.copy_(torch.as_tensor(np.maximum(sd, 1e-2), dtype=torch.float32))
            freq = np.bincount(y, minlength=len(classes)).astype(np.float64)
            weight = np.where(freq > 0, len(y) / (len(classes) * np.maximum(freq, 1)), 0.0)
            m.class_weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            m.temperature.fill_(1.0)
        fold = stratified_folds(y, self.init_kwargs["n_members"], seed)
        m.fold = torch.as_tensor(fold)
        m.labels = torch.as_tensor(y)
        config = TrainingConfig(max_epochs=max_epochs, batch_size=batch_size, lr=lr,
                                weight_decay=weight_decay, patience=patience, seed=seed, device=device)

        def loss_fn(module: AnnotationModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return module.loss(batch["x"], batch["index"])

        all_rows = np.arange(len(y))
        try:
            history = yield from train(m, {"x": X}, loss_fn, config, train_index=all_rows, val_index=all_rows)
            m.eval()
            with torch.no_grad():
                dev = m.gene_mean.device
                oof = torch.cat([
                    m.oof_logits(_rows(X, i, i + 4096).to(dev), m.fold[i:i + 4096].to(dev)).cpu()
                    for i in range(0, X.shape[0], 4096)
                ]).numpy().astype(np.float64)
        finally:
            m.fold, m.labels = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        temperature = fit_temperature(oof, y)
        with torch.no_grad():
            m.temperature.fill_(temperature)
        before = torch.softmax(torch.as_tensor(oof), dim=1).numpy()
        after = torch.softmax(torch.as_tensor(oof / temperature), dim=1).numpy()
        self.extra.update({
            "ece_before": expected_calibration_error(before, y),
            "ece_after": expected_calibration_error(after, y),
            "oof_accuracy": float((oof.argmax(axis=1) == y).mean()),
            "temperature": temperature,
        })
        self.history = history
        return history

    def predict_proba(self, counts: Any, batch_size: int = 4096, columns: np.ndarray | None = None) -> np.ndarray:
        """Calibrated class probabilities, ``(n, n_classes)``, for raw counts (columns = :attr:`genes`).

        ``columns``: the positions of :attr:`genes` among the columns of ``counts``, taken batch by
        batch (a million cells are not copied to cut them to the model's genes).
        """
        X = _matrix(counts)
        n_genes = X.shape[1] if columns is None else len(columns)
        if n_genes != len(self.genes):
            raise ValueError(f"counts has {n_genes} genes, expected {len(self.genes)}.")
        m = self.module
        m.eval()
        device = m.gene_mean.device
        out = []
        with torch.no_grad():
            for start in range(0, X.shape[0], batch_size):
                rows = _rows(X, start, start + batch_size, columns).to(device)
                out.append(torch.softmax(m(rows), dim=1).cpu())
        if not out:
            return np.zeros((0, len(self.classes)))
        return torch.cat(out).numpy().astype(np.float64)

    def predict(self, counts: Any, threshold: float = 0.0, unassigned: str = "unassigned") -> tuple[np.ndarray, np.ndarray]:
        """Labels and confidences; cells whose confidence is below ``threshold`` get ``unassigned``."""
        probs = self.predict_proba(counts)
        conf = probs.max(axis=1)
        labels = np.asarray(self.classes, dtype=object)[probs.argmax(axis=1)]
        labels[conf < threshold] = unassigned
        return labels, conf
