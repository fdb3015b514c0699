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

from ._constants import DOMINANT_KEY, PROPORTIONS_KEY, TASKS

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
    """``spatial.obs['spatialdl_dominant_cell_type']``: the cell type with the largest estimated
    proportion (:func:`napari_spatialdl.tasks._derived.dominant_cell_type`, the key the GUI uses too).

    Its colours (``uns['spatialdl_dominant_cell_type_colors']``) follow the reference's
    ``uns[f'{labels_key}_colors']`` when there is one, so both datasets show a type in the same colour.
    """
    from .tasks._derived import dominant_cell_type

    return dominant_cell_type(spatial, reference=reference, labels_key=labels_key)


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
            raise CliError(f"--param expects name=value, got {item!r}.")
        name, _, raw = item.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        params[name.strip()] = value
    return params


class CliError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


def _read(path: str, *, reference: bool = False) -> Any:
    from .io import read_counts_csv, read_h5ad, read_visium

    p = Path(path)
    if not p.exists():
        raise CliError(f"{path} does not exist.")
    if p.suffix == ".zarr" or (p.is_dir() and (p / "zarr.json").exists() or (p / ".zgroup").exists()):
        from . import io

        return io.read_spatialdata(p)
    if p.is_dir():
        return read_visium(p)
    if p.suffix == ".h5ad":
        return read_h5ad(p, validate=not reference)  # a reference needs no coordinates
    if p.name.endswith((".csv", ".csv.gz")):
        return read_counts_csv(p)
    raise CliError(f"Cannot read {path}: give a Space Ranger folder, a SpatialData .zarr, a .h5ad "
                   "or a counts .csv.")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _arg_type(annotation: Any) -> Callable[[str], Any]:
    """argparse keeps the text; the task core coerces it from the method's annotation."""
    def parse(raw: str) -> Any:
        if raw in ("None", "none"):
            return None
        return raw

    return parse


def add_task_arguments(parser: argparse.ArgumentParser, task: str, method: str | None) -> None:
    """The inputs, options and (for ``method``) the method's parameters of ``task``, from its spec."""
    from .tasks import get_method, get_spec, method_params
    from .tasks._spec import DATA, REFERENCE

    spec = get_spec(task)
    for inp in spec.inputs:
        if inp.role == DATA:
            parser.add_argument("input", help=f"{inp.doc}: Space Ranger folder, .zarr, .h5ad or counts .csv")
        elif inp.role == REFERENCE:
            parser.add_argument(_option(inp.name), dest=inp.name, required=inp.required,
                                help=f"{inp.doc} (.h5ad, .zarr or counts .csv)")
        else:
            parser.add_argument(_option(inp.name), dest=inp.name, required=inp.required,
                                default=None, help=inp.doc)
    for opt in spec.options:
        parser.add_argument(_option(opt.name), dest=opt.name, type=_arg_type(opt.annotation),
                            default=opt.default, help=f"{opt.doc} (default {opt.default!r})")
    parser.add_argument("--out", required=True, help="output .h5ad (or .zarr for SpatialData input)")
    parser.add_argument("--method", default="spatialdl", help="see `napari-spatialdl methods`")
    parser.add_argument("--key-added", dest="key_added", default=None,
                        help="write the result under this key instead of the default")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--seed", default=0, help="random seed (default 0)")
    parser.add_argument("--param", action="append", metavar="NAME=VALUE",
                        help="a method parameter, repeatable (or use its own --option)")
    if method is None:
        return
    try:
        m = get_method(task, method)
    except (ValueError, ImportError) as err:
        raise CliError(str(err)) from None
    taken = {a.dest for a in parser._actions}
    for p in method_params(m):
        if p.name in taken:
            continue
        default = None if p.required else p.default
        parser.add_argument(_option(p.name), dest=p.name, type=_arg_type(p.annotation), default=argparse.SUPPRESS,
                            help=f"{p.doc} (default {default!r})")


