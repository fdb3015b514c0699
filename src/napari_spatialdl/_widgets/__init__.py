"""napari side: showing AnnData on the tissue image, the widgets, and scripted runs.

Imports napari/Qt lazily so that ``import napari_spatialdl`` stays display-free.
"""

from __future__ import annotations


def show(*args, **kwargs):
    """Open (or add to) a napari viewer with the tissue image and the spots; see ``_viewer.show``."""
    from ._viewer import show as _show

    return _show(*args, **kwargs)


def run(*args, **kwargs):
    """Run a task from a script/console with the GUI's progress and overlay; see ``_run.run``."""
    from ._run import run as _run

    return _run(*args, **kwargs)


__all__ = ["run", "show"]
