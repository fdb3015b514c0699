"""Speed benchmark: seconds per epoch and peak memory of each native model at 1k/10k/50k cells.

Each measurement runs in a fresh subprocess (so the peak resident memory belongs to that
run alone) on synthetic counts (negative binomial, 2,000 genes, 8 cell types, 4 batches).
The method is called THROUGH THE REGISTRY, as users run it, and stopped after a few
epochs (closing the generator cancels it): a full fit at 50k cells is not needed to know
the cost of an epoch. scvi-tools' SCVI runs on the same data when installed.

Columns: ``setup+1st s``: from the call to the first epoch event (input checks, data
preparation, first epoch); ``s/epoch``: median time between later epoch events;
``peak RSS MB``: ``resource.getrusage`` max resident set of the worker process;
``data MB``: size of the input count matrices (dense float32 equivalent);
``GPU peak MB``: ``torch.cuda.max_memory_allocated`` (GPU runs only).

Usage::

    python benchmarks/speed.py                  # 1k, 10k, 50k
    python benchmarks/speed.py --sizes 1000,10000 --epochs 3
    python benchmarks/speed.py --quick          # 1k and 10k, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

HERE = Path(__file__).resolve().parent
N_GENES = 2000
N_TYPES = 8
N_BATCHES = 4
N_REFERENCE_DECONV = 5000  # reference cells given with the spots to deconvolve
N_QUERY_ANNOTATE = 2000  # query cells labelled by an annotation model trained on `size` cells

#: (task, method) pairs measured; the native models and the scvi-tools reference
MODELS = [("impute", "spatialdl"), ("integrate", "spatialdl"), ("deconvolve", "spatialdl"),
          ("annotate", "spatialdl"), ("annotate", "transformer"), ("integrate", "scvi")]

#: models trained in stages (progress events carry the stage): each stage's s/epoch is measured;
#: the parameters make every stage last long enough to be timed
STAGES = {("annotate", "transformer"): ("pretrain", "finetune")}
STAGE_PARAMS = {("annotate", "transformer"): lambda epochs: {"pretrain_epochs": epochs + 1}}


def synthetic_counts(n: int, seed: int = 0, n_genes: int = N_GENES) -> AnnData:
    """``n`` cells of ``N_TYPES`` types in ``N_BATCHES`` batches, NB counts (CSR), spatial grid."""
    rng = np.random.default_rng(seed)
    prof = rng.gamma(0.3, 1.0, size=(N_TYPES, n_genes)) + 1e-3
    for t in range(N_TYPES):
        prof[t, rng.choice(n_genes, 20, replace=False)] *= 20
    prof /= prof.sum(axis=1, keepdims=True)
    batch_fx = np.exp(rng.normal(0, 0.3, size=(N_BATCHES, n_genes)))
    types = rng.integers(0, N_TYPES, size=n)
    batches = rng.integers(0, N_BATCHES, size=n)
    lib = rng.lognormal(np.log(2000), 0.4, size=n)
    rows = []
    chunk = 5000
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        mu = prof[types[sl]] * batch_fx[batches[sl]] * lib[sl, None]
        theta = 5.0
        lam = rng.gamma(theta, mu / theta)
        counts = rng.poisson(lam).astype(np.float32)
        counts[:, 0] += 1  # no empty cell
        rows.append(sp.csr_matrix(counts))
    X = sp.vstack(rows).tocsr()
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{t}" for t in types]),
                        "batch": pd.Categorical([f"batch{b}" for b in batches])},
                       index=[f"c{i}" for i in range(n)])
    ad = AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    side = int(np.ceil(np.sqrt(n)))
    ad.obsm["spatial"] = np.stack([np.arange(n) % side, np.arange(n) // side], axis=1) * 100.0
    return ad


def _inputs(task: str, size: int) -> tuple[tuple, float]:
    if task == "impute":
        a = synthetic_counts(size, seed=1)
        return (a,), a.n_obs * a.n_vars * 4 / 1e6
    if task == "integrate":
        a = synthetic_counts(size, seed=2)
        return (a, "batch"), a.n_obs * a.n_vars * 4 / 1e6
    if task == "deconvolve":
        spots = synthetic_counts(size, seed=3)
        spots.obs = spots.obs.drop(columns=["cell_type", "batch"])
        ref = synthetic_counts(N_REFERENCE_DECONV, seed=4)
        return (spots, ref, "cell_type"), (spots.n_obs + ref.n_obs) * N_GENES * 4 / 1e6
    if task == "annotate":
        ref = synthetic_counts(size, seed=5)
        query = synthetic_counts(N_QUERY_ANNOTATE, seed=6)
        query.obs = query.obs.drop(columns=["cell_type"])
        return (query, ref, "cell_type"), (ref.n_obs + query.n_obs) * N_GENES * 4 / 1e6
    raise ValueError(task)


def worker(task: str, method: str, size: int, epochs: int, budget: float, device: str) -> dict:
    """Run one measurement in this process; returns the row."""
    import torch

    from napari_spatialdl.tasks import method_parameters, run_task_iter

    warnings.simplefilter("ignore")
    defaults = {p.name: p.default for p in method_parameters(task, method)}
    args, data_mb = _inputs(task, size)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stages = STAGES.get((task, method), ())
    params = STAGE_PARAMS[(task, method)](epochs) if (task, method) in STAGE_PARAMS else {}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    # the run as users start it (task contract: checks, preparation, then the method's epochs)
    gen = run_task_iter(task, *args, method=method, copy=True, device=device, **params)
    stamps: list[tuple[float, object]] = []
    finished = False

    def timed(stage: str) -> int:
        return sum(1 for _, e in stamps if e.stage == stage)

    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration:
                finished = True
                break
            if getattr(ev, "epoch", 0) >= 1:
                stamps.append((time.perf_counter() - start, ev))
            if stages:
                enough = all(timed(st) >= epochs + 1 for st in stages)
            else:
                enough = bool(stamps) and timed(stamps[-1][1].stage) >= epochs + 1
            if enough or (stamps and time.perf_counter() - start > budget):
                break
    finally:
        gen.close()
    total = time.perf_counter() - start
    row = {"task": task, "method": method, "size": size, "data_MB": round(data_mb, 1),
           "finished": finished, "seconds_total": round(total, 2)}
    for name in ("max_epochs", "n_members", "pretrain_epochs"):
        if name in defaults:
            row[f"default_{name}"] = defaults[name]
    for st in stages:  # seconds per epoch of each stage
        times = [t for t, e in stamps if e.stage == st]
        if len(times) >= 2:
            row[f"s_per_epoch_{st}"] = round(float(np.median(np.diff(times))), 3)
    if stamps:
        stage = stamps[-1][1].stage
        times = [t for t, e in stamps if e.stage == stage]
        first_t = next(t for t, e in stamps)
        row["stage"] = stage
        row["setup_first_s"] = round(first_t, 2)
        diffs = np.diff(times)
        row["s_per_epoch"] = round(float(np.median(diffs)), 3) if len(diffs) else round(times[0], 3)
        row["epochs_timed"] = len(diffs) if len(diffs) else 1
    row["peak_rss_MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    row["rss_before_MB"] = round(rss0, 1)
    if torch.cuda.is_available():
        row["gpu_peak_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    row["device"] = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    row["torch_threads"] = torch.get_num_threads()
    return row


def run_one(task: str, method: str, size: int, epochs: int, budget: float, device: str,
            timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"{task}:{method}:{size}",
           "--epochs", str(epochs), "--budget", str(budget), "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"task": task, "method": method, "size": size, "error": f"timeout after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"task": task, "method": method, "size": size, "error": err[:200]}


def to_markdown(rows: list[dict]) -> str:
    cols = [("task", "task"), ("method", "method"), ("size", "cells"), ("s_per_epoch", "s/epoch"),
            ("s_per_epoch_pretrain", "pretrain s/epoch"), ("s_per_epoch_finetune", "fine-tune s/epoch"),
            ("default_pretrain_epochs", "pretrain_epochs (default)"),
            ("setup_first_s", "setup+1st s"), ("epochs_timed", "epochs timed"),
            ("default_max_epochs", "max_epochs (default)"), ("default_n_members", "ensemble"),
            ("peak_rss_MB", "peak RSS MB"), ("data_MB", "data MB"), ("gpu_peak_MB", "GPU peak MB"),
            ("device", "device"), ("error", "note")]
    cols = [(k, h) for k, h in cols if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000", help="comma list of numbers of cells")
    ap.add_argument("--epochs", type=int, default=3, help="epochs timed after the first")
    ap.add_argument("--budget", type=float, default=240.0,
                    help="stop a measurement after this many seconds (once an epoch was seen)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="kill a measurement after this many seconds")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default="", help="comma list of task:method (default: the native models + scvi)")
    ap.add_argument("--quick", action="store_true", help="sizes 1000,10000 and 2 epochs")
    ap.add_argument("--out", default=None, help="markdown output (default results/speed_<date>.md)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        task, method, size = args.worker.split(":")
        print(json.dumps(worker(task, method, int(size), args.epochs, args.budget, args.device)))
        return 0
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    epochs = 2 if args.quick else args.epochs
    models = ([tuple(m.split(":")) for m in args.models.split(",") if m.strip()] if args.models else MODELS)

    from napari_spatialdl.tasks import _registry as R

    try:
        R._load_builtin_methods()
    except Exception as exc:  # noqa: BLE001
        print(f"[speed] registry incomplete: {exc}", file=sys.stderr)
    sys.path.insert(0, str(HERE))
    from accuracy import machine_info, versions

    rows = []
    for task, method in models:
        m = R.REGISTRY.get(task, {}).get(method)
        if m is None or not m.available():
            print(f"[speed] {task}/{method} not registered or not installed: skipped", file=sys.stderr)
            continue
        for size in sizes:
            print(f"[speed] {task}/{method} at {size} cells ...", file=sys.stderr, flush=True)
            row = run_one(task, method, size, epochs, args.budget, args.device, args.timeout)
            print(f"[speed]   {row}", file=sys.stderr, flush=True)
            rows.append(row)
    table = to_markdown(rows)
    print(table)
    date = time.strftime("%Y-%m-%d")
    out = Path(args.out) if args.out else HERE / "results" / f"speed_{date}.md"
    machine = machine_info()
    text = [f"# Speed benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
            "Command: `python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
            "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()), "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items() if v != "not installed"), "",
            f"Synthetic NB counts, {N_GENES} genes, {N_TYPES} types, {N_BATCHES} batches. "
            f"Deconvolution: `cells` spots + {N_REFERENCE_DECONV} reference cells; annotation: a "
            f"`cells`-cell reference + {N_QUERY_ANNOTATE} query cells. Each row is a fresh process, "
            "stopped after a few epochs (the time per epoch does not depend on how many follow). "
            "The transformer annotator trains in two stages: masked-gene pretraining on the reference "
            "and the query (`pretrain s/epoch`), then fine-tuning on the reference (`fine-tune s/epoch`; "
            "`s/epoch` is the last stage's).", "",
            table, ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"[speed] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
