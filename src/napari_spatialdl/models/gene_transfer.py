"""Gene prediction from a reference: a count topic model whose encoder reads only the shared genes.

What it assumes
---------------
* Every observation's expression (a cell, or a spot that mixes several cells) is a non-negative
  mixture of ``K`` *expression programmes* ("topics"): ``p = theta @ beta``, where ``theta`` (a
  row of the simplex, one per observation) says how much of each programme the observation holds
  and ``beta[k]`` is a distribution over all modelled genes. A spot that mixes cells is the same
  mixture of their programmes, so one model serves single cells (Xenium, MERFISH, CosMx) and
  multi-cell spots (Visium) alike.
* The reference (scRNA-seq, all genes) and the spatial data share ``beta``: a gene's share of a
  programme is biology, the same on both platforms up to a per-gene *platform effect* (capture
  efficiency), which is estimated for the shared genes and unknown — hence left out — for the
  genes that are predicted.
* Counts are negative binomial around ``library * p`` with a dispersion per gene and platform.

How it is fitted
----------------
1. *Reference*: an encoder (MLP) sees each reference cell's **shared genes only**
   (log-normalised over the shared genes, standardised, a random quarter of the values hidden per
   step) and outputs ``theta``; ``theta @ beta`` must explain the cell's counts of every modelled
   gene (shared genes, genes to predict, and an "other genes" bucket so that ``beta`` is a share
   of the whole transcriptome). The programmes start from k-means clusters of the reference (or
   its cell types, when labels are given).
2. *Spatial* (optional, default on): with ``beta`` fixed, the encoder is fine-tuned on the
   spatial observations' shared-gene counts, modelled as NB around
   ``library_shared * normalise(theta @ beta_shared * exp(platform))``. This adapts the encoder
   to the platform and to mixtures of cells without letting the programmes drift.
3. *Prediction*: ``theta`` of each spatial observation times ``beta`` of the predicted genes,
   times ``PREDICTION_SCALE`` (expression per 10^4 transcripts, on the reference's scale). The
   pair (``theta``, ``beta``) *is* the compact representation: any gene's prediction is one
   matrix product, ``theta @ beta[:, g]``.

Pure torch + numpy/scipy: no AnnData.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..preprocessing import highly_variable_genes
from ._base import SavableModel
from ._likelihoods import log_nb
from ._train import ProgressEvent, TrainingConfig, TrainingHistory, train
from ._train import relabel_stage as _relabel

#: expression is reported per this many transcripts (the reference's whole library)
SCALE = 1e4
#: the programmes' k-means start uses at most this many reference cells and most variable genes
INIT_CELLS = 5000
INIT_GENES = 2000


def kmeans(Z: np.ndarray, k: int, seed: int = 0, n_iter: int = 30) -> np.ndarray:
    """Cluster labels of the rows of ``Z`` (k-means++ start, Lloyd iterations); numpy only.

    Parameters
    ----------
    Z
        (n, d) points.
    k
        Clusters (1 <= k <= n).
    seed
        Random seed of the start.
    n_iter
        Most Lloyd iterations (stops when no label changes).

    Returns
    -------
    np.ndarray
        int64 labels in ``0..k-1``; every cluster holds at least one point.
    """
    rng = np.random.default_rng(seed)
    n = len(Z)
    sq = (Z * Z).sum(axis=1)
    centres = [Z[rng.integers(n)]]
    d2 = ((Z - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(Z[rng.choice(n, p=p)])
        d2 = np.minimum(d2, ((Z - centres[-1]) ** 2).sum(axis=1))
    C = np.asarray(centres)
    labels = np.full(n, -1)
    for _ in range(n_iter):
        dist = sq[:, None] - 2 * Z @ C.T + (C * C).sum(axis=1)[None, :]
        new = dist.argmin(axis=1)
        counts = np.bincount(new, minlength=k)
        for empty in np.flatnonzero(counts == 0):  # re-seed an empty cluster at the farthest point
            far = dist[np.arange(n), new].argmax()
            new[far] = empty
            dist[far] = -np.inf
            counts = np.bincount(new, minlength=k)
        if np.array_equal(new, labels):
            break
        labels = new
        C = np.stack([Z[labels == j].mean(axis=0) for j in range(k)])
    return labels.astype(np.int64)


def _log_norm(x: torch.Tensor, scale: float) -> torch.Tensor:
    lib = x.sum(dim=1, keepdim=True).clamp(min=1.0)
    return torch.log1p(x / lib * scale)


def _input_moments(X: Any, scale: float, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and std of ``log1p(x / library * scale)`` (library over ``X``'s columns)."""
    n, g = X.shape
    s1 = np.zeros(g, dtype=np.float64)
    s2 = np.zeros(g, dtype=np.float64)
    for start in range(0, n, batch_size):
        block = X[start:start + batch_size]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = block.astype(np.float64)
        lib = np.maximum(block.sum(axis=1, keepdims=True), 1.0)
        v = np.log1p(block / lib * scale)
        s1 += v.sum(axis=0)
        s2 += (v * v).sum(axis=0)
    mean = s1 / max(n, 1)
    std = np.sqrt(np.maximum(s2 / max(n, 1) - mean**2, 0.0))
    return mean, np.maximum(std, 1e-2)


