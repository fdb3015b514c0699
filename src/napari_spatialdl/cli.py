"""Command line: ``napari-spatialdl demo`` (deconvolve a synthetic tissue and look at it),
``napari-spatialdl run <task> ...`` (a task on files, results to .h5ad) and
``napari-spatialdl methods`` (what is available).

Only ``demo`` without ``--no-gui`` imports napari/Qt.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._constants import PROPORTIONS_KEY, TASKS

DOMINANT_KEY = "dominant_cell_type"


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------


def progress_printer(stream: Any = None, every_s: float = 10.0) -> Callable[[Any], None]:
    """A ``progress=`` callback printing one line at each tenth of the epoch budget, at least
    every ``every_s`` seconds, and for the first and last events and those with a message."""
    stream = stream or sys.stdout
    state = {"last": -np.inf, "tenth": -1, "stage": None}

    def report(event: Any) -> None:
        now = time.monotonic()
        n_epochs = getattr(event, "n_epochs", 0) or 0
        epoch = getattr(event, "epoch", 0) or 0
        tenth = int(10 * epoch / n_epochs) if n_epochs else 0
        stage = getattr(event, "stage", "")
        due = (tenth > state["tenth"] or stage != state["stage"] or now - state["last"] >= every_s
               or (n_epochs and epoch >= n_epochs))
        if not due:
            return
        state.update(last=now, tenth=tenth, stage=stage)
        parts = [f"[{stage}]"] if stage else []
        if n_epochs:
            parts.append(f"epoch {epoch}/{n_epochs}")
        if getattr(event, "train_loss", None) is not None:
            parts.append(f"loss {event.train_loss:.4g}")
        if getattr(event, "val_loss", None) is not None:
            parts.append(f"val {event.val_loss:.4g}")
        if getattr(event, "elapsed", 0):
            parts.append(f"{event.elapsed:.1f} s")
        if getattr(event, "message", ""):
            parts.append(event.message)
        print(" ".join(parts), file=stream, flush=True)

    return report


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


def add_dominant_type(spatial: Any, reference: Any | None = None, labels_key: str = "cell_type") -> pd.Categorical:
    """``spatial.obs['dominant_cell_type']``: the cell type with the largest estimated proportion.

    Its colours (``uns['dominant_cell_type_colors']``) follow the reference's
    ``uns[f'{labels_key}_colors']`` when there is one, so both datasets show a type in the same colour.
    """
    props = spatial.obsm[PROPORTIONS_KEY]
    if not isinstance(props, pd.DataFrame):
        raise TypeError(f"obsm[{PROPORTIONS_KEY!r}] must be a DataFrame with one column per cell type.")
    columns = [str(c) for c in props.columns]
    dominant = pd.Categorical(np.asarray(columns, dtype=object)[np.argmax(props.to_numpy(), axis=1)],
                              categories=columns)
    spatial.obs[DOMINANT_KEY] = dominant
    colors = _reference_colors(reference, labels_key)
    if colors and all(c in colors for c in columns):
        spatial.uns[f"{DOMINANT_KEY}_colors"] = [colors[c] for c in columns]
    return dominant


def _reference_colors(reference: Any | None, labels_key: str) -> dict[str, str]:
    if reference is None or labels_key not in reference.obs:
        return {}
    labels = reference.obs[labels_key]
    colors = reference.uns.get(f"{labels_key}_colors")
    if colors is None or not isinstance(labels.dtype, pd.CategoricalDtype):
        return {}
    categories = [str(c) for c in labels.cat.categories]
    if len(colors) < len(categories):
        return {}
    return dict(zip(categories, map(str, colors)))


def truth_agreement(spatial: Any, truth_key: str = "true_proportions") -> dict[str, float] | None:
    """Agreement of the estimated proportions with the simulator's truth (None without truth).

    Returns the Pearson correlation over all spots x types, the RMSE, and the fraction of spots
    whose dominant type is right.
    """
    if truth_key not in spatial.obsm or PROPORTIONS_KEY not in spatial.obsm:
        return None
    est, truth = spatial.obsm[PROPORTIONS_KEY], spatial.obsm[truth_key]
    if not isinstance(est, pd.DataFrame) or not isinstance(truth, pd.DataFrame):
        return None
    common = [c for c in est.columns if c in truth.columns]
    if not common:
        return None
    e, t = est[common].to_numpy(float), truth[common].to_numpy(float)
    return {
        "pearson": float(np.corrcoef(e.ravel(), t.ravel())[0, 1]),
        "rmse": float(np.sqrt(np.mean((e - t) ** 2))),
        "dominant_accuracy": float(np.mean(e.argmax(1) == t.argmax(1))),
    }


def _most_variable_types(props: pd.DataFrame, n: int) -> list[str]:
    order = props.var(axis=0).sort_values(ascending=False)
    return [str(c) for c in order.index[:n]]


def _spot_patches(ax: Any, xy: np.ndarray, diameter: float, colors: np.ndarray) -> None:
    from matplotlib.collections import EllipseCollection

    collection = EllipseCollection(
        widths=np.full(len(xy), diameter), heights=np.full(len(xy), diameter), angles=0,
        units="xy", offsets=xy, offset_transform=ax.transData, facecolors=colors,
        edgecolors=(0.0, 0.0, 0.0, 0.35), linewidths=0.3,  # a faint rim keeps pale spots visible on H&E
    )
    ax.add_collection(collection)


def overview_figure(spatial: Any, *, color: str = DOMINANT_KEY, n_types: int = 3, dpi: int = 120) -> Any:
    """The matplotlib Figure of :func:`render_overview` (Agg canvas, no Qt); ``fig.axes[0]`` is the
    tissue coloured by ``color``, the next axes the cell type proportions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .io import get_image, spot_diameter_px, spots_px
    from .layers import spot_colors

    img, _, key = get_image(spatial)
    xy = spots_px(spatial, image_key=key or "auto")
    diameter = spot_diameter_px(spatial, image_key=key or "auto")
    props = spatial.obsm.get(PROPORTIONS_KEY)
    types = _most_variable_types(props, n_types) if isinstance(props, pd.DataFrame) else []

    n_panels = 1 + len(types)
    n_cols = 1 if n_panels == 1 else 2
    n_rows = int(np.ceil(n_panels / n_cols))
    fig = Figure(figsize=(7.0 * n_cols + 2.0, 5.6 * n_rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    # zoom on the spots (the tissue), with a margin of two spot diameters
    lo, hi = xy.min(axis=0) - 2 * diameter, xy.max(axis=0) + 2 * diameter

    def base(ax: Any, title: str) -> None:
        if img is not None:
            ax.imshow(img)
        else:
            ax.set_facecolor("white")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(hi[1], lo[1])  # image rows grow downwards
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])

    rgba, legend, _ = spot_colors(spatial, color)
    base(axes[0], color.replace("_", " "))
    _spot_patches(axes[0], xy, diameter, rgba)
    if legend.kind == "categorical":
        handles = [Patch(facecolor=c, label=name) for name, c in legend.categories.items()]
        axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                       frameon=False, title=color.replace("_", " "), title_fontsize=9)
    for ax, cell_type in zip(axes[1:], types):
        values = props[cell_type].to_numpy(float)
        vmax = max(float(np.nanmax(values)), 1e-6)
        rgba, _, _ = spot_colors(spatial, f"{PROPORTIONS_KEY}:{cell_type}", cmap="viridis",
                                 contrast_limits=(0.0, vmax))
        base(ax, f"{cell_type} proportion")
        _spot_patches(ax, xy, diameter, rgba)
        fig.colorbar(ScalarMappable(Normalize(0.0, vmax), cmap="viridis"), ax=ax, fraction=0.04, pad=0.02)
    return fig


