"""Benchmark protocols: datasets, silver standards and scores (pure functions).

Every benchmark (``accuracy.py``, ``speed.py``) and every model helper that wants to
check a model the same way uses these functions, so the figures are comparable.

Import it from the benchmarks folder::

    import sys; sys.path.insert(0, "/path/to/napari-spatialdl/benchmarks")
    import _protocols as P

Protocols
---------
Data
    :func:`load_hippocampus` (real, ``../shared/data/hippocampus_visium``) and
    :func:`load_synthetic` (``napari_spatialdl.datasets.synthetic_tissue``).
Deconvolution
    :func:`simulate_spots` builds spots from half of an annotated reference (the other
    half is the reference given to the method); :func:`score_proportions` gives RMSE,
    Jensen-Shannon divergence and per-type Pearson r.
Imputation
    :func:`mask_counts` hides 10 % of the non-zero counts; :func:`score_imputation`
    scores the prediction on the hidden entries.
Gene prediction (Li et al. 2022)
    :func:`gene_folds` splits the genes shared by the spatial data and the reference into
    5 folds; each fold's genes are hidden from the spatial data and predicted from the
    reference; :func:`score_gene_prediction` gives per-gene Spearman and Pearson r against
    the measured values (log-normalised, :func:`log_normalised`).
Integration
    batch = replicate (barcode prefix, 16 samples), labels = cell types;
    :func:`scib_total` (scib-metrics' Benchmarker when installed, else a documented
    fallback that says so).
Annotation
    :func:`replicate_split` (train Rep1-Rep4, test Rep5-Rep6), :func:`score_labels`
    (accuracy, macro-F1); :func:`gene_panel` (the hard case: a targeted panel of the
    reference's ``PANEL_GENES`` most variable genes, as Xenium/MERFISH measure).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

REPO_ROOT = Path(__file__).resolve().parents[1]
#: default location of the real data (read-only, beside the repository)
HIPPOCAMPUS = REPO_ROOT.parent / "shared" / "data" / "hippocampus_visium"

LABELS_KEY = "cell_type"
BATCH_KEY = "replicate"
TRAIN_REPS = ("Rep1", "Rep2", "Rep3", "Rep4")
TEST_REPS = ("Rep5", "Rep6")
#: genes of the small-panel annotation case (a MERFISH/Xenium-sized panel)
PANEL_GENES = 130


# --------------------------------------------------------------------------- data

def _read_counts(path: Path) -> pd.DataFrame:
    # the CSVs are genes x cells: transpose to cells x genes
    return pd.read_csv(path, index_col=0).T


def load_hippocampus(root: str | Path | None = None) -> tuple[AnnData, AnnData]:
    """The mouse hippocampus scRNA-seq reference and Visium spots (spacexr data).

    Parameters
    ----------
    root
        Folder holding ``reference/`` and ``spatial/``; default
        ``../shared/data/hippocampus_visium`` relative to the repository.

    Returns
    -------
    reference
        510 cells x 307 genes; ``X`` integer counts (float32 dtype);
        ``obs['cell_type']`` (17 types, from ``cell_types.csv`` column ``x``),
        ``obs['replicate']`` (barcode prefix before ``_``, e.g. ``P60HippoRep2P1``:
        16 values, the batch), ``obs['rep']`` (``Rep1`` .. ``Rep6``).
    spatial
        313 spots x 276 genes; ``X`` integer counts, ``obsm['spatial']`` from ``coords.csv``.
    """
    root = Path(root) if root is not None else HIPPOCAMPUS
    if not (root / "reference" / "counts.csv").is_file():
        raise FileNotFoundError(
            f"{root}/reference/counts.csv not found: the hippocampus data lives in "
            "../shared/data/hippocampus_visium beside the repository (pass root=...)."
        )
    counts = _read_counts(root / "reference" / "counts.csv")
    types = pd.read_csv(root / "reference" / "cell_types.csv", index_col=0)["x"]
    types = types.reindex(counts.index)
    if types.isna().any():
        raise ValueError(f"{int(types.isna().sum())} reference cells have no cell type.")
    obs = pd.DataFrame(index=counts.index.astype(str))
    obs[LABELS_KEY] = pd.Categorical(types.astype(str).to_numpy())
    replicate = counts.index.str.split("_").str[0]
    obs[BATCH_KEY] = pd.Categorical(replicate)
    obs["rep"] = pd.Categorical(replicate.str.extract(r"(Rep\d+)", expand=False))
    reference = AnnData(X=counts.to_numpy(dtype=np.float32), obs=obs,
                        var=pd.DataFrame(index=counts.columns.astype(str)))

    scounts = _read_counts(root / "spatial" / "counts.csv")
    coords = pd.read_csv(root / "spatial" / "coords.csv", index_col=0).reindex(scounts.index)
    if coords.isna().any().any():
        raise ValueError("Some spots have no coordinates in coords.csv.")
    spatial = AnnData(X=scounts.to_numpy(dtype=np.float32),
                      obs=pd.DataFrame(index=scounts.index.astype(str)),
                      var=pd.DataFrame(index=scounts.columns.astype(str)))
    spatial.obsm["spatial"] = coords[["x", "y"]].to_numpy(dtype=float)
    return reference, spatial


def load_synthetic(seed: int = 0, **kwargs) -> tuple[AnnData, AnnData]:
    """The package's simulated tissue with ground truth.

    Returns ``(reference, spatial)`` from ``napari_spatialdl.datasets.synthetic_tissue``:
    ``spatial.obsm['true_proportions']`` (DataFrame) is the deconvolution truth,
    ``reference.obs['cell_type']`` and ``reference.obs['batch']`` the labels and batches.
    """
    from napari_spatialdl.datasets import synthetic_tissue

    out = synthetic_tissue(seed=seed, **kwargs)
    if isinstance(out, tuple):
        spatial, reference = _order_pair(out)
    else:  # an object with attributes
        spatial, reference = out.spatial, out.reference
    return reference, spatial


def _order_pair(pair: Sequence[AnnData]) -> tuple[AnnData, AnnData]:
    """(spatial, reference) from a pair in either order (spatial has obsm['spatial'])."""
    a, b = pair[0], pair[1]
    if "spatial" in a.obsm and "spatial" not in b.obsm:
        return a, b
    if "spatial" in b.obsm and "spatial" not in a.obsm:
        return b, a
    return (a, b) if "true_proportions" in a.obsm else (b, a)


def dense(X) -> np.ndarray:
    """A dense float64 copy of a matrix (numpy or scipy sparse)."""
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


# ------------------------------------------------------------------ deconvolution

def split_half(labels: pd.Series | np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split each label's rows 50/50: boolean masks (reference half, simulation half).

    With an odd count the reference half gets the extra row. A label with a single
    row is only in the reference half (it cannot appear in simulated spots).
    """
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    ref = np.zeros(len(labels), dtype=bool)
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        ref[idx[: (len(idx) + 1) // 2]] = True
    return ref, ~ref


def simulate_spots(reference: AnnData, labels_key: str = LABELS_KEY, n_spots: int = 400,
                   seed: int = 0, *, min_cells: int = 2, max_cells: int = 10,
                   max_types: int = 4) -> tuple[AnnData, AnnData, pd.DataFrame]:
    """Silver-standard spots made of real cells, with known cell-type fractions.

    Each cell type's cells are split 50/50 (seeded) into a reference half (given to
    the deconvolution method) and a simulation half (used to build spots). Each spot:
    ``n_cells ~ U{min_cells..max_cells}``, ``k ~ U{1..max_types}`` cell types
    (``k <= n_cells``), every chosen type gets one cell and the remaining cells are
    drawn uniformly among the chosen types; cells are drawn (with replacement across
    spots) from that type's simulation half; the spot's counts are the sum of its
    cells' counts; the truth is the fraction of cells of each type.

    Parameters
    ----------
    reference
        Annotated single cells with raw counts in ``X``.
    labels_key
        ``reference.obs`` column with the cell types.
    n_spots, seed
        Number of spots and the random seed (the split also uses ``seed``).
    min_cells, max_cells, max_types
        Range of cells per spot and the most cell types per spot.

    Returns
    -------
    reference_half
        The reference cells not used in any spot (a copy).
    spots
        ``n_spots`` x genes AnnData, integer counts (float32 dtype) in ``X``,
        ``obs['n_cells']``, the truth also in ``obsm['true_proportions']``, and
        ``obsm['spatial']`` on a square grid (the grid has no biological meaning:
        neighbouring spots are independent draws).
    truth
        DataFrame spots x cell types (all of the reference's types, rows sum to 1).
    """
    if labels_key not in reference.obs:
        raise KeyError(f"reference.obs has no column {labels_key!r}")
    labels = reference.obs[labels_key].astype(str).to_numpy()
    types = (list(reference.obs[labels_key].cat.categories)
             if isinstance(reference.obs[labels_key].dtype, pd.CategoricalDtype)
             else sorted(np.unique(labels)))
    types = [str(t) for t in types]
    ref_mask, sim_mask = split_half(labels, seed)
    X = reference.X
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    pools = {t: np.flatnonzero(sim_mask & (labels == t)) for t in types}
    usable = [t for t in types if len(pools[t])]
    rng = np.random.default_rng(seed + 1)

    counts = np.zeros((n_spots, reference.n_vars), dtype=np.float64)
    truth = np.zeros((n_spots, len(types)), dtype=np.float64)
    n_cells_per_spot = np.zeros(n_spots, dtype=int)
    col = {t: i for i, t in enumerate(types)}
    for s in range(n_spots):
        n_cells = int(rng.integers(min_cells, max_cells + 1))
        k = min(int(rng.integers(1, max_types + 1)), n_cells, len(usable))
        chosen = list(rng.choice(usable, size=k, replace=False))
        cell_types = chosen + list(rng.choice(chosen, size=n_cells - k, replace=True))
        cells = [int(rng.choice(pools[t])) for t in cell_types]
        rows = X[cells]
        counts[s] = np.asarray(rows.sum(axis=0)).ravel()
        for t in cell_types:
            truth[s, col[t]] += 1.0
        truth[s] /= n_cells
        n_cells_per_spot[s] = n_cells

    names = pd.Index([f"spot_{i}" for i in range(n_spots)])
    truth_df = pd.DataFrame(truth, index=names, columns=types)
    side = int(np.ceil(np.sqrt(n_spots)))
    grid = np.stack([np.arange(n_spots) % side, np.arange(n_spots) // side], axis=1).astype(float)
    spots = AnnData(X=counts.astype(np.float32), obs=pd.DataFrame({"n_cells": n_cells_per_spot}, index=names),
                    var=pd.DataFrame(index=reference.var_names.copy()))
    spots.obsm["spatial"] = grid * 100.0
    spots.obsm["true_proportions"] = truth_df.copy()
    reference_half = reference[ref_mask].copy()
    return reference_half, spots, truth_df


def _as_frame(pred, truth: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(pred, pd.DataFrame):
        pred = np.asarray(pred, dtype=float)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
        return pd.DataFrame(pred, index=truth.index, columns=truth.columns)
    pred = pred.copy()
    pred.index = pred.index.astype(str)
    pred.columns = pred.columns.astype(str)
    missing_rows = truth.index.difference(pred.index)
    if len(missing_rows):
        raise ValueError(f"prediction lacks {len(missing_rows)} spots, e.g. {list(missing_rows[:3])}")
    return pred.reindex(index=truth.index, columns=truth.columns, fill_value=0.0).astype(float)


def score_proportions(pred: pd.DataFrame | np.ndarray, truth: pd.DataFrame) -> dict[str, float]:
    """Compare predicted and true cell-type proportions.

    ``pred`` is aligned to ``truth`` by spot and cell type (types it lacks count as 0,
    extra types are dropped), negative values are clipped to 0 and each row is
    renormalised to sum to 1 (a row of zeros becomes uniform).

    Returns
    -------
    dict
        ``rmse``: sqrt of the mean squared error over all spot x type entries;
        ``jsd``: mean per-spot Jensen-Shannon divergence (base 2, in [0, 1]);
        ``pearson``: mean over cell types of the Pearson r between predicted and true
        proportions across spots (types whose truth is constant are skipped; a constant
        prediction for a type counts as r = 0).
    """
    truth = truth.astype(float)
    truth.index = truth.index.astype(str)
    truth.columns = truth.columns.astype(str)
    P = _as_frame(pred, truth).to_numpy().clip(min=0)
    T = truth.to_numpy()
    sums = P.sum(axis=1, keepdims=True)
    P = np.where(sums > 0, P / np.where(sums > 0, sums, 1.0), 1.0 / P.shape[1])
    rmse = float(np.sqrt(np.mean((P - T) ** 2)))
    jsd = float(np.mean(_js_divergence(P, T)))
    rs = []
    for j in range(T.shape[1]):
        if np.ptp(T[:, j]) == 0:
            continue
        rs.append(0.0 if np.ptp(P[:, j]) == 0 else float(np.corrcoef(P[:, j], T[:, j])[0, 1]))
    return {"rmse": rmse, "jsd": jsd, "pearson": float(np.mean(rs)) if rs else float("nan")}


def _js_divergence(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence, base 2 (0 = identical, 1 = disjoint)."""
    M = 0.5 * (P + Q)

    def kl(A, B):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(A > 0, A * np.log2(A / np.where(B > 0, B, 1.0)), 0.0)
        return terms.sum(axis=1)

    return np.clip(0.5 * kl(P, M) + 0.5 * kl(Q, M), 0.0, 1.0)


# -------------------------------------------------------------------- imputation

def mask_counts(X, fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hide ``fraction`` of the non-zero entries of a count matrix (set them to 0).

    Exactly ``round(fraction * nnz)`` entries are hidden, chosen uniformly (seeded).

    Returns
    -------
    masked
        Dense float32 copy of ``X`` with the hidden entries set to 0.
    mask
        Boolean array of ``X``'s shape, True where an entry was hidden.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    full = dense(X).astype(np.float32)
    nz = np.flatnonzero(full)
    n_hide = int(round(fraction * nz.size))
    rng = np.random.default_rng(seed)
    hide = rng.choice(nz, size=n_hide, replace=False)
    mask = np.zeros(full.shape, dtype=bool)
    mask.flat[hide] = True
    masked = full.copy()
    masked[mask] = 0.0
    return masked, mask


def score_imputation(truth, pred, mask: np.ndarray) -> dict[str, float]:
    """Score imputed values on the hidden entries only.

    ``truth`` holds the original counts, ``pred`` the method's expected counts (same
    shape, same per-cell scale as the input), ``mask`` the hidden entries.

    Returns
    -------
    dict
        ``pearson``: Pearson r of log1p(truth) vs log1p(pred) on the hidden entries
        (NaN when the prediction is constant there, e.g. no imputation);
        ``median_ae``: median absolute error of log1p(truth) vs log1p(pred) there.
    """
    mask = np.asarray(mask, dtype=bool)
    t = np.log1p(dense(truth)[mask])
    p = np.log1p(np.clip(dense(pred)[mask], 0, None))
    if t.size == 0:
        raise ValueError("The mask hides no entry.")
    r = float("nan") if np.ptp(p) == 0 or np.ptp(t) == 0 else float(np.corrcoef(t, p)[0, 1])
    return {"pearson": r, "median_ae": float(np.median(np.abs(t - p)))}


# --------------------------------------------------------------- gene prediction

def gene_folds(genes: Sequence[str], n_folds: int = 5, seed: int = 0) -> list[pd.Index]:
    """The genes split into ``n_folds`` folds of (nearly) equal size, at random (seeded).

    Each gene is in exactly one fold; the folds keep the genes' original order within them.
    """
    genes = pd.Index([str(g) for g in genes])
    if not 2 <= n_folds <= len(genes):
        raise ValueError(f"n_folds must be between 2 and the number of genes ({len(genes)}), got {n_folds}")
    order = np.random.default_rng(seed).permutation(len(genes))
    return [genes[np.sort(part)] for part in np.array_split(order, n_folds)]


def log_normalised(adata: AnnData) -> pd.DataFrame:
    """``log1p(counts / library * 1e4)`` of every observation and gene (library: all of its genes)."""
    X = dense(adata.X)
    lib = X.sum(axis=1, keepdims=True)
    values = np.log1p(X / np.where(lib > 0, lib, 1.0) * 1e4)
    return pd.DataFrame(values, index=adata.obs_names.astype(str), columns=adata.var_names.astype(str))


def score_gene_prediction(truth: pd.DataFrame, pred: pd.DataFrame) -> pd.DataFrame:
    """Per-gene Spearman and Pearson r of a prediction against the measured values.

    ``truth``: log-normalised measured values (:func:`log_normalised`), observations x genes;
    ``pred``: the predicted expression on a linear scale (e.g. per 10^4 transcripts), the same
    observations (aligned by name) and at least the same genes. Pearson r is computed between
    ``truth`` and ``log1p(pred)``; Spearman r is rank-based (any monotone scale gives the same).
    A gene whose measured values are constant is not scored (NaN); a constant prediction of a
    gene that varies scores r = 0.

    Returns
    -------
    DataFrame
        One row per gene of ``truth``: ``spearman``, ``pearson``.
    """
    from scipy.stats import rankdata

    pred = pred.copy()
    pred.index = pred.index.astype(str)
    pred.columns = pred.columns.astype(str)
    missing = truth.columns.difference(pred.columns)
    if len(missing):
        raise ValueError(f"the prediction lacks {len(missing)} genes, e.g. {list(missing[:3])}")
    P = pred.reindex(index=truth.index)[truth.columns].to_numpy(dtype=np.float64)
    if np.isnan(P).any():
        raise ValueError("the prediction lacks some observations or holds NaN")
    T = truth.to_numpy(dtype=np.float64)
    logP = np.log1p(np.clip(P, 0, None))

    def r(a: np.ndarray, b: np.ndarray) -> float:
        if np.ptp(b) == 0:
            return float("nan")
        if np.ptp(a) == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1])

    rows = {g: {"spearman": r(rankdata(P[:, j]), rankdata(T[:, j])), "pearson": r(logP[:, j], T[:, j])}
            for j, g in enumerate(truth.columns)}
    return pd.DataFrame.from_dict(rows, orient="index")


def summarise_gene_scores(per_gene: pd.DataFrame) -> dict[str, float]:
    """Mean and median over the scored genes of each column of :func:`score_gene_prediction`."""
    out: dict[str, float] = {}
    for col in ("spearman", "pearson"):
        v = per_gene[col].dropna()
        out[f"{col}_mean"] = float(v.mean()) if len(v) else float("nan")
        out[f"{col}_median"] = float(v.median()) if len(v) else float("nan")
    out["n_genes"] = int(per_gene["spearman"].notna().sum())
    return out


# ------------------------------------------------------------------- integration

def scib_available() -> bool:
    """True when scib-metrics (and its jax stack) imports."""
    try:
        import scib_metrics  # noqa: F401
        from scib_metrics.benchmark import Benchmarker  # noqa: F401
    except Exception:
        return False
    return True


def scib_total(adata: AnnData, embedding_keys: Sequence[str], batch_key: str = BATCH_KEY,
               label_key: str = LABELS_KEY, *, pre_integrated_key: str | None = None,
               use_scib: bool | None = None, n_jobs: int = 1) -> pd.DataFrame:
    """scIB scores of one or more embeddings of the same cells.

    With scib-metrics installed (``use_scib=None`` or True) this runs its
    ``Benchmarker`` with the default metrics and reads the unscaled
    (``min_max_scale=False``) aggregates: Total = 0.4 x Batch correction +
    0.6 x Bio conservation. Without it, a fallback with sklearn computes a subset of the
    same metrics (see :func:`scib_fallback`).

    Parameters
    ----------
    adata
        Cells with ``obs[batch_key]``, ``obs[label_key]`` and ``obsm[key]`` per embedding.
    embedding_keys
        ``obsm`` keys to score.
    pre_integrated_key
        ``obsm`` key of the unintegrated embedding (the PCR-comparison baseline of
        scib-metrics); default: computed as 50-component PCA of log-normalised ``X``
        (stored in ``obsm['X_pca_scib']`` of an internal copy).
    use_scib
        Force (True) or forbid (False) scib-metrics; None: use it when importable.

    Returns
    -------
    DataFrame
        One row per embedding; columns ``batch_correction``, ``bio_conservation``,
        ``total`` and the individual metrics. ``df.attrs['scorer']`` says which
        implementation ran (``'scib-metrics <version>'`` or ``'fallback (sklearn)'``).
    """
    keys = list(embedding_keys)
    for key in keys:
        if key not in adata.obsm:
            raise KeyError(f"adata.obsm has no {key!r}")
    if use_scib is None:
        use_scib = scib_available()
    if not use_scib:
        return scib_fallback(adata, keys, batch_key, label_key)

    import scib_metrics
    from scib_metrics.benchmark import Benchmarker

    ad = AnnData(X=dense(adata.X).astype(np.float32), obs=adata.obs[[batch_key, label_key]].copy())
    ad.obs[batch_key] = ad.obs[batch_key].astype(str).astype("category")
    ad.obs[label_key] = ad.obs[label_key].astype(str).astype("category")
    for key in keys:
        ad.obsm[key] = np.asarray(adata.obsm[key], dtype=np.float32)
    if pre_integrated_key is None:
        pre_integrated_key = "X_pca_scib"
        ad.obsm[pre_integrated_key] = log_pca(adata.X, n_comps=50)
    else:
        ad.obsm[pre_integrated_key] = np.asarray(adata.obsm[pre_integrated_key], dtype=np.float32)
    bm = Benchmarker(ad, batch_key=batch_key, label_key=label_key, embedding_obsm_keys=keys,
                     pre_integrated_embedding_obsm_key=pre_integrated_key, n_jobs=n_jobs,
                     progress_bar=False)
    bm.benchmark()
    res = bm.get_results(min_max_scale=False, clean_names=True)
    res = res.drop(index="Metric Type", errors="ignore").astype(float)
    res = res.rename(columns={"Batch correction": "batch_correction",
                              "Bio conservation": "bio_conservation", "Total": "total"})
    res = res.loc[keys]
    res.attrs["scorer"] = f"scib-metrics {scib_metrics.__version__}"
    return res


def log_pca(X, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """PCA of log1p(counts normalised to 10^4 per cell), genes scaled (the usual baseline)."""
    from sklearn.decomposition import PCA

    X = dense(X)
    lib = X.sum(axis=1, keepdims=True)
    Y = np.log1p(X / np.where(lib > 0, lib, 1.0) * 1e4)
    sd = Y.std(axis=0)
    Y = (Y - Y.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    Y = np.clip(Y, -10, 10)
    n = min(n_comps, Y.shape[0] - 1, Y.shape[1] - 1)
    return PCA(n_components=n, random_state=seed).fit_transform(Y).astype(np.float32)


def scib_fallback(adata: AnnData, embedding_keys: Sequence[str], batch_key: str = BATCH_KEY,
                  label_key: str = LABELS_KEY, n_neighbors: int = 15, seed: int = 0) -> pd.DataFrame:
    """scIB-style scores with sklearn only (used when scib-metrics is not installed).

    Bio conservation = mean of: NMI and ARI between k-means clusters (k = number of
    labels, 10 seeds, best NMI kept, as scib does with its resolution sweep) and the
    labels; cell-type silhouette rescaled to [0, 1] as ``(asw + 1) / 2``.
    Batch correction = mean of: batch silhouette per label (``1 - |asw|``, averaged over
    labels, as scib); graph connectivity (per label, the fraction of its cells in the
    largest connected component of the kNN graph restricted to that label, averaged);
    kNN batch mixing (mean normalised entropy of batch labels among each cell's
    ``n_neighbors`` neighbours, 1 = perfectly mixed; an iLISI stand-in).
    Total = 0.4 x batch + 0.6 x bio. The values are close to but not the same as
    scib-metrics' (which adds isolated labels, cLISI, kBET and PCR comparison).
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.cluster import KMeans
    from sklearn.metrics import (
        adjusted_rand_score,
        normalized_mutual_info_score,
        silhouette_samples,
    )
    from sklearn.neighbors import NearestNeighbors

    labels = adata.obs[label_key].astype(str).to_numpy()
    batches = adata.obs[batch_key].astype(str).to_numpy()
    n_labels = len(np.unique(labels))
    n_batches = len(np.unique(batches))
    rows = {}
    for key in embedding_keys:
        Z = np.asarray(adata.obsm[key], dtype=np.float64)
        best = (-1.0, 0.0)
        for s in range(10):
            cl = KMeans(n_clusters=n_labels, n_init=1, random_state=seed + s).fit_predict(Z)
            nmi = normalized_mutual_info_score(labels, cl)
            if nmi > best[0]:
                best = (nmi, adjusted_rand_score(labels, cl))
        nmi, ari = best
        asw_label = float((silhouette_samples(Z, labels).mean() + 1) / 2)
        # batch ASW within each label
        per_label = []
        for lab in np.unique(labels):
            idx = labels == lab
            if len(np.unique(batches[idx])) < 2 or idx.sum() < 3:
                continue
            s = silhouette_samples(Z[idx], batches[idx])
            per_label.append(float(np.mean(1 - np.abs(s))))
        asw_batch = float(np.mean(per_label)) if per_label else float("nan")
        # kNN graph
        k = min(n_neighbors, len(Z) - 1)
        nn = NearestNeighbors(n_neighbors=k + 1).fit(Z)
        graph = nn.kneighbors_graph(Z, mode="connectivity")
        conn = []
        for lab in np.unique(labels):
            idx = np.flatnonzero(labels == lab)
            sub = graph[idx][:, idx]
            _, comp = connected_components(sub, directed=False)
            conn.append(np.bincount(comp).max() / len(idx))
        graph_conn = float(np.mean(conn))
        _, nbrs = nn.kneighbors(Z)
        ent = []
        for row in nbrs[:, 1:]:
            _, cnt = np.unique(batches[row], return_counts=True)
            p = cnt / cnt.sum()
            ent.append(-(p * np.log(p)).sum() / np.log(min(n_batches, k)) if n_batches > 1 else 1.0)
        mixing = float(np.mean(ent))
        bio = float(np.mean([nmi, ari, asw_label]))
        batch = float(np.nanmean([asw_batch, graph_conn, mixing]))
        rows[key] = {"NMI": nmi, "ARI": ari, "ASW label": asw_label, "ASW batch": asw_batch,
                     "graph connectivity": graph_conn, "kNN batch mixing": mixing,
                     "batch_correction": batch, "bio_conservation": bio,
                     "total": 0.4 * batch + 0.6 * bio}
    res = pd.DataFrame.from_dict(rows, orient="index")
    res.attrs["scorer"] = "fallback (sklearn)"
    return res


# -------------------------------------------------------------------- annotation

def replicate_split(reference: AnnData, rep_key: str = "rep", train: Sequence[str] = TRAIN_REPS,
                    test: Sequence[str] = TEST_REPS) -> tuple[AnnData, AnnData]:
    """Train on replicates Rep1-Rep4, test on Rep5-Rep6 (copies)."""
    reps = reference.obs[rep_key].astype(str)
    tr, te = reps.isin(list(train)).to_numpy(), reps.isin(list(test)).to_numpy()
    if not tr.any() or not te.any():
        raise ValueError(f"Empty split: obs[{rep_key!r}] values are {sorted(reps.unique())}")
    return reference[tr].copy(), reference[te].copy()


def batch_split(reference: AnnData, batch_key: str = "batch",
                test_batches: Sequence[str] | None = None) -> tuple[AnnData, AnnData]:
    """Hold out batches: by default the last batch (sorted) is the test set."""
    batches = reference.obs[batch_key].astype(str)
    if test_batches is None:
        test_batches = [sorted(batches.unique())[-1]]
    te = batches.isin(list(test_batches)).to_numpy()
    if te.all() or not te.any():
        raise ValueError(f"Empty split for test batches {list(test_batches)}")
    return reference[~te].copy(), reference[te].copy()


def score_labels(true: Sequence, pred: Sequence) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted labels.

    Macro-F1 averages over the true labels' classes only: a prediction such as
    ``'unassigned'`` counts as wrong but is not a class of its own.
    """
    from sklearn.metrics import f1_score

    true = np.asarray(true).astype(str)
    pred = np.asarray(pred).astype(str)
    if true.shape != pred.shape:
        raise ValueError(f"{true.shape} true labels vs {pred.shape} predictions")
    classes = np.unique(true)
    return {"accuracy": float(np.mean(true == pred)),
            "macro_f1": float(f1_score(true, pred, labels=classes, average="macro", zero_division=0))}


def gene_panel(adata: AnnData, n_genes: int = PANEL_GENES, rows: np.ndarray | None = None) -> AnnData:
    """``adata`` restricted to its ``n_genes`` most variable genes (a copy): a targeted panel.

    The genes are the highly variable genes (Seurat flavour, ``napari_spatialdl.preprocessing``)
    of the rows ``rows`` (default: all); no label is used. For the annotation benchmark they are
    chosen on the training replicates only, so the held-out cells play no part in the panel.

    Parameters
    ----------
    adata
        Cells with raw counts in ``X``.
    n_genes
        Size of the panel.
    rows
        Boolean mask or indices of the cells the genes are chosen on.
    """
    from napari_spatialdl.preprocessing import highly_variable_genes

    X = adata.X if rows is None else adata.X[rows]
    genes = highly_variable_genes(X, n_genes)
    return adata[:, np.asarray(genes)].copy()