def run_task(args: argparse.Namespace, stream: Any = None) -> Any:
    """``napari-spatialdl run``: read, run one task, write the result to ``--out`` (.h5ad)."""
    from .io import write_h5ad
    from .tasks import get_spec
    from .tasks import run_task as run
    from .tasks._spec import DATA, REFERENCE

    stream = stream or sys.stdout
    spec = get_spec(args.task)
    values = vars(args).copy()
    adata = _read(values.pop("input"))
    inputs: dict[str, Any] = {}
    for inp in spec.inputs:
        if inp.role == DATA:
            continue
        value = values.pop(inp.name, None)
        inputs[inp.name] = _read(value, reference=True) if (inp.role == REFERENCE and value is not None) else value
    params = _parse_params(values.pop("param", None) or [])
    for name in ("command", "task", "out", "debug"):
        values.pop(name, None)
    params.update({k: v for k, v in values.items() if v is not None or k == "key_added"})
    result = run(args.task, adata, **inputs, progress=progress_printer(stream), **params)
    out = getattr(result, "adata", None)
    out = adata if out is None else out
    if str(args.out).endswith(".zarr"):  # results into a SpatialData (the input's, or a new one)
        from .io import write_spatialdata

        write_spatialdata(out, args.out)
    else:
        write_h5ad(out, args.out)
    keys = getattr(result, "keys", {})
    print(f"Wrote {Path(args.out).resolve()} ({', '.join(f'{k}: {v}' for k, v in keys.items())})",
          file=stream, flush=True)
    return result


def list_methods_text(task: str | None = None) -> str:
    """One line per task and method (plain-words label and the technical description); with
    ``task``, each method's parameters too."""
    from .tasks import list_methods, method_params

    lines = []
    for t in (task,) if task else TASKS:
        for m in list_methods(t):
            status = "" if m.available() else "  (not installed)"
            lines.append(f"{t:11s} {m.name:14s} {m.title}{status}")
            if task:
                lines.append(f"{'':26s}{m.description}")
                for p in method_params(m):
                    default = "required" if p.required else f"default {p.default!r}"
                    lines.append(f"{'':28s}{_option(p.name)} ({default}): {p.doc}")
    return "\n".join(lines)


def build_parser(task: str | None = None, method: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``napari-spatialdl`` (``run TASK`` options from the task's spec)."""
    parser = argparse.ArgumentParser(
        prog="napari-spatialdl",
        description="Deep-learning models for spatial transcriptomics, on the tissue image.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
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
    tasks = r.add_subparsers(dest="task", required=True)
    for t in TASKS:
        tp = tasks.add_parser(t, help=f"{t} (options of a method: `run {t} --method NAME --help`)")
        if t == task:  # only the chosen task's spec is read (keeps `demo` light)
            add_task_arguments(tp, t, method or "spatialdl")

    m = sub.add_parser("methods", help="list the methods of every task (of one task: with parameters)")
    m.add_argument("task", nargs="?", choices=TASKS)
    return parser


def _task_and_method(argv: Sequence[str]) -> tuple[str | None, str | None]:
    argv = list(argv)
    if "run" not in argv:
        return None, None
    rest = argv[argv.index("run") + 1:]
    task = rest[0] if rest and rest[0] in TASKS else None
    method = None
    for i, item in enumerate(rest):
        if item == "--method" and i + 1 < len(rest):
            method = rest[i + 1]
        elif item.startswith("--method="):
            method = item.split("=", 1)[1]
    return task, method


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-spatialdl`` command.

    Input errors print one line and exit with status 2 (``--debug``: the traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _main(argv)
    except (CliError, ValueError, ImportError, FileNotFoundError) as err:
        if debug:
            raise
        print(f"napari-spatialdl: error: {err}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    task, method = _task_and_method(argv)
    args = build_parser(task, method).parse_args(argv)
    if args.command == "methods":
        print(list_methods_text(args.task))
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
