"""Anatomy of the synthetic tissue section: outline, regions, ventricle, hippocampus-like arc.

Everything is defined in *normalised section coordinates* ``(u, v)``: the section is an irregular
ellipse of about 2 x 1.45 units centred on the origin, ``v`` grows downwards (image rows), the
dorsal side (cortex thickest) is up. :meth:`Geometry.classify` maps coordinates to a region index
(``-1`` outside the tissue); the spots and the image are both drawn from it, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: anatomical regions, in the order of their index
REGIONS: tuple[str, ...] = (
    "Cortex L1",
    "Cortex L2-3",
    "Cortex L5-6",
    "White matter",
    "Striatum",
    "Hippocampus",
)
L1, L23, L56, WM, STR, HIP = range(len(REGIONS))

# outer boundaries of the cortical bands, as 1 - (normalised depth) at full thickness
_BAND_DEPTHS = (0.07, 0.20, 0.37, 0.46)  # L1 | L2-3 | L5-6 | white matter | deeper: striatum


@dataclass
class Classified:
    """Result of :meth:`Geometry.classify` (arrays of the input's shape)."""

    region: np.ndarray  # int8, -1 outside the tissue (and in the ventricle)
    inside: np.ndarray  # bool
    margin: np.ndarray  # float: distance-like score to the nearest tissue edge (>0 inside)
    rnorm: np.ndarray  # radius relative to the outline (1 on the outline)
    theta: np.ndarray  # polar angle in the section (radians)
    lining: np.ndarray  # bool: thin ependymal lining around the ventricle


class Geometry:
    """Random (seeded) anatomy of one section."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.a = 1.0
        self.b = 0.72 + rng.uniform(-0.03, 0.03)
        # low-order irregularity of the outline: (harmonic, amplitude, phase)
        self.harmonics = [
            (k, amp * rng.uniform(0.6, 1.2), rng.uniform(0, 2 * np.pi))
            for k, amp in ((2, 0.03), (3, 0.035), (4, 0.02), (5, 0.02), (7, 0.01), (11, 0.006), (17, 0.004), (23, 0.003))
        ]
        self.rotation = rng.uniform(-0.12, 0.12)  # radians
        self.dorsal = -np.pi / 2  # direction of the thickest cortex (up in the image)
        # hippocampus-like arc (an upward-bulging C), a dense band of pyramidal cells
        self.arc_center = np.array([0.10 + rng.uniform(-0.04, 0.04), 0.06 + rng.uniform(-0.03, 0.03)])
        self.arc_radius = 0.30 + rng.uniform(-0.02, 0.02)
        self.arc_angles = (-np.pi + 0.28 + rng.uniform(-0.05, 0.05), -0.25 + rng.uniform(-0.05, 0.05))
        self.arc_halfwidth = 0.055
        # lateral-ventricle-like slit beside the striatum (a hole in the tissue)
        self.vent_center = np.array([-0.47 + rng.uniform(-0.03, 0.03), 0.02 + rng.uniform(-0.03, 0.03)])
        self.vent_axes = (0.15, 0.035 + rng.uniform(0.0, 0.01))
        self.vent_angle = np.deg2rad(68 + rng.uniform(-8, 8))

    # -- pieces ----------------------------------------------------------------------------------
    def _rotate(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        return c * u + s * v, -s * u + c * v

    def outline_radius(self, theta: np.ndarray) -> np.ndarray:
        """Radius of the section outline in direction ``theta``."""
        a, b = self.a, self.b
        r = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
        wobble = np.ones_like(theta)
        for k, amp, phase in self.harmonics:
            wobble = wobble + amp * np.sin(k * theta + phase)
        # a slightly flattened ventral side, as a section cut at the base of the brain
        flat = 1.0 - 0.06 * np.clip(np.sin(theta), 0, None) ** 4
        return r * wobble * flat

    def _ventricle_rho(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du, dv = u - self.vent_center[0], v - self.vent_center[1]
        c, s = np.cos(self.vent_angle), np.sin(self.vent_angle)
        p, q = c * du + s * dv, -s * du + c * dv
        # a slightly curved slit (banana shape)
        q = q - 1.2 * (p**2) * 0.5
        return np.sqrt((p / self.vent_axes[0]) ** 2 + (q / self.vent_axes[1]) ** 2)

    def _arc_distance(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Distance to the hippocampal arc divided by its (tapered) half-width: < 1 inside."""
        du, dv = u - self.arc_center[0], v - self.arc_center[1]
        phi = np.arctan2(dv, du)
        rho = np.hypot(du, dv)
        lo, hi = self.arc_angles
        t = np.clip((phi - lo) / (hi - lo), 0.0, 1.0)
        phi_c = lo + t * (hi - lo)
        # closest point on the arc
        pu = self.arc_center[0] + self.arc_radius * np.cos(phi_c)
        pv = self.arc_center[1] + self.arc_radius * np.sin(phi_c)
        dist = np.hypot(u - pu, v - pv)
        # the band swells towards one end (like CA3 -> CA1 thinning) and tapers at both
        width = self.arc_halfwidth * (0.55 + 0.45 * np.sin(np.pi * t) ** 0.5) * (1.15 - 0.3 * t)
        outside_angle = (phi < lo) | (phi > hi)
        width = np.where(outside_angle & (rho > 0), width * 0.8, width)
        return dist / width

    # -- the map ---------------------------------------------------------------------------------
    def classify(self, u: np.ndarray, v: np.ndarray) -> Classified:
        """Region of every point (normalised section coordinates)."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        ur, vr = self._rotate(u, v)
        theta = np.arctan2(vr, ur)
        rnorm = np.hypot(ur, vr) / self.outline_radius(theta)
        # cortex thickest dorsally, thin ventrally
        thick = 0.35 + 0.65 * (1.0 + np.cos(theta - self.dorsal)) / 2.0
        depth = (1.0 - rnorm) / thick
        region = np.full(u.shape, STR, dtype=np.int8)
        for idx, d in zip((WM, L56, L23, L1), _BAND_DEPTHS[::-1]):
            region[depth < d] = idx
        arc = self._arc_distance(ur, vr)
        region[(arc < 1.0) & (region == STR)] = HIP
        vent = self._ventricle_rho(ur, vr)
        inside = (rnorm < 1.0) & (vent >= 1.0)
        region[~inside] = -1
        lining = inside & (vent < 1.25)
        margin = np.minimum(1.0 - rnorm, (vent - 1.0) * 0.05)
        return Classified(region=region, inside=inside, margin=margin, rnorm=rnorm, theta=theta,
                          lining=lining)

    def tissue_fraction_and_bbox(self, n: int = 360) -> tuple[float, tuple[float, float, float, float]]:
        """Tissue area (in squared units) and bounding box (umin, umax, vmin, vmax)."""
        ext = 1.35
        g = np.linspace(-ext, ext, n)
        uu, vv = np.meshgrid(g, g)
        inside = self.classify(uu, vv).inside
        cell = (2 * ext / (n - 1)) ** 2
        us, vs = uu[inside], vv[inside]
        return float(inside.sum() * cell), (float(us.min()), float(us.max()), float(vs.min()), float(vs.max()))
