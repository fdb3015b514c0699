"""Accuracy benchmark: every method of every task side by side, with seconds per method.

Runs, for each task and dataset, the native model ('spatialdl', default settings), the
baselines and the reference tools that are installed, all called THROUGH THE REGISTRY
(``napari_spatialdl.tasks.get_method``) so the figures are those of what users run. A
baseline that is not registered is computed here (marked "local" in the table).

Protocols (see ``_protocols.py``):

- deconvolution: hippocampus silver standard (spots simulated from half of the
  annotated reference, the other half is the reference) and the synthetic tissue
  (``obsm['true_proportions']``); RMSE, Jensen-Shannon divergence, per-type Pearson r.
- integration: batch = replicate (16) / synthetic batch (3), labels = cell types; scIB
  (scib-metrics when installed, otherwise the sklearn fallback, named in the output).
- annotation: train Rep1-Rep4, test Rep5-Rep6 / synthetic: hold out the last batch;
  accuracy and macro-F1. Hard case: the same hippocampus split on a 130-gene panel (the
  reference's most variable genes, chosen on Rep1-Rep4), a MERFISH/Xenium-sized panel.
- imputation: 10 % of the non-zero counts of the spots hidden; Pearson r of log1p
  values and median absolute error on the hidden entries.
- gene prediction (``--tasks predict_genes``; Li et al. 2022): the genes shared by the spots
  and the reference split into 5 folds; each fold hidden from the spots and predicted from the
  reference by every impute method that takes a reference; per-gene Spearman and Pearson r
  (log-normalised) against the measured values, mean and median over genes.

Usage::

    python benchmarks/accuracy.py                       # everything
    python benchmarks/accuracy.py --tasks deconvolve --datasets hippocampus --quick
    python benchmarks/accuracy.py --methods spatialdl,nnls,stereoscope --out results/x.md
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _protocols as P  # noqa: E402

TASKS = ("deconvolve", "integrate", "annotate", "impute", "predict_genes")
DATASETS = ("hippocampus", "synthetic")
QUICK_EPOCHS = 30

#: registry names accepted for each baseline (first found wins); else computed locally
BASELINE_NAMES = {
    "deconvolve": {"nnls": ("nnls",)},
    "integrate": {"pca": ("pca", "unintegrated")},
    "annotate": {"logreg": ("logreg", "logistic", "logistic_regression")},
    "impute": {"none": ("none", "no_imputation", "identity"), "knn": ("knn", "knn_smoothing")},
}

#: parameters a method needs beyond the task's inputs (everything else: the method's defaults)
#: (BATCH: the dataset's batch column: scANVI is a batch-aware model, given the batches as designed)
BATCH = object()
METHOD_PARAMS = {("integrate", "scanvi"): {"labels_key": "cell_type"},
                 ("annotate", "scanvi"): {"batch_key": BATCH}}

#: figures quoted in the project issue (hippocampus), for comparison
ISSUE_FIGURES = {
    "deconvolve": "RMSE: Stereoscope 0.086 (63 s), NNLS 0.096, DestVI 0.104 (158 s), Tangram 0.111 (6 s)",
    "integrate": "scIB total: scANVI 0.789, scVI 0.743 (32 s), Harmony 0.683, PCA 0.669",
    "annotate": "macro-F1: scANVI 0.821 (40 s), logistic regression 0.802, CellTypist 0.784",
    "impute": "Pearson r: kNN 0.799, scVI 0.795 (35 s), MAGIC 0.781",
}


# ------------------------------------------------------------------ data per task

@dataclass
class Case:
    """One task on one dataset: the inputs and how to score a method's output."""

    task: str
    dataset: str
    args: tuple
    params: dict[str, Any]
    score: Callable[[AnnData], dict[str, float]]
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


#: size of the synthetic tissue in the benchmark (the package default, 2,000 spots and 3,000
#: cells, makes the reference tools' default runs take hours on 2 CPU cores; --synthetic-full)
SYNTHETIC_SIZE = {"n_spots": 600, "n_reference_cells": 1500}


