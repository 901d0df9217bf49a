"""Phantom mammograms with planted, label-consistent signal (vectorised numpy, no per-pixel loops).

Canonical orientation: chest wall on the LEFT edge, nipple pointing right; high values = dense (display
convention). The image shows a half-ellipse breast with a soft skin line, fibroglandular texture whose extent
grows with density A -> D, a pectoral muscle triangle in oblique views, and the breast's lesion at the row's
``lesion_x`` / ``lesion_y``: an irregular spiculated mass when malignant, an oval/round circumscribed one when
benign, and a cluster of bright calcification specks (many, pleomorphic, in a linear/segmental spread when
malignant; few, round, grouped when benign). :func:`render_native` mirrors right breasts for the native orientation
the writers store.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["OBLIQUE_VIEWS", "GLAND_FRACTION", "render_mammogram", "render_native"]

#: views rendered with a pectoral muscle and the MLO lesion shift
OBLIQUE_VIEWS = frozenset({"MLO", "ML", "LM", "LMO"})
#: share of the breast covered by fibroglandular tissue per BI-RADS density
GLAND_FRACTION = {"A": 0.08, "B": 0.3, "C": 0.55, "D": 0.8}
FAT, THICKNESS_GAIN, GLAND_GAIN = 0.15, 0.15, 0.3
MASS_GAIN, CALC_GAIN, PECTORAL_LEVEL, NOISE = 0.36, 0.55, 0.7, 0.008


def _missing(value: object) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _flag(row: Mapping, key: str) -> bool:
    value = row.get(key)
    return not _missing(value) and int(value) == 1


def _smooth_noise(rng: np.random.Generator, height: int, width: int, sigma_y: float, sigma_x: float) -> np.ndarray:
    """Gaussian-filtered white noise (filter applied in Fourier space), zero mean, unit std."""
    white = rng.standard_normal((height, width))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    kernel = np.exp(-2 * np.pi**2 * ((sigma_y * fy) ** 2 + (sigma_x * fx) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(height, width))
    return (field - field.mean()) / (field.std() + 1e-12)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _tissue(rng: np.random.Generator, density: str, rho2: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Fibroglandular map in [0, 1] covering about ``GLAND_FRACTION[density]`` of the breast."""
    height, width = rho2.shape
    coarse = _smooth_noise(rng, height, width, 0.035 * height, 0.06 * width)
    fine = _smooth_noise(rng, height, width, 0.01 * height, 0.015 * width)
    field = coarse + 0.35 * fine - 1.2 * rho2  # glands gather centrally, fat under the skin
    threshold = np.quantile(field[inside], 1.0 - GLAND_FRACTION[density]) if inside.any() else 0.0
    return _sigmoid((field - threshold) / 0.3)


def _local_grid(cy: float, cx: float, reach: float, height: int, width: int):
    """Pixel-centre offsets (dy, dx) of the window within ``reach`` pixels of (cy, cx), and the window slices."""
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, height)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, width)
    dy = np.arange(y0, y1)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1)[None, :] + 0.5 - cx
    return dy, dx, (slice(y0, y1), slice(x0, x1))


def _mass(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, radius: float, spiculated: bool) -> np.ndarray:
    """Mass opacity in [0, 1]: irregular core + radiating spicules, or a sharp-edged oval/round disc."""
    dist, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
    if not spiculated:
        aspect, turn = rng.uniform(0.65, 1.0), rng.uniform(0, np.pi)
        along = dx * np.cos(turn) + dy * np.sin(turn)
        across = -dx * np.sin(turn) + dy * np.cos(turn)
        rel = np.hypot(along / radius, across / (aspect * radius))
        return _sigmoid((1.0 - rel) / 0.05) * (0.75 + 0.25 * np.sqrt(np.clip(1.0 - rel**2, 0.0, 1.0)))
    phase = rng.uniform(0, 2 * np.pi, 2)
    edge = radius * (0.8 + 0.18 * np.sin(3 * theta + phase[0]) + 0.12 * np.sin(5 * theta + phase[1]))
    core = _sigmoid((1.0 - dist / edge) / 0.12)
    n_spikes = rng.integers(8, 15)
    angles = rng.uniform(0, 2 * np.pi, n_spikes)[:, None, None]
    lengths = radius * rng.uniform(1.6, 2.6, n_spikes)[:, None, None]
    delta = theta[None] - angles
    along, across = dist[None] * np.cos(delta), dist[None] * np.abs(np.sin(delta))
    half_width = max(0.6, 0.07 * radius)
    spikes = np.exp(-((across / half_width) ** 2)) * np.clip(1.0 - along / lengths, 0.0, 1.0) * (along > 0)
    return np.maximum(core, 0.7 * spikes.max(axis=0))