def render_overview(spatial: Any, path: str | Path, *, color: str = DOMINANT_KEY,
                    n_types: int = 3, dpi: int = 120) -> Path:
    """A PNG (matplotlib, no Qt) of the tissue with the spots coloured by ``color`` and a legend,
    beside one panel per cell type proportion (the ``n_types`` most variable across spots)."""
    fig = overview_figure(spatial, color=color, n_types=n_types, dpi=dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def demo(*, gui: bool = True, out: str | Path = "demo.png", seed: int = 0, method: str = "spatialdl",
         n_spots: int = 2000, stream: Any = None, **params: Any) -> Any:
    """Deconvolve the synthetic tissue and show the result (napari) or write a PNG.

    Returns the spatial AnnData (``gui=False``) or the napari viewer (``gui=True``, before
    ``napari.run()``).
    """
    from .datasets import synthetic_tissue
    from .tasks.api import deconvolve

    stream = stream or sys.stdout
    print(f"Simulating a synthetic tissue (seed {seed}, {n_spots} spots)...", file=stream, flush=True)
    spatial, reference = synthetic_tissue(seed, n_spots=n_spots)
    print(f"  spatial: {spatial.n_obs} spots x {spatial.n_vars} genes; reference: {reference.n_obs} "
          f"cells, {reference.obs['cell_type'].nunique()} cell types", file=stream, flush=True)
    print(f"Deconvolving with method {method!r}...", file=stream, flush=True)
    t0 = time.perf_counter()
    deconvolve(spatial, reference, labels_key="cell_type", method=method,
               progress=progress_printer(stream), **params)
    print(f"  done in {time.perf_counter() - t0:.1f} s", file=stream, flush=True)
    add_dominant_type(spatial, reference)
    scores = truth_agreement(spatial)
    if scores is not None:
        print(f"  vs. the simulated truth: Pearson r = {scores['pearson']:.3f}, RMSE = {scores['rmse']:.3f}, "
              f"dominant type right in {scores['dominant_accuracy']:.0%} of spots", file=stream, flush=True)
    if not gui:
        path = render_overview(spatial, out)
        print(f"Wrote {path.resolve()}", file=stream, flush=True)
        return spatial

    import napari
    from qtpy.QtWidgets import QApplication

    from ._widgets._color import ColorSpotsWidget
    from ._widgets._viewer import show

    props = spatial.obsm[PROPORTIONS_KEY]
    viewer = napari.current_viewer() or napari.Viewer(title="napari-spatialdl demo")
    viewer.window.add_dock_widget(ColorSpotsWidget(viewer), name="Colour spots", area="right")
    show(spatial, viewer, color=DOMINANT_KEY, name="Synthetic tissue", legend=False,
         features=[f"{PROPORTIONS_KEY}:{c}" for c in props.columns])
    QApplication.processEvents()  # let the docks take their place, then fit the tissue in the canvas
    viewer.reset_view()
    print("Hover a spot for its barcode, dominant type and proportions; recolour it in the "
          "'Colour spots' panel (obsm column: spatialdl_proportions:<cell type>).", file=stream, flush=True)
    return viewer


# ---------------------------------------------------------------------------------------------
# run / methods
# ---------------------------------------------------------------------------------------------


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--param expects name=value, got {item!r}")
        name, _, raw = item.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        params[name.strip()] = value
    return params


def _read(path: str) -> Any:
    from .io import read_counts_csv, read_h5ad, read_visium

    p = Path(path)
    if p.is_dir():
        return read_visium(p)
    if p.suffix == ".h5ad":
        return read_h5ad(p)
    if p.name.endswith((".csv", ".csv.gz")):
        return read_counts_csv(p)
    raise SystemExit(f"Cannot read {path}: give a Space Ranger folder, a .h5ad or a counts .csv.")


def run_task(args: argparse.Namespace, stream: Any = None) -> Any:
    """``napari-spatialdl run``: read, run one task, write the result to ``--out`` (.h5ad)."""
    from .io import write_h5ad
    from .tasks import api as tasks

    stream = stream or sys.stdout
    adata = _read(args.input)
    params = _parse_params(args.param or [])
    progress = progress_printer(stream)
    needs_reference = args.task in ("deconvolve", "annotate")
    if needs_reference and (args.reference is None or args.labels_key is None):
        raise SystemExit(f"{args.task} needs --reference and --labels-key.")
    if args.task == "integrate" and args.batch_key is None:
        raise SystemExit("integrate needs --batch-key.")
    func = getattr(tasks, args.task)
    if needs_reference:
        result = func(adata, _read(args.reference), args.labels_key, method=args.method,
                      progress=progress, **params)
    elif args.task == "integrate":
        result = func(adata, args.batch_key, method=args.method, progress=progress, **params)
    else:
        result = func(adata, method=args.method, progress=progress, **params)
    out = getattr(result, "adata", None)
    out = adata if out is None else out
    write_h5ad(out, args.out)
    keys = getattr(result, "keys", {})
    print(f"Wrote {Path(args.out).resolve()} ({', '.join(f'{k}: {v}' for k, v in keys.items())})",
          file=stream, flush=True)
    return result


def list_methods_text() -> str:
    """One line per task and method, with its description."""
    from .tasks import list_methods

    lines = []
    for task in TASKS:
        for m in list_methods(task):
            status = "" if m.available() else "  (not installed)"
            lines.append(f"{task:11s} {m.name:14s} {m.description}{status}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``napari-spatialdl``."""
    parser = argparse.ArgumentParser(
        prog="napari-spatialdl",
        description="Deep-learning models for spatial transcriptomics, on the tissue image.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="deconvolve a synthetic tissue and show the result")
    d.add_argument("--no-gui", action="store_true", help="write a PNG instead of opening napari")
    d.add_argument("--out", default="demo.png", help="PNG path for --no-gui (default demo.png)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the synthetic tissue")
    d.add_argument("--method", default="spatialdl", help="deconvolution method (see `methods`)")
    d.add_argument("--n-spots", type=int, default=2000, help="number of spots to simulate")
    d.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="extra method parameter, repeatable (e.g. --param max_epochs=200)")

    r = sub.add_parser("run", help="run a task on files and write the result to .h5ad")
    r.add_argument("task", choices=TASKS)
    r.add_argument("input", help="Space Ranger folder, .h5ad or counts .csv")
    r.add_argument("--out", required=True, help="output .h5ad")
    r.add_argument("--reference", help="annotated reference (deconvolve, annotate)")
    r.add_argument("--labels-key", help="reference obs column with the cell types")
    r.add_argument("--batch-key", help="obs column with the batch (integrate)")
    r.add_argument("--method", default="spatialdl")
    r.add_argument("--param", action="append", metavar="NAME=VALUE", help="method parameter, repeatable")

    sub.add_parser("methods", help="list the methods of every task")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-spatialdl`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "methods":
        print(list_methods_text())
        return 0
    if args.command == "run":
        run_task(args)
        return 0
    params = _parse_params(args.param or [])
    if args.no_gui:
        demo(gui=False, out=args.out, seed=args.seed, method=args.method, n_spots=args.n_spots, **params)
        return 0
    import napari

    demo(gui=True, seed=args.seed, method=args.method, n_spots=args.n_spots, **params)
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
