"""Pure torch models: likelihoods, the shared training loop, one module per task.

Nothing here imports Qt, napari or AnnData.
"""

from ._likelihoods import log_nb, log_poisson, log_zinb, zinb_mean
from ._train import (
    ProgressEvent,
    TrainingConfig,
    TrainingHistory,
    available_devices,
    resolve_device,
    run_to_end,
    train,
)

__all__ = [
    "ProgressEvent",
    "TrainingConfig",
    "TrainingHistory",
    "available_devices",
    "log_nb",
    "log_poisson",
    "log_zinb",
    "resolve_device",
    "run_to_end",
    "train",
    "zinb_mean",
]
