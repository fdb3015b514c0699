"""Write a Xenium output folder and a Space Ranger HD ``outs`` folder at realistic size, offline.

Both folders are laid out as the instruments write them and as ``spatialdata_io.xenium`` /
``spatialdata_io.visium_hd`` (hence ``napari_spatialdl.read_xenium`` / ``read_visium_hd`` and the
napari reader) open them. Nothing is downloaded: the expression comes from the mouse hippocampus
scRNA-seq reference of ``../shared/data/hippocampus_visium/reference`` (DropViz P60, 510 cells x
307 genes, 17 cell types; spacexr package data, GPL-3), which the tutorial also uses as the
reference for annotation, deconvolution and gene prediction.

The generative model (seeded)
-----------------------------
**Anatomy.** A coronal-section-like field (3.4 x 3.0 mm at 100k cells, scaled with the number of
cells): cortex (layer 1 and deeper layers), white matter, the hippocampus (CA1 and CA3 pyramidal
layers along one curve, the dentate gyrus granule layer along a C-shaped curve with its
subgranular zone on the hilus side, the hippocampal fissure, neuropil between the layers), a
ventricle with its ependymal lining and a choroid plexus, thalamus below, and ~60 winding blood
vessels. Each region has a cell density and a cell-type composition over the 17 reference types.

**Cells.** A jittered hexagonal lattice thinned to each region's density; each cell gets a type
from its region's composition, an area (per type, log-normal), a nucleus, an irregular
13-vertex boundary of exactly that area.

**Expression.** A cell's profile is 0.6 x its type's mean normalised profile plus 0.4 x the
normalised profile of a random reference cell of the same type (real within-type variation),
times a per-gene platform effect (log-normal, sd 0.5 for Xenium, 0.3 for HD). Counts are negative
binomial (gamma-Poisson; shape 10 for Xenium cells, 3 for HD bins) around library size x profile.

**Xenium.** One row per cell; the panel is the reference genes minus 17 held-out genes (the
second marker of each type), so that gene prediction has genes to predict and a truth to compare
with (their simulated counts are in ``truth/``); 20 negative-control probes. A DAPI morphology
image (uint16, 0.2125 µm per pixel, zlib-compressed tiles), cell and nucleus boundaries.
Transcripts only with ``--transcripts`` (one point per count).

**Visium HD.** A grid of 8 µm bins over the field (bins over glass and the ventricle's lumen are
``in_tissue == 0`` and not in the filtered matrix). Each bin's composition is that of nine points
spread over it, each taken by the nearest cell (the cells' Voronoi territories). The first
genes are the 307 reference genes (55% of a bin's counts); the others are filler genes
``Sim00001``... with heavy-tailed, type-modulated profiles (45% of the counts, Poisson given the
bin's cells). 16 µm bins are the sums of 2 x 2 bins of 8 µm. A synthetic H&E ``hires`` (4,000 px)
and ``lowres`` (600 px) image; no full-resolution microscope image (not part of ``outs``: the
reader says so in a warning).

Usage::

    python benchmarks/make_hd_xenium.py /tmp/hd_xenium                     # both, default sizes
    python benchmarks/make_hd_xenium.py /tmp/hd_xenium --only xenium --cells 20000

Writes ``OUT/xenium/``, ``OUT/visium_hd/outs/``, ``OUT/reference/hippocampus_reference.h5ad`` (the
reference as an AnnData, for the GUI's Open... button) and ``OUT/truth/`` (cell types, bin
compositions, held-out genes; not part of either instrument's output).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "data" / "hippocampus_visium" / "reference"
REFERENCE_SOURCE = ("spacexr package data (inst/extdata/Reference/Visium_Ref: counts.csv, cell_types.csv), "
                    "DropViz P60 mouse hippocampus, GPL-3")
LABELS_KEY = "cell_type"

#: µm per morphology-image pixel (Xenium)
XENIUM_PIXEL_UM = 0.2125
#: µm per full-resolution pixel (Visium HD; the microscope image Space Ranger registers)
HD_MICRONS_PER_PIXEL = 0.2738
HD_HIRES_SIDE, HD_LOWRES_SIDE = 4000, 600
HD_BIN_UM = 8
#: the anatomy's field (x, y) in µm at scale 1 (about 100k cells)
REF_FIELD_UM = (3400.0, 3000.0)
N_NEGATIVE_CONTROLS = 20

# ----------------------------------------------------------------------------- regions
REGIONS = ("outside", "Cortex L1", "Cortex", "White matter", "CA1 pyramidal", "CA3 pyramidal",
           "Dentate granule", "Subgranular zone", "Hippocampal neuropil", "Fissure", "Ependyma",
           "Choroid plexus", "Ventricle lumen", "Thalamus", "Vessel", "Vessel tip")
(OUTSIDE, L1, CORTEX, WM, CA1, CA3, DG, SGZ, NEUROPIL, FISSURE, EPENDYMA, CHOROID, LUMEN,
 THALAMUS, VESSEL, VESSEL_TIP) = range(len(REGIONS))
#: cells per 1000 µm² in each region
DENSITY = np.array([0, 4, 11, 10, 30, 26, 34, 20, 5, 8, 30, 22, 0, 10, 14, 14], dtype=float) / 1000.0
#: cell-type composition of each region (types of the hippocampus reference)
COMPOSITION: dict[int, dict[str, float]] = {
    L1: {"Astrocyte": .35, "Cajal_Retzius": .10, "Interneuron": .20, "Microglia_Macrophages": .15,
         "Oligodendrocyte": .05, "Polydendrocyte": .10, "Entorihinal": .05},
    CORTEX: {"Entorihinal": .55, "Interneuron": .12, "Astrocyte": .12, "Oligodendrocyte": .08,
             "Microglia_Macrophages": .06, "Polydendrocyte": .04, "Neuron.Slc17a6": .03},
    WM: {"Oligodendrocyte": .72, "Astrocyte": .12, "Polydendrocyte": .08, "Microglia_Macrophages": .08},
    CA1: {"CA1": .90, "Interneuron": .04, "Astrocyte": .03, "Microglia_Macrophages": .02, "Oligodendrocyte": .01},
    CA3: {"CA3": .90, "Interneuron": .04, "Astrocyte": .03, "Microglia_Macrophages": .02, "Oligodendrocyte": .01},
    DG: {"Denate": .93, "Astrocyte": .03, "Interneuron": .02, "Microglia_Macrophages": .02},
    SGZ: {"Neurogenesis": .55, "Denate": .25, "Astrocyte": .12, "Microglia_Macrophages": .04, "Interneuron": .04},
    NEUROPIL: {"Astrocyte": .33, "Interneuron": .22, "Oligodendrocyte": .15, "Microglia_Macrophages": .14,
               "Polydendrocyte": .10, "Endothelial_Stalk": .06},
    FISSURE: {"Cajal_Retzius": .40, "Astrocyte": .20, "Interneuron": .15, "Endothelial_Stalk": .10,
              "Mural": .05, "Microglia_Macrophages": .10},
    EPENDYMA: {"Ependymal": .85, "Astrocyte": .10, "Microglia_Macrophages": .05},
    CHOROID: {"Choroid": .85, "Endothelial_Stalk": .08, "Mural": .04, "Microglia_Macrophages": .03},
    THALAMUS: {"Neuron.Slc17a6": .55, "Astrocyte": .12, "Oligodendrocyte": .15, "Interneuron": .06,
               "Microglia_Macrophages": .07, "Polydendrocyte": .05},
    VESSEL: {"Endothelial_Stalk": .55, "Mural": .30, "Astrocyte": .10, "Microglia_Macrophages": .05},
    VESSEL_TIP: {"Endothelial_Tip": .70, "Endothelial_Stalk": .20, "Mural": .10},
}
#: mean cell area (µm²) per type; RNA content follows the area
CELL_AREA = {"Astrocyte": 70, "CA1": 115, "CA3": 135, "Cajal_Retzius": 85, "Choroid": 75, "Denate": 60,
             "Endothelial_Stalk": 45, "Endothelial_Tip": 45, "Entorihinal": 105, "Ependymal": 60,
             "Interneuron": 95, "Microglia_Macrophages": 45, "Mural": 40, "Neurogenesis": 45,
             "Neuron.Slc17a6": 110, "Oligodendrocyte": 55, "Polydendrocyte": 55}
#: DAPI brightness of the nucleus per type (dense granule and glial nuclei are brighter)
NUCLEUS_BRIGHTNESS = {"Denate": 1.0, "Neurogenesis": 1.0, "Oligodendrocyte": 0.95, "Microglia_Macrophages": 0.95,
                      "Endothelial_Stalk": 0.9, "Endothelial_Tip": 0.9, "Mural": 0.9}

# control points (µm at scale 1) of the curves; x to the right, y down
_CA_POINTS = np.array([(700, 1050), (1500, 990), (2200, 1060), (2600, 1250), (2760, 1480),
                       (2600, 1590), (2250, 1560), (1850, 1540)], dtype=float)
_DG_POINTS = np.array([(2250, 1390), (1700, 1330), (1300, 1400), (1150, 1540), (1300, 1690),
                       (1700, 1745), (2250, 1705)], dtype=float)
_FISSURE_POINTS = np.array([(1000, 1210), (1600, 1190), (2250, 1230)], dtype=float)
_HILUS_POINT = np.array([1800.0, 1540.0])  # inside the dentate gyrus' C: the subgranular side


# ----------------------------------------------------------------------------- reference
def load_reference(root: str | Path | None = None) -> Any:
    """The hippocampus scRNA-seq reference as an AnnData (cells x genes, raw counts, CSR).

    Parameters
    ----------
    root
        Folder with ``counts.csv`` (genes x cells) and ``cell_types.csv`` (column ``x``); default
        ``../shared/data/hippocampus_visium/reference`` beside the repository.

    Returns
    -------
    AnnData
        510 x 307, ``obs['cell_type']`` (17 types), ``obs['replicate']`` (barcode prefix).
    """
    from anndata import AnnData

    root = Path(root) if root is not None else REFERENCE_DIR
    if not (root / "counts.csv").is_file() or not (root / "cell_types.csv").is_file():
        raise FileNotFoundError(
            f"{root} has no counts.csv / cell_types.csv: pass --reference with the folder of the "
            f"hippocampus reference ({REFERENCE_SOURCE}).")
    counts = pd.read_csv(root / "counts.csv", index_col=0).T
    types = pd.read_csv(root / "cell_types.csv", index_col=0)["x"].reindex(counts.index)
    if types.isna().any():
        raise ValueError(f"{int(types.isna().sum())} reference cells of {root} have no cell type.")
    obs = pd.DataFrame({LABELS_KEY: pd.Categorical(types.astype(str)),
                        "replicate": pd.Categorical(counts.index.str.split("_").str[0])},
                       index=counts.index.astype(str))
    return AnnData(sp.csr_matrix(counts.to_numpy(dtype=np.float32)), obs=obs,
                   var=pd.DataFrame(index=counts.columns.astype(str)))


@dataclass
class Profiles:
    """Expression profiles of the reference: per type and per cell, normalised to sum 1."""

    genes: list[str]
    types: list[str]
    mean: np.ndarray  # types x genes
    cells: np.ndarray  # reference cells x genes
    cell_type: np.ndarray  # type index of each reference cell

    @classmethod
    def from_reference(cls, reference: Any) -> Profiles:
        X = reference.X.toarray() if sp.issparse(reference.X) else np.asarray(reference.X)
        X = X.astype(np.float64)
        norm = X / X.sum(axis=1, keepdims=True)
        labels = reference.obs[LABELS_KEY].astype("category")
        types = [str(t) for t in labels.cat.categories]
        codes = labels.cat.codes.to_numpy()
        mean = np.vstack([norm[codes == i].mean(axis=0) for i in range(len(types))])
        mean = (mean + 1e-6) / (mean + 1e-6).sum(axis=1, keepdims=True)
        return cls(list(map(str, reference.var_names)), types, mean.astype(np.float32),
                   norm.astype(np.float32), codes)

    def cell_profiles(self, type_codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One profile per simulated cell: 0.6 x its type's mean + 0.4 x a random reference cell of its type."""
        out = np.empty((len(type_codes), len(self.genes)), dtype=np.float32)
        for t in range(len(self.types)):
            rows = np.flatnonzero(type_codes == t)
            if rows.size == 0:
                continue
            pool = np.flatnonzero(self.cell_type == t)
            picked = rng.choice(pool, size=rows.size)
            out[rows] = 0.6 * self.mean[t] + 0.4 * self.cells[picked]
        return out

    def held_out_genes(self) -> list[str]:
        """The second marker (log fold enrichment over the mean of the types) of each type, deduplicated."""
        lfc = np.log2((self.mean + 1e-5) / (self.mean.mean(axis=0) + 1e-5))
        chosen: list[str] = []
        for t in range(len(self.types)):
            order = np.argsort(-lfc[t])
            second = next(self.genes[g] for g in order[1:] if self.genes[g] not in chosen)
            chosen.append(second)
        return chosen


