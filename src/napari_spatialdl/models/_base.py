"""Save/load shared by every trained model wrapper.

A model wrapper holds a ``torch.nn.Module`` (``self.module``), the keyword
arguments it was built with (``self.init_kwargs``) and whatever else prediction
needs (gene names, category names, ...) in ``self.extra``: plain Python/numpy
values only. ``save`` writes all three; ``load`` rebuilds the same object, so a
loaded model reproduces its predictions exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch


class SavableModel:
    """Base class: subclasses set ``module``, ``init_kwargs`` and ``extra`` and implement ``build``."""

    #: bumped when the saved layout of a subclass changes
    format_version: ClassVar[int] = 1

    module: torch.nn.Module
    init_kwargs: dict[str, Any]
    extra: dict[str, Any]

    @classmethod
    def build(cls, init_kwargs: dict[str, Any], extra: dict[str, Any]) -> SavableModel:
        """Recreate an untrained wrapper from saved ``init_kwargs`` and ``extra``."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write the model (weights, settings, gene/category names) to ``path`` (a .pt file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "format_version": self.format_version,
                "init_kwargs": self.init_kwargs,
                "extra": self.extra,
                "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> SavableModel:
        """Load a model written by :meth:`save`."""
        payload = torch.load(Path(path), map_location="cpu", weights_only=False)
        expected = f"{cls.__module__}.{cls.__qualname__}"
        if payload.get("class") != expected:
            raise ValueError(f"{path} holds a {payload.get('class')}, not a {expected}.")
        model = cls.build(payload["init_kwargs"], payload["extra"])
        model.module.load_state_dict(payload["state_dict"])
        model.module.to(device).eval()
        return model
