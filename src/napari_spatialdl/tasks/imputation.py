"""Imputation / denoising: the expected count of every gene in every cell or spot.

The task's spec (inputs, output), its one ``prepare`` and its one ``write`` live here; the
methods only compute. Methods: ``spatialdl`` (the native count autoencoder,
:mod:`napari_spatialdl.models.impute`) and ``knn`` (a baseline: kNN smoothing in PCA space); the
reference backend MAGIC is in :mod:`.backends.magic`. Every method writes
``adata.layers['spatialdl_imputed']`` (same shape as ``adata``, on the count scale of each cell:
genes without any count get 0) and the run metadata.

Large data (the native method): a dense layer would be ``n_obs x n_vars`` floats (50 GB for a
Visium HD slide), so above :data:`DENSE_LIMIT` values (``n_obs * n_vars > 5e7``, 200 MB), or
whenever ``genes=`` or ``dense=False`` is given, ``spatialdl`` writes instead a compact
representation: ``obsm['spatialdl_imputed_latent']`` (the bottleneck, ``n x 16``),
``obsm['spatialdl_imputed_offset']`` (each observation's log normaliser) and
``uns['spatialdl_imputed_decoder']`` (the decoder's weights and gene names), plus the genes asked
for in ``obsm['spatialdl_imputed_genes']`` (a DataFrame). :func:`reconstruct` decodes any gene
from it on demand; ``dense=True`` always writes the full layer.

``prepare`` drops the genes without any count for every method (they carry no information and
are written back as 0). A ``reference`` (an scRNA-seq dataset with genes to predict) is only
taken by methods registered with ``needs=("reference",)``; the denoisers refuse it.

Gene prediction from a reference (the methods of :mod:`.gene_prediction` and the Tangram/gimVI
backends): with a reference, ``prepare`` also finds the genes both datasets share (with counts in
both) and cuts both datasets' counts to them; :meth:`ImputationInputs.prediction_targets` checks
the genes a method is asked to predict (its ``genes`` parameter). The result is
``obsm['spatialdl_predicted_genes']`` (a DataFrame observations x predicted genes, expression per
10^4 transcripts on the reference's scale), or, when that table would exceed
:data:`DENSE_LIMIT` values (or with ``dense=False``), a compact representation that reconstructs
any gene on demand: ``obsm['spatialdl_predicted_genes_factors']`` (observations x r) and
``uns['spatialdl_predicted_genes_loadings']`` (genes x r, the link and the scale); see
:func:`.gene_prediction.reconstruct`.
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

from .._constants import IMPUTED_LAYER, PREDICTED_GENES_KEY
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
    "DENSE_LIMIT",
    "MIN_OBSERVATIONS",
    "MIN_SHARED_GENES",
    "PREDICTION_SCALE",
    "SPEC",
    "ImputationInputs",
    "ImputationOutput",
    "impute_knn",
    "impute_spatialdl",
    "knn_smooth",
    "prepare",
    "reconstruct",
    "spatial_neighbours",
    "write",
]

#: fewest observations an imputation needs
MIN_OBSERVATIONS = 3
#: above this many values (n_obs x n_vars) the native method writes the compact representation
#: instead of a dense layer, unless ``dense=True``
DENSE_LIMIT = 50_000_000
#: fewest genes with counts in both the data and the reference to predict genes from the reference
MIN_SHARED_GENES = 10
#: predicted genes are expression per this many transcripts of a reference cell (its whole library)
PREDICTION_SCALE = 1e4


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
    # for gene prediction (set only with a reference): the genes with counts in both datasets
    shared_genes: pd.Index = field(default_factory=lambda: pd.Index([], dtype=object))  # adata's order
    spatial_shared: Any = None  # observations x shared genes (CSR stays CSR)
    reference_shared: Any = None  # kept reference cells x shared genes
    reference_library: np.ndarray = field(default_factory=lambda: np.zeros(0))  # over all its genes
    reference_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def reference_column(self, name: str) -> np.ndarray | None:
        """A role-annotated column parameter of the reference (e.g. ``labels_key``), kept cells only.

        Parameters
        ----------
        name
            The method parameter's name.

        Returns
        -------
        np.ndarray or None
            Object array aligned with ``reference_shared`` (None/NaN where missing); None when the
            parameter was not given.
        """
        values = self.columns.get(name)
        return None if values is None else np.asarray(values, dtype=object)[self.reference_rows]

    def prediction_targets(self, genes: str | list[str], include_measured: bool = False
                           ) -> tuple[pd.Index, Any]:
        """The genes to predict, checked, and the kept reference cells' counts of them.

        Parameters
        ----------
        genes
            ``"all"`` (every reference gene that ``adata`` lacks; with ``include_measured``,
            every reference gene), a list of names, or text with comma-separated names.
        include_measured
            Allow (and for ``"all"``, add) genes that ``adata`` measures: they are re-estimated
            from the reference.

        Returns
        -------
        genes, counts
            Reference gene names in the order asked (repeats once), and reference (kept cells) x
            those genes (CSR stays CSR).

        Raises
        ------
        InputError
            An empty list, names that are not text, genes the reference lacks (named, with the
            closest reference names), genes ``adata`` measures without ``include_measured``, or
            nothing to predict.
        """
        if self.reference is None:
            raise InputError("Genes are predicted from a reference: pass reference= (a scRNA-seq AnnData).")
        reference, measured = self.reference, self.data.var_names
        asked = _genes_asked(genes)
        if asked is None:
            targets = (reference.var_names if include_measured
                       else reference.var_names[~reference.var_names.isin(measured)])
            if len(targets) == 0:
                raise InputError(
                    f"Every one of the {reference.n_vars} genes of reference is measured in adata: there is no "
                    "gene to predict. Pass include_measured=True to re-estimate the measured genes from the "
                    "reference, or use a reference with more genes.")
        else:
            unknown = [g for g in asked if g not in reference.var_names]
            if unknown:
                listed = ", ".join(f"{g!r}{_suggest(g, reference.var_names)}" for g in unknown[:8])
                more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
                raise InputError(
                    f"genes: {len(unknown)} of the {len(asked)} genes to predict {'is' if len(unknown) == 1 else 'are'} "
                    f"not in reference ({reference.n_vars} genes): {listed}{more}. A gene can only be predicted "
                    "from a reference that measures it: check the names against reference.var_names (symbols "
                    "vs Ensembl IDs, species, case).")
            already = [g for g in asked if g in measured]
            if already and not include_measured:
                listed = ", ".join(map(repr, already[:8])) + (f" and {len(already) - 8} more" if len(already) > 8 else "")
                raise InputError(
                    f"genes: {listed} {'is' if len(already) == 1 else 'are'} measured in adata already. Pass "
                    "include_measured=True to re-estimate measured genes from the reference, or leave "
                    f"{'it' if len(already) == 1 else 'them'} out of genes.")
            targets = pd.Index(asked)
        targets = pd.Index(targets).astype(str)
        counts = V.subset_counts(self.reference_counts, reference.var_names.get_indexer(targets),
                                 self.reference_rows)
        return targets, counts

    def prediction_dense(self, n_genes: int, dense: bool | str, *, compact: bool = True,
                         method: str = "") -> bool:
        """Whether to write the predicted genes as a table (True) or as factors x loadings.

        Parameters
        ----------
        n_genes
            Number of genes predicted.
        dense
            The method's ``dense`` parameter: True, False or ``"auto"`` (a table up to
            :data:`DENSE_LIMIT` values).
        compact
            Whether the method can write the compact representation.
        method
            The method's name, for the messages.

        Raises
        ------
        InputError
            ``dense`` not True/False/'auto'; a method without a compact representation asked for
            one (``dense=False``), or whose table would exceed :data:`DENSE_LIMIT` under ``"auto"``.
        """
        if isinstance(dense, str) and dense != "auto" or not isinstance(dense, bool | str):
            raise InputError(f"dense must be True, False or 'auto', got {dense!r}.")
        n_values = self.data.n_obs * int(n_genes)
        if dense == "auto":
            dense = n_values <= DENSE_LIMIT
            if not dense and not compact:
                raise InputError(
                    f"The {method} prediction of {n_genes} genes for {self.data.n_obs} observations is a table of "
                    f"{n_values:,} values ({n_values * 4 / 1e9:.1f} GB), above the {DENSE_LIMIT:,} that are "
                    f"written without asking, and {method} has no compact representation. Pass dense=True to "
                    "write it anyway, predict fewer genes (genes=[...]), or use method='transfer', which "
                    "writes factors x loadings that reconstruct any gene on demand.")
        elif not dense and not compact:
            raise InputError(f"{method} writes the predicted genes as a table only: pass dense=True or 'auto', or "
                             "use method='transfer' or 'knn_reference' for the compact representation.")
        return bool(dense)

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
    """The imputed expected counts, observations x the prepared inputs' ``genes``.

    A method that writes the compact representation leaves ``imputed`` None and sets ``latent``
    (n x d), ``offset`` (n,), ``decoder`` (:meth:`~napari_spatialdl.models.impute.ImputeModel.
    decoder_state`) and, for the genes asked for, ``genes_imputed`` (a DataFrame, n x genes).
    """

    imputed: np.ndarray | None = None
    latent: np.ndarray | None = None
    offset: np.ndarray | None = None
    decoder: dict[str, Any] | None = None
    genes_imputed: pd.DataFrame | None = None
    #: genes predicted from a reference: a DataFrame observations x genes (per PREDICTION_SCALE)
    predicted: pd.DataFrame | None = None
    #: or compact: prediction = link(factors @ loadings.T) * PREDICTION_SCALE
    prediction_factors: Any = None  # observations x r (dense or CSR)
    prediction_loadings: Any = None  # prediction_genes x r (dense or CSR)
    prediction_genes: pd.Index | None = None
    prediction_link: str = "linear"  # "linear" or "exp"


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
        ref_X = sp.csr_matrix(ref_X) if sp.issparse(ref_X) else np.asarray(ref_X)
    n_used, n_dropped = int(keep.sum()), int((~keep).sum())
    info: dict[str, Any] = {
        "n_genes_used": n_used,
        "n_genes_dropped": n_dropped,
        "genes_message": (f"{n_used} of {adata.n_vars} genes modelled; {n_dropped} genes without any "
                          "count were left out (imputed as 0)."
                          if n_dropped else f"All {adata.n_vars} genes modelled."),
    }
    out = ImputationInputs(
        data=adata, device=device, seed=seed, info=info, counts=X, keep=keep, genes=genes,
        library=library_sizes(X), layer=layer, reference=reference, reference_counts=ref_X,
        reference_layer=reference_layer)
    if reference is not None:
        _prepare_reference(out)
    return out


def _prepare_reference(out: ImputationInputs) -> None:
    """The shared genes (with counts in both) and both datasets' counts of them, into ``out``."""
    adata, reference, ref_X = out.data, out.reference, out.reference_counts
    V.shared_genes(adata, reference, names=("adata", "reference"), min_genes=MIN_SHARED_GENES)
    cols = reference.var_names.get_indexer(out.genes)  # out.genes: adata's genes with counts
    in_ref = cols >= 0
    has_counts = np.zeros(len(out.genes), dtype=bool)
    has_counts[in_ref] = np.asarray((ref_X[:, cols[in_ref]] != 0).sum(axis=0)).ravel() > 0
    shared = out.genes[in_ref & has_counts]
    if len(shared) < MIN_SHARED_GENES:
        raise InputError(
            f"Only {len(shared)} genes have counts in both adata and reference; predicting genes from the "
            f"reference needs at least {MIN_SHARED_GENES}. Check that both use the same gene identifiers and "
            "hold raw counts of those genes.")
    ref_shared = V.subset_counts(ref_X, reference.var_names.get_indexer(shared))
    rows = np.flatnonzero(V.row_sums(ref_shared) > 0)
    if len(rows) < MIN_OBSERVATIONS:
        raise InputError(f"Only {len(rows)} cells of reference have counts in the {len(shared)} genes shared with "
                         f"adata; at least {MIN_OBSERVATIONS} are needed.")
    out.shared_genes = shared
    out.reference_rows = rows.astype(np.int64)
    out.reference_shared = ref_shared[rows]
    out.reference_library = V.row_sums(ref_X)[rows].astype(np.float64)
    out.spatial_shared = V.subset_counts(out.counts, out.genes.get_indexer(shared))
    out.info.update(n_genes_shared=len(shared), n_reference_cells=len(rows),
                    genes_message=(f"{len(shared)} genes have counts in both adata ({adata.n_vars} genes) and "
                                   f"reference ({reference.n_vars} genes): the prediction reads these."))
    if reference.n_obs > len(rows):
        out.info["n_reference_cells_dropped"] = int(reference.n_obs - len(rows))
    n_empty = int((V.row_sums(out.spatial_shared) == 0).sum())
    if n_empty:
        out.info["n_observations_without_shared_counts"] = n_empty


