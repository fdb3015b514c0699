"""The shared run controller: a task generator in a napari thread worker.

:class:`TaskRun` runs ``tasks.run_task_iter(task, *args, method=..., **params)`` in a
:func:`napari.qt.threading.create_worker` thread, with a progress bar in napari's
activity dock, events forwarded to listeners on the main thread (the live loss curve),
errors shown as napari notifications with the API's message, and cancel.

Cancel calls ``worker.quit()``: the worker stops asking the task generator for the next
event (so it stops at the next progress event, i.e. within one epoch or ``log_every``
steps), and once the thread has finished the generator is closed on the main thread
(``GeneratorExit`` inside the task, before it wrote anything). Tasks write their results
only after their last yield, so a cancelled run leaves the AnnData as it was.

:class:`RunControls` is the widget part every task panel shares: device choice, Run and
Cancel buttons, the reason why Run is disabled, and :class:`LossPlot`.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from qtpy.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ..models._train import ProgressEvent, available_devices

Callback = Callable[..., Any]

#: seconds between progress-bar updates (each one repaints the window, see ``_on_yielded``)
PBAR_INTERVAL = 0.5
#: seconds between repaints of the live loss plot
LOSS_PLOT_INTERVAL = 0.25

#: Pause napari's animated "in progress" GIF in the status bar while a task runs, when the
#: OpenGL renderer is software (llvmpipe & co: Xvfb, VNC/remote desktops, VMs). There every GIF
#: frame recomposites the whole window on the CPU and blocks napari's event loop for tens of ms
#: (measured by benchmarks/gui_responsiveness.py); the progress bar in the activity dock still
#: updates, and the indicator stays visible (still).
PAUSE_ACTIVITY_GIF_ON_SOFTWARE_GL = True
_SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "software", "basic render")
_renderer_cache: dict[int, str] = {}


def gl_renderer(viewer: Any) -> str:
    """The OpenGL renderer string of ``viewer``'s canvas ('' when unknown)."""
    key = id(viewer)
    if key not in _renderer_cache:
        try:
            from vispy.gloo import gl

            canvas = viewer.window._qt_viewer.canvas._scene_canvas
            canvas.set_current()
            _renderer_cache[key] = str(gl.glGetParameter(gl.GL_RENDERER))
        except Exception:  # no canvas/context (headless): unknown
            _renderer_cache[key] = ""
    return _renderer_cache[key]


def software_gl(viewer: Any) -> bool:
    """True when ``viewer`` draws with a software OpenGL renderer."""
    renderer = gl_renderer(viewer).lower()
    return any(name in renderer for name in _SOFTWARE_RENDERERS)


def _activity_movie(viewer: Any) -> Any:
    """napari's status-bar activity GIF (a QMovie), or None."""
    try:
        from napari._qt.dialogs.qt_activity_dialog import ActivityToggleItem

        items = viewer.window._qt_window.findChildren(ActivityToggleItem)
        return items[0]._inProgressIndicator.movie() if items else None
    except Exception:  # napari's internals changed: leave the animation alone
        return None


class TaskFailed(Exception):
    """A task raised a ``RuntimeError`` (e.g. from torch) in the worker thread.

    Re-raised under another type because superqt's worker swallows ``RuntimeError``
    (it takes it for a deleted Qt object) without emitting ``errored``.
    """


def _drive(gen, box: dict, postprocess: Callable[[Any], Any] | None = None):
    """Run a task generator inside the worker; keep its result in ``box``.

    ``yield from`` forwards ``close()`` to the task generator, so closing this driver
    raises ``GeneratorExit`` inside the task where it last yielded. ``postprocess(result)``
    runs here too (worker thread) for work the overlay needs that should not block the GUI
    (e.g. clustering); its failure is kept in ``box['post_error']``, the result stands.
    """
    try:
        result = yield from gen
    except RuntimeError as exc:
        raise TaskFailed(f"{type(exc).__name__}: {exc}") from exc
    box["result"] = result
    if postprocess is not None:
        try:
            postprocess(result)
        except Exception as exc:
            box["post_error"] = exc
    return result


