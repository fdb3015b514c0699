"""The script of docs/tutorials/hd_xenium.md, step by step, with each step's time and peak memory.

Run it on the folders written by ``benchmarks/make_hd_xenium.py``::

    python benchmarks/make_hd_xenium.py /tmp/hd_xenium
    python benchmarks/hd_xenium_tutorial.py /tmp/hd_xenium [--json results.json]

The tutorial shows the code between the ``--8<--`` markers as it is (pymdownx.snippets), so what
the page shows is what was timed. Each step reports wall-clock seconds, CPU seconds and the
process's peak resident memory during the step (Linux: ``VmHWM`` from ``/proc/self/status``,
reset before the step through ``/proc/self/clear_refs``; where that is not possible, the peak
since the start, marked ``*``). Scores against the simulation's truth (``truth/``) follow each task;
they are not part of the timed steps.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

# --8<-- [start:imports]
import anndata as ad
import numpy as np
import pandas as pd
import spatialdata

import napari_spatialdl as sdl

# --8<-- [end:imports]

_STEPS: list[dict] = []
_T0: dict = {}


def _hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def begin() -> None:
    """Start timing a step: reset the peak-memory mark."""
    reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        pass
    _T0.update(wall=time.perf_counter(), cpu=time.process_time(), reset=reset)


def done(name: str) -> None:
    """End the step ``name``: print and record its wall/CPU seconds and peak memory."""
    wall, cpu = time.perf_counter() - _T0["wall"], time.process_time() - _T0["cpu"]
    peak = _hwm_kb() if _T0["reset"] else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {"step": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(peak / 1024),
           "peak_since_start": not _T0["reset"], "load": round(os.getloadavg()[0], 1)}
    _STEPS.append(row)
    print(f"[{name}] {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {peak / 1024:.0f} MB, "
          f"load {row['load']}", flush=True)


warnings.filterwarnings("ignore", message=".*zarr v3.*")
warnings.filterwarnings("ignore", message="No full resolution image found")
args = [a for a in sys.argv[1:] if not a.startswith("--")]
JSON_OUT = Path(sys.argv[sys.argv.index("--json") + 1]) if "--json" in sys.argv else None
if JSON_OUT is not None and str(JSON_OUT) in args:
    args.remove(str(JSON_OUT))
DATA = Path(args[0]) if args else Path("hd_xenium")
OUT = Path(args[1]) if len(args) > 1 else DATA / "results"
OUT.mkdir(parents=True, exist_ok=True)
print(f"data {DATA}, results {OUT}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)

begin()
# --8<-- [start:reference]
# the annotated scRNA-seq reference (510 cells x 307 genes, 17 cell types), raw counts
ref = ad.read_h5ad(DATA / "reference" / "hippocampus_reference.h5ad")
# --8<-- [end:reference]
done("read the reference")
info = json.loads((DATA / "truth" / "truth.json").read_text())

# ----------------------------------------------------------------------------- Xenium
begin()
# --8<-- [start:read_xenium]
xen = sdl.read_xenium(DATA / "xenium")  # cells as circles, DAPI image downsampled for display
# --8<-- [end:read_xenium]
done("read_xenium")
print(xen)

begin()
# --8<-- [start:annotate]
sdl.annotate(xen, ref, "cell_type")  # default method: the calibrated MLP ensemble
xen.obs["spatialdl_cell_type"].value_counts()
# --8<-- [end:annotate]
done("annotate (spatialdl)")
# --8<-- [start:score_annotate]
truth = pd.read_parquet(DATA / "truth" / "xenium_cells.parquet").set_index("cell_id").loc[xen.obs_names]
accuracy = (xen.obs["spatialdl_cell_type"].astype(str) == truth["cell_type"]).mean()
# --8<-- [end:score_annotate]
per_type = (xen.obs["spatialdl_cell_type"].astype(str) == truth["cell_type"]).groupby(truth["cell_type"]).mean()
print(f"annotation accuracy {accuracy:.3f}; per type:\n{per_type.round(3).to_string()}")
print(f"confidence median {xen.obs['spatialdl_confidence'].median():.3f}")

begin()
# --8<-- [start:impute]
held_out = [g for g in ref.var_names if g not in xen.var_names]  # genes the panel lacks
sdl.impute(xen, reference=ref, method="transfer", genes=held_out)
predicted = xen.obsm["spatialdl_predicted_genes"]  # cells x held-out genes, per 10^4
# --8<-- [end:impute]
done("impute (transfer)")
# --8<-- [start:score_impute]
r = {g: np.corrcoef(predicted[g], truth[g])[0, 1] for g in held_out}  # vs the simulated counts
r_mean = {g: np.corrcoef(predicted[g], truth[f"mean:{g}"])[0, 1] for g in held_out}  # vs their expectation
ceiling = {g: np.corrcoef(truth[f"mean:{g}"], truth[g])[0, 1] for g in held_out}  # the counts' own noise: the ceiling
# --8<-- [end:score_impute]
scores = pd.DataFrame({"r_counts": r, "r_expected": r_mean, "r_ceiling": ceiling}).sort_values("r_counts")
print(f"{len(held_out)} predicted genes; Pearson r with the simulated counts: median "
      f"{np.median(list(r.values())):.3f} (the expected values' own r with the counts: median "
      f"{np.median(list(ceiling.values())):.3f}); with the expected values: median "
      f"{np.median(list(r_mean.values())):.3f}\n{scores.round(3).to_string()}")

begin()
# --8<-- [start:write_xenium]
sdl.write_spatialdata(xen, OUT / "xenium_results.zarr", overwrite=True)
# --8<-- [end:write_xenium]
done("write_spatialdata (Xenium)")

begin()
# --8<-- [start:read_zarr_xenium]
sdata = spatialdata.read_zarr(OUT / "xenium_results.zarr")
table = sdata.tables["table"]
table.obs[["spatialdl_cell_type", "spatialdl_confidence"]].head()
table.obsm["spatialdl_predicted_genes"]
# --8<-- [end:read_zarr_xenium]
done("spatialdata.read_zarr (Xenium)")
print(sdata)
_xen_scores = {"accuracy": float(accuracy), "per_type_accuracy": per_type.round(4).to_dict(),
               "impute_r": scores.round(4).to_dict(orient="index")}
del xen, sdata, table, predicted

# ----------------------------------------------------------------------------- Visium HD
begin()
# --8<-- [start:read_hd]
hd = sdl.read_visium_hd(DATA / "visium_hd", bin_size=8)  # 8 µm bins as squares, hires H&E
# --8<-- [end:read_hd]
done("read_visium_hd (8 µm)")
print(hd)

begin()
# --8<-- [start:deconvolve]
sdl.deconvolve(hd, ref, "cell_type")  # default method: the negative-binomial mixture
proportions = hd.obsm["spatialdl_proportions"]  # bins x 17 cell types, rows sum to 1
# --8<-- [end:deconvolve]
done("deconvolve (spatialdl)")
# --8<-- [start:score_deconvolve]
truth_bins = pd.read_parquet(DATA / "truth" / "visium_hd_bins.parquet").set_index("barcode").loc[hd.obs_names]
types = list(proportions.columns)
rmse = float(np.sqrt(((proportions[types].to_numpy() - truth_bins[types].to_numpy()) ** 2).mean()))
dominant = (proportions.idxmax(axis=1) == truth_bins["dominant"]).mean()
# --8<-- [end:score_deconvolve]
per_type_r = {t: float(np.corrcoef(proportions[t], truth_bins[t])[0, 1]) for t in types}
print(f"deconvolution RMSE {rmse:.4f}, dominant type agrees in {dominant:.3f} of the bins; r per type:\n"
      f"{pd.Series(per_type_r).round(3).sort_values().to_string()}")

begin()
# --8<-- [start:write_hd]
sdl.write_spatialdata(hd, OUT / "visium_hd_results.zarr", overwrite=True)
# --8<-- [end:write_hd]
done("write_spatialdata (Visium HD)")

begin()
# --8<-- [start:read_zarr_hd]
sdata = spatialdata.read_zarr(OUT / "visium_hd_results.zarr")
sdata.tables["square_008um"].obsm["spatialdl_proportions"].head()
# --8<-- [end:read_zarr_hd]
done("spatialdata.read_zarr (Visium HD)")
print(sdata)
_hd_scores = {"rmse": rmse, "dominant_agreement": float(dominant),
              "per_type_r": {t: round(v, 4) for t, v in per_type_r.items()}}

print("\n| step | wall s | CPU s | peak RSS MB | load |\n|---|---|---|---|---|")
for row in _STEPS:
    star = "*" if row["peak_since_start"] else ""
    print(f"| {row['step']} | {row['wall_s']} | {row['cpu_s']} | {row['peak_rss_mb']}{star} | {row['load']} |")
if JSON_OUT is not None:
    JSON_OUT.write_text(json.dumps({"data": info, "steps": _STEPS, "xenium": _xen_scores, "visium_hd": _hd_scores,
                                    "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}, indent=2))
