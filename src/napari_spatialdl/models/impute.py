"""Imputation / denoising: a count autoencoder with size factors (DCA family).

The network reads a cell's (or spot's) log-normalised expression, squeezes it
through a small bottleneck and predicts, for every gene, the parameters of a
negative binomial (NB) or zero-inflated NB (ZINB) distribution of its raw count:

* mean ``mu = library_size * softmax(decoder(h))`` (the size factor is the cell's
  total count, so the decoder only has to explain composition),
* gene-specific inverse dispersion ``theta``,
* for ZINB, a per-entry dropout probability ``pi``.

The imputed value is ``mu``, the expected count of the *denoised* expression. For
ZINB this is the NB mean, not the ZINB mean ``(1 - pi) * mu``: ``pi`` models the
technical zeros we want to fill in, so it is deliberately left out.

Training is denoising (masking): every step a random fraction of each cell's
input entries is set to zero and the model must still predict all counts, so it
learns to fill missing values from the gene-gene structure instead of copying its
input. With ``spatial=True`` the input also holds the mean normalised expression of
the spot's spatial neighbours.

Pure torch + numpy/scipy: no AnnData.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..preprocessing import gene_moments, log_normalized_moments
from ._base import SavableModel
from ._likelihoods import log_nb, log_zinb
from ._train import ProgressEvent, TrainingConfig, TrainingHistory, train

LIKELIHOODS = ("nb", "zinb")


def default_config(**changes: Any) -> TrainingConfig:
    """The training settings of :func:`~napari_spatialdl.tasks.impute.impute_spatialdl`."""
    return TrainingConfig(**{"max_epochs": 300, "batch_size": 128, "lr": 5e-3, "patience": 10, **changes})


def library_sizes(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Total count per row as an (n, 1) float32 array."""
    return np.asarray(X.sum(axis=1), dtype=np.float32).reshape(-1, 1)


def log_normalise(X: np.ndarray | sp.spmatrix, library: np.ndarray, scale: float):
    """``log1p(x / library * scale)``; sparse input stays sparse."""
    factor = (scale / np.maximum(library.ravel(), 1e-12)).astype(np.float32)
    if sp.issparse(X):
        out = sp.csr_matrix(sp.diags(factor) @ sp.csr_matrix(X, dtype=np.float32))
        out.data = np.log1p(out.data)
        return out
    return np.log1p(np.asarray(X, dtype=np.float32) * factor[:, None])


def neighbour_mean(values: np.ndarray | sp.spmatrix, neighbours: np.ndarray) -> np.ndarray | sp.csr_matrix:
    """Mean of ``values`` over each row's neighbours (``neighbours``: (n, k) row indices).

    Sparse ``values`` give a float32 CSR result (never densified); dense ones a dense array.
    """
    neighbours = np.asarray(neighbours, dtype=np.int64)
    n, k = neighbours.shape
    W = sp.csr_matrix((np.full(n * k, 1.0 / k, dtype=np.float32),
                       (np.repeat(np.arange(n), k), neighbours.ravel())), shape=(n, values.shape[0]))
    out = W @ values
    if sp.issparse(out):
        return sp.csr_matrix(out, dtype=np.float32)
    return np.asarray(out, dtype=np.float32)


def _block(values: Any, rows: slice, device: torch.device | str) -> torch.Tensor:
    """Rows ``rows`` of a dense or sparse matrix as a dense float32 tensor on ``device``."""
    x = values[rows]
    return torch.as_tensor(x.toarray() if sp.issparse(x) else np.asarray(x), dtype=torch.float32,
                           device=device)


def _elu(h: np.ndarray) -> np.ndarray:
    return np.where(h > 0, h, np.expm1(np.minimum(h, 0)))


