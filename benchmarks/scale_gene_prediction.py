"""Gene prediction at Xenium-like sizes: a panel of a few hundred genes, a whole-transcriptome reference.

Cells of a Xenium-like panel (``--panel`` genes of the reference's ``--genes``) and a reference of
single cells with every gene, simulated by ``benchmarks/scale.py:simulate`` (sparse NB-like counts,
cell types with their own profiles, two batches). Every unmeasured gene is predicted
(``genes="all"``): the native ``transfer`` model and the ``knn_reference`` baseline write the
compact form (``dense=False``: factors x loadings, no cells x genes matrix); then one gene is
reconstructed the way the GUI does when a gene is chosen. Tangram and gimVI write tables only (a
cells x ~18k-genes table does not fit here) and are run where they fit with ``--tools``.

    python benchmarks/scale_gene_prediction.py --cells 10000,100000 --genes 18000 --panel 300

Prints a markdown table: cells, method, seconds, CPU seconds, epochs, peak RSS (MB, the child
process), size of the written result (MB), seconds to reconstruct one gene, and the Spearman r of
one held-back panel gene with its mean in the reference cells of each cell's type (a sanity
check that the prediction follows the truth).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def child(spec: dict) -> dict:
    """One method at one size, in a fresh process (its own peak RSS)."""
    import warnings

    import scipy.sparse as sp
    import scipy.stats as st

    sys.path.insert(0, str(HERE))
    import scale as S

    import napari_spatialdl as sdl
    from napari_spatialdl.tasks.gene_prediction import reconstruct

    n, genes, panel, seed = spec["cells"], spec["genes"], spec["panel"], spec["seed"]
    reference = S.simulate(spec["reference_cells"], genes, "cells", seed)
    cells = S.simulate(n, genes, "cells", seed + 1)
    rng = np.random.default_rng(seed)
    # the panel: informative genes (expressed), as a real panel is chosen; one panel gene held back
    expressed = np.flatnonzero(np.asarray((reference.X > 0).mean(axis=0)).ravel() > 0.05)
    chosen = rng.choice(expressed, panel + 1, replace=False)
    held_back = reference.var_names[chosen[-1]]
    # the truth a prediction can reach: the held-back gene's mean in the reference cells of each
    # cell's type (single counts of one gene in a cell are mostly 0 or 1: noise)
    ref_value = np.asarray(reference[:, held_back].X.todense()).ravel()
    type_mean = {t: ref_value[(reference.obs["cell_type"] == t).to_numpy()].mean()
                 for t in reference.obs["cell_type"].cat.categories}
    truth = cells.obs["cell_type"].map(type_mean).to_numpy(dtype=float)
    spatial = cells[:, reference.var_names[chosen[:-1]]].copy()
    spatial.X = sp.csr_matrix(spatial.X)
    del cells
    params = {"dense": False} if spec["method"] in ("transfer", "knn_reference") else {}
    params.update(spec.get("params", {}))
    start, cpu0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sdl.impute(spatial, reference=reference, method=spec["method"], genes="all", **params)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    written = 0.0
    for slot, key in result.keys.items():
        value = spatial.obsm[key] if slot.startswith("obsm") else spatial.uns[key]
        arrays = value.values() if isinstance(value, dict) else [value]
        for a in arrays:
            if sp.issparse(a):
                written += a.data.nbytes + a.indices.nbytes + a.indptr.nbytes
            elif hasattr(a, "nbytes"):
                written += a.nbytes
            elif hasattr(a, "to_numpy"):
                written += a.to_numpy().nbytes
    t = time.perf_counter()
    key = result.keys.get("obsm")
    values = reconstruct(spatial, str(held_back), key=key)[str(held_back)].to_numpy()
    one_gene_s = time.perf_counter() - t
    rho = float(st.spearmanr(values, truth).statistic)
    history = result.history
    return {"cells": n, "method": spec["method"], "seconds": seconds, "cpu_s": cpu,
            "epochs": getattr(history, "n_epochs", 0) if history is not None else 0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "written_mb": written / 2**20, "one_gene_s": one_gene_s, "spearman_held_back": rho,
            "predicted_genes": int(genes - panel), "error": ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="10000,100000")
    ap.add_argument("--genes", type=int, default=18000)
    ap.add_argument("--panel", type=int, default=300)
    ap.add_argument("--reference-cells", type=int, default=10000)
    ap.add_argument("--methods", default="transfer,knn_reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    rows = []
    for n in [int(c) for c in args.cells.split(",")]:
        for method in args.methods.split(","):
            spec = {"cells": n, "genes": args.genes, "panel": args.panel, "seed": args.seed,
                    "reference_cells": args.reference_cells, "method": method}
            print(f"[gene prediction scale] {n} cells, {method} ...", file=sys.stderr, flush=True)
            try:
                done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                      text=True, timeout=args.timeout)
                line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
                row = json.loads(line[7:]) if line else {"cells": n, "method": method,
                                                         "error": (done.stderr.strip().splitlines() or ["?"])[-1][:160]}
            except subprocess.TimeoutExpired:
                row = {"cells": n, "method": method, "error": f"over {args.timeout:.0f} s"}
            print(f"[gene prediction scale]   {row}", file=sys.stderr, flush=True)
            rows.append(row)
    cols = ["cells", "method", "seconds", "cpu_s", "epochs", "peak_rss_mb", "written_mb", "one_gene_s",
            "spearman_held_back"]
    lines = ["| " + " | ".join(cols) + " | note |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("n/a" if v is None else (f"{v:.3f}" if c in ("one_gene_s", "spearman_held_back") else
                                                  (f"{v:.1f}" if isinstance(v, float) else str(v))))
        lines.append("| " + " | ".join(cells) + f" | {r.get('error', '')} |")
    text = (f"# Gene prediction at Xenium-like sizes ({time.strftime('%Y-%m-%d %H:%M')})\n\n"
            f"Command: `python benchmarks/scale_gene_prediction.py --cells {args.cells} --genes {args.genes} "
            f"--panel {args.panel} --reference-cells {args.reference_cells} --methods {args.methods}`\n\n"
            f"A panel of {args.panel} of {args.genes} genes; the reference: {args.reference_cells} cells x "
            f"{args.genes} genes; every unmeasured gene predicted (genes='all', compact form). `written_mb`: "
            "the result in the AnnData; `one_gene_s`: reconstructing one gene for every cell.\n\n"
            + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
