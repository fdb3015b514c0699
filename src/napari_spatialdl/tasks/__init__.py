"""The scripting API: one function per task on AnnData, and their generator forms.

``impute``/``integrate``/``deconvolve``/``annotate`` run to the end and return a
:class:`TaskResult`; the ``*_iter`` forms are the generators the GUI runs in a
worker thread (they yield :class:`~napari_spatialdl.models.ProgressEvent`).
Results are written only when a run finishes.
"""

from ._base import TaskResult
from ._registry import Method, _load_builtin_methods, get_method, list_methods, register
from ._validate import InputError

# Import the method modules first (that binds e.g. `tasks.impute` to the module), then
# bind the public names to the API functions, which is what users call.
_load_builtin_methods()

from .api import (  # noqa: E402
    annotate,
    annotate_iter,
    deconvolve,
    deconvolve_iter,
    impute,
    impute_iter,
    integrate,
    integrate_iter,
    map_query,
    map_query_iter,
    run_task_iter,
)

__all__ = [
    "InputError",
    "Method",
    "TaskResult",
    "annotate",
    "annotate_iter",
    "deconvolve",
    "deconvolve_iter",
    "get_method",
    "impute",
    "impute_iter",
    "integrate",
    "integrate_iter",
    "list_methods",
    "map_query",
    "map_query_iter",
    "register",
    "run_task_iter",
]