def _genes_asked(genes: Any) -> list[str] | None:
    """The ``genes`` parameter as names, or None for ``"all"`` (text: comma-separated names)."""
    if isinstance(genes, str):
        if genes.strip().lower() == "all":
            return None
        names = genes.split(",")
    elif isinstance(genes, list | tuple | pd.Index | np.ndarray):
        names = list(genes)
        bad = [g for g in names if not isinstance(g, str)]
        if bad:
            raise InputError(f"genes must be gene names (text), got {bad[0]!r} ({type(bad[0]).__name__}) among "
                             "them. Pass e.g. genes=['Gad1', 'Sst'], or genes='all'.")
    else:
        raise InputError(f"genes must be 'all' or a list of gene names, got {type(genes).__name__}.")
    names = [g.strip() for g in names if g.strip()]
    if not names:
        raise InputError("genes is empty: name the genes to predict (e.g. genes=['Gad1', 'Sst']), or pass "
                         "genes='all' for every reference gene that adata lacks.")
    return list(dict.fromkeys(names))


def _suggest(name: str, names: pd.Index) -> str:
    """' (did you mean ...?)' with the closest of ``names`` (case first), or ''."""
    import difflib

    by_case = {str(n).lower(): str(n) for n in names}
    if name.lower() in by_case:
        return f" (did you mean {by_case[name.lower()]!r}?)"
    close = difflib.get_close_matches(name, [str(n) for n in names], n=2, cutoff=0.7)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def write(out: AnnData, prepared: ImputationInputs, output: ImputationOutput, keys: dict[str, str]) -> None:
    """The imputed counts as a dense float32 layer of ``out``'s shape (genes without counts: 0),
    or the compact representation (latent, offset, decoder; the genes asked for as a DataFrame)."""
    if output.imputed is not None:
        imputed = np.zeros(out.shape, dtype=np.float32)
        imputed[:, prepared.keep] = np.asarray(output.imputed, dtype=np.float32)
        out.layers[keys["imputed"]] = imputed
    if output.latent is not None:
        out.obsm[keys["latent"]] = np.asarray(output.latent, dtype=np.float32)
        out.obsm[keys["offset"]] = np.asarray(output.offset, dtype=np.float32).reshape(-1, 1)
        out.uns[keys["decoder"]] = {
            **output.decoder, "genes": np.asarray(prepared.genes, dtype=object),
            "latent_key": keys["latent"], "offset_key": keys["offset"]}
    if output.genes_imputed is not None:
        frame = output.genes_imputed.copy()
        frame.index = out.obs_names
        out.obsm[keys["genes_imputed"]] = frame
    if output.predicted is not None:
        frame = pd.DataFrame(np.asarray(output.predicted, dtype=np.float32), index=out.obs_names.copy(),
                             columns=pd.Index(output.predicted.columns).astype(str))
        out.obsm[keys["predicted"]] = frame
    if output.prediction_factors is not None:
        factors, loadings = output.prediction_factors, output.prediction_loadings
        out.obsm[keys["prediction_factors"]] = (sp.csr_matrix(factors, dtype=np.float32) if sp.issparse(factors)
                                                else np.asarray(factors, dtype=np.float32))
        out.uns[keys["prediction_loadings"]] = {
            "genes": np.asarray(pd.Index(output.prediction_genes).astype(str), dtype=object),
            "loadings": (sp.csr_matrix(loadings, dtype=np.float32) if sp.issparse(loadings)
                         else np.asarray(loadings, dtype=np.float32)),
            "link": str(output.prediction_link), "scale": float(PREDICTION_SCALE),
            "factors_key": keys["prediction_factors"]}


