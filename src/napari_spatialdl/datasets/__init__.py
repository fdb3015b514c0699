"""Sample datasets: an offline synthetic tissue with ground truth, and real Visium data (download).

No Qt and no napari here: the npe2 sample-data commands in :mod:`._samples` return plain
layer-data tuples.
"""

from __future__ import annotations

from ._geometry import REGIONS
from ._synthetic import NAMED_CELL_TYPES, synthetic_tissue
from ._visium import visium_hne

__all__ = ["NAMED_CELL_TYPES", "REGIONS", "synthetic_tissue", "visium_hne"]
