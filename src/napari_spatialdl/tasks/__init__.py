"""The scripting API: one function per task on AnnData, and their generator forms.

``impute``/``integrate``/``deconvolve``/``annotate`` run to the end and return a
:class:`TaskResult`; the ``*_iter`` forms are the generators the GUI runs in a
worker thread (they yield :class:`~napari_spatialdl.models.ProgressEvent`).
Results are written only when a run finishes. Each task is declared once in its spec
(:func:`get_spec`): inputs by role, the method's parameters from its signature, the outputs.
"""

from ._base import TaskResult
from ._registry import Method, get_method, list_methods, register
from ._spec import (
    SPECS,
    MethodOutput,
    Param,
    Prepared,
    TaskSpec,
    get_spec,
    method_params,
    run_records,
)
from ._validate import InputError
from .api import (
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
    method_parameters,
    run_task,
    run_task_iter,
)

__all__ = [
    "SPECS",
    "InputError",
    "Method",
    "MethodOutput",
    "Param",
    "Prepared",
    "TaskResult",
    "TaskSpec",
    "annotate",
    "annotate_iter",
    "deconvolve",
    "deconvolve_iter",
    "get_method",
    "get_spec",
    "impute",
    "impute_iter",
    "integrate",
    "integrate_iter",
    "list_methods",
    "map_query",
    "map_query_iter",
    "method_params",
    "method_parameters",
    "register",
    "run_records",
    "run_task",
    "run_task_iter",
]
