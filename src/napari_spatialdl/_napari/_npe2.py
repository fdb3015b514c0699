"""npe2 reader and writer commands (see napari.yaml). No napari import at module level.

They live on the napari side: the readers and writers of :mod:`napari_spatialdl.io` know nothing
of layers; these adapters turn what they read into layer-data tuples
(:func:`napari_spatialdl.layers.spatial_layers`).

The ``.h5ad`` round trip keeps what was on screen: the writer records how the spots were coloured
(``uns['spatialdl_display']``, in the file only), and the reader colours them so again and draws the
regions saved with them (``uns['spatialdl_regions']``) as a Shapes layer over the spots.

The reader claims a path only when it can read it: a Space Ranger output folder (or its parent
holding ``outs``), an ``.h5ad`` file, or a counts CSV with a coordinates CSV beside it
(``coords.csv``, ``coordinates.csv``, ``spatial.csv``, ``positions.csv``). For anything else it
returns None at once, so napari can try other readers.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import SpatialDataError

COORD_NAMES = ("coords.csv", "coordinates.csv", "spatial.csv", "positions.csv")
LABEL_NAMES = ("cell_types.csv", "labels.csv", "celltypes.csv")
_MIN_COUNT_COLUMNS = 4  # a counts table has many columns; coords/labels tables have 1-3

LayerData = tuple[Any, dict, str]


def _first_path(path: str | Path | Sequence[str | Path]) -> Path | None:
    if isinstance(path, list | tuple):
        if not path:
            return None
        path = path[0]
    if not isinstance(path, str | Path):
        return None
    return Path(path)


def _is_csv(p: Path) -> bool:
    name = p.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def _header_columns(p: Path) -> int:
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rt") as fh:
            line = fh.readline(1 << 20)
    except (OSError, UnicodeDecodeError, EOFError):
        return 0
    return line.count(",") + 1 if line.strip() else 0


def _csv_partner(p: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        other = p.parent / name
        if other != p and other.is_file():
            return other
    return None


#: spots layer metadata: their true size when drawn larger to be read (``_widgets._overlay``)
TRUE_SIZE = "spatialdl_true_size"


def _spatial_layers(adata: Any) -> list[LayerData]:
    from ..layers import spatial_layers

    return spatial_layers(adata)


def _saved_layers(adata: Any) -> list[LayerData]:
    """The layers of a saved AnnData as it was shown: coloured as recorded, with its regions."""
    from ..layers import (
        DIMMED_IMAGE_OPACITY,
        DISPLAY_KEY,
        META_DIMMED,
        saved_display,
        spatial_layers,
    )
    from ..regions import regions_layer_data

    display = saved_display(adata)
    layers = spatial_layers(adata, **(display or {}))
    points = next(kwargs for _, kwargs, kind in layers if kind == "points")
    factor = adata.uns.get(DISPLAY_KEY, {}).get("size_factor") if display else None
    if factor is not None and np.isfinite(float(factor)) and float(factor) > 1 and "size" in points:
        points.setdefault("metadata", {})[TRUE_SIZE] = float(np.median(np.asarray(points["size"], dtype=float)))
        points["size"] = np.asarray(points["size"], dtype=float) * float(factor)
    if display:  # coloured again: the image dimmed as when the colours were shown
        for _, kwargs, kind in layers:
            if kind == "image" and kwargs.get("metadata", {}).get("spatialdl_image"):
                kwargs["opacity"] = min(kwargs.get("opacity", 1.0), DIMMED_IMAGE_OPACITY)
                kwargs["metadata"][META_DIMMED] = True
    return layers + regions_layer_data(adata, points)


def _visium_reader(path: Path) -> Callable[[Any], list[LayerData]]:
    def reader(_: Any) -> list[LayerData]:
        from ..io import read_visium

        return _spatial_layers(read_visium(path))

    return reader


def _h5ad_reader(path: Path) -> Callable[[Any], list[LayerData]]:
    def reader(_: Any) -> list[LayerData]:
        from ..io import read_h5ad

        adata = read_h5ad(path)
        if "spatial" not in adata.obsm:
            raise SpatialDataError(
                f"{path.name} has no spot coordinates (obsm['spatial']), so there is nothing to place "
                "on a tissue. Load it in Python (napari_spatialdl.read_h5ad) to use it as a reference, "
                "or add adata.obsm['spatial'] (x, y per spot) and save it again."
            )
        return _saved_layers(adata)

    return reader


def _csv_reader(counts: Path, coords: Path, labels: Path | None) -> Callable[[Any], list[LayerData]]:
    def reader(_: Any) -> list[LayerData]:
        from ..io import read_counts_csv

        return _spatial_layers(read_counts_csv(counts, coords, labels=labels))

    return reader


def get_reader(path: str | Path | Sequence[str | Path]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader command: a reader function for ``path``, or None when this plugin cannot read it.

    Parameters
    ----------
    path
        A path, or a list of paths (the first is read).

    Returns
    -------
    callable or None
        A function returning napari layer data tuples (tissue Image + spots Points, the AnnData in
        the Points layer's ``metadata['adata']``), or None for paths this plugin does not read.
    """
    from ..io import find_spaceranger_root

    p = _first_path(path)
    if p is None:
        return None
    if p.is_dir():
        root = find_spaceranger_root(p)
        return _visium_reader(root) if root is not None else None
    if not p.is_file():
        return None
    if p.name.lower().endswith(".h5ad"):
        return _h5ad_reader(p)
    if _is_csv(p) and p.name.lower() not in COORD_NAMES + LABEL_NAMES:
        coords = _csv_partner(p, COORD_NAMES)
        if coords is not None and _header_columns(p) >= _MIN_COUNT_COLUMNS:
            return _csv_reader(p, coords, _csv_partner(p, LABEL_NAMES))
    return None


