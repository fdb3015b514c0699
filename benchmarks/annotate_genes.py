"""Annotation accuracy against the number of genes the classifier uses, on real cells.

At a million cells x 18,000 genes the native annotator (``sdl.annotate``) uses by default 3,000
marker genes of the reference's cell types (``n_top_genes``): it predicts 6x faster. This checks, on the real hippocampus cells of ``../shared/data`` (train Rep1-Rep4, test
Rep5-Rep6, the split of ``accuracy.py``), what such a cut costs in accuracy: the classifier on
``n_top_genes`` = all, and about 1/2, 1/3, 1/6 and 1/10 of the 307 genes (1/6 is 3,000 of 18,000),
each chosen by the task's own selection (every cell type's markers in turn, from the labels
of the training cells) and, beside it, by the type-variance score deconvolution uses and as a
panel of highly variable genes (no labels used; the ``gene_panel`` of ``_protocols.py``). Three
seeds per row (mean and range of the macro-F1).

Usage::

    python benchmarks/annotate_genes.py [--out benchmarks/results/annotate_genes_<date>.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _protocols as P  # noqa: E402

SEEDS = (0, 1, 2)


def _score(query, reference, truth, **params) -> tuple[list[float], float, int]:
    import napari_spatialdl as sdl

    scores, seconds, n_genes = [], 0.0, 0
    for seed in SEEDS:
        start = time.perf_counter()
        result = sdl.annotate(query, reference, "cell_type", seed=seed, copy=True, **params)
        seconds += time.perf_counter() - start
        scores.append(P.score_labels(truth, result.adata.obs["spatialdl_cell_type"].astype(str))["macro_f1"])
        n_genes = int(result.info["n_genes"])
    return scores, seconds / len(SEEDS), n_genes


def _cut(query, train, genes):
    """Both datasets cut to ``genes``; training cells left without a count are dropped."""
    train = train[:, genes]
    return query[:, genes].copy(), train[np.asarray(train.X.sum(axis=1)).ravel() > 0].copy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from anndata import AnnData

    from napari_spatialdl.preprocessing import discriminative_genes

    reference, _ = P.load_hippocampus()
    train, test = P.replicate_split(reference)
    truth = test.obs["cell_type"].astype(str).to_numpy()
    train = AnnData(P.dense(train.X).astype(np.float32), obs=train.obs[["cell_type"]].copy(),
                    var=train.var[[]].copy())
    query = AnnData(P.dense(test.X).astype(np.float32), var=test.var[[]].copy(), obs=test.obs[[]].copy())
    n_all = reference.n_vars
    labels = train.obs["cell_type"].astype(str).to_numpy()
    rows = []
    for n_top in (None, 150, 100, 50, 30):
        selected, sec, used = _score(query, train, truth, n_top_genes=n_top)
        panel = variance = None
        if n_top is not None:
            panel_genes = P.gene_panel(train, n_top).var_names
            panel, _, _ = _score(*_cut(query, train, panel_genes), truth, n_top_genes=None)
            keep = discriminative_genes(train.X, labels, sorted(set(labels)), n_top)
            genes = train.var_names[keep]
            variance, _, _ = _score(*_cut(query, train, genes), truth, n_top_genes=None)
        rows.append((n_top, used, selected, variance, panel, sec))
        print(rows[-1], flush=True)

    def fmt(scores):
        if scores is None:
            return ""
        return f"{np.mean(scores):.3f} ({min(scores):.3f}-{max(scores):.3f})"

    lines = [f"# Annotation accuracy against the genes used ({time.strftime('%Y-%m-%d %H:%M')})", "",
             "`python benchmarks/annotate_genes.py`", "",
             f"Real hippocampus cells ({n_all} genes): train Rep1-Rep4 ({train.n_obs} cells), test "
             f"Rep5-Rep6 ({query.n_obs} cells); `sdl.annotate` (method `spatialdl`), seeds {SEEDS}: "
             "macro-F1 mean (range). `markers` (the task's selection, `n_top_genes`): every cell "
             "type's marker genes in turn (`preprocessing.marker_genes`, on the training cells); "
             "`type variance`: the genes whose type means vary most (`preprocessing."
             "discriminative_genes`, deconvolution's selection); `HVG panel`: the most highly "
             "variable genes of the training cells, no labels used. The last two are cut before "
             "the classifier, which then uses every gene it is given (training cells left without a "
             "count by the cut are dropped).", "",
             "| n_top_genes | genes used | fraction of the genes | macro-F1, markers (default) | "
             "macro-F1, type variance | macro-F1, HVG panel | seconds per run |",
             "|---|---|---|---|---|---|---|"]
    for n_top, used, selected, variance, panel, sec in rows:
        lines.append(f"| {'None (all)' if n_top is None else n_top} | {used} | {used / n_all:.2f} | "
                     f"{fmt(selected)} | {fmt(variance)} | {fmt(panel)} | {sec:.1f} |")
    lines += ["", "At 18,000 genes the default `n_top_genes=3000` keeps 1/6 of them; here 50 of 307 is "
              "that fraction. Reference tools on all genes, same split "
              "(`accuracy_annotate_2026-12-02.md`): scANVI 0.821, CellTypist 0.784, logistic "
              "regression 0.809."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out) if args.out else HERE / "results" / f"annotate_genes_{time.strftime('%Y-%m-%d')}.md"
    out.write_text(text)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