# ----------------------------------------------------------------------------- anatomy
def _curve(points: np.ndarray, step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth curve through ``points`` sampled every ``step`` µm, and each sample's arc fraction."""
    from scipy.interpolate import splev, splprep

    tck, _ = splprep(points.T, s=0, k=min(3, len(points) - 1))
    fine = np.column_stack(splev(np.linspace(0, 1, 2000), tck))
    length = np.sum(np.linalg.norm(np.diff(fine, axis=0), axis=1))
    u = np.linspace(0, 1, max(int(length / step), 10))
    xy = np.column_stack(splev(u, tck))
    arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    return xy, arc / arc[-1]


class Anatomy:
    """Regions of a coronal-section-like field; ``scale`` 1 is 3.4 x 3.0 mm (about 100k cells).

    Layers, curves and the ventricle scale with ``scale``; cell densities, cell sizes and the
    vessels' calibre do not.
    """

    def __init__(self, scale: float, rng: np.random.Generator):
        from scipy.spatial import cKDTree

        self.scale = s = float(scale)
        self.size = (REF_FIELD_UM[0] * s, REF_FIELD_UM[1] * s)
        self.ca, self.ca_t = _curve(_CA_POINTS * s)
        self.dg, _ = _curve(_DG_POINTS * s)
        self.fissure, _ = _curve(_FISSURE_POINTS * s)
        self._ca_tree, self._dg_tree, self._fis_tree = cKDTree(self.ca), cKDTree(self.dg), cKDTree(self.fissure)
        hilus = _HILUS_POINT * s
        _, i = self._dg_tree.query(hilus)
        self._hilus_side = np.sign(self._side(self.dg, np.array([i]), hilus[None, :]))[0]
        self.vessels = self._make_vessels(rng)
        vessel_pts = np.vstack(self.vessels) if self.vessels else np.empty((0, 2))
        self._vessel_tree = cKDTree(vessel_pts) if len(vessel_pts) else None
        ends = np.array([v[k] for v in self.vessels for k in (0, -1)]) if self.vessels else np.empty((0, 2))
        self._tip_tree = cKDTree(ends) if len(ends) else None

    @staticmethod
    def _side(curve: np.ndarray, idx: np.ndarray, xy: np.ndarray) -> np.ndarray:
        lo, hi = np.clip(idx - 1, 0, len(curve) - 1), np.clip(idx + 1, 0, len(curve) - 1)
        tangent = curve[hi] - curve[lo]
        rel = xy - curve[idx]
        return tangent[:, 0] * rel[:, 1] - tangent[:, 1] * rel[:, 0]

    def _make_vessels(self, rng: np.random.Generator) -> list[np.ndarray]:
        W, H = self.size
        n = max(1, round(60 * self.scale**2))
        out = []
        for _ in range(n):
            p = rng.uniform([0.05 * W, 0.05 * H], [0.95 * W, 0.95 * H])
            heading = rng.uniform(0, 2 * np.pi)
            n_steps = int(rng.uniform(300, 1200) / 8.0)
            pts = [p.copy()]
            for _ in range(n_steps):
                heading += rng.normal(0, 0.15)
                p = p + 8.0 * np.array([np.cos(heading), np.sin(heading)])
                if not (0 <= p[0] <= W and 0 <= p[1] <= H):
                    break
                pts.append(p.copy())
            pts = np.asarray(pts)
            if len(pts) < 3:
                continue
            seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
            arc = np.concatenate([[0], np.cumsum(seg)])
            u = np.arange(0, arc[-1], 1.0)
            out.append(np.column_stack([np.interp(u, arc, pts[:, 0]), np.interp(u, arc, pts[:, 1])]))
        return out

    def tissue(self, xy: np.ndarray) -> np.ndarray:
        """Whether each (x, y) point (µm) lies in the section (a wobbly superellipse)."""
        W, H = self.size
        u = (xy[:, 0] - W / 2) / (0.48 * W)
        v = (xy[:, 1] - H / 2) / (0.47 * H)
        theta = np.arctan2(v, u)
        wobble = 1 + 0.02 * np.sin(7 * theta) + 0.015 * np.sin(13 * theta + 1.0)
        return (u**4 + v**4) ** 0.25 <= wobble

    def regions(self, xy: np.ndarray) -> np.ndarray:
        """Region index (:data:`REGIONS`) of each (x, y) point in µm."""
        W, H = self.size
        s = self.scale
        x, y = xy[:, 0], xy[:, 1]
        inside = self.tissue(xy)
        u = np.clip(np.abs((x - W / 2) / (0.48 * W)), 0, 1)
        y_top = H / 2 - 0.47 * H * (1 - u**4) ** 0.25
        y_wm = 0.25 * H + 0.02 * H * np.sin(2 * np.pi * 1.3 * x / W)
        y_hip = y_wm + 0.045 * H
        y_thal = 0.74 * H + 0.03 * H * np.sin(2 * np.pi * x / W + 0.5)
        reg = np.full(len(xy), OUTSIDE, dtype=np.int8)
        reg[inside & (y < y_wm)] = CORTEX
        reg[inside & (y < y_wm) & (y < y_top + 80 * s)] = L1
        reg[inside & (y >= y_wm) & (y < y_hip)] = WM
        hip = inside & (y >= y_hip) & (y < y_thal)
        reg[hip] = NEUROPIL
        reg[inside & (y >= y_thal)] = THALAMUS
        # the hippocampus' layers
        idx = np.flatnonzero(hip)
        pts = xy[idx]
        d_fis, _ = self._fis_tree.query(pts)
        reg[idx[d_fis < 12 * s]] = FISSURE
        d_dg, i_dg = self._dg_tree.query(pts)
        side = np.sign(self._side(self.dg, i_dg, pts)) == self._hilus_side
        reg[idx[d_dg < 35 * s]] = DG
        reg[idx[(d_dg >= 35 * s) & (d_dg < 50 * s) & side]] = SGZ
        d_ca, i_ca = self._ca_tree.query(pts)
        on_ca = d_ca < 32 * s
        reg[idx[on_ca & (self.ca_t[i_ca] < 0.55)]] = CA1
        reg[idx[on_ca & (self.ca_t[i_ca] >= 0.55)]] = CA3
        # the ventricle: lumen, ependymal lining, choroid plexus
        vx, vy, va, vb = 0.87 * W, 0.40 * H, 0.03 * W, 0.10 * H
        e = ((x - vx) / va) ** 2 + ((y - vy) / vb) ** 2
        reg[inside & (e < 1.0 + 24 * s / va)] = EPENDYMA
        reg[inside & (e < 1.0)] = LUMEN
        reg[inside & (((x - vx) / (0.6 * va)) ** 2 + ((y - vy - 0.35 * vb) / (0.4 * vb)) ** 2 < 1)] = CHOROID
        # blood vessels (not in the lumen)
        if self._vessel_tree is not None:
            open_ = np.flatnonzero(inside & (reg != LUMEN) & (reg != CHOROID))
            d_v, _ = self._vessel_tree.query(xy[open_], distance_upper_bound=6.0)
            reg[open_[d_v < 4.0]] = VESSEL
            d_t, _ = self._tip_tree.query(xy[open_], distance_upper_bound=12.0)
            reg[open_[(d_t < 10.0) & (d_v < 6.0)]] = VESSEL_TIP
        return reg

    def expected_cells(self, rng: np.random.Generator, n_points: int = 200_000) -> float:
        """Monte Carlo estimate of the number of cells in the field."""
        W, H = self.size
        pts = rng.uniform([0, 0], [W, H], size=(n_points, 2))
        return float(DENSITY[self.regions(pts)].mean() * W * H)


def _composition_matrix(types: Sequence[str]) -> np.ndarray:
    comp = np.zeros((len(REGIONS), len(types)))
    index = {t: i for i, t in enumerate(types)}
    for region, mix in COMPOSITION.items():
        for t, p in mix.items():
            if t not in index:
                raise ValueError(f"cell type {t!r} of region {REGIONS[region]!r} is not in the reference")
            comp[region, index[t]] = p
    rows = comp.sum(axis=1, keepdims=True)
    return np.divide(comp, rows, out=np.zeros_like(comp), where=rows > 0)


@dataclass
class Cells:
    """Simulated cells: positions (µm), region, type code, cell and nucleus areas (µm²)."""

    xy: np.ndarray
    region: np.ndarray
    type_code: np.ndarray
    area: np.ndarray
    nucleus_area: np.ndarray


def sample_cells(anatomy: Anatomy, types: Sequence[str], rng: np.random.Generator,
                 n_cells: int | None = None) -> Cells:
    """Cells at each region's density (exactly ``n_cells`` when given and enough fit in the field)."""
    W, H = anatomy.size
    rho_max = DENSITY.max()
    d = np.sqrt(2 / (np.sqrt(3) * rho_max))  # hexagonal lattice at the densest region's density
    rows = np.arange(0, H, d * np.sqrt(3) / 2)
    cols = np.arange(0, W, d)
    yy, xx = np.meshgrid(rows, cols, indexing="ij")
    xx = xx + (np.arange(len(rows))[:, None] % 2) * d / 2
    xy = np.column_stack([xx.ravel(), yy.ravel()])
    xy += rng.uniform(-0.3 * d, 0.3 * d, size=xy.shape)
    xy = xy[(xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)]
    region = anatomy.regions(xy)
    keep = rng.random(len(xy)) < DENSITY[region] / rho_max
    xy, region = xy[keep], region[keep]
    if n_cells is not None:
        if len(xy) < n_cells:
            raise ValueError(f"only {len(xy)} cells fit in the field, fewer than {n_cells}: use a larger scale")
        pick = np.sort(rng.choice(len(xy), size=n_cells, replace=False))
        xy, region = xy[pick], region[pick]
    comp = _composition_matrix(types)
    cum = np.cumsum(comp[region], axis=1)
    type_code = np.minimum((rng.random(len(xy))[:, None] > cum).sum(axis=1), len(types) - 1)
    mean_area = np.array([CELL_AREA.get(t, 70.0) for t in types])[type_code]
    area = mean_area * rng.lognormal(0.0, 0.25, len(xy))
    nucleus = area * rng.uniform(0.28, 0.4, len(xy))
    return Cells(xy, region, type_code.astype(np.int16), area, nucleus)


def scale_for_cells(n_cells: int, seed: int) -> float:
    """Scale of the anatomy at which about ``1.06 x n_cells`` cells fit."""
    rng = np.random.default_rng(seed + 101)
    return float(np.sqrt(1.06 * n_cells / Anatomy(1.0, rng).expected_cells(rng)))


def nb_counts(mean: np.ndarray, shape: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Negative binomial counts (gamma-Poisson, gamma shape ``shape``) around ``mean``, as CSR."""
    rate = mean * rng.gamma(shape, 1.0 / shape, size=mean.shape).astype(np.float32)
    return sp.csr_matrix(rng.poisson(rate).astype(np.float32))


# ----------------------------------------------------------------------------- 10x writers
def write_10x_h5(path: Path, counts: sp.spmatrix, barcodes: Sequence[str], genes: Sequence[str], *,
                 feature_types: Sequence[str] | None = None, genome: str = "GRCh38",
                 gene_ids: Sequence[str] | None = None, compression: str | None = None) -> None:
    """A 10x Genomics feature-barcode matrix HDF5 (``matrix/``: genes x barcodes CSC, ``features/``)."""
    import h5py

    m = sp.csc_matrix(sp.csr_matrix(counts).T)  # genes x barcodes, one column per barcode (10x layout)
    n_genes = len(genes)
    feature_types = list(feature_types) if feature_types is not None else ["Gene Expression"] * n_genes
    gene_ids = list(gene_ids) if gene_ids is not None else [f"ENSG{i:011d}" for i in range(n_genes)]
    opts: dict[str, Any] = {"compression": compression, "compression_opts": 4} if compression else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data.astype(np.int32), **opts)
        g.create_dataset("indices", data=m.indices.astype(np.int64), **opts)
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("id", data=np.array(gene_ids, dtype="S"))
        ft.create_dataset("name", data=np.array(list(genes), dtype="S"))
        ft.create_dataset("feature_type", data=np.array(feature_types, dtype="S"))
        ft.create_dataset("genome", data=np.array([genome] * n_genes, dtype="S"))
        ft.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))


def write_xenium(root: Path, *, prefixes: np.ndarray, centroids_um: np.ndarray, cell_area: np.ndarray,
                 nucleus_area: np.ndarray, counts: sp.spmatrix, genes: Sequence[str], morphology: np.ndarray,
                 pixel_size: float = XENIUM_PIXEL_UM, feature_types: Sequence[str] | None = None,
                 cell_boundaries: pd.DataFrame | None = None, nucleus_boundaries: pd.DataFrame | None = None,
                 transcripts: pd.DataFrame | None = None, experiment: dict | None = None,
                 compression: str | None = None, tile: int | None = None) -> list[str]:
    """A Xenium Onboard Analysis 2.x output folder; returns the cell ids.

    Writes ``experiment.xenium``, ``cells.parquet``, ``cells.zarr.zip`` (``cell_id``,
    ``cell_summary``; no segmentation masks), ``cell_feature_matrix.h5``,
    ``morphology_focus/morphology_focus_0000.ome.tif`` (DAPI) and, when given,
    ``cell_boundaries.parquet``, ``nucleus_boundaries.parquet`` (columns ``cell_id``, ``vertex_x``,
    ``vertex_y`` in µm) and ``transcripts.parquet``.

    Parameters
    ----------
    root
        The folder to create.
    prefixes
        uint32 cell-id prefixes; the ids are Xenium's ``<8 letters>-1`` strings made from them.
    centroids_um, cell_area, nucleus_area
        (n, 2) x/y centroids and areas in µm / µm².
    counts, genes, feature_types
        n x genes counts and the features' names and types (default: all ``Gene Expression``).
    morphology
        2D uint16 DAPI image in pixels of ``pixel_size`` µm.
    experiment
        Extra keys of ``experiment.xenium``.
    compression, tile
        TIFF compression (e.g. ``"zlib"``) and tile side of the morphology image; HDF5 gzip when
        compression is given.
    """
    import tifffile
    import zarr
    from spatialdata_io.readers.xenium import cell_id_str_from_prefix_suffix_uint32

    root.mkdir(parents=True)
    n = len(prefixes)
    specs = {"analysis_sw_version": "xenium-2.0.0.10", "pixel_size": pixel_size, "run_name": "synthetic",
             "region_name": "region_0", "num_cells": int(n)}
    specs.update(experiment or {})
    (root / "experiment.xenium").write_text(json.dumps(specs, indent=2))
    prefixes = np.asarray(prefixes, dtype=np.uint32)
    ids = cell_id_str_from_prefix_suffix_uint32(prefixes, np.ones(n, dtype=np.uint32)).tolist()
    counts = sp.csr_matrix(counts)
    types = np.asarray(feature_types if feature_types is not None else ["Gene Expression"] * len(genes))
    gex = types == "Gene Expression"
    per_cell_gex = np.asarray(counts[:, gex].sum(axis=1)).ravel()
    per_cell_ctrl = np.asarray(counts[:, ~gex].sum(axis=1)).ravel() if (~gex).any() else np.zeros(n)
    cells = pd.DataFrame({
        "cell_id": ids, "x_centroid": centroids_um[:, 0], "y_centroid": centroids_um[:, 1],
        "transcript_counts": per_cell_gex.astype(np.int64), "control_probe_counts": per_cell_ctrl.astype(np.int64),
        "total_counts": (per_cell_gex + per_cell_ctrl).astype(np.int64),
        "cell_area": np.asarray(cell_area, dtype=float), "nucleus_area": np.asarray(nucleus_area, dtype=float),
        "nucleus_count": np.ones(n, dtype=np.int64)})
    cells.to_parquet(root / "cells.parquet", index=False)
    store = zarr.storage.ZipStore(root / "cells.zarr.zip", mode="w")
    group = zarr.open_group(store, mode="w", zarr_format=2)
    group.create_array("cell_id", data=np.column_stack([prefixes, np.ones(n, dtype=np.uint32)]))
    summary = np.column_stack([centroids_um, cell_area, centroids_um, nucleus_area, np.zeros(n), np.ones(n)])
    names = ["cell_centroid_x", "cell_centroid_y", "cell_area", "nucleus_centroid_x", "nucleus_centroid_y",
             "nucleus_area", "z_level", "nucleus_count"]
    group.create_array("cell_summary", data=summary.astype(np.float64), attributes={"column_names": names})
    store.close()
    write_10x_h5(root / "cell_feature_matrix.h5", counts, ids, genes, feature_types=types.tolist(),
                 genome="Unknown", compression="gzip" if compression else None)
    for name, frame in (("cell_boundaries", cell_boundaries), ("nucleus_boundaries", nucleus_boundaries),
                        ("transcripts", transcripts)):
        if frame is not None:
            frame.to_parquet(root / f"{name}.parquet", index=False)
    (root / "morphology_focus").mkdir()
    kwargs: dict[str, Any] = {}
    if compression:
        kwargs.update(compression=compression, compressionargs={"level": 1}, predictor=True, maxworkers=2)
    if tile:
        kwargs["tile"] = (tile, tile)
    tifffile.imwrite(root / "morphology_focus" / "morphology_focus_0000.ome.tif", morphology,
                     photometric="minisblack",
                     metadata={"axes": "YX", "PhysicalSizeX": pixel_size, "PhysicalSizeY": pixel_size,
                               "Channel": {"Name": ["DAPI"]}}, **kwargs)
    return ids


def hd_scalefactors(bin_um: float, microns_per_pixel: float, hires_scalef: float, lowres_scalef: float) -> dict:
    """``scalefactors_json.json`` of a Space Ranger HD bin size."""
    return {"spot_diameter_fullres": bin_um / microns_per_pixel, "bin_size_um": float(bin_um),
            "microns_per_pixel": microns_per_pixel, "tissue_hires_scalef": hires_scalef,
            "tissue_lowres_scalef": lowres_scalef, "fiducial_diameter_fullres": 100.0,
            "regist_target_img_scalef": hires_scalef}


def hd_bin_positions(bin_um: int, rows: np.ndarray, cols: np.ndarray, in_tissue: np.ndarray,
                     microns_per_pixel: float, origin_px: tuple[float, float]) -> pd.DataFrame:
    """``tissue_positions.parquet`` of one bin size: barcodes ``s_008um_<row>_<col>-1`` and pixel centres."""
    side = bin_um / microns_per_pixel
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    return pd.DataFrame({
        "barcode": [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols)],
        "in_tissue": np.asarray(in_tissue, dtype=np.int32), "array_row": rows, "array_col": cols,
        "pxl_row_in_fullres": origin_px[1] + (rows + 0.5) * side,
        "pxl_col_in_fullres": origin_px[0] + (cols + 0.5) * side,
    })


def write_visium_hd(root: Path, *, bins: dict[int, tuple[pd.DataFrame, sp.spmatrix]], genes: Sequence[str],
                    hires: np.ndarray, lowres: np.ndarray, microns_per_pixel: float, hires_scalef: float,
                    lowres_scalef: float, gene_ids: Sequence[str] | None = None, genome: str = "GRCh38",
                    microscope_image: np.ndarray | None = None, compression: str | None = None) -> None:
    """A Space Ranger HD 3.x ``outs`` folder: ``feature_slice.h5``, ``spatial/``, ``binned_outputs/``.

    Parameters
    ----------
    root
        The ``outs`` folder to create.
    bins
        Bin size (µm) -> (``tissue_positions`` frame of every bin, counts of the ``in_tissue`` bins
        in the frame's order): written as ``binned_outputs/square_<NNN>um/``.
    genes, gene_ids, genome
        The features.
    hires, lowres
        RGB uint8 ``tissue_hires_image.png`` / ``tissue_lowres_image.png``.
    microns_per_pixel, hires_scalef, lowres_scalef
        The full-resolution pixel size and the images' scale factors.
    microscope_image
        Optional full-resolution image (``microscope_image/tissue.tif``).
    compression
        HDF5 compression of the matrices (e.g. ``"gzip"``).
    """
    import h5py
    import imageio.v3 as iio

    root.mkdir(parents=True)
    with h5py.File(root / "feature_slice.h5", "w") as f:
        layout = {"file_format": "1.0", "transform": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
        f.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps(layout)})
    (root / "spatial").mkdir()
    sf = hd_scalefactors(2, microns_per_pixel, hires_scalef, lowres_scalef)
    (root / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    iio.imwrite(root / "spatial" / "tissue_hires_image.png", hires)
    iio.imwrite(root / "spatial" / "tissue_lowres_image.png", lowres)
    for bin_um, (pos, counts) in bins.items():
        d = root / "binned_outputs" / f"square_{bin_um:03d}um"
        (d / "spatial").mkdir(parents=True)
        pos.to_parquet(d / "spatial" / "tissue_positions.parquet", index=False)
        (d / "spatial" / "scalefactors_json.json").write_text(
            json.dumps(hd_scalefactors(bin_um, microns_per_pixel, hires_scalef, lowres_scalef)))
        barcodes = pos.loc[pos["in_tissue"] == 1, "barcode"].tolist()
        if sp.csr_matrix(counts).shape[0] != len(barcodes):
            raise ValueError(f"{bin_um} µm: {counts.shape[0]} rows of counts for {len(barcodes)} bins in tissue")
        write_10x_h5(d / "filtered_feature_bc_matrix.h5", counts, barcodes, genes, gene_ids=gene_ids,
                     genome=genome, compression=compression)
    if microscope_image is not None:
        (root / "microscope_image").mkdir()
        iio.imwrite(root / "microscope_image" / "tissue.tif", microscope_image)


# ----------------------------------------------------------------------------- images
def _disk_stamps(max_radius: int) -> list[np.ndarray]:
    """Dome-shaped nucleus templates (float32, peak 1) of radius 0..max_radius pixels."""
    stamps = []
    for r in range(max_radius + 1):
        rr = max(r, 1)
        yy, xx = np.mgrid[-rr:rr + 1, -rr:rr + 1]
        d2 = (xx**2 + yy**2) / rr**2
        stamps.append(np.sqrt(np.clip(1 - d2, 0, 1)).astype(np.float32))
    return stamps


def render_dapi(anatomy: Anatomy, cells: Cells, types: Sequence[str], rng: np.random.Generator,
                pixel_size: float = XENIUM_PIXEL_UM) -> np.ndarray:
    """uint16 DAPI image of the field: dim tissue autofluorescence, one bright dome per nucleus."""
    W, H = anatomy.size
    w, h = int(np.ceil(W / pixel_size)), int(np.ceil(H / pixel_size))
    block = 16
    gy, gx = np.mgrid[0:h:block, 0:w:block]
    centres = np.column_stack([(gx.ravel() + block / 2) * pixel_size, (gy.ravel() + block / 2) * pixel_size])
    small = np.where(anatomy.tissue(centres), 420, 110).reshape(gx.shape).astype(np.uint16)
    small = small + rng.integers(0, 40, size=small.shape, dtype=np.uint16)
    img = np.repeat(np.repeat(small, block, axis=0), block, axis=1)[:h, :w].copy()
    radius = np.sqrt(cells.nucleus_area / np.pi) / pixel_size
    stamps = _disk_stamps(int(np.ceil(radius.max())) + 1)
    levels = 8
    cache: dict[tuple[int, int], np.ndarray] = {}
    bright = np.array([NUCLEUS_BRIGHTNESS.get(t, 0.75) for t in types])[cells.type_code]
    bright = bright * rng.uniform(0.8, 1.05, len(bright))
    lvl = np.clip((bright * levels).astype(int), 1, levels)
    cx = (cells.xy[:, 0] / pixel_size).astype(int)
    cy = (cells.xy[:, 1] / pixel_size).astype(int)
    for x0, y0, r, q in zip(cx, cy, np.rint(radius).astype(int), lvl):
        key = (r, q)
        stamp = cache.get(key)
        if stamp is None:
            stamp = cache[key] = (stamps[r] * (16000.0 * q / levels)).astype(np.uint16)
        rr = stamp.shape[0] // 2
        ya, yb, xa, xb = y0 - rr, y0 + rr + 1, x0 - rr, x0 + rr + 1
        sa, sb, ta, tb = max(0, -ya), stamp.shape[0] - max(0, yb - h), max(0, -xa), stamp.shape[1] - max(0, xb - w)
        view = img[max(ya, 0):min(yb, h), max(xa, 0):min(xb, w)]
        np.maximum(view, stamp[sa:sb, ta:tb], out=view)
    return img


def render_he(anatomy: Anatomy, cells: Cells, width_px: int, um_per_px: float,
              rng: np.random.Generator) -> np.ndarray:
    """A synthetic H&E (RGB uint8) of the field: glass, eosin-pink tissue paler in white matter,
    darker in cell-dense layers, a hematoxylin-purple dot per nucleus."""
    from scipy.ndimage import gaussian_filter, zoom

    W, H = anatomy.size
    height_px = int(round(width_px * H / W))
    coarse = 4
    gy, gx = np.mgrid[0:height_px:coarse, 0:width_px:coarse]
    centres = np.column_stack([(gx.ravel() + coarse / 2) * um_per_px, (gy.ravel() + coarse / 2) * um_per_px])
    reg = anatomy.regions(centres).reshape(gx.shape)
    tissue = ((reg != OUTSIDE) & (reg != LUMEN)).astype(np.float32)
    pale = (reg == WM).astype(np.float32)
    tissue = zoom(gaussian_filter(tissue, 1.0), coarse, order=1)[:height_px, :width_px]
    pale = zoom(gaussian_filter(pale, 1.0), coarse, order=1)[:height_px, :width_px]
    nuclei = np.zeros((height_px, width_px), dtype=np.float32)
    px = np.clip((cells.xy / um_per_px).astype(int), 0, [width_px - 1, height_px - 1])
    np.add.at(nuclei, (px[:, 1], px[:, 0]), 1.0)
    sigma = max(0.6, float(np.sqrt(np.median(cells.nucleus_area) / np.pi) / um_per_px) * 0.6)
    nuclei = np.clip(gaussian_filter(nuclei, sigma) * (2 * np.pi * sigma**2) * 0.9, 0, 1)
    texture = gaussian_filter(rng.normal(0, 1, (height_px // 8 + 1, width_px // 8 + 1)).astype(np.float32), 1.5)
    texture = zoom(texture, 8, order=1)[:height_px, :width_px] * 0.04
    glass = np.array([243, 241, 244], dtype=np.float32)
    eosin = np.array([232, 170, 198], dtype=np.float32)
    white = np.array([240, 208, 222], dtype=np.float32)
    hema = np.array([88, 52, 132], dtype=np.float32)
    base = eosin[None, None] * (1 - pale[..., None]) + white[None, None] * pale[..., None]
    base = base * (1 + texture[..., None])
    img = glass[None, None] * (1 - tissue[..., None]) + base * tissue[..., None]
    img = img * (1 - nuclei[..., None]) + hema[None, None] * nuclei[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def star_polygons(xy: np.ndarray, area: np.ndarray, ids: Sequence[str], rng: np.random.Generator,
                  n_vertices: int = 12, roughness: float = 0.12) -> pd.DataFrame:
    """Irregular closed polygons (``n_vertices`` + the first again) of exactly ``area`` around each centre."""
    n = len(xy)
    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)[None, :] + rng.uniform(0, 2 * np.pi, (n, 1))
    wobble = 1 + roughness * (np.sin(2 * theta + rng.uniform(0, 6.3, (n, 1))) * rng.uniform(0, 1, (n, 1))
                              + np.sin(3 * theta + rng.uniform(0, 6.3, (n, 1))) * rng.uniform(0, 1, (n, 1)))
    r = np.sqrt(area / np.pi)[:, None] * wobble
    vx, vy = r * np.cos(theta), r * np.sin(theta)
    shoelace = 0.5 * np.abs(np.sum(vx * np.roll(vy, -1, axis=1) - np.roll(vx, -1, axis=1) * vy, axis=1))
    k = np.sqrt(area / shoelace)[:, None]
    vx = np.concatenate([vx, vx[:, :1]], axis=1) * k + xy[:, :1]
    vy = np.concatenate([vy, vy[:, :1]], axis=1) * k + xy[:, 1:]
    return pd.DataFrame({"cell_id": np.repeat(np.asarray(ids, dtype=object), n_vertices + 1),
                         "vertex_x": vx.ravel().astype(np.float32), "vertex_y": vy.ravel().astype(np.float32)})


# ----------------------------------------------------------------------------- Xenium
def make_xenium(root: str | Path, reference: Any, *, n_cells: int = 100_000, seed: int = 0,
                transcripts: bool = False, truth_dir: str | Path | None = None) -> dict[str, Any]:
    """A Xenium output folder of ``n_cells`` cells on the hippocampus anatomy (see the module docstring).

    Parameters
    ----------
    root
        The folder to create (must not exist).
    reference
        The reference AnnData (:func:`load_reference`): its types and profiles.
    n_cells, seed
        Number of cells; random seed.
    transcripts
        Also write ``transcripts.parquet`` (one point per count, within the cell).
    truth_dir
        Where to write ``xenium_cells.parquet``: cell id, type, region, the simulated counts of the
        held-out genes (``<gene>``) and their expected values (``mean:<gene>``).

    Returns
    -------
    dict
        ``ids``, ``panel``, ``held_out``, ``types`` (per cell), ``scale``, ``n_cells``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    prof = Profiles.from_reference(reference)
    scale = scale_for_cells(n_cells, seed)
    while True:
        anatomy = Anatomy(scale, np.random.default_rng(seed + 1))
        try:
            cells = sample_cells(anatomy, prof.types, rng, n_cells)
            break
        except ValueError:
            scale *= 1.05
    # Xenium's cells come out in tiles of ~400 µm, row by row
    tile = (cells.xy // 400).astype(int)
    order = np.lexsort((cells.xy[:, 0], tile[:, 0], tile[:, 1]))
    cells = Cells(cells.xy[order], cells.region[order], cells.type_code[order], cells.area[order],
                  cells.nucleus_area[order])
    held_out = prof.held_out_genes()
    panel = [g for g in prof.genes if g not in held_out]
    panel_idx = np.array([prof.genes.index(g) for g in panel])
    held_idx = np.array([prof.genes.index(g) for g in held_out])
    profiles = prof.cell_profiles(cells.type_code, rng)
    platform = rng.lognormal(0.0, 0.5, len(prof.genes)).astype(np.float32)
    profiles *= platform[None, :]
    profiles /= profiles.sum(axis=1, keepdims=True)
    library = (2.0 * cells.area * rng.lognormal(0.0, 0.3, len(cells.area))).astype(np.float32)
    mean = profiles * library[:, None]
    counts = nb_counts(mean, 10.0, rng)
    held_mean = mean[:, held_idx].copy()
    del profiles, mean
    neg = sp.csr_matrix(rng.poisson(0.004, size=(n_cells, N_NEGATIVE_CONTROLS)).astype(np.float32))
    panel_counts = sp.hstack([counts[:, panel_idx], neg], format="csr")
    neg_names = [f"NegControlProbe_{i:05d}" for i in range(N_NEGATIVE_CONTROLS)]
    features = panel + neg_names
    ftypes = ["Gene Expression"] * len(panel) + ["Negative Control Probe"] * N_NEGATIVE_CONTROLS
    dapi = render_dapi(anatomy, cells, prof.types, rng)
    prefixes = np.sort(rng.choice(2**31 - 1, size=n_cells, replace=False)) + 1
    from spatialdata_io.readers.xenium import cell_id_str_from_prefix_suffix_uint32

    ids = cell_id_str_from_prefix_suffix_uint32(prefixes.astype(np.uint32), np.ones(n_cells, np.uint32)).tolist()
    boundaries = star_polygons(cells.xy, cells.area, ids, rng)
    nuclei = star_polygons(cells.xy, cells.nucleus_area, ids, rng, roughness=0.06)
    tx = _transcripts(cells, panel_counts, features, ids, rng) if transcripts else None
    write_xenium(root, prefixes=prefixes, centroids_um=cells.xy, cell_area=cells.area,
                 nucleus_area=cells.nucleus_area, counts=panel_counts, genes=features, morphology=dapi,
                 feature_types=ftypes, cell_boundaries=boundaries, nucleus_boundaries=nuclei, transcripts=tx,
                 experiment={"run_name": "synthetic_hippocampus", "panel_name": "hippocampus_reference_panel",
                             "panel_num_targets_predesigned": len(panel), "panel_organism": "Mouse",
                             "panel_tissue_type": "brain", "synthetic": True, "seed": seed},
                 compression="zlib", tile=1024)
    types = np.asarray(prof.types)[cells.type_code]
    if truth_dir is not None:
        truth_dir = Path(truth_dir)
        truth_dir.mkdir(parents=True, exist_ok=True)
        truth = pd.DataFrame({"cell_id": ids, "cell_type": types, "region": np.asarray(REGIONS)[cells.region]})
        held = counts[:, held_idx].toarray().astype(np.int32)
        for j, g in enumerate(held_out):
            truth[g] = held[:, j]
        for j, g in enumerate(held_out):
            truth[f"mean:{g}"] = held_mean[:, j]
        truth.to_parquet(truth_dir / "xenium_cells.parquet", index=False)
    return {"ids": ids, "panel": panel, "held_out": held_out, "types": types, "scale": scale,
            "n_cells": n_cells, "morphology_shape": dapi.shape}


def _transcripts(cells: Cells, counts: sp.csr_matrix, features: Sequence[str], ids: Sequence[str],
                 rng: np.random.Generator) -> pd.DataFrame:
    coo = counts.tocoo()
    reps = coo.data.astype(np.int64)
    cell = np.repeat(coo.row, reps)
    gene = np.repeat(coo.col, reps)
    r = np.sqrt(cells.area[cell] / np.pi) * np.sqrt(rng.random(len(cell)))
    a = rng.uniform(0, 2 * np.pi, len(cell))
    n = len(cell)
    return pd.DataFrame({
        "transcript_id": np.arange(n, dtype=np.uint64), "cell_id": np.asarray(ids, dtype=object)[cell],
        "overlaps_nucleus": (r < np.sqrt(cells.nucleus_area[cell] / np.pi)).astype(np.uint8),
        "feature_name": pd.Categorical.from_codes(gene, categories=list(features)),
        "x_location": (cells.xy[cell, 0] + r * np.cos(a)).astype(np.float32),
        "y_location": (cells.xy[cell, 1] + r * np.sin(a)).astype(np.float32),
        "z_location": rng.uniform(8, 14, n).astype(np.float32), "qv": np.full(n, 40.0, dtype=np.float32)})


# ----------------------------------------------------------------------------- Visium HD
def make_visium_hd(root: str | Path, reference: Any, *, n_bins: int = 200_000, n_genes: int = 18_000,
                   seed: int = 0, truth_dir: str | Path | None = None,
                   hires_side: int = HD_HIRES_SIDE) -> dict[str, Any]:
    """A Space Ranger HD ``outs`` folder with about ``n_bins`` 8 µm bins in tissue (see the module docstring).

    Parameters
    ----------
    root
        The ``outs`` folder to create (must not exist).
    reference
        The reference AnnData (:func:`load_reference`).
    n_bins, n_genes, seed
        Bins of 8 µm in tissue (approximately: the tissue's outline decides), genes (at least the
        reference's), random seed.
    truth_dir
        Where to write ``visium_hd_bins.parquet`` (barcode, cell-type fractions of each 8 µm bin).
    hires_side
        Longest side (pixels) of ``tissue_hires_image.png``.

    Returns
    -------
    dict
        ``n_bins`` (8 µm, in tissue), ``n_bins_16``, ``n_genes``, ``n_cells``, ``scale``, ``nnz``.
    """
    from scipy.spatial import cKDTree

    root = Path(root)
    rng = np.random.default_rng(seed + 7)
    prof = Profiles.from_reference(reference)
    n_ref = len(prof.genes)
    if n_genes < n_ref:
        raise ValueError(f"n_genes={n_genes} is fewer than the reference's {n_ref} genes")
    # the field: n_bins x 64 µm² of tissue
    probe = Anatomy(1.0, np.random.default_rng(seed + 8))
    pts = np.random.default_rng(seed + 9).uniform([0, 0], probe.size, size=(100_000, 2))
    reg = probe.regions(pts)
    frac = float(np.mean((reg != OUTSIDE) & (reg != LUMEN)))
    scale = float(np.sqrt(n_bins * HD_BIN_UM**2 / frac / (REF_FIELD_UM[0] * REF_FIELD_UM[1])))
    anatomy = Anatomy(scale, np.random.default_rng(seed + 8))
    W, H = anatomy.size
    n_cols, n_rows = int(W // HD_BIN_UM), int(H // HD_BIN_UM)
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    centres = np.column_stack([(cols + 0.5) * HD_BIN_UM, (rows + 0.5) * HD_BIN_UM])
    reg = anatomy.regions(centres)
    in_tissue = (reg != OUTSIDE) & (reg != LUMEN)
    tissue_idx = np.flatnonzero(in_tissue)
    cells = sample_cells(anatomy, prof.types, rng)
    # each bin: nine points, each taken by the nearest cell
    sub = (np.arange(3) + 0.5) / 3 * HD_BIN_UM - HD_BIN_UM / 2
    oy, ox = np.meshgrid(sub, sub, indexing="ij")
    offsets = np.column_stack([ox.ravel(), oy.ravel()])
    probe_pts = (centres[tissue_idx][:, None, :] + offsets[None]).reshape(-1, 2)
    _, nearest = cKDTree(cells.xy).query(probe_pts, workers=2)
    nearest = nearest.reshape(len(tissue_idx), 9)
    nb = len(tissue_idx)
    mix = sp.csr_matrix((np.full(nb * 9, 1 / 9, dtype=np.float32), nearest.ravel(),
                         np.arange(0, nb * 9 + 1, 9)), shape=(nb, len(cells.xy)))
    mix.sum_duplicates()
    cell_prof = prof.cell_profiles(cells.type_code, rng)
    type_onehot = sp.csr_matrix((np.ones(len(cells.xy), dtype=np.float32), cells.type_code,
                                 np.arange(len(cells.xy) + 1)), shape=(len(cells.xy), len(prof.types)))
    fractions = np.asarray((mix @ type_onehot).todense(), dtype=np.float32)
    rna = np.array([CELL_AREA.get(t, 70.0) for t in prof.types], dtype=np.float32) / 80.0
    library = (150.0 * (fractions @ rna) * rng.lognormal(0.0, 0.45, nb)).astype(np.float32)
    platform = rng.lognormal(0.0, 0.3, n_ref).astype(np.float32)
    # the reference genes: NB around the bin's mixture of its cells' profiles
    parts = []
    chunk = 20_000
    for start in range(0, nb, chunk):
        stop = min(start + chunk, nb)
        p = np.asarray(mix[start:stop] @ cell_prof, dtype=np.float32) * platform[None, :]
        p /= p.sum(axis=1, keepdims=True)
        parts.append(nb_counts(p * (0.55 * library[start:stop, None]), 3.0, rng))
    ref_counts = sp.vstack(parts, format="csr")
    del cell_prof
    # filler genes: heavy-tailed, type-modulated profiles; Poisson counts drawn one by one
    n_fill = n_genes - n_ref
    if n_fill:
        base = rng.lognormal(0.0, 1.8, n_fill)
        q = base[None, :] * rng.lognormal(0.0, 0.6, (len(prof.types), n_fill))
        q /= q.sum(axis=1, keepdims=True)
        cdf = np.cumsum(q, axis=1)
        cdf[:, -1] = 1.0
        flat = (cdf + np.arange(len(prof.types))[:, None]).ravel()
        n_each = rng.poisson(0.45 * library)
        bin_of = np.repeat(np.arange(nb), n_each)
        which = rng.integers(0, 9, len(bin_of))
        t = cells.type_code[nearest[bin_of, which]].astype(np.int64)
        g = np.searchsorted(flat, rng.random(len(bin_of)) + t) - t * n_fill
        g = np.clip(g, 0, n_fill - 1)
        fill = sp.csr_matrix((np.ones(len(bin_of), dtype=np.float32), (bin_of, g)), shape=(nb, n_fill))
        fill.sum_duplicates()
        counts8 = sp.hstack([ref_counts, fill], format="csr")
    else:
        counts8 = ref_counts
    empty = np.flatnonzero(np.diff(counts8.indptr) == 0)
    if empty.size:  # a bin without any count: one count of its most expressed reference gene
        counts8 = counts8.tolil()
        for i in empty:
            counts8[i, int(np.argmax(prof.mean.T @ fractions[i]))] = 1
        counts8 = counts8.tocsr()
    genes = prof.genes + [f"Sim{i + 1:05d}" for i in range(n_fill)]
    gene_ids = [f"ENSMUSG{i + 1:011d}" for i in range(n_genes)]
    # 16 µm bins: sums of 2 x 2 bins of 8 µm
    r16, c16 = rows[tissue_idx] // 2, cols[tissue_idx] // 2
    n_cols16 = (n_cols + 1) // 2
    key16 = r16 * n_cols16 + c16
    uniq, parent = np.unique(key16, return_inverse=True)
    agg = sp.csr_matrix((np.ones(nb, dtype=np.float32), (parent, np.arange(nb))), shape=(len(uniq), nb))
    counts16 = (agg @ counts8).tocsr()
    all16 = np.arange(((n_rows + 1) // 2) * n_cols16)
    rows16_all, cols16_all = np.divmod(all16, n_cols16)
    in16 = np.isin(all16, uniq)
    # images and the full-resolution frame
    full_w = W / HD_MICRONS_PER_PIXEL
    full_h = H / HD_MICRONS_PER_PIXEL
    origin = (0.0, 0.0)
    hires_scalef = hires_side / max(full_w, full_h)
    lowres_scalef = min(HD_LOWRES_SIDE, hires_side) / max(full_w, full_h)
    hires_w = int(round(full_w * hires_scalef))
    hires = render_he(anatomy, cells, hires_w, HD_MICRONS_PER_PIXEL / hires_scalef, rng)
    from PIL import Image

    low_size = (int(round(full_w * lowres_scalef)), int(round(full_h * lowres_scalef)))
    lowres = np.asarray(Image.fromarray(hires).resize(low_size, Image.LANCZOS))
    pos8 = hd_bin_positions(8, rows, cols, in_tissue, HD_MICRONS_PER_PIXEL, origin)
    pos16 = hd_bin_positions(16, rows16_all, cols16_all, in16, HD_MICRONS_PER_PIXEL, origin)
    write_visium_hd(root, bins={8: (pos8, counts8), 16: (pos16, counts16)}, genes=genes, gene_ids=gene_ids,
                    genome="mm10", hires=hires, lowres=lowres, microns_per_pixel=HD_MICRONS_PER_PIXEL,
                    hires_scalef=hires_scalef, lowres_scalef=lowres_scalef, compression="gzip")
    if truth_dir is not None:
        truth_dir = Path(truth_dir)
        truth_dir.mkdir(parents=True, exist_ok=True)
        truth = pd.DataFrame(fractions, columns=prof.types)
        truth.insert(0, "barcode", pos8.loc[in_tissue, "barcode"].to_numpy())
        truth["dominant"] = np.asarray(prof.types)[fractions.argmax(axis=1)]
        truth["region"] = np.asarray(REGIONS)[reg[tissue_idx]]
        truth.to_parquet(truth_dir / "visium_hd_bins.parquet", index=False)
    return {"n_bins": nb, "n_bins_16": len(uniq), "n_genes": n_genes, "n_cells": len(cells.xy), "scale": scale,
            "nnz": int(counts8.nnz), "field_um": (W, H), "hires_shape": hires.shape}


# ----------------------------------------------------------------------------- CLI
def folder_size(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (xenium/, visium_hd/outs/, reference/, truth/)")
    parser.add_argument("--only", choices=("xenium", "hd"), help="write only one of the two")
    parser.add_argument("--cells", type=int, default=100_000, help="Xenium cells (default 100,000)")
    parser.add_argument("--bins", type=int, default=200_000, help="Visium HD 8 µm bins in tissue (about; default 200,000)")
    parser.add_argument("--hd-genes", type=int, default=18_000, help="Visium HD genes (default 18,000)")
    parser.add_argument("--transcripts", action="store_true", help="also write Xenium transcripts.parquet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=Path, default=None, help=f"reference folder (default {REFERENCE_DIR})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    args = parser.parse_args(argv)
    import shutil
    import warnings

    warnings.filterwarnings("ignore", message=".*zarr v3.*")
    reference = load_reference(args.reference)
    out: Path = args.out
    targets = {"xenium": out / "xenium", "hd": out / "visium_hd"}
    for name, path in targets.items():
        if args.only in (None, name) and path.exists():
            if not args.overwrite:
                raise SystemExit(f"{path} exists: pass --overwrite or another folder")
            shutil.rmtree(path)
    (out / "reference").mkdir(parents=True, exist_ok=True)
    reference.write_h5ad(out / "reference" / "hippocampus_reference.h5ad")
    truth = out / "truth"
    info: dict[str, Any] = {"seed": args.seed, "reference": REFERENCE_SOURCE, "generator": "benchmarks/make_hd_xenium.py"}
    if args.only in (None, "xenium"):
        start = time.perf_counter()
        xe = make_xenium(targets["xenium"], reference, n_cells=args.cells, seed=args.seed,
                         transcripts=args.transcripts, truth_dir=truth)
        seconds = time.perf_counter() - start
        size = folder_size(targets["xenium"])
        info["xenium"] = {"cells": xe["n_cells"], "panel_genes": len(xe["panel"]), "held_out": xe["held_out"],
                          "morphology_px": list(xe["morphology_shape"]), "seconds": round(seconds, 1),
                          "bytes": size}
        print(f"xenium: {xe['n_cells']:,} cells x {len(xe['panel'])} panel genes (+{N_NEGATIVE_CONTROLS} controls), "
              f"morphology {xe['morphology_shape'][1]} x {xe['morphology_shape'][0]} px; "
              f"{size / 1e6:.0f} MB in {seconds:.0f} s", flush=True)
    if args.only in (None, "hd"):
        start = time.perf_counter()
        hd = make_visium_hd(targets["hd"] / "outs", reference, n_bins=args.bins, n_genes=args.hd_genes,
                            seed=args.seed, truth_dir=truth)
        seconds = time.perf_counter() - start
        size = folder_size(targets["hd"])
        info["visium_hd"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hd.items()}
        info["visium_hd"].update(seconds=round(seconds, 1), bytes=size)
        print(f"visium_hd: {hd['n_bins']:,} bins of 8 µm ({hd['n_bins_16']:,} of 16 µm) x {hd['n_genes']:,} genes, "
              f"{hd['nnz'] / hd['n_bins']:.0f} non-zeros per bin, {hd['n_cells']:,} simulated cells; "
              f"{size / 1e6:.0f} MB in {seconds:.0f} s", flush=True)
    truth.mkdir(parents=True, exist_ok=True)
    previous = json.loads((truth / "truth.json").read_text()) if (truth / "truth.json").is_file() else {}
    previous.update(info)
    (truth / "truth.json").write_text(json.dumps(previous, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