def decode_genes(latent: np.ndarray, offset: np.ndarray, decoder: dict[str, Any], columns: np.ndarray,
                 batch_size: int = 65536) -> np.ndarray:
    """Expected counts of the genes ``columns`` from a compact imputation (numpy only).

    ``mu[i, g] = exp(logit_g(decoder(latent[i])) + offset[i])``, where ``offset`` is the log
    library size minus the log-sum-exp of all the genes' logits (stored at encoding time, so
    that only the genes asked for are computed: memory ``n x len(columns)``).

    Parameters
    ----------
    latent
        ``(n, d)`` bottleneck values (:meth:`ImputeModel.encode`).
    offset
        ``(n,)`` or ``(n, 1)`` log normalisers (:meth:`ImputeModel.encode`).
    decoder
        :meth:`ImputeModel.decoder_state`.
    columns
        Indices of the wanted genes among the model's genes.
    batch_size
        Rows decoded at a time.

    Returns
    -------
    np.ndarray
        float32 ``(n, len(columns))``.
    """
    latent = np.asarray(latent, dtype=np.float32)
    offset = np.asarray(offset, dtype=np.float32).reshape(-1, 1)
    columns = np.asarray(columns, dtype=np.int64)
    kinds = [str(k) for k in np.asarray(decoder["layers"]).ravel()]
    params = decoder["params"]
    W_head = np.asarray(decoder["head_weight"], dtype=np.float32)[columns]
    b_head = np.asarray(decoder["head_bias"], dtype=np.float32)[columns]
    out = np.empty((len(latent), len(columns)), dtype=np.float32)
    for start in range(0, len(latent), batch_size):
        h = latent[start:start + batch_size]
        for i, kind in enumerate(kinds):
            if kind == "linear":
                h = h @ np.asarray(params[f"{i}_weight"], dtype=np.float32).T + np.asarray(params[f"{i}_bias"])
            elif kind == "layernorm":
                mean = h.mean(axis=1, keepdims=True)
                var = h.var(axis=1, keepdims=True)
                h = (h - mean) / np.sqrt(var + float(np.asarray(params[f"{i}_eps"])))
                h = h * np.asarray(params[f"{i}_weight"]) + np.asarray(params[f"{i}_bias"])
            elif kind == "elu":
                h = _elu(h)
            else:
                raise ValueError(f"Unknown decoder layer {kind!r} in the stored imputation decoder.")
        out[start:start + len(h)] = np.exp(h @ W_head.T + b_head + offset[start:start + len(h)])
    return out