def _datasets(names: list[str], synthetic_full: bool = False) -> dict[str, tuple[AnnData, AnnData]]:
    out = {}
    for name in names:
        if name == "hippocampus":
            out[name] = P.load_hippocampus()
        elif name == "synthetic":
            out[name] = P.load_synthetic(seed=0, **({} if synthetic_full else SYNTHETIC_SIZE))
        else:
            raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return out


def _counts_only(adata: AnnData, obs_cols: list[str] = ()) -> AnnData:
    """A clean AnnData: counts in X (from layers['counts'] when present), selected obs columns."""
    X = adata.layers["counts"] if "counts" in adata.layers else adata.X
    out = AnnData(X=P.dense(X).astype(np.float32), obs=adata.obs[list(obs_cols)].copy(),
                  var=pd.DataFrame(index=adata.var_names.copy()))
    if "spatial" in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=float)
    return out


def make_case(task: str, dataset: str, data: tuple[AnnData, AnnData], quick: bool) -> Case:
    reference, spatial = data
    batch_key = "replicate" if dataset == "hippocampus" else "batch"
    if task == "deconvolve":
        if dataset == "hippocampus":
            ref_half, spots, truth = P.simulate_spots(reference, "cell_type",
                                                      n_spots=100 if quick else 400, seed=0)
            ref_half = _counts_only(ref_half, ["cell_type"])
            note = (f"silver standard: {spots.n_obs} spots of 2-10 cells from half of the reference; "
                    f"the other half ({ref_half.n_obs} cells) is the reference")
        else:
            spots = _counts_only(spatial)
            truth = spatial.obsm["true_proportions"].copy()
            ref_half = _counts_only(reference, ["cell_type"])
            note = f"{spots.n_obs} synthetic spots vs obsm['true_proportions']; {ref_half.n_obs} reference cells"
        return Case(task, dataset, (spots, ref_half, "cell_type"), {},
                    lambda out: P.score_proportions(out.obsm["spatialdl_proportions"], truth), note)
    if task == "integrate":
        cells = _counts_only(reference, [batch_key, "cell_type"])
        note = (f"{cells.n_obs} cells, batch = {batch_key} ({cells.obs[batch_key].nunique()}), "
                f"labels = cell_type ({cells.obs['cell_type'].nunique()})")
        return Case(task, dataset, (cells, batch_key), {}, None, note,
                    extra={"cells": cells, "batch_key": batch_key})
    if task == "annotate":
        if dataset == "hippocampus":
            train, test = P.replicate_split(reference)
            note = f"train Rep1-Rep4 ({train.n_obs} cells), test Rep5-Rep6 ({test.n_obs} cells)"
        else:
            train, test = P.batch_split(reference, "batch")
            note = (f"train batches {sorted(train.obs['batch'].unique())} ({train.n_obs} cells), "
                    f"test {sorted(test.obs['batch'].unique())} ({test.n_obs} cells)")
        truth = test.obs["cell_type"].astype(str).to_numpy()
        note += f"; scANVI is given batch_key={batch_key!r} (the other methods take no batch)"
        train = _counts_only(train, ["cell_type", batch_key])
        test = _counts_only(test, [batch_key])  # the query carries no labels
        return Case(task, dataset, (test, train, "cell_type"), {},
                    lambda out: P.score_labels(truth, out.obs["spatialdl_cell_type"].astype(str)), note,
                    extra={"batch_key": batch_key})
    if task == "impute":
        return _impute_case(dataset, _counts_only(spatial), "spots")
    raise ValueError(task)


def _impute_case(dataset: str, obs: AnnData, what: str) -> Case:
    truth = obs.X.copy()
    masked, mask = P.mask_counts(truth, 0.1, seed=0)
    empty = masked.sum(axis=1) == 0
    if empty.any():  # never hand a method an empty observation: keep those out of the benchmark
        raise RuntimeError(f"masking emptied {int(empty.sum())} {what}")
    obs.X = masked
    note = (f"{obs.n_obs} {what} x {obs.n_vars} genes, {int(mask.sum())} non-zero counts hidden (10 %), "
            f"median {int(np.median(truth.sum(axis=1)))} UMIs per {what[:-1]}")
    return Case("impute", dataset, (obs,), {},
                lambda out: P.score_imputation(truth, out.layers["spatialdl_imputed"], mask), note)


