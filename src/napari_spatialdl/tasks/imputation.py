"""Imputation / denoising: the expected count of every gene in every cell or spot.

The task's spec (inputs, output), its one ``prepare`` and its one ``write`` live here; the
methods only compute. Methods: ``spatialdl`` (the native count autoencoder,
:mod:`napari_spatialdl.models.impute`) and ``knn`` (a baseline: kNN smoothing in PCA space); the
reference backend MAGIC is in :mod:`.backends.magic`. Every method writes
``adata.layers['spatialdl_imputed']`` (same shape as ``adata``, on the count scale of each cell:
genes without any count get 0) and the run metadata.

``prepare`` drops the genes without any count for every method (they carry no information and
are written back as 0). A ``reference`` (an scRNA-seq dataset with genes to predict) is only
taken by methods registered with ``needs=("reference",)``; the denoisers refuse it.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import IMPUTED_LAYER
from ..models import ProgressEvent, TrainingConfig
from ..models.impute import ImputeModel
from ..preprocessing import library_sizes, log1p, normalize_total
from . import _validate as V
from ._registry import register
from ._spec import (
    DATA,
    LAYER,
    REFERENCE,
    Input,
    MethodOutput,
    Output,
    Prepared,
    TaskSpec,
    register_spec,
)
from ._validate import InputError, check_positive

__all__ = [
    "MIN_OBSERVATIONS",
    "SPEC",
    "ImputationInputs",
    "ImputationOutput",
    "impute_knn",
    "impute_spatialdl",
    "knn_smooth",
    "prepare",
    "spatial_neighbours",
    "write",
]

#: fewest observations an imputation needs
MIN_OBSERVATIONS = 3


def spatial_neighbours(xy: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each spot's ``k`` nearest other spots (itself excluded).

    Parameters
    ----------
    xy
        (n, 2) coordinates.
    k
        Neighbours per spot (``1 <= k < n``).

    Returns
    -------
    np.ndarray
        int64 row indices; a spot is never its own neighbour, even when coordinates repeat.
    """
    from scipy.spatial import cKDTree

    n = len(xy)
    _, idx = cKDTree(xy).query(xy, k=k + 1)
    idx = np.asarray(idx).reshape(n, k + 1)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(n):  # drop the spot itself (not always first when coordinates repeat)
        row = idx[i][idx[i] != i]
        out[i] = row[:k]
    return out


@dataclass
class ImputationInputs(Prepared):
    """The counts of the genes that have any (what every imputation method gets).

    ``counts`` is ``adata``'s counts restricted to ``genes`` (CSR stays CSR); ``keep`` is the
    mask of those genes over ``adata.var_names`` (the others have no count and are written as 0);
    ``library`` is every observation's total count. ``reference``/``reference_counts`` are set
    only when the caller passed a reference (for methods that predict genes from it).
    """

    counts: Any = None  # observations x kept genes
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    genes: pd.Index = field(default_factory=pd.Index)
    library: np.ndarray = field(default_factory=lambda: np.zeros(0))
    layer: str | None = None
    reference: AnnData | None = None
    reference_counts: Any = None  # reference cells x reference genes, checked
    reference_layer: str | None = None

    def neighbours(self, n_neighbors: int) -> np.ndarray:
        """(n_obs, n_neighbors) indices of each spot's nearest other spots in ``obsm['spatial']``.

        Parameters
        ----------
        n_neighbors
            Neighbours per spot, between 1 and ``n_obs - 1``.

        Returns
        -------
        np.ndarray
            int64 row indices (see :func:`spatial_neighbours`).

        Raises
        ------
        InputError
            No usable ``adata.obsm['spatial']``, or ``n_neighbors`` out of range.
        """
        xy = V.check_spatial(self.data, obj="adata")
        n = self.data.n_obs
        if not 1 <= n_neighbors < n:
            raise InputError(f"n_neighbors must be between 1 and {n - 1} (the number of other spots in "
                             f"adata), got {n_neighbors}.")
        return spatial_neighbours(xy, int(n_neighbors))


@dataclass
class ImputationOutput(MethodOutput):
    """The imputed expected counts, observations x the prepared inputs' ``genes``."""

    imputed: np.ndarray | None = None


