"""Offline synthetic tissue: a Visium-like section with an H&E image and a matching scRNA-seq reference.

The generative model (all of it seeded, nothing downloaded):

1. **Anatomy.** A brain-section-like outline with cortical bands (L1, L2-3, L5-6), white matter,
   a striatum with a ventricle-like hole and a hippocampus-like arc (:mod:`._geometry`), rendered
   as an H&E image (:mod:`._image`).
2. **Spots.** A hexagonal Visium lattice (100 µm pitch = ``SPOT_PITCH_FULLRES`` full-resolution
   pixels, spot diameter 0.55 x pitch) over the tissue; coordinates in full-resolution pixels.
3. **Cell types.** Each type has an expression program: a log-normal baseline per gene, a few
   strong marker genes, a broad type-specific modulation, a neuronal module shared by the neurons
   and high housekeeping genes.
4. **Truth.** Each region has a cell-type composition; a spot's composition blends those of the
   regions around it (smooth at borders), is modulated by a smooth random field and drawn from a
   Dirichlet around it (small fractions set to zero); the number of cells per spot follows the
   region's cell density.
5. **Counts.** Negative binomial (gamma-Poisson) with gene-specific dispersion; log-normal
   library sizes; a gene-specific platform effect between the spots and the reference; in the
   reference, gene-specific batch effects and batch-specific depth.
6. **Sections** (``n_spot_batches`` > 1, off by default). The spots are split into side-by-side
   strips of the lattice (left and right halves for two), each sequenced as its own library: a
   gene-specific effect and a depth of its own per section (``obs['section']``), so that the
   spots alone have a batch structure to integrate, with the truth kept beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from ._geometry import REGIONS, Geometry
from ._image import render_section

#: Visium: spot centres 100 µm apart; at ~0.62 µm per full-resolution pixel that is ~160 px
SPOT_PITCH_FULLRES = 160.0
SPOT_DIAMETER_FULLRES = 0.55 * SPOT_PITCH_FULLRES
MICRONS_PER_PIXEL = 100.0 / SPOT_PITCH_FULLRES
LIBRARY_ID = "synthetic_tissue"

# name, marker genes, relative RNA content per cell, neuron?
_CELL_TYPES: tuple[tuple[str, tuple[str, ...], float, bool], ...] = (
    ("Excitatory L2-3", ("Cux2", "Otof", "Stard8", "Rasgrf2", "Calb1"), 1.3, True),
    ("Excitatory L5-6", ("Fezf2", "Bcl11b", "Foxp2", "Tle4", "Syt6"), 1.5, True),
    ("Oligodendrocyte", ("Mbp", "Plp1", "Mog", "Mobp", "Cldn11"), 0.9, False),
    ("Astrocyte", ("Gfap", "Aqp4", "Aldh1l1", "Slc1a3", "Gja1"), 0.8, False),
    ("Medium spiny neuron", ("Ppp1r1b", "Penk", "Drd1", "Drd2", "Tac1"), 1.2, True),
    ("Hippocampal pyramidal", ("Neurod6", "Wfs1", "Fibcd1", "Zbtb20", "Spink8"), 1.4, True),
    ("Microglia", ("Cx3cr1", "P2ry12", "Tmem119", "Csf1r", "C1qa"), 0.6, False),
    ("Endothelial", ("Cldn5", "Flt1", "Pecam1", "Ly6c1", "Slco1a4"), 0.5, False),
    ("Inhibitory interneuron", ("Gad1", "Gad2", "Slc32a1", "Pvalb", "Sst"), 1.1, True),
)
NAMED_CELL_TYPES: tuple[str, ...] = tuple(t[0] for t in _CELL_TYPES)

# composition of each region (rows: REGIONS) over the named cell types (columns: _CELL_TYPES)
_COMPOSITION = np.array([
    # L23   L56   Olig  Astro  MSN   CA    Micro  Endo  Inh
    [0.08, 0.00, 0.04, 0.38, 0.00, 0.00, 0.16, 0.16, 0.18],  # Cortex L1
    [0.58, 0.04, 0.04, 0.12, 0.00, 0.00, 0.06, 0.06, 0.10],  # Cortex L2-3
    [0.10, 0.50, 0.12, 0.09, 0.00, 0.00, 0.06, 0.05, 0.08],  # Cortex L5-6
    [0.00, 0.02, 0.70, 0.13, 0.00, 0.00, 0.09, 0.06, 0.00],  # White matter
    [0.00, 0.00, 0.12, 0.11, 0.60, 0.00, 0.06, 0.05, 0.06],  # Striatum
    [0.02, 0.00, 0.05, 0.12, 0.00, 0.62, 0.06, 0.05, 0.08],  # Hippocampus
])
#: mean number of cells under a spot, per region
_CELLS_PER_SPOT = np.array([3.0, 11.0, 8.0, 5.0, 7.0, 14.0])

_HOUSEKEEPING = ("Malat1", "Actb", "Gapdh", "Tpt1", "Eef1a1", "B2m", "Rpl13a", "Rps18", "Ubb",
                 "Hsp90ab1", "Ppia", "Tubb5")
_NEURONAL = ("Snap25", "Syt1", "Rbfox3", "Stmn2")

REGION_COLORS = ("#f4a582", "#d6604d", "#b2182b", "#92c5de", "#4393c3", "#1b7837")
_SECTION_COLORS = ["#e7298a", "#66a61e", "#e6ab02", "#7570b3", "#a6761d", "#1b9e77"]
_TYPE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
                "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")


def _type_colors(n: int) -> list[str]:
    if n <= len(_TYPE_COLORS):
        return list(_TYPE_COLORS[:n])
    import matplotlib

    cmap = matplotlib.colormaps["hsv"]
    return [matplotlib.colors.to_hex(cmap(i / n)) for i in range(n)]


def _barcodes(rng: np.random.Generator, n: int, suffix: str = "-1") -> list[str]:
    """Unique 16-nt barcodes like 10x's (``AAACAAGTATCTCCCA-1``)."""
    letters = np.array(list("ACGT"))
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        codes = rng.integers(0, 4, size=(n - len(out), 16))
        for row in letters[codes]:
            bc = "".join(row) + suffix
            if bc not in seen:
                seen.add(bc)
                out.append(bc)
    return out