def make_cases(task: str, dataset: str, data: tuple[AnnData, AnnData], quick: bool) -> list[Case]:
    """The cases of a task on a dataset (imputation on hippocampus: the spots and the cells)."""
    cases = [make_case(task, dataset, data, quick)]
    if task == "annotate" and dataset == "hippocampus":
        cases.append(_panel_case(data[0]))
    if task == "impute" and dataset == "hippocampus":
        cases[0].dataset = "hippocampus Visium spots"
        cases.append(_impute_case("hippocampus scRNA-seq cells", _counts_only(data[0]), "cells"))
    return cases


def _panel_case(reference: AnnData, n_genes: int = P.PANEL_GENES) -> Case:
    """Annotation on a small panel: the hippocampus reference cut to its ``n_genes`` most variable
    genes (chosen on the training replicates), train Rep1-Rep4, test Rep5-Rep6."""
    train_rows = reference.obs["rep"].astype(str).isin(P.TRAIN_REPS).to_numpy()
    case = make_case("annotate", "hippocampus", (P.gene_panel(reference, n_genes, train_rows), None), False)
    case.dataset = f"hippocampus {n_genes}-gene panel"
    case.note = (f"{n_genes}-gene panel (the most variable genes of Rep1-Rep4, no labels used) of the "
                 f"{reference.n_vars}-gene reference; " + case.note)
    return case


# ------------------------------------------------------------ local baselines

def local_nnls(spots: AnnData, reference: AnnData, labels_key: str) -> AnnData:
    """NNLS of each spot on the reference's mean count profiles (counts per cell)."""
    from scipy.optimize import nnls

    genes = spots.var_names[spots.var_names.isin(reference.var_names)]
    types = sorted(reference.obs[labels_key].astype(str).unique())
    R = P.dense(reference[:, genes].X)
    lab = reference.obs[labels_key].astype(str).to_numpy()
    S = np.stack([R[lab == t].mean(axis=0) for t in types], axis=1)  # genes x types
    X = P.dense(spots[:, genes].X)
    W = np.stack([nnls(S, x)[0] for x in X])
    out = spots.copy()
    out.obsm["spatialdl_proportions"] = pd.DataFrame(W / np.maximum(W.sum(1, keepdims=True), 1e-12),
                                                     index=spots.obs_names, columns=types)
    return out


def _lognorm(X) -> np.ndarray:
    X = P.dense(X)
    lib = X.sum(axis=1, keepdims=True)
    return np.log1p(X / np.where(lib > 0, lib, 1.0) * 1e4)


def local_logreg(query: AnnData, reference: AnnData, labels_key: str) -> AnnData:
    """Logistic regression (sklearn, L2, C=1) on log-normalised, scaled expression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    genes = query.var_names[query.var_names.isin(reference.var_names)]
    scaler = StandardScaler().fit(_lognorm(reference[:, genes].X))
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(scaler.transform(_lognorm(reference[:, genes].X)), reference.obs[labels_key].astype(str))
    out = query.copy()
    out.obs["spatialdl_cell_type"] = pd.Categorical(clf.predict(scaler.transform(_lognorm(query[:, genes].X))))
    return out


def local_none(spots: AnnData) -> AnnData:
    """No imputation: the observed (masked) counts."""
    out = spots.copy()
    out.layers["spatialdl_imputed"] = P.dense(spots.X)
    return out


def local_knn(spots: AnnData, k: int = 10) -> AnnData:
    """kNN smoothing: mean expression profile of each spot and its k nearest neighbours
    (in the PCA of log-normalised data), times the spot's own library size."""
    from sklearn.neighbors import NearestNeighbors

    X = P.dense(spots.X)
    lib = X.sum(axis=1, keepdims=True)
    Z = P.log_pca(X, n_comps=30)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
    freq = X / np.where(lib > 0, lib, 1.0)
    out = spots.copy()
    out.layers["spatialdl_imputed"] = (freq[idx].mean(axis=1) * lib).astype(np.float32)
    return out