def _find_adata(layer_data: Sequence[LayerData]) -> Any:
    return _find_spots(layer_data)[0]


def _find_spots(layer_data: Sequence[LayerData]) -> tuple[Any, dict]:
    """The one AnnData behind the layers to save, and the attributes of the layer carrying it."""
    from anndata import AnnData

    found: list[tuple[AnnData, str, dict]] = []
    for item in layer_data:
        if not isinstance(item, tuple | list) or len(item) < 2:
            continue
        attributes = item[1] if isinstance(item[1], dict) else {}
        layer_type = item[2] if len(item) > 2 else "?"
        adata = (attributes.get("metadata") or {}).get("adata")
        if isinstance(adata, AnnData) and all(adata is not a for a, _, _ in found):
            found.append((adata, attributes.get("name") or layer_type, attributes))
    if not found:
        names = ", ".join(str((item[1] or {}).get("name", "?")) for item in layer_data if len(item) > 1) or "none"
        raise SpatialDataError(
            f"None of the layers to save ({names}) carries an AnnData (metadata['adata']): only spot "
            "layers made by napari-spatialdl (opened from a Visium folder, .h5ad or counts CSV) can "
            "be saved as .h5ad. Select that Points layer and save again."
        )
    if len(found) > 1:
        raise SpatialDataError(
            f"The layers to save carry {len(found)} different AnnData objects "
            f"({', '.join(name for _, name, _ in found)}); one .h5ad holds one. Select one spots layer."
        )
    return found[0][0], found[0][2]


def write_h5ad(path: str, layer_data: Any, attributes: dict | None = None) -> list[str]:
    """npe2 writer command: save the AnnData behind the selected spots layer to ``path``.

    Works with both npe2 writer signatures: the multiple-layer one ``(path, layer_data)`` and the
    single-layer one ``(path, data, attributes)`` that npe2 uses when the manifest allows one layer.

    Parameters
    ----------
    path
        Target ``.h5ad`` file.
    layer_data
        ``(data, attributes, layer_type)`` tuples of the selected layers; the AnnData is found in
        ``attributes['metadata']['adata']`` (put there by napari-spatialdl's layers). With the
        single-layer signature: the layer's data.
    attributes
        Only with the single-layer signature: the layer's attributes.

    Returns
    -------
    list of str
        The written path.

    Notes
    -----
    How the spots are coloured (``metadata['spatialdl_color']`` of the layer) goes into the file as
    ``uns['spatialdl_display']`` (:func:`napari_spatialdl.layers.display_record`), so that opening it
    colours them the same way. It is put in ``adata.uns`` only while the file is written and taken
    out again afterwards (also when writing fails): the AnnData in memory stays exactly as it was,
    and a stale record can never reach a file written later by other means.
    """
    from ..io import write_h5ad as _write
    from ..layers import DISPLAY_KEY, META_COLOR, display_record

    if attributes is not None:
        layer_data = [(layer_data, attributes, "points")]
    adata, attrs = _find_spots(layer_data)
    if adata.is_view:  # a view would turn into a copy of its own when its uns is set
        adata = adata.copy()
    metadata = attrs.get("metadata") or {}
    record = display_record(metadata.get(META_COLOR))
    true_size = metadata.get(TRUE_SIZE)
    if record is not None and true_size and attrs.get("size") is not None:  # spots drawn larger to read
        factor = float(np.median(np.asarray(attrs["size"], dtype=float))) / float(true_size)
        if np.isfinite(factor) and factor > 1:
            record["size_factor"] = factor
    missing = object()
    before = adata.uns.get(DISPLAY_KEY, missing)
    if record is not None:
        adata.uns[DISPLAY_KEY] = record
    elif before is not missing:
        del adata.uns[DISPLAY_KEY]  # plain spots now: an older record must not recolour them
    try:
        return [str(_write(adata, path))]
    finally:
        if before is missing:
            adata.uns.pop(DISPLAY_KEY, None)
        else:
            adata.uns[DISPLAY_KEY] = before