#: nice increment of the worker thread (Linux): the GUI thread wins the CPU when both want it
WORKER_NICE = 5


def _set_thread_nice(increment: int) -> int | None:
    """Set this OS thread's nice value to the process's plus ``increment`` (Linux threads have
    their own); returns the previous value, or None when unchanged. Absolute, not cumulative:
    QThreadPool reuses its threads."""
    import os
    import threading

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
                import os
                import threading

                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), before)
            except OSError:
                pass


def error_message(task: str, exc: BaseException) -> str:
    """What the user reads when a run fails: the API's own message, prefixed by the task."""
    from ..tasks._validate import InputError

    if isinstance(exc, InputError | TaskFailed):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return f"{task.capitalize()} failed: {text}"


class TaskRun:
    """One run of a task's generator in a napari thread worker.

    Parameters
    ----------
    task
        ``'impute'``, ``'integrate'``, ``'deconvolve'`` or ``'annotate'``.
    args
        The task inputs (AnnData, keys, reference, ...), passed positionally.
    method
        Registry method name.
    params
        Keyword parameters of the method.
    postprocess
        Called in the worker thread with the ``TaskResult`` once the task finished (no Qt,
        no layers: e.g. clustering for the overlay).
    on_event, on_result, on_error, on_cancel, on_finish
        Called on the main thread with a :class:`ProgressEvent`, the ``TaskResult``, the
        exception, nothing, and the run itself (always last), respectively.
    show_errors
        Show errors as napari notifications (``show_error``).
    """

    def __init__(self, task: str, args: Sequence[Any], method: str = "spatialdl",
                 params: dict[str, Any] | None = None, *,
                 on_event: Callback | None = None, on_result: Callback | None = None,
                 on_error: Callback | None = None, on_cancel: Callback | None = None,
                 on_finish: Callback | None = None, show_errors: bool = True,
                 postprocess: Callable[[Any], Any] | None = None):
        self.task = task
        self.args = tuple(args)
        self.method = method
        self.params = dict(params or {})
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

    # ------------------------------------------------------------------ control
    def start(self) -> TaskRun:
        """Create the task generator and start the worker (errors in the set-up are shown)."""
        from napari.qt.threading import create_worker

        from ..tasks.api import run_task_iter

        try:
            task_gen = run_task_iter(self.task, *self.args, method=self.method, **self.params)
        except Exception as exc:  # unknown method, missing package, bad keyword
            self._fail(exc)
            self._finish()
            return self
        self._gen = _drive(task_gen, self._box, self.postprocess)
        self._make_pbar()
        self._pause_activity_gif()
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

        try:
            self.pbar = progress(total=0, desc=f"{self.task} ({self.method}): starting")
        except Exception:  # no progress display available: the run works without it
            self.pbar = None

    def _pause_activity_gif(self) -> None:
        self._paused_movie = None
        if not PAUSE_ACTIVITY_GIF_ON_SOFTWARE_GL:
            return
        try:
            from napari import current_viewer

            viewer = current_viewer()
        except Exception:
            viewer = None
        if viewer is None or not software_gl(viewer):
            return
        movie = _activity_movie(viewer)
        if movie is not None:
            movie.setPaused(True)
            self._paused_movie = movie

    def _resume_activity_gif(self) -> None:
        from qtpy.QtGui import QMovie

        movie = getattr(self, "_paused_movie", None)
        self._paused_movie = None
        if movie is not None and movie.state() == QMovie.MovieState.Paused:
            try:
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
            try:
                self._gen.close()
            except Exception:  # a task that misbehaves on close must not break the GUI
                pass
            self._gen = None
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
        self._resume_activity_gif()
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        if self.on_finish is not None:
            self.on_finish(self)


