"""Does deconvolution accuracy hold at scale? The hippocampus silver standard at 400 ... 100k spots.

The protocol of ``benchmarks/accuracy.py`` (``_protocols.simulate_spots``: spots of 2-10 real cells
of 1-4 types from one half of ``../shared/data/hippocampus_visium/reference``, the other half is the
reference), at more spots. The 400-spot case is repeated over several seeds (other spots, other
halves) to give the noise band; the large cases are scored against it: "the same RMSE within noise"
means inside the 400-spot seeds' mean +- 2 sd.

    python benchmarks/silver_scale.py                        # 400 x 5 seeds, 10k, 100k
    python benchmarks/silver_scale.py --sizes 400,10000 --seeds 3 --methods spatialdl

Prints a markdown table (and writes it with ``--out``): spots, seed, method, RMSE, JSD, Pearson,
seconds, CPU seconds, epochs, peak RSS of this process. Every method runs with its defaults.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _protocols as P  # noqa: E402

import napari_spatialdl as sdl  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _counts_only(adata, keep=()):
    from anndata import AnnData

    out = AnnData(X=adata.X.copy(), obs=adata.obs[list(keep)].copy(), var=pd.DataFrame(index=adata.var_names.copy()))
    if "spatial" in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm["spatial"]).copy()
    return out


def run(n_spots: int, seed: int, methods: list[str], reference) -> list[dict]:
    t0 = time.perf_counter()
    ref_half, spots, truth = P.simulate_spots(reference, "cell_type", n_spots=n_spots, seed=seed)
    simulate_s = time.perf_counter() - t0
    ref_half = _counts_only(ref_half, ["cell_type"])
    spots = _counts_only(spots)
    rows = []
    for method in methods:
        start, cpu0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = sdl.deconvolve(spots, ref_half, "cell_type", method=method, copy=True, seed=seed)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
        scores = P.score_proportions(result.adata.obsm[result.keys["obsm"]], truth)
        history = result.history
        rows.append({"spots": n_spots, "seed": seed, "method": method, **scores, "seconds": seconds, "cpu_s": cpu,
                     "epochs": getattr(history, "n_epochs", 0) if history is not None else 0,
                     "simulate_s": simulate_s, "peak_rss_mb": _peak_rss_mb()})
        print(f"[silver] {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def table(df: pd.DataFrame) -> str:
    cols = ["spots", "seed", "method", "rmse", "jsd", "pearson", "seconds", "cpu_s", "epochs", "peak_rss_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in ("rmse", "jsd", "pearson"):
                cells.append(f"{v:.4f}")
            elif c in ("seconds", "cpu_s", "peak_rss_mb"):
                cells.append(f"{v:.1f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(df: pd.DataFrame, base: int) -> str:
    """Each larger size against the band of the ``base``-spot seeds (mean +- 2 sd of the RMSE), then
    the mean over seeds and its paired difference (same seed: the same reference half, and the
    ``base`` spots are the first of the larger set, so only the number of spots differs)."""
    out = ["| method | spots | RMSE | 400-spot band (mean +- 2 sd over seeds) | within noise |", "|---|---|---|---|---|"]
    means = ["| method | spots | seeds | mean RMSE (sd) | 400-spot mean over the same seeds | paired difference "
             "(mean, 95% CI) | within noise |", "|---|---|---|---|---|---|---|"]
    for method, part in df.groupby("method", sort=False):
        ref = part[part["spots"] == base]["rmse"]
        if len(ref) < 2:
            continue
        lo, hi = ref.mean() - 2 * ref.std(ddof=1), ref.mean() + 2 * ref.std(ddof=1)
        for _, r in part[part["spots"] != base].iterrows():
            inside = "yes" if lo <= r["rmse"] <= hi else ("better" if r["rmse"] < lo else "no")
            out.append(f"| {method} | {r['spots']} | {r['rmse']:.4f} | {ref.mean():.4f} ({lo:.4f}-{hi:.4f}) | {inside} |")
        by_seed = part[part["spots"] == base].set_index("seed")["rmse"]
        for n, large in part[part["spots"] != base].groupby("spots"):
            large = large.set_index("seed")["rmse"]
            seeds = large.index.intersection(by_seed.index)
            if len(seeds) < 2:
                continue
            diff = large[seeds] - by_seed[seeds]
            half = 2.0 * diff.std(ddof=1) / np.sqrt(len(diff))  # ~95% for the mean of a few seeds
            inside = ("yes" if abs(diff.mean()) <= half else
                      ("better" if diff.mean() < 0 else "no"))
            means.append(f"| {method} | {n} | {len(seeds)} | {large[seeds].mean():.4f} ({large[seeds].std(ddof=1):.4f}) | "
                         f"{by_seed[seeds].mean():.4f} | {diff.mean():+.4f} ({diff.mean() - half:+.4f} to "
                         f"{diff.mean() + half:+.4f}) | {inside} |")
    text = "\n".join(out)
    if len(means) > 2:
        text += "\n\nOver seeds (a seed's reference half is the same at every size: the difference is paired):\n\n" + "\n".join(means)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="400,10000,100000", help="comma-separated numbers of spots (the first: the band)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of the first size (the noise band)")
    ap.add_argument("--large-seeds", type=int, default=1, help="seeds of each larger size")
    ap.add_argument("--methods", default="spatialdl,nnls")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    reference, _ = P.load_hippocampus()
    rows = []
    for i, n in enumerate(sizes):
        for seed in range(args.seeds if i == 0 else args.large_seeds):
            rows += run(n, seed, methods, reference)
    df = pd.DataFrame(rows)
    text = (f"# Deconvolution silver standard at scale ({time.strftime('%Y-%m-%d %H:%M')})\n\n"
            f"Command: `python benchmarks/silver_scale.py --sizes {args.sizes} --seeds {args.seeds} "
            f"--large-seeds {args.large_seeds} --methods {args.methods}`\n\nReference: hippocampus, {reference.n_obs} cells x {reference.n_vars} "
            "genes (half simulates the spots, half is the reference). `peak_rss_mb`: of the whole process so far.\n\n"
            + table(df) + "\n\n## Within the noise of 400 spots?\n\n" + verdict(df, sizes[0]) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