class GeneTransferModule(nn.Module):
    """Shared-gene encoder -> topic proportions; topics over all modelled genes; NB likelihoods.

    Parameters
    ----------
    n_shared
        Genes both datasets measure (the encoder's input; the first ``n_shared`` outputs).
    n_out
        Modelled genes: the shared genes, then the genes only the reference has, then one
        "other genes" bucket (the rest of each reference cell's library).
    n_topics
        Number of expression programmes ``K``.
    hidden
        Widths of the encoder's hidden layers.
    mask_rate
        Fraction of the encoder's input values hidden per training step.
    """

    def __init__(self, n_shared: int, n_out: int, n_topics: int = 64, hidden: Sequence[int] = (256, 128),
                 mask_rate: float = 0.25):
        super().__init__()
        if not 0 <= mask_rate < 1:
            raise ValueError(f"mask_rate must be in [0, 1), got {mask_rate}.")
        if n_out <= n_shared:
            raise ValueError(f"n_out ({n_out}) must exceed n_shared ({n_shared}): the outputs hold the shared "
                             "genes, the predicted ones and the 'other genes' bucket.")
        self.n_shared, self.n_out, self.n_topics = int(n_shared), int(n_out), int(n_topics)
        self.mask_rate = float(mask_rate)
        layers: list[nn.Module] = []
        width = n_shared
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ELU()]
            width = h
        layers.append(nn.Linear(width, n_topics))
        self.encoder = nn.Sequential(*layers)
        self.topic_logits = nn.Parameter(torch.zeros(n_topics, n_out))
        self.log_theta_reference = nn.Parameter(torch.zeros(n_out))
        self.log_theta_spatial = nn.Parameter(torch.zeros(n_shared))
        self.platform = nn.Parameter(torch.zeros(n_shared))  # log(spatial / reference) per shared gene
        for name in ("reference", "spatial"):
            self.register_buffer(f"mean_{name}", torch.zeros(n_shared))
            self.register_buffer(f"std_{name}", torch.ones(n_shared))

    def set_input_moments(self, domain: str, mean: np.ndarray, std: np.ndarray) -> None:
        """Centring and scaling of one dataset's log-normalised shared genes (each its own)."""
        getattr(self, f"mean_{domain}").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"std_{domain}").copy_(torch.as_tensor(std, dtype=torch.float32))

    def topics(self) -> torch.Tensor:
        """``beta``: (K, n_out), each row a distribution over the modelled genes."""
        return torch.softmax(self.topic_logits, dim=1)

    def proportions(self, x_shared: torch.Tensor, domain: str, mask: bool = False) -> torch.Tensor:
        """``theta``: (B, K) programme proportions from the shared genes' counts."""
        h = _log_norm(x_shared, SCALE)
        if mask and self.mask_rate > 0:
            keep = torch.rand_like(h) >= self.mask_rate
            h = h * keep / (1.0 - self.mask_rate)
        h = (h - getattr(self, f"mean_{domain}")) / getattr(self, f"std_{domain}")
        return torch.softmax(self.encoder(h), dim=1)

    def reference_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        shared = batch["shared"]
        parts = [shared]
        if "extra" in batch:
            parts.append(batch["extra"])
        library = batch["library"]
        known = sum(p.sum(dim=1, keepdim=True) for p in parts)
        parts.append((library - known).clamp(min=0.0))
        x = torch.cat(parts, dim=1)
        theta = self.proportions(shared, "reference", mask=self.training)
        mu = library * (theta @ self.topics())
        return -log_nb(x, mu, self.log_theta_reference.exp().clamp(max=1e6)).sum(dim=1).mean()

    def spatial_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["shared"]
        theta = self.proportions(x, "spatial", mask=False)
        p = (theta @ self.topics()[:, : self.n_shared]) * self.platform.exp()
        p = p / p.sum(dim=1, keepdim=True).clamp(min=1e-12)
        mu = x.sum(dim=1, keepdim=True) * p
        return -log_nb(x, mu, self.log_theta_spatial.exp().clamp(max=1e6)).sum(dim=1).mean()