# ---------------------------------------------------------------------- loss plot
class LossPlot(QWidget):
    """A small live plot of the training (and validation) loss per epoch, drawn with QPainter."""

    TRAIN = QColor(31, 119, 180)
    VAL = QColor(255, 127, 14)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        # repaint at most every LOSS_PLOT_INTERVAL s: each repaint recomposites the window
        self._repaint = QTimer(self)
        self._repaint.setSingleShot(True)
        self._repaint.setInterval(int(LOSS_PLOT_INTERVAL * 1000))
        self._repaint.timeout.connect(self.update)
        self.clear()

    def clear(self, title: str = "") -> None:
        self.title = title
        self.stage = ""
        self.train: list[tuple[float, float]] = []
        self.val: list[tuple[float, float]] = []
        self.n_epochs = 0
        self.status = ""
        self._last_step = -1
        self.update()

    def add_event(self, event: ProgressEvent) -> None:
        """Record one progress event (a new point at the end of every epoch)."""
        if event.stage != self.stage:
            self.stage = event.stage
            self.train, self.val = [], []
            self._last_step = -1
        if event.step < self._last_step:
            return  # an older event delivered late
        self._last_step = event.step
        if self.train and 1 <= event.epoch < self.train[-1][0]:
            self.train, self.val = [], []  # a new training run within the same stage
        self.n_epochs = int(event.n_epochs or 0)
        last = self.train[-1][0] if self.train else 0
        if event.train_loss is not None and math.isfinite(event.train_loss) and event.epoch > last:
            self.train.append((float(event.epoch), float(event.train_loss)))
            if event.val_loss is not None and math.isfinite(event.val_loss):
                self.val.append((float(event.epoch), float(event.val_loss)))
        parts = [f"epoch {event.epoch}/{event.n_epochs}"]
        if event.train_loss is not None:
            parts.append(f"train {event.train_loss:.4g}")
        if event.val_loss is not None:
            parts.append(f"validation {event.val_loss:.4g}")
        if event.message:
            parts.append(event.message)
        self.status = ", ".join(parts)
        if not self._repaint.isActive():
            self._repaint.start()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect())
        painter.fillRect(rect, self.palette().base())
        text_color = self.palette().text().color()
        font = QFont(painter.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        fm = painter.fontMetrics()
        line = fm.height()
        title = "Loss" + (f" ({self.stage})" if self.stage not in ("", "train") else "")
        if self.title:
            title = f"{self.title}: {title.lower()}"
        painter.setPen(text_color)
        painter.drawText(QRectF(4, 2, rect.width() - 8, line), Qt.AlignmentFlag.AlignLeft, title)
        # legend
        lx = rect.width() - 150
        for i, (name, color) in enumerate((("train", self.TRAIN), ("validation", self.VAL))):
            x0 = lx + i * 70
            painter.setPen(QPen(color, 2))
            painter.drawLine(QPointF(x0, 2 + line / 2), QPointF(x0 + 14, 2 + line / 2))
            painter.setPen(text_color)
            painter.drawText(QPointF(x0 + 17, 2 + fm.ascent()), name)
        left, right, top = 48.0, rect.width() - 8, line + 6
        bottom = rect.height() - line - 8
        plot = QRectF(left, top, max(10.0, right - left), max(10.0, bottom - top))
        painter.setPen(QPen(text_color.darker(150) if text_color.lightness() > 128 else text_color.lighter(150), 1))
        painter.drawRect(plot)
        painter.setPen(text_color)
        painter.drawText(QRectF(4, rect.height() - line - 2, rect.width() - 8, line),
                         Qt.AlignmentFlag.AlignLeft, self.status or "not run yet")
        points = self.train + self.val
        if not points:
            painter.end()
            return
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        x_max = max(max(xs), 1.0)
        # ignore the very first epochs when scaling (they dwarf the rest of the curve)
        tail = [p[1] for p in points if p[0] > min(3.0, x_max / 10)] or ys
        y_min, y_max = min(ys), max(tail)
        if y_max - y_min < 1e-12:
            y_min, y_max = y_min - 0.5, y_max + 0.5

        def to_px(x: float, y: float) -> QPointF:
            fx = (x - 1) / max(x_max - 1, 1.0)
            fy = (min(y, y_max) - y_min) / (y_max - y_min)
            return QPointF(plot.left() + fx * plot.width(), plot.bottom() - fy * plot.height())

        for series, color in ((self.train, self.TRAIN), (self.val, self.VAL)):
            if not series:
                continue
            path = QPainterPath(to_px(*series[0]))
            for p in series[1:]:
                path.lineTo(to_px(*p))
            painter.setPen(QPen(color, 1.8))
            painter.drawPath(path)
        painter.setPen(text_color)
        painter.drawText(QRectF(0, plot.top() - 2, left - 4, line), Qt.AlignmentFlag.AlignRight,
                         f"{y_max:.3g}")
        painter.drawText(QRectF(0, plot.bottom() - line + 2, left - 4, line),
                         Qt.AlignmentFlag.AlignRight, f"{y_min:.3g}")
        painter.end()


# ------------------------------------------------------------------ parameter panel
_NUMPY_PARAM = re.compile(r"^(\w+)\s*(?::.*)?$")


def parse_param_docs(func: Callable) -> dict[str, str]:
    """Parameter descriptions from a numpy docstring's ``Parameters`` section."""
    doc = inspect.getdoc(func) or ""
    lines = doc.splitlines()
    docs: dict[str, list[str]] = {}
    in_params, current = False, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if nxt and set(nxt) == {"-"} and stripped:
            in_params = stripped.lower() in ("parameters", "other parameters")
            current = None
            continue
        if not in_params or (stripped and set(stripped) == {"-"}):
            continue
        if line and not line[0].isspace():
            names = [n.strip() for n in stripped.split(":")[0].split(",")]
            current = names
            for n in names:
                docs.setdefault(n, [])
        elif current and stripped:
            for n in current:
                docs[n].append(stripped)
    return {k: " ".join(v) for k, v in docs.items()}


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (args and type(None) in args and origin is not Literal):
        rest = [a for a in args if a is not type(None)]
        if type(None) in args and len(rest) == 1:
            return rest[0], True
    return annotation, False


class ParamField:
    """One generated parameter editor (a magicgui widget) with parsing of its value."""

    def __init__(self, name: str, widget: Any, parse: Callable[[Any], Any], default: Any):
        self.name = name
        self.widget = widget
        self._parse = parse
        self.default = default

    def value(self) -> Any:
        """The parsed value; raises ValueError with a readable message when invalid."""
        return self._parse(self.widget.value)

    def set_value(self, value: Any) -> None:
        if hasattr(self.widget, "choices") and not isinstance(value, bool):
            self.widget.value = value
        elif isinstance(self.widget.value, str) and not isinstance(value, str):
            self.widget.value = "" if value is None else repr(value)
        else:
            self.widget.value = value


def _float_text(value: Any) -> str:
    return "" if value is None else f"{value:g}"


def make_param_field(name: str, annotation: Any, default: Any, tooltip: str = "",
                     choices: Sequence[Any] | None = None) -> ParamField | None:
    """A magicgui widget for one parameter, or None when its type has no sensible editor.

    ``choices`` turns the parameter into a drop-down (e.g. AnnData layers, obs columns);
    ``None`` among them is shown as "(none)".
    """
    from magicgui import widgets as mw

    label = name.replace("_", " ")
    base, optional = _split_optional(annotation)
    optional = optional or default is None
    if choices is not None:
        opts = [(("(none)" if c is None else str(c)), c) for c in choices]
        combo = mw.ComboBox(name=name, label=label, choices=opts, tooltip=tooltip or None)
        if default in [c for _, c in opts]:
            combo.value = default
        return ParamField(name, combo, lambda v: v, default)
    if typing.get_origin(base) is Literal:
        values = list(typing.get_args(base))
        if optional:
            values = [None, *values]
        opts = [(("(none)" if c is None else str(c)), c) for c in values]
        combo = mw.ComboBox(name=name, label=label, choices=opts, value=default, tooltip=tooltip or None)
        return ParamField(name, combo, lambda v: v, default)
    if base is bool:
        box = mw.CheckBox(name=name, label=label, value=bool(default), tooltip=tooltip or None)
        return ParamField(name, box, bool, default)
    if base is int and not optional:
        lo = min(0, int(default)) if isinstance(default, int) else 0
        spin = mw.SpinBox(name=name, label=label, value=default, min=lo, max=10**7,
                          tooltip=tooltip or None)
        return ParamField(name, spin, int, default)
    if base in (int, float, str):
        text = "" if default is None else (_float_text(default) if base is float else str(default))
        edit = mw.LineEdit(name=name, label=label, value=text, tooltip=tooltip or None)
        if optional:
            edit.native.setPlaceholderText("(none)")

        def parse(raw: str, base=base, optional=optional) -> Any:
            raw = str(raw).strip()
            if raw == "" or raw.lower() == "none":
                if optional:
                    return None
                raise ValueError(f"parameter '{name}' needs a value")
            if base is str:
                return raw
            try:
                return base(float(raw)) if base is int and float(raw).is_integer() else base(raw)
            except ValueError:
                kind = "a whole number" if base is int else "a number"
                raise ValueError(f"parameter '{name}' must be {kind}, got {raw!r}") from None

        return ParamField(name, edit, parse, default)
    return None


class ParamPanel:
    """Editors for a method's parameters, generated from ``inspect.signature`` of the function.

    Parameters without a default (the task inputs) and those in ``skip`` (handled by the
    task widget itself) are left out; ``choices`` maps parameter names to drop-down options.
    """

    def __init__(self, func: Callable, *, skip: Sequence[str] = (),
                 choices: dict[str, Sequence[Any]] | None = None):
        from magicgui.widgets import Container

        self.func = func
        self.fields: dict[str, ParamField] = {}
        self.container = Container(labels=True)
        self.container.native.layout().setContentsMargins(0, 0, 0, 0)
        try:
            hints = typing.get_type_hints(func)
        except Exception:
            hints = {}
        docs = parse_param_docs(func)
        for name, par in inspect.signature(func).parameters.items():
            if par.default is inspect.Parameter.empty or name in skip:
                continue
            if par.kind in (par.VAR_KEYWORD, par.VAR_POSITIONAL):
                continue
            annotation = hints.get(name, par.annotation)
            if annotation is inspect.Parameter.empty:
                annotation = type(par.default) if par.default is not None else str
            field = make_param_field(name, annotation, par.default, docs.get(name, ""),
                                     (choices or {}).get(name))
            if field is not None:
                self.fields[name] = field
                self.container.append(field.widget)

    @property
    def native(self) -> QWidget:
        return self.container.native

    def values(self) -> dict[str, Any]:
        """All parameter values; ValueError naming the first invalid one."""
        return {name: f.value() for name, f in self.fields.items()}

    def set(self, **values: Any) -> None:
        """Set parameters by name (e.g. from a test or a script)."""
        for name, value in values.items():
            if name not in self.fields:
                raise KeyError(f"No parameter {name!r}; parameters: {', '.join(self.fields)}.")
            self.fields[name].set_value(value)

    def changed_connect(self, callback: Callable[[], None]) -> None:
        for f in self.fields.values():
            f.widget.changed.connect(lambda *_: callback())


# ------------------------------------------------------------------- run controls
class RunControls(QWidget):
    """Device choice, Run/Cancel, why Run is disabled, and the live loss plot."""

    run_clicked = Signal()
    cancel_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.device = QComboBox()
        self.device.addItems(["auto", *available_devices()])
        self.device.setToolTip("Where the model trains: 'auto' picks a GPU when there is one.")
        form.addRow("device", self.device)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.reason = QLabel()
        self.reason.setWordWrap(True)
        self.reason.setStyleSheet("color: #d08020;")
        layout.addWidget(self.reason)
        self.loss = LossPlot()
        layout.addWidget(self.loss)
        self.run_button.clicked.connect(self.run_clicked)
        self.cancel_button.clicked.connect(self.cancel_clicked)
        self._running = False
        self._why = ""

    def set_reason(self, why: str) -> None:
        """Enable Run when ``why`` is empty; otherwise disable it and show ``why``."""
        self._why = why
        self._refresh()

    def set_running(self, running: bool) -> None:
        self._running = running
        self._refresh()

    def _refresh(self) -> None:
        self.run_button.setEnabled(not self._running and not self._why)
        self.cancel_button.setEnabled(self._running)
        self.reason.setText("running…" if self._running else self._why)
        self.reason.setVisible(bool(self._running or self._why))

    @property
    def device_value(self) -> str:
        return self.device.currentText()
