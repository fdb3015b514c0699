"""H&E-like rendering of the synthetic section (hematoxylin + eosin, Beer-Lambert optics).

Each pixel gets a hematoxylin and an eosin "concentration" from its region (neuropil tint,
stain intensity, density and size of nuclei, fibre texture); the colour is
``255 * exp(-(c_H * OD_H + c_E * OD_E))`` with the standard H&E optical-density vectors
(Ruifrok & Johnston 2001), so the result has the hues of a real stained section.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._geometry import HIP, L1, L23, L56, REGIONS, STR, WM, Geometry

# optical density of one unit of stain in R, G, B (hematoxylin: Ruifrok & Johnston; eosin a
# little bluer-absorbing than theirs, which renders the pink of brain sections)
_OD_H = np.array([0.650, 0.704, 0.286], dtype=np.float32)
_OD_E = np.array([0.060, 0.900, 0.330], dtype=np.float32)
_BACKGROUND = np.array([244.0, 243.0, 246.0], dtype=np.float32)

# per region (order of REGIONS): eosin of the neuropil, hematoxylin tint of the neuropil,
# small-nucleus density, large-nucleus density (nuclei per hires pixel), nucleus darkness
_EOSIN = {L1: 0.34, L23: 0.40, L56: 0.44, WM: 0.66, STR: 0.42, HIP: 0.40}
_HEMA = {L1: 0.030, L23: 0.100, L56: 0.060, WM: 0.030, STR: 0.060, HIP: 0.110}
_SMALL = {L1: 0.010, L23: 0.090, L56: 0.018, WM: 0.035, STR: 0.040, HIP: 0.090}
_LARGE = {L1: 0.001, L23: 0.006, L56: 0.030, WM: 0.001, STR: 0.010, HIP: 0.040}
_DARK = {L1: 0.9, L23: 1.1, L56: 1.0, WM: 1.0, STR: 1.0, HIP: 1.35}
assert len(_EOSIN) == len(REGIONS)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Zero-mean, unit-variance smooth noise with features about ``cell`` pixels across."""
    small = rng.standard_normal((shape[0] // cell + 3, shape[1] // cell + 3)).astype(np.float32)
    small = ndi.gaussian_filter(small, 1.0)
    big = ndi.zoom(small, cell, order=1, prefilter=False)[: shape[0], : shape[1]]
    big -= big.mean()
    return big / (big.std() + 1e-6)


def _per_region(region: np.ndarray, table: dict[int, float]) -> np.ndarray:
    lut = np.zeros(len(REGIONS) + 1, dtype=np.float32)  # last entry: outside (-1)
    for idx, value in table.items():
        lut[idx] = value
    return lut[region.astype(np.intp)]


def _nuclei(rng: np.random.Generator, density: np.ndarray, sigma: float | tuple[float, float],
            darkness: np.ndarray) -> np.ndarray:
    """Gaussian blobs at Poisson positions; peak value ~ ``darkness`` (hematoxylin units)."""
    where = rng.random(density.shape, dtype=np.float32) < density
    impulses = np.zeros(density.shape, dtype=np.float32)
    n = int(where.sum())
    impulses[where] = rng.uniform(0.55, 1.25, n).astype(np.float32) * darkness[where]
    s = np.atleast_1d(np.asarray(sigma, dtype=np.float32))
    peak = float(2 * np.pi * s.prod()) if s.size == 2 else float(2 * np.pi * s[0] ** 2)
    return ndi.gaussian_filter(impulses, sigma) * peak


def render_section(geom: Geometry, shape: tuple[int, int], to_section, rng: np.random.Generator,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Render the section as an RGB uint8 image.

    Parameters
    ----------
    geom
        The section's anatomy.
    shape
        (height, width) of the image in pixels.
    to_section
        Callable ``(x_px, y_px) -> (u, v)`` from image pixel centres to section coordinates.
    rng
        Random generator for the texture.

    Returns
    -------
    image, region
        The RGB image and the region index of every pixel (-1 = background).
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = to_section(xx, yy)
    cls = geom.classify(u, v)
    region = cls.region
    inside = cls.inside
    reg = np.where(inside, region, len(REGIONS)).astype(np.intp)
    # the tables are tuned for a 1200-pixel image; keep the look (nuclei per tissue area, their
    # size relative to the section) at other sizes
    px = max(h, w) / 1200.0

    low = _smooth_noise(rng, shape, max(2, round(48 * px)))  # uneven staining across the slide
    mid = _smooth_noise(rng, shape, max(2, round(10 * px)))  # neuropil texture
    fine = rng.standard_normal(shape).astype(np.float32)

    eosin = _per_region(reg, _EOSIN) * (1.0 + 0.10 * low + 0.08 * mid + 0.05 * fine)
    hema = _per_region(reg, _HEMA) * (1.0 + 0.25 * low + 0.20 * mid)

    # striatum: pale eosinophilic fibre bundles (pencil fibres) with few nuclei
    bundles = _smooth_noise(rng, shape, max(2, round(5 * px)))
    bundle = (reg == STR) & (bundles > 1.1)
    eosin = np.where(bundle, eosin * 1.35, eosin)
    hema = np.where(bundle, hema * 0.4, hema)

    # white matter: fibres running along the band (streaks fine across it, long along it)
    scale = max(h, w) / 2.6  # ~ pixels per unit of rnorm
    grid = rng.standard_normal((int(1.2 * scale) + 2, 720)).astype(np.float32)
    grid = ndi.gaussian_filter(grid, (0.6, 4.0), mode=("nearest", "wrap"))
    grid /= grid.std() + 1e-6
    streak = np.zeros(shape, dtype=np.float32)
    in_wm = reg == WM
    coords = np.stack([np.clip(cls.rnorm[in_wm], 0, 1.2) * scale, (cls.theta[in_wm] + np.pi) / (2 * np.pi) * 720])
    streak[in_wm] = ndi.map_coordinates(grid, coords, order=1, mode="grid-wrap")
    eosin = np.where(reg == WM, eosin * (1.0 + 0.25 * streak), eosin)

    darkness = _per_region(reg, _DARK)
    small_density = _per_region(reg, _SMALL) / px**2 * np.where(bundle, 0.25, 1.0).astype(np.float32)
    large_density = _per_region(reg, _LARGE) / px**2 * np.where(bundle, 0.25, 1.0).astype(np.float32)
    # oligodendrocyte nuclei line up along the fibres in white matter
    small_density = np.where(reg == WM, small_density * (1.0 + 1.5 * np.clip(streak * 3, -1, 1)), small_density)
    hema = hema + _nuclei(rng, small_density, 0.7 * px, darkness)
    hema = hema + _nuclei(rng, large_density, 1.15 * px, darkness * 0.9)

    # ependymal lining of the ventricle: a thin row of dark nuclei
    lining = cls.lining
    hema = np.where(lining, hema + 0.45 + 0.25 * fine.clip(-1, 1), hema)

    # blood vessels: small lumens full of red blood cells (bright eosin), thin dark wall
    n_vessels = max(4, int(inside.mean() * 40))
    ys, xs = np.nonzero(inside)
    if len(ys):
        pick = rng.integers(0, len(ys), n_vessels)
        radius = rng.uniform(1.2, 3.0, n_vessels) * px
        for y0, x0, r in zip(ys[pick], xs[pick], radius):
            y_lo, y_hi = max(0, int(y0 - 3 * r) - 1), min(h, int(y0 + 3 * r) + 2)
            x_lo, x_hi = max(0, int(x0 - 3 * r) - 1), min(w, int(x0 + 3 * r) + 2)
            d = np.hypot(yy[y_lo:y_hi, x_lo:x_hi] - y0, (xx[y_lo:y_hi, x_lo:x_hi] - x0) * 0.7)
            lumen = (d < r) & inside[y_lo:y_hi, x_lo:x_hi]
            wall = (d >= r) & (d < r + 1.2 * px) & inside[y_lo:y_hi, x_lo:x_hi]
            eosin[y_lo:y_hi, x_lo:x_hi][lumen] = 1.25
            hema[y_lo:y_hi, x_lo:x_hi][lumen] = 0.05
            hema[y_lo:y_hi, x_lo:x_hi][wall] += 0.35

    # a slightly darker rim where the section edge curls
    rim = inside & (cls.rnorm > 0.985)
    eosin = np.where(rim, eosin * 1.25, eosin)

    eosin = np.clip(eosin, 0.0, None)
    hema = np.clip(hema, 0.0, None)
    od = hema[..., None] * _OD_H + eosin[..., None] * _OD_E
    tissue_rgb = 250.0 * np.exp(-od)
    # the glass: near-white with a faint grain
    glass = _BACKGROUND + 1.5 * fine[..., None]
    rgb = np.where(inside[..., None], tissue_rgb, glass)
    # soften the tissue edge over about one pixel
    alpha = ndi.uniform_filter(inside.astype(np.float32), 3)[..., None]
    rgb = np.where((alpha > 0) & (alpha < 1), alpha * tissue_rgb + (1 - alpha) * glass, rgb)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return image, np.where(inside, region, -1).astype(np.int8)
