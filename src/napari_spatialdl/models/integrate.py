"""Batch integration: a conditional VAE with the batch as covariate (scVI family).

Encoder ``q(z | x, batch)`` and decoder ``p(x | z, batch)``; the decoder predicts an
NB or ZINB distribution of every gene's raw count with mean
``library_size * softmax(decoder(z, batch))`` and gene-specific dispersion. Because
the decoder is told the batch, the latent ``z`` does not need to encode it: its mean
is the batch-corrected representation.

The batch enters each network as a learned vector added to the first layer's
pre-activation (the same as concatenating a one-hot batch vector to the input).
Those vectors are kept in blocks (:class:`BatchEmbedding`), so that a trained
reference can map a query with new batches scArches-style: the reference's weights
are frozen, a block of new batch vectors is appended, and only that block is trained
on the query (:meth:`IntegrationModel.extend`, :meth:`IntegrationModel.fit_iter`
with ``only_new=True``).

Pure torch + numpy/scipy: no AnnData.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ._base import SavableModel
from ._likelihoods import log_nb_sum, log_zinb
from ._train import ProgressEvent, TrainingConfig, TrainingHistory, train

LIKELIHOODS = ("nb", "zinb")


def default_config(**changes: Any) -> TrainingConfig:
    """The training settings of :func:`~napari_spatialdl.tasks.integrate.integrate_spatialdl`.

    The latent space keeps improving its batch mixing after the held-out ELBO flattens,
    so training runs the epoch budget on all cells (no held-out split, no restoring an
    earlier epoch) and stops early only when the training loss stalls.
    """
    return TrainingConfig(**{"max_epochs": 100, "batch_size": 128, "lr": 1e-2, "validation_fraction": 0.0,
                             "patience": 20, "restore_best": False, **changes})


class BatchEmbedding(nn.Module):
    """One learned vector per batch, stored in blocks that can be extended.

    Parameters
    ----------
    sizes
        Number of batches in each block (the reference's, then each query's).
    dim
        Length of each vector.
    """

    def __init__(self, sizes: Sequence[int], dim: int):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ParameterList()
        for i, n in enumerate(sizes):
            self._add(int(n), zero=i > 0)

    def _add(self, n: int, zero: bool) -> nn.Parameter:
        init = torch.zeros(n, self.dim) if zero else torch.randn(n, self.dim) / np.sqrt(self.dim)
        block = nn.Parameter(init)
        self.blocks.append(block)
        return block

    @property
    def sizes(self) -> list[int]:
        return [int(b.shape[0]) for b in self.blocks]

    def extend(self, n: int) -> nn.Parameter:
        """Append ``n`` new batch vectors (zeros: the average batch) and return them."""
        return self._add(int(n), zero=True)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        table = self.blocks[0] if len(self.blocks) == 1 else torch.cat(list(self.blocks))
        return table[index]


class ConditionalVAE(nn.Module):
    """scVI-style VAE: ``x, batch -> z -> NB/ZINB(x | library * softmax(f(z, batch)), theta)``.

    Parameters
    ----------
    n_genes
        Number of genes.
    batch_sizes
        Batches per block of the batch embeddings (``[n_batches]`` for a new model).
    n_latent, n_hidden
        Latent and hidden sizes.
    likelihood
        ``"nb"`` or ``"zinb"``.
    dropout
        Dropout on the hidden layers while training.
    """

    def __init__(self, n_genes: int, batch_sizes: Sequence[int], n_latent: int = 10, n_hidden: int = 128,
                 likelihood: str = "nb", dropout: float = 0.1):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
        self.likelihood = likelihood
        self.n_latent = n_latent
        self.enc_in = nn.Linear(n_genes, n_hidden)
        self.enc_batch = BatchEmbedding(batch_sizes, n_hidden)
        self.enc_body = nn.Sequential(nn.LayerNorm(n_hidden), nn.ReLU(), nn.Dropout(dropout))
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_logvar = nn.Linear(n_hidden, n_latent)
        self.dec_in = nn.Linear(n_latent, n_hidden)
        self.dec_batch = BatchEmbedding(batch_sizes, n_hidden)
        self.dec_body = nn.Sequential(nn.LayerNorm(n_hidden), nn.ReLU(), nn.Dropout(dropout))
        self.rate = nn.Linear(n_hidden, n_genes)
        self.pi = nn.Linear(n_hidden, n_genes) if likelihood == "zinb" else None
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        #: weight of the KL term (the wrapper warms it up from 0 to 1)
        self.kl_weight = 1.0

    def encode(self, x: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc_body(self.enc_in(torch.log1p(x)) + self.enc_batch(batch))
        return self.z_mean(h), self.z_logvar(h).clamp(-10, 10)

    def decode(self, z: torch.Tensor, batch: torch.Tensor, library: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.dec_body(self.dec_in(z) + self.dec_batch(batch))
        out = {"mu": library * torch.softmax(self.rate(h), dim=-1),
               "theta": self.log_theta.exp().clamp(max=1e6)}
        if self.pi is not None:
            out["pi_logits"] = self.pi(h)
        return out

    def loss(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per cell (KL weighted by ``kl_weight`` while training)."""
        library = x.sum(dim=1, keepdim=True)
        mean, logvar = self.encode(x, batch)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
        out = self.decode(z, batch, library)
        if self.pi is not None:
            ll = log_zinb(x, out["mu"], out["theta"], out["pi_logits"]).sum()
        else:  # the lgamma terms only at positive counts
            ll = log_nb_sum(x, out["mu"], out["theta"])
        kl = 0.5 * (mean.pow(2) + logvar.exp() - logvar - 1).sum(dim=1)
        weight = self.kl_weight if self.training else 1.0
        return (-ll + weight * kl.sum()) / x.shape[0]


