"""Scripted runs: the same run as the widgets, from napari's console or a script.

>>> import napari_spatialdl as sdl
>>> sdl.run(viewer, "deconvolve", reference=ref, labels_key="cell_type")     # doctest: +SKIP
>>> result = sdl.run(viewer, "impute", block=True, max_epochs=50)            # doctest: +SKIP

The task runs in a napari thread worker with the progress bar in the activity dock; when it
finishes its result is drawn on the tissue (the same overlay as the widgets).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .._constants import TASKS
from ._runner import TaskRun

#: runs started from scripts, kept alive until they finish
_ACTIVE: set[TaskRun] = set()
_VIEWS: list[Any] = []


def _resolve_reference(reference: Any, layer: Any, required: bool) -> Any:
    from anndata import AnnData

    if reference is None:
        if not required:
            return None
        reference = layer.metadata.get("reference")
        if reference is None:
            raise ValueError(
                "This task needs reference=: an annotated AnnData or the path of an .h5ad "
                "(the spots layer carries none)."
            )
        return reference
    if isinstance(reference, AnnData):
        return reference
    if isinstance(reference, str | Path):
        from ..io import read_h5ad

        return read_h5ad(reference)
    raise TypeError(f"reference must be an AnnData or a path to an .h5ad, not {type(reference).__name__}.")


def run(viewer: Any, task: str, *, adata: Any = None, method: str = "spatialdl", block: bool = False,
        overlay: bool = True, timeout: float | None = None, **params: Any) -> Any:
    """Run ``task`` on the spots shown in ``viewer``, with the GUI's progress bar and overlay.

    Parameters
    ----------
    viewer
        The napari viewer. Its spots layers: those of napari-spatialdl's readers and :func:`show`,
        and napari-spatialdata's layers of circles or points that a table annotates (their
        SpatialData is not changed: the results go into the AnnData in ``layer.metadata['adata']``;
        :func:`napari_spatialdl.write_spatialdata` puts them into the ``.zarr``).
    task
        ``'impute'``, ``'integrate'``, ``'deconvolve'`` or ``'annotate'``.
    adata
        Which spots: the AnnData shown by a spots layer (default: the active spots layer, else
        the top-most). An AnnData not shown yet is shown first.
    method
        Registry method (``napari_spatialdl.list_methods(task)``).
    block
        Wait for the end (processing Qt events meanwhile) and return the ``TaskResult``
        (None when cancelled); errors are raised. Otherwise return the worker at once;
        errors are shown as napari notifications.
    overlay
        Draw the result on the tissue when the run finishes.
    timeout
        With ``block=True``: seconds to wait before cancelling the run (TimeoutError).
    **params
        The task's other inputs by their API names (``tasks.get_spec(task).inputs``: e.g.
        ``batch_key=``, ``reference=`` — an AnnData or an .h5ad path, by default the reference
        the spots layer carries — and ``labels_key=``), then the task's options and the method's
        parameters (``max_epochs=``, ``device=``, ...).

    Returns
    -------
    worker or TaskResult
        The napari ``GeneratorWorker`` (``worker.quit()`` cancels), or with ``block=True``
        the result.
    """
    from ..tasks import get_method, get_spec
    from ..tasks._spec import DATA, REFERENCE
    from ._overlay import result_view_for, show_task_result
    from ._spatialdata_layers import ensure_spots_layer
    from ._viewer import find_spots_layer, show

    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; tasks are {', '.join(TASKS)}.")
    spec = get_spec(task)
    m = get_method(task, method)  # unknown method or missing package: raise here, in the script
    try:
        layer = find_spots_layer(viewer, adata)
    except LookupError:
        if adata is None:
            raise
        show(adata, viewer)
        layer = find_spots_layer(viewer, adata)
    inputs: dict[str, Any] = {spec.data_input.name: layer.metadata["adata"]}
    for inp in spec.inputs:
        if inp.role == DATA:
            continue
        value = params.pop(inp.name, None)
        if inp.role == REFERENCE and inp.name not in m.refuses:
            value = _resolve_reference(value, layer, inp.required or inp.name in m.needs)
        if value is None and inp.required:
            raise ValueError(f"{task} needs {inp.name}=: {inp.doc}.")
        if value is not None:
            inputs[inp.name] = value
    context = {k: v for k, v in inputs.items() if k != spec.data_input.name}

    view = result_view_for(task, viewer) if overlay else None

    def on_result(result: Any) -> None:
        ensure_spots_layer(layer)  # our AnnData back in metadata['adata'] if napari-spatialdata replaced it
        if view is not None:
            _VIEWS.append(show_task_result(viewer, layer, task, result, view=view, **context))
            del _VIEWS[:-8]  # keep the last few views alive, no more

    task_run = TaskRun(task, inputs, method, params, viewer=viewer, on_result=on_result,
                       on_finish=_ACTIVE.discard, show_errors=not block,
                       postprocess=view.worker_postprocess() if view is not None else None)
    _ACTIVE.add(task_run)
    task_run.start()
    if task_run.worker is not None:
        task_run.worker.task_run = task_run
    if not block:
        if task_run.error is not None:
            raise task_run.error
        return task_run.worker
    return wait(task_run, timeout)


def wait(task_run: TaskRun, timeout: float | None = None) -> Any:
    """Run Qt's event loop until ``task_run`` is done; its result, None if cancelled, or raise its error.

    A real event loop (not only ``processEvents``) so that napari's deferred clean-up (closed
    progress bars, the activity indicator) happens while waiting.
    """
    from qtpy.QtCore import QEventLoop, QTimer

    start = time.perf_counter()
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(5)

    def check() -> None:
        if task_run.done:
            loop.quit()
        elif timeout is not None and time.perf_counter() - start > timeout and not task_run.cancelled:
            task_run.cancel()
            task_run.timed_out = True

    poll.timeout.connect(check)
    poll.start()
    if not task_run.done:
        loop.exec()
    poll.stop()
    if getattr(task_run, "timed_out", False):
        raise TimeoutError(f"{task_run.task} did not finish within {timeout} s and was cancelled.")
    if task_run.error is not None:
        raise task_run.error
    return task_run.result


__all__ = ["run", "wait"]
