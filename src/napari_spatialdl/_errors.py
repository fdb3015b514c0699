"""The package's user-facing error types (no dependencies, so that every layer can raise them).

:class:`InputError` is the base of every refusal of bad input: the tasks raise it
(``napari_spatialdl.tasks.InputError`` is this class), the readers raise its subclasses
(``napari_spatialdl.io.SpatialDataError``, ``napari_spatialdl.io.ReadError``). It is a
``ValueError``, so ``except ValueError`` still catches all of them.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message says what is wrong, in which object or file, and how to fix it."""
