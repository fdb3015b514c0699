"""The run controller: a task's generator in a napari thread worker.

:class:`TaskRun` runs ``tasks.run_task_iter(task, method=..., **inputs, **params)`` — the call
users make — in a :func:`napari.qt.threading.create_worker` thread, with a progress bar in
napari's activity dock, events forwarded to listeners on the main thread (the live loss
curve), errors handed to ``on_error`` (and napari's notifications) with the API's message,
and cancel.

Cancel calls ``worker.quit()``: the worker stops asking the task generator for the next
event (so it stops at the next progress event, i.e. within one epoch or ``log_every``
steps), and once the thread has finished the generator is closed on the main thread
(``GeneratorExit`` inside the task, before it wrote anything). Tasks write their results
only after their last yield, so a cancelled run leaves the AnnData as it was.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..models import ProgressEvent
from . import _compat

Callback = Callable[..., Any]

#: seconds between progress-bar updates (each one repaints the window, see ``_on_yielded``)
PBAR_INTERVAL = 0.5

#: Pause napari's animated "in progress" indicator in the status bar while a task runs, when the
#: OpenGL renderer is software (llvmpipe & co: Xvfb, VNC/remote desktops, VMs). There every GIF
#: frame recomposites the whole window on the CPU and blocks napari's event loop for tens of ms
#: (measured by benchmarks/gui_responsiveness.py); the progress bar in the activity dock still
#: updates, and the indicator stays visible (still).
PAUSE_ACTIVITY_GIF_ON_SOFTWARE_GL = True
_SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "software", "basic render")
_renderer_cache: dict[int, str] = {}

#: nice increment of the worker thread (Linux): the GUI thread wins the CPU when both want it
WORKER_NICE = 5


def gl_renderer(viewer: Any) -> str:
    """The OpenGL renderer string of ``viewer``'s canvas ('' when unknown)."""
    key = id(_compat.real(viewer))
    if key not in _renderer_cache:
        _renderer_cache[key] = _compat.gl_renderer_of(_compat.main_window(viewer))
    return _renderer_cache[key]


def software_gl(viewer: Any) -> bool:
    """True when ``viewer`` draws with a software OpenGL renderer."""
    renderer = gl_renderer(viewer).lower()
    return any(name in renderer for name in _SOFTWARE_RENDERERS)


class TaskFailed(Exception):
    """A task raised a ``RuntimeError`` (e.g. from torch) in the worker thread.

    Re-raised under another type because superqt's worker swallows ``RuntimeError``
    (it takes it for a deleted Qt object) without emitting ``errored``.
    """


def _drive(gen, box: dict, postprocess: Callable[[Any], Any] | None = None):
    """Run a task generator inside the worker; keep its result in ``box``.

    ``yield from`` forwards ``close()`` to the task generator, so closing this driver raises
    ``GeneratorExit`` inside the task where it last yielded. ``postprocess(result)`` runs here
    too (worker thread) for display work that should not block the GUI (e.g. clustering); its
    failure is kept in ``box['post_error']``, the result stands.
    """
    try:
        result = yield from gen
    except RuntimeError as exc:
        raise TaskFailed(f"{type(exc).__name__}: {exc}") from exc
    box["result"] = result
    if postprocess is not None:
        try:
            postprocess(result)
        except Exception as exc:  # the display's preparation failed: the result stands, say so
            box["post_error"] = exc
    return result


def _set_thread_nice(increment: int) -> int | None:
    """Set this OS thread's nice value to the process's plus ``increment`` (Linux threads have
    their own); returns the previous value, or None when unchanged. Absolute, not cumulative:
    QThreadPool reuses its threads."""
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return None
    try:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        wanted = os.getpriority(os.PRIO_PROCESS, os.getpid()) + max(0, increment)
        if wanted != before:
            os.setpriority(os.PRIO_PROCESS, tid, wanted)
            return before
    except (OSError, AttributeError):  # not permitted / unsupported: normal priority
        pass
    return None


def spatialdl_task(driver):
    """The worker's generator function: runs the driver (named for napari's status bar)."""
    before = _set_thread_nice(WORKER_NICE)
    try:
        return (yield from driver)
    finally:
        if before is not None:  # give the pooled thread back as it was (if permitted)
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), before)
            except OSError:
                pass


def error_message(task: str, exc: BaseException) -> str:
    """What the user reads when a run fails: the API's own message, prefixed by the task."""
    from ..tasks import InputError

    text = str(exc) if isinstance(exc, InputError | TaskFailed) else f"{type(exc).__name__}: {exc}"
    return f"{task.capitalize()} failed: {text}"