def prepare(inputs: dict[str, Any], *, method: Any, device: Any, seed: int) -> ImputationInputs:
    """Check the inputs once and keep the genes with any count (nothing is written).

    Parameters
    ----------
    inputs
        The task's inputs by name (``adata``, ``layer``, ``reference``, ``reference_layer``).
    method
        The registered method (its ``counts`` flag says whether raw counts are needed).
    device, seed
        Resolved by the core.

    Returns
    -------
    ImputationInputs
        Counts of the genes with any count, their mask, the library sizes.

    Raises
    ------
    InputError
        Counts that are not raw counts, an empty observation, too few observations,
        ``reference_layer`` without a reference, a bad reference.
    """
    adata, layer = inputs["adata"], inputs.get("layer")
    reference, reference_layer = inputs.get("reference"), inputs.get("reference_layer")
    if reference is None and reference_layer is not None:
        raise InputError(f"reference_layer={reference_layer!r} names a layer of reference, but no reference "
                         "was given: pass reference= too, or leave reference_layer out.")
    X = V.method_input(adata, layer, method=method, task="imputation", obj="adata", layer_arg="layer")
    if adata.n_obs < MIN_OBSERVATIONS:
        raise InputError(f"adata has {adata.n_obs} observations; imputation needs at least "
                         f"{MIN_OBSERVATIONS}.")
    X, genes, keep = V.drop_empty_genes(X, adata.var_names)
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    ref_X = None
    if reference is not None:
        ref_X = V.method_input(reference, reference_layer, method=method, task="imputation", obj="reference", layer_arg="reference_layer")
    n_used, n_dropped = int(keep.sum()), int((~keep).sum())
    info: dict[str, Any] = {
        "n_genes_used": n_used,
        "n_genes_dropped": n_dropped,
        "genes_message": (f"{n_used} of {adata.n_vars} genes modelled; {n_dropped} genes without any "
                          "count were left out (imputed as 0)."
                          if n_dropped else f"All {adata.n_vars} genes modelled."),
    }
    return ImputationInputs(
        data=adata, device=device, seed=seed, info=info, counts=X, keep=keep, genes=genes,
        library=library_sizes(X), layer=layer, reference=reference, reference_counts=ref_X,
        reference_layer=reference_layer)


def write(out: AnnData, prepared: ImputationInputs, output: ImputationOutput, keys: dict[str, str]) -> None:
    """The imputed counts as a dense float32 layer of ``out``'s shape (genes without counts: 0)."""
    imputed = np.zeros(out.shape, dtype=np.float32)
    imputed[:, prepared.keep] = np.asarray(output.imputed, dtype=np.float32)
    out.layers[keys["imputed"]] = imputed


SPEC = register_spec(TaskSpec(
    name="impute",
    title="Impute genes",
    doc="Denoise the measured genes and fill in dropouts: the expected count of every gene in every "
        "cell or spot.",
    inputs=(
        Input("adata", DATA, doc="cells or spots with raw counts"),
        Input("layer", LAYER, of="adata", required=False, doc="layer of adata with the raw counts (None: X)"),
        Input("reference", REFERENCE, required=False,
              doc="a scRNA-seq reference with the genes to predict (methods that predict genes only)"),
        Input("reference_layer", LAYER, of="reference", required=False,
              doc="layer of reference with the raw counts (None: X)"),
    ),
    outputs=(
        Output("imputed", "layers", IMPUTED_LAYER,
               doc="expected counts (dense float32, adata's shape; genes without counts: 0)"),
    ),
    prepare=prepare,
    write=write,
))

TaskGen = Generator[ProgressEvent, None, ImputationOutput]


# ------------------------------------------------------------------------ methods

@register("impute", "spatialdl", native=True, refuses=("reference",),
          label="Denoising autoencoder (recommended)",
          description="Count autoencoder (DCA family): NB/ZINB, size factors, masked training, "
                      "optional spatial neighbours")