def _calcifications(
    rng: np.random.Generator,
    dy: np.ndarray,
    dx: np.ndarray,
    spread: float,
    malignant: bool,
    distribution: str,
    width: int,
) -> np.ndarray:
    """Sum of bright specks: many irregular ones along a line/segment (malignant) or a few round grouped ones."""
    count = rng.integers(12, 25) if malignant else rng.integers(5, 11)
    if distribution in ("linear", "segmental"):
        axis = rng.uniform(0, np.pi)
        t = rng.uniform(-1.0, 1.0, count) * spread
        off = rng.normal(0.0, (0.12 if distribution == "linear" else 0.3) * spread, count)
        py, px = t * np.sin(axis) + off * np.cos(axis), t * np.cos(axis) - off * np.sin(axis)
    else:
        r = spread * (0.6 if distribution == "grouped" else 1.0) * np.sqrt(rng.random(count))
        phi = rng.uniform(0, 2 * np.pi, count)
        py, px = r * np.sin(phi), r * np.cos(phi)
    base = max(0.6, width / 350)
    sigma = base * (rng.uniform(0.6, 1.6, count) if malignant else np.full(count, 1.1))
    amplitude = rng.uniform(0.6, 1.0, count) if malignant else np.full(count, 0.85)
    d2 = (dy[None] - py[:, None, None]) ** 2 + (dx[None] - px[:, None, None]) ** 2
    return (amplitude[:, None, None] * np.exp(-d2 / (2 * sigma[:, None, None] ** 2))).sum(axis=0)


def render_mammogram(row: Mapping, height: int, width: int, seed: int) -> np.ndarray:
    """Render one image of ``row`` (a truth row: view, density, malignant, mass, calcification, lesion_*, bits).

    Returns:
        uint16 array (height, width) in [0, 2**bits_stored - 1], canonical orientation, high = dense.
    """
    rng = np.random.default_rng(seed)
    oblique = str(row["view"]) in OBLIQUE_VIEWS
    density = row.get("density")
    density = "B" if _missing(density) else str(density)
    u = (np.arange(width)[None, :] + 0.5) / width
    v = (np.arange(height)[:, None] + 0.5) / height
    semi_x, semi_y = rng.uniform(0.78, 0.9), rng.uniform(0.4, 0.46) + (0.03 if oblique else 0.0)
    rho2 = (u / semi_x) ** 2 + ((v - 0.5) / semi_y) ** 2
    skin = np.clip((1.0 - rho2) / 0.04, 0.0, 1.0)
    thickness = np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    gland = _tissue(rng, density, rho2, rho2 < 1.0)
    image = FAT + THICKNESS_GAIN * thickness + GLAND_GAIN * gland * np.sqrt(thickness)
    if oblique:
        muscle = u / rng.uniform(0.25, 0.32) + v / rng.uniform(0.35, 0.45)
        pectoral = np.clip((1.0 - muscle) / 0.04, 0.0, 1.0)
        image = image * (1.0 - pectoral) + (PECTORAL_LEVEL + 0.08 * (1.0 - muscle)) * pectoral
        skin = np.maximum(skin, pectoral)
    if not _missing(row.get("lesion_x")):
        cy, cx = float(row["lesion_y"]) * height, float(row["lesion_x"]) * width
        size = float(row["lesion_size"]) * width
        malignant = _flag(row, "malignant")
        dy, dx, window = _local_grid(cy, cx, 1.4 * size, height, width)
        if _flag(row, "mass"):
            image[window] += MASS_GAIN * _mass(rng, dy, dx, size / 2, spiculated=malignant)
        if _flag(row, "calcification"):
            distribution = row.get("calc_distribution")
            distribution = "grouped" if _missing(distribution) else str(distribution)
            image[window] += CALC_GAIN * _calcifications(rng, dy, dx, size / 2, malignant, distribution, width)
    image = (image + rng.normal(0.0, NOISE, image.shape)) * skin
    top = 2 ** int(row.get("bits_stored", 12)) - 1
    return np.round(np.clip(image, 0.0, 1.0) * top).astype(np.uint16)


def render_native(row: Mapping, height: int, width: int, seed: int) -> np.ndarray:
    """:func:`render_mammogram` in the breast's native orientation: right breasts mirrored (chest wall on the right)."""
    pixels = render_mammogram(row, height, width, seed)
    return np.fliplr(pixels) if row["laterality"] == "R" else pixels
