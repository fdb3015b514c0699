"""Results derived from a task's output: what the GUI shows and the CLI writes, computed once.

- :func:`cluster_latent`: clusters of the integration latent space -> ``obs[CLUSTERS_KEY]``;
- :func:`dominant_cell_type`: the largest proportion of every spot -> ``obs[DOMINANT_KEY]``;
- :func:`suggested_gene`: the imputed gene with the most spatial structure (Moran's I), the one a
  tissue view shows first.

Keys come from :mod:`napari_spatialdl._constants`; for a result written beside another
(``<default>_<method>`` or ``key_added``) :func:`derived_key` gives the matching derived key, so
derived results of two methods sit side by side too. No Qt, no napari.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import CLUSTERS_KEY, DOMINANT_KEY, IMPUTED_LAYER, LATENT_KEY, PROPORTIONS_KEY
from ._validate import InputError

__all__ = ["cluster_latent", "derived_key", "dominant_cell_type", "reference_colors", "suggested_gene",
           "suggested_predicted_gene"]


def derived_key(derived: str, default: str, result_key: str | None) -> str:
    """The key of a derived result for the task result stored under ``result_key``.

    The default result gives the default derived key (``DOMINANT_KEY``); a result beside it,
    ``<default><suffix>`` (e.g. ``spatialdl_proportions_nnls``), gives ``<derived><suffix>``;
    any other key (``key_added='mine'``) gives ``<key>_<derived without 'spatialdl_'>``.

    Parameters
    ----------
    derived
        The derived result's default key (e.g. ``DOMINANT_KEY``).
    default
        The task result's default key (e.g. ``PROPORTIONS_KEY``).
    result_key
        Where the task result is (None: the default).
    """
    if not result_key or result_key == default:
        return derived
    if result_key.startswith(default):
        return derived + result_key[len(default):]
    return f"{result_key}_{derived.removeprefix('spatialdl_')}"


def _obsm(adata: AnnData, key: str, what: str) -> Any:
    if key not in adata.obsm:
        have = ", ".join(map(str, adata.obsm.keys())) or "none"
        raise InputError(f"adata.obsm[{key!r}] not found (obsm keys: {have}): run {what} first, "
                         "or pass the key the result was written to.")
    return adata.obsm[key]


def cluster_latent(adata: AnnData, *, latent_key: str = LATENT_KEY, key: str | None = None,
                   n_clusters: int = 8, resolution: float = 1.0, seed: int = 0) -> str:
    """Cluster the integrated latent space into ``adata.obs[key]`` (categorical, '1' = largest).

    Leiden on the latent space's 15-nearest-neighbour graph when ``leidenalg`` and ``igraph`` are
    installed (``resolution``), else k-means with ``n_clusters``. Clusters are numbered by size so
    that colours stay put between runs.

    Parameters
    ----------
    adata
        The AnnData with the latent space.
    latent_key
        ``adata.obsm`` key of the latent space (the integration's result).
    key
        The obs column to write (default: :func:`derived_key` of ``CLUSTERS_KEY`` for ``latent_key``).
    n_clusters
        Number of k-means clusters (ignored by Leiden).
    resolution
        Leiden's resolution (higher: more clusters).
    seed
        Random seed of the clustering.

    Returns
    -------
    str
        The method used, ``'leiden'`` or ``'kmeans'``.
    """
    latent = np.asarray(_obsm(adata, latent_key, "the integration"), dtype=float)
    if latent.ndim != 2 or latent.shape[0] != adata.n_obs:
        raise InputError(f"adata.obsm[{latent_key!r}] has shape {latent.shape}; expected "
                         f"({adata.n_obs}, dimensions).")
    if adata.n_obs < 3:
        raise InputError(f"Clustering needs at least 3 observations; adata has {adata.n_obs}.")
    key = key or derived_key(CLUSTERS_KEY, LATENT_KEY, latent_key)
    if importlib.util.find_spec("leidenalg") and importlib.util.find_spec("igraph"):
        import scanpy as sc

        tmp = AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=pd.DataFrame(index=adata.obs_names))
        tmp.obsm["latent"] = latent
        sc.pp.neighbors(tmp, use_rep="latent", n_neighbors=min(15, adata.n_obs - 1), random_state=seed)
        sc.tl.leiden(tmp, resolution=resolution, key_added="c", random_state=seed,
                     flavor="igraph", n_iterations=2, directed=False)
        labels = tmp.obs["c"].astype(int).to_numpy()
        method = "leiden"
    else:
        from sklearn.cluster import KMeans

        k = int(max(2, min(n_clusters, adata.n_obs - 1)))
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(latent)
        method = "kmeans"
    order = pd.Series(labels).value_counts().index.tolist()
    rank = {lab: i + 1 for i, lab in enumerate(order)}
    adata.obs[key] = pd.Categorical([str(rank[lab]) for lab in labels],
                                    categories=[str(i + 1) for i in range(len(order))])
    adata.uns.pop(f"{key}_colors", None)  # colours of an earlier clustering no longer match
    return method


def reference_colors(reference: AnnData | None, labels_key: str | None) -> dict[str, str]:
    """Cell type -> colour from ``reference.uns[f'{labels_key}_colors']`` (scanpy's convention)."""
    if reference is None or not labels_key or labels_key not in reference.obs:
        return {}
    colors = reference.uns.get(f"{labels_key}_colors")
    labels = reference.obs[labels_key]
    if colors is None or not isinstance(labels.dtype, pd.CategoricalDtype):
        return {}
    categories = [str(c) for c in labels.cat.categories]
    colors = [str(c) for c in np.asarray(colors).ravel()]
    return dict(zip(categories, colors)) if len(colors) >= len(categories) else {}


def dominant_cell_type(adata: AnnData, *, proportions_key: str = PROPORTIONS_KEY, key: str | None = None,
                       reference: AnnData | None = None, labels_key: str | None = None) -> pd.Categorical:
    """``adata.obs[key]``: the cell type with the largest proportion in each spot (categorical).

    When the reference has colours for every cell type (``uns[f'{labels_key}_colors']``), the
    dominant type takes them (``uns[f'{key}_colors']``), so both datasets show a type alike.

    Parameters
    ----------
    adata
        The spots, with the deconvolution's proportions (a DataFrame, one column per type).
    proportions_key
        ``adata.obsm`` key of the proportions.
    key
        The obs column to write (default: :func:`derived_key` of ``DOMINANT_KEY``).
    reference, labels_key
        The reference and its cell-type column, for the colours (optional).

    Returns
    -------
    pandas.Categorical
        The dominant type of every spot (categories: the cell types, in the proportions' order).
    """
    props = _obsm(adata, proportions_key, "the deconvolution")
    if not isinstance(props, pd.DataFrame):
        raise InputError(f"adata.obsm[{proportions_key!r}] must be a DataFrame with one column per cell "
                         f"type (what deconvolve writes), got {type(props).__name__}.")
    key = key or derived_key(DOMINANT_KEY, PROPORTIONS_KEY, proportions_key)
    types = [str(c) for c in props.columns]
    values = props.to_numpy(dtype=float)
    dominant = pd.Categorical(np.asarray(types, dtype=object)[np.nanargmax(values, axis=1)], categories=types)
    adata.obs[key] = dominant
    colors = reference_colors(reference, labels_key)
    if colors and all(t in colors for t in types):
        adata.uns[f"{key}_colors"] = [colors[t] for t in types]
    else:
        adata.uns.pop(f"{key}_colors", None)
    return dominant


def suggested_gene(adata: AnnData, *, layer: str = IMPUTED_LAYER, n_neighbors: int = 6,
                   max_obs: int = 20000, seed: int = 0) -> str:
    """The gene a tissue view of ``adata.layers[layer]`` shows best: the most spatially structured.

    Score: Moran's I of ``log1p`` of the values over each spot's ``n_neighbors`` nearest
    neighbours (row-standardised weights), among the genes whose mean is at least the median;
    without coordinates, the variance. With more than ``max_obs`` observations a random subset of
    that many (``seed``) is scored.

    Parameters
    ----------
    adata
        The AnnData (``obsm['spatial']`` for Moran's I).
    layer
        The layer to score (default: the imputation's result).
    n_neighbors
        Neighbours per spot in Moran's I.
    max_obs
        Most observations scored.
    seed
        Seed of the subset.

    Returns
    -------
    str
        A gene of ``adata.var_names``.
    """
    if layer not in adata.layers:
        raise InputError(f"adata.layers[{layer!r}] not found (layers: "
                         f"{', '.join(map(str, adata.layers.keys())) or 'none'}): run impute first.")
    rows = np.arange(adata.n_obs)
    if adata.n_obs > max_obs:
        rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_obs, replace=False))
    values = adata.layers[layer][rows]
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    logged = np.log1p(np.clip(np.asarray(values, dtype=np.float32), 0, None))
    means = logged.mean(axis=0)
    expressed = np.flatnonzero(means >= np.median(means))
    logged = logged[:, expressed]
    score = _structure_scores(logged, _neighbours(adata, rows, n_neighbors))
    return str(adata.var_names[expressed[int(np.argmax(score))]])