def local_pca(cells: AnnData, batch_key: str) -> AnnData:
    """Unintegrated PCA (50 components) of log-normalised, scaled data."""
    out = cells.copy()
    out.obsm["X_spatialdl"] = P.log_pca(cells.X, n_comps=50)
    return out


LOCAL = {"nnls": local_nnls, "logreg": local_logreg, "none": local_none, "knn": local_knn,
         "pca": local_pca}


# ------------------------------------------------------------------- methods

@dataclass
class Entry:
    name: str
    kind: str  # native / baseline / reference
    run: Callable[..., AnnData]
    where: str  # "registry" or "local"


@functools.lru_cache(maxsize=1)
def _registry():
    """The method registry (every task module and backend that imports)."""
    from napari_spatialdl.tasks import _registry as R

    R._load_builtin_methods()
    return R


def _call_registry(task: str, name: str, quick: bool, device: str) -> Callable[..., AnnData]:
    """Run method ``name`` the way users do: through the task contract (``run_task_iter``)."""
    from napari_spatialdl.models import run_to_end
    from napari_spatialdl.tasks import get_method, get_spec, method_params, run_task_iter

    method = get_method(task, name)
    spec = get_spec(task)
    accepted = {p.name: p for p in method_params(method)}
    task_args = set(spec.input_names) | {o.name for o in spec.options}

    def run(*args, **params):
        kwargs = {k: v for k, v in params.items() if k in accepted or k in task_args}
        if quick:
            for pname, p in accepted.items():
                if "epoch" in pname and (p.default is None or (isinstance(p.default, int)
                                                               and p.default > QUICK_EPOCHS)):
                    kwargs.setdefault(pname, QUICK_EPOCHS)
        result = run_to_end(run_task_iter(task, *args, method=name, copy=True, device=device, **kwargs))
        return result.adata

    return run


def methods_for(task: str, wanted: list[str] | None, quick: bool, device: str) -> list[Entry]:
    R = _registry()
    registered = R.REGISTRY.get(task, {})
    entries: list[Entry] = []
    used: set[str] = set()
    if "spatialdl" in registered:
        entries.append(Entry("spatialdl", "native", _call_registry(task, "spatialdl", quick, device), "registry"))
        used.add("spatialdl")
    for base, aliases in BASELINE_NAMES[task].items():
        found = next((a for a in aliases if a in registered and registered[a].available()), None)
        if found:
            entries.append(Entry(found, "baseline", _call_registry(task, found, quick, device), "registry"))
            used.add(found)
        else:
            entries.append(Entry(base, "baseline", LOCAL[base], "local"))
    for name, method in sorted(registered.items()):
        if name in used:
            continue
        if "reference" in method.needs and task == "impute":
            continue  # predicts genes from a reference: benchmarked by run_gene_prediction
        if not method.available():
            print(f"[accuracy] {task}/{name} needs {', '.join(method.requires)}: not installed, skipped",
                  file=sys.stderr)
            continue
        kind = "native" if method.native else ("reference" if method.requires else "baseline")
        entries.append(Entry(name, kind, _call_registry(task, name, quick, device), "registry"))
    if "spatialdl" not in registered:
        print(f"[accuracy] the native {task} method 'spatialdl' is not registered yet", file=sys.stderr)
    if wanted:
        entries = [e for e in entries if e.name in wanted]
    return entries


# ------------------------------------------------------------------- running

