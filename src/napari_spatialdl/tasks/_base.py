"""What every task shares: the result object, copy handling and run metadata."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anndata import AnnData

from .._constants import UNS_KEY
from ..models._train import ProgressEvent, TrainingHistory, run_to_end


@dataclass
class TaskResult:
    """What a task returns.

    Attributes
    ----------
    task, method
        Which task and registry method ran.
    adata
        The AnnData the results were written to (a new object with ``copy=True``).
    keys
        Where the results are, e.g. ``{"layers": "spatialdl_imputed"}``.
    model
        The trained model (``save``/``load``), or None for non-trainable methods.
    history
        Loss curves of the training run, when there was one.
    info
        Anything else worth knowing (number of genes used, device, ...).
    """

    task: str
    method: str
    adata: AnnData
    keys: dict[str, str] = field(default_factory=dict)
    model: Any = None
    history: TrainingHistory | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        where = ", ".join(f"{k}[{v!r}]" for k, v in self.keys.items())
        return f"TaskResult(task={self.task!r}, method={self.method!r}, wrote {where})"


def target(adata: AnnData, copy: bool) -> AnnData:
    """The object a task writes to: ``adata`` itself, or a copy when ``copy=True``."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")
    return adata.copy() if copy else adata


def write_run_metadata(adata: AnnData, task: str, method: str, params: dict[str, Any],
                       history: TrainingHistory | None = None, seconds: float | None = None,
                       **extra: Any) -> None:
    """Store ``adata.uns['spatialdl'][task]``: method, parameters, versions, loss history, device."""
    import importlib.metadata

    import torch

    entry: dict[str, Any] = {
        "method": method,
        "params": {k: _h5_safe(v) for k, v in params.items() if v is not None},
        "versions": {"napari_spatialdl": _package_version(), "torch": str(torch.__version__),
                     "anndata": importlib.metadata.version("anndata")},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if history is not None:
        entry["history"] = history.to_dict()
        entry["device"] = history.device
        entry["seconds"] = history.seconds
    if seconds is not None:
        entry["seconds"] = float(seconds)
    if "of_task" in extra:  # the task, when the record is named after a result key
        entry["task"] = extra.pop("of_task")
    entry.update({k: _h5_safe(v) for k, v in extra.items()})
    uns = adata.uns.get(UNS_KEY)
    if not isinstance(uns, dict):
        uns = {}
    uns[task] = entry  # task name for the default keys, else the result's key (see _spec)
    adata.uns[UNS_KEY] = uns


def _package_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("napari-spatialdl")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _h5_safe(value: Any) -> Any:
    """Values that anndata can write to .h5ad (no None, no arbitrary objects)."""
    if isinstance(value, str):
        return str(value)  # plain str: h5py cannot write str subclasses such as TorchVersion
    if isinstance(value, bool | int | float | np.ndarray | np.generic):
        return value
    if isinstance(value, dict):
        return {str(k): _h5_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        arr = np.asarray(value)
        return arr if arr.dtype.kind in "biufU" else str(value)
    return str(value)


def consume(gen: Generator[ProgressEvent, None, TaskResult],
            progress: Callable[[ProgressEvent], None] | None = None) -> TaskResult:
    """Run a task generator to the end; ``progress`` gets every event."""
    return run_to_end(gen, progress)
