"""One registry entry per method of each task (native models, baselines, reference backends).

A method is a generator function ``func(<task inputs>, **params)`` that yields
:class:`~napari_spatialdl.models.ProgressEvent` and returns a
:class:`~napari_spatialdl.tasks.TaskResult`, writing to the AnnData only at the end.
Widgets build their parameter panels from ``inspect.signature(method.func)``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

from .._constants import TASKS


@dataclass(frozen=True)
class Method:
    task: str
    name: str
    func: Callable
    description: str = ""
    requires: tuple[str, ...] = field(default_factory=tuple)
    native: bool = False

    def available(self) -> bool:
        """True when every optional package this method needs is importable."""
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)


REGISTRY: dict[str, dict[str, Method]] = {task: {} for task in TASKS}


def register(task: str, name: str, *, description: str = "", requires: tuple[str, ...] = (),
             native: bool = False) -> Callable[[Callable], Callable]:
    """Decorator adding a generator function to the registry of ``task``."""
    if task not in REGISTRY:
        raise ValueError(f"Unknown task {task!r}; tasks are {', '.join(TASKS)}.")

    def deco(func: Callable) -> Callable:
        REGISTRY[task][name] = Method(task, name, func, description or (func.__doc__ or "").strip().split("\n")[0],
                                      tuple(requires), native)
        return func

    return deco


def list_methods(task: str, available_only: bool = False) -> list[Method]:
    """Methods registered for ``task`` (native first)."""
    _load_builtin_methods()
    if task not in REGISTRY:
        raise ValueError(f"Unknown task {task!r}; tasks are {', '.join(TASKS)}.")
    methods = sorted(REGISTRY[task].values(), key=lambda m: (not m.native, m.name))
    return [m for m in methods if m.available()] if available_only else methods


def get_method(task: str, name: str) -> Method:
    """The registered method ``name`` of ``task``; a clear error when unknown or not installed."""
    _load_builtin_methods()
    if task not in REGISTRY:
        raise ValueError(f"Unknown task {task!r}; tasks are {', '.join(TASKS)}.")
    if name not in REGISTRY[task]:
        raise ValueError(
            f"Unknown {task} method {name!r}; available: {', '.join(sorted(REGISTRY[task]))}."
        )
    method = REGISTRY[task][name]
    if not method.available():
        missing = [m for m in method.requires if importlib.util.find_spec(m) is None]
        raise ImportError(
            f"The {task} method {name!r} needs {', '.join(missing)}: "
            "install it (pip install 'napari-spatialdl[bench]') or pick another method."
        )
    return method


_METHOD_MODULES = ("impute", "integrate", "deconvolve", "annotate", "_backends")


def _load_builtin_methods() -> None:
    """Import the modules whose ``@register`` decorators fill the registry.

    ``importlib`` rather than ``from . import impute``: the package binds the public
    task *functions* under the same names, and ``from . import`` would return those.
    """
    package = __name__.rsplit(".", 1)[0]
    for name in _METHOD_MODULES:
        try:
            importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
