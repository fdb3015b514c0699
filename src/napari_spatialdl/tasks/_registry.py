"""One registry entry per method of each task (native models, baselines, reference backends).

A method is a generator function ``func(prepared, **params)``: it receives the task's prepared
inputs (:mod:`._spec`), yields :class:`~napari_spatialdl.models.ProgressEvent` and returns a
:class:`~napari_spatialdl.tasks._spec.MethodOutput`. It never writes to an AnnData: the task's
``write`` does, at the end. The API, ``sdl.run``, the CLI and the panels read its parameters
from its signature (:func:`~napari_spatialdl.tasks._spec.method_params`).

Adding a method is one module with one ``@register`` line, listed in ``_METHOD_MODULES``.
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
    description: str = ""  # technical, one line (tooltips, `methods` listing)
    requires: tuple[str, ...] = field(default_factory=tuple)
    native: bool = False
    label: str = ""  # plain words for biologists (the panel's method drop-down)
    needs: tuple[str, ...] = ()  # optional task inputs this method requires (e.g. "reference")
    refuses: tuple[str, ...] = ()  # optional task inputs this method cannot use
    counts: bool = True  # needs raw integer counts (False: accepts normalised values too)
    kind: str = ""  # "native", "baseline" or "reference"

    @property
    def title(self) -> str:
        return self.label or self.description or self.name

    def available(self) -> bool:
        """True when every optional package this method needs is importable."""
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)


REGISTRY: dict[str, dict[str, Method]] = {task: {} for task in TASKS}


def register(task: str, name: str, *, description: str = "", requires: tuple[str, ...] = (),
             native: bool = False, label: str = "", needs: tuple[str, ...] = (),
             refuses: tuple[str, ...] = (), counts: bool = True,
             kind: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator adding a method (a generator function on prepared inputs) to ``task``."""
    if task not in REGISTRY:
        raise ValueError(f"Unknown task {task!r}; tasks are {', '.join(TASKS)}.")

    def deco(func: Callable) -> Callable:
        first_line = (func.__doc__ or "").strip().split("\n")[0]
        REGISTRY[task][name] = Method(
            task, name, func, description or first_line, tuple(requires), native,
            label=label, needs=tuple(needs), refuses=tuple(refuses), counts=counts,
            kind=kind or ("native" if native else "reference" if requires else "baseline"))
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


_METHOD_MODULES = (
    "imputation", "integration", "deconvolution", "annotation", "annotation_transformer",
    "backends.scvi_tools", "backends.tangram", "backends.celltypist", "backends.harmony",
    "backends.magic",
    "gene_prediction", "backends.tangram_genes", "backends.gimvi",
)


def _load_builtin_methods() -> None:
    """Import the modules whose ``@register`` decorators fill the registry.

    A method module that is absent is skipped (a third-party package may drop one).
    """
    package = __name__.rsplit(".", 1)[0]
    for name in _METHOD_MODULES:
        try:
            importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