def _nb(rng: np.random.Generator, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Negative binomial draws with mean ``mu`` and inverse dispersion ``theta`` (gamma-Poisson)."""
    lam = rng.gamma(shape=theta, scale=mu / theta)
    return rng.poisson(lam)


def _redraw_empty(rng: np.random.Generator, counts: np.ndarray, mu: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Redraw the (rare) rows with no counts at all: real count matrices are filtered for them."""
    for _ in range(100):
        empty = counts.sum(axis=1) == 0
        if not empty.any():
            break
        counts[empty] = _nb(rng, mu[empty], np.broadcast_to(theta, mu.shape)[empty])
    return counts


# ---------------------------------------------------------------------------------------------
# layout: hexagonal lattice over the section
# ---------------------------------------------------------------------------------------------
class _Layout:
    """Full-resolution frame (pixels) and the map to section coordinates."""

    def __init__(self, geom: Geometry, n_spots: int) -> None:
        area, (umin, umax, vmin, vmax) = geom.tissue_fraction_and_bbox()
        self.geom = geom
        pitch = SPOT_PITCH_FULLRES
        # full-resolution pixels per section unit, so that about n_spots spots fit
        k = np.sqrt(n_spots * pitch**2 * np.sqrt(3) / 2 / area)
        for _ in range(50):
            self._frame(k, umin, umax, vmin, vmax)
            xy, rows, cols, margin = self._lattice()
            if len(xy) >= n_spots:
                break
            k *= np.sqrt(n_spots / max(len(xy), 1)) * 1.002 + 1e-3
        else:  # pragma: no cover - the loop converges in a few steps
            raise RuntimeError("could not fit the spot lattice to the section")
        # drop the surplus spots nearest to the tissue edge
        keep = np.sort(np.argsort(-margin, kind="stable")[:n_spots])
        self.xy, self.rows, self.cols = xy[keep], rows[keep], cols[keep]

    def _frame(self, k: float, umin: float, umax: float, vmin: float, vmax: float) -> None:
        pad = 5 * SPOT_PITCH_FULLRES
        self.k = k
        self.ox = pad - umin * k
        self.oy = pad - vmin * k
        self.width = (umax - umin) * k + 2 * pad
        self.height = (vmax - vmin) * k + 2 * pad

    def to_section(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x - self.ox) / self.k, (y - self.oy) / self.k

    def _lattice(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        pitch = SPOT_PITCH_FULLRES
        dy = pitch * np.sqrt(3) / 2
        n_rows = int((self.height - 2 * pitch) // dy) + 1
        n_cols = int((self.width - 2 * pitch) // (pitch / 2)) + 1
        rr, cc = np.mgrid[0:n_rows, 0:n_cols]
        on = (rr % 2) == (cc % 2)  # Visium: even rows hold even columns
        rr, cc = rr[on], cc[on]
        x = pitch + cc * pitch / 2
        y = pitch + rr * dy
        # a spot counts as on the tissue when its centre and a ring around it are
        inside = np.ones(len(x), dtype=bool)
        ring = 0.6 * SPOT_DIAMETER_FULLRES / 2
        for ang in [None, *np.linspace(0, 2 * np.pi, 6, endpoint=False)]:
            px = x if ang is None else x + ring * np.cos(ang)
            py = y if ang is None else y + ring * np.sin(ang)
            inside &= self.geom.classify(*self.to_section(px, py)).inside
        margin = self.geom.classify(*self.to_section(x, y)).margin
        return np.column_stack([x, y])[inside], rr[inside], cc[inside], margin[inside]


# ---------------------------------------------------------------------------------------------
# expression programs
# ---------------------------------------------------------------------------------------------
def _cell_types(n_cell_types: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, region composition (regions x types), RNA content and neuron flag of the types."""
    n_named = min(n_cell_types, len(_CELL_TYPES))
    names = [t[0] for t in _CELL_TYPES[:n_named]]
    content = [t[2] for t in _CELL_TYPES[:n_named]]
    neuron = [t[3] for t in _CELL_TYPES[:n_named]]
    comp = _COMPOSITION[:, :n_named].copy()
    for j in range(n_named, n_cell_types):  # generic extra types, each enriched in one region
        names.append(f"Cell type {j + 1}")
        content.append(float(rng.uniform(0.6, 1.4)))
        neuron.append(bool(rng.random() < 0.5))
        col = np.full(len(REGIONS), 0.03)
        col[rng.integers(len(REGIONS))] = 0.25
        comp = np.column_stack([comp, col])
    # a region whose types were all dropped (small n_cell_types) gets an even mix
    empty = comp.sum(axis=1) < 0.05
    comp[empty] = 1.0
    comp = comp / comp.sum(axis=1, keepdims=True)
    return names, comp, np.asarray(content), np.asarray(neuron)


def _programs(names: list[str], neuron: np.ndarray, n_genes: int, rng: np.random.Generator,
              ) -> tuple[list[str], np.ndarray, dict[str, list[str]]]:
    """Gene names, per-type expression fractions (types x genes, rows sum to 1), markers."""
    n_types = len(names)
    named_markers = [list(t[1]) for t in _CELL_TYPES[: min(n_types, len(_CELL_TYPES))]]
    named = list(_HOUSEKEEPING) + list(_NEURONAL) + [g for m in named_markers for g in m]
    _check_n_genes(n_genes, n_types)
    n_generic = n_genes - len(named)
    genes = named + [f"Gene{i:04d}" for i in range(1, n_generic + 1)]
    idx = {g: i for i, g in enumerate(genes)}
    hk = np.array([idx[g] for g in _HOUSEKEEPING])
    neu = np.array([idx[g] for g in _NEURONAL])
    generic = np.arange(len(named), n_genes)

    # baseline log-means: log-normal across genes
    base = rng.normal(0.0, 1.1, n_genes)
    base[hk] = rng.normal(2.6, 0.5, len(hk))
    base[idx["Malat1"]] = 4.2
    base[neu] = rng.normal(0.3, 0.4, len(neu))
    for markers in named_markers:
        base[[idx[g] for g in markers]] = rng.normal(-0.8, 0.5, len(markers))

    # generic markers: ~3% of the genes per type, disjoint
    n_extra = max(3, int(round(0.03 * n_genes)))
    n_extra = min(n_extra, len(generic) // n_types)
    pool = rng.permutation(generic)
    markers: dict[str, list[str]] = {}
    logmu = np.empty((n_types, n_genes))
    for t in range(n_types):
        own = [idx[g] for g in named_markers[t]] if t < len(named_markers) else []
        extra = pool[t * n_extra:(t + 1) * n_extra]
        mk = np.array(own + list(extra), dtype=int)
        markers[names[t]] = [genes[i] for i in mk]
        lm = base + rng.normal(0.0, 0.35, n_genes)  # broad type-specific modulation
        lm[hk] = base[hk] + rng.normal(0.0, 0.1, len(hk))
        lm[mk] += np.clip(rng.normal(3.2, 0.6, len(mk)), 1.8, None)
        lm[neu] += 1.8 if neuron[t] else -1.0
        logmu[t] = lm
    frac = np.exp(logmu - logmu.max(axis=1, keepdims=True))
    frac /= frac.sum(axis=1, keepdims=True)
    return genes, frac, markers


# ---------------------------------------------------------------------------------------------
# the public generator
# ---------------------------------------------------------------------------------------------
def synthetic_tissue(
    seed: int = 0,
    *,
    n_spots: int = 2000,
    n_genes: int = 500,
    n_cell_types: int = 8,
    n_reference_cells: int = 3000,
    n_batches: int = 3,
    n_spot_batches: int = 1,
    image_size: int = 1200,
    spot_depth: float | None = None,
    cell_depth: float | None = None,
    batch_effect: float = 0.5,
    spot_batch_effect: float | None = None,
    platform_effect: float = 0.5,
    concentration: float = 20.0,
    library_id: str = LIBRARY_ID,
) -> tuple[AnnData, AnnData]:
    """A synthetic Visium-like tissue section and a matching annotated single-cell reference.

    Generated offline and deterministically from ``seed`` (about a second). The spatial data has an
    H&E-like image with anatomical regions, spots on a hexagonal 100 µm lattice, integer counts,
    and the true cell-type proportions of every spot; the reference has annotated cells from
    several batches. Use it to try the plugin without data and to score methods against the truth.

    Parameters
    ----------
    seed
        Random seed; the same seed (and parameters) gives identical data.
    n_spots
        Number of spots on the tissue (the section is sized to hold exactly this many).
    n_genes
        Number of genes (shared by both datasets): housekeeping, neuronal, marker and generic genes.
    n_cell_types
        Number of cell types; up to 9 have brain-like names and markers, more are generic.
    n_reference_cells
        Number of cells in the reference.
    n_batches
        Number of batches in the reference (gene-specific effects, different depth).
    n_spot_batches
        Number of sections (capture areas, each its own library) the spots come from. With 1 (the
        default) the spots are one batch and have no ``section`` column. With more, the lattice is
        cut into that many side-by-side strips of array columns (left and right halves for 2),
        every region in each; each section has gene-specific effects (``spot_batch_effect``) and
        its own depth, like the reference's batches. The rest of the data (layout, truth, the
        reference) is the same as with 1; only the spot counts change.
    image_size
        Longest side of the ``hires`` image in pixels (the ``lowres`` image is half of it).
    spot_depth
        Median number of UMIs per spot; default ``3 * n_genes``.
    cell_depth
        Median number of UMIs per reference cell (before batch depth); default ``0.8 * n_genes``.
    batch_effect
        Standard deviation of the gene-specific log batch effects in the reference.
    spot_batch_effect
        Standard deviation of the gene-specific log effects between the spots' sections
        (``n_spot_batches`` > 1); default ``batch_effect``.
    platform_effect
        Standard deviation of the gene-specific log sensitivity of the spots relative to the
        reference (Visium vs scRNA-seq).
    concentration
        Dirichlet concentration of the spot proportions around their expected composition
        (larger: less spot-to-spot variation).
    library_id
        Key of the library in ``uns['spatial']``.

    Returns
    -------
    spatial, reference
        ``spatial``: spots x genes, ``X`` and ``layers['counts']`` integer counts (CSR, float32),
        ``obsm['spatial']`` spot centres (x, y) in full-resolution pixels,
        ``uns['spatial'][library_id]`` with ``images`` (``hires``, ``lowres``) and
        ``scalefactors`` as Space Ranger writes them, ``obs['region']`` (true anatomy),
        ``obs['n_cells']``, ``obs['in_tissue']``, ``obs['array_row'|'array_col']``,
        ``obs['true_dominant_cell_type']``, ``obsm['true_proportions']`` and
        ``obsm['true_abundance']`` (DataFrames, one column per cell type),
        ``var['true_platform_effect']``, ``uns['region_colors']``, ``uns['synthetic']``
        (generating parameters, marker genes); with ``n_spot_batches`` > 1 also
        ``obs['section']`` (``'section1'``, ...), ``uns['section_colors']``,
        ``varm['true_section_effect']`` (the multiplicative gene effect of every section, a
        DataFrame genes x sections) and ``uns['synthetic']['section_depth']`` (each section's
        relative depth).
        ``reference``: cells x genes (same genes), integer counts, ``obs['cell_type']``,
        ``obs['batch']``, ``uns['cell_type_colors']``, ``varm['true_profiles']`` (expression
        fraction per type) and ``varm['true_batch_effect']``.

    Examples
    --------
    >>> from napari_spatialdl.datasets import synthetic_tissue
    >>> spatial, reference = synthetic_tissue(seed=0)
    >>> spatial.obsm["true_proportions"].sum(axis=1).round(6).unique()
    array([1.])
    """
    _check_int("n_spots", n_spots, 20)
    _check_int("n_cell_types", n_cell_types, 2)
    _check_int("n_reference_cells", n_reference_cells, 10 * n_cell_types)
    _check_int("n_batches", n_batches, 1)
    _check_int("n_spot_batches", n_spot_batches, 1)
    if n_spot_batches > max(1, n_spots // 20):
        raise ValueError(f"n_spot_batches={n_spot_batches} is too many for {n_spots} spots: use at most "
                         f"{max(1, n_spots // 20)} (about 20 spots or more per section).")
    spot_batch_effect = batch_effect if spot_batch_effect is None else spot_batch_effect
    _check_int("image_size", image_size, 64)
    _check_int("n_genes", n_genes, 1)
    _check_n_genes(n_genes, n_cell_types)
    for name, value in (("batch_effect", batch_effect), ("spot_batch_effect", spot_batch_effect),
                        ("platform_effect", platform_effect)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
    if not (np.isfinite(concentration) and concentration > 0):
        raise ValueError(f"concentration must be positive, got {concentration!r}.")
    spot_depth = 3.0 * n_genes if spot_depth is None else float(spot_depth)
    cell_depth = 0.8 * n_genes if cell_depth is None else float(cell_depth)
    if spot_depth <= 0 or cell_depth <= 0:
        raise ValueError("spot_depth and cell_depth must be positive.")

    ss = np.random.SeedSequence(int(seed))
    # the sections' stream is the 7th child: the first six (and so the data without sections) are
    # those of ss.spawn(6)
    rng_geom, rng_img, rng_prog, rng_spot, rng_ref, rng_bc, rng_sec = (
        np.random.default_rng(s) for s in ss.spawn(7))

    # --- anatomy, spots, image -------------------------------------------------------------
    geom = Geometry(rng_geom)
    layout = _Layout(geom, n_spots)
    xy = layout.xy
    region_idx = geom.classify(*layout.to_section(xy[:, 0], xy[:, 1])).region.astype(int)

    scalef = image_size / max(layout.width, layout.height)
    h = 2 * int(round(layout.height * scalef / 2))
    w = 2 * int(round(layout.width * scalef / 2))

    def px_to_section(xp, yp):
        return layout.to_section(xp / scalef, yp / scalef)

    hires, _ = render_section(geom, (h, w), px_to_section, rng_img)
    lowres = hires.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)

    # --- cell types and programs ------------------------------------------------------------
    names, comp_region, content, neuron = _cell_types(n_cell_types, rng_prog)
    genes, frac, markers = _programs(names, neuron, n_genes, rng_prog)
    n_types = len(names)

    # --- true composition of every spot -----------------------------------------------------
    tree = cKDTree(xy)
    pitch = SPOT_PITCH_FULLRES
    # soft region membership: each spot sees its own region and, less, its neighbours'
    pairs = tree.sparse_distance_matrix(tree, 1.6 * pitch, output_type="coo_matrix")
    wts = np.exp(-(pairs.data**2) / (2 * (0.7 * pitch) ** 2))
    W = sp.coo_matrix((wts, (pairs.row, pairs.col)), shape=(n_spots, n_spots)).tocsr() + sp.identity(n_spots)
    W = sp.diags(1.0 / np.asarray(W.sum(axis=1)).ravel()) @ W
    onehot = np.eye(len(REGIONS))[region_idx]
    soft = np.asarray(W @ onehot)
    expected = soft @ comp_region
    # smooth random modulation of the composition (gradients within a region)
    far = tree.sparse_distance_matrix(tree, 5.0 * pitch, output_type="coo_matrix")
    G = sp.coo_matrix((np.exp(-(far.data**2) / (2 * (2.0 * pitch) ** 2)), (far.row, far.col)),
                      shape=(n_spots, n_spots)).tocsr() + sp.identity(n_spots)
    field = np.asarray(G @ rng_spot.standard_normal((n_spots, n_types)))
    field = (field - field.mean(axis=0)) / (field.std(axis=0) + 1e-12)
    expected = expected * np.exp(0.5 * field)
    expected /= expected.sum(axis=1, keepdims=True)
    gam = rng_spot.gamma(concentration * expected)
    props = gam / np.maximum(gam.sum(axis=1, keepdims=True), 1e-300)
    props[props < 0.02] = 0.0
    none = props.sum(axis=1) == 0
    props[none, np.argmax(expected[none], axis=1)] = 1.0
    props /= props.sum(axis=1, keepdims=True)
    density = soft @ _CELLS_PER_SPOT
    n_cells = 1 + rng_spot.poisson(np.maximum(density - 1, 0.1))
    abundance = props * n_cells[:, None]

    # --- spot counts ------------------------------------------------------------------------
    platform = np.exp(rng_spot.normal(0.0, platform_effect, n_genes))
    capture = np.exp(rng_spot.normal(0.0, 0.35, n_spots))
    mu_spot = (abundance * content) @ frac  # expected cell-type RNA per gene
    mu_spot = mu_spot * platform * capture[:, None]
    section, section_fx, section_depth = _sections(layout.cols, n_spot_batches, n_genes, spot_batch_effect, rng_sec)
    if n_spot_batches > 1:
        mu_spot = mu_spot * (section_fx[section] * section_depth[section, None])
    mu_spot *= spot_depth / np.median(mu_spot.sum(axis=1))
    theta_spot = np.exp(rng_spot.normal(np.log(6.0), 0.5, n_genes))
    counts_spot = _redraw_empty(rng_spot, _nb(rng_spot, mu_spot, theta_spot), mu_spot, theta_spot)

    # --- reference cells --------------------------------------------------------------------
    type_frac = comp_region.mean(axis=0) * 0.6 + 0.4 / n_types  # imbalanced, every type present
    type_frac /= type_frac.sum()
    batch_names = [f"batch{b + 1}" for b in range(n_batches)]
    batch_size = rng_ref.dirichlet(np.full(n_batches, 8.0))
    batch_of = rng_ref.choice(n_batches, size=n_reference_cells, p=batch_size)
    cell_type = np.empty(n_reference_cells, dtype=int)
    for b in range(n_batches):  # each batch has its own composition
        in_b = np.flatnonzero(batch_of == b)
        p_b = rng_ref.dirichlet(30.0 * type_frac)
        cell_type[in_b] = rng_ref.choice(n_types, size=len(in_b), p=p_b)
    # make sure every type has cells
    for t in range(n_types):
        if not (cell_type == t).any():
            cell_type[rng_ref.choice(n_reference_cells, size=min(10, n_reference_cells // n_types), replace=False)] = t
    depth_b = np.geomspace(0.55, 1.8, n_batches) if n_batches > 1 else np.ones(1)
    depth_b = rng_ref.permutation(depth_b)
    batch_fx = np.exp(rng_ref.normal(0.0, batch_effect, (n_batches, n_genes)))
    lib = cell_depth * depth_b[batch_of] * content[cell_type] * np.exp(rng_ref.normal(0.0, 0.5, n_reference_cells))
    mu_ref = lib[:, None] * frac[cell_type] * batch_fx[batch_of]
    theta_ref = np.exp(rng_ref.normal(np.log(1.5), 0.6, n_genes))
    counts_ref = _redraw_empty(rng_ref, _nb(rng_ref, mu_ref, theta_ref), mu_ref, theta_ref)

    # --- AnnData: spatial -------------------------------------------------------------------
    var = pd.DataFrame(
        {"gene_ids": [f"SYN{i:06d}" for i in range(1, n_genes + 1)],
         "feature_types": "Gene Expression", "genome": "synthetic"},
        index=pd.Index(genes, name=None),
    )
    spot_names = _barcodes(rng_bc, n_spots)
    cats = pd.CategoricalDtype(list(REGIONS))
    dominant = np.asarray(names)[np.argmax(props, axis=1)]
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n_spots, dtype=np.int64),
            "array_row": layout.rows.astype(np.int64),
            "array_col": layout.cols.astype(np.int64),
            "region": pd.Categorical(np.asarray(REGIONS)[region_idx], dtype=cats),
            "n_cells": n_cells.astype(np.int64),
            "true_dominant_cell_type": pd.Categorical(dominant, categories=names),
        },
        index=pd.Index(spot_names),
    )
    section_names = [f"section{b + 1}" for b in range(n_spot_batches)]
    if n_spot_batches > 1:
        obs.insert(obs.columns.get_loc("region"), "section",
                   pd.Categorical(np.asarray(section_names)[section], categories=section_names))
    X_spot = sp.csr_matrix(counts_spot.astype(np.float32))
    spatial = AnnData(X=X_spot, obs=obs, var=var.assign(true_platform_effect=platform))
    spatial.layers["counts"] = X_spot.copy()
    spatial.obsm["spatial"] = xy.astype(np.float64)
    spatial.obsm["true_proportions"] = pd.DataFrame(props, index=spatial.obs_names, columns=names)
    spatial.obsm["true_abundance"] = pd.DataFrame(abundance, index=spatial.obs_names, columns=names)
    spatial.uns["spatial"] = {
        library_id: {
            "images": {"hires": hires, "lowres": lowres},
            "scalefactors": {
                "tissue_hires_scalef": float(scalef),
                "tissue_lowres_scalef": float(scalef / 2),
                "spot_diameter_fullres": float(SPOT_DIAMETER_FULLRES),
                "fiducial_diameter_fullres": float(SPOT_DIAMETER_FULLRES * 1.615),
            },
            "metadata": {
                "chemistry_description": "Spatial 3' v1 (synthetic)",
                "software_version": "napari-spatialdl synthetic_tissue",
                "source_image_path": "",
            },
        }
    }
    spatial.uns["region_colors"] = list(REGION_COLORS)
    spatial.uns["true_dominant_cell_type_colors"] = _type_colors(n_types)
    if n_spot_batches > 1:
        spatial.uns["section_colors"] = _SECTION_COLORS[:n_spot_batches] if n_spot_batches <= len(_SECTION_COLORS) \
            else _type_colors(n_spot_batches)
        spatial.varm["true_section_effect"] = pd.DataFrame(section_fx.T, index=spatial.var_names,
                                                           columns=section_names)
    params: dict[str, Any] = {
        "seed": int(seed), "n_spots": int(n_spots), "n_genes": int(n_genes),
        "n_cell_types": int(n_types), "n_reference_cells": int(n_reference_cells),
        "n_batches": int(n_batches), "n_spot_batches": int(n_spot_batches), "image_size": int(image_size),
        "spot_depth": float(spot_depth), "cell_depth": float(cell_depth), "batch_effect": float(batch_effect),
        "spot_batch_effect": float(spot_batch_effect),
        "platform_effect": float(platform_effect), "concentration": float(concentration),
        "spot_pitch_fullres": float(SPOT_PITCH_FULLRES), "microns_per_pixel": float(MICRONS_PER_PIXEL),
        "cell_types": list(names), "regions": list(REGIONS),
        "marker_genes": {k: list(v) for k, v in markers.items()},
        "region_composition": pd.DataFrame(comp_region, index=list(REGIONS), columns=names).to_dict("index"),
    }
    if n_spot_batches > 1:
        params["section_depth"] = [float(d) for d in section_depth]
    spatial.uns["synthetic"] = params

    # --- AnnData: reference -----------------------------------------------------------------
    ref_obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.asarray(names)[cell_type], categories=names),
            "batch": pd.Categorical(np.asarray(batch_names)[batch_of], categories=batch_names),
        },
        index=pd.Index([f"{batch_names[b]}_{bc}" for b, bc in zip(batch_of, _barcodes(rng_bc, n_reference_cells))]),
    )
    ref_obs["total_counts"] = counts_ref.sum(axis=1).astype(np.int64)
    X_ref = sp.csr_matrix(counts_ref.astype(np.float32))
    reference = AnnData(X=X_ref, obs=ref_obs, var=var.copy())
    reference.layers["counts"] = X_ref.copy()
    reference.uns["cell_type_colors"] = _type_colors(n_types)
    reference.uns["batch_colors"] = ["#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f"][:n_batches] \
        if n_batches <= 6 else _type_colors(n_batches)
    reference.varm["true_profiles"] = pd.DataFrame(frac.T, index=reference.var_names, columns=names)
    reference.varm["true_batch_effect"] = pd.DataFrame(batch_fx.T, index=reference.var_names, columns=batch_names)
    reference.uns["synthetic"] = {**{k: v for k, v in params.items() if k != "section_depth"},
                                  "batch_depth": [float(d) for d in depth_b]}
    spatial.obs["total_counts"] = counts_spot.sum(axis=1).astype(np.int64)
    return spatial, reference


def _sections(cols: np.ndarray, n_sections: int, n_genes: int, effect: float, rng: np.random.Generator,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each spot's section, the sections' gene effects (sections x genes) and relative depths.

    The sections are strips of whole array columns with about the same number of spots each (a
    straight cut through the lattice, as between two capture areas). With one section nothing is
    drawn from ``rng``.
    """
    if n_sections == 1:
        return np.zeros(len(cols), dtype=int), np.ones((1, n_genes)), np.ones(1)
    order = np.sort(cols)
    cuts = [order[int(round(len(cols) * b / n_sections))] for b in range(1, n_sections)]
    section = np.searchsorted(np.asarray(cuts), cols, side="right")
    effects = np.exp(rng.normal(0.0, effect, (n_sections, n_genes)))
    depth = rng.permutation(np.geomspace(0.75, 1.33, n_sections))
    return section, effects, depth


def _check_n_genes(n_genes: int, n_types: int) -> None:
    n_named = len(_HOUSEKEEPING) + len(_NEURONAL) + sum(len(t[1]) for t in _CELL_TYPES[:n_types])
    minimum = n_named + 3 * n_types
    if n_genes < minimum:
        raise ValueError(
            f"n_genes={n_genes} is too small for {n_types} cell types: use n_genes >= {minimum} "
            "(housekeeping, neuronal and marker genes plus a few generic genes per type)."
        )


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