class CountAutoencoder(nn.Module):
    """Encoder on log-normalised (standardised) input; NB/ZINB decoder with size factors.

    Parameters
    ----------
    n_genes
        Number of genes (outputs).
    hidden
        Widths of the hidden layers, e.g. ``(128, 32, 128)``: the narrowest is the bottleneck.
    likelihood
        ``"nb"`` or ``"zinb"``.
    spatial
        The input also holds the neighbours' mean expression (``2 * n_genes`` inputs).
    mask_rate
        Fraction of input entries hidden (set to zero) per training step.
    scale
        Target library size of the log-normalisation.
    """

    def __init__(self, n_genes: int, hidden: Sequence[int] = (128, 32, 128), likelihood: str = "zinb",
                 spatial: bool = False, mask_rate: float = 0.2, scale: float = 1e4):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
        self.n_genes = n_genes
        self.likelihood = likelihood
        self.spatial = spatial
        self.mask_rate = float(mask_rate)
        n_in = n_genes * (2 if spatial else 1)
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ELU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.mean_head = nn.Linear(width, n_genes)
        self.pi_head = nn.Linear(width, n_genes) if likelihood == "zinb" else None
        self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self.register_buffer("in_mean", torch.zeros(n_in))
        self.register_buffer("in_std", torch.ones(n_in))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def set_input_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Per-feature centring and scaling of the log-normalised input."""
        self.in_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.in_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def encode_input(self, x: torch.Tensor, library: torch.Tensor,
                     neighbours: torch.Tensor | None = None, mask: bool = False) -> torch.Tensor:
        xlog = torch.log1p(x / library.clamp(min=1e-12) * self.scale)
        if mask and self.mask_rate > 0:
            keep = torch.rand_like(xlog) >= self.mask_rate
            xlog = xlog * keep / (1.0 - self.mask_rate)
        if self.spatial:
            if neighbours is None:
                raise ValueError("This model was built with spatial=True: pass the neighbours' mean expression.")
            xlog = torch.cat([xlog, neighbours], dim=1)
        return (xlog - self.in_mean) / self.in_std

    def forward(self, x: torch.Tensor, library: torch.Tensor, neighbours: torch.Tensor | None = None,
                mask: bool = False) -> dict[str, torch.Tensor]:
        h = self.body(self.encode_input(x, library, neighbours, mask))
        mu = library * torch.softmax(self.mean_head(h), dim=-1)
        out = {"mu": mu, "theta": self.log_theta.exp().clamp(max=1e6)}
        if self.pi_head is not None:
            out["pi_logits"] = self.pi_head(h)
        return out

    def log_likelihood(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.likelihood == "zinb":
            return log_zinb(x, out["mu"], out["theta"], out["pi_logits"])
        return log_nb(x, out["mu"], out["theta"])


def _impute_loss(module: CountAutoencoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = module(batch["x"], batch["library"], batch.get("neighbours"), mask=module.training)
    return -module.log_likelihood(batch["x"], out).sum(dim=1).mean()


class ImputeModel(SavableModel):
    """Fit/predict wrapper of :class:`CountAutoencoder` (save/load via :class:`SavableModel`).

    Parameters
    ----------
    n_genes
        Number of genes.
    hidden, likelihood, spatial, mask_rate
        See :class:`CountAutoencoder`.
    genes
        Gene names (kept with the model; predictions on new data must use the same genes).
    """

    def __init__(self, n_genes: int, *, hidden: Sequence[int] = (128, 32, 128), likelihood: str = "zinb",
                 spatial: bool = False, mask_rate: float = 0.2, genes: Sequence[str] | None = None):
        self.init_kwargs = {"n_genes": int(n_genes), "hidden": [int(h) for h in hidden],
                            "likelihood": likelihood, "spatial": bool(spatial),
                            "mask_rate": float(mask_rate)}
        self.module = CountAutoencoder(**self.init_kwargs)
        self.extra: dict[str, Any] = {"genes": [str(g) for g in genes] if genes is not None else None}

    @classmethod
    def build(cls, init_kwargs: dict[str, Any], extra: dict[str, Any]) -> ImputeModel:
        kwargs = dict(init_kwargs)
        model = cls(kwargs.pop("n_genes"), **kwargs)
        model.extra = dict(extra)
        return model

    @property
    def spatial(self) -> bool:
        return bool(self.init_kwargs["spatial"])

    def _inputs(self, X, neighbours: np.ndarray | None) -> dict[str, Any]:
        if X.shape[1] != self.init_kwargs["n_genes"]:
            raise ValueError(f"Expected {self.init_kwargs['n_genes']} genes, got {X.shape[1]}.")
        library = library_sizes(X)
        data: dict[str, Any] = {"x": X, "library": library}
        if self.spatial:
            if neighbours is None:
                raise ValueError("This model was fitted with spatial=True: pass the neighbour indices.")
            xlog = log_normalise(X, library, float(self.module.scale))
            data["neighbours"] = neighbour_mean(xlog, neighbours)
        return data

    def fit_iter(self, X: np.ndarray | sp.spmatrix, neighbours: np.ndarray | None = None,
                 config: TrainingConfig | None = None) -> Generator[ProgressEvent, None, TrainingHistory]:
        """Train on counts ``X`` (cells x genes); a generator (see :func:`train`).

        ``neighbours`` is an (n, k) array of each row's spatial neighbours (``spatial=True`` only).
        """
        config = config or default_config()
        library = library_sizes(X)
        self.module.scale.fill_(float(np.median(library)))
        data = self._inputs(X, neighbours)
        # over blocks of rows: a log-normalised copy of X (and of its square) would be 2x its CSR
        mean, std = log_normalized_moments(X, float(self.module.scale))
        if self.spatial:
            nb_mean, nb_std = gene_moments(data["neighbours"])
            mean, std = np.concatenate([mean, nb_mean]), np.concatenate([std, nb_std])
        self.module.set_input_stats(mean, std)
        history = yield from train(self.module, data, _impute_loss, config)
        return history

    def _split(self) -> tuple[nn.Sequential, nn.Sequential]:
        """The body cut after the bottleneck (the narrowest hidden layer): (encoder, decoder)."""
        hidden = self.init_kwargs["hidden"]
        cut = 3 * (int(np.argmin(hidden)) + 1)  # Linear, LayerNorm, ELU per hidden layer
        body = self.module.body
        return body[:cut], body[cut:]

    def decoder_state(self) -> dict[str, Any]:
        """What :func:`decode_genes` needs: the layers after the bottleneck and the mean head.

        Plain numpy arrays and strings (storable in ``adata.uns`` and ``.h5ad``).
        """
        _, decoder = self._split()
        kinds, params = [], {}
        for i, layer in enumerate(decoder):
            if isinstance(layer, nn.Linear):
                kinds.append("linear")
                params[f"{i}_weight"] = layer.weight.detach().cpu().numpy().astype(np.float32)
                params[f"{i}_bias"] = layer.bias.detach().cpu().numpy().astype(np.float32)
            elif isinstance(layer, nn.LayerNorm):
                kinds.append("layernorm")
                params[f"{i}_weight"] = layer.weight.detach().cpu().numpy().astype(np.float32)
                params[f"{i}_bias"] = layer.bias.detach().cpu().numpy().astype(np.float32)
                params[f"{i}_eps"] = np.float32(layer.eps)
            elif isinstance(layer, nn.ELU):
                kinds.append("elu")
            else:
                raise TypeError(f"Cannot export decoder layer {type(layer).__name__}.")
        head = self.module.mean_head
        return {"layers": np.array(kinds, dtype=object), "params": params,
                "head_weight": head.weight.detach().cpu().numpy().astype(np.float32),
                "head_bias": head.bias.detach().cpu().numpy().astype(np.float32)}

    @torch.no_grad()
    def encode(self, X: np.ndarray | sp.spmatrix, neighbours: np.ndarray | None = None,
               batch_size: int = 4096, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """The compact representation of every row: bottleneck values and log normaliser.

        Memory: one batch of ``batch_size x n_genes`` at a time; the result is ``n x (d + 1)``.

        Returns
        -------
        latent, offset
            ``(n, d)`` float32 bottleneck values and ``(n,)`` float32 ``log(library) -
            logsumexp(logits)``: :func:`decode_genes` turns them into any gene's expected count.
        """
        data = self._inputs(X, neighbours)
        module = self.module.to(device).eval()
        encoder, decoder = self._split()
        d = int(min(self.init_kwargs["hidden"]))
        latent = np.empty((X.shape[0], d), dtype=np.float32)
        offset = np.empty(X.shape[0], dtype=np.float32)
        for start in range(0, X.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            x = _block(X, rows, device)
            lib = torch.as_tensor(data["library"][rows], device=device)
            nb = _block(data["neighbours"], rows, device) if self.spatial else None
            z = encoder(module.encode_input(x, lib, nb))
            logits = module.mean_head(decoder(z))
            latent[rows] = z.cpu().numpy()
            offset[rows] = (torch.log(lib.clamp(min=1e-12)).squeeze(1)
                            - torch.logsumexp(logits, dim=1)).cpu().numpy()
        return latent, offset

    @torch.no_grad()
    def predict(self, X: np.ndarray | sp.spmatrix, neighbours: np.ndarray | None = None,
                batch_size: int = 4096, device: str | torch.device = "cpu",
                columns: np.ndarray | None = None) -> np.ndarray:
        """Expected (denoised) count of every gene in every row of ``X``: the NB mean ``mu``.

        ``columns`` (indices among the model's genes) returns only those genes, so the result is
        ``n x len(columns)``; each batch still computes all the genes' logits (the softmax needs
        them) but only one batch at a time.
        """
        data = self._inputs(X, neighbours)
        module = self.module.to(device).eval()
        cols = None if columns is None else torch.as_tensor(np.asarray(columns, dtype=np.int64), device=device)
        out = np.empty((X.shape[0], X.shape[1] if cols is None else len(cols)), dtype=np.float32)
        for start in range(0, X.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            x = _block(X, rows, device)
            lib = torch.as_tensor(data["library"][rows], device=device)
            nb = _block(data["neighbours"], rows, device) if self.spatial else None
            mu = module(x, lib, nb)["mu"]
            out[rows] = (mu if cols is None else mu.index_select(1, cols)).cpu().numpy()
        return out
