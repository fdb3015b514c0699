"""GUI responsiveness: does napari stay interactive while a model trains in the widget's worker?

For each task, the benchmark opens a napari viewer (real window: run under ``xvfb-run``) with
the synthetic tissue, starts the task from its panel in the Spatial DL dock (the same code path
as pressing Run: worker thread, progress bar, live loss plot, overlay at the end), and while it
runs a ``QTimer`` heartbeat fires every ``--tick`` ms on the main thread. A late heartbeat is the
event loop being blocked: the table reports the longest gap beyond the tick ("stall"), the 99th
percentile gap, and how many gaps exceeded 100 ms (the goal: none). Stalls are split into the
training phase (worker running) and the end of the run (result written, overlay drawn on the
main thread). Then the run is started again and cancelled after ``--cancel-after`` s, to time
Cancel (click to widget ready, nothing written).

Usage::

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/gui_responsiveness.py
    xvfb-run -a ... python benchmarks/gui_responsiveness.py --threads 1 --n-spots 2000 --epochs 100
    xvfb-run -a ... python benchmarks/gui_responsiveness.py --tasks deconvolve,annotate
"""

from __future__ import annotations

import argparse
import time

import numpy as np

TASKS = ("impute", "integrate", "deconvolve", "annotate")


class Heartbeat:
    """A QTimer on the main thread recording the time between its ticks."""

    def __init__(self, tick_ms: int):
        from qtpy.QtCore import QTimer

        self.tick = tick_ms / 1000.0
        self.gaps: list[tuple[float, float]] = []  # (time, gap)
        self._last = None
        self.timer = QTimer()
        self.timer.setInterval(tick_ms)
        self.timer.timeout.connect(self._beat)

    def _beat(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append((now, now - self._last))
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self._beat()

    def stats(self, t0: float = -np.inf, t1: float = np.inf) -> dict[str, float]:
        gaps = np.array([g for t, g in self.gaps if t0 <= t <= t1]) if self.gaps else np.array([])
        if gaps.size == 0:
            return {"ticks": 0, "stall_ms": float("nan"), "p99_ms": float("nan"), "over100": 0}
        return {
            "ticks": int(gaps.size),
            "stall_ms": max(0.0, (gaps.max() - self.tick) * 1000),
            "p99_ms": float(np.percentile(gaps, 99) * 1000),
            "over100": int(((gaps - self.tick) > 0.1).sum()),
        }


def _wait(app, cond, timeout: float) -> bool:
    """Run Qt's event loop (deferred deletes included) until ``cond()`` or ``timeout`` seconds."""
    from qtpy.QtCore import QEventLoop, QTimer

    start = time.perf_counter()
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(2)
    state = {"ok": bool(cond())}

    def check() -> None:
        if cond():
            state["ok"] = True
            loop.quit()
        elif time.perf_counter() - start > timeout:
            loop.quit()

    poll.timeout.connect(check)
    poll.start()
    if not state["ok"]:
        loop.exec()
    poll.stop()
    return state["ok"]


class HandlerClock:
    """Time spent on the main thread in the run controller's handlers (events, result overlay)."""

    def __init__(self):
        from napari_spatialdl._widgets import _runner

        self.yielded: list[float] = []
        self.finished: list[float] = []
        cls = _runner.TaskRun
        orig_yielded, orig_finished = cls._on_yielded, cls._on_finished

        def timed_yielded(run, event, _orig=orig_yielded):
            t = time.perf_counter()
            _orig(run, event)
            self.yielded.append(time.perf_counter() - t)

        def timed_finished(run, _orig=orig_finished):
            t = time.perf_counter()
            _orig(run)
            self.finished.append(time.perf_counter() - t)

        cls._on_yielded, cls._on_finished = timed_yielded, timed_finished

    def reset(self) -> None:
        self.yielded.clear()
        self.finished.clear()


def _snapshot(adata) -> tuple:
    return (tuple(adata.obs.columns), tuple(adata.obsm.keys()), tuple(adata.layers.keys()),
            tuple(sorted(adata.uns.keys())))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--n-spots", type=int, default=2000)
    parser.add_argument("--n-genes", type=int, default=500)
    parser.add_argument("--n-cells", type=int, default=3000, help="reference cells")
    parser.add_argument("--epochs", type=int, default=60, help="max_epochs of each model")
    parser.add_argument("--tick", type=int, default=10, help="heartbeat interval (ms)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    parser.add_argument("--cancel-after", type=float, default=1.5, help="seconds before Cancel")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--screenshot", default="", help="save a screenshot per task: path prefix")
    parser.add_argument("--nice", type=int, default=None,
                        help="nice increment of the worker thread (default: the runner's WORKER_NICE)")
    parser.add_argument("--keep-activity-gif", action="store_true",
                        help="do not pause napari's status-bar GIF on software OpenGL (to compare)")
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_spatialdl._widgets import _runner
    from napari_spatialdl._widgets._dock import SpatialDLDock
    from napari_spatialdl._widgets._viewer import show
    from napari_spatialdl.datasets import synthetic_tissue

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_activity_gif:
        _runner.PAUSE_ACTIVITY_GIF_ON_SOFTWARE_GL = False
    if args.nice is not None:
        _runner.WORKER_NICE = args.nice
    clock = HandlerClock()
    spatial, reference = synthetic_tissue(0, n_spots=args.n_spots, n_genes=args.n_genes,
                                          n_reference_cells=args.n_cells)
    # integration needs batches among the spots: two halves of the section as two "sections"
    rows = spatial.obs["array_row"].to_numpy()
    spatial.obs["section"] = np.where(rows < np.median(rows), "section A", "section B")
    spatial.obs["section"] = spatial.obs["section"].astype("category")

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    show(spatial, viewer, color="region")
    spots = viewer.layers[-1]
    spots.metadata["reference"] = reference
    dock = SpatialDLDock(viewer)
    viewer.window.add_dock_widget(dock, name="Spatial DL", area="right")
    app = QApplication.instance()
    _wait(app, lambda: False, 0.3)

    beat = Heartbeat(args.tick)
    # idle baseline: how regular is the heartbeat with nothing running?
    beat.start()
    _wait(app, lambda: False, 1.0)
    beat.stop()
    idle = beat.stats()

    rows_out = []
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        widget = dock.show_task(task)
        if task == "integrate":
            widget.set_batch_key("section")
        elif task in ("deconvolve", "annotate"):
            widget.set_labels_key("cell_type")
        if widget.params is not None and "max_epochs" in widget.params.fields:
            widget.params.set(max_epochs=args.epochs)
        why = widget.why_not()
        if why:
            print(f"{task}: cannot run: {why}")
            continue
        clock.reset()
        beat.start()
        t_start = time.perf_counter()
        run = widget.start()
        t_trained = [None]

        def finished_training(run=run, marker=t_trained):
            if marker[0] is None and (run.done or "result" in run._box):
                marker[0] = time.perf_counter()
            return run.done

        ok = _wait(app, finished_training, args.timeout)
        t_done = time.perf_counter()
        _wait(app, lambda: False, 0.3)  # the overlay's repaint
        beat.stop()
        if not ok:
            run.cancel()
            _wait(app, lambda r=run: r.done, 60)
            print(f"{task}: timed out after {args.timeout} s")
            continue
        if run.error is not None:
            print(f"{task}: failed: {run.error}")
            continue
        t_train_end = t_trained[0] or t_done
        start = beat.stats(t_start, t_start + 1.0)  # Run clicked: progress bar appears, 1st paint
        train = beat.stats(t_start + 1.0, t_train_end)
        end = beat.stats(t_train_end, np.inf)
        total = beat.stats()
        n_epochs = max((e.epoch for e in run.events), default=0)
        handler_ms = 1000 * max(clock.yielded, default=0.0)
        overlay_ms = 1000 * max(clock.finished, default=0.0)
        if args.screenshot:
            from imageio.v3 import imwrite

            imwrite(f"{args.screenshot}_{task}.png", viewer.screenshot(canvas_only=False, flash=False))

        # cancel: start again, cancel after a while, time until the widget is ready
        adata = spots.metadata["adata"]
        before = _snapshot(adata)
        uns_before = repr(adata.uns.get("spatialdl", {}).get(task, {}).get("date"))
        run2 = widget.start()
        _wait(app, lambda r=run2: r.done, args.cancel_after)
        cancel_ms = float("nan")
        cancelled = False
        if not run2.done:
            t_cancel = time.perf_counter()
            widget.cancel_button.click()
            _wait(app, lambda r=run2: r.done, 120)
            cancel_ms = (time.perf_counter() - t_cancel) * 1000
            cancelled = run2.cancelled
        unchanged = (_snapshot(adata) == before and
                     repr(adata.uns.get("spatialdl", {}).get(task, {}).get("date")) == uns_before)
        rows_out.append({
            "task": task, "method": run.method, "epochs": n_epochs, "run_s": t_done - t_start,
            "start_stall_ms": start["stall_ms"],
            "train_stall_ms": train["stall_ms"], "train_p99_ms": train["p99_ms"],
            "train_over100": train["over100"], "end_stall_ms": end["stall_ms"],
            "total_over100": total["over100"], "ticks": total["ticks"],
            "handler_ms": handler_ms, "overlay_ms": overlay_ms, "cancel_ms": cancel_ms, "cancelled_clean": cancelled and unchanged,
            "ready_again": widget.run_button.isEnabled(),
        })
        print(f"{task}: done", flush=True)

    print()
    print(f"napari-spatialdl GUI responsiveness: {args.n_spots} spots x {args.n_genes} genes, "
          f"{args.n_cells} reference cells, max_epochs={args.epochs}, heartbeat every {args.tick} ms, "
          f"torch threads={torch.get_num_threads()}, worker nice +{_runner.WORKER_NICE}")
    renderer = _runner.gl_renderer(viewer)
    gif = ("paused during runs" if _runner.PAUSE_ACTIVITY_GIF_ON_SOFTWARE_GL and _runner.software_gl(viewer)
           else "animated")
    print(f"OpenGL renderer: {renderer or 'unknown'}; napari activity GIF: {gif}")
    print(f"idle baseline: longest stall {idle['stall_ms']:.1f} ms, p99 gap {idle['p99_ms']:.1f} ms")
    header = (f"{'task':<11}{'method':<10}{'epochs':>7}{'run s':>8}{'start ms':>10}{'train stall ms':>16}"
              f"{'train p99 ms':>14}{'>100ms':>8}{'event ms':>10}{'end stall ms':>14}{'overlay ms':>12}"
              f"{'cancel ms':>11}{'clean':>7}")
    print(header)
    print("-" * len(header))
    for r in rows_out:
        clean = "yes" if r["cancelled_clean"] else ("n/a" if np.isnan(r["cancel_ms"]) else "NO")
        print(f"{r['task']:<11}{r['method']:<10}{r['epochs']:>7}{r['run_s']:>8.1f}{r['start_stall_ms']:>10.1f}"
              f"{r['train_stall_ms']:>16.1f}{r['train_p99_ms']:>14.1f}{r['train_over100']:>8}"
              f"{r['handler_ms']:>10.1f}{r['end_stall_ms']:>14.1f}{r['overlay_ms']:>12.1f}"
              f"{r['cancel_ms']:>11.0f}{clean:>7}")
    print("stall: longest heartbeat gap beyond the tick; start: first second after Run (progress bar "
          "created, panels repainted); train: the rest of the training; >100ms: gaps "
          "over the goal during training; event ms: longest main-thread handling of one progress event "
          "(progress bar + loss plot); end: result written + overlay drawn on the main thread (overlay "
          "ms: the overlay handler alone); cancel: click to widget ready; clean: cancelled with the "
          "AnnData unchanged.")
    viewer.close()


if __name__ == "__main__":
    main()