class TaskRun:
    """One run of a task in a napari thread worker: ``run_task_iter(task, method=, **inputs, **params)``.

    Parameters
    ----------
    task
        ``'impute'``, ``'integrate'``, ``'deconvolve'`` or ``'annotate'``.
    inputs
        The task's inputs by argument name (``{"spatial": adata, "reference": ref, ...}``).
    method
        Registry method name.
    params
        Keyword parameters: the task's options, the method's parameters, ``device``.
    viewer
        The viewer (for the activity indicator); default napari's current one.
    postprocess
        Called in the worker thread with the ``TaskResult`` once the task finished (no Qt,
        no layers: e.g. clustering for the overlay).
    on_event, on_result, on_error, on_cancel, on_finish
        Called on the main thread with a :class:`ProgressEvent`, the ``TaskResult``, the
        exception, nothing, and the run itself (always last), respectively.
    show_errors
        Also show errors as napari notifications (``show_error``).
    """

    def __init__(self, task: str, inputs: Mapping[str, Any], method: str = "spatialdl",
                 params: dict[str, Any] | None = None, *, viewer: Any = None,
                 on_event: Callback | None = None, on_result: Callback | None = None,
                 on_error: Callback | None = None, on_cancel: Callback | None = None,
                 on_finish: Callback | None = None, show_errors: bool = True,
                 postprocess: Callable[[Any], Any] | None = None):
        self.task = task
        self.inputs = dict(inputs)
        self.method = method
        self.params = dict(params or {})
        self.viewer = viewer
        self.on_event, self.on_result, self.on_error = on_event, on_result, on_error
        self.on_cancel, self.on_finish = on_cancel, on_finish
        self.show_errors = show_errors
        self.postprocess = postprocess
        self.worker = None
        self.pbar = None
        self.result = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = False
        self.events: list[ProgressEvent] = []
        self._box: dict = {}
        self._gen = None
        self._stage: str | None = None
        self._pbar_time = 0.0
        self._paused: list[Any] = []

    # ------------------------------------------------------------------ control
    def start(self) -> TaskRun:
        """Create the task generator and start the worker (errors in the set-up are reported)."""
        from napari.qt.threading import create_worker

        from ..tasks import run_task_iter

        try:
            task_gen = run_task_iter(self.task, method=self.method, **self.inputs, **self.params)
        except Exception as exc:  # unknown method, missing package, bad keyword: the API's message
            self._fail(exc)
            self._finish()
            return self
        self._gen = _drive(task_gen, self._box, self.postprocess)
        self._make_pbar()
        self._pause_activity_indicator()
        worker = create_worker(spatialdl_task, self._gen, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_yielded)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return self

    def cancel(self) -> None:
        """Stop at the next progress event; nothing is written to the AnnData."""
        if self.worker is not None and not self.done:
            self.cancelled = True
            self.worker.quit()

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.done

    # ----------------------------------------------------------- main thread
    def _make_pbar(self) -> None:
        from napari.utils import progress

        self.pbar = progress(total=0, desc=f"{self.task} ({self.method}): starting")

    def _pause_activity_indicator(self) -> None:
        if not PAUSE_ACTIVITY_GIF_ON_SOFTWARE_GL:
            return
        viewer = self.viewer
        if viewer is None:
            from napari import current_viewer

            viewer = current_viewer()
        if viewer is None or not software_gl(viewer):
            return
        for movie in _compat.activity_indicators(_compat.main_window(viewer)):
            movie.setPaused(True)
            self._paused.append(movie)

    def _resume_activity_indicator(self) -> None:
        from qtpy.QtGui import QMovie

        paused, self._paused = self._paused, []
        for movie in paused:
            try:
                if movie.state() == QMovie.MovieState.Paused:
                    movie.setPaused(False)  # napari stops and hides it once no progress is left
            except RuntimeError:  # the window is gone
                pass

    def _on_yielded(self, event: Any) -> None:
        if not isinstance(event, ProgressEvent):
            return
        self.events.append(event)
        # listeners first: napari's progress bar may process events (and later yields) re-entrantly
        if self.on_event is not None:
            self.on_event(event)
        pbar = self.pbar  # napari's progress may process events (re-entrancy): keep a local
        if pbar is None or self.done:
            return
        # napari's progress bar calls QApplication.processEvents() on every change, which
        # repaints the window synchronously: change the description once per stage and the
        # value at most every PBAR_INTERVAL seconds (plus the last epoch)
        now = time.perf_counter()
        if event.stage != self._stage:
            self._stage = event.stage
            stage = "" if event.stage in ("", "train") else f" [{event.stage}]"
            pbar.reset(total=max(1, int(event.n_epochs)))
            pbar.set_description(f"{self.task} ({self.method}){stage}")
            self._pbar_time = now
        if int(event.epoch) < int(pbar.n):  # a new training run within the same stage
            pbar.reset(total=max(1, int(event.n_epochs)))
        done = max(0, int(event.epoch) - int(pbar.n))
        last = event.n_epochs and event.epoch >= event.n_epochs
        if done and (last or now - self._pbar_time >= PBAR_INTERVAL):
            if event.n_epochs and pbar.total != event.n_epochs:
                pbar.total = int(event.n_epochs)
            pbar.update(done)
            self._pbar_time = now

    def _on_errored(self, exc: BaseException) -> None:
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if self.show_errors:
            from napari.utils.notifications import show_error

            show_error(error_message(self.task, exc))
        if self.on_error is not None:
            self.on_error(exc)

    def _on_finished(self) -> None:
        # the worker thread is done with the generator: close it here (GeneratorExit in
        # the task if it was cancelled mid-run; a no-op when it ran to the end)
        if self._gen is not None:
            gen, self._gen = self._gen, None
            gen.close()
        if self.error is None and "result" in self._box:
            # finished (even if Cancel came after the last event: results are written)
            self.cancelled = False
            self.result = self._box["result"]
            if "post_error" in self._box and self.show_errors:
                from napari.utils.notifications import show_warning

                show_warning(f"{self.task.capitalize()} finished, but preparing its display failed: "
                             f"{self._box['post_error']}")
            if self.on_result is not None:
                try:
                    self.on_result(self.result)
                except Exception as exc:  # showing the result failed: say so, keep the GUI alive
                    self._fail(exc)
        elif self.error is None:
            self.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel()
        self._finish()

    def _finish(self) -> None:
        self.done = True
        self._resume_activity_indicator()
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        if self.on_finish is not None:
            self.on_finish(self)


__all__ = ["TaskFailed", "TaskRun", "error_message", "gl_renderer", "software_gl"]