def impute_spatialdl(data: ImputationInputs, *, likelihood: Literal["zinb", "nb"] = "zinb",
                     spatial: bool = False, n_neighbors: int = 6, hidden: int = 128,
                     bottleneck: int = 16, mask_rate: float = 0.5, max_epochs: int = 300,
                     batch_size: int = 128, lr: float = 5e-3, patience: int = 10) -> TaskGen:
    """Denoise counts and fill in dropouts with the native count autoencoder.

    The network reads each cell's log-normalised expression through a bottleneck and
    predicts a negative binomial (``"nb"``) or zero-inflated NB (``"zinb"``) of every
    gene's count, with mean ``library size x softmax(...)`` and a dispersion per gene.
    While training, a random half of each cell's input values is hidden and the model
    must still predict all counts, so it learns to fill gaps from the other genes.
    The result is the NB mean: the expected count of the denoised expression on the
    cell's own scale (for ZINB the dropout part is deliberately left out).

    Parameters
    ----------
    data
        The prepared counts (see :func:`napari_spatialdl.impute`).
    likelihood
        ``"zinb"`` (zero-inflated negative binomial) or ``"nb"``.
    spatial
        Also show the model each spot's spatial neighbours (mean of their normalised
        expression); needs ``adata.obsm['spatial']``.
    n_neighbors
        Number of spatial neighbours with ``spatial=True``.
    hidden
        Width of the encoder and decoder layers.
    bottleneck
        Width of the bottleneck (smaller: smoother imputation).
    mask_rate
        Fraction of input values hidden per training step (0: plain autoencoder).
    max_epochs
        Upper limit of passes over the data.
    batch_size
        Cells per training step.
    lr
        Learning rate (Adam).
    patience
        Stop when the held-out loss has not improved for this many epochs (0: never).

    Returns
    -------
    ImputationOutput
        The expected counts; ``model`` is the trained
        :class:`~napari_spatialdl.models.impute.ImputeModel`.
    """
    check_positive(hidden=hidden, bottleneck=bottleneck, max_epochs=max_epochs, batch_size=batch_size, lr=lr)
    if not 0 <= mask_rate < 1:
        raise InputError(f"mask_rate must be in [0, 1), got {mask_rate}.")
    if patience < 0:
        raise InputError(f"patience must be >= 0, got {patience}.")
    neighbours = data.neighbours(n_neighbors) if spatial else None
    model = ImputeModel(len(data.genes), hidden=(hidden, bottleneck, hidden), likelihood=likelihood,
                        spatial=spatial, mask_rate=mask_rate, genes=data.genes)
    config = TrainingConfig(max_epochs=max_epochs, batch_size=batch_size, lr=lr, patience=patience,
                            seed=data.seed, device=data.device)
    history = yield from model.fit_iter(data.counts, neighbours, config)
    values = model.predict(data.counts, neighbours, device=data.device)
    return ImputationOutput(imputed=values, model=model, history=history, info={"device": str(data.device)})


def knn_smooth(X: Any, n_neighbors: int = 15, n_pcs: int = 30, seed: int = 0) -> np.ndarray:
    """Average each row's normalised expression over its ``n_neighbors`` nearest rows.

    Rows are normalised to the median library size; neighbours (the row itself included) are
    searched in the PCA space of the log1p of that; the mean is scaled back to the row's own
    library size.

    Parameters
    ----------
    X
        Counts (rows x genes, dense or sparse); every row has some count.
    n_neighbors
        Rows averaged per row (itself included; capped by the number of rows).
    n_pcs
        Principal components of the neighbour search (capped by the data's size).
    seed
        Random state of the PCA solver.

    Returns
    -------
    np.ndarray
        Dense float32 of ``X``'s shape; each row keeps its library size.
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    library = library_sizes(X)
    scale = float(np.median(library))
    norm = normalize_total(X, scale)
    logn = log1p(norm)
    logn = logn.toarray() if sp.issparse(logn) else logn
    n_comps = max(1, min(n_pcs, logn.shape[0] - 1, logn.shape[1] - 1))
    Z = PCA(n_components=n_comps, random_state=seed).fit_transform(logn - logn.mean(axis=0))
    k = min(n_neighbors, X.shape[0])
    _, idx = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z)
    n = X.shape[0]
    W = sp.csr_matrix((np.full(n * k, 1.0 / k, dtype=np.float32), (np.repeat(np.arange(n), k), idx.ravel())),
                      shape=(n, n))
    smooth = W @ norm
    smooth = smooth.toarray() if sp.issparse(smooth) else np.asarray(smooth)
    return (smooth * (library / scale)[:, None]).astype(np.float32)


@register("impute", "knn", refuses=("reference",), label="Average of similar cells (quick baseline)",
          description="kNN smoothing in PCA space of log-normalised counts (baseline)")
def impute_knn(data: ImputationInputs, *, n_neighbors: int = 15, n_pcs: int = 30) -> TaskGen:
    """Baseline imputation: average each cell over its nearest cells in expression space.

    Counts are normalised to the median library size and log1p-transformed; cells are
    compared in the first ``n_pcs`` principal components; each cell's imputed profile
    is the mean normalised expression of its ``n_neighbors`` nearest cells (itself
    included), scaled back to the cell's own library size.

    Parameters
    ----------
    data
        The prepared counts (see :func:`napari_spatialdl.impute`).
    n_neighbors
        Cells averaged per cell (itself included).
    n_pcs
        Principal components of the neighbour search.

    Returns
    -------
    ImputationOutput
        The smoothed counts.
    """
    check_positive(n_neighbors=n_neighbors, n_pcs=n_pcs)
    start = time.perf_counter()
    yield ProgressEvent(0, 1, 0, message="kNN smoothing", stage="smooth")
    values = knn_smooth(data.counts, n_neighbors, n_pcs, data.seed)
    yield ProgressEvent(1, 1, 1, message="done", stage="smooth", elapsed=time.perf_counter() - start)
    return ImputationOutput(imputed=values)