def reconstruct(adata: AnnData, genes: str | list[str], key: str = IMPUTED_LAYER) -> pd.DataFrame:
    """Decode the imputed expected counts of ``genes`` from a compact imputation, on demand.

    Parameters
    ----------
    adata
        An AnnData the native imputation wrote its compact representation into (see the module
        docstring; also after ``write_h5ad``/``read_h5ad``).
    genes
        One gene name or a list, among ``adata.var_names``. Genes without any count in the data
        the model was fitted on are 0 (as in the dense layer).
    key
        The imputation's key: ``key_added`` of the run, or the default ``'spatialdl_imputed'``;
        the decoder is ``adata.uns[key + '_decoder']``.

    Returns
    -------
    pandas.DataFrame
        float32 expected counts, ``adata.obs_names`` x ``genes``; equal (up to float32 round-off)
        to the columns of the dense layer ``dense=True`` writes.

    Raises
    ------
    InputError
        No compact imputation under ``key``, or genes that are not in ``adata.var_names``.
    """
    from ..models.impute import decode_genes

    wanted = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    name = f"{key}_decoder"
    decoder = adata.uns.get(name)
    if not isinstance(decoder, dict) or "head_weight" not in decoder:
        raise InputError(f"adata.uns has no compact imputation {name!r}: run "
                         f"sdl.impute(adata, method='spatialdl', dense=False) first, or pass key= the "
                         "run's key_added.")
    missing = [g for g in wanted if g not in adata.var_names]
    if missing:
        raise InputError(f"genes {missing[:5]} are not in adata.var_names: pass genes measured in adata.")
    model_genes = pd.Index([str(g) for g in np.asarray(decoder["genes"]).ravel()])
    for k in (decoder["latent_key"], decoder["offset_key"]):
        if k not in adata.obsm:
            raise InputError(f"adata.obsm[{k!r}] (part of the compact imputation {name!r}) is missing: "
                             "run the imputation again.")
    latent, offset = np.asarray(adata.obsm[decoder["latent_key"]]), np.asarray(adata.obsm[decoder["offset_key"]])
    position = model_genes.get_indexer(wanted)
    values = np.zeros((adata.n_obs, len(wanted)), dtype=np.float32)
    modelled = position >= 0
    if modelled.any():
        values[:, modelled] = decode_genes(latent, offset, decoder, position[modelled])
    return pd.DataFrame(values, index=adata.obs_names.copy(), columns=wanted)


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
        Output("latent", "obsm", f"{IMPUTED_LAYER}_latent", suffix="_latent", task_record=True,
               doc="compact imputation: bottleneck values (n x d), when no dense layer is written"),
        Output("offset", "obsm", f"{IMPUTED_LAYER}_offset", suffix="_offset",
               doc="compact imputation: log normaliser of each observation (n x 1)"),
        Output("decoder", "uns", f"{IMPUTED_LAYER}_decoder", suffix="_decoder",
               doc="compact imputation: decoder weights and genes (reconstruct() decodes any gene)"),
        Output("genes_imputed", "obsm", f"{IMPUTED_LAYER}_genes", suffix="_genes",
               doc="expected counts of the genes asked for (genes=), a DataFrame n x genes"),
        Output("predicted", "obsm", PREDICTED_GENES_KEY, suffix="_predicted",
               doc="genes predicted from a reference: a DataFrame n x genes, expression per 10^4 transcripts "
                   "(the reference's scale)"),
        Output("prediction_factors", "obsm", f"{PREDICTED_GENES_KEY}_factors", suffix="_predicted_factors",
               doc="compact gene prediction: factors per observation (instead of the table when it is too large)"),
        Output("prediction_loadings", "uns", f"{PREDICTED_GENES_KEY}_loadings", suffix="_predicted_loadings",
               doc="compact gene prediction: loadings per gene, link and scale (gene_prediction.reconstruct)"),
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
                     batch_size: int = 128, lr: float = 5e-3, patience: int = 10,
                     genes: str | list[str] | None = None,
                     dense: bool | Literal["auto"] = "auto") -> TaskGen:
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
    genes
        Genes to write imputed values for (a name, a comma-separated text or a list), as
        ``obsm['spatialdl_imputed_genes']``; the compact representation is written too, from which
        :func:`reconstruct` decodes any other gene.
    dense
        ``True``: the full dense layer ``layers['spatialdl_imputed']`` (n_obs x n_vars floats).
        ``False``: the compact representation only (+ ``genes``). ``"auto"``: dense when no
        ``genes`` are asked for and ``n_obs * n_vars <= 5e7`` (200 MB), else compact.

    Returns
    -------
    ImputationOutput
        The expected counts (or the compact representation); ``model`` is the trained
        :class:`~napari_spatialdl.models.impute.ImputeModel`.
    """
    check_positive(hidden=hidden, bottleneck=bottleneck, max_epochs=max_epochs, batch_size=batch_size, lr=lr)
    if not 0 <= mask_rate < 1:
        raise InputError(f"mask_rate must be in [0, 1), got {mask_rate}.")
    if patience < 0:
        raise InputError(f"patience must be >= 0, got {patience}.")
    wanted = _wanted_genes(genes, data)
    if dense == "auto":
        dense = wanted is None and data.data.n_obs * data.data.n_vars <= DENSE_LIMIT
    neighbours = data.neighbours(n_neighbors) if spatial else None
    model = ImputeModel(len(data.genes), hidden=(hidden, bottleneck, hidden), likelihood=likelihood,
                        spatial=spatial, mask_rate=mask_rate, genes=data.genes)
    config = TrainingConfig(max_epochs=max_epochs, batch_size=batch_size, lr=lr, patience=patience,
                            seed=data.seed, device=data.device)
    history = yield from model.fit_iter(data.counts, neighbours, config)
    info: dict[str, Any] = {"device": str(data.device), "dense": bool(dense)}
    if dense:
        values = model.predict(data.counts, neighbours, device=data.device)
        return ImputationOutput(imputed=values, model=model, history=history, info=info)
    yield ProgressEvent(history.n_epochs, max_epochs, 0, message="encoding the compact representation",
                        stage="encode")
    latent, offset = model.encode(data.counts, neighbours, device=data.device)
    frame = None
    if wanted:
        position = data.genes.get_indexer(wanted)
        values = np.zeros((data.data.n_obs, len(wanted)), dtype=np.float32)
        if (position >= 0).any():
            values[:, position >= 0] = model.predict(data.counts, neighbours, device=data.device,
                                                     columns=position[position >= 0])
        frame = pd.DataFrame(values, index=data.data.obs_names.copy(), columns=wanted)
    info["dense_message"] = ("compact representation written (latent, offset, decoder): "
                             "napari_spatialdl.tasks.imputation.reconstruct(adata, genes) decodes any gene")
    return ImputationOutput(latent=latent, offset=offset, decoder=model.decoder_state(), genes_imputed=frame,
                            model=model, history=history, info=info)


def _wanted_genes(genes: str | list[str] | None, data: ImputationInputs) -> list[str] | None:
    """The ``genes=`` argument as a list of names of ``adata.var_names`` (None when not given)."""
    if genes is None:
        return None
    wanted = [g.strip() for g in genes.split(",")] if isinstance(genes, str) else [str(g) for g in genes]
    wanted = [g for g in wanted if g]
    if not wanted:
        raise InputError("genes is empty: name at least one gene of adata.var_names, or leave genes out.")
    missing = [g for g in wanted if g not in data.data.var_names]
    if missing:
        raise InputError(f"genes {missing[:5]} are not in adata.var_names: pass genes measured in adata.")
    return list(dict.fromkeys(wanted))


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
