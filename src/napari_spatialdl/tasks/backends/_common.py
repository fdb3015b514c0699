"""What several reference backends share: tool versions and deconvolution outputs from a table.

Nothing here imports an optional package at module import time.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pandas as pd

from ...preprocessing import library_sizes
from ..deconvolution import DeconvolutionInputs, DeconvolutionOutput


def versions(*modules: str) -> dict[str, str]:
    """``{module: __version__}`` of the tools a run used (for the run metadata)."""
    out = {}
    for name in modules:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception:  # noqa: BLE001 (the record says "?" rather than failing the run)
            out[name] = "?"
    return out


def deconvolution_output(data: DeconvolutionInputs, table: pd.DataFrame, *, model: Any = None,
                         history: Any = None, info: dict[str, Any] | None = None
                         ) -> DeconvolutionOutput:
    """A tool's spots x cell types table as the task's output (proportions and abundance).

    Columns are put in the order of ``data.cell_types`` (a type the tool did not return gets 0),
    negative values are clipped and each row is normalised to sum to 1 (a row of zeros becomes
    uniform). The abundance is in the same reference-cell units as the native model's:
    ``n_cells[s] = library[s] / sum_t p[s, t] * mean_library[t]``, abundance ``p * n_cells``.
    """
    table = table.copy()
    table.columns = table.columns.astype(str)
    P = table.reindex(columns=data.cell_types).fillna(0.0).to_numpy(dtype=np.float64).clip(min=0)
    sums = P.sum(axis=1, keepdims=True)
    P = np.where(sums > 0, P / np.where(sums > 0, sums, 1.0), 1.0 / len(data.cell_types))
    spot_lib = library_sizes(data.spot_counts)
    ref_lib = library_sizes(data.ref_counts)
    mean_lib = np.array([ref_lib[data.ref_labels == t].mean() for t in data.cell_types])
    per_cell = P @ mean_lib
    n_cells = np.where(per_cell > 0, spot_lib / np.where(per_cell > 0, per_cell, 1.0), 0.0)
    return DeconvolutionOutput(proportions=P, abundance=P * n_cells[:, None], model=model,
                               history=history, info=dict(info or {}))