def run_case(case: Case, entries: list[Entry]) -> pd.DataFrame:
    rows = []
    outputs: dict[str, AnnData] = {}
    for entry in entries:
        print(f"[accuracy] {case.dataset}/{case.task}: {entry.name} ...", file=sys.stderr, flush=True)
        start, cpu0 = time.perf_counter(), time.process_time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = {**case.params, **METHOD_PARAMS.get((case.task, entry.name), {})}
                params = {k: case.extra["batch_key"] if v is BATCH else v for k, v in params.items()}
                out = entry.run(*case.args, **params)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
            scores = case.score(out) if case.score is not None else {}
            outputs[entry.name] = out
            rows.append({"method": entry.name, "kind": entry.kind, "via": entry.where, **scores,
                         "seconds": seconds, "cpu_s": cpu, "error": ""})
        except Exception as exc:  # noqa: BLE001 (recorded in the table)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
            traceback.print_exc()
            rows.append({"method": entry.name, "kind": entry.kind, "via": entry.where,
                         "seconds": seconds, "cpu_s": cpu,
                         "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
        print(f"[accuracy]   {rows[-1]}", file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    if case.task == "integrate" and outputs:
        df = _score_integration(case, df, outputs)
    return df


def _score_integration(case: Case, df: pd.DataFrame, outputs: dict[str, AnnData]) -> pd.DataFrame:
    cells: AnnData = case.extra["cells"].copy()
    keys = []
    for name, out in outputs.items():
        key = f"X_{name}"
        cells.obsm[key] = np.asarray(out.obsm["X_spatialdl"], dtype=np.float32)
        keys.append(key)
    start = time.perf_counter()
    res = P.scib_total(cells, keys, case.extra["batch_key"], "cell_type")
    case.note += f"; scored by {res.attrs['scorer']} in {time.perf_counter() - start:.0f} s"
    res.index = [k[2:] for k in res.index]
    cols = ["total", "batch_correction", "bio_conservation"]
    extra = [c for c in res.columns if c not in cols]
    res = res[cols + extra]
    df = df.merge(res, left_on="method", right_index=True, how="left")
    return df


# ------------------------------------------------------------- gene prediction

GENE_FOLDS = 5


def gene_prediction_methods(wanted: list[str] | None, quick: bool, device: str) -> list[Entry]:
    """Every installed impute method that predicts genes from a reference (native first)."""
    R = _registry()
    entries = []
    for m in sorted(R.REGISTRY["impute"].values(), key=lambda m: (not m.native, m.kind != "baseline", m.name)):
        if "reference" not in m.needs:
            continue
        if not m.available():
            print(f"[accuracy] impute/{m.name} needs {', '.join(m.requires)}: not installed, skipped",
                  file=sys.stderr)
            continue
        entries.append(Entry(m.name, m.kind or ("native" if m.native else "baseline"),
                             _call_registry("impute", m.name, quick, device), "registry"))
    return [e for e in entries if not wanted or e.name in wanted]


def run_gene_prediction(dataset: str, data: tuple[AnnData, AnnData], wanted: list[str] | None, quick: bool,
                        device: str) -> tuple[str, dict]:
    """The Li et al. (2022) protocol: 5 folds of the shared genes, each hidden and predicted.

    Every method gets, per fold, the spots without that fold's genes and the whole reference
    (``genes=`` the fold's genes, everything else its defaults); the predictions of the 5 folds
    together cover every shared gene once and are scored per gene against the spots' measured,
    log-normalised values (library: all the spots' genes).
    """
    reference, spatial = data
    ref = _counts_only(reference, ["cell_type"])
    spots = _counts_only(spatial)
    shared = spots.var_names[spots.var_names.isin(ref.var_names)]
    folds = P.gene_folds(shared, GENE_FOLDS, seed=0)
    truth = P.log_normalised(spots)[shared]
    note = (f"{spots.n_obs} spots x {spots.n_vars} genes, reference {ref.n_obs} cells x {ref.n_vars} genes; "
            f"{len(shared)} shared genes in {GENE_FOLDS} folds of {min(map(len, folds))}-{max(map(len, folds))} "
            "genes; each fold hidden from the spots and predicted; Spearman/Pearson r per gene "
            "(log-normalised truth, log1p prediction), mean and median over the genes that vary")
    rows, per_gene_all = [], {}
    for entry in gene_prediction_methods(wanted, quick, device):
        print(f"[accuracy] {dataset}/predict_genes: {entry.name} ...", file=sys.stderr, flush=True)
        start, cpu0 = time.perf_counter(), time.process_time()
        try:
            parts = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for hide in folds:
                    out = entry.run(spots[:, ~spots.var_names.isin(hide)].copy(), reference=ref, genes=list(hide))
                    parts.append(out.obsm["spatialdl_predicted_genes"][list(hide)])
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
            per_gene = P.score_gene_prediction(truth, pd.concat(parts, axis=1))
            per_gene_all[entry.name] = per_gene
            rows.append({"method": entry.name, "kind": entry.kind, **P.summarise_gene_scores(per_gene),
                         "seconds": seconds, "cpu_s": cpu, "error": ""})
        except Exception as exc:  # noqa: BLE001 (recorded in the table)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
            traceback.print_exc()
            rows.append({"method": entry.name, "kind": entry.kind, "seconds": seconds, "cpu_s": cpu,
                         "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
        print(f"[accuracy]   {rows[-1]}", file=sys.stderr, flush=True)
    cols = ["spearman_mean", "spearman_median", "pearson_mean", "pearson_median", "n_genes", "seconds", "cpu_s"]
    lines = ["| method | kind | " + " | ".join(cols) + " | note |", "|" + "---|" * (len(cols) + 3)]
    for row in rows:
        cells = [row["method"], row["kind"]]
        for c in cols:
            v = row.get(c)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                cells.append("n/a")
            elif c == "n_genes":
                cells.append(str(int(v)))
            else:
                cells.append(f"{v:.1f}" if c in ("seconds", "cpu_s") else f"{v:.3f}")
        cells.append(row.get("error", ""))
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"## Gene prediction — {dataset}\n\n{note}. `seconds`: all {GENE_FOLDS} folds together.\n\n"
            + "\n".join(lines) + "\n")
    raw = {"note": note, "rows": rows,
           "per_gene": {k: json.loads(v.to_json(orient="index")) for k, v in per_gene_all.items()}}
    return text, raw


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    info = {"cpu": cpu, "cores": str(cores), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        info["load average at start"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    import torch

    info["torch threads"] = str(torch.get_num_threads())
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return info


def versions() -> dict[str, str]:
    import importlib

    out = {}
    for mod in ("napari_spatialdl", "torch", "numpy", "scipy", "pandas", "anndata", "scanpy", "sklearn",
                "scvi", "tangram", "celltypist", "harmonypy", "scib_metrics", "jax", "magic"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = importlib.import_module(mod)
                v = getattr(m, "__version__", None)
            if v is None:
                from importlib.metadata import version

                v = version({"magic": "magic-impute", "tangram": "tangram-sc"}.get(mod, mod))
            out[mod] = str(v)
        except Exception:  # noqa: BLE001
            out[mod] = "not installed"
    return out


METRIC_ORDER = {
    "deconvolve": ["rmse", "jsd", "pearson"],
    "integrate": ["total", "batch_correction", "bio_conservation"],
    "annotate": ["macro_f1", "accuracy"],
    "impute": ["pearson", "median_ae"],
}
TITLES = {"deconvolve": "Deconvolution", "integrate": "Integration", "annotate": "Annotation",
          "impute": "Imputation"}


def to_markdown(df: pd.DataFrame, task: str, full: bool = False) -> str:
    metrics = [m for m in METRIC_ORDER[task] if m in df.columns]
    if full:
        metrics += [c for c in df.columns if c not in metrics and c not in
                    ("method", "kind", "via", "seconds", "cpu_s", "error")]
    cols = ["method", "kind", *metrics, "seconds", "cpu_s"]
    lines = ["| " + " | ".join(cols + ["note"]) + " |", "|" + "---|" * (len(cols) + 1)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row.get(c)
            if c == "method":
                cells.append(f"{v}" + (" (local)" if row.get("via") == "local" else ""))
            elif isinstance(v, float | np.floating):
                cells.append("n/a" if pd.isna(v) else (f"{v:.1f}" if c in ("seconds", "cpu_s") else f"{v:.3f}"))
            else:
                cells.append("" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
        cells.append(str(row.get("error") or ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    ap.add_argument("--methods", default="", help="comma list of method names (default: all installed)")
    ap.add_argument("--quick", action="store_true",
                    help=f"fewer simulated spots and at most {QUICK_EPOCHS} epochs per trained model")
    ap.add_argument("--device", default="auto", help="device passed to methods that take one")
    ap.add_argument("--synthetic-full", action="store_true",
                    help="the package's default synthetic tissue (2,000 spots, 3,000 cells) instead of "
                         f"{SYNTHETIC_SIZE['n_spots']} spots and {SYNTHETIC_SIZE['n_reference_cells']} cells")
    ap.add_argument("--out", default=None, help="markdown output (default results/accuracy_<date>.md)")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    date = time.strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else HERE / "results" / f"accuracy_{date}.md"
    if not out.is_absolute() and not out.parent.exists() and (HERE / out).parent.exists():
        out = HERE / out

    started = time.strftime("%Y-%m-%d %H:%M")
    machine, vers = machine_info(), versions()
    data = _datasets(names, args.synthetic_full)
    header = [f"# Accuracy benchmark ({started}{', quick' if args.quick else ''})", "",
              "Command: `python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
              "", "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()), "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()), "",
              "`seconds`: wall-clock per method on this machine (shared with other work: see the "
              "load average), including data preparation inside the method; `cpu_s`: CPU seconds of "
              "all its threads (less sensitive to the machine's load). `(local)`: a baseline "
              "computed by the benchmark because no registry method of that name exists; every other "
              "row ran through `napari_spatialdl.tasks.get_method(task, name)`. Every method runs "
              "with its default settings" + (f", except at most {QUICK_EPOCHS} epochs (--quick)" if args.quick else "")
              + ".", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    raw: dict[str, Any] = {}

    def save(done: bool) -> None:
        status = [] if done else ["*(in progress: more tables follow)*", ""]
        footer = [f"Finished {time.strftime('%Y-%m-%d %H:%M')}; load average at the end: "
                  + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + "."] if done else []
        out.write_text("\n".join(header + status) + "\n" + "\n".join(sections) + "\n" + "\n".join(footer) + "\n")
        out.with_suffix(".json").write_text(json.dumps({"machine": machine, "versions": vers, "results": raw},
                                                       indent=1, default=str))

    for task in tasks:
        if task == "predict_genes":
            for ds in names:
                text, rows = run_gene_prediction(ds, data[ds], wanted, args.quick, args.device)
                print("\n" + text, flush=True)
                sections.append(text)
                raw[f"predict_genes/{ds}"] = rows
                save(done=False)
            continue
        entries = methods_for(task, wanted, args.quick, args.device)
        for case in [c for ds in names for c in make_cases(task, ds, data[ds], args.quick)]:
            ds = case.dataset
            df = run_case(case, entries)
            title = f"{TITLES[task]} — {ds}"
            table = to_markdown(df, task)
            text = f"## {title}\n\n{case.note}\n\n{table}\n"
            if ds.startswith("hippocampus") and "panel" not in ds:  # the issue quotes the full genes
                text += f"\nFigures quoted in the issue: {ISSUE_FIGURES[task]}.\n"
            if task == "integrate" and len(df.columns) > 10:
                text += "\n<details><summary>all metrics</summary>\n\n" + to_markdown(df, task, full=True) + "\n\n</details>\n"
            print("\n" + text, flush=True)
            sections.append(text)
            raw[f"{task}/{ds}"] = {"note": case.note, "rows": json.loads(df.to_json(orient="records"))}
            save(done=False)
    save(done=True)
    print(f"[accuracy] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