def _neighbours(adata: AnnData, rows: np.ndarray, n_neighbors: int) -> np.ndarray | None:
    """Each of ``rows``' nearest neighbours among ``rows`` (positions in ``rows``), or None
    without coordinates."""
    xy = adata.obsm.get("spatial")
    if xy is None or len(rows) <= n_neighbors + 1:
        return None
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=float)[rows, :2]
    _, nn = cKDTree(xy).query(xy, k=n_neighbors + 1)
    return nn[:, 1:]


def _structure_scores(logged: np.ndarray, nn: np.ndarray | None) -> np.ndarray:
    """Moran's I of each column over the neighbours ``nn`` (the variance without them)."""
    if nn is None:
        return logged.var(axis=0)
    z = logged - logged.mean(axis=0)
    sd = z.std(axis=0)
    z = z / np.where(sd > 0, sd, 1.0)
    lagged = z[nn].mean(axis=1)
    return np.where(sd > 0, (z * lagged).mean(axis=0), -np.inf)


def suggested_predicted_gene(adata: AnnData, key: str | None = None, *, n_neighbors: int = 6,
                             max_obs: int = 20000, chunk: int = 1000, seed: int = 0) -> str:
    """The predicted gene a tissue view shows best, from a gene prediction (table or compact form).

    The score of :func:`suggested_gene` (Moran's I of ``log1p`` of the values, among the genes
    whose mean is at least the median) on the predicted values; the compact form is
    reconstructed ``chunk`` genes at a time on at most ``max_obs`` observations, so no
    observations x genes matrix is built.

    Parameters
    ----------
    adata
        The AnnData the prediction was written to.
    key
        Any key of the prediction (see :func:`napari_spatialdl.tasks.gene_prediction.reconstruct`);
        None: the result under the default keys, or the only one.
    n_neighbors, max_obs, seed
        As in :func:`suggested_gene`.
    chunk
        Genes reconstructed at a time.

    Returns
    -------
    str
        One of the predicted genes.
    """
    from .gene_prediction import predicted_gene_names, reconstruct

    genes = predicted_gene_names(adata, key)
    rows = np.arange(adata.n_obs)
    if adata.n_obs > max_obs:
        rows = np.sort(np.random.default_rng(seed).choice(adata.n_obs, max_obs, replace=False))
    subset = adata[rows] if len(rows) < adata.n_obs else adata
    nn = _neighbours(adata, rows, n_neighbors)
    means, scores = [], []
    for start in range(0, len(genes), chunk):
        part = genes[start:start + chunk]
        values = reconstruct(subset, part, key=key).to_numpy(dtype=np.float32)
        logged = np.log1p(np.clip(values, 0, None))
        means.append(logged.mean(axis=0))
        scores.append(_structure_scores(logged, nn))
    mean, score = np.concatenate(means), np.concatenate(scores)
    score = np.where(mean >= np.median(mean), score, -np.inf)
    return str(genes[int(np.argmax(score))])