def _vae_loss(module: ConditionalVAE, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return module.loss(batch["x"], batch["batch_index"])


class IntegrationModel(SavableModel):
    """Fit/latent wrapper of :class:`ConditionalVAE` (save/load via :class:`SavableModel`).

    Parameters
    ----------
    n_genes
        Number of genes.
    batches
        Names of the batches, in the order of the batch codes.
    n_latent, n_hidden, likelihood, dropout
        See :class:`ConditionalVAE`.
    genes
        Gene names (a query must be given the same genes, in this order).
    """

    def __init__(self, n_genes: int, batches: Sequence[str], *, n_latent: int = 10, n_hidden: int = 128,
                 likelihood: str = "nb", dropout: float = 0.1, genes: Sequence[str] | None = None,
                 batch_sizes: Sequence[int] | None = None):
        batches = [str(b) for b in batches]
        sizes = [int(s) for s in batch_sizes] if batch_sizes is not None else [len(batches)]
        if sum(sizes) != len(batches):
            raise ValueError(f"batch_sizes {sizes} do not add up to {len(batches)} batches.")
        self.init_kwargs = {"n_genes": int(n_genes), "batches": batches, "n_latent": int(n_latent),
                            "n_hidden": int(n_hidden), "likelihood": likelihood, "dropout": float(dropout),
                            "batch_sizes": sizes}
        self.module = ConditionalVAE(int(n_genes), sizes, n_latent=int(n_latent), n_hidden=int(n_hidden),
                                     likelihood=likelihood, dropout=float(dropout))
        self.extra: dict[str, Any] = {"genes": [str(g) for g in genes] if genes is not None else None}

    @classmethod
    def build(cls, init_kwargs: dict[str, Any], extra: dict[str, Any]) -> IntegrationModel:
        kwargs = dict(init_kwargs)
        model = cls(kwargs.pop("n_genes"), kwargs.pop("batches"), **kwargs)
        model.extra = dict(extra)
        return model

    @property
    def batches(self) -> list[str]:
        return list(self.init_kwargs["batches"])

    @property
    def genes(self) -> list[str] | None:
        return self.extra.get("genes")

    def batch_codes(self, batch_names: Sequence[str]) -> np.ndarray:
        """Integer code of each name (an error for a batch the model does not know)."""
        lookup = {b: i for i, b in enumerate(self.batches)}
        names = np.asarray(batch_names).astype(str)
        unknown = sorted(set(names) - set(lookup))
        if unknown:
            raise ValueError(f"Batches unknown to this model: {unknown[:5]}. Map them with extend() first.")
        return np.array([lookup[b] for b in names], dtype=np.int64)

    def extend(self, new_batches: Sequence[str]) -> IntegrationModel:
        """A copy of this model with vectors for ``new_batches`` added (this model is not changed).

        The copy's reference weights are frozen (``requires_grad=False``); only the new
        batch vectors are trainable, so :meth:`fit_iter` on the copy maps a query
        without changing the reference (scArches-style architecture surgery).
        """
        new = [str(b) for b in new_batches if str(b) not in self.batches]
        model = IntegrationModel.build(copy.deepcopy(self.init_kwargs), copy.deepcopy(self.extra))
        model.module.load_state_dict(self.module.state_dict())
        for p in model.module.parameters():
            p.requires_grad_(False)
        if new:
            model.module.enc_batch.extend(len(new))
            model.module.dec_batch.extend(len(new))
            model.init_kwargs["batches"] = self.batches + new
            model.init_kwargs["batch_sizes"] = model.module.enc_batch.sizes
        model.module.to(next(self.module.parameters()).device)
        return model

    def new_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (after :meth:`extend`: the new batch vectors only)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def fit_iter(self, X: np.ndarray | sp.spmatrix, batch_codes: np.ndarray,
                 config: TrainingConfig | None = None, kl_warmup: int = 25,
                 ) -> Generator[ProgressEvent, None, TrainingHistory]:
        """Train on counts ``X`` with integer ``batch_codes``; a generator (see :func:`train`).

        The KL weight grows linearly from 0 to 1 over the first ``kl_warmup`` epochs (no
        early stopping before it is done). Only parameters with ``requires_grad`` are
        trained (all of them, unless the model came from :meth:`extend`).
        """
        config = config or default_config()
        if kl_warmup > 0:
            config = copy.copy(config)
            config.min_epochs = max(config.min_epochs, min(kl_warmup, config.max_epochs))
        params = self.new_parameters()
        if not params:
            raise ValueError("No trainable parameters: every batch is known to the reference.")
        data = {"x": X, "batch_index": np.asarray(batch_codes, dtype=np.int64)}
        module = self.module
        module.kl_weight = 1.0 / kl_warmup if kl_warmup > 0 else 1.0
        gen = train(module, data, _vae_loss, config, parameters=params)
        try:
            while True:
                event = next(gen)
                if kl_warmup > 0:
                    module.kl_weight = min(1.0, (event.epoch + 1) / kl_warmup)
                yield event
        except StopIteration as stop:
            history = stop.value
        finally:
            gen.close()
            module.kl_weight = 1.0
        return history

    @torch.no_grad()
    def latent(self, X: np.ndarray | sp.spmatrix, batch_codes: np.ndarray, batch_size: int = 4096,
               device: str | torch.device = "cpu") -> np.ndarray:
        """Posterior mean of ``z`` for every row of ``X`` (the integrated embedding)."""
        module = self.module.to(device).eval()
        codes = torch.as_tensor(np.asarray(batch_codes, dtype=np.int64))
        out = np.empty((X.shape[0], module.n_latent), dtype=np.float32)
        for start in range(0, X.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            x = X[rows]
            x = torch.as_tensor(x.toarray() if sp.issparse(x) else np.asarray(x), dtype=torch.float32,
                                device=device)
            out[rows] = module.encode(x, codes[rows].to(device))[0].cpu().numpy()
        return out
