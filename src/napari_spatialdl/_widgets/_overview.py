"""Level of detail for large spots layers: an overview image far out, only the spots in view up close.

napari draws every point of a Points layer on every frame and re-sends all of them to the GPU
whenever a colour changes (about 2-5 s per change for a million points, most of it in Python).
For a spots layer with more than :data:`MAX_DRAWN` spots, :class:`SpotsOverview` keeps the layer
(all spots, their colours and ``features``; every other part of the plugin works on it as before)
but decides which spots napari draws:

- *overview* (more than :data:`MAX_DRAWN` spots in view, each a pixel or two on screen): no spot
  is drawn as a marker (``layer.shown`` all False); an RGBA image layer, one pixel per spot pitch,
  holds each spot's colour and is drawn instead, under the spots layer, with the same transform.
  A recolour rewrites that image (vectorised, no per-spot Python). The barcode and value of the
  spot under the mouse are looked up on demand and added to napari's status bar (and tooltip).
- *detail* (at most :data:`MAX_DRAWN` spots in and around the view): only those spots are shown
  as markers (``layer.shown``), the overview image is hidden; napari's own hover works.

The mode follows the camera (zoom, pan, canvas size). The image follows the layer's face colours
(``layer.events.face_color``), its visibility and opacity. Removing either layer ends the
overview (all spots are shown again when the image alone is removed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layers import BARCODE

#: most spots drawn as napari markers at once; larger layers get an overview
MAX_DRAWN = 50_000
#: longest side (pixels) of the overview image; the pixel grows beyond the spot pitch if needed
MAX_RASTER_SIDE = 4096
#: squares (Visium HD bins) are drawn this much larger than their side (no rasterisation seams
#: between adjacent bins); harmless for other spots, whose centres lie further apart than their size
SQUARE_OVERLAP = 1.001
#: cells per side of the grid counting spots (to decide the mode without scanning the spots)
COUNT_GRID = 256
#: the view is widened by one of these fractions of its size on each side before picking the
#: spots to show (the widest holding at most half of ``max_drawn`` spots; the last one up to
#: ``max_drawn``), so that pans need few updates
MARGINS = (4.0, 2.0, 1.0, 0.5, 0.25)
#: zoomed in to less than this fraction of the view area the shown spots were picked for: pick
#: again (fewer spots to draw)
RESHOW_AREA = 0.25
#: spots converted to the overview's 8-bit colours at a time
_RASTER_CHUNK = 1 << 16
#: metadata keys: on the spots layer (the controller) and on the overview image (a flag)
META_OVERVIEW = "spatialdl_overview"
OVERVIEW_FLAG = "spatialdl_overview_image"


def overview_of(layer: Any) -> SpotsOverview | None:
    """The :class:`SpotsOverview` of a spots layer, if it has a live one."""
    ov = getattr(layer, "metadata", {}).get(META_OVERVIEW)
    return ov if isinstance(ov, SpotsOverview) and ov.active else None


def needs_overview(n_spots: int) -> bool:
    """Whether a layer of ``n_spots`` spots is drawn through an overview (more than :data:`MAX_DRAWN`)."""
    return int(n_spots) > MAX_DRAWN


class SpotsOverview:
    """Level-of-detail drawing of one large spots layer in one viewer (see the module docstring).

    Parameters
    ----------
    viewer
        The napari viewer showing ``layer``.
    layer
        A spots Points layer (2D).
    max_drawn
        Most spots shown as markers; default :data:`MAX_DRAWN`.

    Attributes
    ----------
    image
        The overview Image layer (``metadata['spatialdl_overview_image']`` True).
    mode
        ``"overview"`` or ``"detail"``.
    pitch
        Side of an overview pixel in the layer's data units (the spot size, or more for a very
        large extent).
    """

    def __init__(self, viewer: Any, layer: Any, max_drawn: int | None = None) -> None:
        data = np.asarray(layer.data, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != 2:
            raise ValueError(f"Layer {layer.name!r} is not 2D (data shape {data.shape}): no overview.")
        self.viewer = viewer
        self.layer = layer
        self.max_drawn = int(MAX_DRAWN if max_drawn is None else max_drawn)
        self.active = True
        self.mode = ""
        self._covered: tuple[float, float, float, float] | None = None
        self._covered_view_area = 0.0
        self._in_status = False
        self.n = len(data)

        sizes = np.asarray(layer.size, dtype=np.float64).ravel()
        if len(sizes) and np.isfinite(sizes[0]) and sizes[0] > 0 and sizes.min() == sizes.max():
            pitch = float(sizes[0])  # one size for all (the usual case): no median of a copy
        else:
            finite = sizes[np.isfinite(sizes) & (sizes > 0)]
            pitch = float(np.median(finite)) if len(finite) else 1.0
        # squares are drawn SQUARE_OVERLAP larger than their side (no seams): the pixel is the side,
        # else the 0.1 % adds up across a row and every thousandth bin shares a pixel
        pitch /= SQUARE_OVERLAP
        lo, hi = data.min(axis=0), data.max(axis=0)
        extent = hi - lo + pitch
        pitch = max(pitch, float(extent.max()) / MAX_RASTER_SIDE)
        self.pitch = pitch
        self.origin = lo - pitch / 2.0
        self.shape = tuple(int(s) for s in np.maximum(np.ceil((hi - self.origin) / pitch), 1).astype(int))
        # each spot's pixel (the image has at most MAX_RASTER_SIDE**2 pixels: int32 indices)
        scaled = data - self.origin
        scaled /= pitch
        np.floor(scaled, out=scaled)
        np.clip(scaled, 0, np.asarray(self.shape) - 1, out=scaled)
        pix = scaled.astype(np.int32)
        del scaled
        flat = pix[:, 0] * np.int32(self.shape[1])
        flat += pix[:, 1]
        # each pixel shows the last spot in it (napari draws later points on top)
        top = np.full(self.shape[0] * self.shape[1], -1, dtype=np.int32)
        np.maximum.at(top, flat, np.arange(self.n, dtype=np.int32))
        self._pixels = np.flatnonzero(top >= 0)
        self._who = top[self._pixels]
        # the hover: with one spot per pixel on a dense raster, the pixel's spot (this array);
        # else every spot by its pixel (sorted on the first hover, see _spots_by_pixel)
        self._top = top if len(self._pixels) == self.n and top.size <= 4 * self.n else None
        self._flat = None if self._top is not None else flat
        self._by_pixel: np.ndarray | None = None
        self._sorted_pixels: np.ndarray | None = None
        # coarse counts (summed-area table) to tell how many spots a box holds without a scan
        self._grid = np.maximum(np.ceil(np.asarray(self.shape) / COUNT_GRID), 1).astype(np.int64)
        gshape = -(-np.asarray(self.shape) // self._grid)
        cells = pix[:, 0] // np.int32(self._grid[0])
        cells *= np.int32(gshape[1])
        cells += pix[:, 1] // np.int32(self._grid[1])
        del pix
        counts = np.bincount(cells, minlength=int(gshape[0] * gshape[1])).reshape(gshape)
        self._sat = np.zeros((gshape[0] + 1, gshape[1] + 1), dtype=np.int64)
        self._sat[1:, 1:] = counts.cumsum(0).cumsum(1)
        self._data = data

        previous = viewer.layers.selection.active
        self.image = viewer.add_image(
            self._raster(), rgb=True, name=f"{layer.name} overview",
            scale=np.asarray(layer.scale[-2:], dtype=float) * pitch,
            translate=np.asarray(layer.translate[-2:], dtype=float)
            + np.asarray(layer.scale[-2:], dtype=float) * (self.origin + pitch / 2.0),
            affine=np.asarray(layer.affine.affine_matrix), opacity=layer.opacity,
            units=tuple(layer.units[-2:]), interpolation2d="nearest",
            metadata={OVERVIEW_FLAG: True, "spatialdl_overview_of": layer.name},
        )
        layers = viewer.layers
        layers.move(layers.index(self.image), layers.index(layer))  # right under the spots
        if previous is not None and previous in layers:
            layers.selection.active = previous  # adding the image selected it
        layer.metadata[META_OVERVIEW] = self

        self._connections = [
            (viewer.camera.events.zoom, self.update_view),
            (viewer.camera.events.center, self.update_view),
            (viewer.canvas.events.size, self.update_view),
            (layer.events.face_color, self.recolour),
            (layer.events.visible, self._on_visible),
            (layer.events.opacity, self._on_opacity),
            (layer.events.data, self._on_data),
            (viewer.layers.events.removed, self._on_removed),
            (viewer.events.status, self._on_status),
        ]
        for emitter, callback in self._connections:
            emitter.connect(callback)
        self.update_view()

    # ------------------------------------------------------------------------- drawing

    def _raster(self) -> np.ndarray:
        rgba = np.asarray(self.layer.face_color)
        img = np.zeros((self.shape[0] * self.shape[1], 4), dtype=np.uint8)
        if len(rgba) == self.n:
            words = img.view(np.uint32).ravel()  # one 32-bit RGBA word per pixel
            # in chunks: the float temporaries stay small (and their memory is reused)
            for start in range(0, len(self._who), _RASTER_CHUNK):
                who = self._who[start : start + _RASTER_CHUNK]
                top = rgba[who].astype(np.float32)  # the colours of the spots on top, 0..1
                top *= 255.0
                top += 0.5
                np.clip(top, 0, 255, out=top)
                words[self._pixels[start : start + _RASTER_CHUNK]] = top.astype(np.uint8).view(np.uint32).ravel()
        return img.reshape(self.shape[0], self.shape[1], 4)

    def recolour(self, event: Any = None) -> None:
        """Redraw the overview image from the layer's face colours."""
        if self.active:
            self.image.data = self._raster()

    def _view_box(self) -> tuple[float, float, float, float] | None:
        """The canvas as a (row0, col0, row1, col1) box in the layer's data coordinates."""
        height, width = (float(s) for s in self.viewer.canvas.size)
        zoom = float(self.viewer.camera.zoom)
        if zoom <= 0 or height <= 0 or width <= 0:
            return None
        center = np.asarray(self.viewer.camera.center, dtype=float)[-2:]
        half = np.array([height, width]) / (2.0 * zoom)
        corners = [center + half * np.array(s) for s in ((-1, -1), (-1, 1), (1, -1), (1, 1))]
        ndim = self.layer.ndim
        data = np.array([np.asarray(self.layer.world_to_data(np.r_[np.zeros(max(ndim - 2, 0)), c]))[-2:]
                         for c in corners])
        (r0, c0), (r1, c1) = data.min(axis=0), data.max(axis=0)
        return float(r0), float(c0), float(r1), float(c1)

    def count_in(self, box: tuple[float, float, float, float]) -> int:
        """At least the number of spots in ``box`` (data coordinates); exact up to the counting grid."""
        r0, c0, r1, c1 = box
        lo = np.floor((np.array([r0, c0]) - self.origin) / self.pitch / self._grid).astype(np.int64)
        hi = np.floor((np.array([r1, c1]) - self.origin) / self.pitch / self._grid).astype(np.int64) + 1
        gshape = np.asarray(self._sat.shape) - 1
        lo, hi = np.clip(lo, 0, gshape), np.clip(hi, 0, gshape)
        s = self._sat
        return int(s[hi[0], hi[1]] - s[lo[0], hi[1]] - s[hi[0], lo[1]] + s[lo[0], lo[1]])

    def update_view(self, event: Any = None) -> None:
        """Pick the mode (and the spots to show) for the current camera."""
        if not self.active:
            return
        box = self._view_box()
        if box is None:
            return
        r0, c0, r1, c1 = box
        area = max(r1 - r0, 0.0) * max(c1 - c0, 0.0)
        if self.mode == "detail" and self._covered is not None:
            cr0, cc0, cr1, cc1 = self._covered
            inside = cr0 <= r0 and cc0 <= c0 and r1 <= cr1 and c1 <= cc1
            if inside and area >= RESHOW_AREA * self._covered_view_area:
                return  # still inside the spots already shown, and not zoomed far into them
        for margin in MARGINS:  # the widest box that keeps the drawing small (fewer updates on pans)
            dr, dc = margin * (r1 - r0), margin * (c1 - c0)
            wide = (r0 - dr, c0 - dc, r1 + dr, c1 + dc)
            limit = self.max_drawn if margin == MARGINS[-1] else self.max_drawn // 2
            if self.count_in(wide) > limit:
                continue
            d = self._data
            mask = (d[:, 0] >= wide[0]) & (d[:, 0] <= wide[2]) & (d[:, 1] >= wide[1]) & (d[:, 1] <= wide[3])
            if int(mask.sum()) <= self.max_drawn:
                self._covered = wide
                self._covered_view_area = area
                self._set_mode("detail", mask)
                return
        if self.mode != "overview":
            self._covered = None
            self._set_mode("overview", False)

    def _set_mode(self, mode: str, shown: Any) -> None:
        self.mode = mode
        self.layer.shown = shown
        self.image.visible = bool(self.layer.visible) and mode == "overview"

    # ------------------------------------------------------------------------- hover

    def spot_at(self, world_position: Any) -> int | None:
        """Index of the spot under a world position (the top-most covering it), or None.

        A spot covers the points within half its size of its centre along each axis, as in
        napari's own hover on points.
        """
        pos = np.asarray(world_position, dtype=float)
        ndim = self.layer.ndim
        if len(pos) < ndim:
            pos = np.r_[np.zeros(ndim - len(pos)), pos]
        x = np.asarray(self.layer.world_to_data(pos[-ndim:]), dtype=float)[-2:]
        p = np.floor((x - self.origin) / self.pitch).astype(np.int64)
        rows = np.arange(p[0] - 1, p[0] + 2)
        cols = np.arange(p[1] - 1, p[1] + 2)
        rows, cols = rows[(rows >= 0) & (rows < self.shape[0])], cols[(cols >= 0) & (cols < self.shape[1])]
        if not len(rows) or not len(cols):
            return None
        pixels = (rows[:, None] * self.shape[1] + cols[None, :]).ravel()
        if self._top is not None:  # one spot per pixel
            cand = self._top[pixels]
            cand = cand[cand >= 0].astype(np.int64)
            if not len(cand):
                return None
        else:
            by_pixel, sorted_pixels = self._spots_by_pixel()
            lo = np.searchsorted(sorted_pixels, pixels, side="left")
            hi = np.searchsorted(sorted_pixels, pixels, side="right")
            if not (hi > lo).any():
                return None
            cand = np.concatenate([by_pixel[a:b] for a, b in zip(lo, hi) if b > a])
        half = np.asarray(self.layer.size, dtype=float).ravel()
        half = (half[cand] if len(half) == self.n else np.full(len(cand), half[0])) / 2.0
        hit = cand[np.all(np.abs(self._data[cand] - x) <= half[:, None], axis=1)]
        return int(hit.max()) if len(hit) else None

    def _spots_by_pixel(self) -> tuple[np.ndarray, np.ndarray]:
        """Every spot ordered by its pixel, and those pixels (built on the first hover: only
        layers where several spots share a pixel need it)."""
        if self._by_pixel is None:
            self._by_pixel = np.argsort(self._flat, kind="stable")
            self._sorted_pixels = self._flat[self._by_pixel]
        return self._by_pixel, self._sorted_pixels

    def hover_items(self, index: int) -> list[str]:
        """``"name: value"`` of every feature of spot ``index`` (barcode first), as napari shows them."""
        from napari.utils.status_messages import format_feature_value

        items = []
        for name, column in self.layer.features.items():
            value = column.iloc[index]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            items.append(f"{name}: {format_feature_value(value)}")
        return items

    def _on_status(self, event: Any = None) -> None:
        """Add the hovered spot's features to napari's status in overview mode (no markers drawn)."""
        if self._in_status or not self.active or self.mode != "overview" or not self.layer.visible:
            return
        viewer = self.viewer
        if viewer.layers.selection.active is not self.layer:
            return
        status = viewer.status
        if not isinstance(status, dict) or status.get("layer_name") != self.layer.name:
            return
        coords = str(status.get("coordinates", ""))
        if f"{BARCODE}:" in coords:
            return
        index = self.spot_at(viewer.cursor.position)
        if index is None:
            return
        items = self.hover_items(index)
        extra = "; " + ", ".join(items)
        new = dict(status)
        new["coordinates"] = f"{coords.rstrip(': ')}: {index}{extra}"
        if "value" in new:
            new["value"] = f"{index}{extra}"
        self._in_status = True
        try:
            viewer.status = new
            if viewer.tooltip.visible:
                viewer.tooltip.text = "\n".join(items)
        finally:
            self._in_status = False

    # ------------------------------------------------------------------------- following the layer

    def _on_visible(self, event: Any = None) -> None:
        self.image.visible = bool(self.layer.visible) and self.mode == "overview"

    def _on_opacity(self, event: Any = None) -> None:
        self.image.opacity = self.layer.opacity

    def _on_data(self, event: Any = None) -> None:
        if len(self.layer.data) != self.n:  # points added or removed: the overview no longer fits
            self.close(show_all=True)

    def _on_removed(self, event: Any) -> None:
        if event.value is self.layer:
            self.close()
        elif event.value is self.image:
            self.close(show_all=True)

    def close(self, show_all: bool = False) -> None:
        """End the overview: disconnect, remove the image; ``show_all``: draw every spot again."""
        if not self.active:
            return
        self.active = False
        for emitter, callback in self._connections:
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self.layer.metadata.get(META_OVERVIEW) is self:
            del self.layer.metadata[META_OVERVIEW]
        if self.image in self.viewer.layers:
            self.viewer.layers.remove(self.image)
        if show_all:
            self.layer.shown = True


def attach_overview(viewer: Any, layer: Any, max_drawn: int | None = None) -> SpotsOverview:
    """Draw ``layer`` through a :class:`SpotsOverview` in ``viewer`` (the one it has, if any)."""
    existing = overview_of(layer)
    if existing is not None and existing.viewer is viewer:
        return existing
    if existing is not None:
        existing.close()
    return SpotsOverview(viewer, layer, max_drawn=max_drawn)


__all__ = ["MAX_DRAWN", "SpotsOverview", "attach_overview", "needs_overview", "overview_of"]