def _reference_loss(module: GeneTransferModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return module.reference_loss(batch)


def _spatial_loss(module: GeneTransferModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return module.spatial_loss(batch)


def _profiles(groups: np.ndarray, n_groups: int, shared: Any, extra: Any, library: np.ndarray) -> np.ndarray:
    """Mean share of each modelled gene per group (n_groups x n_out), from the counts."""
    n = len(groups)
    G = sp.csr_matrix((np.ones(n), (groups, np.arange(n))), shape=(n_groups, n))
    sizes = np.maximum(np.asarray(G.sum(axis=1)).ravel(), 1.0)
    inv = sp.diags(1.0 / np.maximum(library, 1.0))
    cols = [sp.csr_matrix(shared) if sp.issparse(shared) else np.asarray(shared)]
    if extra is not None:
        cols.append(sp.csr_matrix(extra) if sp.issparse(extra) else np.asarray(extra))
    blocks = []
    known = np.zeros(n)
    for c in cols:
        frac = inv @ c
        known += np.asarray(c.sum(axis=1)).ravel()
        m = G @ frac
        blocks.append(np.asarray(m.toarray() if sp.issparse(m) else m) / sizes[:, None])
    other = np.maximum(library - known, 0.0) / np.maximum(library, 1.0)
    blocks.append((G @ other).reshape(-1, 1) / sizes[:, None])
    return np.hstack(blocks)


class GeneTransferModel(SavableModel):
    """Fit/predict wrapper of :class:`GeneTransferModule` (save/load via :class:`SavableModel`).

    Parameters
    ----------
    shared_genes
        Names of the shared genes (the encoder's input, in this order).
    extra_genes
        Names of the genes only the reference has that the model predicts (in this order).
    n_topics, hidden, mask_rate
        See :class:`GeneTransferModule`.
    """

    def __init__(self, shared_genes: Sequence[str], extra_genes: Sequence[str], *, n_topics: int = 64,
                 hidden: Sequence[int] = (256, 128), mask_rate: float = 0.25):
        shared_genes = [str(g) for g in shared_genes]
        extra_genes = [str(g) for g in extra_genes]
        self.init_kwargs = {"n_shared": len(shared_genes), "n_out": len(shared_genes) + len(extra_genes) + 1,
                            "n_topics": int(n_topics), "hidden": [int(h) for h in hidden],
                            "mask_rate": float(mask_rate)}
        self.module = GeneTransferModule(**self.init_kwargs)
        self.extra: dict[str, Any] = {"shared_genes": shared_genes, "extra_genes": extra_genes}

    @classmethod
    def build(cls, init_kwargs: dict[str, Any], extra: dict[str, Any]) -> GeneTransferModel:
        model = cls(extra["shared_genes"], extra["extra_genes"], n_topics=init_kwargs["n_topics"],
                    hidden=init_kwargs["hidden"], mask_rate=init_kwargs["mask_rate"])
        model.extra = dict(extra)
        return model

    @property
    def genes(self) -> list[str]:
        """The modelled genes (outputs without the 'other genes' bucket): shared, then extra."""
        return list(self.extra["shared_genes"]) + list(self.extra["extra_genes"])

    def init_topics(self, shared: Any, extra: Any, library: np.ndarray, labels: np.ndarray | None = None,
                    seed: int = 0) -> None:
        """Start the programmes at groups of reference cells: its cell types (when ``labels`` are
        given; unlabelled cells are ignored), then k-means clusters (of the principal components of
        the log-normalised shared genes, on at most ``INIT_CELLS`` cells and ``INIT_GENES`` of the
        most variable genes) for the remaining programmes."""
        K = self.module.n_topics
        n = shared.shape[0]
        profiles = []
        if labels is not None:
            labels = np.asarray(labels, dtype=object)
            present = np.array([v is not None and v == v for v in labels])  # NaN != NaN
            types, codes = np.unique(labels[present].astype(str), return_inverse=True)
            idx = np.flatnonzero(present)
            prof = _profiles(codes, len(types), shared[idx], None if extra is None else extra[idx], library[idx])
            profiles.append(prof[:K])
        n_free = K - sum(len(p) for p in profiles)
        if n_free > 0:
            rng = np.random.default_rng(seed)
            sub = np.sort(rng.choice(n, size=min(n, INIT_CELLS), replace=False))
            X = shared[sub]
            genes = highly_variable_genes(X, INIT_GENES) if X.shape[1] > INIT_GENES else slice(None)
            X = X[:, genes]
            X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
            lib = np.maximum(X.sum(axis=1, keepdims=True), 1.0)
            L = torch.as_tensor(np.log1p(X / lib * SCALE), dtype=torch.float32)
            q = max(1, min(30, L.shape[0] - 1, L.shape[1] - 1))
            state = torch.random.get_rng_state()
            torch.manual_seed(seed)  # pca_lowrank draws from the global generator
            U, S, _ = torch.pca_lowrank(L, q=q, center=True, niter=4)
            torch.random.set_rng_state(state)
            Z = (U * S).numpy().astype(np.float64)
            k = min(n_free, len(sub))
            groups = kmeans(Z, k, seed=seed)
            prof = _profiles(groups, k, shared[sub], None if extra is None else extra[sub], library[sub])
            profiles.append(prof)
            if k < n_free:  # fewer cells than programmes: repeat the mean profile
                profiles.append(np.repeat(prof.mean(axis=0, keepdims=True), n_free - k, axis=0))
        P = np.vstack(profiles)[:K]
        floor = 1e-6 / P.shape[1]
        logits = np.log(np.maximum(P, 0) + floor)
        with torch.no_grad():
            self.module.topic_logits.copy_(torch.as_tensor(logits - logits.mean(axis=1, keepdims=True),
                                                           dtype=torch.float32))

    def fit_reference_iter(self, shared: Any, extra: Any, library: np.ndarray,
                           labels: np.ndarray | None = None, config: TrainingConfig | None = None
                           ) -> Generator[ProgressEvent, None, TrainingHistory]:
        """Stage 1: learn the programmes and the encoder on the reference (a generator).

        Parameters
        ----------
        shared
            Reference cells x shared genes, counts (dense or CSR).
        extra
            Reference cells x extra genes, counts (None when there are none).
        library
            Each reference cell's total count over all its genes.
        labels
            Optional cell types (None/NaN: unlabelled), used to start the programmes.
        config
            Training settings.
        """
        config = config or TrainingConfig(max_epochs=200, batch_size=128, lr=3e-3, patience=10)
        library = np.asarray(library, dtype=np.float64).ravel()
        self.module.set_input_moments("reference", *_input_moments(shared, SCALE))
        self.init_topics(shared, extra, library, labels, seed=config.seed)
        data: dict[str, Any] = {"shared": shared, "library": library.astype(np.float32).reshape(-1, 1)}
        if extra is not None and extra.shape[1]:
            data["extra"] = extra
        history = yield from _relabel(train(self.module, data, _reference_loss, config), "reference",
                                      "learning the reference's expression programmes")
        return history

    def fit_spatial_iter(self, shared: Any, config: TrainingConfig | None = None
                         ) -> Generator[ProgressEvent, None, TrainingHistory]:
        """Stage 2: fine-tune the encoder (and the platform effect) on the spatial counts of the
        shared genes, the programmes fixed (a generator)."""
        config = config or TrainingConfig(max_epochs=100, batch_size=128, lr=1e-3, patience=10)
        m = self.module
        params = list(m.encoder.parameters()) + [m.platform, m.log_theta_spatial]
        history = yield from _relabel(train(m, {"shared": shared}, _spatial_loss, config, parameters=params),
                                      "spatial", "adapting to the spatial data")
        return history

    def set_spatial_moments(self, shared: Any) -> None:
        """Standardise the spatial data's shared genes by its own moments (before stage 2 / predict)."""
        self.module.set_input_moments("spatial", *_input_moments(shared, SCALE))

    @torch.no_grad()
    def proportions(self, shared: Any, domain: str = "spatial", batch_size: int = 4096,
                    device: str | torch.device = "cpu") -> np.ndarray:
        """``theta`` of every row of ``shared`` (n x K float32), batch by batch (CSR stays CSR)."""
        module = self.module.to(device).eval()
        out = np.empty((shared.shape[0], module.n_topics), dtype=np.float32)
        for start in range(0, shared.shape[0], batch_size):
            x = shared[start:start + batch_size]
            x = torch.as_tensor(x.toarray() if sp.issparse(x) else np.asarray(x), dtype=torch.float32,
                                device=device)
            out[start:start + len(x)] = module.proportions(x, domain).cpu().numpy()
        return out

    @torch.no_grad()
    def topics(self) -> np.ndarray:
        """``beta`` (K x n_out float32): each programme's share of every modelled gene."""
        return self.module.topics().detach().cpu().numpy().astype(np.float32)

    def loadings(self, genes: Sequence[str]) -> np.ndarray:
        """(len(genes) x K) shares of ``genes`` (modelled genes) in each programme."""
        index = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in index]
        if missing:
            raise KeyError(f"Genes not modelled: {missing[:5]}")
        return np.ascontiguousarray(self.topics()[:, [index[g] for g in genes]].T)

    def predict(self, shared: Any, genes: Sequence[str], device: str | torch.device = "cpu",
                batch_size: int = 4096) -> np.ndarray:
        """Predicted expression (per ``SCALE`` transcripts) of ``genes`` in every row of ``shared``."""
        theta = self.proportions(shared, "spatial", batch_size=batch_size, device=device)
        return (theta @ self.loadings(genes).T * SCALE).astype(np.float32)

    @property
    def platform_effect(self) -> np.ndarray:
        """exp(platform) of each shared gene: spatial sensitivity relative to the reference."""
        return self.module.platform.detach().cpu().exp().numpy()
